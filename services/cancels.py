"""A worker's jobs while they run, as their clients see them: cancels that stop them, and the
progress that says where they are (docs/jobs.md, Cancel and progress).

Cancel. The api turns the record `cancelled` (the store's script decides, atomically) and publishes
the id on `<ns>:cancels`; every worker listens. A worker that holds the job:

- not yet in a batch: drops it before the batch starts (acked, `waiting`);
- in a running batch: flags it in the model's control block (shared/backends/control.py). A batch
  whose jobs are all cancelled ends at its next denoising step (`interrupted`), and the model takes
  the next batch at once. A batch with other jobs runs on, and the cancelled job's image is
  discarded (`discarded`): dropping its rows from the latents mid-loop would need every pipeline's
  inputs cut alike (prompt embeddings, the guidance's doubled batch, the generators, SDXL's time
  ids), in every backend; a batch's rows cost little beside its fixed cost, so it is not done.

A worker that misses the message (its store connection was down) learns the cancel at its batch's
next progress write, whose answer names the batch's records found `cancelled`: at most PROGRESS_S
later, without a round trip of its own. Whatever slips through both loses nothing: the store refuses
its result (the record is terminal), and the delivery is acked (`refused`, in services/handoff.py).

Progress. Every PROGRESS_S the worker reads the step its running batches have reached (from the
control block: no message from the model) and writes those that moved, all batches in one round
trip (shared/store/progress.py): at most 1/PROGRESS_S writes a second a batch, however many steps."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator, Mapping

from shared import metrics
from shared.backends.base import Generator
from shared.backends.control import GenerationCancelled
from shared.errors import Disposition
from shared.intake import Claimed
from shared.logging import get_logger
from shared.schemas import Tier
from shared.service import Service

log = get_logger(__name__)

PROGRESS_S = 0.5  # a running batch's step is written at most this often (2 writes a second a batch)


class RunningJobs:
    """The cancels and the progress of one worker's claimed jobs (see the module's docstring)."""

    def __init__(self, service: Service, tier: Tier, claimed: Mapping[str, Claimed],
                 current: Callable[[], Generator | None]) -> None:
        self.service, self.tier, self.claimed, self.current = service, tier, claimed, current
        self.batches: dict[int, tuple[list[str], Generator]] = {}  # running: key -> job ids, generator
        self.written: dict[int, int] = {}  # key -> the step last written
        self.cancelled: dict[str, float] = {}  # claimed job -> when its cancel came (monotonic); at most the claims
        self.next_key = 0

    @contextlib.contextmanager
    def running(self, job_ids: list[str], generator: Generator) -> Iterator[None]:
        """While a batch is with the model: its progress is reported, its cancels flagged."""
        self.next_key += 1
        key = self.next_key
        self.batches[key] = (job_ids, generator)
        try:
            yield
        finally:
            self.batches.pop(key, None)
            self.written.pop(key, None)

    def on_cancel(self, job_id: str) -> None:
        """A job was cancelled: flag it if this worker holds it (others' ids are ignored)."""
        if job_id not in self.claimed or job_id in self.cancelled:
            return
        # Bounded by the claims: a job settled without passing drop_cancelled (its result was
        # being stored: the store refused it) leaves its entry, dropped here.
        for gone in [held for held in self.cancelled if held not in self.claimed]:
            del self.cancelled[gone]
        self.cancelled[job_id] = time.monotonic()
        generators = {id(g): g for _, g in self.batches.values()}
        current = self.current()  # the model's: a job not yet in a batch is flagged when its batch begins
        if current is not None:
            generators[id(current)] = current
        for generator in generators.values():
            generator.cancel([job_id])
        log.info("job_cancel_flagged", job_id=job_id)

    async def watch(self) -> None:
        """Follow the cancel channel until the worker stops (it resubscribes after an outage)."""
        while not self.service.stopping.is_set():
            try:
                async for job_id in self.service.store.cancels(self.service.stopping):
                    self.on_cancel(job_id)
            except Exception as error:  # a store error must not end the worker: cancels then wait for the store
                log.warning("cancel_watch_failed", error=f"{type(error).__name__}: {error}")
                await asyncio.sleep(1.0)

    async def report(self) -> None:
        """Write the running batches' steps that moved, every PROGRESS_S, in one round trip."""
        while not self.service.stopping.is_set():
            await asyncio.sleep(PROGRESS_S)
            updates = []
            for key, (job_ids, generator) in list(self.batches.items()):
                progress = generator.progress(job_ids[0]) if job_ids else None
                if progress is None or progress[0] == self.written.get(key):
                    continue
                self.written[key] = progress[0]
                live = [job_id for job_id in job_ids if job_id not in self.cancelled]
                updates.append((live, *progress, generator.model.name))
            try:
                _, cancelled = await self.service.store.write_progress(updates)
            except Exception as error:  # progress is best effort: the next tick writes the newer step
                log.warning("progress_not_written", error=f"{type(error).__name__}: {error}")
                continue
            for job_id in cancelled:  # a cancel whose message this worker missed
                self.on_cancel(job_id)

    async def drop_cancelled(self, items: list[Claimed], settle, results: list | None = None
                             ) -> tuple[list[Claimed], list]:
        """The items (and their results) whose jobs are not cancelled; the others are acked
        through `settle` and counted: `waiting` before the batch ran (no results), `interrupted`
        when the model stopped for them, `discarded` when their batch ran on."""
        kept, kept_results = [], []
        dropped: dict[str, int] = {}
        for index, item in enumerate(items):
            result = results[index] if results is not None else None
            if item.job_id not in self.cancelled and not isinstance(result, GenerationCancelled):
                kept.append(item)
                kept_results.append(result)
                continue
            how = "waiting" if results is None else "interrupted" if isinstance(result, GenerationCancelled) \
                else "discarded"
            dropped[how] = dropped.get(how, 0) + 1
            since = self.cancelled.pop(item.job_id, None)
            log.info("cancelled_job_dropped", job_id=item.job_id, how=how, at=time.time(),
                     after_cancel_s=round(time.monotonic() - since, 4) if since is not None else None)
            await settle(item, Disposition.ack)
        for how, count in dropped.items():
            metrics.observe_cancelled_delivery(self.tier.value, how, count)
        return kept, kept_results
