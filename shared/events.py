"""One reader of the store's event stream per process, handing each job's state changes to whoever
waits on that job.

The HTTP api waits on many jobs at once (an images request until its job ends, an SSE stream for
every watcher). A Redis subscription or a blocking read per waiter would cost a connection each;
here one task follows `<ns>:events` (XREAD, blocking up to a second) and puts each event in the
queues of that job's subscribers. An event is a wake-up: the subscriber reads the record (the
truth) again. Subscribe before the first read, and a change between the two is never missed.

Bounds: a subscriber's queue holds `QUEUE_BOUND` events (a job has fewer than ten); the reader
retries a store outage every `RETRY_S` and resumes after the last event it read, so changes made
while Redis was away are still delivered when the stream kept them."""

from __future__ import annotations

import asyncio
import contextlib
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


@dataclass(frozen=True)
class JobEvent:
    """One state change of a job, as the stream holds it."""

    job_id: str
    state: JobState
    at: float
    detail: str
    tier: str

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

    async def start(self) -> None:
        """Follow the stream from its newest event on."""
        self._task = asyncio.create_task(self._follow(await self.store.last_event_id()), name="event-hub")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @property
    def watched(self) -> int:
        return len(self._subscribers)

    @contextlib.contextmanager
    def subscribe(self, job_ids: Iterable[str]) -> Iterator[asyncio.Queue[JobEvent]]:
        """One queue that receives the events of all these jobs while the block runs."""
        job_ids = list(job_ids)
        queue: asyncio.Queue[JobEvent] = asyncio.Queue(QUEUE_BOUND * max(len(job_ids), 1))
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

    async def _follow(self, last_id: str) -> None:
        while True:
            try:
                events = await self.store.read_events(last_id, count=1000, block_ms=BLOCK_MS)
            except (HadisError, OSError) as error:
                log.warning("event_stream_unreadable", error=str(error))
                await asyncio.sleep(RETRY_S)
                continue
            for event_id, fields in events:
                last_id = event_id
                self._dispatch(fields)

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

