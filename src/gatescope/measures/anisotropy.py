"""Anisotropy of gradient transport and of parameter updates (docs/maths.md#anisotropy).

For singular values ``σ_1 ≥ σ_2 ≥ … ≥ σ_K ≥ 0``:

* anisotropy index ``AI_r = σ_1 / σ_r``;
* captured energy ``CE_r = Σ_{i≤r} σ_i² / Σ_{i≤K'} σ_i²`` with ``K' = K`` (all values) or the
  top ``K' = k`` only (the paper's code divides by the top 16);
* participation ratio ``PR = (Σ σ_i²)² / Σ σ_i⁴`` (between 1 and ``K``);
* effective rank ``exp(-Σ p_i log p_i)``, ``p_i = σ_i / Σ σ``.

Propagation anisotropy measures these on transport products ``M_{t,k}``; update anisotropy on
the matrix of per-example gradients; transport alignment asks how much of the loss gradient
``δ_T`` lies in the top singular directions of ``M_{T,k}``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from ..dynamics.spectral import wide_dtype, widen
from ..dynamics.transport import PRODUCT_ORDERS
from ..memory import check_dense, describe, tensor_bytes
from ..model import SequenceModel
from ._integers import integer_lags


def singular_values(X: Tensor) -> Tensor:
    """``torch.linalg.svdvals``, with a fallback for what LAPACK's divide-and-conquer SVD
    refuses (it can fail to converge on very ill-conditioned input): the square roots of the
    eigenvalues of the smaller Gram matrix, in float64 (complex128 for complex ``X``), for
    the failing matrices only.

    Args:
        X: ``(..., p, q)`` real or complex.

    Returns:
        ``(..., min(p, q))`` real, descending.
    """
    try:
        return torch.linalg.svdvals(X)
    except torch.linalg.LinAlgError:
        flat = X.reshape(-1, *X.shape[-2:])
        out = []
        for chunk in flat.split(1):  # locate the failing ones; rare, so a loop is fine
            try:
                out.append(torch.linalg.svdvals(chunk))
            except torch.linalg.LinAlgError:
                Xd = widen(chunk)
                gram = Xd @ Xd.mH if Xd.shape[-2] <= Xd.shape[-1] else Xd.mH @ Xd
                out.append(torch.linalg.eigvalsh(gram).flip(-1).clamp_min(0).sqrt()
                           .to(X.dtype.to_real()))
        return torch.cat(out).reshape(*X.shape[:-2], -1)


def top_left_singular_vectors(X: Tensor, r: int) -> Tensor:
    """The top-``r`` left singular vectors of each ``(..., N, N)`` matrix: ``(..., N, r)``.

    Computed as the top eigenvectors of ``X Xᴴ`` (a Hermitian eigensolve, which always
    converges, unlike the SVD on very ill-conditioned products); accurate for the leading
    directions, which are the ones used.
    """
    return torch.linalg.eigh(X @ X.mH)[1].flip(-1)[..., :r]


@dataclass
class SpectrumStats:
    """Anisotropy statistics of one or many spectra; every field has the batch shape ``(...)``
    of the input except ``sigma``.

    Attributes:
        sigma: ``(..., K)`` float64, the singular values sorted descending.
        ai: ``AI_r = σ_1/σ_r``.
        ce: ``CE_r``.
        participation_ratio: ``(Σσ²)²/Σσ⁴``.
        effective_rank: ``exp(-Σ p log p)``, ``p = σ/Σσ``.
    """

    sigma: Tensor
    ai: Tensor
    ce: Tensor
    participation_ratio: Tensor
    effective_rank: Tensor


def abs_std_mean(x: Tensor) -> tuple[Tensor, Tensor]:
    """The population std and the mean of ``|x|`` along the last dimension, float64: two
    passes (the mean, then the norm of the deviations from it), several times faster than
    ``torch.std_mean``'s one-pass update and as accurate.

    Args:
        x: ``(..., K)``.

    Returns:
        ``(std, mean)``, each ``(...)``; NaN along a row with a NaN.
    """
    a = x.detach().double().abs()
    mean = a.mean(-1, keepdim=True)
    std = torch.linalg.vector_norm(a - mean, dim=-1) / math.sqrt(a.shape[-1])
    return std, mean.squeeze(-1)


def coefficient_of_variation(x: Tensor) -> Tensor:
    """``std/mean`` of ``|x|`` along the last dimension (population std), float64.

    Args:
        x: ``(..., K)`` values (step sizes, effective rates of ``K`` neurons...).

    Returns:
        ``(...)``; NaN where every entry is zero or NaN.
    """
    std, mean = abs_std_mean(x)
    return std / mean


def check_epsilon(epsilon: float) -> None:
    """Refuse an ``epsilon`` of :func:`spectrum_stats` that is not a finite number ``>= 0``."""
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not (
            math.isfinite(epsilon) and epsilon >= 0):
        raise ValueError(f"epsilon must be a finite number >= 0 (0: the scale-invariant "
                         f"definitions; the paper's code: 1e-12), got {epsilon!r}")


def spectrum_stats(sigma: Tensor, r: int = 10, ce_denominator: str | int = "all",
                   epsilon: float = 0.0) -> SpectrumStats:
    """Anisotropy statistics of singular values.

    ``AI_r = σ_1/(σ_r + ε)`` and ``CE_r = Σ_{i≤r} σ_i² / (Σ_{i≤k} σ_i² + ε)``. With ``ε = 0``
    (the default) both are scale-invariant, as the paper defines them; the paper's code adds
    ``ε = 1e-12``, an absolute regulariser that dominates once the spectrum itself is that
    small (a vanished transport product: docs/fidelity.md#spectrum-epsilon).

    Args:
        sigma: ``(..., K)`` non-negative values, in any order (sorted here), at their true
            scale when ``epsilon > 0``.
        r: the rank of ``AI_r`` and ``CE_r``, ``1 ≤ r ≤ K``.
        ce_denominator: ``"all"`` to divide ``CE_r`` by the energy of all ``K`` values, or an
            int ``k`` (``r ≤ k ≤ K``) to divide by the top ``k`` (the paper's code: 16).
        epsilon: ``ε ≥ 0``.

    Returns:
        A :class:`SpectrumStats`. All-zero spectra give NaN (the ratios are undefined).

    Raises:
        TypeError: for complex ``sigma`` (singular values are real; pass their moduli).
    """
    if sigma.is_complex():
        raise TypeError(f"sigma must hold real singular values, got {sigma.dtype}; pass "
                        "torch.linalg.svdvals(M) (real even for complex M)")
    K = sigma.shape[-1]
    if not 1 <= r <= K:
        raise ValueError(f"r must lie in [1, {K}], got {r}")
    if ce_denominator == "all":
        k = K
    elif isinstance(ce_denominator, int) and r <= ce_denominator <= K:
        k = ce_denominator
    else:
        raise ValueError(f"ce_denominator must be 'all' or an int in [r={r}, K={K}], "
                         f"got {ce_denominator!r}")
    check_epsilon(epsilon)
    s = sigma.double().sort(-1, descending=True).values
    energy = s**2
    total = energy.sum(-1)
    p = s / s.sum(-1, keepdim=True)
    entropy = -torch.xlogy(p, p).sum(-1)
    return SpectrumStats(
        sigma=s,
        ai=s[..., 0] / (s[..., r - 1] + epsilon),
        ce=energy[..., :r].sum(-1) / (energy[..., :k].sum(-1) + epsilon),
        participation_ratio=total**2 / (energy**2).sum(-1),
        effective_rank=entropy.exp(),
    )


@dataclass
class PropagationAnisotropy:
    """Spectra of sampled transport products, one row per lag.

    Attributes:
        lags: ``(L,)``.
        samples: ``(L, S, 3)`` the sampled ``(b, t, k)`` with ``t - k = lag``.
        stats: :class:`SpectrumStats` with fields ``(L, S)``; ``sigma`` ``(L, S, N)`` holds the
            singular values of ``M_{t,k} / ‖M_{t,k}‖_F`` (the scale is not kept; for norms
            use :func:`gatescope.sensitivities`).
    """

    lags: Tensor
    samples: Tensor
    stats: SpectrumStats


#: Precisions of propagation anisotropy's products: float64, or the paper code's float32.
PRODUCT_DTYPES = ("float64", "float32")
#: How propagation anisotropy draws its windows: uniformly, or as the paper's code does.
SAMPLINGS = ("uniform", "paper")


def propagation_anisotropy(J: Tensor, lags: Sequence[int], samples_per_lag: int = 64,
                           generator: torch.Generator | None = None, r: int = 10,
                           ce_denominator: str | int = "all", epsilon: float = 0.0,
                           lengths: Tensor | None = None, product_order: str = "chain",
                           product_dtype: str = "float64", sampling: str = "uniform"
                           ) -> PropagationAnisotropy:
    """Anisotropy of ``M_{t,k} = J_t ⋯ J_{k+1}`` at sampled ``(b, t, k)`` per lag.

    For each lag, ``samples_per_lag`` triples are drawn uniformly with replacement: ``b``
    from the batch, ``k`` from ``0..T-lag``, ``t = k + lag`` (``sampling="uniform"``). The
    products are formed in float64 (complex128 for complex ``J``) for all samples at once
    (one batched matmul per window position; shorter windows are padded with identities),
    each factor renormalised (the statistics are scale-invariant), and their singular values
    come from an exact SVD. Singular values below ``σ_1`` times float64's precision are not
    resolved.

    Three settings reproduce the paper's code (docs/fidelity.md#switches):
    ``product_order="reversed"`` multiplies ``J_{k+1} ⋯ J_t``; ``product_dtype="float32"``
    forms the products in float32 (complex64) before a float64 SVD; ``sampling="paper"``
    draws, per lag in the order given, ``samples_per_lag`` distinct windows among those with
    ``t ≤ T-1`` (every one when there are fewer; the missing samples are NaN), listed
    ``b``-major then by ``t``, with ``numpy.random.RandomState(generator.initial_seed())``
    (the code's ``sample_tk_pairs``; its stream is shared by the lags of one call).

    Args:
        J: ``(B, T, N, N)`` real or complex Jacobians (:func:`gatescope.jacobians`).
        lags: lags in ``1..T``.
        samples_per_lag: ``S``.
        generator: CPU generator for the sampling; ``None`` uses a fresh one seeded with 0,
            so the result is reproducible by default.
        r: the rank of ``AI_r``/``CE_r``.
        ce_denominator: as in :func:`spectrum_stats`.
        epsilon: as in :func:`spectrum_stats`; with ``epsilon > 0`` the singular values are
            taken back to the products' true scale (the factors' norms are kept as logs)
            before the statistics.
        lengths: ``(B,)`` valid lengths of a padded batch (``traj.lengths``): the windows
            are then drawn within each sequence's length (``b`` uniformly among the
            sequences at least ``lag`` long, ``k`` from ``0..len_b-lag``). ``None``: every
            sequence runs ``T`` steps. Only with ``sampling="uniform"``.
        product_order: one of :data:`~gatescope.dynamics.transport.PRODUCT_ORDERS`.
        product_dtype: one of :data:`PRODUCT_DTYPES`.
        sampling: one of :data:`SAMPLINGS`.

    Raises:
        ValueError: for lags outside ``1..T`` (``1..T-1`` with ``sampling="paper"``), a bad
            ``epsilon``, ``product_order``, ``product_dtype`` or ``sampling``, or ``lengths``
            of another shape, outside ``1..T``, shorter than some lag for every sequence or
            given with ``sampling="paper"``.
    """
    check_epsilon(epsilon)
    _check_choice("product_order", product_order, PRODUCT_ORDERS)
    _check_choice("product_dtype", product_dtype, PRODUCT_DTYPES)
    _check_choice("sampling", sampling, SAMPLINGS)
    if sampling == "paper" and lengths is not None:
        raise ValueError("sampling='paper' draws windows of full-length sequences: pass "
                         "lengths=None or sampling='uniform'")
    B, T, N, _ = J.shape
    lags_t = torch.as_tensor(integer_lags(lags), dtype=torch.long)
    top = T - 1 if sampling == "paper" else T
    if lags_t.numel() == 0 or (lags_t < 1).any() or (lags_t > top).any():
        raise ValueError(f"lags must be a non-empty set of values in [1, {top}] (T={T}"
                         f"{', sampling=paper' if sampling == 'paper' else ''}), got {lags}")
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    L, S = lags_t.numel(), samples_per_lag
    wide = wide_dtype(J.dtype)
    work = wide if product_dtype == "float64" else (
        torch.complex64 if J.dtype.is_complex else torch.float32)
    shape = (L * S, N, N)
    check_dense(3 * tensor_bytes(shape, wide.itemsize),
                f"gs.propagation_anisotropy: the sampled products of {describe(shape, wide)}",
                "fewer lags or samples_per_lag per call (the statistics of each sample do not "
                "depend on the others), or gs.transport_norms for norms only")
    missing = torch.zeros(L, S, dtype=torch.bool)
    if sampling == "paper":
        b, k, missing = _paper_windows(B, T, lags_t, S, generator.initial_seed())
    else:
        if lengths is None:
            b = torch.randint(B, (L, S), generator=generator)
            span = (T - lags_t + 1).unsqueeze(-1)
        else:
            b, span = _windows_within_lengths(lengths, lags_t, S, T, generator)
        k = (torch.rand(L, S, generator=generator, dtype=torch.float64) * span).long()
    lag = lags_t.unsqueeze(-1).expand(L, S)
    samples = torch.stack([b, k + lag, k], -1)
    b, k, lag = (x.flatten().to(J.device) for x in (b, k, lag))
    M = torch.eye(N, dtype=work, device=J.device).repeat(L * S, 1, 1)
    log_scale = torch.zeros(L * S, dtype=torch.float64, device=J.device)
    for i in range(int(lags_t.max())):
        act = (lag > i).nonzero().squeeze(-1)  # products still growing: only those multiply
        factor = J[b[act], k[act] + i].to(work)
        Ma = factor @ M[act] if product_order == "chain" else M[act] @ factor
        norm = torch.linalg.matrix_norm(Ma).clamp_min(torch.finfo(Ma.dtype).tiny)
        M[act] = Ma / norm.view(-1, 1, 1)
        log_scale[act] += norm.double().log()
    sigma = singular_values(widen(M))
    if epsilon > 0:  # the true scale (it may underflow to 0, as the products themselves do)
        sigma = sigma * log_scale.exp().unsqueeze(-1)
    sigma = sigma.masked_fill(missing.flatten().to(sigma.device).unsqueeze(-1), math.nan)
    stats = spectrum_stats(sigma.reshape(L, S, N), r, ce_denominator, epsilon)
    return PropagationAnisotropy(lags_t, samples, stats)


def _paper_windows(B: int, T: int, lags: Tensor, S: int, seed: int
                   ) -> tuple[Tensor, Tensor, Tensor]:
    """The paper code's windows: ``(b, k, missing)`` ``(L, S)`` each.

    Per lag ``ℓ`` in order, the candidates ``(b, t)`` for ``b = 0..B-1`` then
    ``t = ℓ..T-1`` (``k = t - ℓ``); all of them when there are at most ``S`` (the rest of the
    row is ``missing``), else ``S`` distinct ones drawn by one ``numpy.random.RandomState``
    stream seeded with ``seed``.
    """
    rng = np.random.RandomState(seed % 2**32)
    b = torch.zeros(len(lags), S, dtype=torch.long)
    k = torch.zeros_like(b)
    missing = torch.ones(len(lags), S, dtype=torch.bool)
    for i, lag in enumerate(lags.tolist()):  # one numpy draw per lag: the code's stream
        count = B * (T - lag)
        pick = np.arange(count) if count <= S else rng.choice(count, size=S, replace=False)
        pick = torch.as_tensor(pick, dtype=torch.long)
        b[i, :len(pick)], k[i, :len(pick)] = pick // (T - lag), pick % (T - lag)
        missing[i, :len(pick)] = False
    return b, k, missing


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def _windows_within_lengths(lengths: Tensor, lags: Tensor, S: int, T: int,
                            generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``(b, span)`` ``(L, S)`` each: sequences drawn uniformly among those at least ``lag``
    long, and the number ``len_b - lag + 1`` of start times within each one's length."""
    lengths = torch.as_tensor(lengths).cpu()
    if (lengths.dim() != 1 or lengths.is_floating_point() or (lengths < 1).any()
            or (lengths > T).any()):
        raise ValueError(f"lengths must be a (B,) integer tensor with values in [1, T={T}], "
                         f"got {lengths.tolist() if lengths.dim() == 1 else lengths.shape}")
    fits = lengths.unsqueeze(0) >= lags.unsqueeze(-1)  # (L, B)
    if not fits.any(-1).all():
        short = lags[~fits.any(-1)].tolist()
        raise ValueError(f"lags {short} exceed every sequence's length (lengths "
                         f"{lengths.tolist()})")
    b = torch.multinomial(fits.double(), S, replacement=True, generator=generator)
    return b, lengths[b] - lags.unsqueeze(-1) + 1


class _AdjointObjective(nn.Module):
    """One example's ``θ ↦ Σ_t w_t ⟨λ_t, step_θ(h_{t-1}, u_t)⟩ + L(predict_θ(h_{0..T}))`` with
    the states ``h`` and adjoints ``λ_t = dL/dh_t`` held fixed; ``w_t`` is 1 for the steps
    within the example's length and 0 for the held steps past it.

    Its gradient is the example's BPTT gradient ``Σ_t λ_t ∂⁺h_t/∂θ + ∂L/∂θ|_h`` (the last term
    is the readout's), and the step is applied to all ``T`` steps as one batch, so each weight
    gradient is one matmul over time rather than ``T`` accumulated outer products.
    """

    def __init__(self, model: SequenceModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, states: Tensor, u: Tensor, lam: Tensor, y: Tensor,
                mask: Tensor | None, inside: Tensor) -> Tensor:
        transported = (lam * inside.unsqueeze(-1) * self.model.cell(states[:-1], u)).sum()
        return transported + self.model.loss_from_states(
            states.unsqueeze(0), y.unsqueeze(0), None if mask is None else mask.unsqueeze(0))


#: State-sized activations per step one example's adjoint objective holds (gates, candidate,
#: their cotangents).
_STEP_ACTIVATIONS = 8


def _step_inside(u: Tensor, lengths: Tensor | None) -> Tensor:
    """``(M, T)`` bool: step ``t`` (index ``t - 1``) lies within each example's length."""
    steps = torch.arange(1, u.shape[1] + 1, device=u.device)
    if lengths is None:
        return steps.new_ones(u.shape[:2], dtype=torch.bool)
    if lengths.shape != u.shape[:1]:
        raise ValueError(f"lengths must have shape ({u.shape[0]},) (one per example), got "
                         f"{tuple(lengths.shape)}")
    return steps <= lengths.to(u.device).unsqueeze(-1)


def _states_and_adjoints(model: SequenceModel, u: Tensor, y: Tensor, mask: Tensor | None,
                         inside: Tensor) -> tuple[Tensor, Tensor]:
    """States ``(M, T+1, N)`` and adjoints ``λ_t = dL_i/dh_t`` ``(M, T, N)`` of every example's
    own loss ``L_i``, from one batched forward and backward pass (the examples do not
    interact, so the gradient of ``Σ_i L_i`` with respect to ``h_t`` holds each ``λ_t``).
    Past an example's length (``inside`` false) its state is held, as packed sequences do."""
    cell = model.cell
    with torch.enable_grad():
        h = cell.initial_state(u.shape[0], u).requires_grad_()
        hs = [h]
        for t in range(u.shape[1]):
            hs.append(torch.where(inside[:, t, None], cell(hs[-1], u[:, t]), hs[-1]))
        states = torch.stack(hs, 1)

        def example_loss(s, y_i, mask_i):
            return model.loss_from_states(s.unsqueeze(0), y_i.unsqueeze(0),
                                          None if mask_i is None else mask_i.unsqueeze(0))

        losses = vmap(example_loss, in_dims=(0, 0, None if mask is None else 0))(states, y, mask)
        lam = torch.autograd.grad(losses.sum(), hs[1:])
    return states.detach(), torch.stack(lam, 1)


def _length_mask(model: SequenceModel, mask: Tensor | None, inside: Tensor,
                 lengths: Tensor | None) -> Tensor | None:
    """The step weights of readout "all" with the steps past each length zeroed."""
    if lengths is None or model.readout_kind == "last":
        return mask
    return inside.to(torch.get_default_dtype() if mask is None else mask.dtype) * (
        1 if mask is None else mask)


def per_example_gradients(model: SequenceModel, u: Tensor, y: Tensor, mask: Tensor | None = None,
                          chunk_size: int | None = None, lengths: Tensor | None = None
                          ) -> Tensor:
    """The gradient of each example's own loss, all parameters flattened.

    Row ``i`` is ``∇_θ model.loss(u[i:i+1], y[i:i+1], mask[i:i+1])`` (for readout "all" the
    mean over that example's own unmasked steps); no loop over examples. BPTT in two passes:
    the adjoints ``λ_t = dL_i/dh_t`` of all examples come from one batched backward pass, then
    ``vmap(grad(functional_call(...)))`` differentiates, per example, the adjoint objective
    ``Σ_t ⟨λ_t, step_θ(h_{t-1}, u_t)⟩ + L_i(readout_θ(h))`` (states and ``λ`` held fixed),
    whose gradient is exactly the example's gradient.

    With ``lengths``, row ``i`` is the gradient of example ``i`` truncated to its length
    (``u[i, :lengths[i]]``, and ``y``/``mask`` likewise for readout "all"): its state is held
    past the length (readout "last" reads ``h_{len}``) and those steps contribute nothing.

    Args:
        model: a :class:`~gatescope.SequenceModel`.
        u: ``(M, T, m)`` inputs.
        y: targets as for :meth:`SequenceModel.loss`, batch first.
        mask: optional ``(M, T)`` step weights.
        chunk_size: examples per vectorised call of the second pass (bounds memory); ``None``
            for all at once.
        lengths: optional ``(M,)`` valid lengths of a padded batch
            (:attr:`gatescope.Trajectory.lengths`).

    Returns:
        ``(M, P)``: columns are the parameters in ``model.named_parameters()`` order, each
        flattened row-major.

    Raises:
        ValueError: for a bad ``chunk_size`` or ``lengths`` of the wrong shape.
        DenseBudgetExceeded: before any compute, when the result and one chunk's parameter
            gradients exceed :func:`gatescope.dense_budget` (pass ``chunk_size=``, or fewer
            examples).
    """
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(
            chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be None or an int >= 1 (examples per chunk), "
                         f"got {chunk_size!r}")
    params = {name: p.detach() for name, p in model.named_parameters()}
    M, T = u.shape[:2]
    P = sum(p.numel() for p in params.values())
    chunk = M if chunk_size is None else min(M, chunk_size)
    itemsize = next(iter(params.values())).element_size()
    # the result, and per example of a chunk its gradient and the step's activations
    work = P + _STEP_ACTIVATIONS * T * model.cell.state_size
    check_dense(tensor_bytes((M, P), itemsize) + chunk * work * itemsize,
                f"gs.per_example_gradients: G of {describe((M, P), u.dtype)} and "
                f"{chunk} examples' per-step work at once",
                "pass chunk_size= (examples per vectorised call) or fewer examples")
    inside = _step_inside(u, lengths)
    u = u.masked_fill(~inside.unsqueeze(-1), 0)  # padding never reaches the cell
    mask = _length_mask(model, mask, inside, lengths)
    states, lam = _states_and_adjoints(model, u, y, mask, inside)
    objective = _AdjointObjective(model)
    inside_w = inside.to(lam.dtype)

    def example_objective(p, s, u_i, lam_i, y_i, mask_i, inside_i):
        return functional_call(objective, {f"model.{k}": v for k, v in p.items()},
                               (s, u_i, lam_i, y_i, mask_i, inside_i))

    grads = vmap(grad(example_objective),
                 in_dims=(None, 0, 0, 0, 0, None if mask is None else 0, 0),
                 chunk_size=chunk_size)(params, states, u, lam, y, mask, inside_w)
    return torch.cat([grads[name].reshape(M, -1) for name in params], dim=1)


def update_anisotropy(G: Tensor, r: int = 10, ce_denominator: str | int = "all",
                      epsilon: float = 0.0) -> SpectrumStats:
    """Anisotropy of the per-example gradient matrix ``G`` ``(M, P)``.

    Rows are normalised to unit length (zero rows stay zero), columns are then centred, and
    the statistics are taken of the singular values of the result (an exact float64 SVD;
    centring leaves one zero singular value when ``M ≤ P``). ``r``, ``ce_denominator`` and
    ``epsilon`` as in :func:`spectrum_stats`.
    """
    G = widen(G)
    G = G / torch.linalg.vector_norm(G, dim=1, keepdim=True).clamp_min(torch.finfo(G.dtype).tiny)
    G = G - G.mean(0, keepdim=True)
    sigma = singular_values(G)
    return spectrum_stats(sigma, r, ce_denominator, epsilon)


@dataclass
class Alignment:
    """Transport–loss alignment.

    Attributes:
        ks: ``(K,)`` the start times ``k`` (lag ``T - k``).
        alignment: ``(B, K)`` ``a_r(k)`` per example.
        baseline: ``r / N``, the expected alignment of a uniformly random direction.
    """

    ks: Tensor
    alignment: Tensor
    baseline: float


def state_gradients(model: SequenceModel, states: Tensor, y: Tensor,
                    mask: Tensor | None = None) -> Tensor:
    """``δ_t = ∂L_b/∂h_t`` per example, the direct dependence only: ``(B, T+1, N)``.

    The gradient of ``B`` times the batch loss with respect to the states taken as free
    inputs of the readout (the recurrence is not differentiated): the output error at
    step ``t`` projected back through the readout. That is each example's own loss when
    every example weighs the same (no mask, or masks of equal totals). ``δ_0 = 0``; for
    readout ``"last"`` only ``δ_T`` is nonzero; entries the readout does not read (an LSTM's
    ``c``, an output projection's inner state) are zero.

    Args:
        states: ``(B, T+1, N)`` (e.g. ``traj.states``); only their values are used.
        y, mask: as for :meth:`~gatescope.SequenceModel.loss`.
    """
    states = states.detach().requires_grad_()
    with torch.enable_grad():
        loss = model.loss_from_states(states, y, mask) * states.shape[0]  # per example
        return torch.autograd.grad(loss, states)[0]


def final_state_gradient(model: SequenceModel, states: Tensor, y: Tensor,
                         mask: Tensor | None = None) -> Tensor:
    """``δ_T = ∂L_b/∂h_T`` per example: ``(B, N)``, the loss direction that
    :func:`transport_alignment` compares with the transport's top directions
    (the last step of :func:`state_gradients`).

    Args:
        states: ``(B, T+1, N)`` (e.g. ``traj.states``); only their values are used.
        y, mask: as for :meth:`~gatescope.SequenceModel.loss`.
    """
    return state_gradients(model, states, y, mask)[:, -1]


def transport_alignment(J: Tensor, delta_T: Tensor, ks: Sequence[int], r: int = 10) -> Alignment:
    """``a_r(k) = ‖U_rᴴ δ_T‖² / ‖δ_T‖²``, ``U_r`` the top-``r`` left singular vectors of
    ``M_{T,k}``.

    ``M_{T,k}`` for all requested ``k`` come from one backward sweep
    ``M_{T,k} = M_{T,k+1} J_{k+1}`` in float64 (complex128 when ``J`` or ``δ_T`` is
    complex), renormalised at each step (singular vectors are scale-invariant).

    Args:
        J: ``(B, T, N, N)`` real or complex Jacobians.
        delta_T: ``(B, N)`` ``∂L/∂h_T`` per example.
        ks: start times in ``0..T-1``.
        r: subspace size, ``1 ≤ r ≤ N``.

    Returns:
        An :class:`Alignment`; NaN for an example with ``δ_T = 0``.
    """
    B, T, N, _ = J.shape
    ks_t = torch.as_tensor(integer_lags(ks, "ks"), dtype=torch.long)  # 1.7 refused
    if ks_t.numel() == 0 or (ks_t < 0).any() or (ks_t >= T).any():
        raise ValueError(f"ks must be a non-empty set of values in [0, T-1={T - 1}], got {ks}")
    if not 1 <= r <= N:
        raise ValueError(f"r must lie in [1, N={N}], got {r}")
    if delta_T.shape != (B, N):
        raise ValueError(f"delta_T must have shape {(B, N)}, got {tuple(delta_T.shape)}")
    first = int(ks_t.min())
    dtype = wide_dtype(J.dtype, delta_T.dtype)
    Jd = J[:, first:].to(dtype)  # only the steps the products reach
    M = torch.eye(N, dtype=dtype, device=J.device).expand(B, N, N)
    wanted, products = set(ks_t.tolist()), {}
    for k in range(T - 1, first - 1, -1):
        M = M @ Jd[:, k - first]  # M_{T,k} = M_{T,k+1} J_{k+1}, J_{k+1} at index k
        M = M / torch.linalg.matrix_norm(M).clamp_min(torch.finfo(M.dtype).tiny).view(-1, 1, 1)
        if k in wanted:
            products[k] = M
    U = top_left_singular_vectors(torch.stack([products[int(k)] for k in ks_t], 1), r)
    delta = delta_T.to(dtype).unsqueeze(1).unsqueeze(-1)  # (B, 1, N, 1)
    captured = (U.mH @ delta).squeeze(-1).abs().pow(2).sum(-1)
    return Alignment(ks_t, captured / delta.abs().pow(2).sum((-2, -1)), r / N)
