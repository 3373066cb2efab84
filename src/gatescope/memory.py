"""The dense-memory budget: a dense call stops before allocating more than it allows.

The dense paths (the ``(B, T, N, N)`` Jacobian stack, all-pairs sensitivities, the full
``(B, T+1, L, n)`` effective-rate tensor, ...) are exact and fast for the paper's sizes, but
their memory grows with ``T²`` or ``N²``. Each such entry point first estimates the bytes it
would hold and calls :func:`check_dense`, which raises :class:`DenseBudgetExceeded` (a
``MemoryError``) naming the call, the tensor, the bytes against the budget and the
matrix-free or streaming alternative, before anything is computed.

The budget, in bytes, is the first of:

1. the innermost :func:`dense_budget_limit` context;
2. the value given to :func:`set_dense_budget`;
3. the environment variable ``GATESCOPE_DENSE_BUDGET`` (bytes, or a number with a unit such
   as ``512MiB``, ``2GiB``, ``8GB``);
4. :data:`DEFAULT_DENSE_BUDGET` (4 GiB).

A leaf module: it imports nothing from gatescope, numpy or torch.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

#: The budget when nothing else is set: 4 GiB.
DEFAULT_DENSE_BUDGET = 4 * 2**30

#: The environment variable read when no budget was set in Python.
ENV_VAR = "GATESCOPE_DENSE_BUDGET"

#: Units accepted in a budget string (case-insensitive), in bytes.
UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
         "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}

_PATTERN = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)(?:[eE]\+?(\d+))?\s*([a-zA-Z]*)\s*$")

_set_budget: int | None = None
_scoped_budget: ContextVar[int | None] = ContextVar("gatescope_dense_budget", default=None)


class DenseBudgetExceeded(MemoryError):
    """A dense computation would hold more memory than :func:`dense_budget` allows.

    Attributes:
        what: the call and the tensor it would allocate.
        nbytes: the estimated bytes.
        budget: the budget in bytes.
        alternative: what to call instead.
    """

    def __init__(self, what: str, nbytes: int, budget: int, alternative: str) -> None:
        self.what, self.nbytes, self.budget, self.alternative = what, nbytes, budget, alternative
        super().__init__(
            f"{what} would need {format_bytes(nbytes)} ({nbytes} bytes), over the dense "
            f"budget of {format_bytes(budget)} ({budget} bytes). Instead: {alternative}. "
            f"(Raise the budget with gs.set_dense_budget(bytes), gs.dense_budget_limit(bytes) "
            f"or {ENV_VAR}=8GiB if the memory is there.)"
        )


def format_bytes(nbytes: float) -> str:
    """``nbytes`` with a binary unit, e.g. ``'16.0 GiB'``."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= size:
            return f"{nbytes / size:.1f} {unit}"
    return f"{int(nbytes)} B"


def parse_budget(value: int | str, name: str = "budget") -> int:
    """A budget as a positive int of bytes.

    Args:
        value: a positive int, or a string: digits with an optional unit among
            ``B, kB, MB, GB, TB`` (powers of 1000) and ``KiB, MiB, GiB, TiB`` (powers of 1024),
            case-insensitive, e.g. ``"2GiB"``, ``"500MB"``, ``"1e9"``.
        name: what to call the value in an error (the argument or the environment variable).

    Raises:
        TypeError: for a bool, a float or anything that is neither an int nor a string.
        ValueError: for a string that does not parse, an unknown unit, or a value ``< 1``.
    """
    allowed = (f"a positive number of bytes, as an int or a string with a unit among "
               f"{', '.join(u for u in UNITS if u)} (e.g. '2GiB')")
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f"{name} must be {allowed}; got {value!r} ({type(value).__name__})")
    if isinstance(value, int):
        nbytes = value
    else:
        match = _PATTERN.match(value)
        if match is None or match.group(3).lower() not in UNITS:
            raise ValueError(f"{name} must be {allowed}; got {value!r}")
        mantissa, exponent, unit = match.groups()
        nbytes = math.floor(float(mantissa) * 10 ** int(exponent or 0) * UNITS[unit.lower()])
    if nbytes < 1:
        raise ValueError(f"{name} must be {allowed}; got {value!r}")
    return int(nbytes)


def dense_budget() -> int:
    """The current dense budget in bytes (see the module notes for where it comes from).

    Raises:
        ValueError: when ``GATESCOPE_DENSE_BUDGET`` is set to something that does not parse.
    """
    scoped = _scoped_budget.get()
    if scoped is not None:
        return scoped
    if _set_budget is not None:
        return _set_budget
    env = os.environ.get(ENV_VAR)
    if env is not None and env.strip():
        return parse_budget(env, f"the environment variable {ENV_VAR}")
    return DEFAULT_DENSE_BUDGET


def set_dense_budget(nbytes: int | str | None) -> None:
    """Set the dense budget for this process (``None`` goes back to the environment
    variable or the default).

    Args:
        nbytes: bytes, as :func:`parse_budget` accepts (``4 * 2**30``, ``"4GiB"``), or ``None``.
    """
    global _set_budget
    _set_budget = None if nbytes is None else parse_budget(nbytes, "nbytes")


@contextmanager
def dense_budget_limit(nbytes: int | str) -> Iterator[int]:
    """Use another dense budget inside a ``with`` block (per thread/async context).

    Args:
        nbytes: bytes, as :func:`parse_budget` accepts.

    Yields:
        The budget in bytes.
    """
    token = _scoped_budget.set(parse_budget(nbytes, "nbytes"))
    try:
        yield _scoped_budget.get()
    finally:
        _scoped_budget.reset(token)


def tensor_bytes(shape: Sequence[int], itemsize: int) -> int:
    """Bytes of a tensor of ``shape`` with ``itemsize`` bytes per element."""
    return math.prod(int(s) for s in shape) * int(itemsize)


def describe(shape: Sequence[int], dtype: object) -> str:
    """``'(B, T, N, N)=(4, 500, 512, 512) float32'``-style text for error messages."""
    name = str(dtype).removeprefix("torch.")
    return f"shape {tuple(int(s) for s in shape)} {name}"


def check_dense(nbytes: int, what: str, alternative: str) -> None:
    """Refuse, before allocating, a dense computation over the budget.

    Args:
        nbytes: the bytes it would hold (its largest tensors together).
        what: the call and its tensor, e.g. ``"gs.jacobians: J of shape (4, 500, 512, 512)
            float32"``.
        alternative: the matrix-free or streaming call to use instead.

    Raises:
        DenseBudgetExceeded: when ``nbytes`` exceeds :func:`dense_budget`.
    """
    budget = dense_budget()
    if nbytes > budget:
        raise DenseBudgetExceeded(what, int(nbytes), budget, alternative)
