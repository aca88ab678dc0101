"""The services and the simulator decide alike: the same recorded inputs (deliveries or jobs with
their times, the plan, the profile) go through the services' own methods (services/router.py,
worker.py, judge.py, controller.py, with fakes for the broker, the store and the clock) and through
the simulator's (shared/experiments/simulator.py), and every decision must be the same: the tier a
prompt goes to, the batch a worker admits and when it expects it to end, what becomes of a job too
late for its tier, the judge's verdict, and what the controller's policy observes. Both call the
engine core (shared/policies/engine.py); a side that combined the rules its own way again would
fail here (the controller once counted the judge's queue as queued demand, the simulator did not).
No broker, no store: the services' I/O is faked at their edges."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from services.controller import Controller
from services.judge import Judge
from services.router import Router
from services.worker import TierWorker
from shared import reference
from shared.arrival_rate import DemandTracker
from shared.bus import Queues
from shared.experiments.simulator import SimJob, Simulation, SimWorker
from shared.experiments.trace import Trace
from shared.intake import Claimed
from shared.policies import engine
from shared.schemas import Job, JobState, Plan, Task, Tier
from shared.service import Service
from tests.fakes import FakeDelivery, FakeStore
from tests.helpers import make_settings

T0 = 1_800_000_000.0  # the recorded inputs' clock: a plausible Unix time (the messages require one)
PROFILE = "paper-l40s-x10"  # sd35-large-turbo 0.23 s a batch of 2, sd35-medium 2.34 s, sd35-large 4.86 s


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class FakeBus:
    def __init__(self) -> None:
        self.queues = Queues("replay")
        self.published: list[tuple[str, Any]] = []
        self.depth: dict[str, int] = {}

    async def publish(self, queue: str, message: Any, message_id: str | None = None) -> None:
        self.published.append((queue, message))

    async def depths(self) -> dict[str, int]:
        return dict(self.depth)

    def tier_of(self, job_id: str) -> Tier | None:
        for queue, message in self.published:
            if message.job.job_id == job_id:
                return next(tier for tier in Tier if self.queues.tier(tier) == queue)
        return None


def settings(**overrides: Any):
    return make_settings(backend="emulated", judge_backend="emulated", profile=PROFILE, time_scale=1.0, slo_s=6.0,
                         emulated_gpus=2, **overrides)


def service_for(config, plan: Plan, gpus: list[str] | None = None) -> Service:
    return Service("replay", config, FakeBus(), FakeStore(gpus), SimpleNamespace(current=plan))  # type: ignore[arg-type]


def simulation_for(config, plan: Plan) -> Simulation:
    simulation = Simulation(config, Trace("none", np.array([]), np.array([], dtype=int)))
    simulation.now, simulation.plan = T0, plan
    return simulation


def plan(**fields: Any) -> Plan:
    base = dict(version=1, light_model="sd35-large-turbo", heavy_model="sd35-medium", r=0.5, d=0.3, light_batch=2,
                heavy_batch=2, light_gpus=1, heavy_gpus=1)
    return Plan.model_validate({**base, **fields})


# --- the worker: admission, the batch-end estimate and the too-late fallback ---------------------


@dataclass
class Step:
    """One batch the feeder takes: at `t`, under `plan`, jobs as (deadline, escalated), after the
    batch times measured so far (`measured`: model, size, seconds)."""

    t: float
    plan: Plan
    jobs: list[tuple[float, bool]]
    measured: list[tuple[str, int, float]] = field(default_factory=list)


PLAN_A = plan()
PLAN_LARGE = plan(version=2, heavy_model="sd35-large")
PLAN_NO_LIGHT = plan(version=3, heavy_model="sd35-large", light_gpus=0)

HEAVY_STEPS = [
    Step(0.0, PLAN_A, [(6.0, False), (6.0, True)]),  # idle: ends at 2.34, both in time
    Step(0.5, PLAN_A, [(3.0, False), (5.5, True)]),  # behind the first: ends 4.68; the first to light
    Step(3.0, PLAN_A, [(7.0, True), (7.0, False)], [("sd35-medium", 2, 3.0)]),  # measured 3 s: both late
    Step(3.1, PLAN_A, [(3.2, False)]),  # late, and too late for light as well: shed
    Step(4.0, PLAN_LARGE, [(20.0, False)]),  # the model changes while batches are pending: a load (4 s)
    Step(20.0, PLAN_LARGE, [(26.0, False), (22.9, False)]),  # idle on the new model: no load
    Step(21.0, PLAN_LARGE, [(21.3, False)]),  # a light batch would end in time, but not with the handoff: shed
    Step(30.0, PLAN_NO_LIGHT, [(31.0, False), (40.0, False)]),  # no light tier: late is shed
]
LIGHT_STEPS = [
    Step(0.0, PLAN_A, [(6.0, False), (0.2, False)]),
    Step(0.1, PLAN_A, [(0.45, False), (6.0, False)]),
    Step(2.0, PLAN_A, [(2.2, False)], [("sd35-large-turbo", 2, 0.5)]),
]


def with_load(profile, model: str, seconds: float):
    """A copy of the (cached, shared) profile in which `model` takes `seconds` to load."""
    profile = profile.model_copy(deep=True)
    object.__setattr__(profile.model(model), "load_s", seconds)
    return profile


def task_for(tier: Tier, index: int, t: float, deadline: float, escalated: bool) -> Task:
    job = Job(job_id=f"{index:032x}", prompt=f"a lighthouse, take {index}", submitted_at=T0 + t - 0.01)
    return Task(job=job, deadline=T0 + deadline, tier=tier, escalated=escalated)


async def worker_decisions(tier: Tier, steps: list[Step]) -> list[tuple]:
    """The service path: TierWorker.admit on fake deliveries, the fallback's moves read off the fakes."""
    service = service_for(settings(), steps[0].plan)
    clock = Clock()
    worker = TierWorker(service, tier, clock=clock)
    worker.times.profile = with_load(worker.times.profile, "sd35-large", 4.0)
    decisions, index = [], 0
    try:
        for step in steps:
            clock.now, service.plans.current = T0 + step.t, step.plan  # type: ignore[misc]
            for model, size, seconds in step.measured:
                worker.pipeline.timer.observe(model, size, seconds)
            if worker.pipeline.busy_until <= clock.now:  # idle: the run loop has loaded the plan's model
                worker.model.generator = SimpleNamespace(model=SimpleNamespace(name=step.plan.model_for(tier)))  # type: ignore[assignment]
            tasks = [task_for(tier, index + i, step.t, deadline, escalated)
                     for i, (deadline, escalated) in enumerate(step.jobs)]
            index += len(tasks)
            batch = await worker.admission.admit([FakeDelivery(task.model_dump_json().encode()) for task in tasks])
            admitted = [tasks.index(item.task) for item in batch.items] if batch else []
            late = {i: fallback_taken(service, task) for i, task in enumerate(tasks) if i not in admitted}
            decisions.append((admitted, round(batch.ends_by - T0, 9) if batch else None, late))
    finally:
        await worker.model.close()
    return decisions


def fallback_taken(service: Service, task: Task) -> str:
    job_id = task.job.job_id
    if service.bus.tier_of(job_id) is Tier.light:  # type: ignore[attr-defined]
        return "to_light"
    if any(change.job_id == job_id and change.promote_light for change in service.store.changes):  # type: ignore[attr-defined]
        return "serve_light"
    assert service.store.failed.get(job_id) is JobState.expired  # type: ignore[attr-defined]
    return "expire"


def simulator_decisions(tier: Tier, steps: list[Step]) -> list[tuple]:
    """The simulator path: SimFleet.admit on the same jobs, the fallback read off the jobs' ends."""
    simulation = simulation_for(settings(), steps[0].plan)
    simulation.times.profile = with_load(simulation.times.profile, "sd35-large", 4.0)
    worker = SimWorker("sim-emu0", tier, ready_at=0.0)
    decisions, index = [], 0
    for step in steps:
        simulation.now, simulation.plan = T0 + step.t, step.plan
        for model, size, seconds in step.measured:
            worker.pipeline.timer.observe(model, size, seconds)
        jobs = [SimJob(index + i, T0 + step.t, T0 + deadline, 0, escalated=escalated)
                for i, (deadline, escalated) in enumerate(step.jobs)]
        index += len(jobs)
        worker.buffer.extend(jobs)
        simulation.fleet.admit(worker)
        admitted = [jobs.index(job) for batch, _ in worker.batches for job in batch]
        worker.batches.clear()  # the pipeline's slots are the service's semaphore: not a decision
        late = {i: sim_fallback(simulation, job) for i, job in enumerate(jobs) if i not in admitted}
        decisions.append((admitted, round(worker.pipeline.busy_until - T0, 9) if admitted else None, late))
    return decisions


def sim_fallback(simulation: Simulation, job: SimJob) -> str:
    if job in simulation.fleet.queues[Tier.light]:
        return "to_light"
    if job.state == "done" and job.tier is Tier.light:
        return "serve_light"
    assert job.state == "expired"
    return "expire"


@pytest.mark.parametrize("tier, steps", [(Tier.heavy, HEAVY_STEPS), (Tier.light, LIGHT_STEPS)])
async def test_the_worker_and_the_simulator_admit_time_and_shed_alike(tier, steps):
    service = await worker_decisions(tier, steps)
    simulated = simulator_decisions(tier, steps)
    assert service == simulated
    fallbacks = {taken for _, _, late in service for taken in late.values()}
    if tier is Tier.heavy:  # the recording reaches every branch: each way out, a load, a measured time
        assert fallbacks == {"to_light", "serve_light", "expire"}
        assert service[4][1] == pytest.approx(4.68 + 4.0 + 2.7)
        assert service[2][2] == {0: "serve_light", 1: "to_light"}
    else:
        assert fallbacks == {"expire"}


# --- the judge ------------------------------------------------------------------------------------


def judge_inputs() -> list[tuple[float, int, float]]:
    """(time, prompt id, deadline) of 200 light images: most with time for the heavy model, every
    fifth not (2 s left, a heavy batch takes 2.34 s). Past 64 scores the calibration uses its window."""
    return [(i * 0.05, (i * 37) % 5000, i * 0.05 + (2.0 if i % 5 == 0 else 6.0)) for i in range(200)]


@pytest.mark.parametrize("guarded", [False, True])
async def test_the_judge_and_the_simulator_reach_the_same_verdicts(guarded):
    """Both escalate the lowest d of the scores in time for the heavy model. Of the jobs the burst
    guard sent light under the plan in force (every second one here), both escalate up to the lowest
    r + (1 - r) d while the heavy tier has room (engine.guarded_escalation); of those it held under
    another point (every fourth), the lowest d."""
    model, current = "sd35-large-turbo", plan(d=0.3)
    service, clock = service_for(settings(), current), Clock()
    judge = Judge(service, clock=clock)
    simulation = simulation_for(settings(), current)
    column = simulation.profile.model(model).reference_index
    served, simulated, too_late = [], [], 0
    held_here, held_before = engine.held_point(current), engine.held_point(plan(r=0.8))
    for index, (t, prompt_id, deadline) in enumerate(judge_inputs()):
        score = float(reference.judge_scores()[prompt_id, column])  # the emulated judge's score of the prompt
        clock.now = simulation.now = T0 + t
        held = (held_here if index % 2 else held_before if index % 4 == 2 else None) if guarded else None
        task = task_for(Tier.light, index, t, deadline, False).model_copy(update={"model": model, "held_for": held})
        change = judge.verdict(Claimed(FakeDelivery(b""), task), score)  # type: ignore[arg-type]
        served.append(change.state is JobState.escalated)
        too_late += change.detail == "too late to escalate"
        job = SimJob(index, T0 + t, T0 + deadline, prompt_id, held_for=held)
        simulation.judge([job], model)
        simulated.append(job.escalated and job in simulation.fleet.queues[Tier.heavy])
        assert job.escalated or job.state == "done"
    assert served == simulated
    assert 0 < sum(served) < len(served) and too_late > 0
    if guarded:  # r 0.5, d 0.3: the odd half escalates about 0.65 of its images in time, the rest 0.3
        assert sum(served[1::2]) > 1.5 * sum(served[0::2]), (sum(served[1::2]), sum(served[0::2]))


# --- the router -----------------------------------------------------------------------------------


class RecordedScores:
    """The router's scorer, replaying recorded scores by prompt."""

    def __init__(self, scores: dict[str, float]) -> None:
        self.scores = scores

    async def score(self, router: Any, prompt: str) -> float:
        return self.scores[prompt]


@dataclass
class Routed:
    """What the router and the simulator decided for each job: its tier, and whether the burst guard
    sent it light (the task the router published, the simulator's job)."""

    router: Router
    served: list[Tier] = field(default_factory=list)
    simulated: list[Tier] = field(default_factory=list)
    served_held: list[str | None] = field(default_factory=list)
    simulated_held: list[str | None] = field(default_factory=list)


async def route_both(times: list[float], scores: np.ndarray, plans: list[Plan]) -> Routed:
    """Each job at its time through the router's route (its clock and plan set) and the simulator's
    arrive: the router, and what each decided."""
    jobs = [Job(prompt=f"prompt {i}", submitted_at=t) for i, t in enumerate(times)]
    service, clock = service_for(settings(), plans[0]), Clock()
    router = Router(service, clock=clock)
    router.scorer = RecordedScores({job.prompt: float(s) for job, s in zip(jobs, scores, strict=True)})  # type: ignore[assignment]
    simulation = simulation_for(settings(), plans[0])
    simulation.router_scores = scores
    routed = Routed(router)
    for index, (job, current) in enumerate(zip(jobs, plans, strict=True)):
        clock.now = simulation.now = job.submitted_at
        service.plans.current = simulation.plan = current  # type: ignore[misc]
        await router.route(job, redelivered=False)
        routed.served.append(service.bus.tier_of(job.job_id))  # type: ignore[attr-defined]
        routed.served_held.append(service.bus.published[-1][1].held_for)  # type: ignore[attr-defined]
        sim_job = SimJob(index, job.submitted_at, job.submitted_at + 6.0, index)
        simulation.arrive(sim_job)
        routed.simulated.append(Tier.heavy if sim_job.routed_heavy else Tier.light)
        routed.simulated_held.append(sim_job.held_for)
    return routed


async def test_the_router_and_the_simulator_send_prompts_to_the_same_tiers():
    """A burst of hard prompts: the heavy tier's share for the router fills (HeavyRoom) and the
    rest take the light path; a plan without a light tier sends them all to heavy."""
    rng = np.random.default_rng(5)
    scores = rng.uniform(0.0, 1.0, 120)
    plans = [plan(r=0.6, d=0.2, heavy_batch=1)] * 80 + [plan(version=2, r=0.6, heavy_batch=1, light_gpus=0)] * 40
    routed = await route_both([T0 + i * 0.05 for i in range(len(scores))], scores, plans)
    router, served = routed.router, routed.served
    assert served == routed.simulated
    assert not any(routed.served_held) and not any(routed.simulated_held)  # no burst guard in these plans
    threshold = router.threshold(plans[0].light_model, plans[0].r)
    turned = [i for i in range(80) if scores[i] >= threshold and served[i] is Tier.light]
    assert turned and served[:80].count(Tier.heavy) > 0  # the room filled, and it let some in


async def test_the_router_and_the_simulator_hold_a_bursts_routing_alike():
    """A silence (a job every 0.8 s) then a burst (one every 10 ms) under a silence's plan (r 0.8)
    with its burst guard (2 jobs/s): both count their last second the same way, and once the count is
    beyond the guard every prompt the score sends to heavy takes the light path in both, and both mark
    every job the guard sent light with the point it held against (the judge escalates more of those)."""
    rng = np.random.default_rng(7)
    times = [T0 + 0.8 * i for i in range(20)] + [T0 + 16.0 + 0.01 * i for i in range(60)]
    scores = rng.uniform(0.0, 1.0, len(times))
    current = plan(r=0.8, d=0.6, burst_qps=2.0)
    routed = await route_both(times, scores, [current] * len(times))
    router, served = routed.router, routed.served
    assert served == routed.simulated
    assert routed.served_held == routed.simulated_held
    threshold = router.threshold(current.light_model, current.r)
    hard = [i for i in range(len(times)) if scores[i] >= threshold]
    assert any(served[i] is Tier.heavy for i in hard if i < 20)  # the silence routes as planned
    assert all(served[i] is Tier.light for i in hard if i >= 27)  # the 7th job of the burst trips it
    held = [i for i, point in enumerate(routed.served_held) if point is not None]
    assert held and min(held) >= 20 and {routed.served_held[i] for i in held} == {engine.held_point(current)}
    burst = [i for i in hard if i >= 27]  # what the score sent heavy, the guard sent light, until the light room fills
    assert sum(i in held for i in burst) >= len(burst) - 2, [i for i in burst if i not in held]
    assert router.held_under == current.version


# --- the controller -------------------------------------------------------------------------------


async def test_the_controller_and_the_simulator_observe_the_same_demand_and_queues():
    """Arrivals and queue depths over a few ticks: the same observation on both paths. The judge's
    queue holds generated images, not work waiting for a GPU: it is not queued demand (engine.py)."""
    config, current = settings(), plan()
    service = service_for(config, current, gpus=["g0", "g1"])
    controller = Controller(service)
    controller.demand = DemandTracker(config.demand_halflife_s, T0)
    simulation = simulation_for(config, current)
    simulation.demand = DemandTracker(config.demand_halflife_s, T0)
    seen: list = []
    simulation.schedule.step = lambda observation, plan, gpus: seen.append(observation)  # type: ignore[method-assign]
    bus = service.bus
    ticks = [(1.0, 4, 0, 0, 3), (2.0, 9, 5, 2, 7), (3.0, 12, 11, 4, 20), (4.0, 2, 0, 3, 1)]
    for t, arrivals, light, heavy, judged in ticks:
        bus.depth = {bus.queues.tier(Tier.light): light, bus.queues.tier(Tier.heavy): heavy,  # type: ignore[attr-defined]
                     bus.queues.judge: judged, bus.queues.requests: 0,
                     **{bus.queues.batch(tier): 0 for tier in Tier}}  # no batch-class work here
        controller.demand.arrived(arrivals)
        controller.demand.update(T0 + t)
        observed, _ = await controller.observe(T0 + t)
        simulation.demand.arrived(arrivals)
        simulation.fleet.queues = {Tier.light: deque([None] * light), Tier.heavy: deque([None] * heavy)}  # type: ignore[list-item]
        simulation.now = T0 + t
        simulation.control()
        assert observed == seen[-1]
        assert observed.queued_jobs == light + heavy
