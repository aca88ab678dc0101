"""The single-queue FIFO baseline of the service classes (issue 31; docs/experiments.md): what a
system without service classes does with the same batch backlog. The batch jobs are ordinary jobs
with a long deadline: the router scores and routes them like any job (the plan's threshold, the
heavy tier's room), they join the same tier queues as the interactive jobs in arrival order (no
batch queue, no priority, no yield, no placement), the judge judges and escalates them, a late one
takes the same way out (engine.fallback), and the controller counts them as demand and as queued
work like any other: the burst moves the plan.

The run is a ClassRun like classes_sim's, so that the per-class report (class_report.py) compares
like with like. A batch of jobs of both classes has its GPU-time split between the classes in
proportion to their jobs in it (Busy: the interactive share first, then the batch share).
"""

from __future__ import annotations

import time
from dataclasses import replace

from shared.experiments.classes_sim import BacklogSimulation, BatchLoad, Busy, ClassRun
from shared.experiments.report import JobOutcome
from shared.experiments.simulator import SimFleet, SimJob, SimWorker
from shared.experiments.trace import Trace
from shared.settings import Settings

FIFO = "fifo"  # the run's batch_settings.yield: no classes, so no yield either


class FifoSimulation(BacklogSimulation):
    """The simulation with a batch backlog and no service classes: the batch jobs (classes_sim's,
    marked batch for the report only) arrive through the router at `batch.at_s`, in one queue per
    tier with the interactive jobs."""

    def __init__(self, settings: Settings, trace: Trace, batch: BatchLoad, **options) -> None:
        super().__init__(settings, trace, batch, FifoFleet, **options)

    def arrive_batch(self) -> None:
        """Each batch job through the router as any job: counted in the demand, scored, routed."""
        for job in self.batch_jobs:
            self.arrive(job)

    def batch_outcome(self, job: SimJob) -> JobOutcome:
        """A batch job's outcome as an interactive one's (the pair it was routed under, routed heavy,
        escalated), with the batch objective."""
        return replace(self.outcome(job), slo_s=self.batch.slo_s, priority="batch")


class FifoFleet(SimFleet):
    """SimFleet (one FIFO queue per tier, whatever the job's class), recording each batch a GPU ran
    as Busy, split between the classes of its jobs."""

    sim: FifoSimulation

    def __init__(self, sim: FifoSimulation, worker_start_s: float, worker_start_each_s: float) -> None:
        super().__init__(sim, worker_start_s, worker_start_each_s)
        self.started_at: dict[str, float] = {}  # per GPU, when its generating batch started

    def start_batch(self, worker: SimWorker) -> None:
        self.started_at[worker.gpu] = self.sim.now
        super().start_batch(worker)

    def batch_done(self, worker: SimWorker, seconds: float) -> None:
        batch, _ = worker.batches[0]
        self.sim.busy.extend(split_busy(worker.gpu, batch, self.started_at[worker.gpu], self.sim.now))
        super().batch_done(worker, seconds)


def split_busy(gpu: str, batch: list[SimJob], start_s: float, end_s: float) -> list[Busy]:
    """A batch's GPU-time by class, in proportion to its jobs: the interactive part first."""
    batch_jobs = sum(job.priority == "batch" for job in batch)
    cut = start_s + (end_s - start_s) * (len(batch) - batch_jobs) / len(batch)
    parts = [Busy(gpu, "interactive", start_s, cut), Busy(gpu, "batch", cut, end_s)]
    return [part for part in parts if part.end_s > part.start_s]


def simulate_fifo(settings: Settings, trace: Trace, batch: BatchLoad, **options) -> ClassRun:
    """Run the FIFO baseline: a ClassRun with no placements and `fifo` as its yield."""
    started = time.perf_counter()
    return FifoSimulation(settings, trace, batch, **options).class_run(started, FIFO)
