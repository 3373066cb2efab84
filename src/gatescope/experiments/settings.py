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
import sys
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import BeforeValidator, ValidationError

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
        key = str(e["loc"][0]) if e["loc"] else "(settings)"
        msg = e["msg"].removeprefix("Value error, ")
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


# ---------------------------------------------------------------------- common setting types


def _as_int(value: Any, what: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{what} must be an integer; got {value!r}")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    if not isinstance(value, int):
        raise ValueError(f"{what} must be an integer; got {value!r}")
    return value


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, str):
        return [p.strip() for p in value.split(",") if p.strip()]
    if isinstance(value, list | tuple):
        return list(value)
    return [value]


def _seeds(value: Any) -> tuple[int, ...]:
    if isinstance(value, int | float | str) and not isinstance(value, bool) and not (
            isinstance(value, str) and "," in value):
        count = _as_int(value, "seeds")
        if count < 1:
            raise ValueError(f"a number of seeds must be >= 1; got {count}")
        return tuple(range(count))
    seeds = tuple(_as_int(v, "each seed") for v in _as_list(value))
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be a count N >= 1 (seeds 0..N-1) or a list of distinct "
                         f"integers >= 0; got {value!r}")
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
    steps = sorted({_as_int(v, "each step") for v in _as_list(value)})
    if steps and steps[0] < 0:
        raise ValueError(f"steps must be >= 0; got {steps}")
    return tuple(steps)


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


#: ``seeds``: a count ``N`` (seeds ``0..N-1``) or a list of distinct seeds ``>= 0``.
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
#: ``checkpoints``: training steps ``>= 0``, sorted without repeats.
Steps = Annotated[tuple[int, ...], BeforeValidator(_steps)]
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
