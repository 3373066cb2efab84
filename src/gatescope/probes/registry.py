"""A name -> probe-quantity registry that users extend with their own quantities.

A quantity is a function ``(context) -> {key: array}`` of a
:class:`~gatescope.probes.context.ProbeContext`; a probe records each returned value under
``"<quantity>/<key>"``. Every quantity has a cost rank, and the presets are cost cuts:
``"cheap"`` takes the quantities of rank ``<= CHEAP_COST`` and ``"full"`` all of them, both in
cost order (ties in registration order).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

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
    """A registered probe quantity.

    Attributes:
        name: registry name, the prefix of its recorded keys.
        function: ``(context) -> {key: value}``.
        cost: cost rank (see :data:`CHEAP_COST`).
        axes: ``{key: axis}`` naming the axis of a key whose per-step value is a vector:
            ``"lag"`` (the probe's lags), ``"neuron"``, ``"level"`` (quantile levels) or
            ``"profile_lag"`` (``1..T-1``); keys not listed are scalars or unlabelled.
        description: one line for listings.
    """

    name: str
    function: QuantityFunction
    cost: int
    axes: Mapping[str, str] = field(default_factory=dict)
    description: str = ""


_QUANTITIES: dict[str, Quantity] = {}


def register_quantity(name: str, *, cost: int, axes: Mapping[str, str] | None = None,
                      description: str = "") -> Callable[[QuantityFunction], QuantityFunction]:
    """Decorator that makes a quantity function available to probes by ``name``.

    Registering a name again replaces the earlier quantity.

    Example:
        >>> @gs.register_quantity("state_norm", cost=0)
        ... def state_norm(ctx):
        ...     return {"mean": ctx.trajectory.states.norm(dim=-1).mean()}
        >>> model = gs.SequenceModel(gs.make_cell("leaky", input_size=2, hidden_size=3))
        >>> probe = gs.Probe(model, torch.randn(4, 6, 2), torch.randn(4, 1),
        ...                  quantities=["state_norm"])
        >>> sorted(probe(0))
        ['state_norm/mean']

    Args:
        name: registry name; must not contain ``"/"``.
        cost: cost rank ``>= 0``; ``<= CHEAP_COST`` puts it in the ``"cheap"`` preset.
        axes: see :class:`Quantity`.
        description: one line for listings.
    """
    if not isinstance(name, str) or not name or "/" in name:
        raise ValueError(f"name must be a non-empty string without '/', got {name!r}")
    if isinstance(cost, bool) or not isinstance(cost, int) or cost < 0:
        raise ValueError(f"cost must be an integer >= 0, got {cost!r}")

    def decorate(function: QuantityFunction) -> QuantityFunction:
        if not callable(function):
            raise ValueError(f"register_quantity({name!r}) expects a function, got {function!r}")
        _QUANTITIES[name] = Quantity(name, function, cost, dict(axes or {}), description)
        return function

    return decorate


def list_quantities() -> list[str]:
    """Names of the registered quantities, cheapest first (ties in registration order)."""
    return [q.name for q in sorted(_QUANTITIES.values(), key=lambda q: q.cost)]


def get_quantity(name: str) -> Quantity:
    """The quantity registered as ``name``; ``ValueError`` naming the choices otherwise."""
    try:
        return _QUANTITIES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown quantity {name!r}; choose from {list_quantities()}") from None


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
