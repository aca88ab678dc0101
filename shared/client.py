"""The Python client other backends use: submit a job, wait for its record, fetch the image.

    async with Client.connect() as client:
        job_id = await client.submit(Job(prompt="a red bicycle"))  # priority="batch": the batch class
        record = await client.wait(job_id, timeout_s=60)
        png = await client.image(job_id)
        await client.cancel(job_id)  # or end it early, wherever it is

`submit_and_wait` is the same from synchronous code.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

from shared.bus import Bus
from shared.outcome import Outcome
from shared.schemas import PRIORITIES, Job, JobRecord, Priority
from shared.settings import Settings, get_settings
from shared.store import Store


class Client:
    def __init__(self, bus: Bus, store: Store) -> None:
        self.bus = bus
        self.store = store

    @classmethod
    async def open(cls, settings: Settings | None = None) -> Client:
        settings = settings or get_settings()
        bus = await Bus.connect(settings)
        store = await Store.connect(settings)
        return cls(bus, store)

    @classmethod
    def connect(cls, settings: Settings | None = None) -> _Connecting:
        return _Connecting(settings)

    async def close(self) -> None:
        await self.bus.close()
        await self.store.close()

    async def delete_namespace(self) -> None:
        """Remove the namespace's queues, exchanges and keys (experiments, tests, scripts that run in
        a namespace of their own)."""
        await self.bus.delete_namespace()
        await self.store.delete_namespace()

    async def submit(self, job: Job, priority: Priority | None = None) -> str:
        """Publish the job to the ingress queue (confirmed by the broker); returns its id. `priority`,
        when given, is the job's service class in place of its own `Job.priority` (docs/jobs.md)."""
        if priority is not None:
            job = with_priority(job, priority)
        await self.bus.publish(self.bus.queues.ingress_for(job.priority), job, message_id=job.job_id)
        return job.job_id

    async def wait(self, job_id: str, timeout_s: float = 60.0) -> JobRecord | None:
        """The record once terminal (done, failed, expired); None if not terminal in time."""
        return await self.store.wait_terminal(job_id, timeout_s)

    async def status(self, job_id: str) -> JobRecord | None:
        return await self.store.get(job_id)

    async def image(self, job_id: str) -> bytes | None:
        return await self.store.get_image(job_id)

    async def cancel(self, job_id: str, reason: str = "cancelled by its producer") -> Outcome:
        """End the job `cancelled` wherever it is, unless it has ended (then refused, with the state
        it ended in: `outcome.before`); a running batch stops at its next step (docs/jobs.md)."""
        return await self.store.cancel(job_id, reason)


class _Connecting:
    """`async with Client.connect() as client:`"""

    def __init__(self, settings: Settings | None) -> None:
        self._settings = settings
        self._client: Client | None = None

    async def __aenter__(self) -> Client:
        self._client = await Client.open(self._settings)
        return self._client

    async def __aexit__(self, kind: type | None, error: BaseException | None, trace: TracebackType | None) -> None:
        if self._client is not None:
            await self._client.close()


def with_priority(job: Job, priority: Priority) -> Job:
    """The job in the service class `priority` (ValueError for a name that is no class)."""
    if priority not in PRIORITIES:
        raise ValueError(f"priority must be one of {', '.join(PRIORITIES)}, not {priority!r}")
    return job.model_copy(update={"priority": priority})


def submit_and_wait(job: Job, timeout_s: float = 60.0, settings: Settings | None = None,
                    priority: Priority | None = None) -> tuple[JobRecord | None, bytes | None]:
    """Synchronous: submit, wait, and return the record and the PNG (None when not done). A batch
    job's objective is minutes (HADIS_BATCH_SLO_S): give it a timeout_s to match."""

    async def go() -> tuple[JobRecord | None, bytes | None]:
        async with Client.connect(settings) as client:
            await client.submit(job, priority)
            record = await client.wait(job.job_id, timeout_s)
            png = await client.image(job.job_id) if record is not None else None
            return record, png

    return asyncio.run(go())
