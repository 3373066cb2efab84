"""Argument checks of the library: each names the argument and the values it allows.

Every check returns the value normalised (a plain ``int``, ``float``, ``bool``, ``str`` or a
tuple) or raises ``ValueError`` with a message ``"<name> must be <allowed>; got <value>"``.
The tasks, the probes and the experiments' settings all use these, so that a rule (say, "a
finite number > 0") is written once; the settings call them from pydantic validators, but
this module itself needs nothing beyond the standard library.

Bounds: ``minimum``/``maximum`` are inclusive, ``above``/``below`` exclusive.

Example:
    >>> as_float("noise_std", 0.1, minimum=0)
    0.1
    >>> as_int("window", 0, minimum=1)
    Traceback (most recent call last):
    ...
    ValueError: window must be an integer >= 1; got 0
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable
from typing import Any

import torch

__all__ = [
    "as_bool",
    "as_choice",
    "as_float",
    "as_float_tuple",
    "as_int",
    "as_int_tuple",
    "describe_range",
]


def describe_range(kind: str, *, minimum: float | None = None, maximum: float | None = None,
                   above: float | None = None, below: float | None = None) -> str:
    """The allowed values in words, e.g. ``"an integer in [1, 10000]"``.

    Args:
        kind: the noun, e.g. ``"an integer"`` or ``"a finite number"``.
        minimum, maximum: inclusive bounds (``None``: none).
        above, below: exclusive bounds (``None``: none); each replaces the inclusive one.
    """
    lo, lo_open = (above, True) if above is not None else (minimum, False)
    hi, hi_open = (below, True) if below is not None else (maximum, False)
    if lo is not None and hi is not None:
        return (f"{kind} in {'(' if lo_open else '['}{_number(lo)}, {_number(hi)}"
                f"{')' if hi_open else ']'}")
    if lo is not None:
        return f"{kind} {'>' if lo_open else '>='} {_number(lo)}"
    if hi is not None:
        return f"{kind} {'<' if hi_open else '<='} {_number(hi)}"
    return kind


def _number(x: float) -> str:
    """An int as written, a float in its shortest form (``0.5``, ``1e-05``)."""
    return str(x) if isinstance(x, int) else f"{x:g}"


def _outside(x: float, minimum: float | None, maximum: float | None, above: float | None,
             below: float | None) -> bool:
    return ((minimum is not None and x < minimum) or (maximum is not None and x > maximum)
            or (above is not None and x <= above) or (below is not None and x >= below))


def as_int(name: str, value: Any, *, minimum: int | None = None,
           maximum: int | None = None) -> int:
    """``value`` as an ``int`` (``bool`` and floats refused) in ``[minimum, maximum]``.

    Args:
        name: the argument's name, for the message.
        value: anything with ``__index__`` (``int``, numpy integers, ...).
        minimum, maximum: inclusive bounds; ``None`` for none.

    Raises:
        ValueError: ``"<name> must be an integer >= <minimum>; got <value>"`` and the like.
    """
    allowed = describe_range("an integer", minimum=minimum, maximum=maximum)
    if isinstance(value, bool):
        raise ValueError(f"{name} must be {allowed}; got {value!r}")
    try:
        out = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be {allowed}; got {value!r}") from None
    if _outside(out, minimum, maximum, None, None):
        raise ValueError(f"{name} must be {allowed}; got {out}")
    return out


def as_float(name: str, value: Any, *, minimum: float | None = None,
             maximum: float | None = None, above: float | None = None,
             below: float | None = None) -> float:
    """``value`` as a finite ``float`` within the bounds (``bool``, inf and NaN refused).

    Args:
        name: the argument's name, for the message.
        value: a real number (or a string ``float`` reads).
        minimum, maximum: inclusive bounds; ``above``, ``below``: exclusive ones.

    Raises:
        ValueError: ``"<name> must be a finite number > 0; got inf"`` and the like.
    """
    allowed = describe_range("a finite number", minimum=minimum, maximum=maximum,
                             above=above, below=below)
    if isinstance(value, bool):
        raise ValueError(f"{name} must be {allowed}; got {value!r}")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be {allowed}; got {value!r}") from None
    if not math.isfinite(out) or _outside(out, minimum, maximum, above, below):
        raise ValueError(f"{name} must be {allowed}; got {value!r}")
    return out


def as_bool(name: str, value: Any) -> bool:
    """``value`` if it is a ``bool``; ``ValueError`` naming ``name`` otherwise."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False; got {value!r}")
    return value


def as_choice(name: str, value: Any, choices: Iterable[str]) -> str:
    """``value`` if it is one of ``choices``; ``ValueError`` listing them otherwise."""
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


def as_int_tuple(name: str, value: Any, *, minimum: int = 0,
                 maximum: int | None = None) -> tuple[int, ...]:
    """A non-empty sequence of distinct integers in ``[minimum, maximum]``, as a tuple.

    Raises:
        ValueError: ``"<name> must be a non-empty sequence of distinct integers >= 1;
            got []"`` and the like.
    """
    what = "distinct " + describe_range("integers", minimum=minimum, maximum=maximum)
    items = _as_sequence(name, value, what)
    try:
        out = tuple(as_int(name, v, minimum=minimum, maximum=maximum) for v in items)
    except ValueError:
        raise ValueError(f"{name} must be a non-empty sequence of {what}; got {value!r}") from None
    if len(set(out)) != len(out):
        raise ValueError(f"{name} must be a non-empty sequence of {what}; got {value!r}")
    return out


def as_float_tuple(name: str, value: Any, *, length: int | None = None,
                   min_length: int = 1, minimum: float | None = None,
                   maximum: float | None = None, above: float | None = None,
                   below: float | None = None) -> tuple[float, ...]:
    """A sequence of finite numbers within the bounds, as a tuple.

    Args:
        name: the argument's name, for the message.
        value: the sequence.
        length: the exact number of items (``None``: any number ``>= min_length``).
        min_length: the fewest items allowed when ``length`` is ``None``.
        minimum, maximum, above, below: bounds on every item, as in :func:`as_float`.

    Raises:
        ValueError: ``"<name> must be a sequence of 3 finite numbers; got ..."`` and the like.
    """
    numbers = describe_range("finite numbers", minimum=minimum, maximum=maximum,
                             above=above, below=below)
    if length is not None:
        what = f"{length} {numbers}"
    elif min_length > 1:
        what = f"at least {min_length} {numbers}"
    else:
        what = numbers
    items = _as_sequence(name, value, what)
    try:
        out = tuple(as_float(name, v, minimum=minimum, maximum=maximum, above=above,
                             below=below) for v in items)
    except ValueError:
        raise ValueError(f"{name} must be a sequence of {what}; got {value!r}") from None
    if (length is not None and len(out) != length) or len(out) < min_length:
        raise ValueError(f"{name} must be a sequence of {what}; got {len(out)}: {value!r}")
    return out


def as_device(name: str, value: Any) -> torch.device:
    """``value`` as a torch device this machine has (probed once by the caller, not per use).

    Raises:
        ValueError: naming the allowed devices, for a name torch does not know or a device
            that is not available (e.g. ``cuda`` without CUDA).
    """
    try:
        resolved = torch.device(value)
    except (RuntimeError, TypeError):
        raise ValueError(f"{name} must be cpu, cuda or cuda:N; got {str(value)!r}") from None
    try:
        torch.empty(0, device=resolved)
    except (RuntimeError, AssertionError) as exc:  # CPU-only builds raise AssertionError
        raise ValueError(f"{name} {str(resolved)!r} is not available ({first_line(exc)})"
                         ) from exc
    return resolved


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none), for a
    one-line error that quotes it."""
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
