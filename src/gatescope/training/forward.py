"""Per-seed losses of E models at once, from parameters stacked along a leading dimension.

Two interchangeable ways compute the ``(E,)`` losses of stacked parameters
``{name: (E, *shape)}`` on stacked batches ``u (E, B, T, m)``, ``y (E, B, ...)``:

* ``"vmap"`` works for any model with ``forward(u) -> predictions`` and
  ``loss_from_predictions(pred, y, mask) -> scalar`` (the :class:`~gatescope.SequenceModel`
  protocol): ``torch.func.vmap`` of ``torch.func.functional_call`` over the seeds.
* ``"batched"`` runs a :class:`~gatescope.SequenceModel` *natively* on ``(E, B, ...)``
  tensors: the cell's step function treats ``E`` as one more leading batch dimension, and
  the stacked weights enter through ``F.linear`` as batched matrix products. It skips vmap's
  per-operation overhead, which on a CPU is most of the cost of small recurrent models. It
  applies when every parameter is used *only* as the weight or bias of ``F.linear`` (true of
  all gatescope cells and the ``nn.Linear`` readout): parameters are handed to the model as
  :class:`StackedParameter` views, which raise :class:`NotBatchable` on any other use.

:func:`ensemble_loss` picks ``"batched"`` when it applies and gives the same losses as
``"vmap"`` on a probe batch, and ``"vmap"`` otherwise. Both compute, per seed, exactly the
operations of the model run alone, up to floating-point rounding of batched products.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap
from torch.nn import functional as F

from ..model import SequenceModel
from .fused_lstm import fused_lstm_applies, fused_lstm_states

MODES = ("auto", "batched", "vmap")

#: ``(params, buffers, u, y, mask) -> (E,)`` per-seed losses.
LossFunction = Callable[[dict[str, Tensor], dict[str, Tensor], Tensor, Tensor, Tensor | None],
                        Tensor]


class NotBatchable(RuntimeError):
    """The model uses a parameter in a way the ``"batched"`` mode cannot stack."""


class StackedParameter(Tensor):
    """A ``(E, *shape)`` stacked parameter that only ``F.linear`` may consume.

    ``F.linear(x, W, b)`` with ``x (E, ..., in)``, ``W (E, out, in)``, ``b (E, out)`` becomes
    one batched product; every other operation on the tensor raises :class:`NotBatchable`.
    """

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func is F.linear:
            with torch._C.DisableTorchFunctionSubclass():
                return ensemble_linear(*args, **(kwargs or {}))
        name = getattr(func, "__qualname__", getattr(func, "__name__", repr(func)))
        raise NotBatchable(f"a stacked parameter was passed to {name}; only F.linear can "
                           "take one")


def ensemble_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear`` with one weight per seed.

    Args:
        x: ``(E, ..., in)``.
        weight: ``(E, out, in)``.
        bias: ``(E, out)`` or ``None``.

    Returns:
        ``(E, ..., out)``; entry ``e`` is ``F.linear(x[e], weight[e], bias[e])``.
    """
    if (weight.dim() != 3 or x.dim() < 3 or x.shape[0] != weight.shape[0]
            or (bias is not None and bias.dim() != 2)):
        raise NotBatchable(f"F.linear of input {tuple(x.shape)} with stacked weight "
                           f"{tuple(weight.shape)}: expected (E, ..., in), (E, out, in) and "
                           "a bias (E, out)")
    flat = x if x.dim() == 3 else x.reshape(x.shape[0], -1, x.shape[-1])
    out = (torch.bmm(flat, weight.mT) if bias is None
           else torch.baddbmm(bias.unsqueeze(1), flat, weight.mT))
    return out if x.dim() == 3 else out.reshape(*x.shape[:-1], weight.shape[1])


class _BatchedSequenceModel(nn.Module):
    """Runs its child ``model`` (a SequenceModel) on ``u (E, B, T, m)`` with stacked weights."""

    def __init__(self, model: SequenceModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, u: Tensor) -> Tensor:
        """Predictions ``(E, B, out)`` (readout "last") or ``(E, B, T, out)`` ("all")."""
        last = self.model.readout_kind == "last"
        states = (self._fused_lstm_states(u, last) if fused_lstm_applies(self.model.cell)
                  else self._unrolled_states(u, last))
        # ``predict`` reads time from dim 1: hand it (E, T+1, B, N) so E acts as its batch.
        if last:
            return self.model.predict(states)
        return self.model.predict(states).transpose(1, 2)

    def _unrolled_states(self, u: Tensor, last: bool) -> Tensor:
        """``(E, T+1, B, N)`` states from the cell's own step, or ``(E, 1, B, N)`` (the
        last) when ``last``."""
        cell = self.model.cell
        E, B = u.shape[:2]
        h = cell.initial_state(B, u[0]).expand(E, B, cell.state_size)
        states = [h]
        for u_t in u.permute(2, 0, 1, 3).contiguous():  # (E, B, m) per step, contiguous
            h = cell(h, u_t)
            states.append(h)
        return h.unsqueeze(1) if last else torch.stack(states, dim=1)

    def _fused_lstm_states(self, u: Tensor, last: bool) -> Tensor:
        """The same states' ``h`` part (all a readout reads) from the fused LSTM recurrence
        (:mod:`gatescope.training.fused_lstm`): ``(E, T+1, B, n)`` or ``(E, 1, B, n)``."""
        cell = self.model.cell
        weights = [_plain(getattr(cell, k))
                   for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        states = fused_lstm_states(u, *weights, last_only=last)
        return states.unsqueeze(1) if last else states


def _plain(t: Tensor | None) -> Tensor | None:
    """A stacked parameter as a plain tensor (same data, same autograd graph), for code
    that handles the stacking itself."""
    if t is None:
        return None
    with torch._C.DisableTorchFunctionSubclass():
        return t.as_subclass(Tensor)


def vmap_loss(template: nn.Module) -> LossFunction:
    """The ``"vmap"`` loss function of models shaped like ``template``."""

    def seed_loss(params, buffers, u, y, mask):
        pred = functional_call(template, (params, buffers), (u,))
        return template.loss_from_predictions(pred, y, mask)

    def losses(params, buffers, u, y, mask):
        in_dims = (0, 0, 0, 0, None if mask is None else 0)
        return vmap(seed_loss, in_dims=in_dims)(params, buffers, u, y, mask)

    return losses


def batched_loss(template: SequenceModel) -> LossFunction:
    """The ``"batched"`` loss function of SequenceModels shaped like ``template``."""
    runner = _BatchedSequenceModel(template)
    per_seed = template.loss_from_predictions

    def losses(params, buffers, u, y, mask):
        if buffers:
            raise NotBatchable("the batched mode takes models without buffers")
        views = {f"model.{k}": v.as_subclass(StackedParameter) for k, v in params.items()}
        pred = functional_call(runner, views, (u,))
        in_dims = (0, 0, None if mask is None else 0)
        return vmap(per_seed, in_dims=in_dims)(pred, y, mask)

    return losses


def ensemble_loss(template: nn.Module, mode: str, params: dict[str, Tensor],
                  buffers: dict[str, Tensor], probe: tuple[Tensor, Tensor, Tensor | None]
                  ) -> tuple[LossFunction, str]:
    """The loss function for ``mode`` and the mode actually used.

    Args:
        template: one model of the ensemble (its parameter values are not used).
        mode: ``"batched"``, ``"vmap"``, or ``"auto"``: ``"batched"`` if the model is a
            SequenceModel without buffers whose parameters all enter through ``F.linear``,
            and its losses on ``probe`` match ``"vmap"`` 's, else ``"vmap"``.
        params, buffers: stacked ``(E, ...)`` tensors, for the probe.
        probe: a small stacked batch ``(u, y, mask)``.

    Raises:
        ValueError: unknown mode, or ``"batched"`` asked for a model it cannot run.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}; got {mode!r}")
    if mode == "vmap":
        return vmap_loss(template), "vmap"
    if not isinstance(template, SequenceModel):
        if mode == "batched":
            raise ValueError("mode 'batched' needs a SequenceModel; use 'vmap' or 'auto'")
        return vmap_loss(template), "vmap"
    batched, reference = batched_loss(template), vmap_loss(template)
    with torch.no_grad():
        try:
            got = batched(params, buffers, *probe)
        except NotBatchable as err:
            if mode == "batched":
                raise ValueError(f"mode 'batched' cannot run this model: {err}") from None
            return reference, "vmap"
        if mode == "batched":
            return batched, "batched"
        want = reference(params, buffers, *probe)
    tol = 1e-9 if got.dtype == torch.float64 else 1e-4
    same = torch.allclose(got, want, rtol=tol, atol=tol, equal_nan=True)
    return (batched, "batched") if same else (reference, "vmap")
