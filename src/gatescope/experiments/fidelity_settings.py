"""The paper code's transport settings, shared by every experiment that forms transport
products from the split (docs/fidelity.md#switches)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from ..cells.base import RecurrentCell
from ..dynamics.gate_term import applicable_gate_term
from .base import Settings


class TransportFidelity(Settings):
    """``product_order`` and ``gate_term``: the chain rule by default, the paper code's
    defects on request."""

    product_order: Literal["chain", "reversed"] = Field(
        "chain", description="transport product order; reversed = the paper code's defect")
    gate_term: Literal["previous", "updated"] = Field(
        "previous", description="gate term of scalar_gate/multi_gate Jacobians; updated = the "
        "paper code's phi(a_t) - h_t (other cells have no such term)")

    def transport_options(self, cell: RecurrentCell) -> dict[str, Any]:
        """The :class:`~gatescope.probes.ProbeContext` options for ``cell``."""
        return {"product_order": self.product_order,
                "gate_term": applicable_gate_term(cell, self.gate_term)}
