"""End to end, the report's verdicts are the measurements' verdicts: a tiny preset built so
that one claim must come out "supported" and another "not supported" runs through
``reproduce`` (experiments, results, report), and ``verdicts.json`` says so.

* **C8 supported.** The expansion experiment's cells are untrained gated cells with
  weights ``N(0, 0.2²)``: the gate term is small beside the time-scale term at every step
  (``ρ_j = ‖B_j‖/‖A_j‖`` about 0.01, below the 0.1 of "small", in every seed and at a
  similar size across seeds: "systematic"). The small-ε slope of the truncation error is 2
  by construction (``E(ε) = ε² ‖F''(0)/2‖ + O(ε³)``) and is printed as a sanity line only.
* **C2 not supported.** ``profiles`` trains with ``lr = 1e-20``: every update ``η g`` is
  far below half a unit in the last place of every (float32) parameter, so training leaves
  the parameters bit-identical, and each seed's probe batch is fixed, so the profile and
  the fitted slopes at the last checkpoint equal those at step 0. Every paired per-seed
  change C2 sign-tests is then exactly 0, on neither side, so every test fails (no
  majority of seeds changes) and so does the control (0 is not larger than leaky's 0):
  "not supported" (not "mixed", and not "not measured": a test with no change fails
  whatever the number of seeds).
"""

from __future__ import annotations

import json

import pytest

from gatescope.experiments import read_rows
from gatescope.reproduce import Preset, reproduce

#: The two claims and the verdict each must get.
EXPECTED = {"C8": "supported", "C2": "not supported"}

PRESET = Preset(
    "verdicts",
    {
        "expansion": {"seeds": 2, "seq_len": 30, "hidden_size": 8},
        "profiles": {"seeds": 3, "steps": 2, "checkpoints": [0, 2], "lr": 1e-20,
                     "seq_len": 12, "hidden_size": 6, "probe_batch": 3, "batch_size": 4,
                     "rate_lags": [1, 4], "schedule_lags": [1, 2]},
        "anisotropy": {"seeds": 2, "steps": 2, "checkpoints": [0, 2], "seq_len": 12,
                       "hidden_size": 6, "tasks": ["adding"], "design": "paper",
                       "lags": [1, 4], "samples_per_lag": 2, "gradient_examples": 4,
                       "probe_batch": 2, "rank": 2, "rate_lags": [1, 4], "batch_size": 4},
    },
    (),
)


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    out = tmp_path_factory.mktemp("verdicts")
    reproduce(PRESET, out, quiet=True)
    return out


def test_the_training_changes_nothing_the_profiles_measure(out):
    """C2's premise: the profile and slope rows of the last checkpoint equal step 0's."""
    rows = read_rows(out / "profiles" / "results.csv")

    def at(step):
        return {(r["cell"], r["seed"], r["metric"], r["lag"], r["predictor"]): r["value"]
                for r in rows if r["step"] == step
                and r["metric"] in ("sensitivity_profile", "fit_slope")}

    first, last = at(0), at(2)
    assert first and first == last


def test_the_known_claims_get_their_verdicts(out):
    verdicts = {v["claim"]: v for v in json.loads((out / "verdicts.json").read_text())}
    assert {claim: verdicts[claim]["verdict"] for claim in EXPECTED} == EXPECTED
    c8 = verdicts["C8"]["evidence"]
    for cell in ("multi_gate", "scalar_gate"):
        assert any(line.startswith(f"{cell}: sanity (an identity") and "slope 2 " in line
                   for line in c8), c8
        assert any(line.startswith(f"{cell}: small: ") and line.endswith("→ holds")
                   for line in c8), c8
    assert any(line.startswith("multi_gate |profile change| 0 ") and "0/3 seeds" in line
               for line in verdicts["C2"]["evidence"]), verdicts["C2"]["evidence"]
    report = (out / "REPORT.md").read_text()
    for claim, verdict in EXPECTED.items():
        section = report.split(f"### {claim}:")[1].split("### ")[0]
        assert f"**Verdict: {verdict}.**" in section, section[:400]
        # the rule's null and the measured margin are printed next to it
        assert f"Null: {verdicts[claim]['null']}." in section, section[:600]
        assert f"Margin: {verdicts[claim]['margin']}." in section, section[:600]
