"""Numeric edge cases and clear library errors (the defects found on main at 5c763dd).

Each test says what it guards; every one failed on 5c763dd.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import random_cell, random_inputs
from torch import nn

import gatescope as gs
from gatescope.dynamics import expansion as expansion_module
from gatescope.dynamics import transport as transport_module
from gatescope.dynamics.gate_term import gate_split
from gatescope.dynamics.spectral import RTOL, top_singular_values
from gatescope.dynamics.transport import chain_ordered, ordered_sensitivities
from gatescope.experiments.expansion import ExpansionExperiment, ExpansionSettings
from gatescope.measures.anisotropy import singular_values

REAL = (torch.float32, torch.float64)
COMPLEX = (torch.complex64, torch.complex128)


def _reference(J: torch.Tensor) -> torch.Tensor:
    """``‖M_{t,k}‖_2`` pair by pair by LAPACK in double precision (NaN above the diagonal)."""
    Jd = J.to(torch.complex128 if J.is_complex() else torch.float64)
    Bsz, T = J.shape[:2]
    S = torch.full((Bsz, T + 1, T + 1), float("nan"), dtype=torch.float64)
    for t in range(T + 1):
        for k in range(t + 1):
            S[:, t, k] = torch.linalg.matrix_norm(gs.transport(Jd, t, k), 2)
    return S


def _assert_lower_close(S, ref, rtol):
    lower = torch.tril_indices(S.shape[1], S.shape[2])
    torch.testing.assert_close(S[:, lower[0], lower[1]], ref[:, lower[0], lower[1]],
                               rtol=rtol, atol=0)


def _random_stack(dtype, B=2, T=7, N=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    real = dtype.to_real()
    J = torch.randn(B, T, N, N, generator=gen, dtype=real) / N**0.5
    if dtype.is_complex:
        J = torch.complex(J, torch.randn(B, T, N, N, generator=gen, dtype=real) / N**0.5)
    return J


# --- 1. exact zeros in J (a saturated tanh step) -------------------------------------------


@pytest.mark.parametrize("dtype", REAL)
def test_sensitivities_through_a_zero_jacobian_are_zero_and_exact(dtype):
    """Guards the renormalisation floor: float64's ``tiny`` is 0 in float32, so a zero
    product became 0/0 = NaN and the next eigensolve raised _LinAlgError."""
    J = _random_stack(dtype, B=1, T=6, N=3)
    J[0, 4] = 0  # J_5 = 0: every product through step 5 is exactly zero
    S = gs.sensitivities(J)
    for t in range(5, 7):
        for k in range(5):
            assert S[0, t, k] == 0, (t, k)
    _assert_lower_close(S, _reference(J), rtol=1e-5 if dtype == torch.float32 else RTOL)


@pytest.mark.parametrize("dtype", REAL)
def test_sensitivities_of_an_all_zero_stack_are_zero(dtype):
    """Guards the NaN at S[2,0], S[3,0], S[3,1] (truth 0) of an all-zero float32 stack."""
    S = gs.sensitivities(torch.zeros(1, 3, 2, 2, dtype=dtype))
    lower = torch.tril_indices(4, 4, offset=-1)
    assert (S[0, lower[0], lower[1]] == 0).all()
    assert (S[0].diagonal() == 1).all()


@pytest.mark.parametrize("dtype", REAL)
def test_sensitivities_of_a_saturated_plain_cell(dtype):
    """A plain tanh cell driven by a huge input saturates: J_t = 0 at that step (crashed)."""
    cell = random_cell("plain", 2, 3, False, 0, dtype=dtype)
    u = random_inputs(2, 8, 2, 0, dtype=dtype) * 0.5
    u[0, 3] = 1e4
    with torch.no_grad():
        J = gs.jacobians(cell, cell.unroll(u))
    assert (J[0, 3] == 0).all()
    S = gs.sensitivities(J)
    assert (S[0, 4:, :4] == 0).all()
    _assert_lower_close(S, _reference(J), rtol=1e-5 if dtype == torch.float32 else RTOL)


def test_certificate_stays_certified_with_zero_and_rank_deficient_steps():
    """The exact-norm certificate (relative 1e-6) holds on a float64 gated-cell stack with a
    zero step and a rank-deficient one, not just on generic stacks."""
    cell = random_cell("multi_gate", 2, 6, True, 3)
    with torch.no_grad():
        J = gs.jacobians(cell, cell.unroll(random_inputs(2, 12, 2, 3)))
    J[1, 5] = 0
    J[0, 2, :, :3] = 0
    _assert_lower_close(gs.sensitivities(J), _reference(J), rtol=RTOL)


# --- 2. complex Jacobians: the conjugate transpose ------------------------------------------


@pytest.mark.parametrize(("dtype", "rtol", "tol"), [(torch.complex64, RTOL, 1e-5),
                                                    (torch.complex128, RTOL, RTOL),
                                                    (torch.complex128, 1e-12, 1e-10)])
def test_sensitivities_of_complex_stacks_are_matrix_norms(dtype, rtol, tol):
    """Guards the transpose (not conjugate transpose) Gram: 2.64 where the norm is 3.75.
    complex128 is exact to the requested ``rtol`` (certified 1e-6 by default; 1e-10 when
    asked for 1e-12)."""
    J = _random_stack(dtype, B=2, T=9, N=5, seed=1)
    _assert_lower_close(gs.sensitivities(J, rtol=rtol), _reference(J), rtol=tol)


@pytest.mark.parametrize("dtype", COMPLEX)
def test_sensitivities_of_complex_stacks_with_a_zero_step(dtype):
    """A zero complex step gives exact zeros too (the floor uses the real precision)."""
    J = _random_stack(dtype, B=1, T=5, N=3, seed=2)
    J[0, 1] = 0
    S = gs.sensitivities(J)
    assert (S[0, 2:, :2] == 0).all()
    _assert_lower_close(S, _reference(J), rtol=1e-5)


@pytest.mark.parametrize("squarings", [0, 3])
def test_top_singular_values_of_complex_matrices_take_every_path(squarings):
    """The Ritz certificate, the Cholesky check and the eigensolve fallback all use ``ᴴ``:
    flat spectra (identity-like) need the fallbacks, random ones the iteration."""
    gen = torch.Generator().manual_seed(4)
    M = torch.randn(40, 6, 6, generator=gen, dtype=torch.complex128)
    M[:20] = torch.eye(6, dtype=M.dtype) + 1e-9 * M[:20]  # σ_1 ≈ σ_2 ≈ … : hard
    out = top_singular_values(M, squarings=squarings, iterations=1)
    torch.testing.assert_close(out.values, torch.linalg.matrix_norm(M, 2), rtol=RTOL, atol=0)


def test_transport_of_a_complex_stack_is_the_product():
    J = _random_stack(torch.complex128, B=1, T=3, N=3)
    torch.testing.assert_close(gs.transport(J, 3, 0), J[:, 2] @ J[:, 1] @ J[:, 0])


def test_propagation_anisotropy_of_complex_stacks_keeps_the_imaginary_part():
    """Guards ``.double()`` (which dropped the imaginary part) in the product sweep."""
    J = _random_stack(torch.complex128, B=1, T=4, N=4, seed=5)
    pa = gs.propagation_anisotropy(J, [3], samples_per_lag=4, r=2)
    for (b, t, k), sigma in zip(pa.samples[0].tolist(), pa.stats.sigma[0], strict=True):
        ref = torch.linalg.svdvals(gs.transport(J, t, k)[b])
        torch.testing.assert_close(sigma, ref / torch.linalg.vector_norm(ref), rtol=1e-10,
                                   atol=1e-12)


def test_transport_alignment_of_complex_stacks_uses_the_conjugate_transpose():
    """``a_r(k) = ‖U_rᴴ δ‖²/‖δ‖²`` from the SVD of the complex ``M_{T,k}``."""
    J = _random_stack(torch.complex128, B=2, T=5, N=4, seed=6)
    delta = torch.randn(2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    out = gs.transport_alignment(J, delta, ks=[1, 3], r=2)
    for i, k in enumerate([1, 3]):
        U = torch.linalg.svd(gs.transport(J, 5, k))[0][..., :2]
        d = delta.to(U.dtype).unsqueeze(-1)
        ref = (U.mH @ d).abs().pow(2).sum((-2, -1)) / delta.pow(2).sum(-1)
        torch.testing.assert_close(out.alignment[:, i], ref, rtol=1e-10, atol=1e-12)


def test_singular_values_are_real_for_complex_input():
    X = _random_stack(torch.complex64, B=1, T=1, N=3)[0, 0]
    assert singular_values(X).dtype == torch.float32


def test_complex_inputs_without_a_definition_are_refused():
    """Where complex has no cheap meaning the call says so instead of dropping imag parts."""
    with pytest.raises(TypeError, match="sigma must hold real"):
        gs.spectrum_stats(torch.ones(3, dtype=torch.complex64), r=1)
    cell = random_cell("leaky", 2, 3, False, 0)
    traj = cell.unroll(random_inputs(1, 4, 2, 0))
    with pytest.raises(TypeError, match="J must be real"):
        gs.effective_learning_rates(cell, traj, J=torch.zeros(1, 4, 3, 3, dtype=torch.complex128))


def test_expansion_ratios_of_complex_parts_are_real():
    A = _random_stack(torch.complex128, B=1, T=3, N=3)[0]
    ex = gs.first_order_expansion(A, 0.1 * A, eps=(0.1, 1.0), fit_points=2)
    assert ex.ratios.dtype == torch.float64
    torch.testing.assert_close(ex.ratios, torch.full((3,), 0.1, dtype=torch.float64))


# --- 3. silent truncation -------------------------------------------------------------------


@pytest.mark.parametrize("bad", [[1.7], [2.0], [True], [torch.tensor(1.0)], [torch.tensor(True)],
                                 torch.tensor([1.5]), 3])
def test_effective_learning_rates_refuse_non_integer_lags(bad):
    """``lags=[1.7]`` acted as lag 1 (``int(1.7)``)."""
    cell = random_cell("multi_gate", 2, 3, True, 0)
    traj = cell.unroll(random_inputs(1, 5, 2, 0))
    with pytest.raises(TypeError, match="lags must be"):
        gs.effective_learning_rates(cell, traj, lags=bad)


def test_effective_learning_rates_accept_integer_lags_of_any_kind():
    cell = random_cell("multi_gate", 2, 3, True, 0)
    traj = cell.unroll(random_inputs(1, 5, 2, 0))
    ref = gs.effective_learning_rates(cell, traj, lags=[2, 1, 3])
    for lags in ([torch.tensor(2), np.int64(1), 3], torch.tensor([2, 1, 3]),
                 torch.tensor([2, 1, 3], dtype=torch.int32)):
        torch.testing.assert_close(gs.effective_learning_rates(cell, traj, lags=lags), ref,
                                   equal_nan=True)


def test_cross_entropy_refuses_float_labels_before_the_forward_pass(monkeypatch):
    """Labels 1.7 became class 1 (``.long()``); now refused before any compute."""
    cell = random_cell("gru", 2, 3, True, 0)
    model = gs.SequenceModel(cell, output_size=3, loss="cross_entropy")
    u = random_inputs(2, 4, 2, 0)
    good = model.loss(u, torch.tensor([1, 0]))
    torch.testing.assert_close(model.loss(u, torch.tensor([1, 0], dtype=torch.int32)), good)
    monkeypatch.setattr(cell, "unroll", lambda *a: pytest.fail("forward ran"))
    for y in (torch.tensor([1.7, 0.0]), torch.tensor([1.0, 0.0], dtype=torch.float64),
              torch.tensor([True, False])):
        with pytest.raises(TypeError, match="y must hold class indices of an integer dtype"):
            model.loss(u, y)
    with pytest.raises(TypeError, match="integer dtype"):
        model.loss_from_predictions(torch.zeros(2, 3), torch.tensor([1.7, 0.0]))


class _ScaledInputGRU(nn.GRU):
    def forward(self, x, hx=None):
        return super().forward(2 * x, hx)


class _HiddenPermutingGRU(nn.GRU):
    def permute_hidden(self, hx, permutation):  # a method GRU.forward calls
        return -hx


class _InitOnlyGRU(nn.GRU):
    """Changes only the initialisation: forward is torch's, so conversion is exact."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        with torch.no_grad():
            for p in self.parameters():
                p.mul_(2)


class _StepScaledRNNCell(nn.RNNCell):
    def forward(self, x, hx=None):
        return super().forward(x, hx) * 0.5


@pytest.mark.parametrize("module_type", [_ScaledInputGRU, _HiddenPermutingGRU, _StepScaledRNNCell])
def test_from_torch_refuses_subclasses_that_change_forward(module_type):
    """A GRU subclass overriding forward was converted and then differed from it by 0.49."""
    with pytest.raises(TypeError, match=module_type.__name__):
        gs.from_torch(module_type(2, 3))


def test_from_torch_refuses_instance_overrides_and_hooks():
    gru = nn.GRU(2, 3)
    gru.forward = lambda x, hx=None: (x, hx)
    with pytest.raises(TypeError, match="overrides 'forward'"):
        gs.from_torch(gru)
    cell = nn.GRUCell(2, 3)
    cell.register_forward_hook(lambda mod, inp, out: out * 2)
    with pytest.raises(TypeError, match="forward hooks"):
        gs.from_torch(cell)


def test_from_torch_accepts_a_subclass_that_keeps_forward():
    torch.manual_seed(0)
    module = _InitOnlyGRU(2, 3, batch_first=True, dtype=torch.float64)
    x = torch.randn(2, 5, 2, dtype=torch.float64)
    out, _ = module(x)
    traj = gs.from_torch(module).unroll(x)
    torch.testing.assert_close(traj.states[:, 1:], out.detach())


# --- 11. clear errors -----------------------------------------------------------------------


def test_sensitivities_of_an_empty_batch_are_empty():
    """B = 0 raised ZeroDivisionError; empty in, empty out (like torch's batched ops)."""
    S = gs.sensitivities(torch.zeros(0, 4, 3, 3))
    assert S.shape == (0, 5, 5) and S.dtype == torch.float64


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("dtype", REAL + COMPLEX)
def test_sensitivities_refuse_non_finite_jacobians(bad, dtype):
    """NaN in J gave NaN norms or an "ill-conditioned" eigensolver error."""
    J = _random_stack(dtype, B=1, T=3, N=2)
    J[0, 1, 0, 1] = bad
    with pytest.raises(ValueError, match=r"J contains NaN/Inf \(first at index \(0, 1, 0, 1\)\)"):
        gs.sensitivities(J)


def test_sensitivities_refuse_integer_and_empty_matrices():
    with pytest.raises(TypeError, match="J must be a floating point or complex"):
        gs.sensitivities(torch.zeros(1, 2, 3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="N >= 1"):
        gs.sensitivities(torch.zeros(1, 2, 0, 0))


def test_unroll_refuses_another_dtype_than_the_cells():
    """torch's "expected m1 and m2 to have the same dtype" did not name u or the fix."""
    cell = gs.make_cell("plain", 2, 3)  # float32
    with pytest.raises(TypeError, match=r"u has dtype torch.float64 but the PlainCell's "
                                        r"parameters are torch.float32"):
        cell.unroll(torch.zeros(1, 3, 2, dtype=torch.float64))
    with pytest.raises(TypeError, match="h0 has dtype torch.float64"):
        cell.unroll(torch.zeros(1, 3, 2), h0=torch.zeros(1, 3, dtype=torch.float64))


def test_jacobians_refuse_a_trajectory_of_another_cell():
    """``KeyError: 'reset'`` for a plain trajectory given to a GRU."""
    plain, gru = random_cell("plain", 2, 3, True, 0), random_cell("gru", 2, 3, True, 0)
    traj = plain.unroll(random_inputs(1, 3, 2, 0))
    for fn in (gs.jacobians, gs.jacobian_split, gs.jacobians_autograd,
               gs.jacobian_split_autograd):
        with pytest.raises(ValueError, match="traj was made by a PlainCell, not by this GRUCell"):
            fn(gru, traj)
        with pytest.raises(ValueError, match="traj was made by a PlainCell"):
            fn(gru, traj.detach())
    wider = random_cell("plain", 2, 4, True, 0)
    with pytest.raises(ValueError, match="state size 3 .* state_size=4"):
        gs.jacobians(wider, traj)
    assert gs.jacobians(random_cell("plain", 2, 3, True, 1), traj).shape == (1, 3, 3, 3)


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"hidden_size": 2.5}, TypeError, r"hidden_size must be an int >= 1, got 2.5"),
    ({"hidden_size": 0}, ValueError, r"hidden_size must be an int >= 1, got 0"),
    ({"input_size": True}, TypeError, r"input_size must be an int >= 1, got True"),
    ({"input_size": "3"}, TypeError, r"input_size must be an int"),
])
def test_make_cell_refuses_non_integer_sizes(kwargs, error, match):
    """``hidden_size=2.5`` surfaced as torch.empty's "tuple of ints" error."""
    sizes = {"input_size": 2, "hidden_size": 3, **kwargs}
    for name in ("plain", "gru", "lstm", "multi_gate"):
        with pytest.raises(error, match=match):
            gs.make_cell(name, **sizes)


def test_make_cell_accepts_numpy_and_tensor_ints():
    cell = gs.make_cell("gru", np.int64(2), torch.tensor(3))
    assert (cell.input_size, cell.hidden_size) == (2, 3)
    assert type(cell.hidden_size) is int


# --- one product helper, one reversed order -------------------------------------------------


def _previous_transport(J, t, k):
    """The formula of 5c763dd's ``transport``: identity times each factor in turn."""
    M = torch.eye(J.shape[-1], dtype=J.dtype).expand(J.shape[0], -1, -1)
    for s in range(k + 1, t + 1):
        M = J[:, s - 1] @ M
    return M.clone()


def test_transport_and_expansion_share_one_product():
    assert expansion_module.ordered_product is transport_module.ordered_product
    J = _random_stack(torch.float64, B=3, T=8, N=5, seed=8)
    for t in range(9):
        for k in range(t + 1):
            M = gs.transport(J, t, k)
            torch.testing.assert_close(M, _previous_transport(J, t, k), rtol=1e-12, atol=1e-12)
            M.add_(1)  # a fresh tensor, never a view of J
    torch.testing.assert_close(J, _random_stack(torch.float64, B=3, T=8, N=5, seed=8))


def test_reversed_order_is_implemented_once_and_unchanged():
    """``chain_ordered`` is the one place of the reversed order; numbers equal 5c763dd's."""
    J = _random_stack(torch.float64, B=2, T=6, N=4, seed=9)
    assert chain_ordered(J, "chain") is J
    torch.testing.assert_close(chain_ordered(J, "reversed"), J.flip(1), rtol=0, atol=0)
    previous = gs.sensitivities(J.flip(1)).flip(1, 2).transpose(1, 2)
    torch.testing.assert_close(ordered_sensitivities(J, "reversed"), previous, rtol=1e-12,
                               atol=1e-12, equal_nan=True)
    with pytest.raises(ValueError, match="product order must be one of"):
        chain_ordered(J, "backwards")


def test_expansion_experiment_reversed_order_is_unchanged(tmp_path):
    """The ``expansion`` experiment's reversed order, against 5c763dd's ``A.flip(1)``."""
    settings = ExpansionSettings(seeds=1, seq_len=12, hidden_size=6, product_order="reversed")
    exp = ExpansionExperiment()
    group = exp.groups(settings)[0]
    rows = exp.run_group(settings, group, tmp_path, lambda done, total: None)
    gen = torch.Generator().manual_seed(0)  # seed 0, as run_group draws it
    cell = gs.make_cell(group.cell, settings.input_size, settings.hidden_size,
                        dtype=torch.float64)
    with torch.no_grad():
        for p in cell.parameters():
            p.copy_(settings.weight_std * torch.randn(p.shape, generator=gen, dtype=torch.float64))
        from gatescope.experiments.expansion import sinusoid_inputs
        u = sinusoid_inputs(settings.seq_len, settings.input_size, settings.noise_std, gen,
                            torch.float64)
        A, B = gate_split(cell, cell.unroll(u))
    ex = gs.first_order_expansion(A.flip(1)[0], B.flip(1)[0], settings.eps, settings.fit_points)
    errors = [r["value"] for r in rows if r["metric"] == "truncation_error"]
    torch.testing.assert_close(torch.tensor(errors, dtype=torch.float64), ex.error,
                               rtol=1e-12, atol=1e-12)
