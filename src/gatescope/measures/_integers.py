"""Lags and times as lists of ints, refusing rather than truncating non-integers (a leaf of
:mod:`gatescope.measures`, shared by the rates and the anisotropy measures)."""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch
from torch import Tensor


def integer_lags(lags: Sequence[int], name: str = "lags") -> list[int]:
    """``lags`` as a list of ints ``>= 0``, refusing rather than truncating non-integers.

    Accepts Python and NumPy ints and integer-dtype tensors of one element (so an integer
    tensor of lags works too); refuses floats (``1.7`` is not lag 1), float tensors and bools.
    """
    try:
        out = [_integer(x) for x in lags]
    except TypeError as err:
        raise TypeError(f"{name} must be a sequence of ints, got {lags!r}: {err}") from None
    if any(x < 0 for x in out):
        raise ValueError(f"{name} must be >= 0, got {out}")
    return out


def _integer(x) -> int:
    """``x`` as an int; ``TypeError`` for a bool or anything that is not an integer."""
    if isinstance(x, bool) or (isinstance(x, Tensor) and x.dtype == torch.bool):
        raise TypeError(f"{x!r} is a bool, not an integer lag")
    try:
        return operator.index(x)
    except TypeError:
        raise TypeError(f"{x!r} ({type(x).__name__}) is not an integer lag") from None
