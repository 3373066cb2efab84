"""``gs.inspect`` takes the structured path for diagonal and rotation-block cells (issue 12):
its sampled rates and transport norms equal the dense path's (the same cell with its
structure hidden, so ``diag(J)`` and the matrix-free Lanczos norms run) in float64, with
and without lengths, and the dense pieces are never called for a structured cell."""

from __future__ import annotations

import copy

import pytest
import torch

import gatescope as gs
from gatescope.inspection import quantities as Q
from gatescope.inspection.quantities import InspectContext
from gatescope.inspection.sampled import structured_transport_norms
from gatescope.model import SequenceModel

T = 12
END_TIMES = (3, 6, 9, 12)
RATE_LAGS = (1, 2, 3, 5, 8, 12)
TRANSPORT_LAGS = (1, 2, 4, 6)
TRANSPORT_ENDS = (6, 9, 12)
LENGTHS = torch.tensor([12, 7, 4])

#: (registry name, options): min_gru both without and with output rows (W_out), the LRU's
#: rotation blocks with its output map, rg_lru's input-dependent diagonal.
CELLS = [("min_gru", {}), ("min_gru", {"expansion_factor": 2.0}), ("lru", {}),
         ("rg_lru", {})]


def structure_hidden(cell: gs.RecurrentCell) -> gs.RecurrentCell:
    """A copy of ``cell`` whose ``jacobian_structure`` is ``None``: the dense path."""
    dense = copy.deepcopy(cell)
    dense.__class__ = type(f"Dense{type(cell).__name__}", (type(cell),),
                           {"jacobian_structure": lambda self, traj: None})
    return dense


def context(cell: gs.RecurrentCell, x: torch.Tensor, lengths) -> InspectContext:
    B = x.shape[0]
    return InspectContext(model=SequenceModel(cell), u=x, y=x.new_zeros(B, 1), mask=None,
                          lengths=lengths, optimizer=None, lags=tuple(range(1, T + 1)),
                          rank=1, samples_per_lag=1, step=0, rate_lags=RATE_LAGS,
                          end_times=END_TIMES, transport_lags=TRANSPORT_LAGS,
                          transport_starts=TRANSPORT_ENDS)


def refuse(*_, **__):
    raise AssertionError("the dense path ran for a structured cell")


@pytest.fixture
def exact_lanczos(monkeypatch):
    """Both paths' Lanczos run to (near) exactness, so the norms can agree to 1e-10."""
    monkeypatch.setattr(Q, "TRANSPORT_RTOL", 1e-14)


@pytest.mark.parametrize("with_lengths", [False, True])
@pytest.mark.parametrize(("name", "options"), CELLS)
def test_structured_rates_and_transport_equal_the_dense_path(monkeypatch, exact_lanczos,
                                                             name, options, with_lengths):
    torch.manual_seed(0)
    cell = gs.make_cell(name, 3, 5, dtype=torch.float64, **options)
    x = torch.randn(3, T, 3, dtype=torch.float64)
    lengths = LENGTHS if with_lengths else None
    dense = context(structure_hidden(cell), x, lengths)
    assert dense.structure is None
    envelope_d, kept_d = dense.sampled_rates
    transport_d = Q.sampled_transport_norms(dense)

    structured = context(cell, x, lengths)
    assert structured.structure is not None
    monkeypatch.setattr(Q, "retained_diagonal_chunked", refuse)
    monkeypatch.setattr(Q, "end_time_rates", refuse)
    monkeypatch.setattr(Q, "transport_norms", refuse)
    envelope_s, kept_s = structured.sampled_rates
    transport_s = Q.sampled_transport_norms(structured)

    assert kept_s.shape == kept_d.shape == (3, len(END_TIMES), len(RATE_LAGS),
                                            cell.retention_size)
    torch.testing.assert_close(envelope_s, envelope_d, rtol=1e-10, atol=0, equal_nan=True)
    torch.testing.assert_close(kept_s, kept_d, rtol=1e-10, atol=0, equal_nan=True)
    assert kept_s[:, 0, RATE_LAGS.index(5)].isnan().all()  # ℓ = 5 > t = 3
    if with_lengths:  # t = 9 is past the third sequence's length 4: left out
        assert kept_s[2, 2].isnan().all() and not kept_s[0, 2, 0].isnan().any()
    for key in ("sampled_transport_norm", "transport_norm_converged"):
        torch.testing.assert_close(transport_s[key], transport_d[key], rtol=1e-10, atol=0)
    assert float(transport_s["transport_norm_converged"]) == 1.0


def test_rotation_rates_at_lag_one_are_the_modulus_times_cos_theta():
    """Order 1 at ``ℓ = 1``: ``μ = μ⁰ (1 + cos θ - 1) = m cos θ`` on both entries of each
    block (written out from the LRU's parameters, not from its structure)."""
    torch.manual_seed(1)
    cell = gs.make_cell("lru", 3, 4, dtype=torch.float64)
    ctx = context(cell, torch.randn(2, T, 3, dtype=torch.float64), None)
    _, kept = ctx.sampled_rates
    with torch.no_grad():
        per_channel = torch.exp(-torch.exp(cell.nu_log)) * torch.cos(torch.exp(cell.theta_log))
    expected = per_channel.repeat_interleave(2).expand(2, len(END_TIMES), -1)
    torch.testing.assert_close(kept[:, :, RATE_LAGS.index(1)], expected, rtol=1e-12, atol=0)


def test_inspect_reports_the_same_numbers_on_either_path(exact_lanczos):
    torch.manual_seed(2)
    cell = gs.make_cell("rg_lru", 3, 6, dtype=torch.float64)
    x = torch.randn(3, 40, 3, dtype=torch.float64)
    settings = dict(quiet=True, lyapunov_count=0, end_times=5, rate_lags=6, lengths=LENGTHS * 3)
    fast = gs.inspect(cell, x, **settings).summary["units"][0]
    slow = gs.inspect(structure_hidden(cell), x, **settings).summary["units"][0]
    for section, key in (("envelope", "values"), ("dispersion", "cv"), ("transport", "norms")):
        torch.testing.assert_close(torch.tensor(fast[section][key]),
                                   torch.tensor(slow[section][key]), rtol=1e-10, atol=0,
                                   equal_nan=True)


def test_structured_transport_norms_refuse_end_times_before_the_longest_lag():
    cell = gs.make_cell("min_gru", 3, 5, dtype=torch.float64)
    ctx = context(cell, torch.randn(2, T, 3, dtype=torch.float64), None)
    with pytest.raises(ValueError, match=r"ends must be ints with max\(lags\)=6"):
        structured_transport_norms(ctx.structure, [4, 12], [1, 6], 1e-3)


@pytest.mark.parametrize("with_lengths", [False, True])
def test_mamba_sampled_rates_take_its_retention_structure(monkeypatch, with_lengths):
    """Mamba's full Jacobian is not structured (its transport norms stay dense), but its SSM
    state's block is: the sampled rates come from the retention structure, equal to the
    dense recursion on diag(J), without computing diag(J)."""
    torch.manual_seed(0)
    cell = gs.make_cell("mamba", 3, 2, dtype=torch.float64, d_state=3, expand=2)
    x = torch.randn(3, T, 3, dtype=torch.float64)
    lengths = LENGTHS if with_lengths else None
    dense_cell = copy.deepcopy(cell)
    dense_cell.__class__ = type("DenseMamba", (type(cell),),
                                {"retention_structure": lambda self, traj: None})
    dense = context(dense_cell, x, lengths)
    envelope_d, kept_d = dense.sampled_rates
    structured = context(cell, x, lengths)
    assert structured.structure is None and structured.retention_structure is not None
    monkeypatch.setattr(Q, "retained_diagonal_chunked", refuse)
    monkeypatch.setattr(Q, "end_time_rates", refuse)
    envelope_s, kept_s = structured.sampled_rates
    assert torch.equal(envelope_s.isnan(), envelope_d.isnan())
    torch.testing.assert_close(envelope_s.nan_to_num(), envelope_d.nan_to_num(), rtol=1e-10,
                               atol=1e-300)
    torch.testing.assert_close(kept_s.nan_to_num(), kept_d.nan_to_num(), rtol=1e-10,
                               atol=1e-300)
