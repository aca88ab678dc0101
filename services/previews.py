"""A worker's previews on their way to the store (docs/jobs.md, Previews).

The model makes a job's previews at its chosen steps (shared/backends/previews.py) and hands each
to the worker's sink on the model's thread (the model process's reader, or the executor's thread
of a model in this process). The sink moves it onto the event loop; the writer then stores every
preview pending in one round trip (shared/store/previews.py), and the previews that arrive during
a write go together in the next: as many writes as the store's round trips allow, never one a
preview under load. A batch's previews are written before its images are stored (`drain`), so a
stream never sees a job end before the previews it was promised.

Bounds: at most MAX_PENDING previews wait (the oldest beyond are dropped and counted in the log:
previews are best effort, a stream then gets fewer); each is at most 256 px a side."""

from __future__ import annotations

import asyncio

from shared.backends.base import GenerationInput
from shared.backends.previews import Preview, PreviewSink
from shared.logging import get_logger
from shared.service import Service
from shared.store.previews import PreviewWrite

log = get_logger(__name__)

MAX_PENDING = 512  # previews waiting for the store: 3 for each of two batches of 64, with room


class PreviewWriter:
    """Takes previews from the model's threads and writes them to the store, coalesced."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.pending: list[PreviewWrite] = []
        self.task: asyncio.Task | None = None
        self.dropped = 0

    def sink_for(self, model: str, inputs: list[GenerationInput]) -> PreviewSink | None:
        """A callback for the model's threads, which hands each preview to the event loop; None
        when no job of the batch wants any (the model then makes none)."""
        if not any(item.previews for item in inputs):
            return None
        loop = asyncio.get_running_loop()

        def take(preview: Preview) -> None:
            write = (preview.job_id, preview.index, preview.step, preview.steps, model, preview.data)
            loop.call_soon_threadsafe(self.add, write)
        return take

    def add(self, write: PreviewWrite) -> None:
        self.pending.append(write)
        if len(self.pending) > MAX_PENDING:
            del self.pending[0]
            self.dropped += 1
            log.warning("preview_dropped", dropped=self.dropped, pending=MAX_PENDING)
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self.flush(), name="previews")

    async def flush(self) -> None:
        while self.pending:
            writes, self.pending = self.pending, []
            try:
                await self.service.store.write_previews(writes)
            except Exception as error:  # best effort: the job is served whatever became of its previews
                log.warning("previews_not_written", count=len(writes), error=f"{type(error).__name__}: {error}")

    async def drain(self) -> None:
        """Return once every preview handed over so far is written (or given up)."""
        await asyncio.sleep(0)  # previews the model's thread handed over just before its reply
        while self.task is not None and not self.task.done():
            await asyncio.shield(self.task)
