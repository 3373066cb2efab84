"""The numbers the experiments record: every row of a tiny ``profiles`` and ``anisotropy``
run's ``results.csv`` equals the public measure (``gs.profile_fit``, ``gs.sensitivities``,
``gs.effective_learning_rates``, ``gs.propagation_anisotropy``, ``gs.transport_alignment``,
``gs.update_anisotropy``, ``gs.step_size_dispersion`` ...) called directly on the model the
run saved in its checkpoint at that step, on the seed's own probe batch.

This guards the wiring between a checkpoint and its rows, not the measures' maths (their own
tests do that): the right seed's model and data stream, the right checkpoint, the settings
(lags, rank, trim, learning rate, ``alpha``) reaching the measures, each array entry landing
in the row of its lag/predictor/time, the reductions over examples and samples, which
quantities are skipped, and the ``loss`` rows. Every metric of the run is checked: a new,
renamed or missing metric fails :func:`test_every_recorded_metric_is_checked`.
"""

from __future__ import annotations

import math
from functools import cached_property

import numpy as np
import pytest
import torch

import gatescope as gs
from gatescope.experiments import get_experiment, read_rows, run_experiment
from gatescope.experiments.anisotropy import AnisotropySettings
from gatescope.experiments.profiles import ProfilesSettings
from gatescope.measures.rates import neuron_retention, permuted_neuron_cv
from gatescope.training import stream_generator
from gatescope.training.checkpoints import checkpoint_path, load_checkpoint

PREDICTORS = ("update", "retention")

#: ``{experiment: {metric: (axes, reference)}}``: every metric each experiment writes, the
#: axes of its array (each axis's coordinates fill one column of the row, see ``AXES``) and
#: the reference value computed from a :class:`Seed`; ``None``: no rows for that seed.
METRICS = {
    "profiles": {
        "sensitivity_profile": (("profile_lag",), lambda s: s.fit.sensitivity),
        "predicted_profile": (("predictor", "profile_lag"), lambda s: s.per_predictor(
            lambda p: p.fitted)),
        "zeroth_order_profile": (("predictor", "profile_lag"), lambda s: s.per_predictor(
            lambda p: p.zeroth_order)),
        "fit_slope": (("predictor",), lambda s: s.per_predictor(lambda p: p.fit.slope)),
        "fit_r2": (("predictor",), lambda s: s.per_predictor(lambda p: p.fit.r2)),
        "envelope": (("rate_lag",), lambda s: np.nanmean(np.abs(s.rates(1)), axis=(0, 1, 3))),
        "rate_cv_order1": (("rate_lag",), lambda s: neuron_cv(s.rates(1))),
        "rate_cv_order0": (("rate_lag",), lambda s: s.with_retention(
            lambda: neuron_cv(s.rates(0)))),
        # C3's null: per-neuron retention only, permutations seeded with the context's
        # sampling seed (0 in profiles)
        "rate_cv_order0_null": (("rate_lag",), lambda s: None
                                if s.traj.retention.shape[-1] == 1 else permuted_neuron_cv(
                                    neuron_retention(s.cell, s.traj), list(s.settings.rate_lags),
                                    torch.Generator().manual_seed(0)).numpy()),
        "schedule_multiplier": (("schedule_lag", "time"), lambda s: s.schedule),
        "retention_mean": (("time",), lambda s: s.traj.retention.mean((0, 2))),
    },
    "anisotropy": {
        "jacobian_ai": (("lag",), lambda s: np.nanmedian(s.propagation.ai, axis=-1)),
        "jacobian_ce": (("lag",), lambda s: np.nanmedian(s.propagation.ce, axis=-1)),
        "alignment": (("lag",), lambda s: np.nanmean(s.alignment.alignment, axis=0)),
        "alignment_baseline": ((), lambda s: s.alignment.baseline),
        "gradcov_ai": ((), lambda s: s.gradcov.ai),
        "gradcov_ce": ((), lambda s: s.gradcov.ce),
        "step_cv": ((), lambda s: s.if_stepped(lambda v: np.std(v) / np.mean(v))),
        "step_ai": ((), lambda s: s.if_stepped(lambda v: gs.step_size_dispersion(
            s.step_sizes, r=min(s.settings.rank, len(v))).ai)),
        "rate_cv_order0": (("rate_lag",), lambda s: s.with_retention(
            lambda: neuron_cv(s.rates(0)))),
    },
}

#: The results column each axis fills.
AXES = {"lag": "lag", "rate_lag": "lag", "schedule_lag": "lag", "profile_lag": "lag",
        "predictor": "predictor", "time": "time"}

PROFILES = ProfilesSettings(seeds=2, steps=4, checkpoints=(0, 4), seq_len=9, hidden_size=5,
                            probe_batch=3, batch_size=6, rate_lags=(1, 4),
                            schedule_lags=(1, 3), log_every=2, alpha=0.7, trim=0.05,
                            lr=0.05, dtype="float64")
ANISOTROPY = AnisotropySettings(design="paper", seeds=2, steps=3, checkpoints=(0, 3),
                                seq_len=9, hidden_size=5, tasks=("adding",), lags=(1, 4),
                                samples_per_lag=4, gradient_examples=6, probe_batch=3,
                                batch_size=6, rank=3, rate_lags=(2, 4), log_every=2,
                                dtype="float64")
SETTINGS = {"profiles": PROFILES, "anisotropy": ANISOTROPY}


def neuron_cv(mu) -> np.ndarray:
    """Across-neuron CV (population std / mean) of ``|μ|``, median over ``(b, t)``:
    ``(L,)``; ``(b, t)`` with ``ℓ > t`` (NaN) are left out."""
    a = np.abs(np.asarray(mu, dtype=float))
    with np.errstate(invalid="ignore", divide="ignore"):
        cv = a.std(-1) / a.mean(-1)  # (B, T+1, L)
    return np.nanmedian(cv.reshape(-1, cv.shape[-1]), axis=0)


class Seed:
    """One seed's model restored from the run's checkpoint at ``step``, with its probe
    batch drawn from the seed's own ``"probe"`` stream and every measure computed directly."""

    def __init__(self, experiment: str, group, step: int, index: int, trainer, out) -> None:
        self.settings = settings = SETTINGS[experiment]
        self.group, self.step, self.index = group, step, index
        self.seed = settings.seeds[index]
        load_checkpoint(checkpoint_path(out / "groups" / group.key / "work" / "checkpoints",
                                        step), trainer)
        assert trainer.steps_done == step
        self.trainer = trainer
        self.model = trainer.model(index)
        self.cell = self.model.cell
        self.task = settings.task(group.task)
        self.u, self.y = self.batch("probe", settings.probe_batch)

    def batch(self, stream: str, size: int):
        return self.task.sample(size, stream_generator(self.seed, stream),
                                dtype=torch.float64)[:2]

    @cached_property
    def traj(self):
        with torch.no_grad():
            return self.cell.unroll(self.u)

    @cached_property
    def J(self):
        return gs.jacobians(self.cell, self.traj)

    @cached_property
    def fit(self):
        return gs.profile_fit(self.traj, gs.sensitivities(self.J), self.settings.trim)

    def rates(self, order: int, lags=None) -> np.ndarray:
        """``(B, T+1, L, n)`` effective rates of ``order`` at the rate lags (or ``lags``)."""
        lags = self.settings.rate_lags if lags is None else lags
        return gs.effective_learning_rates(self.cell, self.traj, lags=list(lags),
                                           order=order).numpy()

    def per_predictor(self, get) -> np.ndarray:
        """``get(predictor fit)`` of each of :data:`PREDICTORS`, stacked."""
        return np.array([np.asarray(get(self.fit.predictors[p]), dtype=float)
                         for p in PREDICTORS])

    def with_retention(self, compute):
        """``compute()``, or ``None`` (no rows) for a cell without retention."""
        return compute() if bool(self.traj.retention.ne(0).any()) else None

    @property
    def schedule(self):
        """``η · mean_{b,q} μ⁰`` at the schedule lags, ``(L_s, T)`` over ``t = 1..T``."""
        mu0 = self.rates(0, self.settings.schedule_lags)
        return (self.settings.lr * mu0.mean(axis=(0, 3)))[1:].T

    @cached_property
    def propagation(self):
        s = self.settings
        res = gs.propagation_anisotropy(self.J, list(s.lags), s.samples_per_lag,
                                        torch.Generator().manual_seed(self.seed),
                                        min(s.rank, self.cell.hidden_size), s.ce_denominator)
        return res.stats

    @cached_property
    def alignment(self):
        """Alignment of ``δ_T``, each example's own loss gradient in its final state."""
        states = self.traj.states.detach()
        delta = []
        for b in range(states.shape[0]):
            h = states[b:b + 1].clone().requires_grad_()
            loss = self.model.loss_from_states(h, self.y[b:b + 1])
            delta.append(torch.autograd.grad(loss, h)[0][0, -1])
        T = self.u.shape[1]
        return gs.transport_alignment(self.J, torch.stack(delta),
                                      [T - lag for lag in self.settings.lags],
                                      r=min(self.settings.rank, self.cell.hidden_size))

    @cached_property
    def gradcov(self):
        G = gs.per_example_gradients(self.model, *self.batch("gradients",
                                                             self.settings.gradient_examples))
        return gs.update_anisotropy(G, min(self.settings.rank, *G.shape),
                                    self.settings.ce_denominator)

    @cached_property
    def step_sizes(self):
        """The seed's slice of the optimizer's per-parameter step sizes."""
        return {p: v[self.index] for p, v in
                gs.optimizer_step_sizes(self.trainer.optimizer).items()}

    def if_stepped(self, reduce):
        """``reduce`` of every step size the optimizer has (NaN: not stepped yet, left
        out); ``None`` (no rows) when it has none, e.g. Adam before its first step."""
        values = torch.cat([v.flatten() for v in self.step_sizes.values()])
        values = values[~values.isnan()].numpy()
        return reduce(values) if values.size else None


def coordinates(settings, axis: str) -> list:
    """The coordinates along ``axis`` under ``settings``."""
    T = settings.seq_len
    if axis == "profile_lag":
        return list(range(1, T))
    if axis == "time":
        return list(range(1, T + 1))
    if axis == "predictor":
        return list(PREDICTORS)
    return list(getattr(settings, {"lag": "lags", "rate_lag": "rate_lags",
                                   "schedule_lag": "schedule_lags"}[axis]))


def reference_rows(experiment: str, out) -> dict[tuple, float]:
    """``{(group key, seed, step, metric, column values...): value}`` of every row the run
    must have, from the checkpoints."""
    settings = SETTINGS[experiment]
    expected = {}
    for group in _groups(experiment):
        leaky = experiment == "profiles" and group.cell == "leaky"
        trainer = settings.trainer(group, {"alpha": settings.alpha} if leaky else None)
        for step in settings.checkpoint_steps():
            for index in range(len(settings.seeds)):
                s = Seed(experiment, group, step, index, trainer, out)
                for metric, (axes, reference) in METRICS[experiment].items():
                    value = reference(s)
                    if value is None:
                        continue
                    _add(expected, (group.key, s.seed, step, metric), settings, axes,
                         np.asarray(value, dtype=float),
                         omit_nan=gs.get_metric(metric).omit_undefined)
    return expected


def _groups(experiment: str):
    return get_experiment(experiment).groups(SETTINGS[experiment])


def _add(expected: dict, head: tuple, settings, axes: tuple[str, ...], array: np.ndarray,
         omit_nan: bool) -> None:
    """One entry per element of ``array``, keyed by its axes' columns and coordinates;
    ``omit_nan``: NaN entries (undefined by the metric's declaration, e.g. ``ℓ > t``) have
    no row."""
    assert array.ndim == len(axes), (head, array.shape, axes)
    coords = [coordinates(settings, a) for a in axes]
    for index in np.ndindex(*array.shape):
        if omit_nan and math.isnan(array[index]):
            continue
        columns = tuple(sorted((AXES[a], coords[i][j])
                               for i, (a, j) in enumerate(zip(axes, index, strict=True))))
        expected[(*head, columns)] = float(array[index])


def recorded_rows(rows: list[dict]) -> dict[tuple, float]:
    """The measured rows of ``results.csv`` (no ``loss``) keyed as :func:`reference_rows`."""
    out = {}
    for r in rows:
        if r["metric"] == "loss":
            continue
        columns = tuple(sorted((c, r[c]) for c in ("lag", "predictor", "time")
                               if r.get(c) not in (None, "")))
        key = (f"{r['task']}__{r['cell']}__{r['optimizer']}", r["seed"], r["step"],
               r["metric"], columns)
        assert key not in out, key
        out[key] = r["value"]
    return out


@pytest.fixture(scope="module", params=sorted(SETTINGS))
def run(request, tmp_path_factory):
    """``(experiment, out, rows)`` of a finished tiny run."""
    out = tmp_path_factory.mktemp(request.param)
    run_experiment(request.param, SETTINGS[request.param], out, quiet=True)
    return request.param, out, read_rows(out / "results.csv")


def test_every_recorded_metric_is_checked(run):
    experiment, _, rows = run
    assert {r["metric"] for r in rows} == {*METRICS[experiment], "loss"}


def test_rows_equal_the_public_measures_on_the_checkpointed_models(run):
    experiment, out, rows = run
    expected, got = reference_rows(experiment, out), recorded_rows(rows)
    assert sorted(got) == sorted(expected)
    for key, value in expected.items():
        if math.isnan(value):
            assert math.isnan(got[key]), key
        else:
            assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


def test_loss_rows_are_the_trainers_batch_losses(run):
    """``loss`` rows: each seed's training-batch loss before update ``s + 1`` at every
    logged step, as the trainer saved in its last checkpoint."""
    experiment, out, rows = run
    settings = SETTINGS[experiment]
    logged = sorted({*range(0, settings.steps, settings.log_every), settings.steps - 1})
    for group in _groups(experiment):
        path = checkpoint_path(out / "groups" / group.key / "work" / "checkpoints",
                               settings.steps)
        losses = torch.load(path, weights_only=True)["trainer"]["losses"]
        for index, seed in enumerate(settings.seeds):
            mine = {r["step"]: r["value"] for r in rows if r["metric"] == "loss"
                    and r["cell"] == group.cell and r["optimizer"] == group.optimizer
                    and r["seed"] == seed}
            assert sorted(mine) == logged
            assert mine == pytest.approx({s: losses[index, s].item() for s in logged},
                                         rel=1e-12)
