"""Detection, the learnability window and the scaling law against their closed forms, in
float64 (docs/learnability.md#regimes).

With ``|m(ℓ)| = f(ℓ)`` and constant ``σ, α`` the continuous threshold is
``N_c(ℓ) = (εσ/f(ℓ))^κ``; on a grid, ``N_required(ℓ) ≤ N_g`` for a grid point ``N_g`` exactly
when ``N_c(ℓ) < N_g``, so ``H_{N_g} = max{ℓ : N_c(ℓ) < N_g}`` up to the lag spacing:

* exponential ``f = e^{-ℓ/τ}``: ``H_N = (τ/κ)(log N - κ log(εσ))``, linear in ``log N``;
* power law ``f = ℓ^{-β}``: ``H_N = (N / (εσ)^κ)^{1/(βκ)}``.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from gatescope.measures import (
    detection_snr,
    kappa,
    learnability_window,
    learnability_window_from,
    mcculloch,
    psi_summary,
    required_samples,
    required_samples_continuous,
    scaling_law,
)
from gatescope.measures.stable import stable_samples

EPS, SIGMA = 0.1, 1.0


def slope(x: torch.Tensor, y: torch.Tensor) -> float:
    """Least-squares slope of ``y`` on ``x`` (numpy's polyfit, an independent reference)."""
    import numpy as np

    return float(np.polyfit(x.numpy(), y.numpy(), 1)[0])


def known_fit(alpha, scale, reliable=True):
    """A stand-in tail estimator returning the true ``α, σ`` for every row of ``x``."""
    def fit(x):
        shape = x.shape[:-1]
        return SimpleNamespace(alpha=torch.full(shape, alpha, dtype=torch.float64),
                               scale=torch.as_tensor(scale, dtype=torch.float64).expand(shape),
                               reliable=torch.full(shape, reliable))
    return fit


# ---------------------------------------------------------------------- detection


def test_kappa_closed_form():
    assert kappa(2.0) == 2.0 and kappa(1.5) == 3.0 and kappa(1.25) == 5.0
    a = torch.tensor([1.1, 1.5, 2.0, math.nan], dtype=torch.float64)
    torch.testing.assert_close(kappa(a)[:3], a[:3] / (a[:3] - 1))
    assert kappa(a)[3].isnan()


@pytest.mark.parametrize("alpha", [1.2, 1.5, 2.0])
def test_snr_grows_like_n_to_one_minus_one_over_alpha(alpha):
    mean = torch.tensor([0.5, -0.02, 3.0], dtype=torch.float64)
    scale = torch.tensor([1.0, 0.3, 2.0], dtype=torch.float64)
    n = torch.logspace(0, 6, 13, dtype=torch.float64)
    snr = detection_snr(mean, scale, alpha, n)
    assert snr.shape == (3, 13)
    torch.testing.assert_close(snr[:, 0], mean.abs() / scale)  # N = 1
    for row in snr:
        assert slope(n.log(), row.log()) == pytest.approx(1 - 1 / alpha, rel=1e-12)
    if alpha == 2.0:  # the classical |m| √N / σ
        torch.testing.assert_close(snr, mean.abs()[:, None] * n.sqrt() / scale[:, None])


def test_required_samples_is_the_first_grid_point_past_the_continuous_threshold():
    gen = torch.Generator().manual_seed(0)
    mean = torch.randn(2, 40, generator=gen, dtype=torch.float64) * 0.3
    mean[0, 0] = 0.0
    alpha = 1 + torch.rand(2, 40, generator=gen, dtype=torch.float64)
    grid = torch.logspace(0, 5, 26, dtype=torch.float64)
    n_req = required_samples(mean, SIGMA, alpha, grid, EPS)
    n_c = required_samples_continuous(mean, SIGMA, alpha, EPS)
    torch.testing.assert_close(n_c, (EPS * SIGMA / mean.abs()) ** (alpha / (alpha - 1)))
    # a written-out reference: the smallest grid point strictly above N_c, inf if none
    above = grid > n_c[..., None]
    ref = torch.where(above, grid, math.inf).amin(-1)
    assert torch.equal(n_req, ref)
    assert n_req[0, 0] == math.inf and (n_req == math.inf).any() and (n_req < math.inf).any()
    # the detection itself: SNR > ε at N_required, not at the grid point before it
    idx = torch.searchsorted(grid, n_req.clamp_max(grid[-1]))
    snr = detection_snr(mean, SIGMA, alpha, grid)
    found = n_req.isfinite()
    assert (snr.gather(-1, idx[..., None])[..., 0][found] > EPS).all()
    before = (idx - 1).clamp_min(0)
    assert (snr.gather(-1, before[..., None])[..., 0][found & (idx > 0)] <= EPS).all()


def test_unmeasured_lags_are_never_detected():
    mean = torch.tensor([0.5, math.nan, 0.5], dtype=torch.float64)
    scale = torch.tensor([1.0, 1.0, math.nan], dtype=torch.float64)
    n_req = required_samples(mean, scale, 2.0, torch.logspace(0, 4, 5), EPS)
    assert n_req[0] == 1.0 and n_req[1:].isinf().all()
    n_c = required_samples_continuous(mean, scale, torch.tensor([2.0, 2.0, math.nan]), EPS)
    assert n_c[0] == pytest.approx(0.04) and n_c[1:].isinf().all()
    window = learnability_window([1, 2, 3], n_req, torch.tensor([1e4]))
    assert window.tolist() == [1.0]


# ---------------------------------------------------------------------- regimes


@pytest.mark.parametrize("alpha", [1.5, 2.0])
def test_exponential_envelope_window_is_logarithmic_in_n(alpha):
    tau, step = 20.0, 0.01
    lags = torch.arange(1, 40001, dtype=torch.float64) * step  # 0.01 .. 400
    f = torch.exp(-lags / tau)
    k = kappa(alpha)
    # N from the window at lag 10 to the window at lag 300
    n = torch.exp(k * math.log(EPS * SIGMA) + k * torch.linspace(10, 300, 25,
                                                                  dtype=torch.float64) / tau)
    grid = n  # geometric: log N equally spaced
    n_req = required_samples(f, SIGMA, alpha, grid, EPS)
    H = learnability_window(lags, n_req, n)
    formula = (tau / k) * (n.log() - k * math.log(EPS * SIGMA))
    assert (H - formula).abs().max() <= step + 1e-9
    assert slope(n.log(), H) == pytest.approx(tau / k, rel=1e-3)
    torch.testing.assert_close(learnability_window(lags, n_req, n, contiguous=True), H)


@pytest.mark.parametrize("alpha", [1.5, 2.0])
@pytest.mark.parametrize("beta", [0.5, 1.5])
def test_power_law_envelope_window_is_a_power_of_n(alpha, beta):
    lags = torch.arange(1, 20001, dtype=torch.float64)
    f = lags ** -beta
    k = kappa(alpha)
    # N from the window at lag 50 to the window at lag 20000
    n = (torch.logspace(math.log10(50), math.log10(20000), 20, dtype=torch.float64)
         ** (beta * k) * (EPS * SIGMA) ** k)
    H = learnability_window(lags, required_samples(f, SIGMA, alpha, n, EPS), n)
    assert slope(n.log(), H.log()) == pytest.approx(1 / (beta * k), rel=0.02)
    # and the level: H_N within one lag of (N / (εσ)^κ)^{1/(βκ)}
    assert ((n / (EPS * SIGMA) ** k) ** (1 / (beta * k)) - H).abs().max() <= 1 + 1e-6


def test_heavier_tails_give_a_shorter_window():
    """At the same envelope, σ and N > 1 (claim L2's mechanism): κ grows as α falls."""
    lags = torch.arange(1, 2001, dtype=torch.float64)
    f = torch.exp(-lags / 30)
    n = torch.logspace(1, 8, 15, dtype=torch.float64)
    alpha = torch.tensor([2.0, 1.8, 1.5, 1.2], dtype=torch.float64)[:, None]
    windows = learnability_window(lags, required_samples(f, SIGMA, alpha, n, EPS), n)
    change = windows.diff(dim=0)  # (3, G): each α against the lighter one before it
    assert (change <= 0).all() and (change < 0).any(-1).all()


def test_the_paper_window_and_the_contiguous_window():
    lags = torch.tensor([1, 2, 3, 4, 5])
    n_req = torch.tensor([[10, 100, math.inf, 50, 1e6],     # lag 3 undetected
                          [1e6, 1e6, 1e6, 1e6, 1e6]], dtype=torch.float64)
    n = torch.tensor([1.0, 10, 50, 100, 1e6])
    assert learnability_window(lags, n_req, n).tolist() == [[0, 1, 4, 4, 5], [0, 0, 0, 0, 5]]
    assert learnability_window(lags, n_req, n, contiguous=True).tolist() == [
        [0, 1, 1, 2, 2], [0, 0, 0, 0, 5]]


# ---------------------------------------------------------------------- scaling law


@pytest.mark.parametrize("alpha", [1.3, 2.0])
def test_scaling_law_slope_is_one_for_the_law_and_not_for_another_exponent(alpha):
    lags = torch.arange(1, 65, dtype=torch.float64)
    f = 0.8 * lags ** -0.7 * torch.exp(-lags / 50)
    law = scaling_law(required_samples_continuous(2.5 * f, SIGMA, alpha, EPS), f, alpha)
    assert float(law.slope) == pytest.approx(1.0, abs=1e-10)
    assert float(law.intercept) == pytest.approx(kappa(alpha) * math.log(EPS * SIGMA / 2.5),
                                                 abs=1e-10)
    assert float(law.r2) == pytest.approx(1.0, abs=1e-10) and int(law.lags_used) == 64
    other = scaling_law(f ** (-1.5 * kappa(alpha)), f, alpha)  # N ∝ f^{-1.5 κ}
    assert float(other.slope) == pytest.approx(1.5, abs=1e-10)
    # on a grid (10 points a decade) log N is off by up to one step, log(10)/10
    grid = torch.logspace(0, 12, 121, dtype=torch.float64)
    quantised = scaling_law(required_samples(0.05 * f, SIGMA, alpha, grid, EPS), f, alpha)
    assert float(quantised.slope) != 1.0 and abs(float(quantised.slope) - 1) < 0.05


def test_scaling_law_drops_undetected_lags_and_fits_each_replicate():
    f = torch.tensor([[1.0, 0.5, 0.25, 0.1], [1.0, 0.5, 0.0, 0.1]], dtype=torch.float64)
    n_req = f ** -2.0
    n_req[0, 1] = math.inf
    law = scaling_law(n_req, f, 2.0)
    assert law.lags_used.tolist() == [3, 3]
    torch.testing.assert_close(law.slope, torch.ones(2, dtype=torch.float64))
    one = scaling_law(torch.tensor([4.0, math.inf]), torch.tensor([0.5, 0.1]), 2.0)
    assert int(one.lags_used) == 1 and one.slope.isnan() and one.r2.isnan()


# ---------------------------------------------------------------------- from ψ samples


def test_psi_summary_orients_each_lag_and_skips_nan():
    psi = torch.tensor([[-1.0, -3.0, math.nan], [2.0, 0.0, 4.0]], dtype=torch.float64)
    seen = []

    def fit(x):
        seen.append(x)
        return known_fit(1.7, 0.5)(x)

    s = psi_summary(psi, fit)
    assert s.mean.tolist() == [2.0, 2.0] and s.sign.tolist() == [-1.0, 1.0]
    assert s.samples.tolist() == [2, 3] and s.alpha.tolist() == [1.7, 1.7]
    assert (seen[0].nanmean(-1) > 0).all() and seen[0][0, 2].isnan()


def test_window_from_stable_samples_recovers_the_mean_and_window():
    """ψ = m(ℓ) + σ S_α with a stand-in fit returning the true α, σ. The mean of ``S``
    samples is stable with scale ``σ S^{1/α-1}``, beyond 8 such scales with probability
    ≈ 2 C_α 8^{-α} ≈ 0.4% per lag (C_α = Γ(α) sin(πα/2)/π); the window is then bracketed by
    the windows of ``|m| ∓ 8`` scales (it is non-decreasing in ``|m|``), a few lags wide."""
    alpha, sigma, eps, samples = 1.8, 0.5, 1.0, 400_000
    lags = torch.arange(1, 25, dtype=torch.float64)
    f = torch.exp(-lags / 24)
    sign = torch.where(lags % 3 == 0, -1.0, 1.0)  # some lags have a negative mean
    m = sigma * f * sign  # N_c = (εσ/|m|)^κ = e^{κℓ/24}: from 1.1 to 9.5
    gen = torch.Generator().manual_seed(1)
    psi = m[:, None] + stable_samples(alpha, (24, samples), gen, scale=sigma)
    psi[::5, -100:] = math.nan
    grid = torch.logspace(0, 1.2, 49, dtype=torch.float64)
    out = learnability_window_from(psi, lags, grid, known_fit(alpha, sigma), eps, envelope=f)
    assert out.summary.sign.tolist() == sign.tolist()
    assert out.summary.samples.tolist() == [samples - 100 * (i % 5 == 0) for i in range(24)]
    tol = 8 * sigma * samples ** (1 / alpha - 1)
    assert (out.summary.mean - m.abs()).abs().max() < tol

    def window(mean):
        return learnability_window(lags, required_samples(mean, sigma, alpha, grid, eps), grid)

    low, high = window(m.abs() - tol), window(m.abs() + tol)
    assert (high - low).max() <= 4 and (high - low).max() > 0  # the bracket has teeth
    for w in (out.window, out.contiguous_window):
        assert ((low <= w) & (w <= high)).all()
    assert out.window[0] < 5 and out.window[-1] == 24  # the grid spans the window
    expected_snr = out.summary.mean * out.summary.samples ** (1 - 1 / alpha) / sigma
    torch.testing.assert_close(out.sample_snr, expected_snr)
    assert (out.sample_snr > 100).all()  # every mean is resolved
    assert float(out.scaling.slope) == pytest.approx(1.0, abs=0.05)
    assert abs(float(out.scaling_grid.slope) - 1) < 0.1


def test_a_lag_without_signal_is_detected_but_flagged_by_its_sample_snr():
    """The oriented mean of a zero-mean lag is ``σ S^{1/α-1} |Z|``, so its SNR reaches ε at
    ``N = S (ε/|Z|)^κ``: the paper's rule detects it once the grid passes ``S ε^κ``; its
    ``sample_snr = |Z|`` (a stable variable) says the mean was never resolved."""
    samples = 20_000
    m = torch.tensor([0.3, 0.0, 0.3], dtype=torch.float64)
    gen = torch.Generator().manual_seed(3)
    psi = m[:, None] + stable_samples(2.0, (3, samples), gen)
    grid = torch.logspace(0, 8, 33, dtype=torch.float64)
    out = learnability_window_from(psi, [1, 2, 3], grid, known_fit(2.0, 1.0))
    assert out.sample_snr[1] < 5 and (out.sample_snr[[0, 2]] > 20).all()
    threshold = samples * (EPS / out.sample_snr[1]) ** 2  # SNR(N) = sample_snr · (N/S)^{1/2}
    assert out.n_required[1] == grid[grid > threshold][0] < samples
    # at small N the paper's window jumps over the undetected lag 2, the contiguous one not
    assert out.window[0] == 3 and out.contiguous_window[0] == 1
    assert out.window[-1] == 3 and out.contiguous_window[-1] == 3


def test_window_with_the_mcculloch_estimator():
    """The whole path with gatescope's own tail estimator instead of a stand-in."""
    alpha, sigma, samples = 1.6, 0.5, 50_000
    lags = torch.arange(1, 9, dtype=torch.float64)
    m = sigma * torch.exp(-lags / 8)
    psi = -m[:, None] + stable_samples(alpha, (8, samples), torch.Generator().manual_seed(2),
                                       scale=sigma)
    out = learnability_window_from(psi, lags, torch.logspace(0, 2, 21), mcculloch, eps=1.0,
                                   envelope=m)
    assert out.summary.reliable.all() and (out.summary.sign == -1).all()
    assert (out.summary.alpha - alpha).abs().max() < 0.05
    assert (out.summary.scale / sigma - 1).abs().max() < 0.05
    assert out.window[0] < 8 and out.window[-1] == 8
    assert float(out.scaling.slope) == pytest.approx(1.0, abs=0.15)


def test_the_docs_page_example_runs():
    """docs/learnability.md's snippet runs as written and shows what it says."""
    from test_docs import DOCS, python_blocks

    namespace = {"__name__": "docs_example"}
    for block in python_blocks((DOCS / "learnability.md").read_text()):
        exec(compile(block, "learnability.md", "exec"), namespace)
    out = namespace["out"]
    assert out.window[-1] == 16 and (out.contiguous_window <= out.window).all()
    assert abs(float(out.scaling.slope) - 1) < 0.2 and (out.sample_snr > 3).all()


# ---------------------------------------------------------------------- bad input


@pytest.mark.parametrize("alpha", [1.0, 0.5, 2.5, math.inf])
def test_alpha_outside_the_range_is_refused(alpha):
    with pytest.raises(ValueError, match="alpha"):
        kappa(alpha)
    with pytest.raises(ValueError, match="alpha"):
        detection_snr(torch.ones(3), torch.ones(3), torch.tensor([1.5, alpha, 2.0]), [1.0])
    with pytest.raises(ValueError, match="alpha"):
        learnability_window_from(torch.ones(2, 5), [1, 2], [1.0, 2.0], known_fit(alpha, 1.0))


def test_lags_the_fit_calls_unreliable_are_never_detected():
    """mcculloch clips α̂ to [0.5, 2] and flags α̂ ≤ 1 unreliable: such a lag is unmeasured."""
    psi = torch.full((3, 10), 0.05, dtype=torch.float64)  # SNR > 0.1 at N = 10, not 1

    def fit(x):
        return SimpleNamespace(alpha=torch.tensor([2.0, 0.8, 1.5], dtype=torch.float64),
                               scale=torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64),
                               reliable=torch.tensor([True, False, True]))

    out = learnability_window_from(psi, [1, 2, 3], [1.0, 10.0], fit, envelope=torch.ones(3))
    assert out.n_required.tolist() == [10.0, math.inf, 10.0]
    assert out.n_required_continuous[1].isinf() and out.sample_snr[1].isnan()
    assert out.window.tolist() == [0.0, 3.0] and out.contiguous_window.tolist() == [0.0, 1.0]
    assert out.summary.alpha[1] == 0.8 and int(out.scaling.lags_used) == 2


def never(x):
    raise AssertionError("the tail fit ran before the arguments were checked")


@pytest.mark.parametrize("call, name", [
    (lambda: required_samples(torch.ones(3), 1.0, 2.0, [1.0, 10.0, 10.0]), "grid"),
    (lambda: required_samples(torch.ones(3), 1.0, 2.0, [10.0, 1.0]), "grid"),
    (lambda: required_samples(torch.ones(3), 1.0, 2.0, [0.0, 1.0]), "grid"),
    (lambda: required_samples(torch.ones(3), 1.0, 2.0, [1.0], eps=0.0), "eps"),
    (lambda: required_samples(torch.ones(3), torch.ones(4), 2.0, [1.0]), "scale"),
    (lambda: required_samples(torch.ones(3), torch.ones(3), torch.ones(2) * 2, [1.0]), "alpha"),
    (lambda: required_samples(torch.ones(3), -torch.ones(3), 2.0, [1.0]), "scale"),
    (lambda: detection_snr(torch.ones(3), 1.0, 2.0, torch.tensor([0.0, 1.0])), "n"),
    (lambda: learnability_window([1, 2, 3], torch.ones(4), [1.0]), "n_required"),
    (lambda: learnability_window([1, 3, 2], torch.ones(3), [1.0]), "lags"),
    (lambda: learnability_window([0, 1, 2], torch.ones(3), [1.0]), "lags"),
    (lambda: scaling_law(torch.ones(3), torch.ones(4), 2.0), "envelope"),
    (lambda: learnability_window_from(torch.ones(3, 5), [1, 2], [1.0],
                                      known_fit(2.0, 1.0)), "psi"),
    (lambda: psi_summary(torch.ones(3, 5), lambda x: known_fit(2.0, 1.0)(x[:2])), "fit"),
    # checked before the (costly) tail fit runs: `never` would raise something else
    (lambda: learnability_window_from(torch.ones(2, 5), [1, 2], [2.0, 1.0], never), "grid"),
    (lambda: learnability_window_from(torch.ones(2, 5), [2, 1], [1.0], never), "lags"),
    (lambda: learnability_window_from(torch.ones(2, 5), [1, 2], [1.0], never, eps=-1), "eps"),
])
def test_bad_input_names_the_argument(call, name):
    with pytest.raises(ValueError, match=name):
        call()
