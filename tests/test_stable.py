"""The tail-index estimators of :mod:`gatescope.measures.stable` (docs/tail-index.md).

References: exact quantiles and quasi-samples of closed forms (Gaussian, Cauchy) and of
scipy's ``levy_stable`` (whose quantiles are computed independently of the table the
McCulloch estimator interpolates), and statistical recovery on Chambers–Mallows–Stuck
samples and on scipy's samples, with fixed seeds.
"""

from __future__ import annotations

import math

import pytest
import torch

from gatescope.measures import StableFit, koutrouvelis, mcculloch, stable_samples
from gatescope.measures._mcculloch_table import MCCULLOCH_TABLE

ESTIMATORS = {"mcculloch": mcculloch, "koutrouvelis": koutrouvelis}
ALPHAS = (1.2, 1.5, 1.8, 2.0)
REPLICATES, N = 20, 10_000
SCALE, LOCATION = 2.5, -3.0


@pytest.fixture(scope="module")
def cms_samples() -> torch.Tensor:
    """``(4·20, 10⁴)`` samples: 20 replicates of each ``α`` of ``ALPHAS``, scale ``SCALE``,
    shifted by ``LOCATION``."""
    alpha = torch.tensor(ALPHAS, dtype=torch.float64).repeat_interleave(REPLICATES)[:, None]
    g = torch.Generator().manual_seed(2512)
    return LOCATION + stable_samples(alpha, (len(ALPHAS) * REPLICATES, N), g, scale=SCALE)


@pytest.fixture(scope="module")
def scipy_samples() -> torch.Tensor:
    """The same layout as ``cms_samples`` from ``scipy.stats.levy_stable.rvs``."""
    stats = pytest.importorskip("scipy.stats")
    rows = [stats.levy_stable.rvs(a, 0, loc=LOCATION, scale=SCALE, size=(REPLICATES, N),
                                  random_state=i) for i, a in enumerate(ALPHAS)]
    return torch.cat([torch.from_numpy(r) for r in rows])


def per_alpha(values: torch.Tensor) -> torch.Tensor:
    """``(4·20,)`` values as ``(4, 20)``, one row per ``α``."""
    return values.reshape(len(ALPHAS), REPLICATES)


# ---------------------------------------------------------------------- references


def test_table_matches_closed_forms_and_scipy():
    """The generated table holds ``ν_α = x_95/x_75`` and ``φ = 2 x_75`` of the standard law:
    the closed forms at ``α = 2`` (``N(0, 2)``) and ``α = 1`` (Cauchy), scipy's quantiles
    elsewhere, ``ν_α`` decreasing."""
    stats = pytest.importorskip("scipy.stats")
    table = {round(a, 2): (nu, phi) for a, nu, phi in MCCULLOCH_TABLE}
    z75, z95 = stats.norm.ppf(0.75), stats.norm.ppf(0.95)
    assert table[2.0] == pytest.approx((z95 / z75, 2 * math.sqrt(2) * z75), rel=1e-9)
    assert table[1.0] == pytest.approx((math.tan(0.45 * math.pi), 2.0), rel=1e-9)
    for a in (0.6, 1.3, 1.7):
        x75, x95 = stats.levy_stable.ppf([0.75, 0.95], a, 0)
        assert table[a] == pytest.approx((x95 / x75, 2 * x75), rel=1e-8)
    nus = [nu for _, nu, _ in MCCULLOCH_TABLE]
    assert all(b < a for a, b in zip(nus, nus[1:], strict=False))


@pytest.mark.parametrize("alpha", [1.13, 1.37, 1.73, 1.91])
def test_mcculloch_is_exact_on_exact_quantiles(alpha):
    """21 points at the quantiles ``i/20`` of scipy's law (between the table's grid points)
    have sample quantiles 0.05, 0.25, 0.5, 0.75, 0.95 equal to the law's: ``α̂``, ``σ̂`` and
    ``δ̂`` are the law's up to the table's interpolation error."""
    stats = pytest.importorskip("scipy.stats")
    q = stats.levy_stable.ppf([i / 20 for i in range(1, 20)], alpha, 0)
    x = 0.3 + 1.7 * torch.tensor([-40.0, *q, 40.0])  # the end points are never read
    fit = mcculloch(x, min_samples=21)
    assert fit.alpha.item() == pytest.approx(alpha, abs=6e-4)
    assert fit.scale.item() == pytest.approx(1.7, rel=5e-4)
    assert fit.location.item() == pytest.approx(0.3, abs=1e-12)


def quasi_samples(law: str, n: int = 100_000) -> torch.Tensor:
    """``F^{-1}((i - 1/2)/n)``, ``i = 1..n``, of the Gaussian of stable scale 1 (``N(0, 2)``)
    or the standard Cauchy law: a deterministic sample whose empirical characteristic
    function is the law's up to ``O(1/n)``."""
    u = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    if law == "gauss":
        return 2 * torch.erfinv(2 * u - 1)  # √2 · √2 erfinv: N(0, 2)
    return torch.tan(math.pi * (u - 0.5))


@pytest.mark.parametrize("name", ESTIMATORS)
@pytest.mark.parametrize(("law", "alpha"), [("gauss", 2.0), ("cauchy", 1.0)])
def test_closed_form_laws(name, law, alpha):
    """Gaussian and Cauchy quasi-samples give ``α̂`` and ``σ̂ = 1``: the Gaussian reliable
    (the boundary ``α = 2`` is allowed), the Cauchy at ``α̂ ≈ 1``."""
    fit = ESTIMATORS[name](quasi_samples(law) * 3.0)
    assert fit.alpha.item() == pytest.approx(alpha, abs=2e-3)
    assert fit.scale.item() == pytest.approx(3.0, rel=1e-3)
    assert fit.location.item() == pytest.approx(0.0, abs=1e-9)
    if law == "gauss":
        assert fit.reliable.item()


# ---------------------------------------------------------------------- samples


@pytest.mark.parametrize("name", ESTIMATORS)
def test_recovers_alpha_scale_and_location(cms_samples, name):
    """On 20 replicates of ``n = 10⁴`` CMS samples per ``α``, in one call: the median
    ``|α̂ - α|`` is at most 0.05, the median ``|σ̂/σ - 1|`` at most 0.03 and the median
    ``|δ̂ - δ|/σ`` at most 0.03; every fit is reliable."""
    fit = ESTIMATORS[name](cms_samples)
    assert isinstance(fit, StableFit)
    assert fit.alpha.shape == fit.scale.shape == fit.reliable.shape == (len(ALPHAS) * 20,)
    alpha = torch.tensor(ALPHAS, dtype=torch.float64)[:, None]
    assert bool(((per_alpha(fit.alpha) - alpha).abs().median(1).values <= 0.05).all())
    assert bool(((per_alpha(fit.scale) / SCALE - 1).abs().median(1).values <= 0.03).all())
    assert bool(((per_alpha(fit.location) - LOCATION).abs().median(1).values
                 <= 0.03 * SCALE).all())
    assert bool(fit.reliable.all()) and bool((fit.count == N).all())


@pytest.mark.parametrize("name", ESTIMATORS)
def test_same_estimates_on_scipy_samples(cms_samples, scipy_samples, name):
    """scipy's ``levy_stable`` samples give the same median ``α̂`` and ``σ̂`` per ``α`` as
    ours, to within sampling error (0.03 in ``α``, 2% in ``σ``)."""
    ours, theirs = ESTIMATORS[name](cms_samples), ESTIMATORS[name](scipy_samples)
    a_ours, a_theirs = per_alpha(ours.alpha).median(1).values, per_alpha(theirs.alpha).median(
        1).values
    s_ours, s_theirs = per_alpha(ours.scale).median(1).values, per_alpha(theirs.scale).median(
        1).values
    assert bool(((a_ours - a_theirs).abs() <= 0.03).all()), (a_ours, a_theirs)
    assert bool(((s_ours / s_theirs - 1).abs() <= 0.02).all()), (s_ours, s_theirs)


def test_sampler_matches_scipy_in_distribution(cms_samples, scipy_samples):
    """A two-sample Kolmogorov–Smirnov test of 10⁴ of our samples against 10⁴ of scipy's
    does not reject at the 1% level for any ``α``, and does reject ``α`` against its
    neighbour in ``ALPHAS`` (the test has power)."""
    stats = pytest.importorskip("scipy.stats")
    ours, theirs = cms_samples.reshape(len(ALPHAS), -1), scipy_samples.reshape(len(ALPHAS), -1)
    for i in range(len(ALPHAS)):
        assert stats.ks_2samp(ours[i, :N].numpy(), theirs[i, :N].numpy()).pvalue > 0.01
    for i in range(len(ALPHAS) - 1):
        assert stats.ks_2samp(ours[i].numpy(), theirs[i + 1].numpy()).pvalue < 0.01


@pytest.mark.parametrize("name", ESTIMATORS)
def test_cauchy_samples(name):
    """Cauchy samples: ``α̂`` within 0.05 of 1 (median over replicates), ``σ̂`` within 3%,
    and a row is reliable exactly when its ``α̂`` is above 1."""
    g = torch.Generator().manual_seed(7)
    x = 0.5 * stable_samples(1.0, (20, N), g)
    fit = ESTIMATORS[name](x)
    assert (fit.alpha - 1).abs().median().item() <= 0.05
    assert (fit.scale / 0.5 - 1).abs().median().item() <= 0.03
    assert not bool(fit.reliable.all())
    if name == "mcculloch":  # the alpha it returns is not clipped near 1
        assert torch.equal(fit.reliable, fit.alpha > 1)


# ---------------------------------------------------------------------- layout and input


@pytest.mark.parametrize("name", ESTIMATORS)
def test_rows_are_independent_along_any_dim(name):
    """``dim`` may be any dimension; each row's fit equals the fit of that row alone."""
    g = torch.Generator().manual_seed(3)
    x = stable_samples(1.6, (2, 400, 3), g)
    fit = ESTIMATORS[name](x, dim=1)
    assert fit.alpha.shape == fit.count.shape == (2, 3)
    for i in range(2):
        for j in range(3):
            alone = ESTIMATORS[name](x[i, :, j])
            assert alone.alpha.shape == ()
            for field in ("alpha", "scale", "location"):
                torch.testing.assert_close(getattr(fit, field)[i, j], getattr(alone, field))


@pytest.mark.parametrize("name", ESTIMATORS)
def test_non_finite_entries_are_dropped(name):
    """NaN and ±inf entries are left out of their row (the fit equals the fit of the
    finite values alone); a row left with fewer than ``min_samples`` values is unreliable,
    one with none gives NaN."""
    g = torch.Generator().manual_seed(4)
    x = stable_samples(1.5, (4, 600), g)
    holed = x.clone()
    holed[0, ::3] = math.nan
    holed[1, :150] = math.inf
    holed[1, 150:200] = -math.inf
    holed[2, 150:] = math.nan  # 150 left
    holed[3] = math.nan
    fit = ESTIMATORS[name](holed)
    assert fit.count.tolist() == [400, 400, 150, 0]
    for row, kept in ((0, x[0, holed[0].isfinite()]), (1, x[1, 200:])):
        alone = ESTIMATORS[name](kept)
        torch.testing.assert_close(fit.alpha[row], alone.alpha)
        torch.testing.assert_close(fit.scale[row], alone.scale)
    assert fit.reliable.tolist() == [True, True, False, False]
    assert fit.alpha[2].isfinite() and fit.alpha[3].isnan() and fit.scale[3].isnan()


@pytest.mark.parametrize("name", ESTIMATORS)
def test_constant_rows_are_unreliable(name):
    """A row with zero interquartile range has no scale: flagged, not an error."""
    x = torch.zeros(2, 300, dtype=torch.float64)
    x[1, :30], x[1, -30:] = -1.0, 1.0  # x_05 = -1, x_95 = 1, x_25 = x_75 = 0
    fit = ESTIMATORS[name](x)
    assert not fit.reliable.any()
    assert fit.scale[0].isnan() and not fit.scale[1].item() > 0


@pytest.mark.parametrize("name", ESTIMATORS)
def test_bad_input(name):
    """Bad arguments raise before computing, naming the argument."""
    estimator = ESTIMATORS[name]
    x = torch.randn(3, 300, dtype=torch.float64)
    with pytest.raises(ValueError, match="dim"):
        estimator(x, dim=2)
    with pytest.raises(ValueError, match="min_samples=200"):
        estimator(x[:, :199])
    with pytest.raises(ValueError, match="min_samples"):
        estimator(x, min_samples=1)
    with pytest.raises(TypeError, match="x must be a real floating tensor"):
        estimator(torch.ones(3, 300, dtype=torch.int64))
    with pytest.raises(ValueError, match="dim"):
        estimator(torch.tensor(1.0))
    assert estimator(x[:, :50], min_samples=50).reliable.shape == (3,)


def test_koutrouvelis_bad_options():
    x = torch.randn(300, dtype=torch.float64)
    for t in ([0.5], [0.1, -0.2], [0.3, 0.3], [[0.1, 0.2]], [0.1, math.inf]):
        with pytest.raises(ValueError, match="t must be"):
            koutrouvelis(x, t=t)
    for iterations in (0, 1.5, True):
        with pytest.raises(ValueError, match="iterations"):
            koutrouvelis(x, iterations=iterations)


def test_koutrouvelis_iterations_and_grid_agree():
    """More passes and another frequency grid move ``α̂`` by much less than its sampling
    error (0.02 at ``n = 10⁴``): the first pass, started from McCulloch, has converged."""
    g = torch.Generator().manual_seed(5)
    x = stable_samples(1.5, (8, N), g)
    one = koutrouvelis(x)
    assert (koutrouvelis(x, iterations=3).alpha - one.alpha).abs().max().item() < 0.005
    other = koutrouvelis(x, t=torch.linspace(0.2, 1.2, 6))
    assert (other.alpha - one.alpha).abs().max().item() < 0.03
