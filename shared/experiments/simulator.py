"""`hadis simulate`: the services as a discrete-event simulation, for scales and traces that one
machine cannot host. It calls the same code as the services for every decision: the engine core
(shared/policies/engine.py: the router's tier, the worker's batch end and too-late fallback, the
judge's verdict, the controller's observation), the controller's policy through PlanSchedule and
DemandTracker, the GPU assignment, the rule router's score and threshold, the judge's
calibration. tests/policies/test_engine_replay.py holds it to the services' decisions.

What it models of the services (docs/experiments.md lists what it leaves out):
- the broker: one FIFO queue per tier; a worker holds up to PREFETCH_BATCHES batches of
  deliveries (RabbitMQ's prefetch), given out round-robin to workers with credit, acked when
  their batch is finished;
- a worker: one batch generating and one queued behind it (PIPELINE_DEPTH); a batch is admitted
  when the worker takes it, and a job that would end after its deadline (when the batches
  admitted before it end, plus its own batch time, from the batch times this worker has seen)
  is shed as expired;
- the judge: a fixed delay, then the reference judge score of the prompt on the light model,
  the lowest-d fraction escalated unless the heavy batch cannot end by the deadline;
- a GPU moved to another tier: its worker finishes what it admitted, hands back its buffer,
  and the new worker is ready after a process start (`worker_start_s`, plus `worker_start_each_s`
  for every other worker starting at once: they share the host's CPUs; shared/policies/
  transitions.py) and its model's load (the profile's `load_s`);
- a tier's model replaced in place: the worker finishes its batches, then loads (`load_s`).
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from shared import reference
from shared.arrival_rate import DemandTracker
from shared.experiments.report import JobOutcome, PlanEvent, interactive_fields
from shared.experiments.trace import Trace
from shared.policies import engine
from shared.policies import quality as quality_rules
from shared.policies.admission import PIPELINE_DEPTH, PREFETCH_BATCHES, ArrivalPace, Fallback, HeavyRoom
from shared.policies.catalog import make_policy
from shared.policies.control import Observation, PlanSchedule
from shared.policies.engine import BatchTimes, Pipeline, Verdict
from shared.policies.judge import JudgeCalibration, calibration_for
from shared.policies.quality import MixTracker, QualityMix
from shared.policies.router import default_router
from shared.policies.transitions import load_s
from shared.policies.transitions import start_s as transition_start_s
from shared.profiles import load_profile
from shared.schemas import Plan, Tier
from shared.settings import Settings

TICK_S = 1.0  # services/controller.py


@dataclass
class SimJob:
    index: int
    arrival_s: float
    deadline_s: float
    prompt_id: int
    plan: Plan | None = None
    routed_heavy: bool = False
    escalated: bool = False
    held_for: str | None = None  # the router's burst guard sent it light (engine.Route.held_for)
    tier: Tier | None = None
    state: str = "lost"
    end_s: float | None = None
    quality: str = "auto"  # the job's quality (shared/policies/quality.py), drawn from the mix
    priority: str = "interactive"  # the service class (shared/experiments/classes_sim.py: batch)


@dataclass
class SimWorker:
    gpu: str
    tier: Tier
    ready_at: float
    buffer: deque = field(default_factory=deque)  # delivered, not yet admitted
    batches: deque = field(default_factory=deque)  # admitted: [generating, queued]
    busy_until: float = 0.0  # when its admitted batches do end (the pipeline holds its own estimate)
    retiring: bool = False
    pipeline: Pipeline = field(default_factory=Pipeline)  # what admission has committed it to

    def unacked(self) -> int:
        return len(self.buffer) + sum(len(batch) for batch, _ in self.batches)


@dataclass(frozen=True)
class Consumer:
    """How a worker consumes one broker queue: its prefetch in batches, its deliveries not acked
    (against that prefetch), the buffer deliveries land in, and whether the fleet marks the tier
    saturated when no worker has credit left (SimFleet.saturated: only the interactive queue's)."""

    prefetch_batches: int
    unacked: Callable[[SimWorker], int]
    buffer: Callable[[SimWorker], deque]
    saturates: bool = False
    batch_tier: Tier | None = None  # whose batch size the prefetch counts in (None: the workers' own tier's)


# The tier queue's consumer (services/worker.py's): every job without service classes.
INTERACTIVE = Consumer(PREFETCH_BATCHES, lambda worker: worker.unacked(), lambda worker: worker.buffer, saturates=True)


class Simulation:
    """The event loop, the controller, the router and the judge; the broker, the agent and the
    workers are the fleet's (SimFleet)."""

    def __init__(self, settings: Settings, trace: Trace, *, worker_start_s: float | None = None,
                 worker_start_each_s: float | None = None, offset_s: float = 0.0, judge_s: float = 0.02,
                 finish_s: float = 0.005, progress: Callable[[float, int, int], None] | None = None,
                 quality_mix: QualityMix | None = None, seed: int = 0) -> None:
        """`worker_start_s` and `worker_start_each_s` are what a start takes here (the policy
        prices switches with the settings' figures, as the services' controller does); `offset_s`
        is how long the controller ran before the trace began (its plan period's phase: in an
        experiment, however long the first plan's workers took to start); `quality_mix` the shares of
        jobs asking quality low and high (drawn with `seed`; the rest auto)."""
        self.settings = settings
        self.trace = trace
        self.profile = load_profile(settings.profile)
        self.times = BatchTimes(self.profile, settings.time_scale)  # the emulated workers sleep these
        self.offset_s = offset_s
        self.judge_s = judge_s
        self.finish_s = finish_s
        self.progress = progress
        self.schedule = PlanSchedule(make_policy(settings), settings.plan_period_s, settings.plan_min_dwell_s)
        self.demand = DemandTracker(settings.demand_halflife_s, 0.0 - offset_s)
        self.router = default_router()
        self.router_scores = self.router.reference_scores
        self.thresholds: dict[float, float] = {}
        self.judge_scores = reference.judge_scores()
        self.calibrations: dict[str, JudgeCalibration] = {}
        self.gpus = [f"sim-emu{i}" for i in range(settings.emulated_gpus)]
        self.fleet = SimFleet(self, settings.worker_start_s if worker_start_s is None else worker_start_s,
                              settings.worker_start_each_s if worker_start_each_s is None else worker_start_each_s)
        self.events: list = []
        self.sequence = itertools.count()
        self.now = 0.0
        self.plan: Plan | None = None
        self.plans: list[PlanEvent] = []
        self.version = 0
        self.jobs = [SimJob(i, float(t), float(t) + settings.slo_s, int(p))
                     for i, (t, p) in enumerate(zip(trace.arrival_s, trace.prompt_ids, strict=True))]
        self.open_jobs = len(self.jobs)
        self.arrived = 0
        self.room = HeavyRoom()  # the router's backlog in the heavy tier
        self.light_room = HeavyRoom()  # what the router sent light in a burst (engine.route)
        self.escalations = HeavyRoom()  # the judge's escalations in the heavy tier (engine.verdict)
        self.pace = ArrivalPace()  # the router's interactive arrivals, held against the plan's burst_qps
        self.mix = MixTracker(settings.demand_halflife_s, 0.0 - offset_s)  # as the controller's
        draw_qualities(self.jobs, quality_mix or QualityMix(), seed)

    @property
    def in_force(self) -> Plan:
        """The plan: the first control() sets it, before the first job arrives."""
        if self.plan is None:
            raise RuntimeError("no plan yet")
        return self.plan

    # --- the event loop -----------------------------------------------------------------------

    def at(self, t: float, action: Callable, *args) -> None:
        heapq.heappush(self.events, (t, next(self.sequence), action, args))

    def run(self) -> list[JobOutcome]:
        self.now = 0.0 - self.offset_s  # (not -0.0 in the plans.csv)
        self.control()
        for worker in self.fleet.workers.values():
            worker.ready_at = 0.0  # the experiment starts replaying once the first workers are up
        for tier in Tier:
            self.at(0.0, self.fleet.worker_ready, tier)
        self.at(self.now + TICK_S, self.tick)
        arrival = 0
        end_by = self.end_by()
        while self.open_jobs > 0:
            next_event = self.events[0][0] if self.events else np.inf
            if arrival < len(self.jobs) and self.jobs[arrival].arrival_s <= next_event:
                self.now = self.jobs[arrival].arrival_s
                self.arrive(self.jobs[arrival])
                arrival += 1
                continue
            if not self.events or next_event > end_by:
                break
            self.now, _, action, args = heapq.heappop(self.events)
            action(*args)
        return [self.outcome(job) for job in self.jobs]

    def end_by(self) -> float:
        """When the run gives up on jobs not ended (counted lost)."""
        return self.trace.duration_s + 10 * self.settings.slo_s + 60.0

    def tick(self) -> None:
        self.control()
        if self.progress:
            self.progress(self.now, self.arrived, len(self.jobs) - self.open_jobs)
        if self.open_jobs > 0:
            self.at(self.now + TICK_S, self.tick)

    # --- the controller -----------------------------------------------------------------------

    def control(self) -> None:
        """As services/controller.py: observe (shared/policies/engine.py), plan, reconcile."""
        fields = self.schedule.step(self.observe(), self.plan, self.gpus)
        if fields is not None:
            self.publish(fields)

    def observe(self) -> Observation:
        rate = self.demand.update(self.now)
        queues = self.fleet.queues
        self.mix.update(self.now)
        return engine.observation(self.now, rate, len(queues[Tier.light]), len(queues[Tier.heavy]), len(self.gpus),
                                  self.plan, self.demand.total, self.settings.slo_s, self.mix.mix(rate),
                                  self.fleet.batch_depths())

    def publish(self, fields: dict) -> None:
        """A new plan version: in the plan log when its interactive fields change (report.py:
        interactive_fields), and reconciled with the fleet."""
        self.version += 1
        before, self.plan = self.plan, Plan.model_validate({**fields, "version": self.version})
        if before is None or interactive_fields(before) != interactive_fields(self.plan):
            self.plans.append(PlanEvent.of(self.now, self.plan))
        self.fleet.reconcile(before)

    # --- the router ---------------------------------------------------------------------------

    def arrive(self, job: SimJob) -> None:
        """As services/router.py: the prompt's score against the plan's threshold, and room in the
        heavy tier's share for the router (shared/policies/engine.py: route)."""
        self.arrived += 1
        self.demand.arrived()
        self.mix.arrived(job.quality)
        plan = job.plan = self.in_force
        arrived = self.pace.arrived(self.now)
        forced = engine.forced_route(job.quality, plan, self.room, self.now, job.deadline_s, self.times)
        if isinstance(forced, str):  # a high job the heavy tier cannot take: failed, as the router records it
            self.end(job, "failed")
            return
        r = quality_rules.for_auto_jobs(plan).r
        threshold = self.thresholds.get(r)
        if threshold is None:
            threshold = self.thresholds[r] = self.router.threshold(r)
        score = float(self.router_scores[job.prompt_id % len(self.router_scores)])
        routed = forced or engine.route(score, threshold, plan, self.room, self.now, job.deadline_s, self.times,
                                        arrived, self.light_room)
        job.routed_heavy, job.held_for = routed.tier is Tier.heavy, routed.held_for
        self.fleet.enqueue(job, routed.tier)

    # --- the judge ----------------------------------------------------------------------------

    def calibration(self, model: str) -> JudgeCalibration:
        if model not in self.calibrations:
            self.calibrations[model] = calibration_for(self.profile.model(model))
        return self.calibrations[model]

    def judge(self, batch: list[SimJob], model: str) -> None:
        """As services/judge.py: the reference score of the prompt on the light model, and the
        engine's verdict (shared/policies/engine.py: verdict)."""
        plan = self.in_force
        column = self.profile.model(model).reference_index
        calibration = self.calibration(model)
        for job in batch:
            if job.quality == "low":  # never escalated, not scored (services/judge.py)
                self.end(job, "done")
                continue
            score = (float(self.judge_scores[job.prompt_id % len(self.judge_scores), column])
                     if column is not None else 0.5)
            if engine.verdict(calibration, score, plan, self.now, job.deadline_s, self.times, self.escalations,
                              job.held_for) is Verdict.escalate:
                job.escalated = True
                self.fleet.enqueue(job, Tier.heavy)
            else:
                self.end(job, "done")

    # --- outcomes -----------------------------------------------------------------------------

    def end(self, job: SimJob, state: str, at: float | None = None) -> None:
        job.state, job.end_s = state, self.now if at is None else at
        self.open_jobs -= 1

    def outcome(self, job: SimJob) -> JobOutcome:
        plan = job.plan
        return JobOutcome(arrival_s=job.arrival_s, state=job.state, end_s=job.end_s, slo_s=self.settings.slo_s,
                          light_model=plan.light_model if plan else None,
                          heavy_model=plan.heavy_model if plan else None,
                          tier=job.tier.value if job.tier else None, routed_heavy=job.routed_heavy,
                          escalated=job.escalated)


class SimFleet:
    """The broker's tier queues, the agent, and the workers: delivery by prefetch credit, admission
    (shared/policies/engine.py, as services/worker.py), batches, and workers started, retired and
    reloaded as the plans say."""

    def __init__(self, sim: Simulation, worker_start_s: float, worker_start_each_s: float) -> None:
        self.sim = sim
        self.worker_start_s = worker_start_s
        self.worker_start_each_s = worker_start_each_s
        self.workers: dict[str, SimWorker] = {}
        self.queues: dict[Tier, deque[SimJob]] = {Tier.light: deque(), Tier.heavy: deque()}
        self.next_worker = {Tier.light: 0, Tier.heavy: 0}
        self.serving: dict[Tier, list[SimWorker]] = {tier: [] for tier in Tier}
        self.saturated = dict.fromkeys(Tier, False)

    def batch_depths(self) -> dict[Tier, int] | None:
        """The batch-class queues' depths the controller sees (none here: ClassFleet has them)."""
        return None

    # --- the agent ----------------------------------------------------------------------------

    def reconcile(self, before: Plan | None = None) -> None:
        """The agent: a GPU whose tier changes gets a new worker once the old one has finished (all
        the starts at once share the host); a worker whose tier's model changes loads it in place."""
        sim, plan = self.sim, self.sim.in_force
        starting = sum(1 for gpu in sim.gpus if plan.assignment.get(gpu) is not None
                       and (gpu not in self.workers or self.workers[gpu].tier != plan.assignment[gpu]))
        start_s = transition_start_s(starting, self.worker_start_s, self.worker_start_each_s)
        for gpu in sim.gpus:
            wanted = plan.assignment.get(gpu)
            worker = self.workers.get(gpu)
            if worker is not None and worker.tier == wanted:
                if before is not None and before.model_for(wanted) != plan.model_for(wanted):
                    self.reload(worker, plan.model_for(wanted))
                continue
            start = sim.now
            if worker is not None:
                start = self.retire(worker)
                del self.workers[gpu]
            if wanted is not None:
                ready_at = start + start_s + load_s(sim.profile, plan.model_for(wanted))
                self.workers[gpu] = self.new_worker(gpu, wanted, ready_at)
                sim.at(ready_at, self.worker_ready, wanted)
        self.refresh_serving()
        for tier in Tier:
            self.feed(tier)

    def new_worker(self, gpu: str, tier: Tier, ready_at: float) -> SimWorker:
        return SimWorker(gpu, tier, ready_at=ready_at)

    def reload(self, worker: SimWorker, model: str) -> None:
        """The worker loads its tier's new model once its admitted batches end; it serves nothing meanwhile."""
        seconds = load_s(self.sim.profile, model)
        if seconds > 0:
            worker.ready_at = max(self.sim.now, worker.busy_until) + seconds
            self.sim.at(worker.ready_at, self.worker_ready, worker.tier)

    def retire(self, worker: SimWorker) -> float:
        """SIGTERM: the buffer goes back to the queue's head; admitted batches finish."""
        worker.retiring = True
        queue = self.queues[worker.tier]
        while worker.buffer:
            queue.appendleft(worker.buffer.pop())
        return max(self.sim.now, worker.busy_until)

    # --- the broker ---------------------------------------------------------------------------

    def refresh_serving(self) -> None:
        self.serving = {tier: [w for w in self.workers.values()
                               if w.tier == tier and not w.retiring and w.ready_at <= self.sim.now] for tier in Tier}
        self.saturated = dict.fromkeys(Tier, False)

    def worker_ready(self, tier: Tier) -> None:
        self.refresh_serving()
        self.feed(tier)

    def enqueue(self, job: SimJob, tier: Tier) -> None:
        self.queues[tier].append(job)
        self.feed(tier)

    def feed(self, tier: Tier) -> None:
        """Deliver the tier queue's jobs to workers with prefetch credit (feed_queue)."""
        self.feed_queue(tier, self.queues[tier], self.next_worker, INTERACTIVE)

    def feed_queue(self, tier: Tier, queue: deque[SimJob], cursor: dict[Tier, int], consumer: Consumer) -> None:
        """Deliver queued jobs to workers with prefetch credit and let them admit batches; again
        while admission sheds jobs (an ack frees credit) and jobs are left. One routine for every
        broker queue a worker consumes (classes_sim: the batch queue too), so they cannot drift."""
        while queue and not (consumer.saturates and self.saturated[tier]):
            touched = self.deliver(tier, queue, cursor, consumer)
            for worker in touched:
                self.admit(worker)
            if not touched:
                return

    def deliver(self, tier: Tier, queue: deque[SimJob], cursor: dict[Tier, int],
                consumer: Consumer) -> list[SimWorker]:
        """RabbitMQ's round-robin: one job at a time to the next worker with prefetch credit, from
        the worker `cursor[tier]` names on (each queue keeps its own)."""
        workers = self.serving[tier]
        if not workers:
            return []
        limit = consumer.prefetch_batches * self.sim.in_force.batch_for(consumer.batch_tier or tier)
        count, position, misses, touched = len(workers), cursor[tier], 0, {}
        while queue and misses < count:
            worker = workers[position % count]
            position += 1
            if consumer.unacked(worker) < limit:
                consumer.buffer(worker).append(queue.popleft())
                touched[worker.gpu] = worker
                misses = 0
            else:
                misses += 1
        cursor[tier] = position % count
        if consumer.saturates:
            self.saturated[tier] = misses >= count  # until a worker acks a batch
        return list(touched.values())

    # --- the workers --------------------------------------------------------------------------

    def admit(self, worker: SimWorker) -> None:
        """The feeder: while a pipeline slot is free, take a batch from the buffer, time it and
        shed what cannot end in time (shared/policies/engine.py, as services/worker.py admits)."""
        while worker.buffer and len(worker.batches) < PIPELINE_DEPTH:
            self.admit_one(worker, worker.buffer)

    def admit_one(self, worker: SimWorker, buffer: deque, tier: Tier | None = None) -> list[SimJob] | None:
        """One batch from the head of `buffer`, at the plan's size: timed, its jobs that cannot end
        in time handed to too_late, the rest queued on the worker's pipeline (ClassFleet calls it
        with the buffer of the class next_class picks); the batch queued, if any. `tier`: whose
        model runs it and whose fallback its late jobs take, the worker's own by default; another's
        (a guest tier's, classes.guest_tier) is loaded beside the worker's own: no load either way,
        and the pipeline keeps the worker's model."""
        sim, own = self.sim, tier is None or tier is worker.tier
        tier = tier or worker.tier
        model = sim.in_force.model_for(tier)
        size = min(sim.in_force.batch_for(tier), len(buffer))
        # The model loaded once idle: the plan's (reload() has loaded it), the worker's own.
        ends_at = worker.pipeline.batch_end(sim.now, model, size, loaded=model, times=sim.times)
        jobs = [buffer.popleft() for _ in range(size)]
        batch, late = engine.split_late(jobs, ends_at, lambda job: job.deadline_s)
        for job in late:  # a batch job too late on the heavy tier moves to the light tier's batch queue
            self.too_late(job, tier)  # (services/handoff.py: reroute_to_light), as an interactive one
            if own:
                self.saturated[tier] = False  # its ack frees prefetch credit
        if not batch:
            return None
        worker.pipeline.commit(ends_at, model if own else worker.pipeline.model or sim.in_force.model_for(worker.tier))
        worker.batches.append((batch, model))
        if len(worker.batches) == 1:
            self.start_batch(worker)
        return batch

    def too_late(self, job: SimJob, tier: Tier) -> None:
        """As the worker (shared/policies/engine.py: fallback): the light image, the light tier, or shed."""
        sim = self.sim
        fallback = engine.fallback(sim.in_force, tier, job.escalated, sim.now, job.deadline_s, sim.times,
                                   job.quality)
        if fallback is Fallback.serve_light:
            job.escalated, job.tier = False, Tier.light
            sim.end(job, "done")
        elif fallback is Fallback.to_light:
            job.routed_heavy = False
            self.enqueue(job, Tier.light)
        else:
            sim.end(job, "expired")

    def start_batch(self, worker: SimWorker) -> None:
        batch, model = worker.batches[0]
        seconds = self.sim.times.seconds(model, len(batch))  # the emulated worker's sleep
        worker.busy_until = self.sim.now + seconds
        self.sim.at(worker.busy_until, self.batch_done, worker, seconds)

    def hand_on(self, worker: SimWorker, batch: list[SimJob], model: str) -> None:
        """An interactive batch ended: a heavy one's jobs are done, a light one's go to the judge."""
        sim = self.sim
        if worker.tier is Tier.heavy:
            for job in batch:
                sim.end(job, "done", sim.now + sim.finish_s)
        else:
            sim.at(sim.now + sim.judge_s, sim.judge, batch, model)

    def batch_done(self, worker: SimWorker, seconds: float) -> None:
        batch, model = worker.batches.popleft()
        worker.pipeline.timer.observe(model, len(batch), seconds)
        for job in batch:
            job.tier = worker.tier
        self.hand_on(worker, batch, model)
        if worker.batches:
            self.start_batch(worker)
        if not worker.retiring:
            self.admit(worker)
            self.saturated[worker.tier] = False
            self.feed(worker.tier)


def draw_qualities(jobs: list[SimJob], mix: QualityMix, seed: int) -> None:
    """Each job's quality: low with the mix's low share, high with its high share, else auto."""
    if mix.low <= 0 and mix.high <= 0:
        return
    draws = np.random.default_rng(seed).random(len(jobs))
    for job, draw in zip(jobs, draws, strict=True):
        job.quality = "low" if draw < mix.low else "high" if draw < mix.low + mix.high else "auto"


def simulate(settings: Settings, trace: Trace, **options) -> tuple[list[JobOutcome], list[PlanEvent], float]:
    """Run the simulation: the job outcomes, the plans, and the wall time it took."""
    started = time.perf_counter()
    simulation = Simulation(settings, trace, **options)
    outcomes = simulation.run()
    return outcomes, simulation.plans, time.perf_counter() - started
