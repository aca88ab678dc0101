"""The service classes' pure rules (shared/policies/classes.py) and their engine (class_engine.py):
the batch placement by the backlog's deadlines, a batch job's tier, and the controller's round for
both classes, in which a burst of batch jobs moves the batch fields of the plan and nothing else."""

from __future__ import annotations

import math

import pytest

from shared.policies import class_engine, classes
from shared.policies.catalog import make_policy
from shared.policies.classes import Backlog, backlog_of, batch_tier, job_draw, leftover_gpus, moved, place_batch
from shared.policies.control import DECISION_FIELDS, SHARE_FIELDS, Observation, PlanSchedule
from shared.policies.engine import BatchTimes
from shared.profiles import load_profile
from shared.schemas import Plan, Tier
from tests.helpers import make_settings

GPUS = [f"gpu{i:02d}" for i in range(16)]
TIMES = BatchTimes(load_profile("paper-l40s-x10"), 1.0)
INTERACTIVE_FIELDS = (*DECISION_FIELDS, *SHARE_FIELDS, "assignment", "fid")


def a_plan(light_gpus: int = 8, heavy_gpus: int = 8, **changes) -> Plan:
    """sd35-large-turbo (0.47 s a batch of 4) -> sd35-medium (1.3 s a job), r = 0.2, d = 0."""
    assignment = {gpu: Tier.light if i < light_gpus else Tier.heavy
                  for i, gpu in enumerate(GPUS[:light_gpus + heavy_gpus])}
    fields = dict(version=1, light_model="sd35-large-turbo", heavy_model="sd35-medium", r=0.2, d=0.0, light_batch=4,
                  heavy_batch=1, light_gpus=light_gpus, heavy_gpus=heavy_gpus, assignment=assignment)
    return Plan.model_validate({**fields, **changes})


def due_at(horizon: float, jobs: int) -> Backlog:
    """`jobs` batch jobs all due `horizon` seconds from now."""
    return backlog_of([horizon] * jobs, 0.0)


def test_no_backlog_changes_nothing():
    placement = place_batch(a_plan(), 10.0, Backlog.empty(), TIMES.seconds, 0.25)
    assert (placement.heavy, placement.first) == (1.0, ())


def test_a_backlog_the_heavy_leftover_covers_goes_heavy():
    # 10 jobs/s: heavy busy 10 x 0.2 x 1.3 = 2.6 of 8 GPUs, 5.4 left: 5.4 x 900 / 1.3 = 3,738 by 900 s.
    plan = a_plan()
    left = leftover_gpus(plan, 10.0, TIMES.seconds)
    assert left[Tier.heavy] == pytest.approx(8 - 10 * 0.2 * 1.3)
    placement = place_batch(plan, 10.0, due_at(900, 3000), TIMES.seconds, 0.25)
    assert (placement.heavy, placement.first) == (1.0, ())


def test_a_backlog_the_heavy_leftover_cannot_cover_takes_the_light_share_it_needs():
    plan = a_plan()
    left = leftover_gpus(plan, 10.0, TIMES.seconds)
    placement = place_batch(plan, 10.0, due_at(900, 5000), TIMES.seconds, 0.25)
    assert placement.first == ()
    assert placement.heavy == pytest.approx(left[Tier.heavy] * 900 / 1.3 / 5000, abs=1e-3)
    assert 0.5 < placement.heavy < 1.0


def test_a_backlog_neither_covers_reserves_light_gpus_up_to_the_weight():
    # 40 jobs/s leaves the heavy tier nothing (10.4 GPUs' worth asked of 8) and the light tier 4.3
    # GPUs; 10,000 jobs due in 60 s ask 19.6 of the light model's.
    plan = a_plan()
    placement = place_batch(plan, 40.0, due_at(60, 10_000), TIMES.seconds, 0.25)
    assert len(placement.first) == math.floor(0.25 * 16) == 4
    assert set(placement.first) == {"gpu04", "gpu05", "gpu06", "gpu07"}  # the light tier's last
    assert "4 light reserved" in placement.reason and "still short" in placement.reason
    # A smaller weight reserves fewer; none at 0; never a tier's last GPU.
    assert len(place_batch(plan, 40.0, due_at(60, 10_000), TIMES.seconds, 0.1).first) == 1
    assert place_batch(plan, 40.0, due_at(60, 10_000), TIMES.seconds, 0.0).first == ()
    assert place_batch(a_plan(2, 14), 40.0, due_at(60, 10_000), TIMES.seconds, 1.0).first == ("gpu01",)


def test_a_plan_of_one_tier_reserves_heavy_gpus():
    plan = a_plan(0, 16)
    placement = place_batch(plan, 10.0, due_at(120, 2000), TIMES.seconds, 0.25)
    assert placement.heavy == 1.0 and placement.first == ("gpu12", "gpu13", "gpu14", "gpu15")


def test_a_small_shortfall_reserves_only_what_it_needs():
    # 40 jobs/s: the light tier has 4.3 GPUs left; 3,000 jobs due in 60 s ask 5.9 of them: 1.6 short,
    # and a light GPU gives up 0.47 of interactive time: 4 GPUs (of 8 the weight allows).
    plan = a_plan()
    placement = place_batch(plan, 40.0, due_at(60, 3000), TIMES.seconds, 0.5)
    assert len(placement.first) == 4 and "still short" not in placement.reason, placement.reason


def test_a_plan_without_a_tier_places_every_batch_job_on_the_other():
    assert place_batch(a_plan(16, 0), 1.0, due_at(900, 10), TIMES.seconds, 0.25).heavy == 0.0
    assert place_batch(a_plan(0, 16), 1.0, due_at(900, 10_000), TIMES.seconds, 0.25).heavy == 1.0


def test_backlog_of_counts_the_due_by_each_horizon_the_overdue_too():
    backlog = backlog_of([95.0, 130.0, 2000.0, 9000.0], now=100.0, horizons=(30.0, 60.0, 3600.0))
    assert backlog == Backlog((30.0, 60.0, 3600.0), (2, 2, 3), 4)
    assert backlog.points()[-1] == (3600.0, 4)  # the whole backlog is due by the last horizon at the latest


def test_a_batch_jobs_tier_is_its_own_draw_deterministic_and_never_a_tier_without_gpus():
    ids = [f"job-{i}" for i in range(4000)]
    draws = [job_draw(job_id) for job_id in ids]
    assert draws == [job_draw(job_id) for job_id in ids] and all(0.0 <= d < 1.0 for d in draws)
    assert 0.45 < sum(d < 0.5 for d in draws) / len(draws) < 0.55
    plan = a_plan(batch_heavy=0.3)
    heavy = [batch_tier(plan, d) is Tier.heavy for d in draws]
    assert 0.25 < sum(heavy) / len(heavy) < 0.35
    assert all(class_engine.batch_route(job_id, "auto", plan) is batch_tier(plan, job_draw(job_id)) for job_id in ids)
    assert batch_tier(a_plan(16, 0, batch_heavy=1.0), 0.0) is Tier.light
    assert batch_tier(a_plan(0, 16, batch_heavy=0.0), 0.9) is Tier.heavy


def test_a_batch_jobs_quality_forces_its_tier_when_the_plan_has_it():
    plan = a_plan(batch_heavy=1.0)
    assert class_engine.batch_route("j", "low", plan) is Tier.light
    assert class_engine.batch_route("j", "high", a_plan(batch_heavy=0.0)) is Tier.heavy
    assert class_engine.batch_route("j", "low", a_plan(0, 16)) is Tier.heavy


def test_a_placement_moves_the_plan_only_materially():
    plan = a_plan(batch_heavy=0.8, batch_first=["gpu15"])
    assert not moved(plan, classes.BatchPlacement(0.83, ("gpu15",), ""))
    assert moved(plan, classes.BatchPlacement(0.85, ("gpu15",), ""))
    assert moved(plan, classes.BatchPlacement(0.8, ("gpu14", "gpu15"), ""))
    assert moved(a_plan(batch_heavy=0.98), classes.BatchPlacement(1.0, (), ""))  # back to all heavy
    assert not moved(a_plan(batch_heavy=1.0), classes.BatchPlacement(1.0, (), ""))


class Rounds:
    """The controller's rounds (class_engine.control_step) on a steady interactive load."""

    def __init__(self) -> None:
        settings = make_settings(controller_policy="hadis", profile="paper-l40s-x10", slo_s=6.0, burst_prior=0.0)
        self.schedule = PlanSchedule(make_policy(settings), settings.plan_period_s, settings.plan_min_dwell_s)
        self.plan: Plan | None = None
        self.published: list[tuple[float, Plan]] = []
        self.steps: list[class_engine.ControlStep] = []

    def run(self, seconds: int, start: float, rate: float, backlog: Backlog, weight: float = 0.25) -> None:
        for tick in range(seconds):
            now = start + tick
            observation = Observation(now, rate, 0, 0.0, len(GPUS), self.plan, arrivals=int(rate * (now + 1)))
            step = class_engine.control_step(self.schedule, observation, self.plan, GPUS, backlog, TIMES, weight)
            self.steps.append(step)
            if step.fields is not None:
                version = self.plan.version + 1 if self.plan else 1
                self.plan = Plan.model_validate({**step.fields, "version": version})
                self.published.append((now, self.plan))


def interactive(plan: Plan) -> dict:
    return {name: getattr(plan, name) for name in INTERACTIVE_FIELDS}


def test_a_burst_of_5000_batch_jobs_moves_the_batch_fields_and_not_the_interactive_plan():
    """The same interactive load (20 jobs/s) in two runs; in one, 5,000 batch jobs, due in 15
    minutes, are submitted at once at t = 60 s. Every plan in force has the same interactive fields
    in both; only the batch fields move, and only when the placement changes materially."""
    alone, with_batch = Rounds(), Rounds()
    alone.run(60, 0.0, 20.0, Backlog.empty())
    with_batch.run(60, 0.0, 20.0, Backlog.empty())
    for second in range(60, 120):
        alone.run(1, second, 20.0, Backlog.empty())
        with_batch.run(1, second, 20.0, backlog_of([960.0] * 5000, float(second)))
        assert interactive(alone.plan) == interactive(with_batch.plan), second
    assert [now for now, _ in alone.published] == [now for now, _ in with_batch.published if now < 60]
    batch_only = [plan for now, plan in with_batch.published if now >= 60]
    assert 1 <= len(batch_only) <= 3  # the burst, and its placement's material moves: not every round
    assert with_batch.plan.batch_heavy < 1.0 or with_batch.plan.batch_first
    assert with_batch.plan.reason.startswith(alone.plan.reason.split(class_engine.BATCH_REASON)[0])
    assert class_engine.BATCH_REASON + "batch backlog 5000" in with_batch.plan.reason
    assert alone.plan.batch_heavy == 1.0 and alone.plan.batch_first == []


def test_a_round_without_a_material_move_publishes_nothing():
    """A few batch jobs that the heavy leftover covers: heavy 1.0, as the plan says already, so the
    rounds publish what they publish without them, no more."""
    alone, with_batch = Rounds(), Rounds()
    alone.run(60, 0.0, 10.0, Backlog.empty())
    with_batch.run(60, 0.0, 10.0, due_at(900, 10))
    assert [now for now, _ in alone.published] == [now for now, _ in with_batch.published]
    assert with_batch.steps[-1].placement.heavy == 1.0 and with_batch.plan.batch_first == []


def test_a_reservation_waits_for_the_last_responsible_moment():
    """A shortfall the most the weight allows can still cover if reserved from RESERVE_LEAD_S before
    the deadline reserves nothing yet (interactive work keeps its GPUs while the load may fall); the
    same backlog near its deadline reserves."""
    plan = a_plan()
    # 30 jobs/s: 0.2 heavy GPUs left, 5.19 light (0.117 s an image); at most 4 light GPUs reserved,
    # each giving 0.35 of a GPU. 45,000 jobs due in 900 s lack 45,000 x 0.117 - 5.19 x 900 = 592
    # GPU-seconds, which 4 x 0.35 GPUs from 60 s before the deadline (1,176) would cover: not yet.
    early = place_batch(plan, 30.0, due_at(900, 45_000), TIMES.seconds, 0.25)
    # 4,500 due within the minute lack 4,500 x 0.117 - 5.19 x 60 = 215: now.
    late = place_batch(plan, 30.0, due_at(60, 4_500), TIMES.seconds, 0.25)
    assert early.first == (), early.reason
    assert late.first != (), late.reason
    # Past what even the whole weight could make up later, it reserves now.
    assert place_batch(plan, 30.0, due_at(900, 90_000), TIMES.seconds, 0.25).first != ()


def test_queued_batch_jobs_move_to_the_light_queue_in_bounded_moves_never_back():
    """classes.rebalance: the heavy batch queue is brought down to the placement's queued heavy
    share, at most `limit` a round, not for a rounding, never back to the heavy tier, never to or
    from a tier without GPUs or between two tiers of one model."""
    plan = a_plan()
    assert classes.rebalance(plan, 0.5, {Tier.light: 0, Tier.heavy: 1000}) == classes.Move(Tier.heavy, Tier.light, 200)
    assert classes.rebalance(plan, 0.5, {Tier.light: 0, Tier.heavy: 1000}, limit=10_000) == classes.Move(
        Tier.heavy, Tier.light, 500)
    assert classes.rebalance(plan, 1.0, {Tier.light: 300, Tier.heavy: 0}) is None  # not back while light has a share
    # back once the placement is all heavy again (the load that moved them fell)
    assert classes.rebalance(plan, 1.0, {Tier.light: 300, Tier.heavy: 0}, all_heavy=True) == classes.Move(
        Tier.light, Tier.heavy, 200)
    assert classes.rebalance(plan, 1.0, {Tier.light: 5, Tier.heavy: 50}, all_heavy=True) is None  # within 8 jobs
    assert classes.rebalance(plan, 0.5, {Tier.light: 480, Tier.heavy: 520}) is None  # within 5 %
    assert classes.rebalance(plan, 0.5, {Tier.light: 3, Tier.heavy: 9}) is None  # within 8 jobs
    assert classes.rebalance(plan, 0.5, {Tier.light: 0, Tier.heavy: 0}) is None
    no_light = a_plan(light_gpus=0, heavy_gpus=16)
    assert classes.rebalance(no_light, 0.0, {Tier.light: 0, Tier.heavy: 99}) is None
    assert classes.rebalance(a_plan(light_model="sd35-medium"), 0.0, {Tier.light: 0, Tier.heavy: 99}) is None


def test_queued_jobs_move_only_at_the_last_responsible_moment():
    """The placement sends a share to the light tier as soon as the heavy leftover falls short, but
    the jobs already queued move only when the light tier's leftover would otherwise lack the time:
    the load may fall before the deadlines."""
    plan = a_plan()  # 20 jobs/s: about 4.4 heavy GPUs left (1.3 s an image), 6.2 light (0.117 s)
    far = place_batch(plan, 20.0, due_at(900, 5_000), TIMES.seconds, 0.25)
    assert far.heavy < 1.0 and far.queued_heavy == 1.0, far.reason
    near = place_batch(plan, 20.0, due_at(120, 5_000), TIMES.seconds, 0.25)
    assert near.heavy < 1.0 and near.queued_heavy == near.heavy, near.reason
    assert "queued jobs to light" in near.reason and "queued jobs to light" not in far.reason


def test_a_job_whose_quality_forces_its_tier_does_not_move():
    assert not classes.movable("high", Tier.heavy) and not classes.movable("low", Tier.light)
    assert classes.movable("high", Tier.light) and classes.movable("auto", Tier.heavy)


def test_a_round_moves_the_queued_jobs_under_the_plan_it_leaves_in_force():
    """control_step's move is computed against the plan in force after the round: a backlog placed
    on the heavy tier that its leftover cannot serve by a near deadline moves to the light queue."""
    rounds = Rounds()
    rounds.run(60, 0.0, 30.0, Backlog.empty())
    schedule, current = rounds.schedule, rounds.plan
    observation = Observation(61.0, 30.0, 0, 0.0, len(GPUS), current, heavy_batch_queued=4_000)
    step = class_engine.control_step(schedule, observation, current, GPUS, due_at(120, 4_000), TIMES, 0.25)
    assert step.placement.queued_heavy < 1.0, step.placement.reason
    assert step.move == classes.Move(Tier.heavy, Tier.light, classes.MOVE_LIMIT)


def test_light_gpus_holding_the_heavy_model_count_as_heavy_capacity_for_the_backlog():
    """5,000 jobs due in 900 s at 10 jobs/s: the heavy leftover alone covers about 3,700 (the light
    tier takes a share); with the light tier's leftover serving heavy batch work too (colocate),
    every job goes to the heavy tier's queue. A backlog beyond both is split as without it."""
    plan = a_plan()
    assert place_batch(plan, 10.0, due_at(900, 5000), TIMES.seconds, 0.25).heavy < 1.0
    together = place_batch(plan, 10.0, due_at(900, 5000), TIMES.seconds, 0.25, colocate=True)
    assert (together.heavy, together.first) == (1.0, ())
    beyond = due_at(900, 20_000)
    assert place_batch(plan, 10.0, beyond, TIMES.seconds, 0.25, colocate=True) == \
        place_batch(plan, 10.0, beyond, TIMES.seconds, 0.25)


def test_a_light_gpu_takes_heavy_batch_work_and_a_paused_batch_comes_first():
    assert classes.guest_tier(Tier.light, True) is Tier.heavy
    assert classes.guest_tier(Tier.heavy, True) is None and classes.guest_tier(Tier.light, False) is None
    assert classes.batch_source(True, 3, 3) == "paused"
    assert classes.batch_source(False, 3, 3) == "own"
    assert classes.batch_source(False, 0, 3) == "guest"
    assert classes.batch_source(False, 0, 0) is None
    assert classes.resumed_s(10.0, 20, 50) == pytest.approx(6.0)
    assert classes.resumed_s(10.0, 0, 50) == 10.0 and classes.resumed_s(10.0, 60, 50) == 0.0
