"""One reader of the store's event stream per process, handing each job's state changes to whoever
waits on that job.

The HTTP api waits on many jobs at once (an images request until its job ends, an SSE stream for
every watcher). A Redis subscription or a blocking read per waiter would cost a connection each;
here one task follows `<ns>:events` (XREAD, blocking up to a second) and puts each event in the
queues of that job's subscribers. An event is a wake-up: the subscriber reads the record (the
truth) again. Subscribe before the first read, and a change between the two is never missed.

Bounds: a subscriber's queue holds `QUEUE_BOUND` events (a job has fewer than ten); the reader
retries a store outage every `RETRY_S` and resumes after the last event it read, so changes made
while Redis was away are still delivered when the stream kept them. While nobody waits it reads
nothing (the stream carries every job's changes: reading it idle cost the api a tenth of its CPU at
full load); the first subscriber makes it resume a little before that moment.

Progress (`<ns>:progress`, shared/store/progress.py) is read in the same XREAD: a running batch's
step, handed to its jobs' subscribers as an event with `step` set, which carries its own news (the
SSE stream sends it as it comes, without reading the record); a preview's entry (its `preview` index
set) is handed on the same way."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import orjson

from shared.errors import HadisError
from shared.logging import get_logger
from shared.schemas import JobState
from shared.store import Store

log = get_logger(__name__)

QUEUE_BOUND = 64
BLOCK_MS = 1000
RETRY_S = 1.0
# With nobody subscribed the hub reads nothing; the first subscriber makes it resume this far back
# in the stream (its ids are Redis's milliseconds): a margin for the clocks of this host and Redis.
RESUME_MARGIN_MS = 2000


@dataclass(frozen=True)
class JobEvent:
    """One state change of a job, as the stream holds it."""

    job_id: str
    state: JobState
    at: float
    detail: str
    tier: str
    step: int | None = None  # a progress event: the batch has finished `step` of `steps`, with `model`
    steps: int | None = None
    model: str = ""
    preview: int | None = None  # a preview event: the job's preview of this index is stored (shared/store/previews.py)

    @classmethod
    def from_stream(cls, fields: dict[str, str]) -> JobEvent:
        transition = orjson.loads(fields.get("transition", "{}"))
        return cls(fields["job_id"], JobState(fields["state"]), float(transition.get("at", 0.0)),
                   str(transition.get("detail", "")), fields.get("tier", ""))


class EventHub:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._subscribers: dict[str, set[asyncio.Queue[JobEvent]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._wanted = asyncio.Event()  # set while anybody is subscribed
        self._resume_ms = 0
        self._stopped = False

    async def start(self) -> None:
        """Follow the stream from its newest event on."""
        self._task = asyncio.create_task(self._follow(await self.store.last_event_id(), f"{int(time.time() * 1000)}-0"),
                                         name="event-hub")

    async def stop(self) -> None:
        """Stop the reader. A cancellation that lands inside a blocking read can be absorbed by the
        Redis client (it tears the connection down and raises its own error, which is retried), so
        the loop also checks a flag, and the wait is bounded."""
        if self._task is None:
            return
        self._stopped = True
        self._wanted.set()
        self._task.cancel()
        await asyncio.wait({self._task}, timeout=BLOCK_MS / 1000 + RETRY_S + 1)
        if not self._task.done():
            log.warning("event_hub_did_not_stop")

    @property
    def watched(self) -> int:
        return len(self._subscribers)

    @contextlib.contextmanager
    def subscribe(self, job_ids: Iterable[str]) -> Iterator[asyncio.Queue[JobEvent]]:
        """One queue that receives the events of all these jobs while the block runs."""
        job_ids = list(job_ids)
        queue: asyncio.Queue[JobEvent] = asyncio.Queue(QUEUE_BOUND * max(len(job_ids), 1))
        if not self._wanted.is_set():
            self._resume_ms = int(time.time() * 1000) - RESUME_MARGIN_MS
            self._wanted.set()
        for job_id in job_ids:
            self._subscribers.setdefault(job_id, set()).add(queue)
        try:
            yield queue
        finally:
            for job_id in job_ids:
                queues = self._subscribers.get(job_id)
                if queues is not None:
                    queues.discard(queue)
                    if not queues:
                        del self._subscribers[job_id]
            if not self._subscribers:
                self._wanted.clear()

    async def _follow(self, last_id: str, progress_id: str) -> None:
        events_key, progress_key = self.store.events_key, self.store.progress_key
        while not self._stopped:
            if not self._wanted.is_set():
                await self._wanted.wait()
                last_id = max(last_id, f"{self._resume_ms}-0", key=_stream_order)
                progress_id = max(progress_id, f"{self._resume_ms}-0", key=_stream_order)
            try:
                entries = await self.store.read_streams({events_key: last_id, progress_key: progress_id},
                                                        count=1000, block_ms=BLOCK_MS)
            except (HadisError, OSError) as error:
                log.warning("event_stream_unreadable", error=str(error))
                await asyncio.sleep(RETRY_S)
                continue
            for stream, entry_id, fields in entries:
                if stream == progress_key:
                    progress_id = entry_id
                    self._dispatch_progress(entry_id, fields)
                else:
                    last_id = entry_id
                    self._dispatch(fields)

    def _dispatch_progress(self, entry_id: str, fields: dict[str, str]) -> None:
        """One progress entry (a batch's step) to the subscribers of each of its jobs; its time is
        the entry's (Redis's clock, as a transition's)."""
        try:
            step, steps = int(fields["step"]), int(fields["steps"])
        except (KeyError, ValueError) as error:
            log.warning("progress_unreadable", error=str(error))
            return
        preview = int(fields["preview"]) if fields.get("preview", "").isdigit() else None
        for job_id in fields.get("job_ids", "").split(","):
            for queue in self._subscribers.get(job_id, ()):
                event = JobEvent(job_id, JobState.generating, _stream_order(entry_id)[0] / 1000, "", "", step, steps,
                                 fields.get("model", ""), preview)
                with contextlib.suppress(asyncio.QueueFull):
                    queue.put_nowait(event)

    def _dispatch(self, fields: dict[str, str]) -> None:
        queues = self._subscribers.get(fields.get("job_id", ""))
        if not queues:
            return
        try:
            event = JobEvent.from_stream(fields)
        except (KeyError, ValueError) as error:
            log.warning("event_unreadable", error=str(error))
            return
        for queue in queues:
            with contextlib.suppress(asyncio.QueueFull):  # a stuck reader loses events, not the hub
                queue.put_nowait(event)


def _stream_order(event_id: str) -> tuple[int, int]:
    milliseconds, _, sequence = event_id.partition("-")
    return int(milliseconds), int(sequence or 0)
