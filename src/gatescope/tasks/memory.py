"""Long-memory tasks: the adding problem, marker recall and the copying-memory task."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..checks import as_choice, as_int
from .base import Task
from .registry import register_task


def _marker_layout(batch: int, seq_len: int, input_size: int, generator) -> Tensor:
    """``(B, T, m)`` float64: channels ``0..m-2`` ~ U(0,1), the last channel zeros."""
    u = torch.rand(batch, seq_len, input_size, generator=generator, dtype=torch.float64)
    u[..., -1] = 0.0
    return u


@register_task("adding")
@dataclass(frozen=True)
class Adding(Task):
    """The adding problem with optional distractor channels (Livi's code, §VII).

    Definition: channels ``0..m-2`` are i.i.d. U(0,1); the last channel is a marker, 1 at
    one step drawn uniformly from ``[0, T//2)`` and at one from ``[T//2, T)``, 0 elsewhere.
    The target is the sum of the two marked channel-0 values,
    ``y = u[i, 0] + u[j, 0]``. Channels ``1..m-2`` are distractors.

    Shapes: ``u`` ``(B, T, m)``, ``y`` ``(B, 1)``. Needs ``m >= 2`` and ``T >= 2``.
    Baseline: ``Var(a + b) = 2/12 = 1/6`` for independent ``a, b ~ U(0,1)``.
    """

    description: ClassVar[str] = "sum of the two marked channel-0 values (one marker per half)"
    source: ClassVar[str] = "Hochreiter & Schmidhuber 1997; Livi 2025 code (s1, s2)"
    deterministic_target: ClassVar[bool] = True
    min_input_size: ClassVar[int] = 2
    input_size_rule: ClassVar[str] = "value channels 0..m-2 and a marker channel last"

    @classmethod
    def _min_seq_len(cls, options: dict[str, Any]) -> tuple[int, str]:
        return 2, "one marker in each half"

    def _generate(self, batch, generator):
        T = self.seq_len
        u = _marker_layout(batch, T, self.input_size, generator)
        first = torch.randint(0, T // 2, (batch,), generator=generator)
        second = torch.randint(T // 2, T, (batch,), generator=generator)
        rows = torch.arange(batch)
        u[rows, first, -1] = 1.0
        u[rows, second, -1] = 1.0
        y = (u[..., 0] * u[..., -1]).sum(dim=1, keepdim=True)
        return u, y

    def _analytic_baseline(self) -> float:
        return 1.0 / 6.0


@register_task("adding_classic")
@dataclass(frozen=True)
class AddingClassic(Adding):
    """The two-channel adding problem of Arjovsky, Shah & Bengio (2016).

    Definition: channel 0 i.i.d. U(0,1); channel 1 a marker, 1 at one step uniform in
    ``[0, T//2)`` and one uniform in ``[T//2, T)``; target the sum of the two marked
    channel-0 values. It is :class:`Adding` with ``m = 2`` fixed.

    Shapes: ``u`` ``(B, T, 2)``, ``y`` ``(B, 1)``. Baseline ``1/6``.
    """

    description: ClassVar[str] = "two-channel adding problem (values, markers)"
    source: ClassVar[str] = "Arjovsky, Shah & Bengio 2016 (after Hochreiter & Schmidhuber 1997)"
    min_input_size: ClassVar[int] = 2
    max_input_size: ClassVar[int | None] = 2
    input_size_rule: ClassVar[str] = "a value channel and a marker channel"


@register_task("recall")
@dataclass(frozen=True)
class Recall(Task):
    """Recall of several early marked values (the paper's copy-like task, Livi's code).

    Definition: channels ``0..m-2`` i.i.d. U(0,1); the last channel marks ``n_markers``
    distinct steps drawn uniformly (without replacement) from the first
    ``W = max(3, T//3)`` steps. The target is the sum of the marked channel-0 values.

    Shapes: ``u`` ``(B, T, m)``, ``y`` ``(B, 1)``. Needs ``m >= 2`` and ``W >= n_markers``
    (``T >= 15`` for the default 5 markers).
    Baseline: ``n_markers / 12`` (``5/12`` by default).

    Args:
        n_markers: number of marked steps (default 5, as in the paper).
    """

    n_markers: int = 5

    description: ClassVar[str] = "sum of 5 marked channel-0 values, all in the first third"
    source: ClassVar[str] = "Livi 2025 code (s1_effective_lr.py)"
    deterministic_target: ClassVar[bool] = True
    min_input_size: ClassVar[int] = 2
    input_size_rule: ClassVar[str] = "value channels 0..m-2 and a marker channel last"

    def _check_options(self) -> None:
        self._set("n_markers", as_int("n_markers", self.n_markers, minimum=1))

    @classmethod
    def _min_seq_len(cls, options: dict[str, Any]) -> tuple[int, str]:
        k = options["n_markers"]
        need = 3 if k <= 3 else 3 * k
        return need, f"the window max(3, seq_len // 3) must hold n_markers={k} distinct steps"

    @property
    def window(self) -> int:
        """``W = max(3, T//3)``: markers fall in steps ``[0, W)``."""
        return max(3, self.seq_len // 3)

    def _generate(self, batch, generator):
        u = _marker_layout(batch, self.seq_len, self.input_size, generator)
        # A uniform random k-subset per row: the first k of a random permutation.
        order = torch.rand(batch, self.window, generator=generator, dtype=torch.float64)
        steps = order.argsort(dim=1)[:, : self.n_markers]
        u[torch.arange(batch)[:, None], steps, -1] = 1.0
        y = (u[..., 0] * u[..., -1]).sum(dim=1, keepdim=True)
        return u, y

    def _analytic_baseline(self) -> float:
        return self.n_markers / 12.0


@register_task("copy")
@dataclass(frozen=True)
class Copy(Task):
    """The copying-memory task of Arjovsky, Shah & Bengio (2016).

    Alphabet (input one-hot channels and target classes): 0 blank, 1..8 the symbols,
    9 the delimiter. Input: 10 symbols drawn i.i.d. uniformly from the 8, then ``T - 1``
    blanks, the delimiter, and 10 blanks: ``T_total = T + 20`` steps (``seq_len`` is ``T``,
    the delay). Target: blank for the first ``T + 10`` steps, then the 10 symbols in order.
    The loss is the per-step cross entropy over 9 classes (the delimiter is never a
    target).

    Shapes: ``u`` ``(B, T+20, 10)`` one-hot; ``y`` ``(B, T+20)`` long in ``[0, 9)``;
    ``mask`` ``(B, T+20)`` bool. ``input_size`` is fixed at 10.

    Args:
        scored: which steps count. ``"all"`` (default): every step, as in Arjovsky et al.;
            the memoryless baseline (blank, then uniform over the 8 symbols) is
            ``10 ln 8 / (T + 20)``. ``"recall"``: only the last 10 steps; baseline ``ln 8``.
    """

    scored: str = "all"

    #: Number of symbols to copy and size of the symbol alphabet.
    COPY_LEN: ClassVar[int] = 10
    N_SYMBOLS: ClassVar[int] = 8
    BLANK: ClassVar[int] = 0
    DELIMITER: ClassVar[int] = 9

    loss: ClassVar[str] = "cross_entropy"
    readout: ClassVar[str] = "all"
    output_size: ClassVar[int] = 9
    has_mask: ClassVar[bool] = True
    deterministic_target: ClassVar[bool] = True
    min_input_size: ClassVar[int] = 10
    max_input_size: ClassVar[int | None] = 10
    input_size_rule: ClassVar[str] = "one-hot over blank, 8 symbols and the delimiter"
    description: ClassVar[str] = "reproduce 10 symbols after a delay of T (T+20 steps)"
    source: ClassVar[str] = "Arjovsky, Shah & Bengio 2016 (after Hochreiter & Schmidhuber 1997)"

    def _check_options(self) -> None:
        self._set("scored", as_choice("scored", self.scored, ("all", "recall")))

    @property
    def total_len(self) -> int:
        """``T + 20``."""
        return self.seq_len + 2 * self.COPY_LEN

    def _generate(self, batch, generator):
        T, k = self.seq_len, self.COPY_LEN
        symbols = torch.randint(1, self.N_SYMBOLS + 1, (batch, k), generator=generator)
        tokens = torch.full((batch, self.total_len), self.BLANK, dtype=torch.long)
        tokens[:, :k] = symbols
        tokens[:, T + k - 1] = self.DELIMITER
        u = torch.nn.functional.one_hot(tokens, self.input_size).to(torch.float64)
        y = torch.full((batch, self.total_len), self.BLANK, dtype=torch.long)
        y[:, T + k :] = symbols
        mask = torch.ones(batch, self.total_len, dtype=torch.bool)
        if self.scored == "recall":
            mask[:, : T + k] = False
        return u, y, mask

    def _analytic_baseline(self) -> float:
        counted = self.total_len if self.scored == "all" else self.COPY_LEN
        return self.COPY_LEN * math.log(self.N_SYMBOLS) / counted
