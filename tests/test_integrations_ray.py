"""The Ray backend of the runner (issue 14, "What it must show" 1 and 4): the same
``results.csv`` as the local backend to the last digit, a group finished under one backend
reused by the other, a killed Ray worker retried with the identical result, a group's own
error reported as locally, and ``--backend ray`` without Ray exiting 2 before any work.

The Ray tests skip when ``ray`` is not installed (extra ``gatescope[ray]``); each module
worker starts one small local Ray instance (2 CPUs, no dashboard) and shuts it down.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
from test_runner import TINY, OneGroupFails, as_set_args

from gatescope.cli import main
from gatescope.experiments import RunError, register_experiment, run_experiment
from gatescope.experiments.runner import BackendError, check_backend


@pytest.fixture(scope="module")
def ray_instance():
    """A local Ray instance whose workers can import the test modules (the test
    experiments' classes travel to them by reference)."""
    ray = pytest.importorskip("ray")
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), *sys.path])
    try:
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 1024**2)
    finally:
        if saved is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = saved
    yield ray
    ray.shutdown()


def _results(folder: Path) -> bytes:
    return (folder / "results.csv").read_bytes()


def test_ray_backend_writes_the_local_backends_results_to_the_last_digit(tmp_path,
                                                                          ray_instance):
    """Guards the backend seam: the same groups, rows, markers and report files, whichever
    backend ran them (``gatescope run --backend ray`` through the command line)."""
    local = run_experiment("train", TINY, tmp_path / "local", jobs=2, quiet=True)
    args = ["run", "train", "--set", *as_set_args(TINY), "--out", str(tmp_path / "ray"),
            "--jobs", "2", "--backend", "ray", "--quiet"]
    assert main(args) == 0
    assert _results(tmp_path / "ray") == _results(tmp_path / "local")
    for key in local.ran:
        assert ((tmp_path / "ray" / "groups" / key / "rows.csv").read_bytes()
                == (tmp_path / "local" / "groups" / key / "rows.csv").read_bytes())
    assert ((tmp_path / "ray" / "summary.json").read_bytes()
            == (tmp_path / "local" / "summary.json").read_bytes())


def test_a_group_finished_under_one_backend_is_not_redone_under_the_other(tmp_path,
                                                                          ray_instance):
    """Guards that the backend is no setting: a local run is reused by a Ray rerun, and a
    group left unfinished is the only one Ray runs (and the other way round)."""
    out = tmp_path / "run"
    first = run_experiment("train", TINY, out, quiet=True)
    reference = _results(out)
    again = run_experiment("train", TINY, out, quiet=True, backend="ray", jobs=2)
    assert again.ran == [] and again.skipped == first.ran
    (out / "groups" / first.ran[1] / "done.json").unlink()
    redo = run_experiment("train", TINY, out, quiet=True, backend="ray", jobs=2)
    assert redo.ran == [first.ran[1]] and redo.skipped == [first.ran[0]]
    assert _results(out) == reference
    (out / "groups" / first.ran[0] / "done.json").unlink()
    local = run_experiment("train", TINY, out, quiet=True)
    assert local.ran == [first.ran[0]] and _results(out) == reference


def _ray_worker_pid(task_name: str) -> int | None:
    """The pid of the Ray worker whose process title is ``ray::TASK_NAME`` (Linux)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            continue
        if title == f"ray::{task_name}".encode():
            return int(entry.name)
    return None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the worker in /proc")
def test_a_killed_ray_worker_is_retried_and_the_results_are_identical(tmp_path,
                                                                      ray_instance):
    """Guards the retry: SIGKILL the worker running a group after its first checkpoints;
    Ray reruns the task, which resumes from the checkpoint, and the run ends with the
    ``results.csv`` of an uninterrupted local run."""
    settings = {**TINY, "steps": 400, "seq_len": 12, "checkpoints": list(range(0, 400, 25))}
    reference = tmp_path / "reference"
    run_experiment("train", settings, reference, quiet=True)

    out = tmp_path / "killed"
    key = "adding__multi_gate__sgd"
    checkpoint = out / "groups" / key / "work" / "checkpoints" / "step-00000050.pt"
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = run_experiment("train", settings, out, quiet=True, jobs=2,
                                               backend="ray")
        except BaseException as err:  # reported by the main thread
            outcome["error"] = err

    runner = threading.Thread(target=run)
    runner.start()
    deadline = time.monotonic() + 600  # generous: a loaded 2-core machine starts Ray slowly
    while not checkpoint.exists():
        assert runner.is_alive(), outcome
        assert time.monotonic() < deadline
        time.sleep(0.002)
    pid = _ray_worker_pid(f"gatescope:{key}")
    assert pid is not None, "no Ray worker runs the group"
    os.kill(pid, signal.SIGKILL)
    runner.join(timeout=600)
    assert not runner.is_alive()
    assert "error" not in outcome, outcome["error"]
    assert key in outcome["result"].ran
    assert _ray_worker_pid(f"gatescope:{key}") != pid
    assert _results(out) == _results(reference)


class FailsOnB(OneGroupFails):
    """test_runner's experiment whose group ``b`` raises, with its registered name on the
    class itself (a Ray worker imports the class, not the registration)."""

    name = "_test_one_group_fails"


def test_a_failing_group_is_reported_as_with_the_local_backend(tmp_path, ray_instance):
    """Guards that the group's own error (not Ray's wrapper) names the failed group, is not
    retried, and does not stop its siblings."""
    register_experiment(FailsOnB.name)(FailsOnB)
    with pytest.raises(RunError) as info:
        run_experiment("_test_one_group_fails", {}, tmp_path, quiet=True, jobs=2,
                       backend="ray")
    assert info.value.failures == {"t__b__none": "RuntimeError: boom"}
    assert (tmp_path / "groups" / "t__c__none" / "done.json").exists()
    assert not (tmp_path / "results.csv").exists()


# ---------------------------------------------------------------------- without Ray


@pytest.mark.parametrize("command", [["run", "train"], ["reproduce"]])
def test_backend_ray_without_ray_exits_2_naming_the_extra(tmp_path, monkeypatch, capsys,
                                                          command):
    """Must-show 4: no Ray installed (simulated) -> exit 2, the install line, nothing
    written."""
    monkeypatch.setitem(sys.modules, "ray", None)
    out = tmp_path / "out"
    assert main([*command, "--out", str(out), "--backend", "ray", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'gatescope[ray]'" in err and "--backend ray" in err, err
    assert not out.exists()


def test_address_without_the_ray_backend_and_an_unknown_backend_are_refused(tmp_path,
                                                                            capsys):
    out = tmp_path / "out"
    assert main(["run", "train", "--out", str(out), "--address", "auto"]) == 2
    assert "--address is only for backend 'ray'" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(BackendError, match="backend must be one of 'local', 'ray'; got 'dask'"):
        check_backend("dask")
    with pytest.raises(BackendError, match="backend must be one of"):
        run_experiment("train", TINY, out, backend="dask")
    assert not out.exists()


def test_importing_gatescope_imports_no_optional_integration():
    """Guards the lazy imports: the core, the runner and the command line never import the
    optional packages at module level."""
    import subprocess

    code = ("import sys, gatescope, gatescope.cli, gatescope.experiments, "
            "gatescope.reproduce, gatescope.integrations, gatescope.integrations.ray_backend, "
            "gatescope.integrations.loggers\n"
            "bad = [m for m in ('ray', 'tensorboard', 'wandb', 'lightning', "
            "'torch.utils.tensorboard') if m in sys.modules]\n"
            "assert not bad, bad\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
