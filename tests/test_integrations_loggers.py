"""Probe loggers and the Lightning callback (issue 14, "What it must show" 3): the TensorBoard
event file a probe wrote (read with tensorboard's ``EventAccumulator``), a W&B offline run
directory and a Lightning ``Trainer.fit`` on a small GRU hold the declared quantities at the
probe's steps, as scalars (per lag for per-lag metrics), histograms (time-scale spectra) and
images (profiles). Each test skips when its optional package is not installed."""

from __future__ import annotations

import struct
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import gatescope as gs
from gatescope.integrations.extras import MissingExtra
from gatescope.integrations.loggers import (
    HISTOGRAM,
    IMAGE,
    IMAGE_SIZE,
    SCALAR,
    MetricsProbeLogger,
    log_items,
)

#: One quantity of each logged kind: a scalar, histograms per neuron, scalars per lag, and
#: the profile's images.
QUANTITIES = ["loss", "gates", "effective_rates", "profile"]
STEPS = [0, 5, 10]


def _gru_problem():
    torch.manual_seed(0)
    model = gs.SequenceModel(gs.make_cell("gru", input_size=2, hidden_size=4))
    gen = torch.Generator().manual_seed(1)
    return model, torch.randn(8, 10, 2, generator=gen), torch.randn(8, 1, generator=gen)


def _train_with_probe(loggers) -> gs.ProbeResults:
    """11 SGD steps of a small GRU, probed every 5 steps into ``loggers``."""
    model, u, y = _gru_problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    probe = gs.Probe(model, u, y, optimizer=opt, quantities=QUANTITIES,
                     schedule=gs.Schedule.every(5), loggers=loggers)
    for step in range(11):
        probe(step)
        opt.zero_grad()
        model.loss(u, y).backward()
        opt.step()
    return probe.results()


def _expected(results: gs.ProbeResults) -> dict[str, dict[int, object]]:
    """``{tag: {step: item}}`` the declared metrics give at each recorded step."""
    expected: dict[str, dict[int, object]] = {}
    for index, step in enumerate(results.steps):
        record = {k: v[index] for k, v in results.history.items()}
        for item in log_items(record, results.metadata["coords"]):
            expected.setdefault(item.tag, {})[int(step)] = item
    return expected


def test_log_items_follow_the_declared_axes():
    """Guards the mapping: scalar metrics -> scalars, per-lag -> one scalar per lag (NaN
    left out), per-neuron spectra -> histograms, profiles -> images."""
    coords = {"rate_lag": [1, 2, 4], "neuron": [0, 1, 2], "profile_lag": [1, 2, 3],
              "predictor": ["update", "retention"]}
    record = {"probe_loss": np.float64(0.5), "envelope": np.array([0.9, 0.4, np.nan]),
              "time_scales": np.array([1.0, 2.0, 4.0]),
              "sensitivity_profile": np.array([1.0, 0.5, 0.25]),
              "predicted_profile": np.array([[1.0, 0.6, 0.3], [1.0, 0.5, 0.2]])}
    items = {i.tag: i for i in log_items(record, coords, prefix="p")}
    assert {t: i.kind for t, i in items.items()} == {
        "p/probe_loss": SCALAR, "p/envelope/rate_lag=1": SCALAR,
        "p/envelope/rate_lag=2": SCALAR, "p/time_scales": HISTOGRAM,
        "p/sensitivity_profile": IMAGE, "p/predicted_profile": IMAGE}
    assert items["p/envelope/rate_lag=2"].value == 0.4
    np.testing.assert_array_equal(items["p/time_scales"].value, [1.0, 2.0, 4.0])
    width, height = IMAGE_SIZE
    image = items["p/predicted_profile"].value
    assert image.shape == (height, width, 3) and image.dtype == np.uint8
    assert image.std() > 0  # something was drawn
    with pytest.raises(ValueError, match="unknown metric 'nope'"):
        log_items({"nope": 1.0}, coords)


def test_tensorboard_event_file_holds_the_declared_quantities_at_the_probe_steps(tmp_path):
    """Must-show 3 (TensorBoard): every declared item at steps 0, 5, 10, scalars with the
    recorded values, histograms of the time-scale spectrum over the neurons, profile
    images."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from gatescope.integrations.loggers import TensorBoardProbeLogger

    logger = TensorBoardProbeLogger(str(tmp_path / "tb"))
    results = _train_with_probe([logger])
    logger.close()
    events = EventAccumulator(str(tmp_path / "tb"),
                              size_guidance={"scalars": 0, "histograms": 0, "images": 0})
    events.Reload()
    tags = events.Tags()
    expected = _expected(results)
    kinds = {"scalars": SCALAR, "histograms": HISTOGRAM, "images": IMAGE}
    found = {t: k for key, k in kinds.items() for t in tags[key]}
    assert found == {tag: next(iter(steps.values())).kind for tag, steps in expected.items()}
    assert {"gatescope/probe_loss", "gatescope/envelope/rate_lag=4", "gatescope/time_scales",
            "gatescope/sensitivity_profile"} <= set(found)
    for tag, steps in expected.items():
        read = {"scalar": events.Scalars, "histogram": events.Histograms,
                "image": events.Images}[found[tag]](tag)
        assert [e.step for e in read] == STEPS == sorted(steps), tag
        for event in read:
            item = steps[event.step]
            if item.kind == SCALAR:
                assert event.value == pytest.approx(item.value, rel=1e-6), tag
            elif item.kind == HISTOGRAM:
                assert event.histogram_value.num == item.value.size == 4
                assert event.histogram_value.min == pytest.approx(item.value.min())
                assert event.histogram_value.max == pytest.approx(item.value.max())
            else:
                assert (event.width, event.height) == IMAGE_SIZE


def _wandb_records(path: Path) -> list[bytes]:
    """The records of a ``.wandb`` run file (W&B's LevelDB-style log: 32 KiB blocks of
    chunks with a 7-byte header: CRC, length, type FULL=1/FIRST=2/MIDDLE=3/LAST=4)."""
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, records, partial = 7, 32768, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            records.append(chunk)
        elif kind == 2:
            partial = chunk
        elif kind == 3:
            partial += chunk
        elif kind == 4:
            records.append(partial + chunk)
    return records


def _wandb_run_records(run_dir: Path, timeout: float = 30) -> list:
    """The parsed records of the offline run, once W&B's service has written its final
    ``exit`` record (``run.finish()`` may return before the file is complete)."""
    from google.protobuf.message import DecodeError
    from wandb.proto import wandb_internal_pb2

    deadline = time.monotonic() + timeout
    while True:
        records = []
        try:
            for raw in _wandb_records(next(run_dir.glob("run-*.wandb"))):
                records.append(wandb_internal_pb2.Record.FromString(raw))
        except (StopIteration, DecodeError):
            pass
        if records and records[-1].WhichOneof("record_type") == "exit":
            return records
        assert time.monotonic() < deadline, "the W&B run file was never completed"
        time.sleep(0.1)


def _wandb_history(run_dir: Path) -> dict[int, dict[str, str]]:
    """``{step: {key: JSON text}}`` of the offline run's history rows."""
    history = {}
    for record in _wandb_run_records(run_dir):
        if record.WhichOneof("record_type") == "history":
            items = {"/".join(i.nested_key) or i.key: i.value_json
                     for i in record.history.item}
            history[int(items["_step"])] = items
    return history


@pytest.fixture
def wandb_offline(monkeypatch, tmp_path):
    pytest.importorskip("wandb")
    for key, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true",
                       "WANDB_DIR": str(tmp_path), "WANDB_CONFIG_DIR": str(tmp_path / "cfg"),
                       "WANDB_CACHE_DIR": str(tmp_path / "cache")}.items():
        monkeypatch.setenv(key, value)
    return tmp_path


def test_wandb_offline_run_holds_the_same_items_replayed_from_saved_results(wandb_offline):
    """Must-show 3 (W&B): the offline run directory holds, at each probe step, the same
    scalars (values to float precision), histograms and images; the results are logged
    from the saved JSON + NPZ with ``ProbeResults.log_to``."""
    from gatescope.integrations.loggers import WandbProbeLogger

    results = _train_with_probe([])
    results.save(wandb_offline / "probe")
    saved = gs.load_probe(wandb_offline / "probe")
    logger = WandbProbeLogger(project="gatescope-test", mode="offline", dir=str(wandb_offline))
    saved.log_to(logger)
    run_dir = Path(logger.run.dir).parent
    logger.close()
    history = _wandb_history(run_dir)
    assert sorted(history) == STEPS
    for tag, steps in _expected(results).items():
        for step, item in steps.items():
            row = history[step]
            if item.kind == SCALAR:
                assert float(row[tag]) == pytest.approx(item.value, rel=1e-12), tag
            elif item.kind == HISTOGRAM:
                assert row[f"{tag}/_type"] == '"histogram"'
                assert sum(eval(row[f"{tag}/values"])) == item.value.size
            else:
                assert row[f"{tag}/_type"] == '"image-file"'
                width, height = IMAGE_SIZE
                assert (int(row[f"{tag}/width"]), int(row[f"{tag}/height"])) == (width, height)
                assert (run_dir / "files" / eval(row[f"{tag}/path"])).is_file()


# ---------------------------------------------------------------------- Lightning


def _lightning_module(pl):
    class GRUModule(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net, self.u, self.y = _gru_problem()

        def training_step(self, batch, batch_idx):
            u, y = batch
            return self.net.loss(u, y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)

    return GRUModule()


def test_lightning_callback_logs_the_probe_through_the_trainers_logger(tmp_path):
    """Must-show 3 (Lightning): ``Trainer.fit`` of a small GRU with ``ProbeCallback(every
    5 steps)`` writes the declared quantities at global steps 0, 5, 10 into the trainer's
    TensorBoard logger, and the saved probe holds the same steps; a CSV logger gets the
    scalars."""
    pl = pytest.importorskip("lightning.pytorch")
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from gatescope.integrations.lightning import ProbeCallback

    module = _lightning_module(pl)
    data = torch.utils.data.TensorDataset(module.u, module.y)
    loader = torch.utils.data.DataLoader(data, batch_size=8)
    callback = ProbeCallback(module.u, module.y, every_n_steps=5, quantities=QUANTITIES,
                             save=tmp_path / "probe")
    tb = pl.loggers.TensorBoardLogger(str(tmp_path), name="tb", version=0)
    csv = pl.loggers.CSVLogger(str(tmp_path), name="csv", version=0)
    trainer = pl.Trainer(max_steps=11, logger=[tb, csv], callbacks=[callback],
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", devices=1)
    trainer.fit(module, loader)
    results = gs.load_probe(tmp_path / "probe")
    assert results.steps.tolist() == STEPS
    tb.experiment.flush()
    events = EventAccumulator(tb.log_dir, size_guidance={"scalars": 0, "histograms": 0,
                                                         "images": 0})
    events.Reload()
    for tag, steps in _expected(results).items():
        read = {"scalar": events.Scalars, "histogram": events.Histograms,
                "image": events.Images}[next(iter(steps.values())).kind](tag)
        assert [e.step for e in read] == STEPS, tag
    assert [e.value for e in events.Scalars("gatescope/probe_loss")] == pytest.approx(
        results["probe_loss"].tolist(), rel=1e-6)
    metrics = (Path(csv.log_dir) / "metrics.csv").read_text()
    assert "gatescope/probe_loss" in metrics and "gatescope/envelope/rate_lag=4" in metrics


def test_lightning_callback_refuses_bad_arguments_before_training():
    pytest.importorskip("lightning.pytorch")
    from gatescope.integrations.lightning import ProbeCallback

    u, y = torch.randn(2, 4, 2), torch.randn(2, 1)
    with pytest.raises(ValueError, match="every_n_steps"):
        ProbeCallback(u, y, every_n_steps=0)
    with pytest.raises(ValueError, match="nope"):
        ProbeCallback(u, y, quantities=["loss", "nope"])


# ---------------------------------------------------------------------- without the extras


@pytest.mark.parametrize("package, extra, build", [
    ("tensorboard", "tensorboard", lambda m: m.TensorBoardProbeLogger("unused")),
    ("wandb", "wandb", lambda m: m.WandbProbeLogger(mode="offline")),
])
def test_a_logger_without_its_package_names_the_extra(monkeypatch, package, extra, build):
    import gatescope.integrations.loggers as loggers

    monkeypatch.setitem(sys.modules, package, None)
    monkeypatch.delitem(sys.modules, "torch.utils.tensorboard", raising=False)
    with pytest.raises(MissingExtra, match=rf"pip install 'gatescope\[{extra}\]'"):
        build(loggers)


def test_the_probe_refuses_a_logger_without_log_and_metrics_logger_needs_log_metrics():
    model, u, y = _gru_problem()
    with pytest.raises(ValueError, match="loggers must have a log"):
        gs.Probe(model, u, y, loggers=[object()])
    with pytest.raises(ValueError, match="log_metrics"):
        MetricsProbeLogger(object())


def test_the_lightning_module_without_lightning_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "lightning", None)
    monkeypatch.setitem(sys.modules, "lightning.pytorch", None)
    monkeypatch.delitem(sys.modules, "gatescope.integrations.lightning", raising=False)
    with pytest.raises(MissingExtra, match=r"pip install 'gatescope\[lightning\]'"):
        import gatescope.integrations.lightning  # noqa: F401
