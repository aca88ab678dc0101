"""The controller's demand estimate against bursty synthetic arrivals (shared/policies/sustained_demand.py):
a 10x burst of 2 s is queue depth, not demand; a rise that lasts is seen within hold_s."""

from __future__ import annotations

import numpy as np
import pytest

from shared.arrival_rate import DemandTracker
from shared.policies.control import Observation, WindowRate
from shared.policies.sustained_demand import SustainedRate

TICK_S = 1.0  # the controller's


def arrivals(rates: list[float], seed: int = 0, tick_s: float = TICK_S) -> list[int]:
    """Poisson arrivals per tick at the given rate of each tick."""
    rng = np.random.default_rng(seed)
    return [int(rng.poisson(rate * tick_s)) for rate in rates]


def estimates(counts: list[int], estimator: SustainedRate) -> list[float]:
    total, out = 0, []
    for tick, count in enumerate(counts, start=1):
        total += count
        out.append(estimator.observe(tick * TICK_S, total))
    return out


@pytest.mark.parametrize("rate", [1.0, 5.0, 20.0, 60.0])
def test_a_steady_rate_is_measured(rate):
    values = estimates(arrivals([rate] * 120, seed=int(rate)), SustainedRate())
    settled = np.array(values[40:])
    assert abs(np.mean(settled) / rate - 1) < 0.15, np.mean(settled)


def earlier_estimate(counts: list[int]) -> list[float]:
    """What the controller estimated before: max(EWMA with a 10 s half-life, rate over the last SLO)."""
    tracker, window, total, out = DemandTracker(10.0, 0.0), WindowRate(span_s=6.0), 0, []
    for tick, count in enumerate(counts, start=1):
        tracker.arrived(count)
        total += count
        ewma = tracker.update(tick * TICK_S)
        out.append(max(ewma, window.rate(Observation(tick * TICK_S, ewma, 0, 0.0, 16, None, arrivals=total))))
    return out


@pytest.mark.parametrize("rate", [2.0, 5.0, 20.0])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_tenfold_burst_of_two_seconds_is_not_demand(rate, seed):
    """The same arrivals with and without 2 s of 10x on top: the estimate moves no more than its own
    noise (a quarter of the rate, or two standard deviations of the Poisson count of one third of
    hold_s, whichever is larger: the held rate may take another part's count); the earlier estimate
    took the burst for 1.5x the rate more or worse."""
    quiet = arrivals([rate] * 122, seed=seed)
    burst = list(quiet)
    for tick in (60, 61):
        burst[tick] += int(np.random.default_rng(seed + 100).poisson(9 * rate))
    moved = np.array(estimates(burst, SustainedRate())) - np.array(estimates(quiet, SustainedRate()))
    part_s = SustainedRate().hold_s / 3
    assert moved.max() <= max(0.25 * rate, 2 * np.sqrt(rate * part_s) / part_s), moved.max()
    fooled = np.array(earlier_estimate(burst)) - np.array(earlier_estimate(quiet))
    assert fooled.max() > 1.5 * rate


@pytest.mark.parametrize("rate", [2.0, 10.0])
def test_a_rise_that_lasts_is_seen_within_hold_s(rate):
    estimator = SustainedRate(hold_s=9.0, window_s=30.0)
    values = np.array(estimates(arrivals([rate] * 60 + [3 * rate] * 40, seed=4), estimator))
    assert values[60 + 10:].mean() > 0.85 * 3 * rate and values[60 + 10:].min() > 0.7 * 3 * rate, values[60:75]


def test_a_fall_is_followed_within_the_window():
    values = estimates(arrivals([30.0] * 60 + [5.0] * 60, seed=5), SustainedRate(hold_s=9.0, window_s=30.0))
    assert values[60 + 31] < 5.0 * 1.3


def test_a_counter_that_goes_back_restarts_the_history():
    estimator = SustainedRate()
    estimator.observe(1.0, 100)
    estimator.observe(2.0, 110)
    assert estimator.observe(3.0, 5) == 0.0  # the store lost its counter: no rate from one sample
    assert estimator.observe(4.0, 15) == pytest.approx(10.0)


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError):
        SustainedRate(hold_s=0)
    with pytest.raises(ValueError):
        SustainedRate(hold_s=10, window_s=5)


def trends(counts: list[int], estimator: SustainedRate) -> list[float]:
    total, out = 0, []
    for tick, count in enumerate(counts, start=1):
        total += count
        estimator.observe(tick * TICK_S, total)
        out.append(estimator.trend())
    return out


@pytest.mark.parametrize("seed", [1, 2])
def test_a_ramp_shows_as_a_trend_near_its_slope(seed):
    """5 -> 35 jobs/s over 60 s (0.5 jobs/s per second): once two holds of the ramp are seen, the
    trend is within half of the slope either way on average and positive at most ticks (it is the
    difference of two noisy rates); it is 0 before there is history for it."""
    rates = [5.0] * 30 + [5.0 + 0.5 * tick for tick in range(60)] + [35.0] * 30
    values = np.array(trends(arrivals(rates, seed=seed), SustainedRate(hold_s=6.0, window_s=30.0)))
    assert values[:17].max() == 0.0
    on_ramp = values[30 + 18:90]
    assert 0.25 < on_ramp.mean() < 0.75 and (on_ramp > 0.1).mean() > 0.8, on_ramp


@pytest.mark.parametrize("rate", [2.0, 5.0, 20.0])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_tenfold_burst_of_two_seconds_is_no_trend(rate, seed):
    """A 2 s burst of 10x is no rise: the trend moves by no more than the noise of two held rates over
    the trend's span (the planner multiplies it by plan_ahead_s, 18 s by default)."""
    quiet = arrivals([rate] * 122, seed=seed)
    burst = list(quiet)
    for tick in (60, 61):
        burst[tick] += int(np.random.default_rng(seed + 100).poisson(9 * rate))
    estimator = SustainedRate(hold_s=6.0, window_s=30.0)
    moved = np.array(trends(burst, estimator)) - np.array(trends(quiet, SustainedRate(hold_s=6.0, window_s=30.0)))
    part_s, lead_s = 2.0, 18.0
    assert moved.max() * lead_s <= max(0.25 * rate, 2 * 2 * np.sqrt(rate * part_s) / part_s), moved.max()


def test_a_fall_is_no_trend():
    values = trends(arrivals([30.0] * 40 + [30.0 - 0.5 * tick for tick in range(50)], seed=7),
                    SustainedRate(hold_s=6.0, window_s=30.0))
    assert max(values[60:]) == 0.0
