"""``gs.inspect`` / ``gatescope inspect``: weights recognition, input checks, every reported
number against an independent reference on a tiny float64 model, and the report files."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import gatescope as gs
from gatescope.cli import main
from gatescope.inspection import (
    InspectInputError,
    check_inputs,
    load_array,
    load_state_dict,
    module_from_state_dict,
    module_units,
    recognise,
)
from gatescope.inspection.sampled import fit_decay, memory_horizon
from gatescope.measures.rates import effective_learning_rates, neuron_cv

# ------------------------------------------------------------------ recognition

STOCK = {
    "rnn_tanh": lambda: nn.RNN(3, 5),
    "rnn_relu": lambda: nn.RNN(3, 5, nonlinearity="relu"),
    "gru": lambda: nn.GRU(3, 5),
    "lstm": lambda: nn.LSTM(3, 5),
    "lstm_proj": lambda: nn.LSTM(3, 5, proj_size=2),
    "gru_2_layers": lambda: nn.GRU(3, 5, num_layers=2),
    "lstm_3_layers_bidir": lambda: nn.LSTM(3, 5, num_layers=3, bidirectional=True),
    "lstm_proj_bidir_2": lambda: nn.LSTM(3, 5, num_layers=2, bidirectional=True, proj_size=2),
    "rnn_bidir_nobias": lambda: nn.RNN(3, 5, bidirectional=True, bias=False),
    "gru_cell": lambda: nn.GRUCell(3, 5),
    "lstm_cell": lambda: nn.LSTMCell(3, 5),
    "rnn_cell_relu": lambda: nn.RNNCell(3, 5, nonlinearity="relu"),
}


@pytest.mark.parametrize("name", sorted(STOCK))
def test_every_stock_module_is_recognised_from_its_state_dict(name):
    torch.manual_seed(0)
    original = STOCK[name]().double()
    nonlin = getattr(original, "nonlinearity", "tanh")
    built, spec = module_from_state_dict(original.state_dict(), nonlinearity=nonlin)
    assert type(built) is type(original)
    for attr in ("input_size", "hidden_size", "num_layers", "bidirectional", "proj_size",
                 "bias", "nonlinearity"):
        if hasattr(original, attr):
            assert getattr(built, attr) == getattr(original, attr), attr
    x = torch.randn(4, 2, 3, dtype=torch.float64) if not spec.is_cell else \
        torch.randn(2, 3, dtype=torch.float64)
    a, b = original(x), built(x)
    a, b = (a[0], b[0]) if isinstance(a, tuple) else (a, b)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Module()
        self.encoder.rnn = nn.GRU(3, 6, batch_first=True)
        self.head = nn.Linear(6, 2)


def test_nested_module_found_alone_or_by_prefix():
    sd = Net().state_dict()
    assert recognise(sd).prefix == "encoder.rnn"
    assert recognise(sd, prefix="encoder.rnn.").kind == "GRU"  # trailing dot ignored
    with pytest.raises(InspectInputError, match=r"--prefix 'encoder'.*\['encoder.rnn'\]"):
        recognise(sd, prefix="encoder")


def test_several_recurrent_modules_need_a_prefix_and_are_listed():
    sd = {**{f"a.{k}": v for k, v in nn.GRU(3, 4).state_dict().items()},
          **{f"b.{k}": v for k, v in nn.LSTM(3, 4).state_dict().items()}}
    with pytest.raises(InspectInputError, match=r"2 recurrent modules.*\['a', 'b'\].*--prefix"):
        recognise(sd)
    assert recognise(sd, prefix="b").kind == "LSTM"


@pytest.mark.parametrize("breakage, problem", [
    (lambda sd: sd.update(weight_hh_l0=torch.zeros(10, 5)), "no RNN/GRU/LSTM"),
    (lambda sd: sd.pop("bias_hh_l0"), "expected"),
    (lambda sd: sd.update(weight_ih_l0=torch.zeros(15, 3, dtype=torch.long)), "dtype"),
    (lambda sd: sd.update(extra_l0=torch.zeros(1)), "unexpected key"),
])
def test_unknown_layouts_give_one_line_errors(breakage, problem):
    sd = dict(nn.GRU(3, 5).state_dict())
    breakage(sd)
    with pytest.raises(InspectInputError, match=problem) as err:
        recognise(sd)
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------ files


class Evil:
    """Unpickling it would create the marker file (so a test can see it never happens)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _gru_files(tmp_path, x_shape=(3, 20, 5)):
    torch.manual_seed(0)
    module = nn.GRU(5, 6, num_layers=1, batch_first=True)
    weights = tmp_path / "w.pt"
    torch.save(module.state_dict(), weights)
    data = tmp_path / "x.npy"
    np.save(data, np.random.default_rng(0).standard_normal(x_shape).astype(np.float32))
    return module, weights, data


@pytest.mark.parametrize("where", ["weights", "data"])
def test_pickled_object_is_refused_and_never_unpickled(tmp_path, capsys, where):
    _, weights, data = _gru_files(tmp_path)
    marker = tmp_path / "unpickled.marker"
    evil = tmp_path / "evil.pt"
    torch.save({"weight_ih_l0": Evil(marker)}, evil)
    args = [str(evil), "--data", str(data)] if where == "weights" else \
        [str(weights), "--data", str(evil)]
    assert main(["inspect", *args, "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "refused" in err and len(err.splitlines()) == 1
    assert not marker.exists()


def test_shape_mismatch_exits_2_naming_both_shapes(tmp_path, capsys):
    _, weights, _ = _gru_files(tmp_path)
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((3, 20, 4), np.float32))
    assert main(["inspect", str(weights), "--data", str(bad), "--out", str(tmp_path / "o"),
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "(3, 20, 4)" in err and "(B, T, 5)" in err
    assert not (tmp_path / "o").exists()  # refused before any compute or output


def test_nan_input_exits_2(tmp_path, capsys):
    _, weights, _ = _gru_files(tmp_path)
    bad = tmp_path / "nan.npy"
    x = np.zeros((2, 10, 5), np.float32)
    x[1, 3, 2] = np.nan
    np.save(bad, x)
    assert main(["inspect", str(weights), "--data", str(bad), "--quiet",
                 "--out", str(tmp_path / "o")]) == 2
    assert "1 NaN" in capsys.readouterr().err


def test_npz_needs_key_when_it_holds_several_arrays(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, a=np.zeros((1, 2, 3)), b=np.ones((1, 2, 3)))
    with pytest.raises(InspectInputError, match=r"2 arrays \['a', 'b'\].*--key"):
        load_array(path)
    assert float(load_array(path, key="b").sum()) == 6
    with pytest.raises(InspectInputError, match="--key 'c'"):
        load_array(path, key="c")


def test_object_npy_refused(tmp_path):
    path = tmp_path / "o.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InspectInputError, match="refused"):
        load_array(path)


def test_time_first_is_transposed():
    x = torch.randn(7, 2, 3)  # (T, B, m)
    torch.testing.assert_close(check_inputs(x, 3, batch_first=False), x.transpose(0, 1))


def test_safetensors_without_the_package_names_the_install_line(tmp_path, monkeypatch):
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"")
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    with pytest.raises(InspectInputError, match=r"pip install 'gatescope\[inspect\]'"):
        load_state_dict(path)


def test_safetensors_round_trip(tmp_path):
    st = pytest.importorskip("safetensors.torch")
    module = nn.LSTM(3, 4)
    st.save_file(module.state_dict(), str(tmp_path / "w.safetensors"))
    assert recognise(load_state_dict(tmp_path / "w.safetensors")).kind == "LSTM"


def test_cli_writes_markdown_html_json_and_figures(tmp_path, capsys):
    _, weights, data = _gru_files(tmp_path)
    out = tmp_path / "report"
    assert main(["inspect", str(weights), "--data", str(data), "--out", str(out),
                 "--quiet"]) == 0
    summary = json.loads((out / "inspect.json").read_text())
    assert summary["module"].startswith("nn.GRU(5, 6)")
    assert summary["sampled"]["sequences"] == [0, 1, 2]
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 5
    report = (out / "REPORT.md").read_text()
    assert "memory horizon" in report and "Top Lyapunov exponents" in report
    assert sorted(p.name for p in out.glob("*.png")) == [
        f"layer0_forward_{k}.png" for k in ("dispersion", "envelope", "lookback",
                                             "time_scales", "transport")]


# ------------------------------------------------------------------ the numbers


@pytest.fixture(scope="module")
def tiny():
    """A float64 GRU with large weights (so some gates saturate), its inputs and report."""
    torch.manual_seed(3)
    module = nn.GRU(3, 4, batch_first=True).double()
    with torch.no_grad():
        for p in module.parameters():
            p.mul_(4)
    x = torch.randn(2, 12, 3, dtype=torch.float64)
    result = gs.inspect(module, x, end_times=4, rate_lags=5, quiet=True)
    return module, x, result.summary


def test_lookback_equals_autograd_jacobian_through_torchs_module(tiny):
    """‖∂h_T/∂u_{T-ℓ}‖_F (RMS over sequences) against torch.autograd.functional.jacobian
    of torch's own nn.GRU."""
    module, x, summary = tiny
    J = torch.autograd.functional.jacobian(lambda u: module(u)[0][:, -1], x)  # (B,n,B,T,m)
    per = torch.stack([J[b, :, b].pow(2).sum((0, 2)) for b in range(x.shape[0])])  # (B, T)
    want = per.mean(0).sqrt().flip(0)  # index ℓ
    lb = summary["units"][0]["lookback"]
    assert lb["method"].startswith("exact")
    np.testing.assert_allclose(lb["values"], want.numpy(), rtol=1e-10, atol=1e-14)
    g = want.numpy()
    assert lb["horizon"] == memory_horizon(g, 0.01)


def test_lookback_random_projection_is_unbiased(tiny):
    module, x, summary = tiny
    est = gs.inspect(module, x, lookback_probes=4000, quiet=True).summary
    exact = np.asarray(summary["units"][0]["lookback"]["values"])
    got = np.asarray(est["units"][0]["lookback"]["values"])
    assert "4000 Gaussian" in est["units"][0]["lookback"]["method"]
    big = exact > 1e-3 * exact.max()
    np.testing.assert_allclose(got[big], exact[big], rtol=0.1)


def _gru_gates(module, x):
    """r, z, candidate of torch's nn.GRU written out from its weights: (B, T, n) each."""
    n = module.hidden_size
    h = torch.cat([x.new_zeros(x.shape[0], 1, n), module(x)[0][:, :-1]], 1).detach()
    xi = x @ module.weight_ih_l0.T + module.bias_ih_l0
    hh = h @ module.weight_hh_l0.T + module.bias_hh_l0
    r = torch.sigmoid(xi[..., :n] + hh[..., :n])
    z = torch.sigmoid(xi[..., n:2 * n] + hh[..., n:2 * n])
    c = torch.tanh(xi[..., 2 * n:] + r * hh[..., 2 * n:])
    return r.detach(), z.detach(), c.detach()


def test_time_scale_spectrum_and_saturation_against_the_gates_written_out(tiny):
    module, x, summary = tiny
    r, z, c = _gru_gates(module, x)
    unit = summary["units"][0]
    ts = unit["time_scales"]
    q = np.quantile(z.numpy().ravel(), ts["levels"])
    np.testing.assert_allclose(ts["quantiles"], -1 / np.log(q), rtol=1e-10)
    np.testing.assert_allclose(ts["per_neuron"], -1 / np.log(z.mean((0, 1)).numpy()),
                               rtol=1e-10)
    assert ts["count_total"] == z.numel() == sum(ts["histogram_counts"]) + ts["count_zero"] \
        + ts["count_infinite"]
    sat = unit["saturation"]
    for label, g in (("retention r", z), ("update gate g", 1 - z), ("reset gate r", r)):
        assert sat[label]["low"] == pytest.approx(float((g < 0.05).double().mean()))
        assert sat[label]["high"] == pytest.approx(float((g > 0.95).double().mean()))
    assert sat["candidate (tanh)"]["high"] == pytest.approx(
        float((c.abs() > 0.95).double().mean()))
    assert any(v["high"] > 0 for v in sat.values())  # the test exercises saturation


def test_envelope_and_dispersion_equal_the_dense_rates_at_the_sampled_end_times(tiny):
    module, x, summary = tiny
    cell = gs.from_torch(module)
    traj = cell.unroll(x).detach()
    mu = effective_learning_rates(cell, traj, order=1)  # (B, T+1, T+1, n), dense reference
    unit = summary["units"][0]
    ends = unit["envelope"]["end_times"]
    T = x.shape[1]
    sub = mu[:, ends]                                   # (B, S, T+1, n)
    want = sub[:, :, 1:].abs().nanmean((0, 1, 3))       # lags 1..T
    np.testing.assert_allclose(unit["envelope"]["values"], want.numpy(), rtol=1e-12)
    lags = unit["dispersion"]["lags"]
    np.testing.assert_allclose(unit["dispersion"]["cv"], neuron_cv(sub[:, :, lags]).numpy(),
                               rtol=1e-12)
    assert ends[-1] == T and lags[0] == 1 and lags[-1] == T


def test_decay_class_criterion():
    lags = np.arange(1, 2001)
    exp = fit_decay(lags, 0.9 ** lags)
    assert exp["class"] == "exponential"
    assert exp["exponential"]["decay_length"] == pytest.approx(-1 / math.log(0.9))
    power = fit_decay(lags, lags ** -1.5)
    assert power["class"] == "power law" and power["power law"]["exponent"] == pytest.approx(1.5)
    noise = np.random.default_rng(0).uniform(0.5, 1.5, lags.size)
    assert fit_decay(lags, noise)["class"] == "neither"


def test_memory_horizon_threshold():
    g = np.array([1.0, 0.5, 0.02, 0.005, 0.011, 0.001])
    assert memory_horizon(g, 0.01) == 4
    assert memory_horizon(g, 0.1) == 1
    assert memory_horizon(np.ones(4), 0.01) is None   # looks back beyond the sequence


def test_inspect_leaves_the_module_alone_and_samples_sequences():
    module = nn.LSTM(2, 3)
    x = torch.randn(5, 6, 2)
    summary = gs.inspect(module, x, dtype=torch.float64, max_sequences=2, quiet=True).summary
    assert next(module.parameters()).dtype == torch.float32
    assert len(summary["sampled"]["sequences"]) == 2 and summary["sampled"]["batch"] == 2
    assert set(summary["units"][0]["timings"]) >= {"forward", "output_lookback",
                                                   "sampled_effective_rates"}


@pytest.mark.parametrize("name", ["gru", "lstm", "plain", "multi_gate", "leaky"])
def test_retained_diagonal_equals_the_dense_jacobians_diagonal(name):
    """The O(n) diagonals (GRU, LSTM, plain) and the chunked fallback (other cells) against
    the dense reference diag(J) read from gs.jacobians."""
    from gatescope.inspection.sampled import retained_diagonal_chunked
    from gatescope.measures.rates import retained_diagonal

    torch.manual_seed(1)
    cell = gs.make_cell(name, 3, 5, bias=True, dtype=torch.float64)
    traj = cell.unroll(torch.randn(2, 9, 3, dtype=torch.float64)).detach()
    want = retained_diagonal(cell, traj)
    got = retained_diagonal_chunked(cell, traj, budget=1)  # fallback: one step per chunk
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)


def test_importing_inspection_leaves_the_probe_presets_alone():
    """Guards the probe presets: the inspection's quantities are measured through
    probes.measure but not registered, so `quantities="cheap"` is what it was."""
    import gatescope.inspection  # noqa: F401
    from gatescope.inspection.quantities import INSPECT_QUANTITIES

    names = {q.name for q in INSPECT_QUANTITIES}
    assert names == {"time_scale_spectrum", "gate_saturation", "sampled_effective_rates",
                     "spectrum_phase", "output_lookback", "transport_norms", "lyapunov"}
    assert not names & set(gs.list_quantities())


@pytest.mark.parametrize("setting, message", [
    ({"end_times": 0}, "end_times must be an integer >= 1; got 0"),
    ({"rate_lags": 2.0}, "rate_lags must be an integer >= 1; got 2.0"),
    ({"lookback_probes": "x"}, "lookback_probes must be an integer >= 1; got 'x' (or 'auto'"),
    ({"horizon_threshold": 1.0}, "horizon_threshold must be a finite number in (0, 1)"),
    ({"max_sequences": True}, "max_sequences must be an integer >= 1; got True (or None)"),
    ({"transport_lags": -1}, "transport_lags must be an integer >= 0; got -1"),
    ({"lyapunov_count": 1.5}, "lyapunov_count must be an integer >= 0; got 1.5"),
    ({"device": "banana"}, "--device must be cpu, cuda or cuda:N; got 'banana'"),
])
def test_a_bad_setting_is_refused_before_any_compute(setting, message, monkeypatch):
    """Each sampling setting is checked by ``gatescope.checks`` and refused, naming the
    field and what is allowed, before the module is even copied."""
    module = nn.GRU(2, 3, batch_first=True)
    monkeypatch.setattr("gatescope.inspection.api.module_units",
                        lambda *a: pytest.fail("computed before checking the settings"))
    with pytest.raises(InspectInputError) as err:
        gs.inspect(module, torch.randn(2, 5, 2), quiet=True, **setting)
    assert message in str(err.value)


def test_every_layer_and_direction_is_a_unit_fed_what_torch_feeds_it():
    """Guards module_units for stacks (issue 11, inspect phase 2): a 2-layer bidirectional
    time-first LSTM gives four units, bottom layer first; each unit's cell run on its inputs
    reproduces torch's output of that layer and direction."""
    torch.manual_seed(5)
    module = nn.LSTM(3, 4, num_layers=2, bidirectional=True).double()
    x = torch.randn(2, 6, 3, dtype=torch.float64)  # batch first, as inspect hands it
    units = module_units(module, x)
    assert [u.label for u in units] == ["layer 0 forward", "layer 0 backward",
                                        "layer 1 forward", "layer 1 backward"]
    assert [u.inputs.shape[-1] for u in units] == [3, 3, 8, 8]
    with torch.no_grad():
        top, _ = module(x.transpose(0, 1))  # (T, B, 2n): the top layer's two directions
        for unit, half in zip(units[2:], (slice(0, 4), slice(4, 8)), strict=True):
            h = unit.cell.unroll(unit.inputs).states[:, 1:, :4]
            if unit.direction == "backward":
                h = h.flip(1)
            torch.testing.assert_close(h, top[..., half].transpose(0, 1), rtol=1e-12,
                                       atol=1e-12)


def test_transport_section_equals_the_dense_norms_at_the_sampled_pairs(tiny):
    """Guards the inspect transport section: per lag, the median over sequences and sampled
    end times of the dense ‖M_{t,t-ℓ}‖₂ (gs.transport of the analytic Jacobians)."""
    module, x, summary = tiny
    cell = gs.from_torch(module)
    with torch.no_grad():
        J = gs.jacobians(cell, cell.unroll(x))
    tr = summary["units"][0]["transport"]
    assert tr["lags"] and tr["converged_fraction"] == 1.0
    assert min(tr["end_times"]) >= max(tr["lags"])
    for lag, got in zip(tr["lags"], tr["norms"], strict=True):
        dense = torch.stack([torch.linalg.matrix_norm(gs.transport(J, t, t - lag), ord=2)
                             for t in tr["end_times"]])
        assert got == pytest.approx(dense.flatten().median().item()
                                    if dense.numel() % 2 else
                                    dense.flatten().quantile(0.5).item(), rel=1e-3)


def test_lyapunov_section_equals_the_public_estimators(tiny):
    """Guards the inspect Lyapunov section: the mean over sequences of
    gs.lyapunov_exponents and of gs.gate_time_scale_exponents, same discard and seed."""
    module, x, summary = tiny
    cell = gs.from_torch(module)
    with torch.no_grad():
        traj = cell.unroll(x)
    ly = summary["units"][0]["lyapunov"]
    k, discard = len(ly["exponents"]), min(100, x.shape[1] // 10)
    assert k == min(8, cell.state_size)
    ref = gs.lyapunov_exponents(cell, traj, k, discard=discard,
                                generator=torch.Generator().manual_seed(0)).mean(0)
    np.testing.assert_allclose(ly["exponents"], ref.numpy(), rtol=1e-12)
    gates = gs.gate_time_scale_exponents(traj, discard=discard)[:, :k].mean(0)
    np.testing.assert_allclose(ly["gate_prediction"], gates.numpy(), rtol=1e-12)


def test_padded_sequences_are_measured_within_their_lengths():
    """Guards gs.inspect(lengths=): each sequence counts only up to its length. The lookback
    aligns each sequence at its own end and equals the RMS of the sequences inspected
    alone (the short one truncated, not padded); the time-scale quantiles are those of the
    valid steps; saturation counts only valid entries."""
    torch.manual_seed(9)
    module = nn.GRU(3, 4, batch_first=True).double()
    x = torch.randn(2, 12, 3, dtype=torch.float64)
    lengths = torch.tensor([12, 7])
    padded = gs.inspect(module, x, lengths=lengths, quiet=True, transport_lags=0,
                        lyapunov_count=0).summary["units"][0]
    alone = [gs.inspect(module, x[b:b + 1, :int(n)], quiet=True, transport_lags=0,
                        lyapunov_count=0).summary["units"][0]
             for b, n in enumerate(lengths)]
    got = np.array(padded["lookback"]["values"])                     # index = lag 0..T-1
    long, short = (np.array(a["lookback"]["values"]) ** 2 for a in alone)
    want = np.sqrt(np.concatenate([(long[:7] + short) / 2, long[7:]]))
    np.testing.assert_allclose(got, want, rtol=1e-10)
    cell = gs.from_torch(module)
    with torch.no_grad():
        r = torch.cat([cell.unroll(x[:1]).retention.flatten(),
                       cell.unroll(x[1:, :7]).retention.flatten()])
    levels = torch.tensor(padded["time_scales"]["levels"], dtype=torch.float64)
    np.testing.assert_allclose(padded["time_scales"]["quantiles"],
                               (-1 / torch.quantile(r, levels).log()).numpy(), rtol=1e-10)
    assert padded["time_scales"]["count_total"] == (12 + 7) * 4
    for name, part in padded["saturation"].items():
        ref = [a["saturation"][name]["high"] for a in alone]
        assert part["high"] == pytest.approx((12 * ref[0] + 7 * ref[1]) / 19)
    with pytest.raises(InspectInputError, match="lengths must lie in 1..T=12"):
        gs.inspect(module, x, lengths=torch.tensor([12, 13]), quiet=True)
