import math

import numpy as np
import pytest

from shared.policies.admission import HANDOFF_S, BatchTimer, batch_ends_at, ends_too_late
from shared.policies.engine import held_point


def test_the_profile_stands_in_until_a_batch_is_measured():
    timer = BatchTimer()
    assert timer.expected("m", 4, prior_s=1.5) == 1.5
    timer.observe("m", 2, 1.0)
    assert timer.expected("m", 4, prior_s=1.5) == 2.0  # scaled up from the nearest measured size
    assert timer.expected("m", 1, prior_s=9.0) == 1.0  # a smaller batch: no faster than measured
    assert timer.expected("other", 1, prior_s=0.3) == 0.3


def test_a_job_needs_its_handoff_time_before_the_deadline():
    assert ends_too_late(10.0 - HANDOFF_S / 2, 10.0)
    assert not ends_too_late(10.0 - 2 * HANDOFF_S, 10.0)


def test_a_batch_ends_after_those_ahead_of_it_and_after_a_load_of_another_model():
    def ends(now, busy_until, model="m", previous="m", load_s=5.0):
        return batch_ends_at(now=now, busy_until=busy_until, batch_s=2.0, model=model, previous_model=previous,
                             load_s=load_s)

    assert ends(now=10.0, busy_until=0.0) == 12.0  # an idle worker starts it now
    assert ends(now=10.0, busy_until=13.0) == 15.0  # behind the batches admitted before it
    assert ends(now=10.0, busy_until=13.0, model="n") == 20.0  # the model swap comes between batches
    assert ends(now=10.0, busy_until=13.0, model="n", load_s=0.0) == 15.0


def plan(**changes):
    from tests.helpers import make_settings

    return make_settings(profile="paper-l40s-x10").static_plan(version=1).model_copy(update=changes)


def test_what_becomes_of_a_job_that_would_end_too_late():
    from shared.policies.admission import Fallback, too_late_fallback
    from shared.schemas import Tier

    assert too_late_fallback(Tier.heavy, escalated=True, light_in_time=True) is Fallback.serve_light
    assert too_late_fallback(Tier.heavy, escalated=True, light_in_time=False) is Fallback.serve_light
    assert too_late_fallback(Tier.heavy, escalated=False, light_in_time=True) is Fallback.to_light
    assert too_late_fallback(Tier.heavy, escalated=False, light_in_time=False) is Fallback.expire
    assert too_late_fallback(Tier.light, escalated=False, light_in_time=True) is Fallback.expire


def test_a_job_that_asked_for_the_heavy_model_only_is_never_served_a_light_image():
    """quality=high on a heavy worker that cannot end it in time: shed, whatever the light tier
    could do (the worker and the simulator both call engine.fallback with the job's quality)."""
    from shared.policies import engine
    from shared.policies.admission import Fallback, too_late_fallback
    from shared.profiles import load_profile
    from shared.schemas import Plan, Tier

    for light_in_time in (True, False):
        assert too_late_fallback(Tier.heavy, False, light_in_time, heavy_only=True) is Fallback.expire
    plan = Plan(version=1, light_model="sd35-large-turbo", heavy_model="sd35-medium", r=0.5, d=0.2,
                light_batch=1, heavy_batch=1, light_gpus=1, heavy_gpus=1)
    times = engine.BatchTimes(load_profile("paper-l40s-x10"), 1.0)
    deadline = 30.0  # a light batch started at 0 ends in time
    assert engine.fallback(plan, Tier.heavy, False, 0.0, deadline, times) is Fallback.to_light
    assert engine.fallback(plan, Tier.heavy, False, 0.0, deadline, times, quality="medium") is Fallback.to_light
    assert engine.fallback(plan, Tier.heavy, False, 0.0, deadline, times, quality="high") is Fallback.expire


def test_light_can_make_needs_a_distinct_light_tier_and_the_time():
    from shared.policies.admission import light_can_make

    assert light_can_make(plan(), light_batch_s=1.0, now=0.0, deadline=2.0)
    assert not light_can_make(plan(), light_batch_s=1.0, now=0.0, deadline=1.0 + HANDOFF_S / 2)
    assert not light_can_make(plan(light_gpus=0), light_batch_s=0.1, now=0.0, deadline=10.0)
    same = plan()
    assert not light_can_make(same.model_copy(update={"light_model": same.heavy_model}), 0.1, 0.0, 10.0)


def test_escalation_only_when_heavy_can_still_finish_and_profiled_times():
    from shared.policies.admission import may_escalate, profiled_batch_s
    from shared.profiles import load_profile

    assert may_escalate(0.0, 1.0, 1.5) and not may_escalate(0.0, 1.0, 1.0)
    model = load_profile("paper-l40s-x10").model(plan().heavy_model)
    assert profiled_batch_s(model, 2, 3.0) == 3.0 * model.batch_latency_s(2)
    assert profiled_batch_s(model.model_copy(update={"latency_ms": {}}), 2, 3.0) == 0.0


def room_plan(**fields):
    from shared.schemas import Plan

    base = {"version": 1, "light_model": "sd35-large-turbo", "heavy_model": "sd35-medium", "r": 0.5, "d": 0.0,
            "light_batch": 2, "heavy_batch": 2, "light_gpus": 4, "heavy_gpus": 2}
    return Plan(**{**base, **fields})


def test_the_demand_a_point_carries_is_its_slower_tiers():
    """carried_qps: the light tier takes 1 - r of the demand, the heavy tier r + (1 - r) d."""
    from shared.policies.admission import carried_qps

    assert carried_qps(0.7, 0.1, 111.0, 94.0) == pytest.approx(94.0 / 0.73)  # the heavy tier limits
    assert carried_qps(0.7, 0.1, 20.0, 94.0) == pytest.approx(20.0 / 0.3)  # the light tier limits
    assert carried_qps(0.0, 0.5, 60.0, 8.0) == pytest.approx(16.0)  # escalations alone reach heavy
    assert carried_qps(0.0, 0.0, 60.0, 8.0) == 60.0 and carried_qps(1.0, 0.0, 60.0, 8.0) == 8.0
    assert math.isinf(carried_qps(1.0, 0.0, 60.0, math.inf))


def test_a_guard_set_for_what_a_point_carries_trips_just_past_it():
    """pace_tripping_at: the guard whose Poisson margin ends at the carried count."""
    from shared.policies.admission import beyond_pace, pace_tripping_at

    for carried in (5.5, 8.4, 20.3, 129.4):
        guard = pace_tripping_at(carried)
        assert guard < carried
        assert not beyond_pace(math.floor(carried), guard) and beyond_pace(math.floor(carried) + 1, guard)
    assert pace_tripping_at(3.0) == 0.0  # within the margin of one job: any guard above it holds


def test_the_routers_share_of_the_heavy_tier():
    from shared.policies.admission import heavy_share_qps
    from shared.schemas import Tier

    plan = room_plan(r=0.5, d=0.0)  # all heavy work comes from the router: 2 GPUs x 2 / 2 s
    assert heavy_share_qps(plan, 2.0, Tier.light) == pytest.approx(2.0)
    plan = room_plan(r=0.2, d=0.5)  # h = 0.6: the router's share is 0.2 / 0.6
    assert heavy_share_qps(plan, 2.0, Tier.light) == pytest.approx(2.0 / 3)
    assert heavy_share_qps(room_plan(heavy_gpus=0), 2.0, Tier.light) == 0.0
    assert heavy_share_qps(plan, 0.0, Tier.light) == float("inf")  # no latency profile: never refused


def test_a_burst_fills_the_heavy_room_and_the_rest_takes_the_light_path():
    """2 jobs/s of room, a 2 s batch and the handoff, a 6 s deadline: 3.9 s for the backlog ahead,
    so the first 8 jobs of a burst go heavy (the ninth would wait 4 s) and the rest go light; as the
    backlog drains, heavy again."""
    from shared.policies.admission import HeavyRoom

    room = HeavyRoom()
    sent = [room.admit(100.0, 106.0, 2.0, 2.0) for _ in range(10)]
    assert sent == [True] * 8 + [False] * 2
    assert room.admit(101.6, 107.6, 2.0, 2.0)  # 3.2 jobs cleared since: room for one more
    assert room.admit(120.0, 126.0, 2.0, 2.0) and room.backlog == pytest.approx(1.0)
    assert not HeavyRoom().admit(0.0, 2.05, 2.0, 2.0)  # a batch alone would end too late
    assert HeavyRoom().admit(0.0, 2.2, 2.0, 2.0)  # with no backlog, a batch and the handoff fit
    assert HeavyRoom().admit(0.0, 1.0, float("inf"), 0.0)


def test_a_router_counts_its_last_second_and_a_burst_must_be_beyond_the_noise():
    """The pace counts the jobs of the last second; a count is a burst beyond burst_qps only when
    it exceeds the expected count by three Poisson deviations (at 2 jobs/s: more than 6.24), so a
    ramp's noisy seconds never hold its routing; no guard (None) never holds it."""
    from shared.policies.admission import ArrivalPace, beyond_pace

    pace = ArrivalPace()
    assert [pace.arrived(10.0 + 0.1 * i) for i in range(12)][-1] == 10  # 10.2 .. 11.1
    assert pace.arrived(20.0) == 1  # the burst of a second ago is forgotten
    assert not beyond_pace(6, 2.0) and beyond_pace(7, 2.0)
    assert not beyond_pace(10_000, None)
    assert beyond_pace(70, 40.0) and not beyond_pace(55, 40.0)  # 40 + 3 x 6.3 = 59


class OneSecondBatches:
    """BatchTimes for engine.route: a batch of either tier takes 1 s."""

    def light(self, plan):
        return 1.0

    def heavy(self, plan):
        return 1.0


def test_a_burst_beyond_the_guard_takes_the_light_path_where_the_score_chose_heavy():
    """A plan made in a silence (r 0.8) routes its share of a burst's first second to the heavy tier
    until the controller's next tick; beyond its burst_qps the router routes nothing by score."""
    from shared.policies.admission import HeavyRoom
    from shared.policies.engine import Route, route
    from shared.schemas import Tier

    def routed(score: float, plan, arrived: int) -> Route:
        return route(score, 0.5, plan, HeavyRoom(), 0.0, 6.0, OneSecondBatches(), arrived=arrived)

    guarded = room_plan(r=0.8, d=0.6, burst_qps=2.0)
    held = held_point(guarded)
    assert routed(0.9, guarded, 3) == Route(Tier.heavy, False)
    assert routed(0.9, guarded, 30) == Route(Tier.light, False, True, held)
    assert routed(0.1, guarded, 30) == Route(Tier.light, False, held_for=held)  # the judge escalates more of both
    unguarded = room_plan(r=0.8, d=0.6)  # a burst's own point (or another policy's plan): as chosen
    assert routed(0.9, unguarded, 30) == Route(Tier.heavy, False)


def test_a_burst_is_held_on_the_light_tier_only_while_it_ends_the_jobs_in_time():
    """The light tier's room (a HeavyRoom at the light tier's whole throughput) takes what a burst
    holds from the heavy tier; once a light batch would end too late, the score decides again: a
    slow light tier needs the heavy GPUs' help. 4 light GPUs x batch 2 / 1 s = 8 jobs/s, a 6 s
    deadline, a 1 s batch and the handoff: a job goes light behind up to 39 (39 / 8 + 1.1 < 6), so
    40 are held and the 41st goes by its score."""
    from shared.policies.admission import HeavyRoom
    from shared.policies.engine import Route, route
    from shared.schemas import Tier

    plan = room_plan(r=0.8, d=0.6, burst_qps=2.0)
    light = HeavyRoom()
    held = [route(0.9, 0.5, plan, HeavyRoom(), 0.0, 6.0, OneSecondBatches(), 30, light) for _ in range(41)]
    assert held[:40] == [Route(Tier.light, False, True, held_point(plan))] * 40
    assert held[40] == Route(Tier.heavy, False)
    assert route(0.1, 0.5, plan, HeavyRoom(), 0.0, 6.0, OneSecondBatches(), 30, light) == Route(Tier.light, False)


def test_the_judge_escalates_a_held_burst_up_to_the_heavy_share_onto_places_left_idle():
    """Of a burst the guard sent light (r 0.8, d 0.2: heavy share 0.84), the judge escalates the
    lowest 0.84 of the scores, not 0.2, while the point it was held against is in force; beyond d
    only onto places the heavy tier would leave idle: its batch starts before one 1 s batch on each
    of the 2 heavy GPUs (batch 2) has ended, behind fewer than 4 escalations. The escalations within
    d go whatever the backlog (the heavy worker serves the light image of one too late), and fill it."""
    from shared.policies.admission import HeavyRoom
    from shared.policies.engine import Verdict, verdict
    from shared.policies.judge import JudgeCalibration

    plan = room_plan(r=0.8, d=0.2)
    calibration = JudgeCalibration(np.linspace(0.0, 1.0, 101))

    def judged(score: float, room: HeavyRoom, held_for: str | None) -> Verdict:
        return verdict(calibration, score, plan, 0.0, 6.0, OneSecondBatches(), room, held_for)

    held = held_point(plan)
    assert judged(0.5, HeavyRoom(), None) is Verdict.accept  # above d: the plan's own jobs keep d
    assert judged(0.5, HeavyRoom(), held) is Verdict.escalate  # within the heavy share
    assert judged(0.5, HeavyRoom(), held_point(room_plan(r=0.3, d=0.2))) is Verdict.accept  # another point's
    assert judged(0.9, HeavyRoom(), held) is Verdict.accept  # beyond the heavy share
    room = HeavyRoom()
    assert [judged(0.5, room, held) for _ in range(5)] == [Verdict.escalate] * 4 + [Verdict.accept]
    room = HeavyRoom()
    assert [judged(0.1, room, held) for _ in range(8)] == [Verdict.escalate] * 8  # within d: always
    assert judged(0.5, room, held) is Verdict.accept  # the escalations within d filled the places
