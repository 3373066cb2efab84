"""Probes for a training loop: schedules, recording, equality with the measures, no side
effects, save/load, plotting, user quantities and argument checks."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from conftest import random_cell, random_inputs
from references import steady_state_step_sizes

import gatescope as gs
from gatescope import metrics
from gatescope.measures import lag_medians, time_scales
from gatescope.probes import (
    Probe,
    ProbeResults,
    Schedule,
    SkipQuantity,
    list_quantities,
    load_probe,
    register_quantity,
)
from gatescope.reporting.probe_figures import plot_probe

B, T, M, N = 6, 10, 3, 12
LAGS = (1, 2, 5)


def _setup(seed=0, output_size=2):
    model = gs.SequenceModel(random_cell("multi_gate", M, N, True, seed), output_size)
    model = model.double()
    u = random_inputs(B, T, M, seed)
    y = torch.randn(B, output_size, generator=torch.Generator().manual_seed(seed + 7),
                    dtype=torch.float64)
    return model, u, y


def _train(model, opt, steps=2):
    gen = torch.Generator().manual_seed(3)
    for _ in range(steps):
        u = torch.randn(4, T, M, generator=gen, dtype=torch.float64)
        y = torch.randn(4, 2, generator=gen, dtype=torch.float64)
        opt.zero_grad()
        model.loss(u, y).backward()
        opt.step()


# ---------------------------------------------------------------- schedules


def test_every_schedule():
    s = Schedule.every(10)
    assert [x for x in range(35) if x in s] == [0, 10, 20, 30]
    assert np.int64(20) in s
    for outside in (-10, 10.0, True, "10", None):
        assert outside not in s
    shifted = Schedule.every(5, start=3)
    assert shifted.steps_until(20) == [3, 8, 13, 18] and 0 not in shifted


def test_log_schedule_is_geometric_and_includes_zero():
    s = Schedule.log(100, num=5)
    assert s.steps_until(1000) == [0, 1, 3, 10, 32, 100]
    assert [x for x in range(200) if x in s] == [0, 1, 3, 10, 32, 100]
    assert Schedule.log(50, num=1, start=7).steps_until(50) == [0, 7]
    dense = Schedule.log(20, num=40).steps_until(20)
    assert dense[:4] == [0, 1, 2, 3] and dense[-1] == 20 and len(dense) < 41  # merged by rounding
    assert dense == sorted(set(dense))


def test_at_schedule_and_round_trip():
    s = Schedule.at([30, 0, 7])
    assert s.steps_until(10) == [0, 7] and 30 in s and 8 not in s
    for sched in (s, Schedule.every(4, start=1), Schedule.log(64, num=7, start=2)):
        assert Schedule.from_dict(json.loads(json.dumps(sched.to_dict()))) == sched
    assert repr(Schedule.every(3)) == "Schedule.every(k=3, start=0)"


@pytest.mark.parametrize(("build", "name"), [
    (lambda: Schedule.every(0), "k"),
    (lambda: Schedule.every(2.5), "k"),
    (lambda: Schedule.every(2, start=-1), "start"),
    (lambda: Schedule.log(5, start=10), "stop"),
    (lambda: Schedule.log(10, num=0), "num"),
    (lambda: Schedule.log(10, start=0), "start"),
    (lambda: Schedule.at([]), "steps"),
    (lambda: Schedule.at([3, -1]), "steps"),
    (lambda: Schedule.at([2, 2]), "steps"),
    (lambda: Schedule.at("12"), "steps"),
    (lambda: Schedule.every(2).steps_until(-1), "stop"),
    (lambda: Schedule.from_dict({"kind": "sometimes"}), "schedule kind"),
])
def test_schedule_rejects_bad_arguments(build, name):
    with pytest.raises(ValueError, match=name):
        build()


# ---------------------------------------------------------------- recording


def test_probe_records_only_on_schedule():
    model, u, y = _setup()
    probe = Probe(model, u, y, quantities=["loss"], schedule=Schedule.every(3))
    returned = [probe(step) for step in range(10)]
    assert [s for s, r in enumerate(returned) if r is not None] == [0, 3, 6, 9]
    assert probe.steps.tolist() == [0, 3, 6, 9] and probe.steps.dtype == np.int64
    assert set(returned[3]) == {"probe_loss"}
    assert probe(10) is None and probe.step(10, force=True) is not None
    assert probe.history["probe_loss"].shape == (5,)
    at = Probe(model, u, y, quantities=["loss"], schedule=Schedule.at([2, 5]))
    for step in range(8):
        at(step)
    assert at.steps.tolist() == [2, 5]


def test_presets_are_cost_ordered():
    cheap = [q.name for q in Probe(*_setup(), quantities="cheap").quantities]
    full = [q.name for q in Probe(*_setup(), quantities="full").quantities]
    assert cheap == ["loss", "gates", "optimizer_steps", "zeroth_order_rates",
                     "zeroth_order_rates_null", "schedule", "effective_rates",
                     "timescale_spectrum"]
    assert full == list_quantities() and full[: len(cheap)] == cheap
    assert full[-1] == "profile"
    picked = Probe(*_setup(), quantities=["profile", "loss"]).quantities
    assert [q.name for q in picked] == ["loss", "profile"]


def test_recorded_values_equal_the_measures():
    model, u, y = _setup()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    _train(model, opt)
    probe = Probe(model, u, y, optimizer=opt, quantities="full", lags=LAGS, rank=10,
                  samples_per_lag=16)
    rec = probe(0)
    cell = model.cell
    traj = cell.unroll(u).detach()
    J = gs.jacobians(cell, traj)

    def close(key, ref):
        ref = ref.detach().numpy() if isinstance(ref, torch.Tensor) else np.asarray(ref)
        np.testing.assert_allclose(rec[key], ref, rtol=1e-10, atol=1e-14, err_msg=key)

    close("probe_loss", model.loss(u, y))
    close("gate_per_neuron", traj.gates.mean((0, 1)))
    close("retention_per_neuron", 1 - traj.gates.mean((0, 1)))
    mu = gs.effective_learning_rates(cell, traj, LAGS)
    close("envelope", gs.envelope(mu))
    close("rate_cv_order1", gs.gates_vs_optimizer(mu, opt).gates.cv)
    close("time_scales", time_scales(cell, traj))
    disp = gs.step_size_dispersion(gs.optimizer_step_sizes(opt), r=10)
    for field in ("cv", "ai", "ce", "participation_ratio", "effective_rank", "quantiles"):
        close(f"step_{field}", getattr(disp, field))
    prop = gs.propagation_anisotropy(J, LAGS, samples_per_lag=16, r=10).stats
    G = gs.per_example_gradients(model, u, y)
    upd = gs.update_anisotropy(G, r=min(10, *G.shape))
    for field in ("ai", "ce", "participation_ratio", "effective_rank"):
        close(f"jacobian_{field}", np.median(getattr(prop, field).numpy(), -1))
        close(f"gradcov_{field}", getattr(upd, field))
    # δ_T of each example's MSE loss, up to its scale: W_outᵀ (prediction - target)
    W, b = model.readout.weight, model.readout.bias
    delta = (traj.states[:, -1] @ W.T + b - y) @ W
    align = gs.transport_alignment(J, delta, [T - lag for lag in LAGS], r=10)
    close("alignment", align.alignment.mean(0))
    close("alignment_baseline", 10 / N)
    S = gs.sensitivities(J)
    fit = gs.profile_fit(traj, S)
    rec_predictors = probe.metadata()["coords"]["predictor"]
    assert rec_predictors == ["update", "retention"]
    close("sensitivity_profile", lag_medians(S)[:-1] / lag_medians(S)[0])
    preds = [fit.predictors[kind] for kind in rec_predictors]
    close("fit_slope", [p.fit.slope for p in preds])
    close("fit_r2", [p.fit.r2 for p in preds])
    close("zeroth_order_profile", torch.stack([p.zeroth_order for p in preds]))
    close("predicted_profile", torch.stack([p.fitted for p in preds]))
    assert all(v.dtype == np.float64 for v in rec.values())


def test_full_preset_on_every_cell(cell_name):
    torch.manual_seed(0)
    n = 4
    model = gs.SequenceModel(gs.make_cell(cell_name, M, n), 3, readout="all",
                             loss="cross_entropy")
    u = torch.randn(5, 9, M)
    y = torch.randint(0, 3, (5, 9))
    mask = torch.arange(9).expand(5, 9) < torch.tensor([[9], [5], [9], [7], [3]])
    probe = Probe(model, u, y, mask=mask, optimizer=torch.optim.SGD(model.parameters(), 0.1),
                  quantities="full", samples_per_lag=4)
    assert probe.lags == (1, 2, 4, 8)
    rec = probe(0)
    assert ("gate_per_neuron" in rec) == (cell_name not in ("plain", "leaky"))
    shapes = {"retention_per_neuron": (n,), "envelope": (4,),
              "time_scales": (n,), "jacobian_ai": (4,),
              "alignment": (4,), "gradcov_ce": (),
              "sensitivity_profile": (8,), "step_quantiles": (7,)}
    assert {k: rec[k].shape for k in shapes} == shapes
    assert np.isfinite(rec["probe_loss"]) and np.isfinite(rec["alignment"]).all()
    assert rec["alignment_baseline"] == min(10, model.cell.state_size) / model.cell.state_size


def _adam_last_update_step_sizes(model, opt):
    """Adam's step sizes from its last real update: ``Δθ / m̂`` (the update is the step size
    times the bias-corrected first moment)."""
    before = [p.detach().clone() for p in model.parameters()]
    _train(model, opt, steps=1)
    out = {}
    for p, old in zip(model.parameters(), before, strict=True):
        beta1 = opt.param_groups[0]["betas"][0]
        m_hat = opt.state[p]["exp_avg"] / (1 - beta1 ** int(opt.state[p]["step"]))
        out[p] = (old - p.detach()) / m_hat
    return out


@pytest.mark.parametrize(("make", "real_steps"), [
    (lambda p: torch.optim.Adam(p, lr=3e-3, betas=(0.8, 0.95)), _adam_last_update_step_sizes),
    (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), steady_state_step_sizes),
    (lambda p: torch.optim.RMSprop(p, lr=1e-3),
     lambda model, opt: steady_state_step_sizes(model, opt, alpha=1.0)),
], ids=["adam", "momentum", "rmsprop"])
def test_optimizer_steps_is_the_dispersion_of_the_real_step_sizes(make, real_steps):
    """The recorded dispersion is that of the step sizes real ``optimizer.step()`` calls
    take (the parameter change per unit gradient, or per unit corrected moment for Adam)."""
    model, u, y = _setup(1)
    opt = make(model.parameters())
    _train(model, opt, steps=3)
    steps = real_steps(model, opt)
    rec = Probe(model, u, y, optimizer=opt, quantities=["optimizer_steps"], rank=4)(0)
    disp = gs.step_size_dispersion(steps, r=4)
    flat = np.concatenate([s.detach().flatten().numpy() for s in steps.values()])
    np.testing.assert_allclose(rec["step_cv"], flat.std() / flat.mean(), rtol=1e-7,
                               atol=1e-9)
    np.testing.assert_allclose(rec["step_quantiles"],
                               np.quantile(flat, [0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99]),
                               rtol=1e-7)
    for field in ("cv", "ai", "ce", "participation_ratio", "effective_rank", "quantiles"):
        np.testing.assert_allclose(rec[f"step_{field}"],
                                   getattr(disp, field).numpy(), rtol=1e-7, atol=1e-9,
                                   err_msg=field)


def test_optimizer_steps_is_skipped_with_a_note():
    model, u, y = _setup()
    none = Probe(model, u, y, quantities=["loss", "optimizer_steps"], schedule=Schedule.every(1))
    none(0)
    none(1)
    assert none.notes == {"optimizer_steps": {"no optimizer given": [0, 1]}}
    assert list(none.history) == ["probe_loss"]
    adagrad = Probe(model, u, y, optimizer=torch.optim.Adagrad(model.parameters()),
                    quantities=["optimizer_steps"])
    adagrad(0)
    assert "Adagrad" in next(iter(adagrad.notes["optimizer_steps"]))
    # Adam has no step size before its first step: NaN there, values afterwards
    opt = torch.optim.Adam(model.parameters())
    adam = Probe(model, u, y, optimizer=opt, quantities=["optimizer_steps"],
                 schedule=Schedule.every(1))
    adam(0)
    _train(model, opt, steps=1)
    adam(1)
    cv = adam.history["step_cv"]
    assert np.isnan(cv[0]) and np.isfinite(cv[1])
    assert adam.history["step_quantiles"].shape == (2, 7)
    assert adam.notes["optimizer_steps"] == {"the optimizer has not taken a step yet": [0]}


def test_probe_leaves_parameters_grads_optimizer_and_rng_untouched():
    @register_quantity("draws_noise", cost=0,
                       metrics=[gs.declare_metric("noise", "three normal draws", ("neuron",))])
    def draws_noise(ctx):
        return {"noise": torch.randn(3)}

    model, u, y = _setup()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    _train(model, opt)
    probe = Probe(model, u, y, optimizer=opt, quantities="full", samples_per_lag=8)
    assert [p.grad is None for p in model.parameters()].count(False) > 0  # grads exist
    model.cell.input.weight.grad = None  # and one is None
    params = [p.detach().clone() for p in model.parameters()]
    grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    opt_state = copy.deepcopy(opt.state_dict())
    torch.manual_seed(123)
    rng = torch.get_rng_state()
    first = probe(0)["noise"]
    assert torch.equal(torch.get_rng_state(), rng)
    for p, old, g in zip(model.parameters(), params, grads, strict=True):
        assert torch.equal(p.detach(), old) and p.requires_grad
        assert (p.grad is None) if g is None else torch.equal(p.grad, g)
    after = opt.state_dict()
    assert after["param_groups"] == opt_state["param_groups"]
    for key, state in opt_state["state"].items():
        assert all(torch.equal(v, after["state"][key][k]) for k, v in state.items())
    np.testing.assert_array_equal(probe(10)["noise"], first)  # same forked draws


def test_probe_copies_the_probe_batch():
    model, u, y = _setup()
    probe = Probe(model, u, y, quantities=["loss"], schedule=Schedule.every(1))
    before = probe(0)["probe_loss"]
    u.add_(1.0)
    np.testing.assert_array_equal(probe(1)["probe_loss"], before)


def test_user_registered_quantity():
    @register_quantity("state_norm", cost=1, description="mean |h| per neuron", metrics=[
        gs.declare_metric("state_norm_mean", "mean ‖h_t‖ over the batch and time"),
        gs.declare_metric("state_abs_per_neuron", "mean |h_t| per neuron", ("neuron",))])
    def state_norm(ctx):
        states = ctx.trajectory.states[:, 1:]
        return {"state_norm_mean": states.norm(dim=-1).mean(),
                "state_abs_per_neuron": states.abs().mean((0, 1))}

    assert "state_norm" in list_quantities()
    model, u, y = _setup()
    probe = Probe(model, u, y, quantities="cheap")
    assert "state_norm" in [q.name for q in probe.quantities]
    rec = probe(0)
    states = model.cell.unroll(u).states[:, 1:].detach()
    np.testing.assert_allclose(rec["state_norm_mean"], states.norm(dim=-1).mean().item())
    assert rec["state_abs_per_neuron"].shape == (N,)
    assert probe.metadata()["axes"]["state_abs_per_neuron"] == ["neuron"]

    @register_quantity("sometimes", cost=0, metrics=[gs.declare_metric("sometimes_x", "step")])
    def sometimes(ctx):
        if ctx.step == 1:
            raise SkipQuantity("not at step 1")
        return {"sometimes_x": float(ctx.step)}

    skip = Probe(model, u, y, quantities=["sometimes"], schedule=Schedule.every(1))
    for step in range(3):
        skip(step)
    np.testing.assert_array_equal(skip.history["sometimes_x"], [0.0, np.nan, 2.0])


def test_a_quantity_changing_shape_is_an_error():
    @register_quantity("growing", cost=0,
                       metrics=[gs.declare_metric("growing_x", "grows", ("neuron",))])
    def growing(ctx):
        return {"growing_x": np.zeros(ctx.step + 1)}

    model, u, y = _setup()
    probe = Probe(model, u, y, quantities=["growing"], schedule=Schedule.every(1))
    probe(0)
    with pytest.raises(ValueError, match="growing_x"):
        probe(1)
    assert probe.steps.tolist() == [0]


# ---------------------------------------------------------------- save, load, plot


def _recorded_probe(quantities="cheap"):
    model, u, y = _setup()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    probe = Probe(model, u, y, optimizer=opt, quantities=quantities, lags=LAGS,
                  schedule=Schedule.every(2), samples_per_lag=8)
    probe(0)
    for step in range(1, 5):
        _train(model, opt, steps=1)
        probe(step)
    return probe


def test_save_load_round_trip(tmp_path):
    probe = _recorded_probe()
    json_path, npz_path = probe.save(tmp_path / "run" / "probe")
    assert (json_path.name, npz_path.name) == ("probe.json", "probe.npz")
    assert sorted(p.name for p in json_path.parent.iterdir()) == ["probe.json", "probe.npz"]
    for path in (tmp_path / "run" / "probe", json_path, str(npz_path)):
        loaded = load_probe(path)
        assert isinstance(loaded, ProbeResults)
        np.testing.assert_array_equal(loaded.steps, [0, 2, 4])
        assert list(loaded.history) == list(probe.history)
        for key, value in probe.history.items():
            np.testing.assert_array_equal(loaded[key], value)
        assert loaded.metadata == probe.metadata()
    loaded = Probe.load(json_path)
    assert np.isnan(loaded["step_cv"][0])
    assert loaded.quantities == ["loss", "gates", "optimizer_steps", "zeroth_order_rates",
                                 "zeroth_order_rates_null", "schedule", "effective_rates",
                     "timescale_spectrum"]
    assert set(loaded.quantity("gates")) == {"gate_per_neuron", "retention_per_neuron"}
    assert loaded.metadata["lags"] == list(LAGS)
    assert Schedule.from_dict(loaded.metadata["schedule"]) == Schedule.every(2)
    assert loaded.metadata["versions"]["gatescope"] == gs.__version__


def test_load_refuses_mismatched_or_foreign_files(tmp_path):
    _recorded_probe().save(tmp_path / "a")
    other = _recorded_probe(["loss"])
    other.save(tmp_path / "b")
    (tmp_path / "a.npz").write_bytes((tmp_path / "b.npz").read_bytes())
    with pytest.raises(ValueError, match="checksum"):
        load_probe(tmp_path / "a")
    (tmp_path / "c.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="gatescope-probe"):
        load_probe(tmp_path / "c")
    with pytest.raises(FileNotFoundError):
        load_probe(tmp_path / "missing")


def test_plot_probe_writes_png_and_pdf(tmp_path):
    @register_quantity("matrix_and_many", cost=0, metrics=[
        gs.declare_metric("matrix", "a 2 x 2 x 2 array", ("predictor", "lag", "neuron")),
        gs.declare_metric("many", "a long vector", ("neuron",))])
    def matrix_and_many(ctx):
        return {"matrix": np.ones((2, 2, 2)), "many": np.arange(20.0) + ctx.step}

    # every way of drawing: scalars, lags, levels (with a skipped step), neurons, the profile
    # against the lag (one panel per predictor), a long vector; a 3-axis metric is left out
    quantities = ["loss", "gates", "optimizer_steps", "effective_rates", "profile",
                  "matrix_and_many"]
    probe = _recorded_probe(quantities)
    saved = probe.save(tmp_path / "probe")[0]
    figures = plot_probe(load_probe(saved), tmp_path / "figures")
    assert set(figures) == {f"probe_{q}" for q in quantities}
    for name, paths in figures.items():
        assert [p.suffix for p in paths] == [".png", ".pdf"]
        assert all(p.parent == tmp_path / "figures" and p.stem == name for p in paths)
        assert all(p.stat().st_size > 0 for p in paths)
    live = plot_probe(_recorded_probe(["loss"]), tmp_path / "live")
    assert [p.name for p in live["probe_loss"]] == ["probe_loss.png", "probe_loss.pdf"]


# ---------------------------------------------------------------- argument checks


@pytest.mark.parametrize(("change", "name"), [
    ({"model": torch.nn.Linear(3, 1)}, "model"),
    ({"u": torch.zeros(B, T, M + 1)}, "u"),
    ({"u": torch.zeros(T, M)}, "u"),
    ({"y": torch.zeros(B + 1, 2)}, "y"),
    ({"mask": torch.ones(B + 1, T)}, "mask"),
    ({"optimizer": "adam"}, "optimizer"),
    ({"quantities": "medium"}, "quantities"),
    ({"quantities": ["loss", "nope"]}, "quantities"),
    ({"quantities": []}, "quantities"),
    ({"quantities": ["loss", "loss"]}, "quantities"),
    ({"schedule": 10}, "schedule"),
    ({"lags": (0, 1)}, "lags"),
    ({"lags": (1, T + 1)}, "lags"),
    ({"lags": (2, 2)}, "lags"),
    ({"lags": ()}, "lags"),
    ({"rank": 0}, "rank"),
    ({"samples_per_lag": 0}, "samples_per_lag"),
])
def test_probe_rejects_bad_arguments(change, name):
    model, u, y = _setup()
    kwargs = {"model": model, "u": u, "y": y} | change
    with pytest.raises(ValueError, match=name):
        Probe(**kwargs)


def test_probe_call_and_registration_reject_bad_arguments():
    probe = Probe(*_setup(), quantities=["loss"], schedule=Schedule.every(1))
    with pytest.raises(ValueError, match="step"):
        probe(-1)
    with pytest.raises(ValueError, match="step"):
        probe(1.5)
    probe(3)
    with pytest.raises(ValueError, match="step must increase"):
        probe(3)
    with pytest.raises(ValueError, match="name"):
        register_quantity("a/b", cost=0, metrics=[metrics.PROBE_LOSS])
    with pytest.raises(ValueError, match="cost"):
        register_quantity("ok", cost=-1, metrics=[metrics.PROBE_LOSS])
    with pytest.raises(ValueError, match="metrics"):
        register_quantity("ok", cost=0, metrics=[])
    word = gs.declare_metric("word", "a word")

    @register_quantity("text", cost=0, metrics=[word])
    def text(ctx):
        return {"word": "hello"}

    with pytest.raises(ValueError, match="word"):
        Probe(*_setup(), quantities=["text"])(0)

    @register_quantity("undeclared", cost=0, metrics=[word])
    def undeclared(ctx):
        return {"other": 1.0}

    with pytest.raises(ValueError, match="does not declare"):
        Probe(*_setup(), quantities=["undeclared"])(0)
    with pytest.raises(ValueError, match="already declared"):
        gs.declare_metric("word", "another meaning")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_probe_on_cuda_matches_cpu():
    model, u, y = _setup()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    _train(model, opt)
    cpu = Probe(model, u, y, optimizer=opt, quantities="full", lags=LAGS, samples_per_lag=8)(0)
    model.cuda()
    opt_cuda = torch.optim.Adam(model.parameters(), lr=1e-2)
    opt_cuda.load_state_dict(opt.state_dict())
    rng = torch.cuda.get_rng_state()
    gpu = Probe(model, u.cuda(), y.cuda(), optimizer=opt_cuda, quantities="full", lags=LAGS,
                samples_per_lag=8)(0)
    assert torch.equal(torch.cuda.get_rng_state(), rng)
    assert set(gpu) == set(cpu)
    for key, value in cpu.items():
        assert isinstance(gpu[key], np.ndarray)
        np.testing.assert_allclose(gpu[key], value, rtol=1e-4, atol=1e-8, err_msg=key)
