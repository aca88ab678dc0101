"""The service classes in the simulator (docs/classes.md): a batch backlog beside the interactive
trace, served with the same rules as the services (shared/policies/classes.py).

- the router: a batch job has no prompt score, no cascade and no judge; it goes to the batch queue
  of `classes.batch_tier(plan, draw)`, its draw a hash of its id;
- the broker: a batch queue per tier beside the interactive one, with its own small prefetch
  (BATCH_PREFETCH_BATCHES);
- a worker (shared/experiments/class_workers.py): each batch of one class (`classes.next_class`:
  interactive first, batch first on a GPU the plan reserves); a batch-class batch only on an idle
  pipeline (never queued ahead of an interactive batch), from where `classes.batch_source` says (a
  batch it paused, its own tier's batch queue, then, on a light GPU with the heavy model beside its
  own, `classes.guest_tier`, the heavy tier's); a running batch-class batch stopped at its next denoising step when
  `classes.should_yield` says so ("pause": it resumes from that step once no interactive job waits;
  "step": its steps are lost, its jobs go back to the head of their batch queue; "finish": it runs
  on); a batch job too late on the heavy tier goes to the light tier's batch queue when a light
  batch can still end in time (engine.fallback), else expires;
- the controller: the interactive plan exactly as without batch work (interactive demand and
  queues only); each planning round, the batch placement (`classes.place_batch`) from the
  interactive demand and the open batch jobs by deadline.

It records every batch a GPU ran, by class (Busy): the GPU-seconds each class used.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass

from shared.experiments.class_workers import (
    BATCH,
    GUEST,
    Busy,
    ClassWorker,
    ClassWorkerFleet,
)
from shared.experiments.report import JobOutcome, PlanEvent
from shared.experiments.simulator import SimFleet, SimJob, Simulation, SimWorker
from shared.experiments.trace import Trace
from shared.policies import class_engine, classes
from shared.policies.classes import Backlog, BatchPlacement, Move, YieldMode, guest_tier
from shared.schemas import Tier
from shared.settings import Settings


@dataclass(frozen=True)
class BatchLoad:
    """A batch backlog: `jobs` jobs submitted at `at_s` (trace time), each due `slo_s` later."""

    jobs: int
    slo_s: float
    at_s: float = 0.0

    def job_ids(self) -> list[str]:
        return [f"batch-{i}" for i in range(self.jobs)]


@dataclass(frozen=True)
class PlacementEvent:
    t_s: float
    batch_heavy: float
    reserved: int
    backlog: int
    reason: str


class BacklogSimulation(Simulation, ABC):
    """The simulation with a batch backlog beside the trace, whatever serves it (ClassSimulation:
    the service classes; fifo_sim.FifoSimulation: one queue per tier): the batch jobs, their
    arrival, how long the run waits for them and the ClassRun it gives, written once so that the
    two runs compare like with like."""

    def __init__(self, settings: Settings, trace: Trace, batch: BatchLoad, fleet_type: type[SimFleet],
                 **options) -> None:
        super().__init__(settings, trace, **options)
        self.batch = batch
        self.fleet = fleet_type(self, self.fleet.worker_start_s, self.fleet.worker_start_each_s)
        first = len(self.jobs)
        # The same jobs in both runs: prompt i, due at_s + slo_s.
        self.batch_jobs = [SimJob(first + i, batch.at_s, batch.at_s + batch.slo_s, i, priority="batch")
                           for i in range(batch.jobs)]
        self.open_jobs += batch.jobs
        self.placements: list[PlacementEvent] = []  # the controller's batch placements (none in FIFO)
        self.busy: list[Busy] = []

    def run(self) -> list[JobOutcome]:
        if self.batch_jobs:
            self.at(self.batch.at_s, self.arrive_batch)
        return super().run()

    def end_by(self) -> float:
        """Not before the batch jobs' deadline (and the same minute's grace as the trace's)."""
        return max(super().end_by(), self.batch.at_s + self.batch.slo_s + 60.0)

    @abstractmethod
    def arrive_batch(self) -> None:
        """The batch jobs submitted at `batch.at_s`: each run routes them its own way."""

    @abstractmethod
    def batch_outcome(self, job: SimJob) -> JobOutcome:
        """A batch job's outcome, as each run reports it."""

    def class_run(self, started: float, yield_mode: str) -> ClassRun:
        """Run it: the outcomes of both classes and what the per-class report reads (class_report.py);
        its wall time from `started`."""
        interactive = self.run()
        return ClassRun(interactive, [self.batch_outcome(job) for job in self.batch_jobs], self.plans, self.busy,
                        self.placements, len(self.gpus), time.perf_counter() - started, self.batch.slo_s, yield_mode)


class ClassSimulation(BacklogSimulation):
    """The simulation with a batch backlog: the router, the controller's placement and the
    outcomes of the batch class; the fleet is ClassFleet."""

    def __init__(self, settings: Settings, trace: Trace, batch: BatchLoad, *, yield_mode: YieldMode | None = None,
                 **options) -> None:
        super().__init__(settings, trace, batch, ClassFleet, **options)
        self.yield_mode: YieldMode = yield_mode or settings.batch_yield
        self.placement = BatchPlacement(1.0, (), "no batch backlog")
        self.moved = 0  # queued batch jobs moved between the tiers' batch queues (classes.rebalance)

    def arrive_batch(self) -> None:
        """The router: each batch job to its tier's batch queue (class_engine.batch_route: no
        score, no cascade); no interactive demand counted."""
        plan = self.in_force
        for job, job_id in zip(self.batch_jobs, self.batch.job_ids(), strict=True):
            job.plan = plan
            self.fleet.enqueue(job, class_engine.batch_route(job_id, job.quality, plan))

    def control(self) -> None:
        """The controller's round for both classes (class_engine.control_step): the interactive plan
        as without batch work, the batch placement riding on it."""
        step = class_engine.control_step(self.schedule, self.observe(), self.plan, self.gpus, self.backlog(),
                                         self.times, self.settings.batch_weight, self.settings.batch_colocate)
        self.placement = step.placement
        if step.fields is not None:
            self.publish(step.fields)
        if step.move is not None:
            assert isinstance(self.fleet, ClassFleet)
            self.moved += self.fleet.move_queued(step.move)

    def publish(self, fields: dict) -> None:
        """A new plan version; in the plan log only when its interactive fields change (not a
        placement alone: Simulation.publish), the placement in its own log."""
        super().publish(fields)
        plan = self.in_force
        self.placements.append(PlacementEvent(self.now, plan.batch_heavy, len(plan.batch_first),
                                              self.backlog().total, self.placement.reason))

    def backlog(self) -> Backlog:
        """The batch jobs submitted and not ended, by deadline (the store's sorted set)."""
        return classes.backlog_of((job.deadline_s for job in self.batch_jobs
                                   if job.state == "lost" and job.arrival_s <= self.now), self.now)

    def batch_outcome(self, job: SimJob) -> JobOutcome:
        """A batch job's outcome: the model it was served by as its own pair (no cascade)."""
        model = job.plan.model_for(job.tier) if job.plan is not None and job.tier is not None else None
        return JobOutcome(arrival_s=job.arrival_s, state=job.state, end_s=job.end_s, slo_s=self.batch.slo_s,
                          light_model=model, heavy_model=model, tier=job.tier.value if job.tier else None,
                          priority="batch")


class ClassFleet(ClassWorkerFleet):
    """The fleet with a batch queue per tier (the broker's side) and workers that form each batch from one
    class (ClassWorkerFleet)."""

    sim: ClassSimulation

    def __init__(self, sim: ClassSimulation, worker_start_s: float, worker_start_each_s: float) -> None:
        super().__init__(sim, worker_start_s, worker_start_each_s)
        self.batch_queues: dict[Tier, deque[SimJob]] = {Tier.light: deque(), Tier.heavy: deque()}
        self.next_batch_worker = {Tier.light: 0, Tier.heavy: 0}
        self.next_guest_worker = {Tier.light: 0, Tier.heavy: 0}
        self.tokens = 0

    def new_worker(self, gpu: str, tier: Tier, ready_at: float) -> SimWorker:
        return ClassWorker(gpu, tier, ready_at=ready_at)

    def batch_depths(self) -> dict[Tier, int]:
        """As the broker's ready counts of <ns>.tier.<tier>.batch (the workers' buffers not in them)."""
        return {tier: len(queue) for tier, queue in self.batch_queues.items()}

    def retire(self, worker: SimWorker) -> float:
        assert isinstance(worker, ClassWorker)
        queue = self.batch_queues[worker.tier]
        while worker.batch_buffer:
            queue.appendleft(worker.batch_buffer.pop())
        guest = guest_tier(worker.tier, self.sim.settings.batch_colocate)
        while worker.guest and guest is not None:
            self.batch_queues[guest].appendleft(worker.guest.pop())
        if worker.paused is not None:  # its model process goes with it: the jobs run again from step 0
            batch = worker.paused[0]
            self.batch_queues[self.source_tier(worker, batch)].extendleft(reversed(batch))
            worker.paused = None
        return super().retire(worker)

    def enqueue(self, job: SimJob, tier: Tier) -> None:
        if job.priority == "batch":
            self.batch_queues[tier].append(job)
        else:
            self.queues[tier].append(job)
        self.feed(tier)

    def move_queued(self, move: Move) -> int:
        """As the controller's mover (services/batch_mover.py): up to `move.count` jobs from the head of
        the source batch queue to the tail of the target's, a job that may not move (classes.movable)
        put back at the source's tail. How many moved."""
        source, target = self.batch_queues[move.source], self.batch_queues[move.target]
        moved = 0
        for _ in range(min(move.count, len(source))):
            job = source.popleft()
            if classes.movable(job.quality, move.source):
                target.append(job)
                moved += 1
            else:
                source.append(job)
        if moved:
            self.feed(move.target)
        return moved

    def feed(self, tier: Tier) -> None:
        """The tier queue's deliveries, then the batch queue's (its own prefetch and round-robin)."""
        super().feed(tier)
        self.feed_queue(tier, self.batch_queues[tier], self.next_batch_worker, BATCH)
        # The broker delivers a tier's batch queue to the other tier's guest consumers too (after
        # its own workers here): when jobs come to it, and when a guest's credit frees.
        for host in Tier:
            guest = guest_tier(host, self.sim.settings.batch_colocate)
            if guest is not None and tier in (host, guest):
                self.feed_queue(host, self.batch_queues[guest], self.next_guest_worker, GUEST)


@dataclass
class ClassRun:
    """What a simulation with a batch backlog produced."""

    interactive: list[JobOutcome]
    batch: list[JobOutcome]
    plans: list[PlanEvent]
    busy: list[Busy]
    placements: list[PlacementEvent]
    gpus: int
    wall_s: float
    batch_slo_s: float
    yield_mode: str


def simulate_classes(settings: Settings, trace: Trace, batch: BatchLoad, *, yield_mode: YieldMode | None = None,
                     **options) -> ClassRun:
    """Run the simulation with a batch backlog."""
    started = time.perf_counter()
    simulation = ClassSimulation(settings, trace, batch, yield_mode=yield_mode, **options)
    return simulation.class_run(started, simulation.yield_mode)
