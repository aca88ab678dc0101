"""The simulator's tier workers with service classes (docs/classes.md), the worker's side of
classes_sim.ClassFleet: each batch formed from one class (`classes.next_class`), batch-class work
from where `classes.batch_source` says (a batch paused, the worker's own batch queue, the guest
tier's: `classes.guest_tier`), and a running batch-class batch paused or stopped at its next step
for interactive work (`classes.should_yield`), as services/worker.py and services/classes_intake.py
do. Every batch a GPU ran is recorded by class (Busy)."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from shared.experiments.simulator import Consumer, SimFleet, SimWorker
from shared.policies import classes, engine
from shared.policies.admission import PIPELINE_DEPTH
from shared.policies.classes import guest_tier
from shared.schemas import Tier

if TYPE_CHECKING:
    from shared.experiments.classes_sim import ClassSimulation

# How many batches' worth of batch-class deliveries a worker holds (the one running and the next):
# few, so that batch jobs are not parked in a busy worker while another idles (docs/classes.md).
BATCH_PREFETCH_BATCHES = 2


@dataclass(frozen=True)
class Busy:
    """A batch a GPU ran: its class, from `start_s` to `end_s`; `lost` when stopped (yielded)."""

    gpu: str
    priority: str
    start_s: float
    end_s: float
    lost: bool = False


@dataclass
class ClassWorker(SimWorker):
    batch_buffer: deque = field(default_factory=deque)  # batch-class deliveries, not yet admitted
    started_at: float = 0.0  # when its generating batch started
    token: int = 0  # the generating batch's: a stopped batch's end event finds another
    stop_at: float | None = None  # a stop at the next step is scheduled
    first_step: int = 0  # the step the generating batch began at (a resumed one: where it paused)
    paused: tuple[list, str, int] | None = None  # a batch-class batch paused: (jobs, model, steps run)
    resume_at_step: int = 0  # the step the next batch started begins at
    guest: deque = field(default_factory=deque)  # the guest tier's batch deliveries (classes.guest_tier)
    guest_batches: set[int] = field(default_factory=set)  # id() of the admitted or paused batches from it

    def unacked(self) -> int:
        """Interactive deliveries not acked (the interactive consumer's prefetch credit)."""
        return len(self.buffer) + sum(len(batch) for batch, _ in self.batches if not is_batch(batch))

    def held(self) -> list[list]:
        """The batch-class batches admitted or paused: the services' worker holds their deliveries
        unacked until they end."""
        admitted = [batch for batch, _ in self.batches if is_batch(batch)]
        return admitted + ([self.paused[0]] if self.paused is not None else [])

    def batch_unacked(self) -> int:
        """The batch consumer's credit in use: its buffer and its own batches held."""
        return len(self.batch_buffer) + sum(len(batch) for batch in self.held() if id(batch) not in self.guest_batches)

    def guest_unacked(self) -> int:
        """The guest consumer's credit in use: its buffer and the guest batches held."""
        return len(self.guest) + sum(len(batch) for batch in self.held() if id(batch) in self.guest_batches)


def with_classes(worker: SimWorker) -> ClassWorker:
    """The fleet's workers are ClassWorkers (new_worker)."""
    assert isinstance(worker, ClassWorker)
    return worker


# The batch queue's consumer: its own small prefetch, its deliveries apart from the interactive ones
# (so admission picks the class); a tier never marked saturated by it (the interactive queue's mark,
# SimFleet.saturated, is the interactive consumer's alone).
BATCH = Consumer(BATCH_PREFETCH_BATCHES, lambda worker: with_classes(worker).batch_unacked(),
                 lambda worker: with_classes(worker).batch_buffer)
# A light worker's consumer of the heavy tier's batch queue (classes.guest_tier): the same prefetch,
# counted in heavy batches.
GUEST = Consumer(BATCH_PREFETCH_BATCHES, lambda worker: with_classes(worker).guest_unacked(),
                 lambda worker: with_classes(worker).guest, batch_tier=Tier.heavy)


def is_batch(jobs) -> bool:
    return bool(jobs) and jobs[0].priority == "batch"


class ClassWorkerFleet(SimFleet):
    """The workers' side of the fleet with service classes (the broker's: classes_sim.ClassFleet)."""

    sim: ClassSimulation
    batch_queues: dict[Tier, deque]
    tokens: int

    def source_tier(self, worker: ClassWorker, batch: list) -> Tier:
        """The tier whose model a batch of this worker runs with, and whose batch queue it came from."""
        if id(batch) in worker.guest_batches:
            return guest_tier(worker.tier, True) or worker.tier
        return worker.tier

    def admit(self, worker: SimWorker) -> None:
        """While a pipeline slot is free: the class of the next batch (next_class), a batch-class
        batch only on an idle pipeline, and the yield check when interactive work waits behind a
        running batch-class batch."""
        assert isinstance(worker, ClassWorker)
        sim = self.sim
        while len(worker.batches) < PIPELINE_DEPTH and worker.stop_at is None:
            reserved = worker.gpu in sim.in_force.batch_first
            batch_waiting = len(worker.batch_buffer) + len(worker.guest) + (worker.paused is not None)
            priority = classes.next_class(len(worker.buffer), batch_waiting, reserved)
            if priority is None or (priority == "batch" and worker.batches):
                return
            if priority == "interactive":
                if self.yields(worker):
                    return
                self.admit_one(worker, worker.buffer)
                continue
            source = classes.batch_source(worker.paused is not None, len(worker.batch_buffer), len(worker.guest))
            if source == "paused":
                self.resume(worker)
            elif source == "guest":
                self.admit_guest(worker)
            else:
                self.admit_one(worker, worker.batch_buffer)

    def resume(self, worker: ClassWorker) -> None:
        """The batch it paused, from the step it reached (classes.resumed_s): its own model or the
        guest's, both loaded (no load)."""
        assert worker.paused is not None
        sim = self.sim
        (batch, model, step), worker.paused = worker.paused, None
        left = classes.resumed_s(sim.times.seconds(model, len(batch)), step, sim.profile.model(model).steps)
        worker.pipeline.commit(max(sim.now, worker.pipeline.busy_until) + left, worker.pipeline.model)
        worker.batches.append((batch, model))
        worker.resume_at_step = step
        self.start_batch(worker)

    def admit_guest(self, worker: ClassWorker) -> None:
        """A batch from the guest tier's batch queue, run with that tier's model beside the worker's
        own (admit_one with the guest tier: its late jobs take that tier's fallback)."""
        guest = guest_tier(worker.tier, self.sim.settings.batch_colocate) or worker.tier
        batch = self.admit_one(worker, worker.guest, guest)
        if batch is not None:
            worker.guest_batches.add(id(batch))

    def yields(self, worker: ClassWorker) -> bool:
        """Whether the running batch-class batch is to stop for the interactive jobs waiting: if so,
        the stop is scheduled at its next denoising step, and nothing is admitted before it."""
        sim = self.sim
        if not worker.batches or not is_batch(worker.batches[0][0]) or worker.gpu in sim.in_force.batch_first:
            return False
        model = sim.in_force.model_for(worker.tier)
        interactive_s = sim.times.seconds(model, min(sim.in_force.batch_for(worker.tier), len(worker.buffer)))
        deadline = min(job.deadline_s for job in worker.buffer)
        # The worker's own question (services/classes_intake.py): here the batch-class batch is the
        # only one admitted (a batch-class batch is admitted to an empty pipeline).
        ahead = [engine.InFlight("batch", worker.busy_until)]
        if not engine.batch_class_yields(sim.yield_mode, sim.now, ahead, interactive_s, deadline):
            return False
        batch, running = worker.batches[0]
        steps = max(sim.profile.model(running).steps, 1)
        step_s = sim.times.seconds(running, len(batch)) / steps
        steps_run = math.ceil((sim.now - worker.started_at) / step_s - 1e-9) if step_s > 0 else 0
        worker.stop_at = min(worker.started_at + steps_run * step_s, worker.busy_until)
        sim.at(worker.stop_at, self.stop, worker, worker.token, min(worker.first_step + steps_run, steps))
        return True

    def stop(self, worker: ClassWorker, token: int, step: int) -> None:
        """The batch-class batch stops at a step (`step` of its model's): paused, it keeps its steps
        and waits on the worker to resume (admit); stopped, its steps are lost and its jobs go back to
        the head of their batch queue. Then the worker admits again."""
        worker.stop_at = None
        if token != worker.token or not worker.batches:  # it ended at that step: admission waited for this
            if not worker.retiring:
                self.admit(worker)
            return
        batch, model = worker.batches.popleft()
        pause = self.sim.yield_mode == "pause" and not worker.retiring  # a retiring worker's jobs go back
        self.sim.busy.append(Busy(worker.gpu, "batch", worker.started_at, self.sim.now, lost=not pause))
        worker.token = self.next_token()
        worker.busy_until = worker.pipeline.busy_until = self.sim.now
        if pause:
            worker.paused = (batch, model, step)
        else:
            worker.guest_batches.discard(id(batch))
            self.batch_queues[self.source_tier(worker, batch)].extendleft(reversed(batch))
        if worker.batches:
            self.start_batch(worker)
        self.after_batch(worker)

    def next_token(self) -> int:
        self.tokens += 1
        return self.tokens

    def start_batch(self, worker: SimWorker) -> None:
        assert isinstance(worker, ClassWorker)
        batch, model = worker.batches[0]
        seconds = self.sim.times.seconds(model, len(batch))  # the emulated worker's sleep
        worker.first_step, worker.resume_at_step = worker.resume_at_step, 0
        run_s = classes.resumed_s(seconds, worker.first_step, self.sim.profile.model(model).steps)
        worker.started_at, worker.token = self.sim.now, self.next_token()
        worker.busy_until = self.sim.now + run_s
        self.sim.at(worker.busy_until, self.class_batch_done, worker, seconds, worker.token)

    def class_batch_done(self, worker: ClassWorker, seconds: float, token: int) -> None:
        if token != worker.token:  # stopped at a step before its end
            return
        sim = self.sim
        batch, model = worker.batches.popleft()
        if worker.first_step == 0:  # a resumed batch's time is not a whole batch's
            worker.pipeline.timer.observe(model, len(batch), seconds)
        sim.busy.append(Busy(worker.gpu, "batch" if is_batch(batch) else "interactive", worker.started_at, sim.now))
        tier = self.source_tier(worker, batch)
        worker.guest_batches.discard(id(batch))
        for job in batch:
            job.tier = tier
        if is_batch(batch):
            for job in batch:
                job.plan = sim.in_force  # the plan whose model served it
                sim.end(job, "done", sim.now + sim.finish_s)
        else:
            self.hand_on(worker, batch, model)
        if worker.batches:
            self.start_batch(worker)
        self.after_batch(worker)

    def after_batch(self, worker: ClassWorker) -> None:
        """The acks free credit: the broker delivers (both classes), then the worker admits."""
        if worker.retiring:
            return
        self.saturated[worker.tier] = False
        self.feed(worker.tier)
        self.admit(worker)


