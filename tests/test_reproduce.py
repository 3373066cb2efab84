"""``gatescope reproduce`` end to end on a tiny preset: outputs, report, resume."""

from __future__ import annotations

import csv
import json
import math
import re
import shutil

import pytest
from references import percentile

from gatescope.cli import main
from gatescope.experiments import SettingsError
from gatescope.experiments.storage import FOLDER_MARKER
from gatescope.reproduce import PRESETS, FidelityRun, Preset, plan, reproduce
from gatescope.reproduce.report_inputs import STAMP, build_report, results_stamp, up_to_date

TINY = Preset(
    "tiny",
    {
        "expansion": {"seeds": 2, "seq_len": 30, "hidden_size": 8},
        "profiles": {"seeds": 2, "steps": 4, "checkpoints": [0, 4], "seq_len": 16,
                     "hidden_size": 8, "probe_batch": 3, "rate_lags": [1, 4],
                     "schedule_lags": [1, 2]},
        "anisotropy": {"seeds": 2, "steps": 4, "checkpoints": [0, 4], "seq_len": 16,
                       "hidden_size": 8, "tasks": ["adding"], "lags": [1, 4],
                       "samples_per_lag": 4, "gradient_examples": 8, "probe_batch": 4,
                       "rank": 4, "rate_lags": [1, 4]},
    },
    (FidelityRun("gate_term", "expansion", {"gate_term": "updated"}),
     FidelityRun("fixed_batch", "anisotropy", {"fixed_batch": True, "design": "paper"})),
)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A finished tiny reproduction (copy it before changing it)."""
    out = tmp_path_factory.mktemp("built")
    reproduce(TINY, out, quiet=True)
    return out


def report_outputs(out):
    """The files the report step wrote, as its stamp records them (REPORT.md first)."""
    return [out / name for name in json.loads((out / STAMP).read_text())["outputs"]]


def test_tiny_reproduce_writes_everything_and_resumes(built):
    tmp_path = built
    report = tmp_path / "REPORT.md"
    text = report.read_text()
    for claim in ("C1", "C2", "C3", "C4", "C5", "C6", "C7", "C8"):
        assert f"### {claim}:" in text
    assert (tmp_path / "report.html").read_text().count("data:image/png;base64") >= 8
    verdicts = json.loads((tmp_path / "verdicts.json").read_text())
    assert all(v["verdict"] in ("supported", "not supported", "mixed", "not measured")
               for v in verdicts)
    for name in ("expansion", "profiles", "anisotropy"):
        for item in ("results.csv", "summary.json", "config.json"):
            assert (tmp_path / name / item).exists()
    assert (tmp_path / "figures" / "expansion_error.pdf").exists()
    assert "fixed_batch" in text and "gate_term" in text

    # the paper's arms' time: every expansion and profiles group, and only the paper-arm
    # groups of the factorial anisotropy run (not the fidelity runs)
    paper_arms = {("plain", "adam"), ("scalar_gate", "sgd"), ("multi_gate", "sgd")}

    def timings(name, arms=None):
        markers = [json.loads(m.read_text())
                   for m in (tmp_path / name / "groups").glob("*/done.json")
                   if arms is None or tuple(m.parent.name.split("__")[1:]) in arms]
        assert len({m["invocation"] for m in markers}) == 1  # one run, not resumed
        return [(m["started"], m["seconds"]) for m in markers]

    def span(t):
        return max(s + d for s, d in t) - min(s for s, _ in t)

    arms = [timings("expansion"), timings("profiles"), timings("anisotropy", paper_arms)]
    assert [len(t) for t in arms] == [2, 3, 3] and len(timings("anisotropy")) == 6
    assert all(d > 0 for t in arms for _, d in t)
    work = sum(d for t in arms for _, d in t)
    measured = re.search(r"the paper's own arms .* took (\d+) worker-seconds and ([\d.]+) "
                         r"min of wall time \(", text)
    assert measured is not None and int(measured.group(1)) == round(work)
    assert float(measured.group(2)) == round(sum(span(t) for t in arms) / 60, 1)
    assert "untimed" not in text

    stamp = (tmp_path / "report_stamp.json").read_text()
    before = {path: path.stat().st_mtime_ns for path in report_outputs(tmp_path)}
    assert reproduce(TINY, tmp_path, quiet=True) == report  # everything resumed
    # an untouched rerun rebuilds nothing: no output of the report step is written again
    assert {path: path.stat().st_mtime_ns for path in before} == before and stamp == \
        (tmp_path / "report_stamp.json").read_text()


def reference_summary(path) -> dict[tuple, dict]:
    """The aggregates ``summary.json`` must hold, recomputed from ``results.csv`` in plain
    Python: one quantity per distinct combination of every column but ``seed`` and
    ``value`` (rows with a ``time`` are per-step data, not aggregated); median and quartiles
    of its finite values, ``n`` of them and ``seeds`` rows. Keys are ``(column, value)``
    pairs of the non-empty columns, numbers as floats."""
    groups: dict[tuple, list[float]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row.get("time"):
                continue
            key = tuple(sorted((c, _number(v)) for c, v in row.items()
                               if c not in ("seed", "value", "experiment") and v != ""))
            groups.setdefault(key, []).append(float(row["value"]))
    out = {}
    for key, values in groups.items():
        finite = [v for v in values if math.isfinite(v)]
        out[key] = {"n": len(finite), "seeds": len(values),
                    **{name: percentile(finite, q) if finite else None
                       for name, q in (("q25", 25), ("median", 50), ("q75", 75))}}
    return out


def _number(text):
    try:
        return float(text)
    except ValueError:
        return text


@pytest.mark.parametrize("run, experiment", [
    ("expansion", "expansion"), ("profiles", "profiles"), ("anisotropy", "anisotropy"),
    ("fidelity/fixed_batch", "anisotropy")])
def test_summary_json_holds_each_quantitys_median_quartiles_and_count(built, run, experiment):
    """Guards the values in ``summary.json`` (only its existence was tested): every
    quantity of ``results.csv`` appears once, with the median, quartiles and counts across
    seeds recomputed here without numpy; a wrong grouping key (a quantity split or merged),
    percentile convention, NaN handling or count fails."""
    summary = json.loads((built / run / "summary.json").read_text())
    assert summary["experiment"] == experiment
    expected = reference_summary(built / run / "results.csv")
    got = {}
    for entry in summary["quantities"]:
        stats = {k: entry.pop(k) for k in ("median", "q25", "q75", "n", "seeds")}
        key = tuple(sorted((c, v if isinstance(v, str) else float(v))
                           for c, v in entry.items()))
        assert key not in got, key
        got[key] = stats
    assert got.keys() == expected.keys()
    for key, stats in expected.items():
        assert got[key] == pytest.approx(stats, rel=1e-12, abs=0), key


def rewrite_rows(path, change) -> None:
    """Rewrite a results.csv with ``change(row)`` applied to each row (a dict of text
    cells); a row for which it returns ``None`` is dropped."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header, rows = reader.fieldnames, [change(dict(row)) for row in reader]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, header, lineterminator="\n")
        writer.writeheader()
        writer.writerows(row for row in rows if row is not None)


def c8(out) -> dict:
    return next(v for v in json.loads((out / "verdicts.json").read_text()) if v["claim"] == "C8")


def test_the_report_is_rebuilt_from_changed_results(built, tmp_path):
    """Guards the report step against a stale table: after results.csv changes (values
    altered, then rows dropped), building the report again judges and writes the new table
    -- verdicts.json, REPORT.md and the stamp -- instead of keeping the report of the old
    one; built again without a change, nothing is rewritten."""
    out = shutil.copytree(built, tmp_path / "out")
    runs, results = plan(TINY, out), out / "expansion" / "results.csv"
    assert c8(out)["verdict"] == "supported"

    def rho_half(row):  # scalar_gate's median ρ_j 0.5 instead of < 0.1: not small
        if row["metric"] == "correction_ratio_median" and row["cell"] == "scalar_gate":
            row["value"] = "0.5"
        return row

    rewrite_rows(results, rho_half)
    assert build_report(out, TINY, runs, {}) == out / "REPORT.md"
    verdict = c8(out)
    assert verdict["verdict"] == "mixed"
    assert any(line.startswith("scalar_gate: small: median ρ_j per seed 0.5 [IQR 0.5–0.5, n=2]")
               for line in verdict["evidence"]), verdict["evidence"]
    report = (out / "REPORT.md").read_text()
    assert "0.5 [IQR 0.5–0.5, n=2]" in report
    assert json.loads((out / STAMP).read_text())["stamp"] == results_stamp(runs, TINY)

    rewrite_rows(results, lambda row: None if row["metric"] == "correction_ratio_median"
                 and row["cell"] == "multi_gate" else row)
    build_report(out, TINY, runs, {})
    evidence = c8(out)["evidence"]
    assert "not measured for: multi_gate (no correction_ratio_median rows)" in evidence \
        and not any(line.startswith("multi_gate: small") for line in evidence)
    assert "not measured for: multi_gate" in (out / "REPORT.md").read_text()

    before = {path: path.stat().st_mtime_ns for path in report_outputs(out)}
    build_report(out, TINY, runs, {})
    assert {path: path.stat().st_mtime_ns for path in before} == before


def test_the_stamp_records_every_file_the_report_step_writes(built):
    """Guards the up-to-date check's coverage (defect 4): it can only notice a deleted output
    that the stamp lists, so the stamp must list REPORT.md, report.html, verdicts.json and
    every figure's PNG and PDF -- every file outside the run folders."""
    runs = {run.folder for run in plan(TINY, built)}
    written = {path for path in built.rglob("*") if path.is_file()
               and not any(folder in path.parents for folder in runs)} - {
        built / STAMP, built / FOLDER_MARKER}  # the folder's own marker is not the report's
    outputs = report_outputs(built)
    assert outputs[0] == built / "REPORT.md" and set(outputs) == written
    assert {built / "report.html", built / "verdicts.json"} <= written
    assert {p.suffix for p in written if p.parent == built / "figures"} == {".png", ".pdf"}


def test_the_report_is_stale_without_any_one_of_its_outputs(built, tmp_path):
    """Guards defect 4: the up-to-date check covers every output, one missing at a time."""
    out = shutil.copytree(built, tmp_path / "out")
    stamp = results_stamp(plan(TINY, out), TINY)
    assert up_to_date(out, stamp) == out / "REPORT.md"
    for path in report_outputs(out):
        kept = path.read_bytes()
        path.unlink()
        assert up_to_date(out, stamp) is None, path.name
        path.write_bytes(kept)
    assert up_to_date(out, stamp) == out / "REPORT.md"
    assert up_to_date(out, "other results") is None


@pytest.mark.parametrize("name", ["verdicts.json", "figures/expansion_error.png",
                                  "figures/profiles_fit.pdf"])
def test_a_deleted_output_is_rebuilt(built, tmp_path, name):
    """Guards defect 4: reproduce rebuilt nothing when an output was deleted but the results
    were unchanged; now the deleted file comes back."""
    out = shutil.copytree(built, tmp_path / "out")
    (out / name).unlink()
    assert reproduce(TINY, out, quiet=True) == out / "REPORT.md"
    assert (out / name).is_file()
    assert all(path.is_file() for path in report_outputs(out))


def test_the_cli_rebuilds_a_deleted_report_html_it_names(built, tmp_path, monkeypatch, capsys):
    """Guards defect 4 as reported: after deleting report.html a rerun exited 0 and named
    report.html as written, but it did not exist."""
    out = shutil.copytree(built, tmp_path / "out")
    (out / "report.html").unlink()
    monkeypatch.setitem(PRESETS, "quick", TINY)
    assert main(["reproduce", "--out", str(out), "--jobs", "1", "--quiet"]) == 0
    assert str(out / "report.html") in capsys.readouterr().out
    assert (out / "report.html").read_text().count("data:image/png;base64") >= 8


def test_numbers_follow_the_settings(tmp_path):
    """Nothing in the report is hard-coded: another seed count changes the numbers."""
    reproduce(TINY, tmp_path / "a", quiet=True)
    reproduce(TINY, tmp_path / "b", seeds=3, quiet=True)
    a = (tmp_path / "a" / "REPORT.md").read_text()
    b = (tmp_path / "b" / "REPORT.md").read_text()
    assert "n=2" in a and "n=3" in b and a != b


def test_bad_settings_stop_before_any_work(tmp_path, capsys):
    with pytest.raises(SettingsError):
        plan(TINY, tmp_path, device="tpu")
    assert not any(tmp_path.iterdir())
    assert main(["reproduce", "--out", str(tmp_path), "--device", "tpu", "--quiet"]) == 2
    assert "device" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["reproduce", "--preset", "huge"])
