"""``SequenceModel``: a recurrent cell with a linear readout and a loss."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .cells.base import RecurrentCell

READOUTS = ("last", "all")
LOSSES = ("mse", "cross_entropy")


class SequenceModel(nn.Module):
    """Cell + ``nn.Linear`` readout of ``h`` (the first ``hidden_size`` state entries).

    Args:
        cell: the recurrent cell (child module ``cell``).
        output_size: readout width (classes for ``cross_entropy``).
        readout: ``"last"`` reads ``h_T`` only; ``"all"`` reads every ``h_1..h_T``.
        loss: ``"mse"`` or ``"cross_entropy"`` (mean reduction).
        bias: whether the readout has a bias.
    """

    def __init__(self, cell: RecurrentCell, output_size: int = 1, readout: str = "last",
                 loss: str = "mse", bias: bool = True) -> None:
        super().__init__()
        if readout not in READOUTS:
            raise ValueError(f"readout must be one of {READOUTS}, got {readout!r}")
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        self.cell = cell
        self.readout_kind = readout
        self.loss_kind = loss
        self.readout = nn.Linear(cell.hidden_size, output_size, bias=bias)
        self.readout.to(dtype=next(cell.parameters()).dtype,
                        device=next(cell.parameters()).device)

    def predict(self, states: Tensor) -> Tensor:
        """Predictions from states ``(B, T+1, N)``: ``(B, out)`` ("last") or ``(B, T, out)``."""
        h = states[..., : self.cell.hidden_size]
        return self.readout(h[:, -1] if self.readout_kind == "last" else h[:, 1:])

    def forward(self, u: Tensor, h0: Tensor | None = None) -> Tensor:
        """Predictions for inputs ``u`` ``(B, T, m)``; see :meth:`predict`."""
        return self.predict(self.cell.unroll(u, h0).states)

    def loss_from_predictions(self, pred: Tensor, y: Tensor, mask: Tensor | None = None) -> Tensor:
        """Scalar loss, mean over batch (and over unmasked steps for readout "all").

        Args:
            pred: ``(B, out)`` or ``(B, T, out)``.
            y: same shape as ``pred`` for ``mse`` (the trailing ``out = 1`` may be omitted);
                class indices ``(B,)`` or ``(B, T)`` of an integer dtype for ``cross_entropy``.
            mask: optional ``(B, T)`` weights of the steps that count (readout "all").

        Raises:
            TypeError: for ``cross_entropy`` targets that are not of an integer dtype (a
                float label such as ``1.7`` is refused, not truncated to class 1).
            ValueError: for targets or a mask of the wrong shape.
        """
        self._check_target_dtype(y)
        steps = pred.shape[:-1]  # (B,) or (B, T)
        if mask is not None and (self.readout_kind == "last" or tuple(mask.shape) != steps):
            raise ValueError(f"mask must have shape {tuple(steps)} (one weight per step, "
                             f"readout 'all' only); got {tuple(mask.shape)} for readout "
                             f"{self.readout_kind!r}")
        if self.loss_kind == "cross_entropy":
            if tuple(y.shape) != tuple(steps):
                raise ValueError(f"y must hold class indices of shape {tuple(steps)}; "
                                 f"got {tuple(y.shape)}")
            per = F.cross_entropy(pred.reshape(-1, pred.shape[-1]), y.reshape(-1).long(),
                                  reduction="none").reshape(y.shape)
        else:
            if y.shape != pred.shape and y.shape == pred.shape[:-1]:
                y = y.unsqueeze(-1)
            if y.shape != pred.shape:
                raise ValueError(f"y must have the predictions' shape {tuple(pred.shape)} "
                                 f"(or {tuple(steps)}); got {tuple(y.shape)}")
            per = F.mse_loss(pred, y.to(pred.dtype), reduction="none").mean(-1)
        if mask is None:
            return per.mean()
        mask = mask.to(per.dtype)
        return (per * mask).sum() / mask.sum().clamp_min(1)

    def _check_target_dtype(self, y: Tensor) -> None:
        """Class indices must have an integer dtype (not bool, float or complex)."""
        if self.loss_kind == "cross_entropy" and (
                y.is_floating_point() or y.is_complex() or y.dtype == torch.bool):
            raise TypeError(f"y must hold class indices of an integer dtype (e.g. torch.long) "
                            f"for loss 'cross_entropy'; got {y.dtype}")

    def loss_from_states(self, states: Tensor, y: Tensor, mask: Tensor | None = None) -> Tensor:
        """Loss from states ``(B, T+1, N)``; what lag-resolved BPTT differentiates."""
        return self.loss_from_predictions(self.predict(states), y, mask)

    def loss(self, u: Tensor, y: Tensor, mask: Tensor | None = None,
             h0: Tensor | None = None) -> Tensor:
        """Scalar loss of the predictions for ``u`` against ``y`` (see
        :meth:`loss_from_predictions`); ``y``'s dtype is checked before the forward pass."""
        self._check_target_dtype(y)
        return self.loss_from_predictions(self(u, h0), y, mask)
