"""Input files -> a checked ``(B, T, m)`` tensor for :func:`gatescope.inspect`.

``.npy`` (one array), ``.npz`` (one array, or the one named by ``key``) and ``.pt``/``.pth``
(a tensor, or a ``{name: tensor}`` dict with ``key``) are read without unpickling any object
(``allow_pickle=False``, ``torch.load(weights_only=True)``). The array is batch first
``(B, T, m)`` unless ``batch_first=False`` (then ``(T, B, m)``, torch's default layout, and it
is transposed); it must be real and finite.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..checks import first_line
from .errors import InspectInputError

DATA_SUFFIXES = (".npy", ".npz", ".pt", ".pth")


def load_array(path: str | Path, key: str | None = None) -> Tensor:
    """The array stored in a data file, as a tensor (no shape checks yet).

    Raises:
        InspectInputError: missing file, unknown suffix, a pickled object (refused), an
            ``.npz``/dict with several arrays and no ``key``, or an unknown ``key``.
    """
    path = Path(path)
    if not path.is_file():
        raise InspectInputError(f"--data {str(path)!r}: no such file")
    suffix = path.suffix.lower()
    if suffix not in DATA_SUFFIXES:
        raise InspectInputError(f"--data {str(path)!r}: unknown file type {suffix!r}; "
                                f"expected one of {DATA_SUFFIXES}")
    try:
        if suffix in (".npy", ".npz"):
            obj = np.load(path, allow_pickle=False)
            if suffix == ".npz":
                with obj:
                    obj = {k: obj[k] for k in obj.files}
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - every failure is the file's, in one line
        raise InspectInputError(f"--data {str(path)!r}: refused, not a plain array file "
                                f"(read without unpickling: {first_line(err)})") from None
    return _select(obj, key, path)


def _select(obj, key: str | None, path: Path) -> Tensor:
    if isinstance(obj, dict):
        if key is None:
            if len(obj) != 1:
                raise InspectInputError(f"--data {str(path)!r} holds {len(obj)} arrays "
                                        f"{sorted(obj)}; choose one with --key")
            key = next(iter(obj))
        if key not in obj:
            raise InspectInputError(f"--key {key!r}: not in --data {str(path)!r}; it holds "
                                    f"{sorted(obj)}")
        obj = obj[key]
    elif key is not None:
        raise InspectInputError(f"--key {key!r}: --data {str(path)!r} holds a single array, "
                                "not named arrays")
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in "fiu":
            raise InspectInputError(f"--data {str(path)!r}: dtype {obj.dtype} is not a real "
                                    "number type")
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, Tensor):
        return obj
    raise InspectInputError(f"--data {str(path)!r}: expected an array or tensor, got "
                            f"{type(obj).__name__}")


def check_inputs(x: Tensor, input_size: int, batch_first: bool = True,
                 dtype: torch.dtype = torch.float32, name: str = "--data") -> Tensor:
    """``x`` as a finite ``(B, T, m)`` tensor of ``dtype``, batch first.

    Args:
        x: ``(B, T, m)`` (``batch_first``) or ``(T, B, m)``.
        input_size: the module's ``m``.
        batch_first: the layout of ``x``.
        dtype: the floating dtype to compute in.
        name: what to call ``x`` in errors.

    Raises:
        InspectInputError: naming both shapes when ``x`` does not fit the module, or counting
            the NaN/Inf entries.
    """
    layout = "batch first; --time-first for (T, B, m)" if batch_first else "time first"
    if not isinstance(x, Tensor):
        raise InspectInputError(f"{name}: expected a tensor, got {type(x).__name__}")
    if x.is_complex() or x.dtype == torch.bool:
        raise InspectInputError(f"{name}: dtype {x.dtype} is not a real number type")
    if x.dim() != 3 or x.shape[-1] != input_size or 0 in x.shape:
        want = "(B, T, " + str(input_size) + ")" if batch_first else f"(T, B, {input_size})"
        raise InspectInputError(f"{name} has shape {tuple(x.shape)}, but the module's "
                                f"input_size is {input_size}: expected {want} ({layout})")
    x = x.to(dtype)
    bad = ~torch.isfinite(x)
    if bad.any():
        first = tuple(int(i) for i in bad.nonzero()[0])
        raise InspectInputError(f"{name}: {int(x.isnan().sum())} NaN and "
                                f"{int(x.isinf().sum())} Inf values (first at index {first}); "
                                "inspect needs finite inputs")
    return x if batch_first else x.transpose(0, 1).contiguous()
