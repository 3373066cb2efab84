"""Independent references shared by several tests: values obtained from autograd or from a
real ``optimizer.step()``, never from the formula the implementation uses."""

from __future__ import annotations

import copy

import torch
from torch.func import jacrev, vmap


def post_update_gate_term(cell, traj) -> torch.Tensor:
    """The paper code's "updated" gate term by autograd: ``(B, T, n, n)``.

    The gate-induced part of ``∂h_t/∂h_{t-1}`` is the derivative of ``g(h) ⊙ (φ_t - s)`` in
    the state ``h`` the gate reads, at ``h = h_{t-1}``, with the candidate ``φ_t`` and the
    state ``s`` the gate weighs held fixed. The chain rule has ``s = h_{t-1}``; the paper code
    evaluates it at the post-update state ``s = h_t``, which is what this returns. The gate is
    the cell's own step (``cell.compute``), differentiated by ``torch.func``.

    Args:
        cell: a gated tanh cell (``scalar_gate`` or ``multi_gate``).
        traj: its trajectory.
    """
    u = traj.inputs.detach()
    h_prev, h_post = traj.states[:, :-1].detach(), traj.states[:, 1:].detach()
    phi = traj.cache["phi"].detach()

    def weighted_gate(h, u_t, phi_t, s):
        return cell.compute(h, u_t)["gate"] * (phi_t - s)

    per_step = vmap(vmap(jacrev(weighted_gate)))  # over batch, then time
    return per_step(h_prev, u, phi, h_post)


def steady_state_step_sizes(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                            steps: int = 400, **frozen) -> dict[torch.nn.Parameter, torch.Tensor]:
    """Per-parameter step sizes measured from real ``optimizer.step()`` calls.

    A copy of the model and optimizer (the originals are left untouched) is stepped
    ``steps`` times with one fixed random gradient ``g``; the step size is
    ``-Δθ / g`` of the last step, i.e. the parameter change per unit gradient once momentum
    buffers have settled. ``frozen`` overrides hyperparameters of the copy that would move the
    preconditioner during those steps (e.g. ``alpha=1.0`` freezes RMSprop's square average),
    so the measured step size is the one the optimizer state describes now.

    Returns:
        ``{parameter of model: step size}`` with the parameter's shape.
    """
    twin = copy.deepcopy(model)
    index = {id(p): i for i, p in enumerate(model.parameters())}
    twin_params = list(twin.parameters())
    opt = type(optimizer)([{"params": [twin_params[index[id(p)]] for p in group["params"]]}
                           for group in optimizer.param_groups], **optimizer.defaults)
    opt.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    for group in opt.param_groups:
        group.update(frozen)
    gen = torch.Generator().manual_seed(0)
    grads = [torch.rand(p.shape, generator=gen, dtype=p.dtype) + 0.5 for p in twin.parameters()]
    for _ in range(steps):
        before = [p.detach().clone() for p in twin.parameters()]
        for p, g in zip(twin.parameters(), grads, strict=True):
            p.grad = g.clone()
        opt.step()
    return {p: (b - q.detach()) / g for p, q, b, g in
            zip(model.parameters(), twin.parameters(), before, grads, strict=True)}


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (``0 <= q <= 100``) of a non-empty list, interpolated
    linearly between the two closest ranks (numpy's default, written out in plain Python so
    it can check numpy-based aggregates): rank ``q/100 · (n - 1)`` of the sorted values."""
    ordered = sorted(values)
    rank = q / 100 * (len(ordered) - 1)
    lo = int(rank)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (rank - lo)
