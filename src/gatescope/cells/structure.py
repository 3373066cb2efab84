"""A cell's declaration that its per-step Jacobian is diagonal or 2×2-block diagonal on an
inner state, so transport needs no dense ``N × N`` matrix (docs/maths.md#structured-jacobians).

The state is ``[y_t (n_out); x_t (b·K)]``: ``K`` inner channels of block size ``b ∈ {1, 2}``
(interleaved for ``b = 2``), and an optional output ``y_t = C x_t (+ terms of u_t)`` in front.
The step Jacobian is then

    J_t = [[0, C Λ_t], [0, Λ_t]]        (just Λ_t without an output)

with ``Λ_t = diag(m_t)`` for ``b = 1`` and ``Λ_t = blockdiag(m_{t,q} R(θ_{t,q}))`` for
``b = 2``, ``R(θ) = [[cos θ, -sin θ], [sin θ, cos θ]]``.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class JacobianStructure:
    """The per-step Jacobians of a diagonal or rotation-block recurrence, in ``O(B·T·K)``.

    Attributes:
        modulus: ``(B, T, K)`` real, ``>= 0``: ``m_{t,q}``, step ``t`` at index ``t - 1``. It
            is the cell's retention on channel ``q`` (each of a block's two entries retains
            ``m``), so the effective learning rates read it as ``r``.
        angle: ``(B, T, K)`` the rotation angle ``θ_{t,q}`` of each 2×2 block (``block = 2``),
            or ``None`` (``block = 1``: ``Λ_t = diag(m_t)``, a nonnegative diagonal).
        output_map: ``C`` ``(n_out, b·K)``, the output rows' map of the inner state, or
            ``None`` when the state is the inner state alone.
    """

    modulus: Tensor
    angle: Tensor | None = None
    output_map: Tensor | None = None

    def __post_init__(self) -> None:
        if self.modulus.dim() != 3:
            raise ValueError(f"modulus must be (B, T, K), got shape {tuple(self.modulus.shape)}")
        if self.angle is not None and self.angle.shape != self.modulus.shape:
            raise ValueError(f"angle must have the modulus' shape {tuple(self.modulus.shape)}, "
                             f"got {tuple(self.angle.shape)}")
        if self.output_map is not None and (self.output_map.dim() != 2 or
                                            self.output_map.shape[1] != self.inner_size):
            raise ValueError(f"output_map must be (n_out, inner_size={self.inner_size}), got "
                             f"shape {tuple(self.output_map.shape)}")

    @property
    def block(self) -> int:
        """``b``: 1 for a diagonal, 2 for rotation blocks."""
        return 1 if self.angle is None else 2

    @property
    def inner_size(self) -> int:
        """``b·K``, the inner state entries (the last ones of the state)."""
        return self.block * self.modulus.shape[-1]

    @property
    def output_size(self) -> int:
        """``n_out``, the output entries leading the state (``0`` without an output map)."""
        return 0 if self.output_map is None else self.output_map.shape[0]
