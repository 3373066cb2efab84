"""``from_torch`` for ``LRU_pytorch``: ``LRU`` -> ``"lru"`` (docs/maths.md#lru).

The reference holds complex ``B`` ``(N_s, m)`` and ``C`` ``(n, N_s)``; the cell holds their
real and imaginary parts (``B_re``, ``B_im``, ``C_re``, ``C_im``) beside the same ``D``,
``nu_log``, ``theta_log`` and ``gamma_log``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from ..cells.lru import LRUCell
from ..cells.registry import make_cell
from . import check_single_layer

_REAL = ("D", "nu_log", "theta_log", "gamma_log")


def convert_lru(module: nn.Module, layer: int | None) -> LRUCell:
    """The ``"lru"`` cell computing ``module``'s recurrence, with copies of its weights.

    Raises:
        TypeError: see :func:`cell_from_weights`.
    """
    check_single_layer(module, layer)
    return cell_from_weights({name: getattr(module, name) for name in (*_REAL, "B", "C")})


def cell_from_weights(weights: Mapping[str, Tensor]) -> LRUCell:
    """The ``"lru"`` cell of an ``LRU``'s parameters (its ``state_dict``), sizes read from the
    shapes.

    Raises:
        TypeError: when ``B``/``C`` are not the complex counterpart of the real parameters'
            dtype (``module.double()`` leaves them complex64, ``module.to(torch.float64)``
            drops their imaginary parts): build the module under
            ``torch.set_default_dtype(torch.float64)`` for a float64 one.
        KeyError: a parameter missing.
    """
    D = weights["D"]
    real = D.dtype
    dtypes = {name: weights[name].dtype for name in (*_REAL, "B", "C")}
    want = {name: real if name in _REAL else real.to_complex() for name in dtypes}
    if dtypes != want:
        raise TypeError(
            f"LRU's parameters must be real {real} (D, nu_log, theta_log, gamma_log) and "
            f"complex {real.to_complex()} (B, C), got {dtypes}: .double() leaves B and C "
            "complex64 and .to(torch.float64) drops their imaginary parts; build the LRU "
            "under torch.set_default_dtype(torch.float64) instead")
    cell = make_cell("lru", D.shape[1], D.shape[0], state_features=weights["nu_log"].shape[0],
                     dtype=real, device=D.device)
    with torch.no_grad():
        for name in _REAL:
            getattr(cell, name).copy_(weights[name])
        for name in ("B", "C"):
            getattr(cell, f"{name}_re").copy_(weights[name].real)
            getattr(cell, f"{name}_im").copy_(weights[name].imag)
    return cell


CONVERTERS = {"LRU": convert_lru}

#: ``state_dict`` layouts: class name -> ``(a key only that layout has, the cell builder)``.
STATE_DICT_LAYOUTS = {"LRU": ("nu_log", cell_from_weights)}
