"""Verdicts: each claim of the paper, the measurement that tests it, the numbers (median and
IQR across seeds) and a rule-based verdict. Rules are stated in each ``judge_*`` docstring
and in the report next to the numbers; nothing here is hard-coded."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from ..paper import CLAIMS

SUPPORTED, NOT_SUPPORTED, MIXED, NOT_MEASURED = "supported", "not supported", "mixed", \
    "not measured"


@dataclass
class Verdict:
    """One claim's judgement.

    Attributes:
        claim: the claim id (``C1`` ... ``C8``).
        statement: the paper's claim in one line.
        measurement: what was measured and the rule that turns it into a verdict.
        verdict: ``supported``, ``not supported``, ``mixed`` or ``not measured``.
        evidence: lines of numbers (median [IQR, n]) behind the verdict.
        figures: names of the figures that show it.
    """

    claim: str
    statement: str
    measurement: str
    verdict: str = NOT_MEASURED
    evidence: list[str] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, claim: str, measurement: str, figures: Iterable[str] = ()) -> Verdict:
        """A not-yet-judged verdict on the paper's claim ``claim`` (its statement is the
        claim's title in :data:`gatescope.paper.CLAIMS`)."""
        return cls(claim, CLAIMS[claim].title, measurement, figures=list(figures))


def combine(checks: list[bool]) -> str:
    """All true: supported; none: not supported; otherwise mixed."""
    if not checks:
        return NOT_MEASURED
    if all(checks):
        return SUPPORTED
    return NOT_SUPPORTED if not any(checks) else MIXED
