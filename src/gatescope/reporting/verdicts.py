"""Verdicts: each claim of the paper, the measurement that tests it, the null model the rule
must beat, the measured margin over it, the numbers (median and IQR across seeds) and a
rule-based verdict. Rules are stated in each ``judge_*`` docstring and in the report next to
the numbers; nothing here is hard-coded.

A *check* of a rule has one of four outcomes: it **holds** (the null is beaten), **fails**
(the data side with the null), is **inconclusive** (a sign test whose seeds lean the claim's
way but do not reach :data:`ALPHA`, or that too few seeds can never reach it), or is **not
informative** (the measurement cannot tell the two sides apart, e.g. a saturated CE).
:func:`combine_outcomes` turns them into a verdict: inconclusive and uninformative checks are
never counted as failures, and a rule none of whose checks could be decided is "not
measured", with the reason in the evidence.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from ..paper import CLAIMS, FOLLOWUP_CLAIMS

SUPPORTED, NOT_SUPPORTED, MIXED, NOT_MEASURED = "supported", "not supported", "mixed", \
    "not measured"
#: The outcomes of one check (see the module notes).
HOLDS, FAILS, INCONCLUSIVE, UNINFORMATIVE = "holds", "fails", "inconclusive", \
    "not informative"
#: Significance level of every sign test over seeds (one- or two-sided as the rule says).
ALPHA = 0.05


@dataclass
class Verdict:
    """One claim's judgement.

    Attributes:
        claim: the claim id (``C1`` ... ``C8``, or a follow-up's ``L1`` ... ``A3``).
        statement: the paper's claim in one line.
        measurement: what was measured and the rule that turns it into a verdict.
        null: the null model the rule must beat, in words.
        verdict: ``supported``, ``not supported``, ``mixed`` or ``not measured``.
        margin: the measured margin over the null, in one line (empty when not measured).
        evidence: lines of numbers (median [IQR, n]) behind the verdict, each check's null
            value, margin and outcome.
        figures: names of the figures that show it.
    """

    claim: str
    statement: str
    measurement: str
    null: str = ""
    verdict: str = NOT_MEASURED
    margin: str = ""
    evidence: list[str] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, claim: str, measurement: str, figures: Iterable[str] = (), *,
           null: str = "") -> Verdict:
        """A not-yet-judged verdict on the paper's claim ``claim`` (its statement is the
        claim's title in :data:`gatescope.paper.CLAIMS` or :data:`~gatescope.paper.
        FOLLOWUP_CLAIMS`) against the null model ``null``."""
        title = (CLAIMS.get(claim) or FOLLOWUP_CLAIMS[claim]).title
        return cls(claim, title, measurement, null, figures=list(figures))


def combine(checks: list[bool]) -> str:
    """All true: supported; none: not supported; otherwise mixed."""
    return combine_outcomes([HOLDS if c else FAILS for c in checks])


def combine_outcomes(outcomes: list[str]) -> str:
    """The verdict of a rule's check outcomes.

    Uninformative checks are left out. Every remaining check holds: supported; every one
    fails: not supported; none decided (no checks, or every one inconclusive): not measured;
    otherwise mixed (holds beside fails, or an inconclusive check beside decided ones: an
    inconclusive check neither holds nor fails).
    """
    decided = [o for o in outcomes if o in (HOLDS, FAILS)]
    if not decided:
        return NOT_MEASURED
    if all(o == HOLDS for o in decided):
        return MIXED if INCONCLUSIVE in outcomes else SUPPORTED
    return NOT_SUPPORTED if all(o == FAILS for o in outcomes if o != UNINFORMATIVE) else MIXED


def judge(v: Verdict, outcomes: list[str], margin: str) -> Verdict:
    """Set ``v``'s verdict from its checks' ``outcomes`` and its ``margin`` line; when no
    check could be decided say why in the evidence ("not measured: ...")."""
    v.verdict, v.margin = combine_outcomes(outcomes), margin
    if v.verdict == NOT_MEASURED:
        v.evidence.append(f"not measured: {_undecided(outcomes)}")
    return v


def _undecided(outcomes: list[str]) -> str:
    """Why none of ``outcomes`` was decided."""
    if not outcomes:
        return "no check could be made"
    if all(o == UNINFORMATIVE for o in outcomes):
        return "every check is not informative"
    if all(o == INCONCLUSIVE for o in outcomes):
        return (f"every sign test is inconclusive (too few seeds to reach α = {ALPHA:g}, or "
                "no significant majority)")
    return "every check is inconclusive or not informative"


def binomial_tail(k: int, n: int) -> float:
    """``P(X ≥ k)`` for ``X ~ Binomial(n, 1/2)`` (exact)."""
    return sum(math.comb(n, i) for i in range(max(k, 0), n + 1)) / 2 ** n if n else 1.0


@dataclass(frozen=True)
class SignTest:
    """An exact sign test of per-seed paired differences against the null "as likely
    positive as negative".

    Attributes:
        wins: seeds on the claim's side (one-sided: positive differences; two-sided: the
            larger of the positive and negative counts). A zero difference is on neither side.
        n: seeds with a finite difference.
        p: the exact p-value.
        two_sided: whether both directions count.
    """

    wins: int
    n: int
    p: float
    two_sided: bool

    @property
    def smallest_p(self) -> float:
        """The p-value of ``n`` out of ``n``: the best these seeds can reach."""
        return min(1.0, (2 if self.two_sided else 1) * 0.5 ** self.n)

    @property
    def outcome(self) -> str:
        """Holds at ``p ≤ ALPHA``; fails without a majority on the claim's side (a tie, or
        zero differences, included); inconclusive otherwise, which is every outcome when
        :attr:`smallest_p` exceeds :data:`ALPHA`."""
        if self.n and self.p <= ALPHA:
            return HOLDS
        if self.wins <= self.n / 2:
            return FAILS
        return INCONCLUSIVE

    def __str__(self) -> str:
        text = (f"{self.wins}/{self.n} seeds, {'two' if self.two_sided else 'one'}-sided sign "
                f"test p = {self.p:.3g}")
        if self.smallest_p > ALPHA:
            text += (f" ({self.n} seeds cannot reach α = {ALPHA:g}: smallest p "
                     f"{self.smallest_p:.3g})")
        return f"{text} → {self.outcome}"


def sign_test(differences, two_sided: bool = False) -> SignTest:
    """The exact sign test of per-seed ``differences`` (non-finite ones left out): one-sided
    for "positive", two-sided for "a consistent sign either way"."""
    d = np.asarray(differences, dtype=float)
    d = d[np.isfinite(d)]
    up, down = int((d > 0).sum()), int((d < 0).sum())
    wins = max(up, down) if two_sided else up
    p = min(1.0, 2 * binomial_tail(wins, d.size)) if two_sided else binomial_tail(wins, d.size)
    return SignTest(wins, int(d.size), float(p), two_sided)
