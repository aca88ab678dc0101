"""The service classes in `hadis experiment` (docs/classes.md): a batch backlog submitted through the
real services beside the trace, each class's outcomes read from the job records, and the GPU-seconds
each class used read from the workers' busy time; together a classes_sim.ClassRun, so that
class_report.py reports an experiment and a simulation alike.

The busy time: every worker exports `hadis_class_busy_seconds_total{tier,priority}` (the model's
time on batches of each class, a batch stopped for interactive work included) and
`hadis_batch_yield_lost_seconds_total{tier}` (the part of it that stopped batches had run) on its
metrics port, the agent's port plus one plus the GPU's index (services/agent.py). BusyScraper reads
every worker's counters every SCRAPE_S; what a counter grew by between two reads is a batch (or
batches) that ended in between, placed on the trace clock as the span just before the read (each
worker runs one batch at a time). A worker replaced (its GPU moved to another tier, or restarted) is
a new process on the same port: its `process_start_time_seconds` differs. Its counters start from
its predecessor's final ones (shared/busy_carry.py; `hadis_carried_seconds` says how much), so
what the predecessor ran after the last read (its last batches: a stopping worker finishes them
just before it exits) is in the first read of the successor. A predecessor that was killed left
nothing to carry: its successor counts from zero, and what it ran after the last read is not seen
(`notes.busy_workers_gone` says how many went so; `busy_workers_carried` how many carried on)."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from shared import reference
from shared.client import Client
from shared.errors import Overloaded
from shared.experiments.classes_sim import BatchLoad, Busy, ClassRun, PlacementEvent
from shared.experiments.report import JobOutcome, PlanEvent
from shared.ports import free_port_base as free_port_base  # the agent's metrics port and its workers' (runner.py)
from shared.schemas import Job, JobRecord
from shared.settings import Settings

if TYPE_CHECKING:
    from shared.experiments.runner import Progress

SCRAPE_S = 0.5  # between two reads of every worker's counters
SCRAPE_TIMEOUT_S = 2.0
SUBMIT_CHUNK = 200  # batch jobs published at once (each publish waits for the broker's confirm)
OVERLOADED_RETRY_S = 0.5
UNFINISHED_MAX = 500  # batch jobs written to batch_unfinished.json
BUSY_LINE = re.compile(r'^hadis_class_busy_seconds_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$')
LOST_LINE = re.compile(r'^hadis_batch_yield_lost_seconds_total\{[^}]*\} (?P<value>\S+)$')
CARRIED_LINE = re.compile(r'^hadis_carried_seconds\{counter="(?P<counter>[^"]*)",priority="(?P<priority>[^"]*)"\} '
                          r'(?P<value>\S+)$')
PRIORITY_LABEL = re.compile(r'priority="(?P<priority>[^"]*)"')
START_PREFIX = "process_start_time_seconds "


@dataclass(frozen=True)
class Counters:
    """One read of a worker's counters: its process's start, busy seconds by class, seconds lost."""

    started: float | None
    busy: dict[str, float]
    lost: float = 0.0
    carried: Counters | None = None  # what the process's counters started from (its predecessor's)

    @classmethod
    def parse(cls, text: str) -> Counters:
        started: float | None = None
        busy: dict[str, float] = {}
        carried: dict[str, float] = {}
        lost = carried_lost = 0.0
        for line in text.splitlines():
            if line.startswith(START_PREFIX):
                started = float(line[len(START_PREFIX):])
            elif (match := BUSY_LINE.match(line)) and (priority := PRIORITY_LABEL.search(match["labels"])):
                busy[priority["priority"]] = busy.get(priority["priority"], 0.0) + float(match["value"])
            elif match := LOST_LINE.match(line):
                lost += float(match["value"])
            elif match := CARRIED_LINE.match(line):
                if match["counter"] == "hadis_class_busy_seconds":
                    carried[match["priority"]] = float(match["value"])
                elif match["counter"] == "hadis_batch_yield_lost_seconds":
                    carried_lost += float(match["value"])
        return cls(started, busy, lost, cls(started, carried, carried_lost))

    def follows(self, before: Counters) -> bool:
        """The same process as `before`, read later (no counter went back)."""
        return self.started == before.started and self.at_least(before)

    def at_least(self, before: Counters) -> bool:
        return self.lost >= before.lost and all(self.busy.get(priority, -1.0) >= seconds - 1e-6
                                                for priority, seconds in before.busy.items())

    def carries_on(self, before: Counters) -> bool:
        """A new process whose counters went on from `before`'s process (it carried at least what
        was read of it: it is that process's successor, or a later one's, and none was killed)."""
        return self.started != before.started and self.carried is not None and self.carried.at_least(before)

    @property
    def start(self) -> Counters:
        """What this process's counters counted from."""
        return self.carried or ZERO


ZERO = Counters(None, {})


@dataclass
class BusyLog:
    """Each GPU's busy spans by class, from successive reads of its worker's counters."""

    busy: list[Busy] = field(default_factory=list)
    last: dict[str, Counters] = field(default_factory=dict)
    processes: int = 0
    gone: int = 0  # processes a new one replaced on their GPU without carrying on (their last batches unseen)
    carried: int = 0  # processes a new one replaced on their GPU and carried on from

    def observe(self, gpu: str, counters: Counters | None, t_s: float) -> None:
        """A read at `t_s` (trace clock); None when the port did not answer (no worker there, or
        none yet: the next read that answers says whether it is the process read before)."""
        if counters is None:
            return
        before = self.last.get(gpu)
        if before is None or not counters.follows(before):
            self.processes += 1
            if before is not None and counters.carries_on(before):
                self.carried += 1  # what `before`'s process ran after its last read is counted now
            else:
                self.gone += before is not None
                before = counters.start
        self.last[gpu] = counters
        lost = max(counters.lost - before.lost, 0.0)
        batch = max(counters.busy.get("batch", 0.0) - before.busy.get("batch", 0.0), 0.0)
        pieces = (("interactive", counters.busy.get("interactive", 0.0) - before.busy.get("interactive", 0.0), False),
                  ("batch", batch - min(lost, batch), False), ("batch", min(lost, batch), True))
        end = t_s
        for priority, seconds, stopped in pieces:
            if seconds > 1e-9:
                self.busy.append(Busy(gpu, priority, end - seconds, end, stopped))
                end -= seconds


async def fetch_metrics(port: int, timeout_s: float = SCRAPE_TIMEOUT_S) -> str | None:
    """The metrics page of 127.0.0.1:port; None when nothing answers."""
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
                await writer.drain()
                response = await reader.read()
            finally:
                writer.close()
    except (OSError, TimeoutError):
        return None
    head, _, body = response.partition(b"\r\n\r\n")
    return body.decode() if head.startswith(b"HTTP/1.") and b" 200 " in head.split(b"\r\n")[0] else None


class BusyScraper:
    """Reads every worker's counters every SCRAPE_S while the run plays (see the module's doc)."""

    def __init__(self, gpus: list[str], agent_port: int, started_at: float) -> None:
        self.ports = {gpu: agent_port + 1 + index for index, gpu in enumerate(gpus)}
        self.started_at = started_at
        self.log = BusyLog()
        self.reads = 0

    async def read_all(self) -> None:
        pages = await asyncio.gather(*(fetch_metrics(port) for port in self.ports.values()))
        t_s = time.time() - self.started_at
        for gpu, page in zip(self.ports, pages, strict=True):
            self.log.observe(gpu, None if page is None else Counters.parse(page), t_s)
        self.reads += 1

    async def run(self) -> None:
        while True:
            await self.read_all()
            await asyncio.sleep(SCRAPE_S)

    def notes(self) -> dict:
        return {"busy_reads": self.reads, "busy_worker_processes": self.log.processes,
                "busy_workers_gone": self.log.gone, "busy_workers_carried": self.log.carried}


def batch_job(job_id: str, index: int, prompts: tuple[str, ...], load: BatchLoad, submitted_at: float) -> Job:
    return Job(job_id=job_id, prompt=prompts[index % len(prompts)], seed=index, slo_s=load.slo_s,
               submitted_at=submitted_at, priority="batch", metadata={"batch_index": index})


async def submit_one(client: Client, job: Job) -> None:
    """Publish; while the bus says its queue is full, again."""
    while True:
        try:
            await client.submit(job)
            return
        except Overloaded:
            await asyncio.sleep(OVERLOADED_RETRY_S)


async def submit_batch(client: Client, job_ids: list[str], load: BatchLoad, started_at: float,
                       on_chunk: Callable[[int], None] = lambda count: None) -> float:
    """The backlog at `load.at_s` (trace clock), as fast as the bus takes it: SUBMIT_CHUNK jobs
    published at once, each stamped with the scheduled time. Returns the seconds it took."""
    scheduled = started_at + load.at_s
    if (delay := scheduled - time.time()) > 0:
        await asyncio.sleep(delay)
    began, prompts = time.time(), reference.prompts()
    for start in range(0, len(job_ids), SUBMIT_CHUNK):
        chunk = job_ids[start:start + SUBMIT_CHUNK]
        await asyncio.gather(*(submit_one(client, batch_job(job_id, start + offset, prompts, load, scheduled))
                               for offset, job_id in enumerate(chunk)))
        on_chunk(len(chunk))
    return time.time() - began


def batch_outcome(record: JobRecord | None, load: BatchLoad, started_at: float) -> JobOutcome:
    """A batch job's outcome from its record: the model that served it as its own pair (no cascade),
    as the simulator's (ClassSimulation.batch_outcome)."""
    if record is None or not record.state.terminal:
        return JobOutcome(arrival_s=load.at_s, state="lost", end_s=None, slo_s=load.slo_s, priority="batch")
    tier = record.tier.value if record.tier else None
    return JobOutcome(arrival_s=load.at_s, state=record.state.value, end_s=record.history[-1].at - started_at,
                      slo_s=load.slo_s, light_model=record.model, heavy_model=record.model, tier=tier,
                      priority="batch")


def write_unfinished(out_dir: Path, job_ids: list[str], records: list[JobRecord | None], started_at: float) -> None:
    """batch_unfinished.json: the first UNFINISHED_MAX batch jobs not terminal when the run gave up,
    with their records and histories on the trace clock (the namespace is gone after the run)."""
    unfinished = [{"job_id": job_id, "record": None if record is None else record.model_dump(mode="json"),
                   "history_s": None if record is None else
                   [(step.state.value, round(step.at - started_at, 3)) for step in record.history]}
                  for job_id, record in zip(job_ids, records, strict=True)
                  if record is None or not record.state.terminal][:UNFINISHED_MAX]
    if unfinished:
        (out_dir / "batch_unfinished.json").write_bytes(orjson.dumps(unfinished, option=orjson.OPT_INDENT_2))


class BatchSide:
    """The batch backlog's part of a run: its submission, on a connection of its own (the trace's
    submissions do not wait behind 5,000 publishes), the reads of the workers' busy time, and the
    run's classes (a ClassRun) from the records."""

    def __init__(self, settings: Settings, load: BatchLoad, job_ids: list[str], agent_port: int,
                 started_at: float) -> None:
        self.settings, self.load, self.job_ids, self.started_at = settings, load, job_ids, started_at
        self.scraper = BusyScraper(settings.owned_gpus(), agent_port, started_at)
        self.client: Client | None = None
        self.tasks: list[asyncio.Task] = []
        self.submitted = 0
        self.submit_s: float | None = None

    async def start(self, progress: Progress) -> None:
        self.client = await Client.open(self.settings)
        self.tasks = [asyncio.create_task(self.submit(self.client, progress)), asyncio.create_task(self.scraper.run())]

    async def submit(self, client: Client, progress: Progress) -> None:
        def counted(jobs: int) -> None:
            self.submitted += jobs
            progress.submitted += jobs

        self.submit_s = await submit_batch(client, self.job_ids, self.load, self.started_at, counted)

    def check(self) -> None:
        """Raise what stopped the submission or the reads, if anything did."""
        for task in self.tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise RuntimeError("the batch backlog's submission or busy-time reads failed") from task.exception()

    async def stop(self) -> None:
        """After the run: a last read of every worker's counters (before the services stop)."""
        self.check()
        await self.close()
        await self.scraper.read_all()

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks = []
        if self.client is not None:
            await self.client.close()
            self.client = None

    def finish(self, records: list[JobRecord | None], interactive: list[JobOutcome], plans: list[PlanEvent],
               placements: list[PlacementEvent], out_dir: Path) -> ClassRun:
        write_unfinished(out_dir, self.job_ids, records, self.started_at)
        batch = [batch_outcome(record, self.load, self.started_at) for record in records]
        return ClassRun(interactive, batch, plans, sorted(self.scraper.log.busy, key=lambda b: b.start_s),
                        placements, len(self.settings.owned_gpus()), 0.0, self.load.slo_s, self.settings.batch_yield)

    def notes(self) -> dict:
        return {"batch_submitted": self.submitted,
                "batch_submit_s": None if self.submit_s is None else round(self.submit_s, 3), **self.scraper.notes()}
