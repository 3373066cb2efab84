"""Every numeric setting of every experiment has a finite range, checked before any work.

Guards defect 10 of the defects issue (found at 5c763dd): settings that passed validation
and failed only after the run folder was written (``weight_std=inf``, ``noise_std=inf``,
``eps=[inf, 1, 0.1]``, ``seq_len=10**9`` allocating 32 GB, ``lags=[]`` failing with "max()
arg is an empty sequence"). Each bad value must give exit code 2, a message naming the
setting, and an untouched ``--out`` folder. Also guards the shared rules of
:mod:`gatescope.checks` (one rule, one message, for settings and library arguments).
"""

from __future__ import annotations

import math
import re
import subprocess
import sys

import pytest

from gatescope import checks, cli
from gatescope.experiments import SettingsError, build_settings, experiment_class
from gatescope.experiments.settings import (
    MAX_BATCH,
    MAX_HIDDEN_SIZE,
    MAX_INPUT_SIZE,
    MAX_SEEDS,
    MAX_SEQ_LEN,
    MAX_STEPS,
    parse_assignments,
)
from gatescope.reproduce.presets import PRESETS

BIG = "1000000000"  # the 10**9 typo

_SIZES = {
    "seeds": ["0", str(MAX_SEEDS + 1), BIG, "[-1]", "[1, 1]", "[]", "true", "[1e30]"],
    "steps": ["0", "-5", str(MAX_STEPS + 1), BIG, "2.5", "nan", "true"],
    "batch_size": ["0", str(MAX_BATCH + 1), BIG, "1.5"],
    "seq_len": ["0", str(MAX_SEQ_LEN + 1), BIG, "inf"],
    "input_size": ["0", "-1", str(MAX_INPUT_SIZE + 1), BIG],
    "hidden_size": ["0", str(MAX_HIDDEN_SIZE + 1), BIG],
}
_GRID = {
    **_SIZES,
    "lr": ["0", "-1", "inf", "nan", "true", "{sgd = inf, adam = 1e-3}"],
    "checkpoints": ["[-1]", f"[{BIG}]", "[1000000]", "[1.5]"],
    "log_every": ["0", str(MAX_STEPS + 1)],
}
_BATCHES = ["0", str(MAX_BATCH + 1), BIG]
_LAGS = ["[]", "[0]", "[1, 1]", f"[{BIG}]", "[1.5]"]

#: experiment -> setting -> bad values (as typed after ``--set KEY=``).
BAD = {
    "train": {**_GRID, "eval_batch": _BATCHES},
    "profiles": {
        **_GRID,
        "probe_batch": _BATCHES,
        "alpha": ["0", "-0.1", "1.5", "inf", "nan"],
        "trim": ["-0.1", "0.5", "inf", "nan"],
        "rate_lags": [*_LAGS, "[80]"],  # seq_len is 80: every lag must be < 80
        "schedule_lags": [*_LAGS, "[80]"],
    },
    "anisotropy": {
        **_GRID,
        "probe_batch": _BATCHES,
        "samples_per_lag": _BATCHES,
        "gradient_examples": [*_BATCHES, "5"],  # 5 < rank=10
        "rank": ["0", "65", BIG],  # 65 > hidden_size=64
        "lags": [*_LAGS, "[120]"],  # seq_len is 120
        "rate_lags": [*_LAGS, "[120]"],
        "spectrum_epsilon": ["-1e-12", "inf", "nan", "true", "tiny"],
    },
    "expansion": {
        **_SIZES,
        "input_size": ["0", str(MAX_INPUT_SIZE + 1), BIG, "none"],
        "weight_std": ["0", "-1", "inf", "nan", "true"],
        "noise_std": ["-1", "inf", "nan"],
        "eps": ["[inf, 1, 0.1]", "[0, 1]", "[-1, 1]", "[nan, 1]", "[1]", "[]"],
        "fit_points": ["1", "12", BIG],  # 12 > the 11 default eps
    },
}
_FOLLOWUP = {
    **_GRID,
    "probe_batch": _BATCHES,
    "lags": [*_LAGS, "[128]"],  # seq_len is 128
    "rate_lags": [*_LAGS, "[128]"],
    "coefficients": ["[]", "[1, 2]", "[inf, 1, 1, 1, 1]", "[nan, 1, 1, 1, 1]"],
    "noise_std": ["-1", "inf", "nan"],
    "noise_alphas": ["[1]", "[2.5]", "[0.5]", "[]", "[2, 2]", "[nan]"],
    "initial_gate": ["0", "1", "-0.1", "nan"],
    "gate_spreads": ["[-1]", "[inf]", "[]", "[0, 0]"],
    "forcing_alpha": ["0", "2.5", "inf", "nan"],
    "forcing_scale": ["-1", "inf", "nan"],
    "weight_decay": ["-1", "inf", "nan"],
    "clip_norm": ["0", "-1", "inf", "nan"],
}
BAD["learnability"] = BAD["timescales"] = _FOLLOWUP
del BAD["expansion"]["batch_size"], BAD["expansion"]["steps"]

#: Combinations each within its bounds whose largest tensor is over the memory limit:
#: (experiment, assignments, a setting the message must name).
TOO_BIG = [
    ("train", ["seeds=1000", "batch_size=65536"], "batch_size"),
    ("profiles", ["hidden_size=4096", "seq_len=5000"], "seq_len"),
    ("anisotropy", ["hidden_size=4096"], "hidden_size"),
    ("expansion", ["hidden_size=4096", "seq_len=1000"], "hidden_size"),
]

CASES = [(exp, key, value) for exp, table in BAD.items() for key, values in table.items()
         for value in values]


@pytest.fixture
def no_runs(monkeypatch):
    """A wrongly accepted value fails at once instead of training a default-sized run."""
    def accepted(*args, **kwargs):
        raise AssertionError("the settings were accepted and a group started")

    monkeypatch.setattr("gatescope.experiments.runner.run_group_job", accepted)


def _names_setting(stderr: str, key: str) -> bool:
    return re.search(rf"setting '[^']*\b{key}\b", stderr) is not None


def _untouched(out) -> bool:
    return not out.exists() or not any(out.iterdir())


# ---------------------------------------------------------------------- the command line


@pytest.mark.parametrize(("experiment", "assignment"), [
    ("expansion", "weight_std=inf"),
    ("expansion", "noise_std=inf"),
    ("expansion", "eps=[inf, 1, 0.1]"),
    ("expansion", f"seq_len={BIG}"),
    ("train", f"seq_len={BIG}"),
    ("train", f"hidden_size={BIG}"),
    ("profiles", f"batch_size={BIG}"),
    ("anisotropy", f"steps={BIG}"),
    ("anisotropy", "lags=[]"),
    ("profiles", "rate_lags=[]"),
])
def test_the_issues_bad_values_exit_2_naming_the_key_and_write_nothing(tmp_path, experiment,
                                                                       assignment):
    """The defects issue's values, through ``python -m gatescope run`` itself."""
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "gatescope", "run", experiment, "--set", assignment,
         "--out", str(out), "--quiet"],
        capture_output=True, text=True, timeout=120)
    key = assignment.partition("=")[0]
    assert proc.returncode == 2, proc.stderr
    assert _names_setting(proc.stderr, key), proc.stderr
    assert "max() arg" not in proc.stderr
    assert _untouched(out)


@pytest.mark.parametrize(("experiment", "key", "value"), CASES)
def test_every_numeric_setting_has_a_range(tmp_path, capsys, no_runs, experiment, key, value):
    """Every numeric setting, out of its range (or its cross-field bound), via the CLI."""
    out = tmp_path / "run"
    code = cli.main(["run", experiment, "--set", f"{key}={value}", "--out", str(out),
                     "--quiet"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert _names_setting(err, key), err
    assert _untouched(out)


@pytest.mark.parametrize(("experiment", "assignments", "key"), TOO_BIG)
def test_settings_whose_largest_tensor_is_too_big_are_refused(tmp_path, capsys, no_runs,
                                                              experiment, assignments, key):
    out = tmp_path / "run"
    code = cli.main(["run", experiment, "--set", *assignments, "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert _names_setting(err, key) and "GiB" in err, err
    assert _untouched(out)


def test_the_sweep_covers_every_numeric_setting():
    """A new numeric setting must get a range (and a row in BAD)."""
    for name, table in BAD.items():
        model = experiment_class(name).settings_model
        for key, field in model.model_fields.items():
            default = field.get_default(call_default_factory=True)
            items = default if isinstance(default, list | tuple) else [default]
            numeric = any(isinstance(v, int | float) and not isinstance(v, bool)
                          for v in items)
            if numeric and key != "ce_denominator":  # a choice: "all" or 16
                assert key in table, f"{name}.{key} has no bad values in the sweep"


# ---------------------------------------------------------------------- what stays valid


@pytest.mark.parametrize("name", ["train", "profiles", "anisotropy", "expansion", "families",
                                  "learnability", "timescales"])
def test_defaults_and_bounds_themselves_are_accepted(name):
    model = experiment_class(name).settings_model
    build_settings(model, {})
    build_settings(model, {"seq_len": MAX_SEQ_LEN, "hidden_size": 16, "input_size": 8,
                           "seeds": [0, 2**63 - 1]})
    if name != "expansion":
        build_settings(model, {"seeds": MAX_SEEDS, "batch_size": 1, "steps": MAX_STEPS,
                               "checkpoints": None, "hidden_size": 16})


def test_int_lists_and_whole_floats_still_parse():
    """``--set lags=1,2,4``, ``steps=1e3`` and ``eps=[1e-3, 1]`` keep working."""
    s = build_settings(experiment_class("anisotropy").settings_model,
                       parse_assignments(["lags=8,1,2", "steps=1e3", "checkpoints=0,500"]))
    assert s.lags == (1, 2, 8) and s.steps == 1000
    e = build_settings(experiment_class("expansion").settings_model,
                       parse_assignments(["eps=[1e-3, 1]", "fit_points=2"]))
    assert e.eps == [1e-3, 1.0]


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_the_reproduce_presets_are_within_the_bounds(preset):
    p = PRESETS[preset]
    for name, settings in p.settings.items():
        build_settings(experiment_class(name).settings_model, settings)
    for run in p.fidelity:
        build_settings(experiment_class(run.experiment).settings_model,
                       p.settings[run.experiment], run.overrides)


# ---------------------------------------------------------------------- one rule, one place


def test_a_setting_and_a_library_argument_share_the_rule_and_its_message():
    with pytest.raises(ValueError) as lib:
        checks.as_float("weight_std", math.inf, above=0)
    with pytest.raises(SettingsError) as setting:
        build_settings(experiment_class("expansion").settings_model, {"weight_std": math.inf})
    assert str(lib.value) == "weight_std must be a finite number > 0; got inf"
    assert setting.value.problems == [("weight_std", str(lib.value))]


@pytest.mark.parametrize(("call", "message"), [
    (lambda: checks.as_int("k", 0, minimum=1), "k must be an integer >= 1; got 0"),
    (lambda: checks.as_int("n", 5, minimum=1, maximum=4), "n must be an integer in [1, 4]"),
    (lambda: checks.as_int("n", True), "n must be an integer; got True"),
    (lambda: checks.as_float("a", 1.5, above=0, maximum=1), r"a must be a finite number in (0, 1]"),
    (lambda: checks.as_float("t", 0.5, minimum=0, below=0.5), r"in [0, 0.5); got 0.5"),
    (lambda: checks.as_float("x", math.nan), "x must be a finite number; got nan"),
    (lambda: checks.as_int_tuple("lags", [], minimum=1), "non-empty sequence of distinct"),
    (lambda: checks.as_float_tuple("eps", [1.0], min_length=2), "at least 2 finite numbers"),
    (lambda: checks.as_choice("c", "x", ("a", "b")), "c must be one of ['a', 'b']"),
    (lambda: checks.as_bool("b", 1), "b must be True or False"),
])
def test_checks_name_the_argument_and_what_is_allowed(call, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        call()


def test_import_gatescope_does_not_import_pydantic():
    code = "import sys, gatescope, gatescope.checks; print('pydantic' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=120)
    assert proc.stdout.strip() == "False"


def test_the_private_validate_module_is_gone():
    with pytest.raises(ModuleNotFoundError):
        __import__("gatescope.tasks._validate")
