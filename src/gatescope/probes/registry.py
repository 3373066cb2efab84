"""The quantity registry: what a probe, an experiment and ``gatescope list`` can measure.

A quantity is a function ``(context) -> {metric name: array}`` of a
:class:`~gatescope.probes.context.ProbeContext`, declared once with the
:class:`~gatescope.metrics.Metric` s it produces. The same declaration serves a probe in a
user's training loop (one array per metric and step), the experiments' ``results.csv`` (one
row per metric entry, see :mod:`gatescope.probes.rows`) and ``gatescope list metrics``. Every
quantity has a cost rank, and the presets are cost cuts: ``"cheap"`` takes the quantities of
rank ``<= CHEAP_COST`` and ``"full"`` all of them, both in cost order (ties in registration
order). See ``docs/adding-a-quantity.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..metrics import Metric
from ..registry import Registry

#: The highest cost rank in the ``"cheap"`` preset. Ranks used by the built-ins: ``0`` reads
#: the forward pass or the optimizer state, ``1`` needs the per-step Jacobians, ``2`` products
#: of Jacobians at the probe lags, ``3`` per-example gradients, ``4`` every transport norm.
CHEAP_COST = 1
PRESETS = ("cheap", "full")

#: What a quantity function returns: arrays, tensors or numbers, one per key.
QuantityFunction = Callable[[Any], Mapping[str, Any]]


class SkipQuantity(Exception):
    """Raised by a quantity that does not apply at this call (no optimizer, an unsupported
    optimizer, one that has not stepped yet); the probe records the message as a note and its
    keys as NaN at that step."""


@dataclass(frozen=True)
class Quantity:
    """A registered quantity.

    Attributes:
        name: registry name.
        function: ``(context) -> {metric name: value}``, a subset of ``metrics`` (a metric
            that does not apply, such as a gate for a cell without one, is left out).
        cost: cost rank (see :data:`CHEAP_COST`).
        metrics: the metrics it produces, each declared once in :mod:`gatescope.metrics`.
        description: one line for listings.
    """

    name: str
    function: QuantityFunction
    cost: int
    metrics: tuple[Metric, ...]
    description: str = ""

    def metric(self, name: str) -> Metric:
        """The declared metric ``name`` of this quantity."""
        for m in self.metrics:
            if m.name == name:
                return m
        raise ValueError(f"quantity {self.name!r} returned {name!r}, which it does not "
                         f"declare; declared: {[m.name for m in self.metrics]}")


_QUANTITIES: Registry[Quantity] = Registry("quantity", Quantity, instances=True)


def register_quantity(name: str, *, cost: int, metrics: Sequence[Metric],
                      description: str = "") -> Callable[[QuantityFunction], QuantityFunction]:
    """Decorator that makes a quantity function available to probes and experiments.

    Registering a name again replaces the earlier quantity.

    Example:
        >>> @gs.register_quantity("state_norm", cost=0, metrics=[gs.declare_metric(
        ...     "state_norm_mean", "mean ‖h_t‖ over the probe batch and time")])
        ... def state_norm(ctx):
        ...     return {"state_norm_mean": ctx.trajectory.states.norm(dim=-1).mean()}
        >>> model = gs.SequenceModel(gs.make_cell("leaky", input_size=2, hidden_size=3))
        >>> probe = gs.Probe(model, torch.randn(4, 6, 2), torch.randn(4, 1),
        ...                  quantities=["state_norm"])
        >>> sorted(probe(0))
        ['state_norm_mean']

    Args:
        name: registry name; must not contain ``"/"``.
        cost: cost rank ``>= 0``; ``<= CHEAP_COST`` puts it in the ``"cheap"`` preset.
        metrics: the declared metrics (:func:`~gatescope.declare_metric`) it returns.
        description: one line for listings.
    """
    if not isinstance(name, str) or not name or "/" in name:
        raise ValueError(f"name must be a non-empty string without '/', got {name!r}")
    if isinstance(cost, bool) or not isinstance(cost, int) or cost < 0:
        raise ValueError(f"cost must be an integer >= 0, got {cost!r}")
    metrics = tuple(metrics) if not isinstance(metrics, Metric | str) else None
    if not metrics or not all(isinstance(m, Metric) for m in metrics):
        raise ValueError(f"metrics must be a non-empty list of declared metrics "
                         f"(gatescope.declare_metric), got {metrics!r}")

    def decorate(function: QuantityFunction) -> QuantityFunction:
        if not callable(function):
            raise ValueError(f"register_quantity({name!r}) expects a function, got {function!r}")
        _QUANTITIES.add(name, Quantity(name, function, cost, metrics, description))
        return function

    return decorate


def list_quantities() -> list[str]:
    """Names of the registered quantities, cheapest first (ties in registration order)."""
    return [q.name for q in sorted(_QUANTITIES.values(), key=lambda q: q.cost)]


def get_quantity(name: str) -> Quantity:
    """The quantity registered as ``name``; ``ValueError`` naming the choices otherwise."""
    return _QUANTITIES.lookup(name)


def resolve_quantities(quantities: str | Sequence[str]) -> list[Quantity]:
    """A preset name or a list of quantity names, as registered quantities in cost order.

    Raises:
        ValueError: naming ``quantities`` for an unknown preset or name, an empty list or a
            repeated name.
    """
    if isinstance(quantities, str):
        if quantities not in PRESETS:
            raise ValueError(f"quantities must be one of the presets {PRESETS} or a list of "
                             f"names from {list_quantities()}, got {quantities!r}")
        names = [n for n in list_quantities()
                 if quantities == "full" or _QUANTITIES[n].cost <= CHEAP_COST]
    else:
        names = list(quantities)
        if not names or len(set(names)) != len(names):
            raise ValueError(f"quantities must be a non-empty list of distinct names, "
                             f"got {quantities!r}")
        unknown = [n for n in names if n not in _QUANTITIES]
        if unknown:
            raise ValueError(f"quantities: unknown {unknown}; choose from {list_quantities()}")
    return sorted((_QUANTITIES[n] for n in names), key=lambda q: q.cost)
