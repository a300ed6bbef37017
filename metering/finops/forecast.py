"""Month-end spend forecasts and budget run-out days from a daily spend series (pure: no I/O, no clock).

The model is multiplicative: ``spend(day) = level(day) * weekday_factor(weekday) * noise``, fitted so that one-off
spikes barely move it:

- weekday factors are medians, per weekday, of each day's ratio to the median of the 7 days centred on it
  (a 7-day window holds each weekday once, so the ratio isolates the weekday; medians ignore a spike day);
- the level is a straight line through the last ``FIT_DAYS`` deseasonalised days, its slope the Theil-Sen
  estimate (median of pairwise slopes) and its intercept the median residual, so a spike is one outlier among
  hundreds of pairs rather than a lever; ahead, the trend is damped (``PHI`` per day) rather than extrapolated;
- the interval is the wider of two: the spread of this model's own past forecasts of this series at the same
  horizon (replayed from the days before), and the residual spread of one fit (median absolute deviation)
  summed over the days left plus the level's and slope's uncertainty. It assumes the recent pattern holds: a
  step change nobody has seen yet falls outside it (benchmarks/finops/RESULTS.md measures its coverage).

Money stays integer nano-dollars for what happened (``spent_nanos``); the projection and its interval are floats,
rounded when shown (``usd``). A forecast made "as of" a day uses only the days before it, plus optionally the part
of that day already spent and the share of a typical day's spend that usually comes by this hour.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from statistics import NormalDist, median
from typing import Literal

from metering.ledger.base import month_bounds
from metering.money import NANOS_PER_USD, format_usd
from metering.percentile import nearest_rank

HISTORY_DAYS = 56  # eight weeks: eight samples per weekday factor
FIT_DAYS = 28  # the level and trend follow the last four weeks
MIN_SEASONAL_DAYS = 14  # fewer days than two weeks cannot tell a weekday from noise
MIN_TREND_DAYS = 10
PHI = 0.98  # trend damping per day ahead (Gardner & McKenzie's damped trend; 1 would extrapolate the line)
INTERVAL = 0.8  # two-sided coverage of the reported interval
BACKTEST_ORIGINS = 21  # past forecasts replayed per series to measure its own error
MIN_BACKTESTS = 7  # fewer replays than this: fall back to the residual spread of one fit
_MAD_TO_SD = 1.4826


@dataclass(frozen=True, slots=True)
class Fit:
    """A fitted series: ``predict(day) = max(0, level + slope * (day - anchor).days) * weekday_factors[weekday]``."""

    anchor: date  # the last observed day
    level: float  # deseasonalised nano-dollars per day at ``anchor``
    slope: float  # change of the level per day
    weekday_factors: tuple[float, ...]  # Monday first, mean 1
    sigma: float  # robust standard deviation of deseasonalised daily residuals
    n: int  # days the level and slope were fitted on
    sxx: float  # sum of squared day offsets from their mean in the fit window (slope uncertainty)
    center: float  # mean day offset (from ``anchor``, <= 0) of the fit window

    def base(self, day: date) -> float:
        h = (day - self.anchor).days
        # Damped trend: step i ahead adds slope * PHI**i, so a trend fades instead of compounding for weeks.
        steps = PHI * (1 - PHI ** h) / (1 - PHI) if 0 < h and PHI < 1 else h
        return max(0.0, self.level + self.slope * steps)

    def predict(self, day: date) -> float:
        return self.base(day) * self.weekday_factors[day.weekday()]


@dataclass(frozen=True, slots=True)
class Partial:
    """The forecast day already under way: what it has spent, and the share of a usual day's spend that comes
    by now (from the hourly profile; ``hours / 24`` when none is known)."""

    spent_nanos: int
    elapsed_share: float


@dataclass(frozen=True, slots=True)
class MonthForecast:
    month_start: date
    month_end: date  # exclusive
    as_of: date  # first day not fully observed
    spent_nanos: int  # actual spend of the month so far (days before ``as_of``, plus the partial day)
    projected: float  # nano-dollars at month end
    low: float
    high: float
    burn_rate: float  # expected spend per day over the next 7 days
    days: tuple[tuple[date, float], ...]  # each day from ``as_of`` to month end: actual + expected remainder
    fit: Fit | None  # None when the series has no spend at all


def _weekday_factors(days: Sequence[date], values: Sequence[float]) -> tuple[float, ...]:
    if len(values) < MIN_SEASONAL_DAYS:
        return (1.0,) * 7
    ratios: list[list[float]] = [[] for _ in range(7)]
    for i in range(3, len(values) - 3):
        window_median = median(values[i - 3:i + 4])
        if window_median > 0:
            ratios[days[i].weekday()].append(values[i] / window_median)
    factors = [median(r) if len(r) >= 2 else 1.0 for r in ratios]
    mean = sum(factors) / 7
    if mean <= 0:
        return (1.0,) * 7
    return tuple(f / mean for f in factors)


def _theil_sen(xs: Sequence[int], ys: Sequence[float]) -> tuple[float, float]:
    """(slope, intercept at x=0): the median pairwise slope and the median residual."""
    slopes = [(ys[j] - ys[i]) / (xs[j] - xs[i]) for i in range(len(xs)) for j in range(i + 1, len(xs))]
    slope = median(slopes)
    return slope, median(y - slope * x for x, y in zip(xs, ys))


def fit(history: Mapping[date, int], as_of: date) -> Fit | None:
    """Fit on the ``HISTORY_DAYS`` days before ``as_of``. Days before the first spend are not history (a key
    created last week has one week, not eight weeks of zeros); days without spend after it are zeros."""
    window = [as_of - timedelta(days=HISTORY_DAYS - i) for i in range(HISTORY_DAYS)]
    first = next((i for i, d in enumerate(window) if history.get(d, 0) > 0), None)
    if first is None:
        return None
    days = window[first:]
    values = [float(history.get(d, 0)) for d in days]
    factors = _weekday_factors(days, values)
    deseasonalised = [v / factors[d.weekday()] if factors[d.weekday()] > 0 else 0.0 for d, v in zip(days, values)]
    recent = deseasonalised[-FIT_DAYS:]
    xs = list(range(-len(recent) + 1, 1))  # offsets from the anchor (the last observed day)
    if len(recent) >= MIN_TREND_DAYS:
        slope, level = _theil_sen(xs, recent)
    else:
        slope, level = 0.0, median(recent)
    residuals = [y - (level + slope * x) for x, y in zip(xs, recent)]
    sigma = _MAD_TO_SD * median(abs(r) for r in residuals)
    center = sum(xs) / len(xs)
    sxx = sum((x - center) ** 2 for x in xs)
    return Fit(days[-1], level, slope, factors, sigma, len(recent), sxx, center)


def _interval_sd(f: Fit, future: Sequence[date], weights: Sequence[float]) -> float:
    """Standard deviation of the sum of ``weights[i] * predict(future[i])``: independent daily noise, plus the
    level's and the slope's estimation error (correlated across the days, so they add linearly first)."""
    factors = [w * f.weekday_factors[d.weekday()] for d, w in zip(future, weights)]
    noise = sum(x ** 2 for x in factors) * f.sigma ** 2
    level_var = (sum(factors) * f.sigma) ** 2 / f.n
    slope_lever = sum(x * ((d - f.anchor).days - f.center) for d, x in zip(future, factors))
    slope_var = (slope_lever * f.sigma) ** 2 / f.sxx if f.sxx > 0 else 0.0
    return math.sqrt(noise + level_var + slope_var)


def _past_errors(history: Mapping[date, int], as_of: date, horizon: int) -> list[float]:
    """log(actual / forecast) of the ``horizon`` days after each of the last ``BACKTEST_ORIGINS`` days that leave
    room for them: how wrong this very model has been on this very series, at this length of forecast. Trend
    breaks and spikes are in there, which the residual spread of one fit does not see."""
    errors = []
    for back in range(BACKTEST_ORIGINS):
        origin = as_of - timedelta(days=horizon + back)
        f = fit(history, origin)
        if f is None or f.n < MIN_TREND_DAYS:
            break
        days = [origin + timedelta(days=i) for i in range(horizon)]
        predicted, actual = sum(f.predict(d) for d in days), sum(history.get(d, 0) for d in days)
        if predicted > 0 and actual > 0:
            errors.append(math.log(actual / predicted))
    return errors


def forecast_month(history: Mapping[date, int], as_of: date, partial: Partial | None = None,
                   level: float = INTERVAL) -> MonthForecast:
    """Month-end spend of ``as_of``'s month, from actual spend before ``as_of`` (and ``partial`` of it)."""
    month_start, month_end = month_bounds(as_of)
    spent = sum(v for d, v in history.items() if month_start <= d < as_of)
    if partial is not None:
        spent += partial.spent_nanos
    f = fit(history, as_of)
    future = [as_of + timedelta(days=i) for i in range((month_end - as_of).days)]
    if f is None:
        days = tuple((d, float(partial.spent_nanos if partial and d == as_of else 0)) for d in future)
        return MonthForecast(month_start, month_end, as_of, spent, float(spent), float(spent), float(spent), 0.0,
                             days, None)
    # The share of the first day still to come: all of it at midnight, less what a usual day has spent by now.
    weights = [1.0] * len(future)
    if partial is not None and future:
        weights[0] = max(0.0, 1.0 - partial.elapsed_share)
    expected = [w * f.predict(d) for d, w in zip(future, weights)]
    remaining = sum(expected)
    projected = spent + remaining
    errors = _past_errors(history, as_of, len(future)) if future else []
    sd = _interval_sd(f, future, weights) if future else 0.0
    z = NormalDist().inv_cdf((1 + level) / 2)
    low, high = projected - z * sd, projected + z * sd
    if len(errors) >= MIN_BACKTESTS:
        spread = nearest_rank([abs(e) for e in errors], round(100 * level, 9))
        low, high = min(low, spent + remaining * math.exp(-spread)), max(high, spent + remaining * math.exp(spread))
    days = tuple((d, e + (partial.spent_nanos if partial and i == 0 else 0))
                 for i, (d, e) in enumerate(zip(future, expected)))
    week = [as_of + timedelta(days=i) for i in range(7)]
    burn = sum(f.predict(d) for d in week) / 7
    return MonthForecast(month_start, month_end, as_of, spent, projected, max(float(spent), low), high, burn, days, f)


def run_rate(history: Mapping[date, int], as_of: date) -> float:
    """The naive forecast the model must beat: month-to-date / days elapsed * days in the month."""
    month_start, month_end = month_bounds(as_of)
    elapsed = (as_of - month_start).days
    if elapsed <= 0:
        return 0.0
    spent = sum(v for d, v in history.items() if month_start <= d < as_of)
    return spent / elapsed * (month_end - month_start).days


@dataclass(frozen=True, slots=True)
class BudgetOutlook:
    """One cap against the forecast. ``runs_out_on`` is the first day whose (cumulative, for a monthly cap) spend
    reaches the limit, already past or projected; None if the month ends first."""

    period: Literal["day", "month"]
    limit_nanos: int
    projected: float  # month-end spend (monthly cap) or the forecast day's spend (daily cap)
    runs_out_on: date | None

    def to_dict(self) -> dict[str, object]:
        return {"period": self.period, "limit_usd": format_usd(self.limit_nanos), "projected_usd": usd(self.projected),
                "projected_share": round(self.projected / self.limit_nanos, 3) if self.limit_nanos else None,
                "runs_out_on": self.runs_out_on.isoformat() if self.runs_out_on else None}


def budget_outlook(forecast: MonthForecast, history: Mapping[date, int], monthly_nanos: int | None,
                   daily_nanos: int | None) -> list[BudgetOutlook]:
    """When each cap runs out at the forecast burn rate (weekday-aware, trend included)."""
    out = []
    if monthly_nanos is not None:
        total, runs_out = 0.0, None
        actual = [(d, float(history.get(d, 0))) for d in _days(forecast.month_start, forecast.as_of)]
        for d, v in [*actual, *forecast.days]:
            total += v
            if total >= monthly_nanos:
                runs_out = d
                break
        out.append(BudgetOutlook("month", monthly_nanos, forecast.projected, runs_out))
    if daily_nanos is not None:
        runs_out = next((d for d, v in forecast.days if v >= daily_nanos), None)
        first = forecast.days[0][1] if forecast.days else 0.0
        out.append(BudgetOutlook("day", daily_nanos, first, runs_out))
    return out


def _days(start: date, end: date) -> list[date]:
    return [start + timedelta(days=i) for i in range((end - start).days)]


def usd(nanos: float) -> str:
    """A projected amount for people: USD rounded to 4 decimals (a forecast is not exact, so it is not shown as
    if it were; LLM spend per key is often below a cent a day, so cents would print zeros)."""
    return str((Decimal(repr(nanos)) / NANOS_PER_USD).quantize(Decimal("0.0001"), rounding=ROUND_HALF_EVEN))
