"""``gs.inspect`` on the modern gated recurrences: modules of the reference packages are
converted first, a stack is reported layer by layer (each layer fed the outputs of the one
below), and Mamba's step sizes Δ get their own spectrum (docs/maths.md#mamba)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import gatescope as gs
from gatescope.cli import main
from gatescope.inspection import load_state_dict, module_from_state_dict
from gatescope.inspection.api import module_units


def mamba_model(n_layers=2):
    mamba = pytest.importorskip("mambapy.mamba", reason="mambapy (gatescope[models]) is needed")
    torch.manual_seed(0)
    return mamba.Mamba(mamba.MambaConfig(d_model=4, n_layers=n_layers, d_state=3, d_conv=3))


def test_a_stack_is_inspected_layer_by_layer_on_the_outputs_below():
    torch.manual_seed(0)
    stack = gs.StackedCell([gs.make_cell("min_gru", 3, 5), gs.make_cell("rg_lru", 5, 4)])
    x = torch.randn(2, 7, 3)
    units = module_units(stack, x)
    assert [u.layer for u in units] == [0, 1]
    assert units[0].inputs is x
    with torch.no_grad():
        below = stack.layers[0].unroll(x).states[:, 1:, :5]
    torch.testing.assert_close(units[1].inputs, below, rtol=0, atol=0)


def test_a_mamba_model_reports_step_sizes_and_time_scales_per_layer(tmp_path):
    model = mamba_model()
    x = torch.randn(3, 12, 4)
    result = gs.inspect(model, x, out=tmp_path, quiet=True, lyapunov_count=0,
                        transport_lags=0)
    units = result.summary["units"]
    assert [u["layer"] for u in units] == [0, 1]
    cells = gs.from_torch(model).layers
    for unit, block in zip(units, cells, strict=True):
        steps = unit["step_sizes"]
        assert steps is not None and len(steps["per_channel_median"]) == block.mixer.d_inner
        q = np.array(steps["quantiles"])
        assert np.all(np.diff(q) >= 0) and q[0] > 0
        assert unit["time_scales"] is not None
        assert "update gate g" not in unit["saturation"]  # Δ is not a sigmoid value
    # layer 0's Δ written out: the quantiles of the cell's own gates
    with torch.no_grad():
        delta = cells[0].unroll(x).gates.double().flatten()
    levels = torch.tensor(units[0]["step_sizes"]["levels"], dtype=torch.float64)
    np.testing.assert_allclose(units[0]["step_sizes"]["quantiles"],
                               torch.quantile(delta, levels).numpy(), rtol=1e-6)
    report = (tmp_path / "REPORT.md").read_text()
    assert report.count("Step sizes Δ (Mamba)") == 2


def test_a_mingru_module_is_converted_before_inspection():
    mingru = pytest.importorskip("minGRU_pytorch", reason="minGRU_pytorch (gatescope[models])")
    torch.manual_seed(0)
    module = mingru.minGRU(4, expansion_factor=2)
    result = gs.inspect(module, torch.randn(2, 9, 4), quiet=True, lyapunov_count=0,
                        transport_lags=0)
    (unit,) = result.summary["units"]
    assert unit["cell"] == "MinGRUCell" and unit["step_sizes"] is None
    assert unit["time_scales"] is not None


@pytest.mark.parametrize("layout", ["Mamba", "minGRU", "LRU"])
def test_the_cli_inspects_a_reference_models_weights_file(tmp_path, capsys, layout):
    """A weights file of a reference package's module, nested under a prefix, is recognised
    from its keys (the package itself is not needed to read it) and reported per layer; the
    cells hold exactly the module's outputs."""
    if layout == "Mamba":
        module, m = mamba_model(), 4
    elif layout == "minGRU":
        mingru = pytest.importorskip("minGRU_pytorch", reason="minGRU_pytorch is needed")
        module, m = mingru.minGRU(4, expansion_factor=1.5), 4
    else:
        lru = pytest.importorskip("LRU_pytorch", reason="LRU_pytorch is needed")
        module, m = lru.LRU(3, 4, 5), 3
    torch.manual_seed(1)
    x = torch.randn(2, 10, m)
    weights, data = tmp_path / "model.pt", tmp_path / "x.npy"
    torch.save({"backbone." + k: v for k, v in module.state_dict().items()}, weights)
    np.save(data, x.numpy())
    out = tmp_path / "report"
    assert main(["inspect", str(weights), "--data", str(data), "--prefix", "backbone",
                 "--out", str(out), "--quiet", "--lyapunov", "0"]) == 0
    summary = json.loads((out / "inspect.json").read_text())
    assert summary["module"].split(" ")[0].endswith(layout)
    assert len(summary["units"]) == (2 if layout == "Mamba" else 1)
    state = {k[len("backbone."):]: v for k, v in load_state_dict(weights).items()}
    cell, _ = module_from_state_dict(state)
    with torch.no_grad():
        ours = cell.unroll(x).states[:, 1:, :cell.hidden_size]
        theirs = module(x)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_a_weights_file_of_a_block_with_inner_layernorms_is_refused_by_name(tmp_path, capsys):
    mamba = pytest.importorskip("mambapy.mamba", reason="mambapy is needed")
    block = mamba.MambaBlock(mamba.MambaConfig(d_model=4, n_layers=1, inner_layernorms=True))
    weights, data = tmp_path / "block.pt", tmp_path / "x.npy"
    torch.save(block.state_dict(), weights)
    np.save(data, np.zeros((1, 3, 4), dtype=np.float32))
    assert main(["inspect", str(weights), "--data", str(data), "--out",
                 str(tmp_path / "r"), "--quiet"]) == 2
    assert "inner_layernorms" in capsys.readouterr().err
