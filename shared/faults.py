"""Fault injection at the process level: the services as real processes (what a fault test or
`make chaos` kills), a steady load to break them under, and the accounting of the outcome."""

from __future__ import annotations

import asyncio
import signal
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import AsyncIterator

from shared.client import Client
from shared.schemas import Job, JobRecord, JobState, TERMINAL_STATES
from shared.settings import Settings
from shared.supervisor import Child, stop_all

PROCESSES = {
    "controller": ("services.controller", {}),
    "router": ("services.router", {}),
    "judge": ("services.judge", {}),
    "light": ("services.worker", {"HADIS_TIER": "light", "HADIS_GPU": "light0"}),
    "heavy": ("services.worker", {"HADIS_TIER": "heavy", "HADIS_GPU": "heavy0"}),
}


class Cluster:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.children = {
            name: Child(name, module, {**settings.as_env(), **extra}) for name, (module, extra) in PROCESSES.items()
        }

    def start(self, name: str) -> None:
        self.children[name].start()

    def kill(self, name: str, signum: int = signal.SIGKILL) -> int:
        process = self.children[name].process
        process.send_signal(signum)
        return process.wait(timeout=self.settings.shutdown_grace_s + 15)

    def stop(self) -> None:
        stop_all(list(self.children.values()))


@asynccontextmanager
async def cluster(settings: Settings, client: Client) -> AsyncIterator[Cluster]:
    running = Cluster(settings)
    for name in running.children:
        running.start(name)
    try:
        await warm_up(client)
        yield running
    finally:
        running.stop()
        await client.bus.delete_namespace()
        await client.store.delete_namespace()


async def warm_up(client: Client, timeout_s: float = 60.0) -> None:
    """A first job through every service, so that faults hit a system already serving."""
    # Its own SLO, as long as the wait: the services may still be starting (a test's short SLO
    # would expire it before the router is up).
    job = Job(prompt="warm-up: a red bicycle", slo_s=timeout_s)
    await client.submit(job)
    record = await client.wait(job.job_id, timeout_s)
    if record is None or record.state is not JobState.done:
        raise RuntimeError(f"the services did not serve a first job: {record}")


@dataclass
class Load:
    """Jobs submitted at a steady rate while a test breaks things."""

    client: Client
    rate_qps: float
    jobs: list[Job] = field(default_factory=list)
    since_id: str = "0-0"

    async def run(self, seconds: float, prefix: str = "load") -> None:
        self.since_id = self.since_id if self.jobs else await self.client.store.last_event_id()
        started = time.monotonic()
        for index in range(int(seconds * self.rate_qps)):
            delay = started + index / self.rate_qps - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            job = Job(prompt=f"{prefix} {index}: a lighthouse on a cliff at dusk", seed=index)
            await self.client.submit(job)
            self.jobs.append(job)

    async def outcome(self, timeout_s: float = 120.0) -> "Outcome":
        ids = [job.job_id for job in self.jobs]
        await self.client.store.wait_many(ids, self.since_id, timeout_s)
        records = [await self.client.status(job_id) for job_id in ids]
        return Outcome(records)


@dataclass
class Outcome:
    records: list[JobRecord | None]

    @property
    def lost(self) -> int:
        return sum(1 for r in self.records if r is None or not r.state.terminal)

    @property
    def duplicated(self) -> int:
        return sum(1 for r in self.records if r is not None and terminal_count(r) > 1)

    def count(self, state: JobState) -> int:
        return sum(1 for r in self.records if r is not None and r.state is state)

    def __str__(self) -> str:
        return (f"lost={self.lost} duplicated={self.duplicated} failed={self.count(JobState.failed)} "
                f"expired={self.count(JobState.expired)} done={self.count(JobState.done)} of {len(self.records)}")


def terminal_count(record: JobRecord) -> int:
    return sum(1 for transition in record.history if transition.state in TERMINAL_STATES)
