"""A batch's control while the model runs it: cancel flags the worker sets, and the step the model
has reached, which it reads. One small block of shared memory, so that the model can look at it at
every denoising step for the price of a few bytes read (no system call, no lock, no pipe: the model
process reads no request while it generates, model_process.py says why).

The block has SLOTS slots; a batch takes slot `seq % SLOTS` for its sequence number `seq` (one per
batch sent, by the BatchBook of the worker's side). A slot holds:

    seq     u64  the batch it belongs to (the model trusts the rest only when it matches)
    step    u32  the denoising steps finished (written by the model)
    steps   u32  of how many
    rows    u32  the batch's size
    pause   u32  1 = pause the batch at its next step (written by the worker; docs/classes.md)
    flags   MAX_ROWS bytes, one per row: 1 = that job is cancelled (written by the worker)

Bounds: a batch has at most MAX_ROWS rows (a plan's batch is at most 64); at most SLOTS batches are
in flight at once (the worker sends two: ProcessHost.concurrent_batches). The writes are plain
stores into shared memory: a reader may see a step one behind, or a flag one step late, never a
wrong batch's (the seq is written last when a slot opens, and checked before each read)."""

from __future__ import annotations

import mmap
import os
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

SLOTS = 8
MAX_ROWS = 64
HEAD = struct.Struct("<QIII")  # seq, step, steps, rows
PAUSE = struct.Struct("<I")  # after the head, apart: the model's step reports do not write over it
HEAD_BYTES = HEAD.size + PAUSE.size
SLOT_BYTES = HEAD_BYTES + MAX_ROWS
BLOCK_BYTES = SLOTS * SLOT_BYTES
# Cancels of jobs not (yet) in a batch, remembered until their batch begins: at most this many ids
# (a cancel arrives while the job waits in the worker, between its claim and its batch).
REMEMBERED_CANCELS = 1024


class GenerationCancelled(Exception):
    """Every job of the batch was cancelled: the model stopped at its next step."""


class GenerationPaused(Exception):
    """The worker paused the batch for interactive work: the model stopped after `step` of its steps,
    and the batch resumes from there (Generator.generate_timed's first_step)."""

    def __init__(self, step: int, busy_s: float | None = None) -> None:
        super().__init__(f"paused after step {step}")
        self.step = step
        self.busy_s = busy_s  # the model's time on the batch until it paused (Generator.generate_timed sets it)


class ControlBlock:
    """The slots, over shared memory (a memfd the model process maps too) or a plain buffer (a
    model in the worker's own process)."""

    def __init__(self, buffer: mmap.mmap | bytearray, fd: int | None = None) -> None:
        self.buffer, self.fd = buffer, fd
        self.view = memoryview(buffer)

    @classmethod
    def local(cls) -> ControlBlock:
        return cls(bytearray(BLOCK_BYTES))

    @classmethod
    def shared(cls) -> ControlBlock:
        """A block another process can map (its fd passed to it, inheritable)."""
        fd = os.memfd_create("hadis-control", 0)
        os.ftruncate(fd, BLOCK_BYTES)
        os.set_inheritable(fd, True)
        return cls(mmap.mmap(fd, BLOCK_BYTES), fd)

    @classmethod
    def attach(cls, fd: int) -> ControlBlock:
        """The model process's view of its worker's block."""
        return cls(mmap.mmap(fd, BLOCK_BYTES), fd)

    def _offset(self, seq: int) -> int:
        return (seq % SLOTS) * SLOT_BYTES

    def head(self, seq: int) -> tuple[int, int, int, int]:
        return HEAD.unpack_from(self.view, self._offset(seq))

    def open(self, seq: int, rows: int, cancelled: Iterable[int] = ()) -> None:
        """Take the slot for batch `seq` (the worker's side), with the rows already cancelled."""
        if rows > MAX_ROWS:
            raise ValueError(f"a batch of {rows} rows: at most {MAX_ROWS}")
        offset = self._offset(seq)
        flags = bytearray(MAX_ROWS)
        for row in cancelled:
            flags[row] = 1
        self.view[offset + HEAD_BYTES:offset + SLOT_BYTES] = flags
        PAUSE.pack_into(self.view, offset + HEAD.size, 0)
        HEAD.pack_into(self.view, offset, seq, 0, 0, rows)

    def cancel(self, seq: int, row: int) -> None:
        if self.head(seq)[0] == seq:
            self.view[self._offset(seq) + HEAD_BYTES + row] = 1

    def pause(self, seq: int) -> None:
        if self.head(seq)[0] == seq:
            PAUSE.pack_into(self.view, self._offset(seq) + HEAD.size, 1)

    def paused(self, seq: int) -> bool:
        return self.head(seq)[0] == seq and PAUSE.unpack_from(self.view, self._offset(seq) + HEAD.size)[0] == 1

    def cancelled(self, seq: int, start: int = 0, stop: int | None = None) -> bool:
        """Whether every row of batch `seq` in [start, stop) is cancelled."""
        found, _, _, rows = self.head(seq)
        if found != seq:
            return False
        base = self._offset(seq) + HEAD_BYTES
        stop = rows if stop is None else min(stop, rows)
        return stop > start and all(self.view[base + start:base + stop])

    def report(self, seq: int, step: int, steps: int) -> None:
        """The model's side: batch `seq` has finished `step` of `steps`."""
        found, _, _, rows = self.head(seq)
        if found == seq:
            HEAD.pack_into(self.view, self._offset(seq), seq, step, steps, rows)

    def progress(self, seq: int) -> tuple[int, int] | None:
        found, step, steps, _ = self.head(seq)
        return (step, steps) if found == seq and steps else None

    def control(self, seq: int, first_step: int = 0) -> StepControl:
        return StepControl(self, seq, first_step=first_step)


class StepControl:
    """What a generator calls at each denoising step of one batch (or of a part of it: a backend
    that runs a batch in chunks): it reports the step, and raises GenerationCancelled when every
    job of its part is cancelled, which ends the pipeline's call there, or GenerationPaused when the
    worker paused the batch (a generator that can pause: Generator.can_pause). `first_step`: the
    steps a paused batch had run before it resumed (0: from the start)."""

    def __init__(self, block: ControlBlock | None, seq: int, start: int = 0, stop: int | None = None,
                 first_step: int = 0) -> None:
        self.block, self.seq, self.start, self.stop = block, seq, start, stop
        self.first_step = first_step

    def part(self, start: int, stop: int) -> StepControl:
        return StepControl(self.block, self.seq, self.start + start, self.start + stop, self.first_step)

    def step(self, step: int, steps: int) -> None:
        if self.block is None:
            return
        self.block.report(self.seq, step, steps)
        if self.block.cancelled(self.seq, self.start, self.stop):
            raise GenerationCancelled(f"every job of batch {self.seq} was cancelled (at step {step} of {steps})")
        if step < steps and self.block.paused(self.seq):
            raise GenerationPaused(step)

    def preview(self, step: int, steps: int, render: Callable[[list[int]], list[Any]]) -> None:
        """After step `step`: previews of the rows that asked for one here (`render` decodes the
        rows it is given, in the part's numbering). None by default: a batch without previews
        decodes nothing (shared/backends/previews.py's PreviewControl takes them)."""

    def on_step_end(self, steps: int, decode: Callable[[Any, list[int]], list[Any]] | None = None):
        """diffusers' `callback_on_step_end`: called after each denoising step with its index;
        `decode(latents, rows)` makes the previews due then (none without it)."""
        def callback(pipeline, index: int, timestep, kwargs: dict) -> dict:
            self.step(index + 1, steps)
            if decode is not None:
                self.preview(index + 1, steps, lambda rows: decode(kwargs["latents"], rows))
            return {}
        return callback


NO_CONTROL = StepControl(None, 0)  # a batch nobody may cancel or watch (tests, warm-ups, the profiler)


class BatchBook:
    """The worker's side: which slot each job in flight is in, so a cancel finds its flag, and a
    progress read its batch. Thread-safe (batches begin on the model's executor threads, cancels
    come from the event loop)."""

    def __init__(self, block: ControlBlock) -> None:
        self.block = block
        self.lock = threading.Lock()
        self.seq = 0
        self.rows: dict[str, tuple[int, int]] = {}  # job id -> (seq, row), while its batch runs
        self.early: OrderedDict[str, None] = OrderedDict()  # cancelled before their batch began
        self.early_pause: OrderedDict[str, None] = OrderedDict()  # a batch paused before it began (its first job)

    def begin(self, job_ids: list[str]) -> int:
        """A slot for a new batch, with the jobs cancelled already flagged."""
        with self.lock:
            self.seq += 1
            cancelled = [row for row, job_id in enumerate(job_ids) if job_id in self.early]
            for row in cancelled:
                del self.early[job_ids[row]]
            self.block.open(self.seq, len(job_ids), cancelled)
            if job_ids and job_ids[0] in self.early_pause:
                del self.early_pause[job_ids[0]]
                self.block.pause(self.seq)
            for row, job_id in enumerate(job_ids):
                self.rows[job_id] = (self.seq, row)
            return self.seq

    def end(self, job_ids: list[str]) -> None:
        with self.lock:
            for job_id in job_ids:
                self.rows.pop(job_id, None)

    def cancel(self, job_ids: Iterable[str]) -> None:
        """Flag these jobs; one whose batch has not begun is flagged when it does."""
        with self.lock:
            for job_id in job_ids:
                where = self.rows.get(job_id)
                if where is not None:
                    self.block.cancel(*where)
                    continue
                self.early[job_id] = None
                while len(self.early) > REMEMBERED_CANCELS:
                    self.early.popitem(last=False)

    def pause(self, job_ids: list[str]) -> bool:
        """Pause the running batch that holds these jobs at its next step; one that has not begun
        is paused as it begins (the worker paused it just as the model's thread took it up; a batch
        that ended meanwhile is forgotten with its jobs). False when no job was given."""
        with self.lock:
            if not job_ids:
                return False
            where = self.rows.get(job_ids[0])
            if where is None:
                self.early_pause[job_ids[0]] = None
                while len(self.early_pause) > REMEMBERED_CANCELS:
                    self.early_pause.popitem(last=False)
            else:
                self.block.pause(where[0])
            return True

    def forget(self, job_ids: Iterable[str]) -> None:
        """Drop the flags remembered for jobs whose batch will not begin (a batch-class batch the
        worker stopped before it began: its jobs run again later, and must not stop then)."""
        with self.lock:
            for job_id in job_ids:
                self.early.pop(job_id, None)
                self.early_pause.pop(job_id, None)

    def progress(self, job_id: str) -> tuple[int, int] | None:
        """(step, steps) of the batch running this job, once the model has reported a step."""
        with self.lock:
            where = self.rows.get(job_id)
        return self.block.progress(where[0]) if where is not None else None
