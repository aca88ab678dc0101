"""Risk-priced structures (shared/policies/readiness.py), without the controller."""

from __future__ import annotations

import pytest

from shared.policies.bursts import BurstHistory
from shared.policies.control import Observation
from shared.policies.hadis import HadisPolicy, no_worse, ready_for_bursts, still_ready
from shared.policies.readiness import PRIOR_JOBS, TRIM_DOUBT, TRIM_STRETCH, Readiness
from shared.policies.transitions import Structure
from tests.helpers import make_settings

GPUS = 16


def readiness(prior: float = 0.0, budget: float = 0.005) -> Readiness:
    policy = HadisPolicy(make_settings(controller_policy="hadis", profile="paper-l40s-x10", slo_s=6.0,
                                       demand_margin=0.05))
    return Readiness(policy.planner, 6.0, budget, prior, BurstHistory(halflife_s=180.0, memory_s=540.0))


def remember(ready: Readiness, rates: list[float]) -> None:
    arrivals = 0.0
    ready.history.observe(0.0, 0, 0.0)
    for second, rate in enumerate(rates, start=1):
        arrivals += rate
        ready.history.observe(float(second), int(round(arrivals)), 0.2)


def test_after_a_burst_out_of_silence_the_best_ready_structure_absorbs_it_and_no_better_one_does():
    ready = readiness()
    remember(ready, [0.2] * 60 + [70.0] * 4 + [0.2] * 60)
    intervals = ready.intervals(GPUS)
    best = ready.best(0.2, GPUS, intervals)
    assert best is not None and ready.risk(best, GPUS, intervals) <= ready.budget
    levels = ready.levels(intervals)
    quality = ready.expected_fid(best, GPUS, levels)
    for other in ready.layouts_for(GPUS):
        if ready.expected_fid(other, GPUS, levels) < quality - 1e-9:
            assert ready.risk(other, GPUS, intervals) > ready.budget, other
    planned = ready.planner.plan(0.2, GPUS, 6.0)
    assert planned.light_model == "sd35-medium"  # the silence's own structure would not have been ready
    assert best.light_model != "sd35-medium"


def test_without_bursts_the_quietest_structure_is_ready():
    ready = readiness()
    remember(ready, [2.0] * 120)
    intervals = ready.intervals(GPUS)
    best = ready.best(2.0, GPUS, intervals)
    assert best is not None and ready.expected_fid(best, GPUS, ready.levels(intervals)) < 19.5


def test_the_assumed_burst_holds_for_the_first_jobs_only():
    """The assumed burst is replayed at full weight until PRIOR_JOBS jobs have arrived, then not at
    all: a fading weight kept binding at a 0.5 % risk budget long after its half-life."""
    ready = readiness(prior=0.2)
    remember(ready, [0.0] * 5)
    first = ready.intervals(GPUS)[0]
    top = ready.planner.plan(float("inf"), GPUS, 6.0).capacity_qps
    assert first == pytest.approx((6.0, 0.2 * top, 1.0))
    remember(ready, [10.0] * (PRIOR_JOBS // 10 - 1))
    assert ready.intervals(GPUS)[0] == pytest.approx((6.0, 0.2 * top, 1.0))
    remember(ready, [10.0] * (PRIOR_JOBS // 10))
    assert all(rate < 0.2 * top for _, rate, _ in ready.intervals(GPUS))
    assert readiness(prior=0.0).intervals(GPUS) == []


def test_only_the_pairs_the_planner_chooses_are_searched():
    """The readiness searches the pairs the planner itself chooses at some demand (three of the six
    of the table), each on every split."""
    ready = readiness()
    pairs = {structure.pair for structure in ready.layouts_for(GPUS)}
    planner = ready.planner
    chosen = {(plan.light_model, plan.heavy_model) for plan in
              (planner.plan(rate, GPUS, 6.0) for rate in (0.5, 5.0, 15.0, 40.0, 80.0, 200.0))}
    assert chosen <= pairs < {row.pair for row in planner.rows}
    assert ("sdxl-lightning", "sd35-large") not in pairs


def test_while_the_demand_rises_the_ready_structure_serves_the_demand_ahead():
    """Of the ready structures, the best for the remembered demand may be too slow for where a ramp
    is heading; with `ahead` above today's demand, one that serves it is chosen when any does."""
    ready = readiness()
    remember(ready, [4.0] * 120)
    intervals = ready.intervals(GPUS)
    behind = ready.best(4.0, GPUS, intervals)
    assert behind is not None and not ready.serves(behind, 20.0)
    ahead = ready.best(4.0, GPUS, intervals, 20.0)
    assert ahead is not None and ready.serves(ahead, 20.0)
    assert ready.best(4.0, GPUS, intervals, 4.0) == behind
    assert ready.best(4.0, GPUS, intervals, 1e6) == behind  # none serves it: as without


def test_a_held_structure_absorbs_a_burst_its_slack_takes_but_not_a_rise_that_lasts():
    """Readiness.absorbs: the remembered arrivals and a few seconds more a little over the
    structure's fastest point are taken by its slack; the same rate for a minute is not (a rise,
    which a structure must change for); with nothing remembered there is nothing to go on."""
    ready = readiness()
    remember(ready, [0.2] * 60 + [70.0] * 4 + [0.2] * 60)
    held = ready.best(0.2, GPUS, ready.intervals(GPUS))
    assert held is not None
    fastest = ready.capacity(held, GPUS).qps
    assert ready.absorbs(held, GPUS, 1.1 * fastest, 6.0)
    assert not ready.absorbs(held, GPUS, 1.1 * fastest, 60.0)
    assert not readiness().absorbs(held, GPUS, 1.0, 6.0)


def test_ready_for_bursts_judges_the_structure_for_the_demand_ahead():
    """hadis.ready_for_bursts: the planner's structure is judged for where the demand is heading
    (`ahead`), so a ramp whose own structure is ready leaves the readiness out; and the reason names
    that demand."""
    ready = readiness()
    remember(ready, [15.0] * 120)
    for_now, why = ready_for_bursts(ready, 0.5, GPUS)
    assert for_now is not None and "the structure for 0.5 qps" in why  # sd35-medium -> sd35-large: overrun
    assert ready_for_bursts(ready, 0.5, GPUS, 16.0) == (None, "")


def test_a_split_first_step_may_not_serve_todays_demand_worse():
    """hadis.no_worse: a step within the pair towards another pair's split must serve the demand at
    least as well as the structure it leaves, unless that one is behind anyway."""
    planner = readiness().planner
    pair = ("sd35-large-turbo", "sd35-medium")
    keep = planner.plan_within(pair, 4, 12, 12.0, 6.0)
    assert keep is not None and keep.feasible
    assert no_worse(planner, Structure(*pair, 2, 14), keep, 12.0, 6.0)
    assert not no_worse(planner, Structure(*pair, 8, 8), keep, 12.0, 6.0)
    behind = planner.plan_within(pair, 4, 12, 60.0, 6.0)
    assert behind is not None and not behind.feasible
    assert no_worse(planner, Structure(*pair, 8, 8), behind, 60.0, 6.0)


def test_a_structure_riding_a_burst_out_is_not_moved_to_another_split_until_the_burst_ends():
    """hadis.still_ready: in a burst the held structure rides out (Readiness.absorbs), a better
    structure at the estimate's level that moves GPUs waits for the burst to end; one on the same
    split (a pair swapped in place) does not wait. Compared at the estimate's level alone, a first
    burst moved 7 + 9 GPUs of sd35-large-turbo -> sd35-medium, which rode it out, to the silence's
    slow pair, 16 GPUs loading in the burst."""
    ready = readiness()
    remember(ready, [0.2] * 60 + [30.0] * 3)
    held = Structure("sd35-large-turbo", "sd35-medium", 7, 9)
    quiet = Structure("sd35-medium", "sd35-large", 9, 7)
    why = still_ready(ready, held, quiet, 0.2, GPUS, 0.25, 30.0, 18.0)
    assert why is not None and "rides out this burst" in why
    assert still_ready(ready, held, quiet, 0.2, GPUS, 0.25, 0.2, 18.0) is None  # calm: the better one
    in_place = Structure("sd35-medium", "sd35-large", 7, 9)
    assert still_ready(ready, held, in_place, 0.2, GPUS, 0.25, 30.0, 18.0) is None
    assert still_ready(ready, held, quiet, 0.2, GPUS, 0.25, 200.0, 18.0) is None  # one it cannot ride out


def test_capacity_is_given_back_only_for_a_structure_that_rides_out_longer_bursts():
    """Readiness.trimmed: from a structure with more capacity than the best for the remembered
    bursts, the fleet heads for the best structure of that pair which rides out the bursts
    `stretch` times as long (or stays); towards more capacity it heads at once. Trimmed to the
    bursts seen, the next, longer burst of an on/off trace missed 8 % of its jobs."""
    ready = readiness()
    remember(ready, [0.2] * 60 + [50.0] * 2 + [0.2] * 60)
    held = Structure("sd35-large-turbo", "sd35-medium", 7, 9)
    best = ready.best(0.2, GPUS, ready.intervals(GPUS))
    assert best is not None and best.pair == held.pair
    assert ready.capacity(best, GPUS).qps < ready.capacity(held, GPUS).qps
    longer = ready.intervals(GPUS, ready.stretch())
    assert ready.risk(best, GPUS, longer) > ready.budget  # the best for the bursts seen misses longer ones
    trimmed = ready.trimmed(held, best, 0.2, GPUS)
    assert trimmed != best and trimmed.pair == held.pair
    assert ready.risk(trimmed, GPUS, longer) <= ready.budget
    assert ready.capacity(best, GPUS).qps < ready.capacity(trimmed, GPUS).qps <= ready.capacity(held, GPUS).qps
    slow = Structure("sd35-large-turbo", "sd35-medium", 1, 15)
    assert ready.trimmed(slow, best, 0.2, GPUS) == best  # more capacity: at once


def test_bursts_are_stretched_more_while_few_are_remembered():
    """Readiness.stretch: TRIM_STRETCH x (1 + TRIM_DOUBT / the bursts remembered), so three times
    as long after one burst and closer to twice after many (BurstHistory.bursts_seen counts runs
    of intervals beyond the estimate's noise, not seconds)."""
    one = readiness()
    remember(one, [0.2] * 60 + [50.0] * 3 + [0.2] * 60)
    assert one.history.bursts_seen() == 1
    assert one.stretch() == pytest.approx(TRIM_STRETCH * (1 + TRIM_DOUBT))
    four = readiness()
    remember(four, ([0.2] * 30 + [50.0] * 2) * 4 + [0.2] * 30)
    assert four.history.bursts_seen() == 4
    assert four.stretch() == pytest.approx(TRIM_STRETCH * (1 + TRIM_DOUBT / 4))
    assert TRIM_STRETCH < four.stretch() < one.stretch()


def test_the_planners_structure_for_the_calm_is_priced_as_a_trim_of_a_structure_held_for_bursts():
    """hadis.ready_for_bursts: from a structure held for the bursts, the planner's structure for
    the calm, which rides out the bursts seen, is a trim like any other when it would not ride them
    out `stretch` times as long: the readiness answers (and says why); from a structure the planner
    chose (a ramp's, for_bursts False) it is not priced so. Unpriced, the planner's structure took
    the fleet from 7 + 9 GPUs to sd35-medium -> sd35-large once the bursts seen fitted it, and the
    next, larger burst shed 20 jobs (on/off seed 610)."""
    ready = readiness()
    remember(ready, [0.2] * 60 + [15.0] * 2 + [0.2] * 60)
    held = Structure("sd35-large-turbo", "sd35-medium", 7, 9)
    planned = Structure.of(ready.planner.plan(0.2, GPUS, 6.0).plan_fields())
    assert ready.risk(planned, GPUS, ready.intervals(GPUS)) <= ready.budget  # the bursts seen: it rides them out
    assert ready.trims(held, planned, GPUS)  # three times as long: it does not
    assert ready_for_bursts(ready, 0.2, GPUS, None, held, for_bursts=False) == (None, "")
    kept, why = ready_for_bursts(ready, 0.2, GPUS, None, held, for_bursts=True)
    assert kept is not None and kept != planned and "gives back capacity" in why
    assert ready.risk(kept, GPUS, ready.intervals(GPUS, ready.stretch())) <= ready.budget


def test_a_held_structure_does_not_absorb_a_burst_its_queue_has_already_filled():
    """Readiness.absorbs: the seconds more start from the jobs queued when the queue is longer
    than the replay's backlog: a rate its slack takes from an empty queue is not absorbed once the
    queue holds most of the slack (an MMPP step read as absorbed while the queue grew: seed 711)."""
    ready = readiness()
    remember(ready, [0.2] * 60 + [70.0] * 4 + [0.2] * 60)
    held = ready.best(0.2, GPUS, ready.intervals(GPUS))
    assert held is not None
    capacity = ready.capacity(held, GPUS)
    fastest = capacity.qps
    assert ready.absorbs(held, GPUS, 1.1 * fastest, 6.0)
    assert not ready.absorbs(held, GPUS, 1.1 * fastest, 6.0, queued=fastest * (6.0 - capacity.latency_s))


def test_a_bursts_jobs_are_judged_at_the_rate_the_slo_spreads_them_over():
    """Readiness.levels: a job's level is the arrival rate of the SLO up to it, so a burst of two
    seconds at 90 jobs/s out of silence counts at about 30 jobs/s (its 180 jobs over the 6 s SLO),
    not at 90, where every pair would be judged at its fastest point; a steady rate is its own level."""
    ready = readiness()
    remember(ready, [0.0] * 30 + [90.0] * 2 + [0.0] * 30)
    levels = ready.levels(ready.intervals(GPUS))
    assert 25.0 < max(levels) < 35.0
    steady = readiness()
    remember(steady, [20.0] * 60)
    assert max(steady.levels(steady.intervals(GPUS))) == pytest.approx(20.0, rel=0.03)


def test_a_structure_behind_with_a_queue_is_not_held_by_the_lowest_estimate():
    """HadisPolicy.behind: an infeasible operating point on the last tick with a quarter of the
    SLO waiting in the queue is behind (the envelope's lowest estimate, which lags a step of the
    level, no longer holds it); an infeasible point with a short queue (a 60 s SLO's noise) or a
    long queue at a feasible point is not."""
    policy = HadisPolicy(make_settings(controller_policy="hadis", profile="paper-l40s-x10", slo_s=6.0))

    def observed(queued: int) -> Observation:
        return Observation(now=1.0, demand_qps=40.0, queued_jobs=queued, queueing_s=0.0, gpus=GPUS, current=None)

    policy.overloaded = True
    assert policy.behind(observed(100))  # 2.5 s of a 6 s SLO at 40 jobs/s
    assert not policy.behind(observed(20))
    policy.overloaded = False
    assert not policy.behind(observed(100))
