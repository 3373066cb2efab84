"""``gs.inspect`` on the modern gated recurrences: modules of the reference packages are
converted first, a stack is reported layer by layer (each layer fed the outputs of the one
below), and Mamba's step sizes Δ get their own spectrum (docs/maths.md#mamba)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gatescope as gs
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
