"""``from_torch`` for ``LRU_pytorch``: ``LRU`` -> ``"lru"`` (docs/maths.md#lru).

The reference holds complex ``B`` ``(N_s, m)`` and ``C`` ``(n, N_s)``; the cell holds their
real and imaginary parts (``B_re``, ``B_im``, ``C_re``, ``C_im``) beside the same ``D``,
``nu_log``, ``theta_log`` and ``gamma_log``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..cells.lru import LRUCell
from ..cells.registry import make_cell
from . import check_single_layer

_REAL = ("D", "nu_log", "theta_log", "gamma_log")


def convert_lru(module: nn.Module, layer: int | None) -> LRUCell:
    """The ``"lru"`` cell computing ``module``'s recurrence, with copies of its weights.

    Raises:
        TypeError: when ``B``/``C`` are not the complex counterpart of the real parameters'
            dtype (``module.double()`` leaves them complex64, ``module.to(torch.float64)``
            drops their imaginary parts): build the module under
            ``torch.set_default_dtype(torch.float64)`` for a float64 one.
    """
    check_single_layer(module, layer)
    real = module.D.dtype
    dtypes = {name: getattr(module, name).dtype for name in (*_REAL, "B", "C")}
    want = {name: real if name in _REAL else real.to_complex() for name in dtypes}
    if dtypes != want:
        raise TypeError(
            f"LRU's parameters must be real {real} (D, nu_log, theta_log, gamma_log) and "
            f"complex {real.to_complex()} (B, C), got {dtypes}: .double() leaves B and C "
            "complex64 and .to(torch.float64) drops their imaginary parts; build the LRU "
            "under torch.set_default_dtype(torch.float64) instead")
    cell = make_cell("lru", module.D.shape[1], module.D.shape[0],
                     state_features=module.nu_log.shape[0], dtype=real, device=module.D.device)
    with torch.no_grad():
        for name in _REAL:
            getattr(cell, name).copy_(getattr(module, name))
        for name in ("B", "C"):
            getattr(cell, f"{name}_re").copy_(getattr(module, name).real)
            getattr(cell, f"{name}_im").copy_(getattr(module, name).imag)
    return cell


CONVERTERS = {"LRU": convert_lru}
