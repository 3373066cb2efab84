"""Weights files -> the torch recurrent module they came from.

A ``state_dict`` of ``nn.RNN``/``nn.GRU``/``nn.LSTM`` (or their ``...Cell`` versions) names
its tensors ``weight_ih_l{k}[_reverse]``, ``weight_hh_l{k}[_reverse]``, ``bias_ih_l{k}…``,
``bias_hh_l{k}…`` and, for an LSTM with ``proj_size > 0``, ``weight_hr_l{k}…`` (the cells
drop the ``_l{k}`` suffix). From these keys and their shapes :func:`recognise` reads the
kind (the number of gate blocks stacked in ``weight_hh``: 1 RNN, 3 GRU, 4 LSTM), the input
and hidden sizes, ``num_layers``, ``bidirectional``, ``proj_size`` and ``bias``. What the
keys cannot say: an ``nn.RNN``'s nonlinearity (``tanh`` or ``relu``, given by the caller) and
``batch_first`` (a property of the data, not of the weights).

Files are read without ever unpickling an object: ``.pt``/``.pth`` with
``torch.load(weights_only=True)`` (which refuses any pickled class other than tensors and
plain containers), ``.safetensors`` with the ``safetensors`` package (the ``[inspect]``
extra).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ..checks import first_line
from ..converters import cell_from_state_dict
from .errors import InspectInputError

#: Gate blocks stacked in ``weight_hh`` -> module kind.
KINDS = {1: "RNN", 3: "GRU", 4: "LSTM"}
NONLINEARITIES = ("tanh", "relu")
#: Keys a checkpoint commonly nests its ``state_dict`` under.
NESTED_KEYS = ("state_dict", "model_state_dict", "model")
PT_SUFFIXES = (".pt", ".pth")
SAFETENSORS_INSTALL = "pip install 'gatescope[inspect]' (or pip install safetensors)"

_PARAM = re.compile(r"^(?:(?P<prefix>.*)\.)?(?P<name>weight_ih|weight_hh|bias_ih|bias_hh|"
                    r"weight_hr)(?:_l(?P<layer>\d+)(?P<reverse>_reverse)?)?$")


@dataclass(frozen=True)
class ModuleSpec:
    """What a ``state_dict`` says about the recurrent module it came from.

    Attributes:
        kind: ``"RNN"``, ``"GRU"`` or ``"LSTM"``.
        input_size: ``m`` of layer 0.
        hidden_size: ``n``.
        num_layers: stacked layers (1 for a cell).
        bidirectional: whether every layer has a ``_reverse`` direction.
        proj_size: the LSTM's output projection (0: none).
        bias: whether the biases are present.
        prefix: the keys' prefix (``""`` at the top level, else ``"encoder.rnn"``).
        is_cell: a ``...Cell`` module (keys without ``_l{k}``).
        nonlinearity: ``tanh``/``relu`` for an RNN (not readable from the keys), else ``None``.
    """

    kind: str
    input_size: int
    hidden_size: int
    num_layers: int = 1
    bidirectional: bool = False
    proj_size: int = 0
    bias: bool = True
    prefix: str = ""
    is_cell: bool = False
    nonlinearity: str | None = None

    def describe(self) -> str:
        """One line such as ``nn.LSTM(32, 256, num_layers=2, batch_first=?)``."""
        name = f"nn.{self.kind}{'Cell' if self.is_cell else ''}"
        args = [str(self.input_size), str(self.hidden_size)]
        if not self.is_cell and self.num_layers != 1:
            args.append(f"num_layers={self.num_layers}")
        if self.bidirectional:
            args.append("bidirectional=True")
        if self.proj_size:
            args.append(f"proj_size={self.proj_size}")
        if not self.bias:
            args.append("bias=False")
        if self.nonlinearity is not None:
            args.append(f"nonlinearity={self.nonlinearity!r}")
        where = f" at prefix {self.prefix!r}" if self.prefix else ""
        return f"{name}({', '.join(args)}){where}"

    def as_dict(self) -> dict:
        """The fields as a JSON-able dict."""
        return dict(self.__dict__)

    def build(self, state_dict: Mapping[str, Tensor]) -> nn.Module:
        """The torch module, holding the weights of ``state_dict`` (strictly loaded)."""
        own = {k[len(self.prefix) + 1:] if self.prefix else k: v
               for k, v in state_dict.items() if _PARAM.match(k) and _prefix_of(k) == self.prefix}
        dtype = next(iter(own.values())).dtype
        module = self._empty_module().to(dtype)
        try:
            module.load_state_dict(own, strict=True)
        except RuntimeError as err:  # pragma: no cover - recognise() checked every shape
            raise InspectInputError(f"the weights do not fit {self.describe()}: "
                                    f"{first_line(err)}") from None
        return module.eval()

    def _empty_module(self) -> nn.Module:
        cls = getattr(nn, self.kind + ("Cell" if self.is_cell else ""))
        kwargs = {"bias": self.bias}
        if self.kind == "RNN":
            kwargs["nonlinearity"] = self.nonlinearity
        if not self.is_cell:
            kwargs.update(num_layers=self.num_layers, bidirectional=self.bidirectional)
            if self.kind == "LSTM":
                kwargs["proj_size"] = self.proj_size
        return cls(self.input_size, self.hidden_size, **kwargs)


def load_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a weights file, read without unpickling any object.

    Args:
        path: a ``.pt``/``.pth`` file (``torch.save(module.state_dict())``, or a checkpoint
            dict holding one under ``state_dict``/``model_state_dict``/``model``) or a
            ``.safetensors`` file.

    Raises:
        InspectInputError: for a missing file, an unknown suffix, a file holding a pickled
            object other than tensors (refused, never unpickled), a file that is not a
            ``state_dict``, or ``.safetensors`` without the ``safetensors`` package.
    """
    path = Path(path)
    if not path.is_file():
        raise InspectInputError(f"WEIGHTS {str(path)!r}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return _load_safetensors(path)
    if suffix not in PT_SUFFIXES:
        raise InspectInputError(f"WEIGHTS {str(path)!r}: unknown file type {suffix!r}; "
                                f"expected one of {(*PT_SUFFIXES, '.safetensors')}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - every failure is the file's, reported in one line
        raise InspectInputError(
            f"WEIGHTS {str(path)!r}: refused, it is not a plain tensor file "
            f"(torch.load(weights_only=True) failed without unpickling anything: "
            f"{first_line(err)})") from None
    return _tensor_mapping(obj, path)


def _load_safetensors(path: Path) -> dict[str, Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise InspectInputError(f"WEIGHTS {str(path)!r}: reading .safetensors needs the "
                                f"safetensors package: {SAFETENSORS_INSTALL}") from None
    try:
        return dict(load_file(str(path), device="cpu"))
    except Exception as err:  # noqa: BLE001
        raise InspectInputError(f"WEIGHTS {str(path)!r}: not a readable .safetensors file: "
                                f"{first_line(err)}") from None


def _tensor_mapping(obj, path: Path) -> dict[str, Tensor]:
    """``obj`` as a ``{name: tensor}`` dict: a state_dict or a checkpoint nesting one."""
    if isinstance(obj, Mapping):
        if obj and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()):
            return dict(obj)
        for key in NESTED_KEYS:
            if key in obj and isinstance(obj[key], Mapping):
                return _tensor_mapping(obj[key], path)
    raise InspectInputError(
        f"WEIGHTS {str(path)!r}: expected a state_dict ({{name: tensor}}, or a checkpoint "
        f"holding one under {NESTED_KEYS}), got {type(obj).__name__}")


def _prefix_of(key: str) -> str:
    m = _PARAM.match(key)
    return (m.group("prefix") or "") if m else ""


def recurrent_prefixes(state_dict: Mapping[str, Tensor]) -> list[str]:
    """The prefixes under which ``state_dict`` holds a recurrent module's weights
    (``""`` for the top level), sorted."""
    found: dict[str, set[str]] = {}
    for key in state_dict:
        m = _PARAM.match(key)
        if m:
            found.setdefault(m.group("prefix") or "", set()).add(m.group("name"))
    return sorted(p for p, names in found.items() if {"weight_ih", "weight_hh"} <= names)


def recognise(state_dict: Mapping[str, Tensor], prefix: str | None = None,
              nonlinearity: str = "tanh") -> ModuleSpec:
    """The recurrent module a ``state_dict`` came from, from its keys and shapes.

    Args:
        state_dict: ``{name: tensor}``.
        prefix: the module's key prefix (``"encoder.rnn"``; a trailing ``.`` is ignored;
            ``""`` for the top level); ``None`` finds it when exactly one recurrent module
            is in the dict.
        nonlinearity: an ``nn.RNN``'s nonlinearity, ``"tanh"`` or ``"relu"`` (the weights
            cannot tell); ignored for GRU and LSTM.

    Raises:
        InspectInputError: no recurrent module, several without a ``prefix`` (they are
            listed), an unknown ``prefix``, or a layout that is no stock module's.
    """
    if nonlinearity not in NONLINEARITIES:
        raise InspectInputError(f"--nonlinearity must be one of {NONLINEARITIES}, "
                                f"got {nonlinearity!r}")
    prefixes = recurrent_prefixes(state_dict)
    if not prefixes:
        raise InspectInputError("WEIGHTS: no recurrent module found (no weight_ih*/weight_hh* "
                                f"keys); keys start {sorted(state_dict)[:5]}")
    if prefix is None:
        if len(prefixes) > 1:
            raise InspectInputError(f"WEIGHTS holds {len(prefixes)} recurrent modules, at "
                                    f"prefixes {prefixes}; choose one with --prefix")
        prefix = prefixes[0]
    prefix = prefix.rstrip(".")
    if prefix not in prefixes:
        raise InspectInputError(f"--prefix {prefix!r}: no recurrent module there; found "
                                f"{prefixes}")
    return _read_layout(state_dict, prefix, nonlinearity)


def _read_layout(state_dict: Mapping[str, Tensor], prefix: str, nonlinearity: str
                 ) -> ModuleSpec:
    """Check the parameters under ``prefix`` form a stock module and read its settings."""
    dot = prefix + "." if prefix else ""
    params: dict[tuple[int | None, bool], dict[str, Tensor]] = {}
    for key, value in state_dict.items():
        if not key.startswith(dot) or "." in key[len(dot):]:
            continue
        m = _PARAM.match(key)
        if m is None or (m.group("prefix") or "") != prefix:
            raise _layout_error(prefix, f"unexpected key {key!r}")
        layer = None if m.group("layer") is None else int(m.group("layer"))
        params.setdefault((layer, bool(m.group("reverse"))), {})[m.group("name")] = value
    is_cell = (None, False) in params
    if is_cell and len(params) > 1:
        raise _layout_error(prefix, "mixes cell keys (weight_ih) with layer keys (weight_ih_l0)")
    layers = sorted({k for k, _ in params}) if not is_cell else [None]
    if not is_cell and layers != list(range(len(layers))):
        raise _layout_error(prefix, f"layers {layers} are not 0..{len(layers) - 1}")
    reverse = {r for _, r in params}
    bidirectional = reverse == {False, True}
    if bidirectional and len(params) != 2 * len(layers):
        raise _layout_error(prefix, "some layers lack their _reverse direction")
    if reverse == {True}:
        raise _layout_error(prefix, "only _reverse weights, no forward direction")
    first = params[(layers[0], False)]
    spec = _first_layer_spec(first, prefix, nonlinearity, is_cell)
    spec = ModuleSpec(**{**spec.__dict__, "num_layers": len(layers),
                         "bidirectional": bidirectional})
    for (layer, rev), p in params.items():
        _check_layer(p, spec, layer or 0, rev)
    return spec


def _first_layer_spec(p: dict[str, Tensor], prefix: str, nonlinearity: str, is_cell: bool
                      ) -> ModuleSpec:
    for name in ("weight_ih", "weight_hh"):
        if name not in p or p[name].dim() != 2:
            raise _layout_error(prefix, f"{name} of layer 0 missing or not a matrix")
    rows, m = p["weight_ih"].shape
    hh_rows, hh_cols = p["weight_hh"].shape
    proj = 0
    if "weight_hr" in p:
        if p["weight_hr"].dim() != 2:
            raise _layout_error(prefix, "weight_hr is not a matrix")
        proj, hidden = p["weight_hr"].shape
    else:
        hidden = hh_cols
    blocks, left = divmod(hh_rows, hidden)
    if left or blocks not in KINDS or rows != hh_rows:
        raise _layout_error(prefix, f"weight_ih {tuple(p['weight_ih'].shape)} and weight_hh "
                            f"{tuple(p['weight_hh'].shape)} are no RNN/GRU/LSTM's "
                            "(expected (k·n, m) and (k·n, n) with k in 1, 3, 4)")
    kind = KINDS[blocks]
    if proj and (kind != "LSTM" or is_cell):
        raise _layout_error(prefix, "weight_hr (a projection) belongs to an nn.LSTM only")
    return ModuleSpec(kind=kind, input_size=m, hidden_size=hidden, proj_size=proj,
                      bias="bias_ih" in p, prefix=prefix, is_cell=is_cell,
                      nonlinearity=nonlinearity if kind == "RNN" else None)


def _check_layer(p: dict[str, Tensor], spec: ModuleSpec, layer: int, reverse: bool) -> None:
    """Every tensor of one (layer, direction) has the shape torch gives it."""
    k = {v: b for b, v in KINDS.items()}[spec.kind] * spec.hidden_size
    out = spec.proj_size or spec.hidden_size
    m = spec.input_size if layer == 0 else out * (2 if spec.bidirectional else 1)
    want = {"weight_ih": (k, m), "weight_hh": (k, out)}
    if spec.bias:
        want.update(bias_ih=(k,), bias_hh=(k,))
    if spec.proj_size:
        want["weight_hr"] = (spec.proj_size, spec.hidden_size)
    where = "" if spec.is_cell else f"_l{layer}{'_reverse' if reverse else ''}"
    if set(p) != set(want):
        raise _layout_error(spec.prefix, f"layer{where or ' 0'} has {sorted(p)}, expected "
                            f"{sorted(want)}")
    for name, shape in want.items():
        if tuple(p[name].shape) != shape:
            raise _layout_error(spec.prefix, f"{name}{where} has shape "
                                f"{tuple(p[name].shape)}, expected {shape} for "
                                f"{spec.describe()}")
        if not p[name].is_floating_point():
            raise _layout_error(spec.prefix, f"{name}{where} has dtype {p[name].dtype}, "
                                "expected a floating-point dtype")


def _layout_error(prefix: str, problem: str) -> InspectInputError:
    where = f"at prefix {prefix!r}" if prefix else "at the top level"
    return InspectInputError(f"WEIGHTS: unknown recurrent layout {where}: {problem}")


@dataclass(frozen=True)
class PackageModuleSpec:
    """A reference package's module read from its ``state_dict``
    (:func:`gatescope.converters.cell_from_state_dict`): what the report calls it and the
    input size."""

    name: str
    input_size: int
    hidden_size: int

    def describe(self) -> str:
        """One line such as ``mambapy.Mamba (as gatescope cells: input 64, output 64)``."""
        return (f"{self.name} (as gatescope cells: input {self.input_size}, output "
                f"{self.hidden_size})")


def module_from_state_dict(state_dict: Mapping[str, Tensor], prefix: str | None = None,
                           nonlinearity: str = "tanh"
                           ) -> tuple[nn.Module, ModuleSpec | PackageModuleSpec]:
    """:func:`recognise` the module and build it holding the weights (in eval mode); a
    ``state_dict`` without torch recurrent weights is tried as one of the reference packages'
    modules (mambapy's ``Mamba``/``ResidualBlock``/``MambaBlock``, minGRU_pytorch's
    ``minGRU``/``minLSTM``, LRU_pytorch's ``LRU``; their keys under ``prefix``), built
    directly as gatescope cells.

    Raises:
        InspectInputError: see :func:`recognise`, or the package layout's refusal.
    """
    if not recurrent_prefixes(state_dict):
        found = _package_cell(state_dict, prefix)
        if found is not None:
            return found
    spec = recognise(state_dict, prefix, nonlinearity)
    return spec.build(state_dict), spec


def _package_cell(state_dict: Mapping[str, Tensor], prefix: str | None
                  ) -> tuple[nn.Module, PackageModuleSpec] | None:
    """The reference package's module under ``prefix`` (top level for ``None``), or ``None``."""
    dot = prefix.rstrip(".") + "." if prefix else ""
    own = {k[len(dot):]: v for k, v in state_dict.items() if k.startswith(dot)}
    try:
        found = cell_from_state_dict(own)
    except (ValueError, TypeError, RuntimeError, KeyError) as err:
        raise InspectInputError(f"WEIGHTS: {first_line(err)}") from None
    if found is None:
        return None
    name, cell = found
    return cell.eval(), PackageModuleSpec(name, cell.input_size, cell.hidden_size)
