"""Output safety: a user's folder is never overwritten, outputs follow the umask, the run
lock never follows a link, damaged checkpoints are redone, and bad ``--out``/``--device``
values give a one-line message with exit code 2 (not a traceback)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_reproduce import TINY as TINY_PRESET
from test_runner import TINY, as_set_args

import gatescope as gs
from gatescope.atomic import atomic_write_bytes
from gatescope.cli import main
from gatescope.experiments import OutputFolderError, RunLocked, run_experiment
from gatescope.experiments.storage import FOLDER_MARKER, claim_folder, folder_kind, run_lock
from gatescope.reproduce import PRESETS, reproduce
from gatescope.training import EnsembleTrainer, task_model_factory, train_resumable
from gatescope.training.checkpoints import digest_path

GROUPS = ["adding__leaky__sgd", "adding__multi_gate__sgd"]
RUN_ARGS = ["run", "train", "--quiet", "--set", *as_set_args(TINY)]
USER_FILES = {"config.json": "my own settings\n", "results.csv": "a,b\n1,2\n",
              "summary.json": "{\"mine\": true}\n"}


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``python -m gatescope ARGS`` in a fresh process."""
    return subprocess.run([sys.executable, "-m", "gatescope", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


def assert_one_line_usage_error(proc: subprocess.CompletedProcess, *words: str) -> None:
    """Exit 2 with a single ``gatescope: error:`` line naming ``words``, no traceback."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("gatescope: error: ") and all(w in lines[0] for w in words), \
        lines[0]


def user_folder(path: Path) -> Path:
    """A folder of a user's own files named like a run's outputs."""
    path.mkdir(parents=True, exist_ok=True)
    for name, text in USER_FILES.items():
        (path / name).write_text(text)
    return path


def assert_user_files_intact(path: Path) -> None:
    assert {name: (path / name).read_text() for name in USER_FILES} == USER_FILES


# ---------------------------------------------------------------------- 5: a user's folder


def test_run_refuses_a_folder_gatescope_did_not_make(tmp_path, capsys):
    """Guards item 5: the user's config.json/results.csv/summary.json were replaced."""
    mine = user_folder(tmp_path / "mine")
    assert main([*RUN_ARGS, "--out", str(mine)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(mine) in err and "--force" in err, err
    assert_user_files_intact(mine)
    assert sorted(p.name for p in mine.iterdir()) == sorted(USER_FILES)  # nothing added

    with pytest.raises(OutputFolderError, match="force=True") as info:
        run_experiment("train", TINY, mine, quiet=True)
    assert info.value.forceable and info.value.folder == str(mine)
    assert_user_files_intact(mine)


def test_force_writes_into_the_folder_and_later_runs_resume(tmp_path):
    mine = user_folder(tmp_path / "mine")
    (mine / "notes.txt").write_text("keep me")
    first = run_experiment("train", TINY, mine, quiet=True, force=True)
    assert first.ran == GROUPS and (mine / "notes.txt").read_text() == "keep me"
    assert folder_kind(mine) == "run"
    assert run_experiment("train", TINY, mine, quiet=True).skipped == GROUPS  # no --force


def test_empty_out_is_refused_and_the_current_folder_untouched(tmp_path, monkeypatch, capsys):
    """Guards item 5: ``--out ""`` wrote a run into the current folder (``reproduce`` fell
    back to its default folder)."""
    monkeypatch.chdir(tmp_path)
    assert main([*RUN_ARGS, "--out", ""]) == 2
    assert main(["reproduce", "--out", "", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("--out '': an empty path names no folder") == 2, err
    assert not any(tmp_path.iterdir())
    with pytest.raises(OutputFolderError, match="empty path"):
        run_experiment("train", TINY, "", quiet=True)


def test_a_run_folder_made_before_the_marker_still_resumes(tmp_path):
    """An unmarked folder with a gatescope config.json (the old layout) is a run folder."""
    run_experiment("train", TINY, tmp_path, quiet=True)
    (tmp_path / FOLDER_MARKER).unlink()
    assert run_experiment("train", TINY, tmp_path, quiet=True).skipped == GROUPS
    assert folder_kind(tmp_path) == "run"


def test_a_folder_holding_only_a_lock_counts_as_empty(tmp_path):
    (tmp_path / ".lock").write_text("")
    assert run_experiment("train", TINY, tmp_path, quiet=True).ran == GROUPS


def test_run_and_reproduce_do_not_write_into_each_others_folders(tmp_path, monkeypatch):
    run_experiment("train", TINY, tmp_path / "run", quiet=True)
    with pytest.raises(OutputFolderError, match="`gatescope run`, not of `gatescope "
                       "reproduce`"):
        reproduce(TINY_PRESET, tmp_path / "run", quiet=True)
    (tmp_path / "rep").mkdir()
    atomic_write_bytes(tmp_path / "rep" / FOLDER_MARKER, b'{"kind": "reproduce"}')
    (tmp_path / "rep" / "REPORT.md").write_text("a report")
    with pytest.raises(OutputFolderError, match="`gatescope reproduce`, not of `gatescope "
                       "run`"):
        run_experiment("train", TINY, tmp_path / "rep", quiet=True)


def test_reproduce_refuses_a_foreign_folder_before_any_work(tmp_path):
    """Guards item 5 for ``reproduce``: its REPORT.md, figures and runs went into any
    folder; a foreign run subfolder is refused before the first run, not after."""
    mine = user_folder(tmp_path / "mine")
    (mine / "REPORT.md").write_text("my report")
    with pytest.raises(OutputFolderError, match="not empty"):
        reproduce(TINY_PRESET, mine, quiet=True)
    assert (mine / "REPORT.md").read_text() == "my report"
    assert sorted(p.name for p in mine.iterdir()) == sorted([*USER_FILES, "REPORT.md"])

    ours = tmp_path / "ours"  # a reproduce folder, but the last run's folder is not a run
    (ours / "fidelity" / "gate_term").mkdir(parents=True)
    (ours / "fidelity" / "gate_term" / "data.txt").write_text("mine")
    atomic_write_bytes(ours / FOLDER_MARKER, b'{"kind": "reproduce"}')
    with pytest.raises(OutputFolderError, match="gate_term"):
        reproduce(TINY_PRESET, ours, quiet=True)
    assert sorted(p.name for p in ours.iterdir()) == [FOLDER_MARKER, "fidelity"]  # nothing run


def test_reproduce_resumes_a_folder_made_before_the_marker(tmp_path, monkeypatch):
    """An unmarked folder whose run subfolders hold gatescope runs is a reproduce folder."""
    run_experiment("train", TINY, tmp_path / "expansion", quiet=True)
    (tmp_path / "expansion" / FOLDER_MARKER).unlink()
    (tmp_path / "REPORT.md").write_text("an old report")
    calls = []
    monkeypatch.setattr("gatescope.reproduce.run_all", lambda runs, **kw: calls.append(runs))
    monkeypatch.setattr("gatescope.reproduce.build_report", lambda out, *args: out / "REPORT.md")
    assert reproduce(TINY_PRESET, tmp_path, quiet=True) == tmp_path / "REPORT.md"
    assert len(calls) == 1 and folder_kind(tmp_path) == "reproduce"
    assert all(folder_kind(run.folder) == "run" for run in calls[0])


# ---------------------------------------------------------------------- 9: exit codes


@pytest.mark.parametrize("command", [["run", "train"], ["reproduce"]])
def test_out_naming_a_file_exits_2(tmp_path, command):
    """Guards item 9: a traceback and exit 1."""
    existing = tmp_path / "results.txt"
    existing.write_text("data")
    proc = cli(*command, "--quiet", "--out", str(existing))
    assert_one_line_usage_error(proc, str(existing), "is a file")
    assert existing.read_text() == "data"


@pytest.mark.parametrize("command, rerun", [
    (RUN_ARGS, False),  # a new run folder inside a read-only folder
    (RUN_ARGS, True),  # a finished run folder made read-only
    (["reproduce", "--quiet"], False),
], ids=["new-run-folder", "finished-run-folder", "reproduce"])
def test_out_in_a_read_only_folder_exits_2(tmp_path, command, rerun):
    """Guards item 9: a PermissionError traceback and exit 1."""
    read_only = tmp_path / "ro"
    out = read_only if rerun else read_only / "out"
    if rerun:
        run_experiment("train", TINY, out, quiet=True)
    else:
        read_only.mkdir()
    read_only.chmod(0o555)
    try:
        if os.access(read_only, os.W_OK):
            pytest.skip("this user (root?) can write into read-only folders")
        proc = cli(*command, "--out", str(out))
    finally:
        read_only.chmod(0o755)
    assert_one_line_usage_error(proc, str(out), "cannot be written")


def test_out_in_a_read_only_folder_simulated(tmp_path, monkeypatch, capsys):
    """Item 9 where permissions cannot be tested (root): writing is denied."""
    def denied(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    run_experiment("train", TINY, tmp_path / "done", quiet=True)
    monkeypatch.setattr(Path, "mkdir", denied)
    monkeypatch.setattr("gatescope.experiments.storage.atomic_write_json", denied)
    for out in (tmp_path / "ro" / "out", tmp_path / "done"):
        assert main([*RUN_ARGS, "--out", str(out)]) == 2
        assert capsys.readouterr().err.strip() == \
            f"gatescope: error: --out {str(out)!r}: cannot be written (Permission denied)"


@pytest.mark.parametrize("device, words", [
    ("banana", ["device must be cpu, cuda or cuda:N", "'banana'"]),
    ("cuda", ["device 'cuda' is not available"]),
])
def test_verify_with_a_bad_device_exits_2(device, words):
    """Guards item 9: ``verify --device banana`` (and ``cuda`` without CUDA) raised a
    traceback with exit 1."""
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert_one_line_usage_error(cli("verify", "--device", device), *words)


# ---------------------------------------------------------------------- 6: permissions


@pytest.fixture
def umask():
    """``os.umask``, for a test to set the process umask; the old one is restored after."""
    old = os.umask(0o022)
    try:
        yield os.umask
    finally:
        os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_atomic_writes_follow_the_umask(tmp_path, umask, mask):
    """Guards item 6: every output was 0600 (``mkstemp``), whatever the umask."""
    umask(mask)
    path = atomic_write_bytes(tmp_path / "report.html", b"<html>")
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
    atomic_write_bytes(path, b"<html>again")  # replacing a file gives the same mode
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]  # no temporary left


def test_run_outputs_are_readable_by_others(tmp_path, umask):
    umask(0o022)
    run_experiment("train", TINY, tmp_path, quiet=True)
    work = tmp_path / "groups" / GROUPS[0] / "work" / "checkpoints"
    for path in [tmp_path / "results.csv", tmp_path / "summary.json", tmp_path / "config.json",
                 tmp_path / "groups" / GROUPS[0] / "rows.csv", work / "step-00000012.pt"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


# ---------------------------------------------------------------------- 7: the lock


def test_a_symlinked_lock_is_refused_and_its_target_kept(tmp_path, capsys):
    """Guards item 7: ``open(OUT/.lock, "w")`` followed the link and truncated its target."""
    precious = tmp_path / "precious.txt"
    precious.write_text("do not truncate")
    out = tmp_path / "out"
    out.mkdir()
    (out / ".lock").symlink_to(precious)
    with pytest.raises(OutputFolderError, match="symbolic link"):
        run_experiment("train", TINY, out, quiet=True)
    assert main([*RUN_ARGS, "--out", str(out)]) == 2
    assert "lock .lock is a symbolic link; remove it" in capsys.readouterr().err
    assert precious.read_text() == "do not truncate"
    assert not (out / "config.json").exists()


def test_the_lock_file_is_not_truncated(tmp_path):
    """Guards item 7: the lock was opened with ``O_TRUNC``."""
    run_experiment("train", TINY, tmp_path, quiet=True)
    (tmp_path / ".lock").write_text("a note")
    run_experiment("train", TINY, tmp_path, quiet=True)
    assert (tmp_path / ".lock").read_text() == "a note"


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (but the lock and folder marker) by relative path."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*")
            if p.is_file() and p.name not in (".lock", FOLDER_MARKER)}


def test_a_run_into_a_locked_folder_is_refused_and_touches_nothing(tmp_path, capsys):
    """Guards the run lock itself: while another run holds ``OUT/.lock`` (held here through
    :func:`run_lock`; an OS lock on a second open file conflicts even in one process), a
    second run -- here with other settings, which would otherwise delete the stale
    results.csv and summary.json and rewrite config.json -- is refused with ``RunLocked``,
    and the CLI exits 1 with a one-line message naming the folder; every file of the
    finished run is left as it was. Without the lock both runs would write the folder."""
    run_experiment("train", TINY, tmp_path, quiet=True)
    before = snapshot(tmp_path)
    other = {**TINY, "steps": 8, "checkpoints": [4]}
    with run_lock(tmp_path):
        with pytest.raises(RunLocked, match=f"another gatescope run is writing to {tmp_path}"):
            run_experiment("train", other, tmp_path, quiet=True)
        assert main(["run", "train", "--quiet", "--set", *as_set_args(other),
                     "--out", str(tmp_path)]) == 1
        err = capsys.readouterr().err.strip()
        assert err == f"gatescope: error: another gatescope run is writing to {tmp_path}", err
        assert snapshot(tmp_path) == before
    assert run_experiment("train", other, tmp_path, quiet=True).ran == GROUPS  # lock released


def test_reproduce_into_a_locked_run_folder_is_refused(tmp_path, monkeypatch, capsys):
    """Guards the lock on ``reproduce``'s runs: a run folder of the reproduction held by
    another process (a reproduction already running into the same folder) stops
    ``gatescope reproduce`` with exit 1 and the lock's message, before that run writes
    anything."""
    monkeypatch.setitem(PRESETS, "quick", TINY_PRESET)
    claim_folder(tmp_path, "reproduce")  # as a reproduction running there has them
    claim_folder(tmp_path / "expansion", "run")
    with run_lock(tmp_path / "expansion"):
        assert main(["reproduce", "--out", str(tmp_path), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert f"another gatescope run is writing to {tmp_path / 'expansion'}" in err, err
    assert not (tmp_path / "expansion" / "config.json").exists()
    assert not (tmp_path / "REPORT.md").exists()


# ---------------------------------------------------------------------- 8: checkpoints


def flip_a_parameter_bit(path: Path) -> None:
    """Flip one high mantissa bit of the first parameter stored in checkpoint ``path``."""
    params = torch.load(path, weights_only=True)["trainer"]["params"]
    raw = next(iter(params.values())).contiguous().numpy().tobytes()
    data = bytearray(path.read_bytes())
    at = data.find(raw)
    assert at >= 0
    data[at + 6] ^= 0x08
    path.write_bytes(bytes(data))


def small_trainer() -> EnsembleTrainer:
    task = gs.make_task("adding", seq_len=6, input_size=2)
    return EnsembleTrainer(task_model_factory(task, "multi_gate", 4, bias=True), [0, 1], task,
                           lr=0.05, batch_size=4, dtype=torch.float64)


def test_checkpoints_record_a_sha256sum_digest(tmp_path):
    train_resumable(small_trainer(), 4, [0, 2], tmp_path)
    for step in (0, 2, 4):
        path = tmp_path / f"step-{step:08d}.pt"
        assert digest_path(path).read_text() == \
            f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.name}\n"


def test_a_flipped_bit_in_a_checkpoint_is_redone_from_the_previous_one(tmp_path, caplog):
    """Guards item 8: a damaged checkpoint loaded silently and changed the results."""
    def measure(t):
        return [{"step": t.steps_done, "loss": t.losses[:, -1].tolist()}] if t.steps_done else []

    reference = train_resumable(small_trainer(), 9, [0, 3, 6], tmp_path / "ref", measure)
    train_resumable(small_trainer(), 6, [0, 3], tmp_path / "run", measure)  # killed after 6
    flip_a_parameter_bit(tmp_path / "run" / "step-00000006.pt")
    with caplog.at_level(logging.INFO, logger="gatescope"):
        resumed = train_resumable(small_trainer(), 9, [0, 3, 6], tmp_path / "run", measure)
    assert resumed == reference
    assert "step-00000006.pt: its sha256 does not match step-00000006.pt.sha256" in caplog.text
    assert "resuming from the checkpoint at step 3" in caplog.text


def test_a_checkpoint_without_a_digest_still_resumes(tmp_path, caplog):
    """Checkpoints of older versions (or a crash between the two writes) have no digest."""
    train_resumable(small_trainer(), 4, [0, 2], tmp_path)
    digest_path(tmp_path / "step-00000004.pt").unlink()
    with caplog.at_level(logging.INFO, logger="gatescope"):
        train_resumable(small_trainer(), 6, [0, 2, 4], tmp_path)
    assert "resuming from the checkpoint at step 4" in caplog.text


def test_a_damaged_checkpoint_does_not_change_a_resumed_run(tmp_path):
    """Item 8 end to end: a run killed after a checkpoint that a bit flip then damaged."""
    reference = run_experiment("train", TINY, tmp_path / "ref", quiet=True)
    out = tmp_path / "run"
    run_experiment("train", TINY, out, quiet=True)
    group = out / "groups" / GROUPS[1]
    for path in [group / "done.json", group / "rows.csv", *group.glob("work/*/step-00000012*")]:
        path.unlink()  # as if killed between the step-8 and step-12 checkpoints
    flip_a_parameter_bit(group / "work" / "checkpoints" / "step-00000008.pt")
    assert run_experiment("train", TINY, out, quiet=True).ran == [GROUPS[1]]
    assert (out / "results.csv").read_bytes() == (reference.out / "results.csv").read_bytes()
    assert json.loads((out / "summary.json").read_text()) == \
        json.loads((reference.out / "summary.json").read_text())
