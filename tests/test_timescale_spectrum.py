"""Fitted time scales, the CCDF tail exponent, the envelope models and the phase
(docs/timescales.md), in float64 against closed forms and independent references."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import random_inputs
from torch.distributions import Gamma

import gatescope as gs
from gatescope.measures import (
    PHASES,
    EnvelopeSelection,
    TailExponent,
    effective_learning_rates,
    fitted_time_scales,
    phase,
    power_law_window,
    select_envelope_model,
    tail_exponent,
    time_scales,
)

#: 40 log-spaced integer lags over three decades.
LAGS = sorted({int(round(x)) for x in np.geomspace(1, 1000, 40)})
LAG = torch.tensor(LAGS, dtype=torch.float64)


def rates_of(r: list[float], lags, B: int = 2, T: int = 12) -> torch.Tensor:
    """``μ⁰ = r_q^ℓ`` laid out like :func:`effective_learning_rates`: ``(B, T+1, L, n)``, NaN
    where ``ℓ > t``."""
    lag = torch.tensor(lags, dtype=torch.float64)
    r = torch.tensor(r, dtype=torch.float64)
    mu = (r ** lag[:, None]).expand(B, T + 1, len(lags), r.numel()).clone()
    too_long = torch.arange(T + 1)[:, None] < lag[None]  # (T+1, L)
    return mu.masked_fill(too_long[None, :, :, None], math.nan)


def inverse_gamma(a: float, b: float, n: int, seed: int) -> torch.Tensor:
    """``n`` time scales with ``1/τ ~ Gamma(shape a, rate b)`` (torch's sampler, seeded)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        rate = Gamma(torch.tensor(a, dtype=torch.float64),
                     torch.tensor(b, dtype=torch.float64)).sample((n,))
    return 1 / rate


def mixture_envelope(tau: torch.Tensor, lag: torch.Tensor = LAG) -> torch.Tensor:
    """``f(ℓ) = mean_q e^{-ℓ/τ_q}``, the envelope of neurons with exponential rates."""
    return torch.exp(-lag[:, None] / tau[None]).mean(-1)


# ---------------------------------------------------------------- fitted time scales


@pytest.mark.parametrize("s", [0.05, 0.3, 0.8])
def test_constant_retention_gives_tau_minus_one_over_log_one_minus_s(s):
    lags = [0, 1, 2, 3, 5, 8, 12]
    fit = fitted_time_scales(rates_of([1 - s] * 3, lags), lags)
    exact = -1 / math.log(1 - s)
    torch.testing.assert_close(fit.tau, torch.full((3,), exact, dtype=torch.float64),
                               rtol=1e-10, atol=0)
    torch.testing.assert_close(fit.intercept, torch.zeros(3, dtype=torch.float64),
                               rtol=0, atol=1e-12)
    assert (fit.r2 > 1 - 1e-12).all() and (fit.lags_fitted == len(lags)).all()


@pytest.mark.parametrize("alpha", [0.05, 0.3, 0.8])
def test_leaky_cell_rates_give_the_exact_time_scale(alpha):
    torch.manual_seed(0)
    cell = gs.make_cell("leaky", 3, 4, alpha=alpha, dtype=torch.float64)
    with torch.no_grad():
        traj = cell.unroll(random_inputs(2, 10, 3, 0))
    lags = [1, 2, 4, 7, 10]
    fit = fitted_time_scales(effective_learning_rates(cell, traj, lags, order=0), lags)
    exact = -1 / math.log(1 - alpha)
    torch.testing.assert_close(fit.tau, torch.full((4,), exact, dtype=torch.float64),
                               rtol=1e-10, atol=0)
    torch.testing.assert_close(fit.tau, time_scales(cell, traj), rtol=1e-10, atol=0)


def test_each_neuron_gets_its_own_time_scale_including_the_limits():
    r = torch.tensor([0.5, 0.9, 0.99, 1.0, 0.0], dtype=torch.float64)
    lags = [0, 1, 3, 6, 10]
    fit = fitted_time_scales(rates_of(r.tolist(), lags), lags)
    torch.testing.assert_close(fit.tau[:3], -1 / r[:3].log(), rtol=1e-10, atol=0)
    assert fit.tau[3] == math.inf  # retention 1: the rates do not decay
    assert fit.tau[4] == 0  # retention 0 (a plain cell's μ⁰): nothing left beyond lag 0


def test_the_fit_averages_the_log_not_the_rate():
    lags = [1, 2, 4, 8]
    slow = rates_of([0.9], lags, B=1)
    fast = rates_of([0.2], lags, B=1)
    fit = fitted_time_scales(torch.cat([slow, fast]), lags)
    geometric = -2 / (math.log(0.9) + math.log(0.2))  # E log μ = ℓ (log 0.9 + log 0.2) / 2
    assert math.isclose(fit.tau.item(), geometric, rel_tol=1e-10)
    log_of_mean = fitted_time_scales((slow + fast) / 2, lags).tau.item()
    assert not math.isclose(log_of_mean, geometric, rel_tol=1e-2)


def test_a_vanished_lag_is_left_out_of_that_neurons_fit():
    lags = [0, 1, 2, 3, 4]
    mu = rates_of([0.5, 0.5], lags)
    mu[0, 6, 4, 1] = 0.0  # one exact zero at lag 4 for neuron 1 (e.g. an underflow)
    fit = fitted_time_scales(mu, lags)
    torch.testing.assert_close(fit.tau, torch.full((2,), 1 / math.log(2), dtype=torch.float64),
                               rtol=1e-10, atol=0)
    assert fit.lags_fitted.tolist() == [5, 4]


# ---------------------------------------------------------------- the gamma oracle


@pytest.mark.parametrize("a", [0.6, 1.5])
def test_gamma_mixture_envelope_is_one_plus_lag_over_b_to_the_minus_a(a):
    b, n = 2.0, 200_000
    kernels = torch.exp(-LAG[:, None] / inverse_gamma(a, b, n, seed=1)[None])  # (L, n)
    error = kernels.std(-1) / math.sqrt(n)
    closed = (1 + LAG / b) ** -a
    assert ((kernels.mean(-1) - closed).abs() < 5 * error).all()
    # the same check against a wrong exponent fails: it can tell a from a ± 0.05
    assert not ((kernels.mean(-1) - (1 + LAG / b) ** -(a + 0.05)).abs() < 5 * error).all()


@pytest.mark.parametrize("a", [0.6, 1.5])
def test_model_selection_picks_a_power_law_for_the_mixture_and_exponential_for_one_tau(a):
    closed = select_envelope_model(LAGS, (1 + LAG) ** -a)
    sampled = select_envelope_model(LAGS, mixture_envelope(inverse_gamma(a, 1.0, 4096, 2)))
    single = select_envelope_model(LAGS, mixture_envelope(torch.full((64,), 30.0)))
    assert closed.chosen in ("power law", "tempered power law")
    assert sampled.chosen in ("power law", "tempered power law")
    assert single.chosen == "exponential"
    assert math.isclose(single.models["exponential"].parameters["b"].item(), -1 / 30,
                        rel_tol=1e-10)


def inverse_gamma_window_slope(a: float, quantiles: tuple[float, float]) -> float:
    """The large-``n`` limit of :func:`tail_exponent`'s ``β`` for ``1/τ ~ Gamma(a, 1)``: the
    least-squares slope of ``-log P(τ > x)`` on ``log x`` over the window's levels ``p``, with
    ``x(p) = 1/r`` solving ``P(rate < r) = 1 - p`` (bisection on ``log r``, torch's
    regularised incomplete gamma)."""
    p = torch.linspace(*quantiles, 20001, dtype=torch.float64)
    lo, hi = torch.full_like(p, -80.0), torch.full_like(p, 10.0)
    for _ in range(100):
        mid = (lo + hi) / 2
        below = torch.special.gammainc(torch.tensor(a, dtype=torch.float64), mid.exp()) < 1 - p
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    x, y = -(lo + hi) / 2, torch.log1p(-p)  # log τ = -log r
    xc = x - x.mean()
    return -((xc * (y - y.mean())).sum() / (xc**2).sum()).item()


@pytest.mark.parametrize("a, default_window", [(0.6, 0.594), (1.0, 0.958), (1.5, 1.358),
                                               (2.5, 2.022)])
def test_inverse_gamma_ccdf_reaches_exponent_a_only_deep_in_the_tail(a, default_window):
    # the table of docs/timescales.md#bias-on-a-finite-window, and its limit
    assert abs(inverse_gamma_window_slope(a, (0.75, 0.995)) - default_window) < 1.5e-3
    assert abs(inverse_gamma_window_slope(a, (0.999, 0.99999)) - a) < 0.02 * a


@pytest.mark.parametrize("a", [0.6, 1.5])
def test_tail_exponent_of_an_inverse_gamma_spectrum_brackets_a(a):
    # the CCDF of τ is ~ x^{-a} only far in the tail, so the window sits there; the limit of β
    # on it is 0.600 (a = 0.6) and 1.455 (a = 1.5), and the 90% interval held a in 5 of 6 seeds
    tail = tail_exponent(inverse_gamma(a, 1.0, 4096, seed=0), quantiles=(0.95, 0.999),
                         generator=torch.Generator().manual_seed(0))
    assert tail.low < a < tail.high
    assert tail.high < 1 if a < 1 else tail.low > 1  # and it tells 0.6 from 1.5
    assert tail.prob_below_one == (1.0 if a < 1 else 0.0)
    assert tail.r2 > 0.95 and tail.n_tail == 200


@pytest.mark.parametrize("a", [0.6, 1.5])
def test_tail_exponent_of_an_exact_pareto_spectrum_on_the_default_window(a):
    u = torch.rand(4096, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    tail = tail_exponent(u ** (-1 / a))  # P(τ > x) = x^{-a} for x ≥ 1
    assert tail.low < a < tail.high and abs(tail.beta - a) < 0.1 * a
    assert tail.r2 > 0.99


def test_tail_point_estimate_matches_numpy_on_the_plotting_positions():
    gen = torch.Generator().manual_seed(5)
    tau = torch.rand(500, generator=gen, dtype=torch.float64) ** -1.2
    tau[:3] = math.nan  # dropped before ranking
    tau[3:6] = math.inf  # rank at the top, not fitted
    tail = tail_exponent(tau, quantiles=(0.6, 0.999), resamples=10)
    kept = np.sort(tau.numpy()[3:])
    n = kept.size
    level = np.arange(1, n + 1) / (n + 1)
    window = (level >= 0.6) & (level <= 0.999) & np.isfinite(kept)
    slope, intercept = np.polyfit(np.log(kept[window]), np.log(1 - level[window]), 1)
    assert math.isclose(tail.beta, -slope, rel_tol=1e-10)
    assert math.isclose(tail.intercept, intercept, rel_tol=1e-10)
    assert tail.n_tail == window.sum()


def test_tail_bootstrap_is_reproducible_and_depends_on_the_generator():
    tau = inverse_gamma(1.0, 1.0, 512, seed=6)
    first, again = (tail_exponent(tau, generator=torch.Generator().manual_seed(1))
                    for _ in range(2))
    other = tail_exponent(tau, generator=torch.Generator().manual_seed(2))
    assert first == again and first.low != other.low
    assert first.beta == other.beta  # the point estimate does not resample


# ---------------------------------------------------------------- envelope models


def _family(name: str, lag: torch.Tensor) -> torch.Tensor:
    """``log f`` of one generating model on ``lag``."""
    return {"exponential": 0.3 - lag / 40,
            "power law": -0.2 - 0.8 * lag.log(),
            "tempered power law": 0.1 - 0.7 * lag.log() - lag / 200}[name]


@pytest.mark.parametrize("name", ["exponential", "power law", "tempered power law"])
def test_aic_recovers_the_generating_model_of_a_noiseless_envelope(name):
    selection = select_envelope_model(LAGS, _family(name, LAG).exp())
    assert selection.chosen == name
    expected = {"exponential": {"a": 0.3, "b": -1 / 40}, "power law": {"c": -0.2, "d": -0.8},
                "tempered power law": {"a": 0.1, "beta": 0.7, "tau_max": 200.0}}[name]
    for key, value in expected.items():
        assert math.isclose(selection.models[name].parameters[key].item(), value,
                            rel_tol=1e-8, abs_tol=1e-10)
    weights = torch.stack([m.weight for m in selection.models.values()])
    assert math.isclose(weights.sum().item(), 1.0) and weights.argmax().item() == \
        selection.best.item()


@pytest.mark.parametrize("name", ["exponential", "power law", "tempered power law"])
def test_aic_recovers_the_generating_model_of_slightly_noisy_envelopes(name):
    noise = 0.01 * torch.randn(64, len(LAGS), generator=torch.Generator().manual_seed(7),
                               dtype=torch.float64)
    selection = select_envelope_model(LAGS, (_family(name, LAG) + noise).exp())
    chosen = np.array(selection.chosen)
    assert (chosen == name).mean() >= 0.75  # the tempered law nests the others: AIC's ~16%
    rival = {"exponential": "power law", "power law": "exponential"}.get(name)
    assert rival is None or not (chosen == rival).any()
    if name == "tempered power law":
        assert (chosen == name).all()


def test_aic_matches_a_numpy_least_squares_reference():
    noise = 0.05 * torch.randn(len(LAGS), generator=torch.Generator().manual_seed(8),
                               dtype=torch.float64)
    log_f = _family("tempered power law", LAG) + noise
    selection = select_envelope_model(LAGS, log_f.exp())
    lag, y = LAG.numpy(), log_f.numpy()
    designs = {"exponential": [np.ones_like(lag), lag], "power law": [np.ones_like(lag),
               np.log(lag)], "tempered power law": [np.ones_like(lag), np.log(lag), lag]}
    aic = []
    for name, columns in designs.items():
        X = np.stack(columns, -1)
        coef, rss, *_ = np.linalg.lstsq(X, y, rcond=None)
        n, k = len(y), X.shape[1]
        aic.append(n * np.log(rss[0] / n) + 2 * k)
        assert math.isclose(selection.models[name].rss.item(), rss[0], rel_tol=1e-9)
        assert math.isclose(selection.models[name].aic.item(), aic[-1], rel_tol=1e-9)
    weights = np.exp(-(np.array(aic) - min(aic)) / 2)
    np.testing.assert_allclose([m.weight.item() for m in selection.models.values()],
                               weights / weights.sum(), rtol=1e-9)


def test_envelopes_are_fitted_row_by_row_without_their_bad_entries():
    f = torch.stack([_family(name, LAG).exp() for name in
                     ("exponential", "power law", "tempered power law")])
    spoiled = f.clone()
    spoiled[0, 3], spoiled[1, 5], spoiled[2, 7] = math.nan, 0.0, -1.0
    batch = select_envelope_model([0, *LAGS], torch.cat([torch.ones(3, 1), spoiled], -1))
    assert batch.chosen == ["exponential", "power law", "tempered power law"]
    assert batch.fitted.sum(-1).tolist() == [len(LAGS) - 1] * 3  # lag 0 and one bad entry
    for row, bad in enumerate((3, 5, 7)):
        keep = [i for i in range(len(LAGS)) if i != bad]
        alone = select_envelope_model([LAGS[i] for i in keep], f[row, keep])
        for name, model in alone.models.items():
            torch.testing.assert_close(batch.models[name].aic[row], model.aic)


# ---------------------------------------------------------------- the phase


def _phase_of(tau: torch.Tensor) -> str:
    tail = tail_exponent(tau, quantiles=(0.95, 0.999), generator=torch.Generator().manual_seed(0))
    return phase(select_envelope_model(LAGS, mixture_envelope(tau)), tail)


@pytest.mark.parametrize("spectrum, expected", [
    ("single", "collapsed"), ("gamma 0.6", "broad"), ("gamma 2.5", "concentrated"),
    ("gamma 1", "boundary"), ("log-uniform", "unresolved")])
def test_phase_of_synthetic_spectra(spectrum, expected):
    u = torch.rand(4096, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    tau = {"single": torch.full((4096,), 20.0),
           "gamma 0.6": inverse_gamma(0.6, 1.0, 4096, 10),
           "gamma 2.5": inverse_gamma(2.5, 1.0, 4096, 11),
           "gamma 1": inverse_gamma(1.0, 1.0, 4096, 12),
           "log-uniform": 10 ** (3 * u)}[spectrum]  # P(τ > x) = 1 - log10(x)/3: no power law
    assert _phase_of(tau) == expected and expected in PHASES


def _tail(low: float, high: float, r2: float = 0.98) -> TailExponent:
    return TailExponent((low + high) / 2, low, high, 0.5, r2, 100, 0.0)


def test_each_phase_rule_can_fail():
    power = select_envelope_model(LAGS, LAG ** -0.8)
    exponential = select_envelope_model(LAGS, (-LAG / 20).exp())
    broad = _tail(0.4, 0.8)
    assert phase(exponential, broad) == "collapsed" and phase(power, broad) == "broad"
    assert phase(power, _tail(0.4, 0.8, r2=0.85)) == "unresolved"
    assert phase(power, _tail(0.4, 0.8, r2=math.nan)) == "unresolved"
    assert phase(power, _tail(0.4, 0.8, r2=0.85), min_r2=0.8) == "broad"
    assert phase(power, _tail(1.2, 1.8)) == "concentrated"
    assert phase(power, _tail(0.8, 1.2)) == "boundary"
    short = select_envelope_model(LAGS[:8], LAG[:8] ** -0.8)  # lags 1..6: under a decade
    assert phase(short, broad) == "collapsed" and phase(short, broad, min_decades=0.5) == "broad"
    assert phase(power, broad, min_lags=len(LAGS) + 1) == "collapsed"


def test_power_law_window_of_a_tempered_envelope_ends_at_beta_tau_max():
    f = torch.stack([(-0.7 * LAG.log() - LAG / tau_max).exp() for tau_max in (200.0, 5.0)])
    window = power_law_window(select_envelope_model(LAGS, f))
    inside = LAG[LAG <= 0.7 * 200]
    assert window.start.tolist() == [1.0, 1.0]
    assert window.stop[0] == inside.max() and window.count[0] == inside.numel()
    assert window.sustained.tolist() == [True, False]  # 0.7 · 5 = 3.5: lags 1..3 only


# ---------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("call, name", [
    (lambda: fitted_time_scales(torch.ones(2, 3, 4), [1, 2, 3, 4]), "mu"),
    (lambda: fitted_time_scales(torch.ones(2, 3, 4, 5), [1, 2, 3]), "mu"),
    (lambda: fitted_time_scales(torch.ones(2, 3, 2, 5), [2, 2]), "lags"),
    (lambda: fitted_time_scales(torch.ones(2, 3, 2, 5), [1, -2]), "lags"),
    (lambda: tail_exponent(torch.ones(3, 4)), "tau"),
    (lambda: tail_exponent(torch.tensor([1.0, -2.0])), "tau"),
    (lambda: tail_exponent(torch.ones(9), quantiles=(0.9, 0.5)), "quantiles"),
    (lambda: tail_exponent(torch.ones(9), resamples=0), "resamples"),
    (lambda: tail_exponent(torch.ones(9), generator=0), "generator"),
    (lambda: tail_exponent(torch.ones(9), level=1.5), "level"),
    (lambda: select_envelope_model([1, 2, 3], torch.ones(4)), "f"),
    (lambda: select_envelope_model([1, 2, 3], torch.ones(3), resolution=0.0), "resolution"),
    (lambda: phase(select_envelope_model(LAGS, torch.ones(2, len(LAGS))), _tail(1, 2)),
     "selection"),
    (lambda: phase(select_envelope_model(LAGS, LAG ** -1.0), (1.0, 2.0)), "tail"),
    (lambda: phase(select_envelope_model(LAGS, LAG ** -1.0), _tail(1, 2), min_r2=2), "min_r2"),
    (lambda: power_law_window(select_envelope_model(LAGS, LAG ** -1.0), min_decades=-1),
     "min_decades"),
    (lambda: power_law_window(select_envelope_model(LAGS, LAG ** -1.0), min_lags=1),
     "min_lags"),
    (lambda: power_law_window("not a selection"), "selection"),
])
def test_bad_inputs_raise_naming_the_argument(call, name):
    with pytest.raises(ValueError, match=rf"^{re.escape(name)} "):
        call()


def test_docs_example_runs():
    page = Path(__file__).resolve().parents[1] / "docs" / "timescales.md"
    blocks = re.findall(r"^```python\n(.*?)^```", page.read_text(), re.M | re.S)
    assert blocks
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(page), "exec"), namespace)
    assert isinstance(namespace["selection"], EnvelopeSelection)
