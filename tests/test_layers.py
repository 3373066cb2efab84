"""The package's shape: layers import in one direction, ``import gatescope`` stays light, the
paper's knowledge lives in :mod:`gatescope.paper`, and cells declare their own traits."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import gatescope as gs
from gatescope import paper
from gatescope.cells import LeakyCell
from gatescope.cells.registry import _CELLS
from gatescope.experiments.anisotropy import AnisotropyExperiment
from gatescope.experiments.base import Group
from gatescope.experiments.profiles import ProfilesExperiment, ProfilesSettings
from gatescope.reporting.analogies import fidelity_section
from gatescope.reporting.anisotropy_verdicts import judge_c4, judge_c5, judge_c6, judge_c7
from gatescope.reporting.expansion_verdicts import judge_c8
from gatescope.reporting.profiles_verdicts import judge_c1, judge_c2, judge_c3
from gatescope.reproduce import PRESETS
from gatescope.reproduce.report_inputs import gated_cells
from gatescope.results import ResultsTable

SRC = Path(gs.__file__).resolve().parents[1]


def run_python(code: str) -> str:
    """Run ``code`` in a fresh interpreter that imports this checkout; returns its stdout."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(SRC), *filter(None, [os.environ.get("PYTHONPATH")])])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


# --- import gatescope ---------------------------------------------------------------------


def test_import_gatescope_loads_the_analysis_api_only():
    """Guards the light import: ``import gatescope`` used to load the experiment layer and
    with it pydantic, tqdm and multiprocessing. Now it loads nothing that ``import torch``
    does not load already (torch itself loads tqdm and multiprocessing), and no pydantic."""
    out = run_python(
        "import json, sys\n"
        "import torch\n"
        "before = set(sys.modules)\n"
        "import gatescope\n"
        "print(json.dumps({'pydantic': 'pydantic' in sys.modules,"
        " 'new': sorted(set(sys.modules) - before)}))\n")
    loaded = json.loads(out)
    assert loaded["pydantic"] is False
    heavy = ("pydantic", "tqdm", "multiprocessing", "concurrent", "matplotlib",
             "gatescope.experiments", "gatescope.reproduce", "gatescope.reporting",
             "gatescope.cli")
    assert [m for m in loaded["new"] if m.split(".")[0] in heavy or m.startswith(heavy)] == []
    assert [m for m in loaded["new"] if not m.startswith("gatescope")] == []


def test_the_experiment_api_loads_on_first_use():
    """``gs.run_experiment``, ``gs.list_experiments`` and ``gs.register_experiment`` keep
    working though ``import gatescope`` no longer imports them (PEP 562 lazy attributes)."""
    out = run_python(
        "import sys\n"
        "import gatescope as gs\n"
        "assert 'gatescope.experiments' not in sys.modules\n"
        "assert {'run_experiment', 'list_experiments', 'register_experiment'} <= set(dir(gs))\n"
        "print(gs.list_experiments())\n"
        "from gatescope import register_experiment, run_experiment\n"
        "import gatescope.experiments as e\n"
        "assert run_experiment is e.run_experiment and register_experiment is "
        "e.register_experiment\n"
        "print('pydantic' in sys.modules)\n")
    names, pydantic_loaded = out.splitlines()
    assert ast.literal_eval(names) == ["train", "profiles", "anisotropy", "expansion", "families",
                                       "learnability", "timescales"]
    assert pydantic_loaded == "True"
    assert gs.run_experiment is gs.experiments.run_experiment
    with pytest.raises(AttributeError, match="no_such_name"):
        gs.no_such_name  # noqa: B018


# --- layers ---------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("lint-imports") is None, reason="import-linter not installed")
def test_the_import_contracts_hold(tmp_path):
    """``lint-imports`` (the contracts in pyproject.toml): cells/tasks → model → dynamics →
    measures → training/probes/verify → experiments | reporting → reproduce → cli, and
    reporting imports none of experiments, training, probes, measures, reproduce or cli."""
    root = SRC.parent
    if not (root / "pyproject.toml").is_file():
        pytest.skip("not a source checkout")
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run(["lint-imports", "--no-cache", "--config", str(root / "pyproject.toml")],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr


# --- the paper's knowledge in one place -------------------------------------------------------


def test_gated_cells_come_from_the_cells_trait():
    """"Which cells are gated" is each built-in cell's own ``gated`` declaration, no list of
    names in the report."""
    builtin = ("plain", "leaky", "scalar_gate", "multi_gate", "gru", "lstm")
    for name in builtin:
        assert "gated" in vars(gs.cell_class(name)), name
    # other tests may leave cells of their own registered
    assert [c for c in gated_cells() if c in builtin] == ["scalar_gate", "multi_gate", "gru",
                                                          "lstm"]


def test_a_users_gated_cell_counts_as_gated():
    class MyGate(gs.cell_class("multi_gate")):
        pass

    gs.register_cell("test_my_gate")(MyGate)
    try:
        assert gated_cells()[-1] == "test_my_gate"
    finally:
        _CELLS.pop("test_my_gate")


def test_presets_experiments_and_reporting_read_the_paper_module():
    """The paper's arms, claims, fidelity switches and experiment names are defined once."""
    from gatescope.experiments import anisotropy
    from gatescope.reporting import analogies
    from gatescope.reproduce import EXPERIMENTS

    assert anisotropy.PAPER_ARMS is paper.PAPER_ARMS and EXPERIMENTS is paper.EXPERIMENTS
    assert analogies.FIDELITY is paper.FIDELITY
    for preset in PRESETS.values():
        assert [f.switch for f in preset.fidelity] == list(paper.FIDELITY)
        for run in preset.fidelity:
            switch = paper.FIDELITY[run.switch]
            assert run.experiment == switch.experiment
            assert all(run.overrides[k] == v for k, v in switch.settings.items())
    empty = ResultsTable({})
    gated = gated_cells()
    verdicts = [judge_c1(empty), judge_c2(empty, gated=gated), judge_c3(empty),
                judge_c4(empty, gated=gated), judge_c5(empty), judge_c6(empty, gated=gated),
                judge_c7(empty, gated=gated), judge_c8(empty)]
    assert [(v.claim, v.statement) for v in verdicts] == \
        [(c.id, c.title) for c in paper.CLAIMS.values()]
    lines = fidelity_section({}).lines
    assert [line.split(":")[0] for line in lines] == list(paper.FIDELITY)


def test_the_paper_arms_start_first_in_the_factorial_design():
    settings = AnisotropyExperiment.settings_model(tasks=("adding",))
    groups = AnisotropyExperiment().groups(settings)
    assert [(g.cell, g.optimizer) for g in groups[:3]] == list(paper.PAPER_ARMS)


def test_fidelity_runs_name_a_known_switch():
    from gatescope.reproduce import FidelityRun

    assert FidelityRun.of("gate_term") == FidelityRun("gate_term", "expansion",
                                                      {"gate_term": "updated"})
    with pytest.raises(ValueError, match="switch must be one of"):
        FidelityRun.of("no_such_switch")


# --- cell parameters, not cell names --------------------------------------------------------


def test_profiles_gives_alpha_to_any_cell_that_takes_one(tmp_path):
    """Guards the profiles experiment's ``alpha``: it reached the cell only when the cell was
    named "leaky"; a user's cell with an ``alpha`` parameter trained with its default."""

    class MyLeaky(LeakyCell):
        pass

    gs.register_cell("test_my_leaky")(MyLeaky)
    try:
        settings = ProfilesSettings(seeds=1, steps=2, checkpoints=(0, 2), seq_len=8,
                                    hidden_size=4, probe_batch=2, rate_lags=(1,),
                                    schedule_lags=(1,), alpha=0.5)
        rows = ProfilesExperiment().run_group(settings, Group("adding", "test_my_leaky", "sgd"),
                                              tmp_path, lambda done, total: None)
    finally:
        _CELLS.pop("test_my_leaky")
    retention = {r["value"] for r in rows if r["metric"] == "retention_mean"}
    assert retention and all(v == pytest.approx(0.5) for v in retention)  # 1 - alpha
