"""The :class:`Task` interface: a seeded generator of ``(inputs, targets)`` batches.

Conventions shared by every task:
    * ``u`` is ``(B, T_total, m)``, batch first; ``T_total = task.total_len`` equals
      ``seq_len`` except where a task says otherwise (``copy``).
    * Time is 0-based in tensors: ``u[:, -1]`` is the last input ``u_T``. "Delay ``d``" or
      "lag ``ℓ``" means ``u[:, T-1-d]``: delay 0 is the last step.
    * Regression tasks (``loss="mse"``, ``readout="last"``) return ``y`` of shape ``(B, 1)``
      with the dtype of ``u``; classification tasks (``loss="cross_entropy"``,
      ``readout="all"``) return ``y`` of shape ``(B, T_total)`` holding ``torch.long`` class
      indices in ``[0, output_size)``.
    * Tasks with ``has_mask = True`` return ``(u, y, mask)``; ``mask`` is a ``torch.bool``
      tensor marking the targets that count: ``(B, T_total)``, one flag per step, for
      ``readout="all"`` (the shape of ``y`` for classification; ``y`` without its output
      axis for regression), otherwise shaped like ``y``. The masked loss is
      ``(loss_per_target * mask).sum() / mask.sum()``.
    * All randomness comes from the ``torch.Generator`` handed to :meth:`Task.sample`, drawn
      on the CPU in float64 and only then cast and moved, so one seed gives the same batch
      on every device, and the float32 batch is the float64 batch rounded.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..checks import as_int
from . import precomputed

#: Samples behind every Monte Carlo ``baseline_loss``.
MC_SAMPLES = 100_000
#: Seed of the generator behind every Monte Carlo ``baseline_loss`` (tests use others).
MC_SEED = 20_250_812
_MC_CHUNK = 10_000
_BASELINE_CACHE: dict[Task, float] = {}

_CORE_FIELDS = ("seq_len", "input_size")


@dataclass(frozen=True)
class TaskInfo:
    """One row of the task table (``gatescope list``).

    Attributes:
        name: registry name.
        loss: ``"mse"`` or ``"cross_entropy"``.
        readout: ``"last"`` (one target per sequence) or ``"all"`` (one per step).
        output_size: size of the model output the loss expects (classes for cross entropy).
        input_size: the rule on ``m``, e.g. ``">= 2"`` or ``"== 10"``.
        min_seq_len: the smallest ``seq_len`` with the default options.
        options: option name -> default value.
        has_mask: whether :meth:`Task.sample` returns a mask.
        baseline: ``"analytic"`` or ``"monte_carlo"``.
        description: one line.
        source: where the task comes from.
    """

    name: str
    loss: str
    readout: str
    output_size: int
    input_size: str
    min_seq_len: int
    options: dict[str, Any]
    has_mask: bool
    baseline: str
    description: str
    source: str


@dataclass(frozen=True)
class Task:
    """Base class of gatescope tasks: a seeded generator of fresh batches.

    A task is a frozen dataclass of ``seq_len``, ``input_size`` and its options. A subclass
    declares its options as dataclass fields with defaults, sets the class attributes below,
    and implements :meth:`_generate` (plus, where they apply, :meth:`_check_options`,
    :meth:`_min_seq_len` and :meth:`_analytic_baseline`). Register it with
    :func:`gatescope.tasks.register_task`.

    Args:
        seq_len: ``T``, the task's length parameter (the number of input steps except where a
            task says otherwise; see :attr:`total_len`).
        input_size: ``m``, the number of input channels; ``None`` picks the smallest allowed.

    Raises:
        ValueError: an argument or option out of range; the message names it.
    """

    seq_len: int
    input_size: int | None = None

    #: Registry name, set by ``register_task``.
    name: ClassVar[str] = "custom"
    #: ``"mse"`` or ``"cross_entropy"``.
    loss: ClassVar[str] = "mse"
    #: ``"last"``: one target per sequence, read from the last state; ``"all"``: one per step.
    readout: ClassVar[str] = "last"
    #: Size of the model output the loss expects.
    output_size: ClassVar[int] = 1
    #: Whether :meth:`sample` returns ``(u, y, mask)`` rather than ``(u, y)``.
    has_mask: ClassVar[bool] = False
    #: Whether ``y`` is a deterministic function of ``u`` (then :attr:`best_loss` is 0).
    deterministic_target: ClassVar[bool] = False
    #: Smallest and largest allowed ``input_size`` (``None``: unbounded).
    min_input_size: ClassVar[int] = 1
    max_input_size: ClassVar[int | None] = None
    #: Why the input size is constrained (shown in error messages).
    input_size_rule: ClassVar[str] = ""
    #: One-line description and provenance (the ``gatescope list`` table).
    description: ClassVar[str] = ""
    source: ClassVar[str] = ""

    # ------------------------------------------------------------------ construction

    def __post_init__(self) -> None:
        try:
            self._set("seq_len", as_int("seq_len", self.seq_len, minimum=1))
            self._set("input_size", self._checked_input_size(self.input_size))
            self._check_options()
            need, why = self._min_seq_len(self.options)
            if self.seq_len < need:
                raise ValueError(f"seq_len must be >= {need} ({why}); got {self.seq_len}")
        except ValueError as err:
            raise ValueError(f"task {self.name!r}: {err}") from None

    def _set(self, field: str, value: Any) -> None:
        """Store a normalised value on the frozen instance (for use in the checks only)."""
        object.__setattr__(self, field, value)

    def _checked_input_size(self, value: Any) -> int:
        lo, hi = self.min_input_size, self.max_input_size
        if value is None:
            return lo
        why = f" ({self.input_size_rule})" if self.input_size_rule else ""
        if lo == hi:
            allowed = f"input_size must be {lo}{why}"
        elif hi is None:
            allowed = f"input_size must be an integer >= {lo}{why}"
        else:
            allowed = f"input_size must be an integer in [{lo}, {hi}]{why}"
        try:
            m = as_int("input_size", value)
        except ValueError:
            raise ValueError(f"{allowed}; got {value!r}") from None
        if m < lo or (hi is not None and m > hi):
            raise ValueError(f"{allowed}; got {m}")
        return m

    def _check_options(self) -> None:
        """Validate and normalise the options (subclass hook; use :meth:`_set`)."""

    @classmethod
    def _min_seq_len(cls, options: dict[str, Any]) -> tuple[int, str]:
        """``(smallest seq_len, why)`` for the given (validated) options."""
        return 1, "at least one step"

    # ------------------------------------------------------------------ introspection

    @classmethod
    def option_defaults(cls) -> dict[str, Any]:
        """Option name -> default value, in declaration order."""
        return {f.name: f.default for f in dataclasses.fields(cls) if f.name not in _CORE_FIELDS}

    @property
    def options(self) -> dict[str, Any]:
        """This task's option values (normalised), by name."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in _CORE_FIELDS
        }

    @classmethod
    def info(cls) -> TaskInfo:
        """The task's row of the ``gatescope list`` table."""
        lo, hi = cls.min_input_size, cls.max_input_size
        rule = f"== {lo}" if lo == hi else (f">= {lo}" if hi is None else f"in [{lo}, {hi}]")
        defaults = cls.option_defaults()
        analytic = cls._analytic_baseline is not Task._analytic_baseline
        return TaskInfo(
            name=cls.name,
            loss=cls.loss,
            readout=cls.readout,
            output_size=cls.output_size,
            input_size=rule,
            min_seq_len=cls._min_seq_len(defaults)[0],
            options=defaults,
            has_mask=cls.has_mask,
            baseline="analytic" if analytic else "monte_carlo",
            description=cls.description,
            source=cls.source,
        )

    @property
    def total_len(self) -> int:
        """``T_total``, the time dimension of ``u`` (and of ``y`` for ``readout="all"``)."""
        return self.seq_len

    # ------------------------------------------------------------------ sampling

    def sample(
        self,
        batch: int,
        generator: torch.Generator | None = None,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> tuple[Tensor, ...]:
        """A fresh batch.

        Args:
            batch: ``B``, the number of sequences.
            generator: a CPU ``torch.Generator``, the only source of randomness; ``None``
                uses torch's global generator. The same seed gives the same batch, on
                every device.
            dtype: floating dtype of ``u`` (and of ``y`` for regression tasks).
            device: where the returned tensors live.

        Returns:
            ``(u, y)``, or ``(u, y, mask)`` when :attr:`has_mask`: ``u`` is
            ``(B, T_total, m)``; ``y`` is ``(B, 1)`` (``loss="mse"``, ``readout="last"``),
            ``(B, T_total, 1)`` (``loss="mse"``, ``readout="all"``) or ``(B, T_total)``
            ``torch.long`` (``loss="cross_entropy"``); ``mask`` is ``torch.bool``,
            ``(B, T_total)`` for ``readout="all"`` (one flag per step), else shaped like
            ``y``.

        Raises:
            ValueError: ``batch`` not a positive integer, ``generator`` not a CPU
                generator, or ``dtype`` not floating.
        """
        try:
            batch = as_int("batch", batch, minimum=1)
        except ValueError as err:
            raise ValueError(f"task {self.name!r}: {err}") from None
        if generator is not None:
            if not isinstance(generator, torch.Generator):
                raise ValueError(f"generator must be a torch.Generator or None; got {generator!r}")
            if generator.device.type != "cpu":
                raise ValueError(
                    "generator must be a CPU torch.Generator (tasks draw on the CPU, then move "
                    f"the batch to `device`); got one on {generator.device}"
                )
        if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ValueError(f"dtype must be a floating torch.dtype; got {dtype!r}")
        with torch.no_grad():
            parts = self._generate(batch, generator)
        self._check_generated(batch, parts)
        u = parts[0].to(device=device, dtype=dtype)
        y_dtype = dtype if self.loss == "mse" else torch.long
        y = parts[1].to(device=device, dtype=y_dtype)
        if self.has_mask:
            return u, y, parts[2].to(device=device, dtype=torch.bool)
        return u, y

    def _generate(self, batch: int, generator: torch.Generator | None) -> tuple[Tensor, ...]:
        """Draw ``(u, y)`` or ``(u, y, mask)`` on the CPU in float64 (``y`` long for
        classification). Subclasses implement this; :meth:`sample` casts and moves."""
        raise NotImplementedError

    def _check_generated(self, batch: int, parts: tuple[Tensor, ...]) -> None:
        want = 3 if self.has_mask else 2
        if len(parts) != want:
            raise RuntimeError(f"task {self.name!r}: _generate returned {len(parts)} tensors")
        y_shape: tuple[int, ...]
        if self.loss == "cross_entropy":
            y_shape = (batch,) if self.readout == "last" else (batch, self.total_len)
        elif self.readout == "last":
            y_shape = (batch, self.output_size)
        else:
            y_shape = (batch, self.total_len, self.output_size)
        expected = [(batch, self.total_len, self.input_size), y_shape]
        if self.has_mask:
            expected.append((batch, self.total_len) if self.readout == "all" else y_shape)
        for k, (got, exp) in enumerate(zip(parts, expected, strict=True)):
            if tuple(got.shape) != exp:
                raise RuntimeError(
                    f"task {self.name!r}: _generate returned shape {tuple(got.shape)} for "
                    f"output {k}; expected {exp}"
                )

    # ------------------------------------------------------------------ reference losses

    @property
    def baseline_loss(self) -> float:
        """Loss of the best input-independent predictor (the chance level).

        For ``mse`` with ``readout="last"`` it is the loss of predicting the mean of ``y``,
        i.e. ``Var(y)``; for ``readout="all"`` the best constant per step (the per-step mean,
        or for cross entropy the per-step class frequencies, whose loss is the per-step
        entropy averaged over the counted targets). Analytic where the task gives one
        (see :attr:`baseline_kind`), otherwise a Monte Carlo estimate over
        :data:`MC_SAMPLES` sequences drawn with seed :data:`MC_SEED` (float64), read from
        :mod:`gatescope.tasks.precomputed` for the tasks ``gatescope list`` shows, otherwise
        computed on first use, and cached for equal tasks.
        """
        value = self._analytic_baseline()
        if value is not None:
            return float(value)
        try:
            return _BASELINE_CACHE[self]
        except TypeError:  # an unhashable option value: compute without caching
            return self._monte_carlo_baseline()
        except KeyError:
            value = precomputed.lookup(self, MC_SAMPLES, MC_SEED)
            if value is None:
                value = self._monte_carlo_baseline()
            _BASELINE_CACHE[self] = value
            return value

    @property
    def baseline_kind(self) -> str:
        """``"analytic"`` or ``"monte_carlo"``: how :attr:`baseline_loss` is obtained."""
        return "monte_carlo" if self._analytic_baseline() is None else "analytic"

    @property
    def best_loss(self) -> float | None:
        """Infimum of the loss any predictor of ``y`` from ``u`` can reach; ``None`` if unknown.

        ``0.0`` for tasks whose target is a deterministic function of the inputs.
        """
        return 0.0 if self.deterministic_target else None

    def _analytic_baseline(self) -> float | None:
        """The closed-form :attr:`baseline_loss`, or ``None`` to use Monte Carlo."""
        return None

    def _monte_carlo_baseline(self) -> float:
        gen = torch.Generator().manual_seed(MC_SEED)
        ys, masks = [], []
        done = 0
        while done < MC_SAMPLES:
            n = min(_MC_CHUNK, MC_SAMPLES - done)
            with torch.no_grad():
                parts = self._generate(n, gen)
            ys.append(parts[1])
            if self.has_mask:
                masks.append(parts[2].to(torch.bool))
            done += n
        y = torch.cat(ys)
        mask = torch.cat(masks) if masks else torch.ones_like(y, dtype=torch.bool)
        if self.loss == "mse":
            y = y.to(torch.float64)
            w = mask.to(torch.float64)
            w = w[..., None] if w.dim() < y.dim() else w  # a per-step mask of (B, T, out)
            count = w.sum(0).clamp_min(1.0)
            mean = (y * w).sum(0) / count
            return float((((y - mean) ** 2) * w).sum() / w.sum())
        return _per_step_entropy(y.long(), mask, self.output_size)


def _per_step_entropy(y: Tensor, mask: Tensor, classes: int) -> float:
    """Mean over counted targets of ``-log p_t(y)``, ``p_t`` the class frequencies at step t."""
    if y.dim() == 1:
        y, mask = y[:, None], mask[:, None]
    onehot = torch.nn.functional.one_hot(y, classes).to(torch.float64) * mask[..., None]
    counts = onehot.sum(0)  # (T, C)
    totals = counts.sum(-1, keepdim=True)
    p = counts / totals.clamp_min(1.0)
    logp = torch.where(counts > 0, p.log(), torch.zeros_like(p))
    total = float(mask.sum())
    return float(-(counts * logp).sum() / total) if total > 0 else math.nan
