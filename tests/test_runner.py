"""The experiment runner and the command line: settings errors, divergence, resume after
SIGKILL, integrity of results files, parallel workers, ``gatescope list``."""

from __future__ import annotations

import csv
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from references import percentile

from gatescope.cli import main
from gatescope.experiments import (
    Experiment,
    Group,
    RunError,
    Settings,
    read_rows,
    register_experiment,
    run_experiment,
)
from gatescope.experiments.rows import RowWriter
from gatescope.experiments.storage import GroupFolder, GroupTiming, wall_span
from gatescope.metrics import declare_metric
from gatescope.tasks import make_task

#: The one metric of the test experiments below (workers import this module too).
TEST_METRIC = declare_metric("m", "a constant written by the test experiments")
SURVIVES = declare_metric("survives", "1 if a subnormal float survived arithmetic, else 0")

#: A tiny, fast grid: 2 groups × 2 seeds, float64 so reruns are bit-identical.
TINY = {"cells": ["leaky", "multi_gate"], "seeds": 2, "steps": 12, "seq_len": 6,
        "hidden_size": 4, "batch_size": 4, "eval_batch": 8, "checkpoints": [4, 8],
        "log_every": 3, "dtype": "float64"}


def as_set_args(settings: dict) -> list[str]:
    def text(v):
        return ",".join(map(str, v)) if isinstance(v, list) else str(v)

    return [f"{k}={text(v)}" for k, v in settings.items()]


def keys_of(path: Path) -> list[tuple]:
    with open(path, newline="") as f:
        return [(r["task"], r["cell"], r["optimizer"], r["seed"], r["step"], r["metric"])
                for r in csv.DictReader(f)]


# ---------------------------------------------------------------------- settings errors


@pytest.mark.parametrize("assignment, words", [
    ("lrr=0.1", ["'lrr'", "unknown setting", "did you mean 'lr'", "allowed:", "seeds"]),
    ("lr=-0.1", ["'lr'", "> 0", "-0.1"]),
    ("cells=plain,nope", ["'cells'", "nope", "allowed:", "multi_gate"]),
    ("dtype=float16", ["'dtype'", "'float32' or 'float64'"]),
    ("checkpoints=5,900", ["'checkpoints'", "[0, steps=800]"]),
])
def test_bad_settings_exit_2_before_any_work(tmp_path, capsys, assignment, words):
    out = tmp_path / "run"
    assert main(["run", "train", "--set", assignment, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert all(w in err for w in words), err
    assert not out.exists()


def test_unknown_experiment_and_bad_config_exit_2(tmp_path, capsys):
    assert main(["run", "nope"]) == 2
    assert "unknown experiment 'nope'" in capsys.readouterr().err
    config = tmp_path / "c.toml"
    config.write_text("steps = 3\nwhat = 1\n")
    assert main(["run", "train", "--config", str(config), "--out", str(tmp_path / "o")]) == 2
    assert "'what'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "train", "--jobs", "0"])
    assert exit_info.value.code == 2


# ---------------------------------------------------------------------- runs


def test_huge_learning_rate_is_a_diverged_record_and_the_grid_goes_on(tmp_path):
    settings = {**TINY, "cells": ["multi_gate"], "optimizers": ["sgd", "adam"],
                "lr": {"sgd": 1e6, "adam": 1e-2}, "steps": 30}
    result = run_experiment("train", settings, tmp_path, quiet=True)
    rows = read_rows(tmp_path / "results.csv")
    diverged = [r for r in rows if r["metric"] == "diverged"]
    assert {(r["optimizer"], r["seed"]) for r in diverged} == {("sgd", 0), ("sgd", 1)}
    assert all(r["step"] == r["value"] and 0 <= r["step"] < 30 for r in diverged)
    final = [r for r in rows if r["metric"] == "eval_loss" and r["step"] == 30]
    assert {(r["optimizer"], r["seed"]) for r in final} == {("adam", 0), ("adam", 1)}
    sgd, adam = result.summary["groups"]
    assert set(sgd["diverged"]) == {"0", "1"} and sgd["final_eval_loss"] is None
    assert adam["diverged"] == {} and adam["final_eval_loss"]["n"] == 2


def test_train_summary_holds_the_final_eval_loss_quartiles_per_group(tmp_path):
    """Guards the values in ``summary.json`` of ``train`` (only a count was tested): per
    group, the median, quartiles and count of the seeds' ``eval_loss`` at the last step,
    recomputed from ``results.csv`` without numpy (4 seeds: ranks 0.75, 1.5 and
    2.25, so every quartile interpolates), and the median over the task's baseline loss."""
    settings = {**TINY, "seeds": 4}
    run_experiment("train", settings, tmp_path, quiet=True)
    final: dict[tuple, list[float]] = {}
    with open(tmp_path / "results.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["metric"] == "eval_loss" and int(row["step"]) == TINY["steps"]:
                key = (row["task"], row["cell"], row["optimizer"])
                final.setdefault(key, []).append(float(row["value"]))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["experiment"] == "train" and summary["steps"] == TINY["steps"]
    baseline = make_task("adding", seq_len=TINY["seq_len"]).baseline_loss
    groups = {(g["task"], g["cell"], g["optimizer"]): g for g in summary["groups"]}
    assert groups.keys() == final.keys() == {("adding", c, "sgd") for c in TINY["cells"]}
    for key, values in final.items():
        entry = groups[key]
        assert len(values) == 4 and entry["seeds"] == 4 and entry["diverged"] == {}
        assert entry["final_eval_loss"] == pytest.approx(
            {"median": percentile(values, 50), "q25": percentile(values, 25),
             "q75": percentile(values, 75), "n": 4}, rel=1e-12, abs=0)
        assert entry["baseline_loss"] == pytest.approx(baseline, rel=1e-12)
        assert entry["median_over_baseline"] == pytest.approx(
            percentile(values, 50) / baseline, rel=1e-12)


def test_rerun_skips_finished_groups_and_redoes_truncated_files(tmp_path, capsys):
    first = run_experiment("train", TINY, tmp_path, quiet=True)
    assert first.ran == ["adding__leaky__sgd", "adding__multi_gate__sgd"] and first.rows > 0
    results = (tmp_path / "results.csv").read_bytes()
    group_rows = tmp_path / "groups" / "adding__multi_gate__sgd" / "rows.csv"
    original = group_rows.read_bytes()

    again = run_experiment("train", TINY, tmp_path, quiet=True)
    assert again.ran == [] and len(again.skipped) == 2

    group_rows.write_bytes(original[: len(original) // 2])  # truncated group file
    (tmp_path / "results.csv").write_bytes(results[:100])  # truncated assembled file
    assert main(["run", "train", *sum((["--set", a] for a in as_set_args(TINY)), []),
                 "--out", str(tmp_path), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "adding__multi_gate__sgd" in err and "truncated" in err
    assert group_rows.read_bytes() == original
    assert (tmp_path / "results.csv").read_bytes() == results

    changed = run_experiment("train", {**TINY, "steps": 10}, tmp_path, quiet=True)
    assert len(changed.ran) == 2  # other settings: nothing reused


def test_sigkill_mid_run_then_rerun_equals_uninterrupted(tmp_path, caplog):
    settings = {**TINY, "steps": 400, "seq_len": 12, "checkpoints": list(range(0, 400, 25))}
    reference = tmp_path / "reference"
    run_experiment("train", settings, reference, quiet=True)

    out = tmp_path / "killed"
    second = out / "groups" / "adding__multi_gate__sgd" / "work" / "checkpoints"
    command = [sys.executable, "-m", "gatescope", "run", "train", "--out", str(out), "--quiet",
               "--set", *as_set_args(settings)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not (second / "step-00000050.pt").exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert not (out / "results.csv").exists()
    assert not (second.parent.parent / "done.json").exists()
    assert (out / "groups" / "adding__leaky__sgd" / "done.json").exists()

    with caplog.at_level(logging.INFO, logger="gatescope"):
        result = run_experiment("train", settings, out, quiet=True)
    assert result.skipped == ["adding__leaky__sgd"]
    assert "resuming from the checkpoint at step" in caplog.text
    assert (out / "results.csv").read_bytes() == (reference / "results.csv").read_bytes()
    keys = keys_of(out / "results.csv")
    assert len(keys) == len(set(keys))


@pytest.fixture
def test_experiments():
    """The runner's test experiments, registered for one test (conftest's
    ``isolated_registries`` removes them, so ``gatescope list`` never shows them)."""
    for name, cls in (("_test_one_group_fails", OneGroupFails),
                      ("_test_slow_group", SlowGroup), ("_test_sees_denormals", SeesDenormals)):
        register_experiment(name)(cls)


def _one_row(experiment, group, metric, value):
    """The single result row (seed 0, step 0) of a test experiment's group."""
    writer = RowWriter(experiment, group.task, group.cell, group.optimizer)
    writer.add(0, 0, metric, value)
    return writer.rows


class OneGroupFails(Experiment):
    description = "test: the second of three groups raises"
    settings_model = Settings

    def groups(self, settings):
        return [Group("t", cell, "none") for cell in ("a", "b", "c")]

    def run_group(self, settings, group, workdir, progress):
        if group.cell == "b":
            raise RuntimeError("boom")
        return _one_row(self.name, group, TEST_METRIC, 1.0)


def test_a_failing_group_does_not_stop_the_grid(tmp_path, test_experiments):
    with pytest.raises(RunError, match="t__b__none: RuntimeError: boom") as info:
        run_experiment("_test_one_group_fails", {}, tmp_path, quiet=True)
    assert list(info.value.failures) == ["t__b__none"]
    assert (tmp_path / "groups" / "t__c__none" / "done.json").exists()
    assert not (tmp_path / "results.csv").exists()


def test_parallel_workers_give_the_same_results(tmp_path):
    serial = run_experiment("train", TINY, tmp_path / "one", quiet=True)
    parallel = run_experiment("train", TINY, tmp_path / "two", jobs=2, quiet=True)
    assert parallel.ran == serial.ran
    assert ((tmp_path / "two" / "results.csv").read_bytes()
            == (tmp_path / "one" / "results.csv").read_bytes())


# ---------------------------------------------------------------------- other commands


def test_list_shows_cells_tasks_with_baselines_and_experiments(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for word in ("multi_gate", "lstm", "adding", "narma10", "0.16667", "train", "seeds",
                 "rmsprop"):
        assert word in out


def test_list_shows_no_test_experiment(capsys):
    """The runner's test experiments are registered per test, never at import, so
    ``gatescope list`` is the same whichever test files ran before."""
    assert main(["list"]) == 0
    assert "_test_" not in capsys.readouterr().out


def test_verify_without_its_module_says_so(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gatescope.verify", None)
    monkeypatch.delattr("gatescope.verify", raising=False)
    assert main(["verify"]) == 1
    assert "no gatescope.verify" in capsys.readouterr().err


def test_verify_forwards_device_and_dtype(monkeypatch):
    calls = []
    fake = type(sys)("gatescope.verify")
    fake.main = lambda device, dtype: calls.append((device, dtype)) or 0
    monkeypatch.setitem(sys.modules, "gatescope.verify", fake)
    monkeypatch.setattr("gatescope.verify", fake, raising=False)
    assert main(["verify", "--device", "cpu", "--dtype", "float32"]) == 0
    assert calls == [("cpu", "float32")]


class SlowGroup(Experiment):
    description = "test: one group that takes 0.2 s"
    settings_model = Settings

    def groups(self, settings):
        return [Group("t", "slow", "none")]

    def run_group(self, settings, group, workdir, progress):
        time.sleep(0.2)
        return _one_row(self.name, group, TEST_METRIC, 1.0)


def test_the_marker_records_the_group_wall_time(tmp_path, test_experiments):
    before = time.time()
    run_experiment("_test_slow_group", {}, tmp_path, quiet=True)
    timing = GroupFolder(tmp_path, Group("t", "slow", "none")).timing()
    assert 0.2 <= timing.seconds < 5
    assert before <= timing.invocation <= timing.started < before + 5
    assert GroupFolder(tmp_path, Group("t", "other", "none")).timing() is None


def test_wall_span_sums_each_run_and_skips_the_pauses_between():
    first = [GroupTiming(100.0, 100.0, 10.0), GroupTiming(100.0, 101.0, 20.0)]  # to 121
    resumed = [GroupTiming(500.0, 500.5, 4.0)]
    assert wall_span(first) == 21.0
    assert wall_span(first + resumed) == 25.0
    assert wall_span([]) == 0


class SeesDenormals(Experiment):
    description = "test: reports whether a subnormal float survives arithmetic"
    settings_model = Settings

    def groups(self, settings):
        return [Group("t", "c", "none")]

    def run_group(self, settings, group, workdir, progress):
        subnormal = torch.tensor([1e-39], dtype=torch.float32)  # below 1.2e-38
        return _one_row(self.name, group, SURVIVES, (subnormal * 1.0).item() != 0)


def test_groups_run_with_subnormals_flushed_and_the_mode_is_restored(tmp_path,
                                                                   test_experiments):
    if not torch.set_flush_denormal(False):
        pytest.skip("this processor cannot flush subnormal floats")
    assert (torch.tensor([1e-39]) * 1.0).item() != 0
    run_experiment("_test_sees_denormals", {}, tmp_path, quiet=True)
    assert [r["value"] for r in read_rows(tmp_path / "results.csv")] == [0.0]
    assert (torch.tensor([1e-39]) * 1.0).item() != 0
