"""The follow-ups' training side: the ``multilag_seq`` task, the update-gate initialisation,
per-seed gradient clipping, the slow-mode forcing, and the ``learnability`` and
``timescales`` experiments (docs/experiments.md#learnability, #timescales)."""

from __future__ import annotations

import math

import pytest
import torch

import gatescope as gs
from gatescope.cells import init_update_gate, make_cell, retention_gate
from gatescope.experiments import SettingsError, build_settings, get_experiment, read_rows
from gatescope.experiments.base import Group
from gatescope.experiments.followup import gate_logits
from gatescope.experiments.learnability import PAPER as LEARNABILITY_PAPER
from gatescope.experiments.stable_noise import StableNoiseMultiLag
from gatescope.experiments.timescales import PAPER as TIMESCALES_PAPER
from gatescope.probes import get_quantity
from gatescope.tasks import make_task
from gatescope.training import (
    FORCING_STREAM,
    EnsembleTrainer,
    StableForcing,
    seeded_init,
    slow_mode_parameters,
    standard_stable,
    stream_generator,
    task_model_factory,
)

F64 = torch.float64
LOGIT = math.log(0.05 / 0.95)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- the task


def direct_targets(u: torch.Tensor, v: torch.Tensor, lags, coefficients) -> torch.Tensor:
    """``y[b, t] = Σ_k c_k Σ_i v_i u[b, t-ℓ_k, i]`` term by term (``x_s = 0`` for ``s < 0``)."""
    B, T, _ = u.shape
    y = torch.zeros(B, T, dtype=F64)
    for t in range(T):
        for lag, c in zip(lags, coefficients, strict=True):
            if t - lag >= 0:
                y[:, t] += c * (u[:, t - lag] * v).sum(-1)
    return y


def test_multilag_seq_targets_and_mask_follow_the_formula():
    lags, coef = (1, 3, 6), (0.6, -0.5, 0.25)
    task = make_task("multilag_seq", 10, 3, lags=lags, coefficients=coef, noise_std=0.0,
                     direction=(1.0, 2.0, -2.0))
    u, y, mask = task.sample(5, gen(1), dtype=F64)
    assert u.shape == (5, 10, 3) and y.shape == (5, 10, 1) and mask.shape == (5, 10)
    v = torch.tensor([1.0, 2.0, -2.0], dtype=F64) / 3
    torch.testing.assert_close(y[..., 0], direct_targets(u, v, lags, coef), rtol=0, atol=1e-14)
    assert mask.dtype == torch.bool and mask.equal((torch.arange(10) >= 6).expand(5, -1))
    assert task.readout == "all" and task.baseline_loss == pytest.approx(0.36 + 0.25 + 0.0625)


def test_multilag_seq_shares_multilag_signal_and_noise_scale():
    # the last step of multilag_seq is multilag's target (same draws of u)
    opts = {"lags": (2, 5), "coefficients": (1.0, 0.5), "noise_std": 0.0}
    _, y_seq, _ = make_task("multilag_seq", 8, 2, **opts).sample(6, gen(3), dtype=F64)
    _, y_last = make_task("multilag", 8, 2, **opts).sample(6, gen(3), dtype=F64)
    torch.testing.assert_close(y_seq[:, -1], y_last, rtol=0, atol=1e-15)
    # the noise is N(0, σ²) per step, independent of the signal; MSE baseline on counted steps
    task = make_task("multilag_seq", 30, 2, lags=(2, 5), coefficients=(1.0, 0.5), noise_std=0.3)
    u, y, mask = task.sample(4000, gen(4), dtype=F64)
    v = task.unit_direction()
    residual = (y[..., 0] - direct_targets(u, v, (2, 5), (1.0, 0.5)))[mask]
    assert residual.std().item() == pytest.approx(0.3, rel=0.02)
    assert y[..., 0][mask].var().item() == pytest.approx(task.baseline_loss, rel=0.03)


def test_stable_noise_task_is_multilag_seq_at_alpha_2_and_stable_below():
    opts = {"lags": (2, 5), "coefficients": (1.0, 0.5), "noise_std": 0.3}
    plain = make_task("multilag_seq", 12, 2, **opts).sample(7, gen(5), dtype=F64)
    same = StableNoiseMultiLag(12, 2, **opts, noise_alpha=2.0).sample(7, gen(5), dtype=F64)
    for a, b in zip(plain, same, strict=True):
        assert torch.equal(a, b)
    heavy = StableNoiseMultiLag(12, 2, **opts, noise_alpha=1.5)
    u, y, _ = heavy.sample(7, gen(5), dtype=F64)
    g = gen(5)
    u_again = torch.randn(7, 12, 2, generator=g, dtype=F64)
    noise = 0.3 * standard_stable(1.5, (7, 12), g)
    assert torch.equal(u, u_again)
    signal = direct_targets(u, heavy.unit_direction(), (2, 5), (1.0, 0.5))
    torch.testing.assert_close(y[..., 0], signal + noise, rtol=0, atol=1e-14)
    assert heavy.baseline_loss == math.inf
    for bad in (1.0, 2.5):
        with pytest.raises(ValueError, match="noise_alpha"):
            StableNoiseMultiLag(12, 2, **opts, noise_alpha=bad)


def test_standard_stable_is_a_unit_gaussian_at_alpha_2_and_heavy_below():
    x = standard_stable(2.0, (200_000,), gen(6))
    assert x.std().item() == pytest.approx(1.0, rel=0.01)
    # α = 1.5: P(|ξ| > 10) against scipy's S1 law with scale 1/√2
    levy = pytest.importorskip("scipy.stats").levy_stable
    y = standard_stable(1.5, (200_000,), gen(7))
    expected = 2 * levy.sf(10.0, 1.5, 0.0, scale=1 / math.sqrt(2))
    assert (y.abs() > 10).double().mean().item() == pytest.approx(expected, rel=0.1)


# --------------------------------------------------------------------------- gate init


@pytest.mark.parametrize("name", ["leaky", "scalar_gate", "multi_gate", "gru", "lstm"])
def test_update_gate_starts_at_s_for_every_input(name):
    torch.manual_seed(0)
    cell = make_cell(name, 3, 5, bias=True, dtype=F64)
    before = {k: v.clone() for k, v in cell.named_parameters()}
    init_update_gate(cell, LOGIT)
    traj = cell.unroll(torch.randn(4, 9, 3, dtype=F64, generator=gen(1)) * 3)
    torch.testing.assert_close(traj.retention, torch.full_like(traj.retention, 0.95),
                               rtol=0, atol=1e-15)
    gate = retention_gate(cell)
    for key, value in cell.named_parameters():  # only the gate's rows changed
        keep = torch.ones_like(value, dtype=torch.bool)
        if gate is not None and key in gate.names:
            keep[gate.rows] = False
            assert not value[gate.rows].ne(0).any() or key == gate.biases[0]
        assert torch.equal(value[keep], before[key][keep])


def test_spread_of_gate_logits_sets_each_neurons_retention():
    logits = gate_logits(0.05, 1.0, 6)
    normal = torch.distributions.Normal(0.0, 1.0)
    expected = LOGIT + normal.icdf((torch.arange(6, dtype=F64) + 0.5) / 6)
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-12)
    assert torch.equal(gate_logits(0.05, 0.0, 6), torch.full((6,), LOGIT, dtype=F64))
    for name in ("multi_gate", "gru", "lstm"):
        cell = init_update_gate(make_cell(name, 2, 6, bias=True, dtype=F64), logits)
        r = cell.unroll(torch.randn(3, 4, 2, dtype=F64)).retention
        torch.testing.assert_close(r, (1 - torch.sigmoid(logits)).expand_as(r), rtol=0,
                                   atol=1e-15)


def test_update_gate_init_refuses_what_it_cannot_set():
    with pytest.raises(ValueError, match="bias=True"):
        init_update_gate(make_cell("multi_gate", 2, 3), LOGIT)
    with pytest.raises(ValueError, match="one number or 1"):
        init_update_gate(make_cell("scalar_gate", 2, 3, bias=True), torch.zeros(3))
    with pytest.raises(ValueError, match="one number or 1"):
        init_update_gate(make_cell("leaky", 2, 3), torch.zeros(3))
    with pytest.raises(ValueError, match="finite"):
        init_update_gate(make_cell("gru", 2, 3), math.inf)
    with pytest.raises(ValueError, match="knows the cells"):
        init_update_gate(make_cell("plain", 2, 3), LOGIT)


# --------------------------------------------------------------------------- clipping


def small_problem(cell: str = "multi_gate"):
    task = make_task("multilag_seq", 9, 3, lags=(1, 3), coefficients=(1.0, 0.5), noise_std=0.1)
    build = task_model_factory(task, cell, 4, bias=True)

    def factory():
        model = build()
        init_update_gate(model.cell, LOGIT)
        return model

    return task, factory


def train_alone(task, factory, seed: int, steps: int, clip: float, lr: float = 0.05):
    """One seed with torch's own AdamW and ``clip_grad_norm_``: the reference."""
    model = seeded_init(factory, seed).to(F64)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    data = stream_generator(seed, "data")
    norms = []
    for _ in range(steps):
        u, y, mask = task.sample(6, data, dtype=F64)
        opt.zero_grad()
        model.loss(u, y, mask).backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip)))
        opt.step()
    return model, norms


def test_clipping_acts_per_seed_as_each_seed_alone():
    task, factory = small_problem()
    seeds, clip = (0, 1, 2), 0.3
    trainer = EnsembleTrainer(factory, seeds, task, optimizer="adamw", lr=0.05, batch_size=6,
                              dtype=F64, optimizer_options={"weight_decay": 1e-4},
                              clip_norm=clip)
    trainer.train(8)
    clipped = 0
    for k, seed in enumerate(seeds):
        alone, norms = train_alone(task, factory, seed, 8, clip)
        clipped += sum(n > clip for n in norms)
        mine = trainer.model(k).state_dict()
        for name, value in alone.state_dict().items():
            torch.testing.assert_close(mine[name], value, rtol=0, atol=1e-10)
    assert 0 < clipped < 24  # clipping acted on some steps of some seeds, not on all
    free = EnsembleTrainer(factory, seeds, task, optimizer="adamw", lr=0.05, batch_size=6,
                           dtype=F64, optimizer_options={"weight_decay": 1e-4}).train(8)
    assert not torch.allclose(free.stacked_parameters["readout.weight"],
                              trainer.stacked_parameters["readout.weight"])


def test_clip_norm_is_validated():
    task, factory = small_problem()
    for bad in (0.0, -1.0, math.inf, "1"):
        with pytest.raises(ValueError, match="clip_norm"):
            EnsembleTrainer(factory, [0], task, clip_norm=bad)


# --------------------------------------------------------------------------- forcing


def forced_trainer(seeds, scale=0.5, cell="multi_gate", forcing_cls=StableForcing, **options):
    task, factory = small_problem(cell)
    forcing = forcing_cls.on_slow_modes(1.5, scale, seeded_init(factory, 0).cell)
    return EnsembleTrainer(factory, seeds, task, optimizer="adamw", lr=0.02, batch_size=6,
                           dtype=F64, clip_norm=1.0, forcing=forcing, **options)


def test_slow_mode_parameters_are_the_retention_gate_or_the_recurrent_weights():
    assert slow_mode_parameters(make_cell("leaky", 2, 3)) == {"recurrent.weight": slice(None)}
    assert slow_mode_parameters(make_cell("multi_gate", 2, 3, bias=True)) == {
        "gate_recurrent.weight": slice(0, 3), "gate_input.weight": slice(0, 3),
        "gate_input.bias": slice(0, 3)}
    assert slow_mode_parameters(make_cell("lstm", 2, 3)) == {
        n: slice(3, 6) for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}


def test_forcing_adds_scaled_stable_kicks_to_the_slow_mode_updates_only():
    forced = forced_trainer([4, 9], scale=0.5)
    task, factory = small_problem()
    free = EnsembleTrainer(factory, [4, 9], task, optimizer="adamw", lr=0.02, batch_size=6,
                           dtype=F64, clip_norm=1.0)
    start = {k: v.detach().clone() for k, v in free.stacked_parameters.items()}
    forced.step()
    free.step()
    forced_names = list(forced.forcing.parameters)  # all their rows are forced here
    counts = [start[name][0].numel() for name in forced_names]
    draws = torch.stack([standard_stable(1.5, (sum(counts),), stream_generator(s, FORCING_STREAM))
                         for s in (4, 9)]).split(counts, dim=1)
    for name, value in forced.stacked_parameters.items():
        base = free.stacked_parameters[name]
        if name not in forced_names:
            assert torch.equal(value, base), name
            continue
        delta = base - start[name]  # the update
        rms = delta.pow(2).flatten(1).mean(1).sqrt()
        xi = draws[forced_names.index(name)].reshape(delta.shape)
        expected = base + 0.5 * rms.reshape(-1, *[1] * (delta.dim() - 1)) * xi
        torch.testing.assert_close(value, expected, rtol=0, atol=1e-15)


def test_forcing_is_seeded_and_the_same_alone_or_in_an_ensemble():
    a, b = forced_trainer([0, 1, 2]).train(5), forced_trainer([0, 1, 2]).train(5)
    for name, value in a.stacked_parameters.items():
        assert torch.equal(value, b.stacked_parameters[name])
    alone = forced_trainer([1]).train(5)
    for name, value in alone.stacked_parameters.items():
        torch.testing.assert_close(a.stacked_parameters[name][1], value[0], rtol=0, atol=1e-10)


def test_forcing_resumes_exactly_from_a_checkpoint():
    whole = forced_trainer([0, 1]).train(5)
    first = forced_trainer([0, 1]).train(3)
    rest = forced_trainer([0, 1])
    rest.load_state_dict(first.state_dict())
    rest.train(5)
    for name, value in whole.stacked_parameters.items():
        assert torch.equal(value, rest.stacked_parameters[name])
    state = first.state_dict()
    del state["forcing_generators"]
    with pytest.raises(ValueError, match="forcing streams"):
        forced_trainer([0, 1]).load_state_dict(state)


class PoisonSeedOne(StableForcing):
    """A forcing that makes seed 1's first forced parameter infinite at the third step."""

    calls = 0

    def apply(self, params, before, generators, alive):
        finite = super().apply(params, before, generators, alive)
        PoisonSeedOne.calls += 1
        if PoisonSeedOne.calls == 3:
            params[next(iter(self.parameters))][1] = math.inf
        return finite & torch.isfinite(params[next(iter(self.parameters))]).flatten(1).all(1)


def test_a_seed_whose_forcing_diverges_leaves_its_siblings_alone():
    PoisonSeedOne.calls = 0
    poisoned = forced_trainer([0, 1, 2], forcing_cls=PoisonSeedOne)
    poisoned.train(2)
    at_two = {k: v[1].clone() for k, v in poisoned.stacked_parameters.items()}
    poisoned.train(5)
    clean = forced_trainer([0, 1, 2]).train(5)
    assert poisoned.diverged_at == [None, 2, None]
    assert poisoned.losses[1, 3:].isnan().all() and not poisoned.losses[[0, 2]].isnan().any()
    for name, value in poisoned.stacked_parameters.items():
        assert torch.equal(value[1], at_two[name])  # frozen at its values before the step
        assert torch.equal(value[[0, 2]], clean.stacked_parameters[name][[0, 2]])


def test_a_diverged_seed_is_not_forced_and_its_siblings_continue():
    trainer = forced_trainer([0, 1, 2])
    clean = forced_trainer([0, 1, 2]).train(4)
    trainer.train(1)
    with torch.no_grad():
        trainer.stacked_parameters["readout.weight"][2] = math.nan
    trainer.train(4)
    assert trainer.diverged_at == [None, None, 1]
    for name, value in trainer.stacked_parameters.items():
        torch.testing.assert_close(value[:2], clean.stacked_parameters[name][:2], rtol=0,
                                   atol=1e-12)


def test_forcing_is_validated():
    for bad in ({"alpha": 0.0}, {"alpha": 2.5}, {"scale": -1.0}, {"scale": math.inf}):
        with pytest.raises(ValueError, match="forcing"):
            StableForcing(**{"alpha": 1.5, "scale": 1.0, "parameters": {"x": slice(None)},
                             **bad})
    task, factory = small_problem()
    with pytest.raises(ValueError, match="does not train"):
        EnsembleTrainer(factory, [0], task,
                        forcing=StableForcing(1.5, 1.0, {"cell.nothing": slice(None)}))


# --------------------------------------------------------------------------- experiments

TINY = {"seeds": 2, "seq_len": 12, "lags": [2, 4], "coefficients": [1.0, 0.5], "input_size": 3,
        "hidden_size": 4, "steps": 2, "checkpoints": [0, 2], "batch_size": 4, "probe_batch": 2,
        "rate_lags": [1, 2, 4, 8], "log_every": 1, "dtype": "float64"}


def rows_by(rows, **match):
    return [r for r in rows if all(str(r[k]) == str(v) for k, v in match.items())]


def test_learnability_tiny_run_writes_the_expected_rows(tmp_path):
    settings = {**TINY, "cells": ["leaky", "multi_gate"], "noise_alphas": [2, 1.5],
                "gate_spreads": [0, 1], "extra_quantities": ["gates"]}
    result = gs.run_experiment("learnability", settings, out=tmp_path / "l", quiet=True)
    groups = ["multilag_seq__leaky__adamw", "multilag_seq__multi_gate__adamw",
              "multilag_seq__multi_gate.spread1__adamw", "multilag_seq.alpha1.5__leaky__adamw",
              "multilag_seq.alpha1.5__multi_gate__adamw",
              "multilag_seq.alpha1.5__multi_gate.spread1__adamw"]
    assert result.ran == groups
    rows = read_rows(tmp_path / "l" / "results.csv")
    for key in groups:
        task, cell, optimizer = key.split("__")
        mine = rows_by(rows, task=task, cell=cell, optimizer=optimizer)
        for seed in (0, 1):
            for step in (0, 2):
                at = rows_by(mine, seed=seed, step=step)
                assert sorted(int(r["lag"]) for r in rows_by(at, metric="envelope")) == \
                    [1, 2, 4, 8]
                assert sorted(int(r["neuron"]) for r in rows_by(at, metric="time_scales")) == \
                    [0, 1, 2, 3]
                assert len(rows_by(at, metric="probe_loss")) == 1
                assert len(rows_by(at, metric="retention_per_neuron")) == 4  # the extra
            assert [int(r["step"]) for r in rows_by(mine, seed=seed, metric="loss")] == [0, 1]
    # the initial time scales: τ = -1/log(0.95) for equal gates, spread for spread1
    tau = -1 / math.log(0.95)
    start = [float(r["value"]) for r in rows_by(rows, cell="multi_gate", step=0,
                                                metric="time_scales")]
    assert start == pytest.approx([tau] * len(start), rel=1e-12)
    spread = [float(r["value"]) for r in rows_by(rows, cell="multi_gate.spread1", step=0,
                                                 seed=0, task="multilag_seq",
                                                 metric="time_scales")]
    expected = (-1 / torch.log(1 - torch.sigmoid(gate_logits(0.05, 1.0, 4)))).tolist()
    assert sorted(spread) == pytest.approx(sorted(expected), rel=1e-12)


def test_timescales_tiny_run_has_forced_and_unforced_arms(tmp_path):
    result = gs.run_experiment("timescales", TINY, out=tmp_path / "t", quiet=True)
    assert result.ran == [f"multilag_seq__{c}__adamw{f}" for c in
                          ("leaky", "scalar_gate", "multi_gate") for f in ("", "+forcing")]
    rows = read_rows(tmp_path / "t" / "results.csv")
    spectrum = {m.name for m in get_quantity("timescale_spectrum").metrics}
    assert {r["metric"] for r in rows} == {"loss", "probe_loss", "envelope", "time_scales",
                                           *spectrum}
    for cell in ("leaky", "scalar_gate", "multi_gate"):
        def ends(optimizer, cell=cell):
            return [float(r["value"]) for r in rows_by(rows, cell=cell, optimizer=optimizer,
                                                       step=2, metric="envelope")]
        assert len(ends("adamw")) == 8 and ends("adamw") != ends("adamw+forcing")


def test_bad_followup_settings_are_refused():
    model = get_experiment("learnability").settings_model
    bad = {
        "coefficients": {"coefficients": [1.0]},
        "lags": {"lags": [4, 200]},
        "noise_alphas": {"noise_alphas": [1.0]},
        "initial_gate": {"initial_gate": 1.0},
        "forcing_alpha": {"forcing_alpha": 2.5},
        "clip_norm": {"clip_norm": 0},
        "bias": {"bias": False},
        "gate_spreads": {"gate_spreads": [0.1, 0.1000000001]},
        "cells": {"cells": ["plain"]},
        "tasks": {"tasks": ["adding"]},
    }
    for key, settings in bad.items():
        with pytest.raises(SettingsError, match=key):
            build_settings(model, settings)


def test_paper_presets_are_the_protocol():
    for name, preset in (("learnability", LEARNABILITY_PAPER), ("timescales", TIMESCALES_PAPER)):
        experiment = get_experiment(name)
        settings = build_settings(experiment.settings_model, preset)
        assert (settings.seq_len, settings.hidden_size, settings.batch_size) == (1024, 128, 512)
        assert settings.lags == (32, 64, 128, 192, 256) and settings.noise_std == 0.3
        assert settings.coefficients == (0.6, 0.5, 0.4, 0.32, 0.26)
        assert (settings.lr, settings.weight_decay, settings.clip_norm) == (1e-3, 1e-4, 1.0)
        assert settings.optimizers == ("adamw",) and settings.initial_gate == 0.05
        assert min(settings.rate_lags) == 4 and max(settings.rate_lags) == 256
        trainer = settings.trainer(Group("multilag_seq", "multi_gate", "adamw"))
        assert trainer.optimizer.defaults["weight_decay"] == 1e-4 and trainer.clip_norm == 1.0


def test_the_documented_paper_command_is_the_preset():
    """docs/experiments.md#learnability's ``--set`` list equals ``learnability.PAPER``."""
    from pathlib import Path

    from gatescope.experiments import parse_assignments

    text = (Path(__file__).parents[1] / "docs" / "experiments.md").read_text()
    block = text.split("## learnability", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    command = block.split("learnability-paper", 1)[1].replace("\\\n", " ")
    words = command.split()
    values = parse_assignments(words[words.index("--set") + 1:])
    assert values.pop("device") == "cuda"
    model = get_experiment("learnability").settings_model
    assert build_settings(model, values) == build_settings(model, LEARNABILITY_PAPER)


def test_reproduce_followup_runs_the_experiment_and_judges_it(tmp_path, monkeypatch):
    from gatescope.reproduce import FOLLOWUP_PRESETS, reproduce_followup

    monkeypatch.setitem(FOLLOWUP_PRESETS["anticollapse"], "quick", TINY)
    report = reproduce_followup("anticollapse", out=tmp_path / "a", quiet=True)
    text = report.read_text()
    for claim in ("A1", "A2", "A3"):
        assert f"| {claim} |" in text
    assert (tmp_path / "a" / "verdicts.json").exists()
    with pytest.raises(ValueError, match="paper must be one of"):
        reproduce_followup("seed", out=tmp_path / "b")
    with pytest.raises(ValueError, match="preset must be one of"):
        reproduce_followup("learnability", "huge", out=tmp_path / "b")
