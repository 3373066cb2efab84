"""Argument checks shared by the tasks: each names the argument and what it allows.

Every helper returns the value normalised (a plain ``int``, ``float``, ``bool`` or a tuple)
or raises ``ValueError``; :class:`~gatescope.tasks.base.Task` prefixes the message with the
task's name.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable
from typing import Any


def as_int(name: str, value: Any, *, minimum: int | None = None) -> int:
    """``value`` as an ``int`` (``bool`` refused), at least ``minimum``."""
    allowed = "an integer" if minimum is None else f"an integer >= {minimum}"
    if isinstance(value, bool):
        raise ValueError(f"{name} must be {allowed}; got {value!r}")
    try:
        out = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be {allowed}; got {value!r}") from None
    if minimum is not None and out < minimum:
        raise ValueError(f"{name} must be {allowed}; got {out}")
    return out


def as_float(name: str, value: Any, *, minimum: float | None = None, strict: bool = False) -> float:
    """``value`` as a finite ``float``; ``> minimum`` when ``strict``, else ``>= minimum``."""
    bound = "" if minimum is None else f" {'>' if strict else '>='} {minimum:g}"
    allowed = f"a finite number{bound}"
    if isinstance(value, bool):
        raise ValueError(f"{name} must be {allowed}; got {value!r}")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be {allowed}; got {value!r}") from None
    if not math.isfinite(out) or (
        minimum is not None and (out <= minimum if strict else out < minimum)
    ):
        raise ValueError(f"{name} must be {allowed}; got {value!r}")
    return out


def as_bool(name: str, value: Any) -> bool:
    """``value`` if it is a ``bool``."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False; got {value!r}")
    return value


def as_choice(name: str, value: Any, choices: Iterable[str]) -> str:
    """``value`` if it is one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}; got {value!r}")
    return value


def _as_sequence(name: str, value: Any, what: str) -> list[Any]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ValueError(f"{name} must be a non-empty sequence of {what}; got {value!r}")
    items = list(value)
    if not items:
        raise ValueError(f"{name} must be a non-empty sequence of {what}; got {value!r}")
    return items


def as_int_tuple(name: str, value: Any, *, minimum: int = 0) -> tuple[int, ...]:
    """A non-empty sequence of distinct integers ``>= minimum``, as a tuple."""
    what = f"distinct integers >= {minimum}"
    items = _as_sequence(name, value, what)
    try:
        out = tuple(as_int(name, v, minimum=minimum) for v in items)
    except ValueError:
        raise ValueError(f"{name} must be a non-empty sequence of {what}; got {value!r}") from None
    if len(set(out)) != len(out):
        raise ValueError(f"{name} must be a non-empty sequence of {what}; got {value!r}")
    return out


def as_float_tuple(name: str, value: Any, *, length: int | None = None) -> tuple[float, ...]:
    """A non-empty sequence of finite numbers (of ``length`` items if given), as a tuple."""
    what = "finite numbers" if length is None else f"{length} finite numbers"
    items = _as_sequence(name, value, what)
    try:
        out = tuple(as_float(name, v) for v in items)
    except ValueError:
        raise ValueError(f"{name} must be a sequence of {what}; got {value!r}") from None
    if length is not None and len(out) != length:
        raise ValueError(f"{name} must be a sequence of {what}; got {len(out)}: {value!r}")
    return out
