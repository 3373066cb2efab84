"""When a probe records: every ``k`` steps, at logarithmically spaced steps, or at a list.

A training step is a non-negative integer, the number of optimizer updates the model has
seen (``0`` is the initial model). ``step in schedule`` says whether a probe records at
``step``; anything that is not a non-negative integer is never in a schedule.
"""

from __future__ import annotations

from collections.abc import Iterable
from numbers import Integral
from typing import Any

from ..checks import as_int, as_int_tuple


class Schedule:
    """The set of training steps at which a probe records.

    Build one with :meth:`every`, :meth:`log` or :meth:`at`; test membership with
    ``step in schedule``.

    Example:
        >>> 20 in Schedule.every(10), 5 in Schedule.every(10)
        (True, False)
        >>> Schedule.log(100, num=5).steps_until(100)
        [0, 1, 3, 10, 32, 100]
    """

    def __init__(self, kind: str, settings: dict[str, Any], every: int | None = None,
                 start: int = 0, steps: Iterable[int] = ()) -> None:
        self._kind = kind
        self._settings = settings
        self._every = every
        self._start = start
        self._steps = frozenset(steps)

    @classmethod
    def every(cls, k: int, start: int = 0) -> Schedule:
        """Steps ``start, start + k, start + 2k, …`` (unbounded).

        Args:
            k: the interval, ``>= 1``.
            start: the first step, ``>= 0``.
        """
        k = as_int("k", k, minimum=1)
        start = as_int("start", start, minimum=0)
        return cls("every", {"k": k, "start": start}, every=k, start=start)

    @classmethod
    def log(cls, stop: int, num: int = 20, start: int = 1) -> Schedule:
        """Step ``0`` and ``num`` logarithmically spaced steps from ``start`` to ``stop``.

        The steps are ``round(start · (stop/start)^(i/(num-1)))`` for ``i = 0..num-1``
        (``numpy.geomspace`` rounded to integers); rounding can merge neighbours near
        ``start``, so there may be fewer than ``num`` distinct steps.

        Args:
            stop: the last step, ``>= start``.
            num: how many log-spaced points, ``>= 1`` (``1`` gives ``start`` only).
            start: the first log-spaced step, ``>= 1``.
        """
        start = as_int("start", start, minimum=1)
        stop = as_int("stop", stop, minimum=start)
        num = as_int("num", num, minimum=1)
        ratio = stop / start
        points = [start] if num == 1 else [
            round(start * ratio ** (i / (num - 1))) for i in range(num)]
        return cls("log", {"stop": stop, "num": num, "start": start}, steps=[0, *points])

    @classmethod
    def at(cls, steps: Iterable[int]) -> Schedule:
        """Exactly the given steps (distinct non-negative integers, in any order)."""
        values = sorted(as_int_tuple("steps", steps, minimum=0))
        return cls("at", {"steps": values}, steps=values)

    def __contains__(self, step: object) -> bool:
        if isinstance(step, bool) or not isinstance(step, Integral) or step < 0:
            return False
        if self._every is not None:
            return step >= self._start and (step - self._start) % self._every == 0
        return int(step) in self._steps

    def steps_until(self, stop: int) -> list[int]:
        """The scheduled steps ``<= stop``, ascending (how many probe calls will record)."""
        stop = as_int("stop", stop, minimum=0)
        if self._every is None:
            return sorted(s for s in self._steps if s <= stop)
        return list(range(self._start, stop + 1, self._every))

    def to_dict(self) -> dict[str, Any]:
        """``{"kind": ..., **settings}``, JSON-ready; :meth:`from_dict` inverts it."""
        return {"kind": self._kind, **self._settings}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Schedule:
        """The schedule :meth:`to_dict` described."""
        data = dict(data)
        kind = data.pop("kind", None)
        builders = {"every": cls.every, "log": cls.log, "at": cls.at}
        if kind not in builders:
            raise ValueError(f"schedule kind must be one of {sorted(builders)}, got {kind!r}")
        return builders[kind](**data)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Schedule) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(repr(self))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._settings.items())
        return f"Schedule.{self._kind}({args})"

