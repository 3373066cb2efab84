"""Experiment settings from a TOML file and ``--set key=value``, validated before any work.

An experiment's settings are a pydantic model (:class:`~gatescope.experiments.base.Settings`,
unknown keys rejected). :func:`build_settings` layers the defaults, a TOML file's top-level
table and ``--set`` assignments (later wins) and validates the result; every problem becomes
one entry of a :class:`SettingsError` naming the key and what is allowed, which the command
line reports with exit code 2.

``--set`` values are read as TOML values when they parse (``lr=1e-3``, ``bias=true``,
``seeds=[3, 7]``, ``lr={sgd=1e-2, adam=1e-3}``) and as plain strings otherwise
(``tasks=adding``); ``none``/``null`` mean ``None``; a string given to a list setting is
split on commas (``tasks=adding,copy``).

Every numeric setting has a finite range, checked by the rules of :mod:`gatescope.checks`
(so a setting and the library argument it becomes share one rule): sizes have upper bounds
(:data:`MAX_SEQ_LEN`, :data:`MAX_HIDDEN_SIZE`, ...) far above any realistic run, and the
largest tensor the settings imply must fit :data:`MAX_TENSOR_GIB` (:func:`check_tensor_size`),
so a typo such as ``seq_len=1000000000`` is refused before anything is written.

The annotated types below carry the common setting names
(docs/adding-an-experiment.md#common-settings: ``seeds``,
``tasks``, ``cells``, ``optimizers``, ``lr``, ``checkpoints``, ``device``, ``dtype``) so
that every experiment reads them the same way.
"""

from __future__ import annotations

import collections.abc
import difflib
import hashlib
import json
import math
import sys
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import BeforeValidator, ValidationError, ValidationInfo

from .. import checks
from ..cells import list_cells
from ..probes import list_quantities
from ..tasks import list_tasks, make_task
from ..training import check_learning_rate, list_optimizers
from .base import Settings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class SettingsError(ValueError):
    """Invalid settings: ``problems`` lists ``(key, message)`` pairs, one per problem."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("\n".join(f"setting {key!r}: {msg}" for key, msg in problems))


class SettingConflict(ValueError):
    """A problem of several settings together, raised by a model validator: ``key`` names
    the settings involved (e.g. ``"rank, gradient_examples"``), for :class:`SettingsError`."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(message)


# ---------------------------------------------------------------------- reading sources


def parse_value(raw: str) -> Any:
    """A ``--set`` value: a TOML value if it parses, ``None`` for none/null, else the string."""
    text = raw.strip()
    if text.lower() in ("none", "null"):
        return None
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_assignments(items: Iterable[str]) -> dict[str, Any]:
    """``["k=v", ...] -> {k: parse_value(v)}``; :class:`SettingsError` on a malformed item."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise SettingsError([(item, "expected KEY=VALUE, e.g. --set lr=1e-3")])
        out[key.strip()] = parse_value(raw)
    return out


def load_toml(path: str | Path) -> dict[str, Any]:
    """The top-level table of a TOML settings file; :class:`SettingsError` if unreadable."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise SettingsError([("--config", f"cannot read {path}: {err}")]) from None


# ---------------------------------------------------------------------- building


def _accepts_list(annotation: Any) -> bool:
    """Whether a field's type admits a list (``list[...]``, ``tuple[...]``, ``X | list``)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, Annotated):
        return any(_accepts_list(a) for a in typing.get_args(annotation))
    return origin in (list, tuple, set, frozenset, collections.abc.Sequence)


def build_settings(model: type[Settings], *layers: Mapping[str, Any],
                   experiment: str = "") -> Settings:
    """Validate the merged ``layers`` (later wins) against ``model``.

    Raises:
        SettingsError: unknown keys (with the allowed names) or invalid values (with what
            is allowed), all of them at once.
    """
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update(layer)
    allowed = list(model.model_fields)
    problems = []
    for key in merged:
        if key not in model.model_fields:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            where = f" for experiment {experiment!r}" if experiment else ""
            problems.append((key, f"unknown setting{where}{hint}; allowed: {', '.join(allowed)}"))
    if problems:
        raise SettingsError(problems)
    for key, value in merged.items():
        if isinstance(value, str) and _accepts_list(model.model_fields[key].annotation):
            merged[key] = [part.strip() for part in value.split(",") if part.strip()]
    try:
        return model(**merged)
    except ValidationError as err:
        raise SettingsError(_problems(err)) from None


def _problems(err: ValidationError) -> list[tuple[str, str]]:
    out = []
    for e in err.errors():
        cause = e.get("ctx", {}).get("error")
        msg = e["msg"].removeprefix("Value error, ")
        if not e["loc"]:  # a model validator: the settings together, not one value
            key = cause.key if isinstance(cause, SettingConflict) else "(settings)"
            out.append((key, msg))
            continue
        key = str(e["loc"][0])
        where = "".join(f"[{i}]" for i in e["loc"][1:])
        got = "" if "got " in msg else f"; got {e.get('input')!r}"
        out.append((key, f"{msg}{where and f' (at {where})'}{got}"))
    return out


def settings_hash(experiment: str, settings: Settings) -> str:
    """sha256 of the experiment name, its settings (canonical JSON) and the package version:
    what a rerun must match to reuse finished work (a new version may measure differently)."""
    from .. import __version__  # here, not at import: gatescope/__init__ imports us

    payload = json.dumps({"experiment": experiment, "version": __version__,
                          "settings": settings.model_dump(mode="json")}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


# ---------------------------------------------------------------------- bounds

#: Upper bounds of the sizes: far above any realistic run (the paper's are 20 seeds, T <= 120,
#: n = 64, 1200 steps, batches <= 256), they stop a typo such as ``seq_len=1000000000``
#: before anything is written. :data:`MAX_TENSOR_GIB` bounds the combinations.
MAX_SEQ_LEN = 10_000
MAX_HIDDEN_SIZE = 4_096
MAX_INPUT_SIZE = 4_096
MAX_BATCH = 65_536
MAX_STEPS = 1_000_000
MAX_SEEDS = 1_000
MAX_SEED = 2**63 - 1
#: The largest tensor a run may need, in GiB (estimated from the settings by
#: :func:`check_tensor_size`, e.g. the probe batch's Jacobians, ``B × T × n × n``).
MAX_TENSOR_GIB = 32

_ITEMSIZE = {"float32": 4, "float64": 8}


def check_tensor_size(what: str, dims: Iterable[tuple[str, int]], dtype: str) -> None:
    """:class:`SettingConflict` unless a tensor of the named dimensions fits
    :data:`MAX_TENSOR_GIB`.

    Args:
        what: the tensor, e.g. ``"the probe batch's Jacobians"``.
        dims: ``(setting name, size)`` per dimension, e.g. ``[("seq_len", 80), ...]``.
        dtype: ``"float32"`` or ``"float64"``.
    """
    dims = list(dims)
    gib = math.prod(size for _, size in dims) * _ITEMSIZE[dtype] / 2**30
    if gib > MAX_TENSOR_GIB:
        shape = " x ".join(f"{name}={size}" for name, size in dims)
        names = ", ".join(dict.fromkeys(name for name, _ in dims))
        raise SettingConflict(names, f"{what} ({shape}, {dtype}) would take {gib:.3g} GiB, "
                              f"over the {MAX_TENSOR_GIB} GiB limit of one tensor; lower {names}")


# ---------------------------------------------------------------------- shared rules
# Each rule is a ``gatescope.checks`` function, called from a pydantic validator with the
# setting's name, so a setting and a library argument share the rule and its message.


def _integral(value: Any) -> Any:
    """A whole float (TOML ``1e3``) or a digit string (from ``a,b,c``) as an ``int``; other
    values unchanged, for :func:`gatescope.checks.as_int` to judge."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return value


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, str):
        return [p.strip() for p in value.split(",") if p.strip()]
    if isinstance(value, list | tuple):
        return list(value)
    return [value]


def _name(info: ValidationInfo) -> str:
    return info.field_name or "value"


def integer(minimum: int | None = 1, maximum: int | None = None, *,
            optional: bool = False) -> BeforeValidator:
    """A validator: an integer in ``[minimum, maximum]`` (``None`` too when ``optional``)."""

    def check(value: Any, info: ValidationInfo) -> int | None:
        if optional and value is None:
            return None
        return checks.as_int(_name(info), _integral(value), minimum=minimum, maximum=maximum)

    return BeforeValidator(check)


def number(*, optional: bool = False, **bounds: float) -> BeforeValidator:
    """A validator: a finite number within ``bounds`` (those of :func:`checks.as_float`;
    ``None`` too when ``optional``)."""

    def check(value: Any, info: ValidationInfo) -> float | None:
        if optional and value is None:
            return None
        return checks.as_float(_name(info), value, **bounds)

    return BeforeValidator(check)


def integers(minimum: int = 0, maximum: int | None = None) -> BeforeValidator:
    """A validator: a non-empty list of distinct integers in ``[minimum, maximum]``, sorted
    (a list or ``"a,b,c"``)."""

    def check(value: Any, info: ValidationInfo) -> tuple[int, ...]:
        items = [_integral(v) for v in _as_list(value)]
        return tuple(sorted(checks.as_int_tuple(_name(info), items, minimum=minimum,
                                                maximum=maximum)))

    return BeforeValidator(check)


def numbers(min_length: int = 1, **bounds: float) -> BeforeValidator:
    """A validator: a list of at least ``min_length`` finite numbers within ``bounds``."""

    def check(value: Any, info: ValidationInfo) -> tuple[float, ...]:
        return checks.as_float_tuple(_name(info), _as_list(value), min_length=min_length,
                                     **bounds)

    return BeforeValidator(check)


# ---------------------------------------------------------------------- common setting types


def _seeds(value: Any) -> tuple[int, ...]:
    value = _integral(value)
    if isinstance(value, int) and not isinstance(value, bool):
        count = checks.as_int("a number of seeds", value, minimum=1, maximum=MAX_SEEDS)
        return tuple(range(count))
    allowed = (f"seeds must be a count N in [1, {MAX_SEEDS}] (seeds 0..N-1) or a list of at "
               f"most {MAX_SEEDS} distinct integers in [0, 2**63 - 1]")
    items = [_integral(v) for v in _as_list(value)]
    try:
        seeds = checks.as_int_tuple("seeds", items, minimum=0, maximum=MAX_SEED)
    except ValueError:
        raise ValueError(f"{allowed}; got {value!r}") from None
    if len(seeds) > MAX_SEEDS:
        raise ValueError(f"{allowed}; got {len(seeds)} seeds")
    return seeds


def _names(kind: str, registered: Callable[[], list[str]], allow_empty: bool = False
           ) -> Callable[[Any], tuple[str, ...]]:
    def check(value: Any) -> tuple[str, ...]:
        names = tuple(str(v) for v in _as_list(value))
        choices = registered()
        bad = [n for n in names if n not in choices]
        if (not names and not allow_empty) or bad or len(set(names)) != len(names):
            problem = f"unknown {kind} {bad}" if bad else f"give distinct {kind} names"
            raise ValueError(f"{problem}; allowed: {', '.join(choices)}")
        return names

    return check


def _learning_rates(value: Any) -> float | dict[str, float]:
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - set(list_optimizers()))
        if unknown:
            raise ValueError(f"unknown optimizer(s) {unknown} in the lr table; allowed keys: "
                             f"{', '.join(list_optimizers())}")
        return {str(k): check_learning_rate(v) for k, v in value.items()}
    if isinstance(value, bool):
        raise ValueError(f"learning rate must be a number > 0; got {value!r}")
    return check_learning_rate(value)


def _steps(value: Any) -> tuple[int, ...]:
    return tuple(sorted({checks.as_int("each step", _integral(v), minimum=0, maximum=MAX_STEPS)
                         for v in _as_list(value)}))


def _device(value: Any) -> str:
    text = str(value).strip().lower()
    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    allowed = "allowed: 'cpu', 'cuda', 'cuda:N', 'auto'"
    try:
        device = torch.device(text)
    except RuntimeError:
        raise ValueError(f"not a device; {allowed}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("CUDA is not available on this machine; allowed: 'cpu', 'auto'")
        if (device.index or 0) >= torch.cuda.device_count():
            raise ValueError(f"there are {torch.cuda.device_count()} CUDA devices; {allowed}")
    elif device.type != "cpu":
        raise ValueError(f"unsupported device type {device.type!r}; {allowed}")
    return str(device)


#: ``seeds``: a count ``N`` in ``[1, MAX_SEEDS]`` (seeds ``0..N-1``) or a list of at most
#: ``MAX_SEEDS`` distinct seeds in ``[0, 2**63 - 1]``.
Seeds = Annotated[tuple[int, ...], BeforeValidator(_seeds)]
#: ``tasks``: registered task names (comma-separated string or list).
TaskNames = Annotated[tuple[str, ...], BeforeValidator(_names("task(s)", list_tasks))]
#: ``cells``: registered cell names.
CellNames = Annotated[tuple[str, ...], BeforeValidator(_names("cell(s)", list_cells))]
#: ``extra_quantities``: registered quantity names (:func:`gatescope.list_quantities`), maybe
#: none.
QuantityNames = Annotated[tuple[str, ...],
                          BeforeValidator(_names("quantity(-ies)", list_quantities, True))]
#: ``optimizers``: names from :func:`gatescope.training.list_optimizers`.
OptimizerNames = Annotated[tuple[str, ...],
                           BeforeValidator(_names("optimizer(s)", list_optimizers))]
#: ``lr``: one learning rate, or a table ``{optimizer: lr}``; each finite and > 0.
LearningRates = Annotated[float | dict[str, float], BeforeValidator(_learning_rates)]
#: ``checkpoints``: training steps in ``[0, MAX_STEPS]``, sorted without repeats.
Steps = Annotated[tuple[int, ...], BeforeValidator(_steps)]
#: ``seq_len``: ``T`` in ``[1, MAX_SEQ_LEN]``.
SeqLen = Annotated[int, integer(1, MAX_SEQ_LEN)]
#: ``hidden_size``: ``n`` in ``[1, MAX_HIDDEN_SIZE]``.
HiddenSize = Annotated[int, integer(1, MAX_HIDDEN_SIZE)]
#: ``input_size``: ``m`` in ``[1, MAX_INPUT_SIZE]``.
InputSize = Annotated[int, integer(1, MAX_INPUT_SIZE)]
#: ``input_size`` that may be ``None`` (each task's smallest).
OptionalInputSize = Annotated[int | None, integer(1, MAX_INPUT_SIZE, optional=True)]
#: a number of sequences (``batch_size``, ``probe_batch``, ...) in ``[1, MAX_BATCH]``.
BatchSize = Annotated[int, integer(1, MAX_BATCH)]
#: a number of optimizer steps (``steps``, ``log_every``) in ``[1, MAX_STEPS]``.
StepCount = Annotated[int, integer(1, MAX_STEPS)]
#: a finite number ``> 0``.
PositiveFloat = Annotated[float, number(above=0)]
#: a finite number ``>= 0``.
NonNegativeFloat = Annotated[float, number(minimum=0)]
#: lags: a non-empty list of distinct integers in ``[1, MAX_SEQ_LEN]``, sorted (each
#: experiment also keeps them below its ``seq_len``: :func:`check_lags`).
Lags = Annotated[tuple[int, ...], integers(1, MAX_SEQ_LEN)]
#: ``device``: ``cpu``, ``cuda``, ``cuda:N`` (must exist here) or ``auto``.
Device = Annotated[str, BeforeValidator(_device)]
#: ``dtype``.
DtypeName = Literal["float32", "float64"]


def lr_for(lr: float | Mapping[str, float], optimizer: str) -> float:
    """The learning rate of ``optimizer`` from an ``lr`` setting (``ValueError`` if absent)."""
    if not isinstance(lr, Mapping):
        return float(lr)
    if optimizer not in lr:
        raise ValueError(f"no learning rate for optimizer {optimizer!r}; the lr table has "
                         f"{sorted(lr)}")
    return float(lr[optimizer])


def check_lr_covers(lr: float | Mapping[str, float], optimizers: Iterable[str]) -> None:
    """``ValueError`` unless ``lr`` gives a rate for every optimizer of the grid."""
    for name in optimizers:
        lr_for(lr, name)


def check_task_sizes(tasks: Iterable[str], seq_len: int, input_size: int | None = None) -> None:
    """``ValueError`` (the task's own message) unless every task accepts these sizes."""
    for name in tasks:
        make_task(name, seq_len=seq_len, input_size=input_size)


def check_lags(lags: Iterable[int], seq_len: int) -> None:
    """``ValueError`` unless every lag is ``< seq_len`` (a lag must fit in the sequence)."""
    outside = [lag for lag in lags if lag >= seq_len]
    if outside:
        raise ValueError(f"every lag must be < seq_len={seq_len}; {outside} are not")


def check_within(steps: Iterable[int], total: int) -> None:
    """``ValueError`` unless every step lies in ``[0, total]``."""
    outside = [s for s in steps if not 0 <= s <= total]
    if outside:
        raise ValueError(f"must lie in [0, steps={total}]; {outside} do not")


def format_value(value: Any) -> str:
    """A setting value as one would type it after ``--set KEY=``."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return ",".join(format_value(v) for v in value)
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k} = {format_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def describe_settings(model: type[Settings]) -> list[tuple[str, str, str]]:
    """``(name, default as typed after --set, description)`` of every setting."""
    return [(name, format_value(field.get_default(call_default_factory=True)),
             field.description or "") for name, field in model.model_fields.items()]
