"""``metering.evidence`` as pure logic: exact savings from nano-dollars, Y over requests judged against the ceiling
(a middle tier's requests, judged against the floor, left out and named), intervals that hold their values and
replay with the same seed."""

from __future__ import annotations

from dataclasses import replace
from datetime import date
from decimal import Decimal

from metering.evidence import evidence, percent, ratio_interval, wilson
from metering.ledger.report import ReportRow, Totals
from tests.test_outcomes import judged

START, END = date(2026, 11, 1), date(2026, 12, 1)


def _row(purpose: str, tier: str, requests: int, cost: int, counterfactual: int) -> ReportRow:
    return ReportRow({"purpose": purpose, "tier": tier}, Totals(requests=requests, cost_nanos=cost,
                                                                counterfactual_cost_nanos=counterfactual))


ROWS = [_row("chat", "small", 3, 1_000_000_001, 9_000_000_007), _row("chat", "frontier", 1, 2, 2),
        _row("shadow", "frontier", 3, 500, 500), _row("judge", "judge", 3, 7, 7)]


def test_savings_are_exact_and_measuring_is_apart() -> None:
    found = evidence("t", START, END, ROWS, [], "frontier")
    assert found.cost_nanos == 1_000_000_003 and found.counterfactual_cost_nanos == 9_000_000_009
    # 100 * 8_000_000_006 / 9_000_000_009 = 88.888888...: rounded half-even at the end only
    assert found.saved_percent == Decimal("88.89") == percent(8_000_000_006, 9_000_000_009)
    assert found.measuring_nanos == 507 and found.saved_net_percent == percent(8_000_000_006 - 507, 9_000_000_009)
    assert [(s.purpose, s.tier) for s in found.measuring] == [("shadow", "frontier"), ("judge", "judge")]
    assert found.quality_ratio is None and "judged quality unknown (0 judged samples" in found.sentence()
    assert percent(1, 0) is None and percent(1, 8) == Decimal("12.50") and percent(5, 1000) == Decimal("0.50")


def test_quality_ratio_counts_only_requests_judged_against_the_ceiling() -> None:
    small_won = replace(judged(0), weak_score=1.0, strong_score=0.0)
    tie = replace(judged(1), weak_score=0.5, strong_score=0.5)
    frontier_won = replace(judged(2), weak_score=0.0, strong_score=1.0)
    # routed to the ceiling and judged against the floor: its grade on both sides of Y
    on_ceiling = replace(judged(3), routed_tier="frontier", weak_score=0.0, strong_score=1.0)
    # routed to mid, judged against the floor: not a comparison with the ceiling
    on_mid = replace(judged(4), routed_tier="mid", strong_tier="mid", weak_score=0.0, strong_score=1.0)
    outcomes = [small_won, tie, frontier_won, on_ceiling, on_mid]
    found = evidence("t", START, END, ROWS, outcomes, None)
    assert found.ceiling == "frontier"  # named by the outcome rows when the caller does not know it
    assert (found.judged, found.vs_ceiling, found.not_vs_ceiling) == (5, 4, {"mid": 1})
    assert found.quality_ratio is not None
    assert found.quality_ratio.value == (1.0 + 0.5 + 0.0 + 1.0) / (0.0 + 0.5 + 1.0 + 1.0)
    assert found.quality_ratio.low <= found.quality_ratio.value <= found.quality_ratio.high
    assert found.sentence() == (
        "routing saved 88.89% against always-frontier at 100.0% of its judged quality (4 judged samples; 95% CI "
        f"{100 * found.quality_ratio.low:.1f}-{100 * found.quality_ratio.high:.1f}%); 1 routed to mid were judged "
        "against the floor, not frontier, and are left out of the quality ratio")
    per_tier = {q.tier: (q.n, q.mean.value) for q in found.quality}
    assert per_tier == {"small": (5, 1.5 / 5), "frontier": (4, 2.5 / 4), "mid": (1, 1.0)}
    assert evidence("t", START, END, ROWS, outcomes, None) == found  # the fixed seed replays the interval


def test_intervals() -> None:
    w = wilson(0.5, 20)
    assert round(w.low, 4) == 0.2993 and round(w.high, 4) == 0.7007  # the textbook Wilson interval
    assert wilson(1.0, 5).high == 1.0 and wilson(0.0, 5).low == 0.0
    many = ratio_interval([(1.0, 0.0), (0.0, 1.0), (0.5, 0.5), (0.0, 1.0)] * 100)
    few = ratio_interval([(1.0, 0.0), (0.0, 1.0), (0.5, 0.5), (0.0, 1.0)] * 5)
    assert many is not None and few is not None and many.value == few.value == 0.6
    assert few.low < many.low < 0.6 < many.high < few.high  # more samples, a narrower interval
    assert ratio_interval([(1.0, 0.0)]) is None  # the ceiling never scored: no ratio
