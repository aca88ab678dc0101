"""The burst history and its replay (shared/policies/bursts.py), without the controller."""

from __future__ import annotations

import math

import pytest

from shared.arrival_rate import beyond_poisson
from shared.policies.bursts import (
    BURST_HORIZON_SLOS,
    FILL_STEP,
    HEAVY_OVERFILL,
    HORIZON_MAX_SLOS,
    LEVEL_SIGMAS,
    NOISE_SIGMAS,
    SLACK_USABLE,
    BurstHistory,
    Capacity,
    burst_horizon,
    burst_rate,
    fill_heavy,
    replay_misses,
)


def test_a_burst_within_the_slack_misses_nothing_and_one_beyond_it_misses_the_excess():
    """Capacity 10 jobs/s with 3 s of slack (a 6 s SLO, 3 s batches) absorbs a backlog of
    30 x SLACK_USABLE jobs."""
    bound = 30.0 * SLACK_USABLE
    capacity = Capacity(qps=10.0, latency_s=3.0)
    absorbed = [(1.0, 10.0, 1.0)] * 5 + [(1.0, 10 + bound / 2, 1.0)] * 2 + [(1.0, 0.0, 1.0)] * 5
    missed, jobs = replay_misses(absorbed, capacity, slo_s=6.0)
    assert missed == 0.0 and jobs == pytest.approx(70.0 + bound)
    beyond = [(1.0, 10.0, 1.0)] * 5 + [(1.0, 40.0, 1.0)] * 2 + [(1.0, 0.0, 1.0)] * 5
    missed, jobs = replay_misses(beyond, capacity, slo_s=6.0)
    assert missed == pytest.approx(2 * 30.0 - bound)  # a backlog of 60 against the bound
    assert jobs == pytest.approx(130.0)


def test_older_intervals_weigh_less():
    capacity = Capacity(qps=10.0, latency_s=3.0)
    burst = [(1.0, 100.0, 0.25)] + [(1.0, 0.0, 1.0)] * 10 + [(1.0, 5.0, 1.0)] * 10
    missed, jobs = replay_misses(burst, capacity, slo_s=6.0)
    assert missed == pytest.approx(0.25 * (100 - 10 - 30 * SLACK_USABLE))
    assert jobs == pytest.approx(25.0 + 50.0)


def feed(history: BurstHistory, rates: list[tuple[float, float]], start: float = 0.0) -> float:
    """Tick once a second at each (rate, estimate) in turn; the time of the last tick."""
    now, arrivals = start, 0.0
    history.observe(now, int(arrivals), 0.0)
    for rate, estimate in rates:
        now += 1.0
        arrivals += rate
        history.observe(now, int(round(arrivals)), estimate)
    return now


def test_intervals_are_the_arrivals_as_they_came_weighted_by_age():
    history = BurstHistory(halflife_s=10.0, memory_s=1e9)
    feed(history, [(0.0, 0.0)] * 10 + [(60.0, 0.0)] * 3 + [(0.0, 0.0)] * 10)
    intervals = history.intervals()
    assert [rate for _, rate, _ in intervals] == pytest.approx([0.0] * 10 + [60.0] * 3 + [0.0] * 10)
    assert intervals[-1][2] == 1.0 and intervals[0][2] == pytest.approx(0.5 ** 2.2)


def test_counts_within_the_estimates_noise_replay_at_the_estimate():
    """A one-second count within NOISE_SIGMAS Poisson deviations of the sustained estimate is its
    noise and replays at the estimate; one beyond it (a burst) as it came; one below as it came."""
    history = BurstHistory(halflife_s=100.0, memory_s=1e9)
    feed(history, [(4.0, 2.0), (9.0, 2.0), (1.0, 2.0), (15.0, 10.0), (50.0, 10.0)])
    assert [rate for _, rate, _ in history.intervals()] == pytest.approx([2.0, 9.0, 1.0, 10.0, 50.0])
    assert beyond_poisson(9.0, 2.0, NOISE_SIGMAS) and not beyond_poisson(4.0, 2.0, NOISE_SIGMAS)
    # a deviation of at least one job
    assert not beyond_poisson(3.0, 0.0, NOISE_SIGMAS) and beyond_poisson(5.0, 0.0, NOISE_SIGMAS)


def test_history_is_forgotten_after_its_memory_and_restarts_with_the_counter():
    history = BurstHistory(halflife_s=10.0, memory_s=30.0)
    feed(history, [(50.0, 0.0)] * 5 + [(1.0, 1.0)] * 40)
    assert max(rate for _, rate, _ in history.intervals()) < 2.0
    history.observe(100.0, 0, 0.0)  # the controller restarted: its arrival counter went back
    assert history.intervals() == []
    assert history.left_level(0.0, 2.0) == 0.0


def test_recent_rate():
    history = BurstHistory(halflife_s=100.0, memory_s=300.0)
    feed(history, [(5.0, 5.0)] * 10 + [(30.0, 20.0)] * 4)
    assert history.recent_rate(2.0) == pytest.approx(30.0)


def test_a_level_left_is_one_the_estimate_fell_from_by_more_than_its_noise():
    """left_level: the highest estimate held more than the span ago, once the estimate has fallen
    from it by more than LEVEL_SIGMAS deviations of a rate counted over `part_s`. A burst's level
    followed by a silence is left; a slow ramp's estimate dipping by its noise is not."""
    history = BurstHistory(halflife_s=100.0, memory_s=1e9)
    feed(history, [(60.0, 60.0)] * 5 + [(0.2, 0.2)] * 20)
    assert history.left_level(10.0, 2.0) == pytest.approx(60.0)
    assert history.left_level(30.0, 2.0) == 0.0  # nothing held that long ago
    ramp = BurstHistory(halflife_s=100.0, memory_s=1e9)
    feed(ramp, [(1.0, estimate) for estimate in [1.0, 1.2, 0.9, 1.1, 1.3, 1.0, 1.2]])
    noise = LEVEL_SIGMAS * math.sqrt(1.3 * 20.0) / 20.0
    assert 1.3 - 1.0 < noise and ramp.left_level(1.0, 20.0) == 0.0
    steps = BurstHistory(halflife_s=100.0, memory_s=1e9)
    feed(steps, [(60.0, 60.0)] * 10 + [(40.0, 40.0)] * 10 + [(55.0, 55.0)] * 2)
    assert steps.left_level(5.0, 2.0) == pytest.approx(60.0)  # 60 -> 40 at 2 s grain is beyond its noise


def test_a_burst_point_is_chosen_for_what_the_slack_cannot_take():
    """In a burst the operating point is chosen for the least capacity that leaves, after the
    horizon's arrivals, a backlog the usable slack clears: below the burst's rate (the fastest point
    is not needed for a burst the slack takes), and more for a longer backlog."""
    capacity = Capacity(qps=60.0, latency_s=2.0)  # 4 s of slack at a 6 s SLO
    rate = burst_rate(30, 70.0, capacity, 6.0)
    horizon = BURST_HORIZON_SLOS * 6.0
    assert 0 < rate < 70.0
    assert 30 + (70.0 - rate) * horizon == pytest.approx(rate * 4.0 * SLACK_USABLE)
    assert burst_rate(300, 70.0, capacity, 6.0) > rate
    assert burst_rate(0, 0.0, capacity, 6.0) == 0.0


def level(seconds: int, rate: float, caught_up_after: int, floor: float) -> list[tuple[float, float]]:
    """`seconds` of arrivals at `rate` that the sustained estimate, at `floor` before them, follows
    after `caught_up_after` seconds."""
    return [(rate, floor if second < caught_up_after else rate) for second in range(seconds)]


def test_a_burst_lasts_while_its_arrivals_stay_above_the_level_it_rose_from():
    """run_seconds: an on/off burst lasts its seconds; a Markov level's step lasts as long as its
    arrivals stay high, after the estimate has caught up with them (the runs beyond the estimate,
    bursts_seen's, end then); the burst under way does not count; a lull's noise is no burst."""
    spikes = BurstHistory(halflife_s=180.0, memory_s=540.0)
    feed(spikes, ([(0.1, 0.1)] * 60 + level(3, 45.0, 4, 0.1)) * 3 + [(0.1, 0.1)] * 10)
    assert spikes.run_seconds() == pytest.approx(3.0)
    steps = BurstHistory(halflife_s=180.0, memory_s=540.0)
    feed(steps, [(0.5, 0.5)] * 60 + level(40, 20.0, 4, 0.5) + [(0.5, 0.5)] * 30 + level(10, 20.0, 4, 0.5))
    assert steps.run_seconds() == pytest.approx(40.0)  # the step under way (10 s so far) left out
    assert steps.bursts_seen() == 2  # beyond the estimate: only its first seconds
    quiet = BurstHistory(halflife_s=180.0, memory_s=540.0)
    feed(quiet, [(2.0, 2.0), (4.0, 2.0)] * 60)
    assert quiet.run_seconds() == 0.0


def test_a_burst_point_plans_for_the_remembered_bursts_length_within_bounds():
    """burst_horizon: half an SLO after short bursts, their mean length after longer ones, at most
    HORIZON_MAX_SLOS SLOs; a longer horizon is a faster point for the same backlog and arrivals."""
    spikes, steps, long_steps = (BurstHistory(halflife_s=180.0, memory_s=540.0) for _ in range(3))
    feed(spikes, [(0.1, 0.1)] * 60 + level(2, 45.0, 4, 0.1) + [(0.1, 0.1)] * 10)
    feed(steps, [(0.5, 0.5)] * 60 + level(9, 20.0, 4, 0.5) + [(0.5, 0.5)] * 10)
    feed(long_steps, [(0.5, 0.5)] * 60 + level(60, 20.0, 4, 0.5) + [(0.5, 0.5)] * 10)
    assert burst_horizon(spikes, 6.0) == BURST_HORIZON_SLOS * 6.0
    assert burst_horizon(steps, 6.0) == pytest.approx(9.0)
    assert burst_horizon(long_steps, 6.0) == HORIZON_MAX_SLOS * 6.0
    capacity = Capacity(qps=21.0, latency_s=2.3)
    assert burst_rate(15, 20.0, capacity, 6.0, burst_horizon(steps, 6.0)) > burst_rate(15, 20.0, capacity, 6.0)


def test_the_lowest_estimate_since_is_the_level_a_burst_rises_from():
    """A second burst before the estimate has fallen back from the first still rises from the lull
    between them, the lowest estimate of the span, not from the estimate a span ago."""
    history = BurstHistory(halflife_s=100.0, memory_s=300.0)
    for second, estimate in enumerate([1.0] * 5 + [40.0] * 5 + [10.0] * 3 + [30.0] * 2):
        history.observe(float(second), second * 10, estimate)
    assert history.lowest_since(5.0) == 10.0  # seconds 9-14: the lull, not second 9's 40
    assert history.lowest_since(1.0) == 30.0
    assert history.lowest_since(1000.0) == 1.0  # the oldest remembered


def test_a_bursts_escalations_fill_the_heavy_tier():
    """In a burst the judge escalates at least HEAVY_OVERFILL x what the heavy GPUs process beside
    the router's share, over the light images judged (at most the light tier's throughput), rounded
    up to FILL_STEP; never less than the point's own d, never more than all of them."""
    filled = fill_heavy(0.1, 0.0, arriving=100.0, light_qps=60.0, heavy_qps=10.0)
    assert filled >= HEAVY_OVERFILL * 10.0 / 60.0 and filled - HEAVY_OVERFILL * 10.0 / 60.0 < FILL_STEP
    assert fill_heavy(0.5, 0.0, arriving=100.0, light_qps=60.0, heavy_qps=10.0) == 0.5  # the point's is more
    assert fill_heavy(0.1, 0.0, arriving=5.0, light_qps=60.0, heavy_qps=10.0) == 1.0
    routed = fill_heavy(0.05, 0.2, arriving=40.0, light_qps=60.0, heavy_qps=10.0)  # 8 of the 10 routed to heavy
    assert routed == pytest.approx(math.ceil(HEAVY_OVERFILL * 2.0 / 32.0 / FILL_STEP) * FILL_STEP)
    assert fill_heavy(0.1, 0.0, arriving=100.0, light_qps=60.0, heavy_qps=10.0, ceiling=0.2) == 0.2  # the best mix's
    assert fill_heavy(0.1, 0.5, arriving=40.0, light_qps=60.0, heavy_qps=10.0) == 0.1  # the router fills it
    assert fill_heavy(0.1, 0.0, arriving=0.0, light_qps=60.0, heavy_qps=10.0) == 0.1
