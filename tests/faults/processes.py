"""Fault injection at the process level: the services as real processes (what a fault test or
`make chaos` kills), a steady load to break them under, and the accounting of the outcome.

A test and operations harness, not part of hadis: it lives with the fault tests (tests/faults/) and
does not ship in the wheel. The fault, hostile and accounting tests import it as
`tests.faults.processes`; scripts/{chaos,soak,drill,fairness_load}.py put the checkout on sys.path
and import it the same way. The services keep only their crash points (shared/crashpoints.py).

The accounting reads two things: each job's record (lost: not terminal; failed, expired, done) and the
event stream `<ns>:events`, which has one entry per state change (see shared/store/transition.lua). From the
stream, `double_work` finds jobs whose work was done twice: a second `generating` claim of the same
tier while the first claim's owner was alive, or an image stored twice."""

from __future__ import annotations

import asyncio
import itertools
import re
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.client import Client
from shared.schemas import TERMINAL_STATES, Job, JobRecord, JobState
from shared.settings import Settings
from shared.supervisor import Child, stop_all

PROCESSES = {
    "controller": ("services.controller", {}),
    "router": ("services.router", {}),
    "judge": ("services.judge", {}),
    "light": ("services.worker", {"HADIS_TIER": "light", "HADIS_GPU": "light0"}),
    "heavy": ("services.worker", {"HADIS_TIER": "heavy", "HADIS_GPU": "heavy0"}),
}


# Every pid a Cluster of this process SIGKILLed: what Load.outcome takes as died when not told.
_KILLED_PIDS: set[int] = set()


class Cluster:
    """The services as processes; `replicas` runs more than one of a stateless service (competing
    consumers, or controllers contending for the lease): `router`, `router2`, ..."""

    def __init__(self, settings: Settings, replicas: dict[str, int] | None = None) -> None:
        self.settings = settings
        self.children: dict[str, Child] = {}
        for name, (module, extra) in PROCESSES.items():
            for index in range(1, (replicas or {}).get(name, 1) + 1):
                replica = name if index == 1 else f"{name}{index}"
                self.children[replica] = Child(replica, module, {**settings.as_env(), **extra})
        self.killed: list[int] = []  # pids this cluster SIGKILLed (their claims may pass to another worker)

    def start(self, name: str) -> None:
        self.children[name].start()

    def kill(self, name: str, signum: int = signal.SIGKILL) -> int:
        process = self.children[name].process
        assert process is not None, f"{name} was never started"
        if signum == signal.SIGKILL:
            self.killed.append(process.pid)
            _KILLED_PIDS.add(process.pid)
        process.send_signal(signum)
        return process.wait(timeout=self.settings.shutdown_grace_s + 15)

    def stop(self) -> None:
        stop_all(list(self.children.values()))


@asynccontextmanager
async def cluster(settings: Settings, client: Client,
                  replicas: dict[str, int] | None = None) -> AsyncIterator[Cluster]:
    running = Cluster(settings, replicas)
    for name in running.children:
        running.start(name)
    try:
        await warm_up(client)
        yield running
    finally:
        running.stop()
        await client.delete_namespace()


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

    async def run(self, seconds: float, prefix: str = "load", until: asyncio.Event | None = None) -> None:
        """At least `seconds` of load; with `until`, on until it is set too (a test whose faults take
        longer than planned on a busy machine still injects every one of them under load)."""
        self.since_id = self.since_id if self.jobs else await self.client.store.last_event_id()
        started = time.monotonic()
        for index in itertools.count():
            if index >= int(seconds * self.rate_qps) and (until is None or until.is_set()):
                return
            delay = started + index / self.rate_qps - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            job = Job(prompt=f"{prefix} {index}: a lighthouse on a cliff at dusk", seed=index)
            await self.client.submit(job)
            self.jobs.append(job)

    async def outcome(self, timeout_s: float = 120.0, died_pids: Iterable[int] | None = None) -> Outcome:
        """Wait (bounded) for every job to be terminal, then account for them: their records, and
        the event stream since the load began, read with the pids known to have died (default:
        those the Clusters of this process SIGKILLed)."""
        died_pids = set(_KILLED_PIDS) if died_pids is None else died_pids
        ids = [job.job_id for job in self.jobs]
        await self.client.store.wait_many(ids, self.since_id, timeout_s)
        records = [await self.client.status(job_id) for job_id in ids]
        events = await read_all_events(self.client.store, self.since_id)
        return Outcome(records, set(double_work(events, died_pids)))


async def read_all_events(store: Any, since_id: str = "0-0", page: int = 5000) -> list[tuple[str, dict[str, str]]]:
    """Every event of the stream after `since_id`, oldest first (no blocking)."""
    events: list[tuple[str, dict[str, str]]] = []
    last_id = since_id
    while True:
        batch = await store.read_events(last_id, count=page)
        if not batch:
            return events
        events += batch
        last_id = batch[-1][0]


def owner_pid(owner: str) -> int | None:
    """The pid of a claim's owner (`<gpu>/<pid>[.<instance>]`, see shared.store.owner_id); None if there is none."""
    _, _, tail = (owner or "").rpartition("/")
    pid = tail.partition(".")[0]
    return int(pid) if pid.isdigit() else None


# A `routed` or `escalated` event with an owner is a claim handed back (shared.store.hand_back).
_HAND_BACK_VALUES = (JobState.routed.value, JobState.escalated.value)


class DoubleWork:
    """Finds, from a run's events (oldest first), jobs whose work was done twice:

    (a) a second `generating` claim for the same (job, tier) when the previous claim's owner
        process is not known to have died (a claim by the same owner twice counts too), or when
        that tier's result was already stored: only a claim whose owner died *before storing*
        may pass to another worker;
    (b) an image stored twice: two `light` writes, or two of `final`/`promote`;
    (c) a verdict drawn twice: more than one `judging` or `escalated` transition;
    (d) more than one terminal transition.

    A claim its owner handed back before starting it is no claim (the next one is a first).
    Feed it events with `add` (or all at once with `feed`); `findings` maps each job id to why."""

    def __init__(self, died_pids: Iterable[int] = ()) -> None:
        self.died_pids = {int(pid) for pid in died_pids}
        self.findings: dict[str, list[str]] = {}
        self._claims: dict[tuple[str, str], list[str]] = {}  # (job, tier) -> owners, in order
        self._images: dict[tuple[str, str], int] = {}  # (job, light | final) -> writes
        self._terminal: dict[str, int] = {}
        self._stored: set[tuple[str, str]] = set()  # (job, tier) whose result is stored
        self._steps: dict[tuple[str, str], int] = {}  # (job, judging | escalated) -> transitions

    def feed(self, events: Iterable[Any]) -> DoubleWork:
        for event in events:
            self.add(event)
        return self

    def add(self, event: Any) -> None:
        """One event: a `{field: value}` dict, or the `(event_id, dict)` pair read_events returns."""
        fields = event[1] if isinstance(event, tuple) else event
        job_id, state = fields.get("job_id", ""), fields.get("state", "")
        if state in _HAND_BACK_VALUES and fields.get("owner"):
            self._hand_back(job_id, fields.get("tier", ""), fields["owner"])
            return
        if state == JobState.generating.value:
            owners = self._claims.setdefault((job_id, fields.get("tier", "")), [])
            owner = fields.get("owner", "")
            if (job_id, fields.get("tier", "")) in self._stored:
                self._flag(job_id, f"claimed by {owner!r} after its {fields.get('tier')} result was stored")
            elif owners:
                previous = owners[-1]
                if previous == owner:
                    self._flag(job_id, f"claimed twice by the same owner {owner!r} ({fields.get('tier')})")
                elif owner_pid(previous) not in self.died_pids:
                    self._flag(job_id, f"claimed by {owner!r} while the previous owner {previous!r} was not "
                                       f"known to have died ({fields.get('tier')})")
            owners.append(owner)
        if state in (JobState.judging.value, JobState.escalated.value):
            count = self._steps[(job_id, state)] = self._steps.get((job_id, state), 0) + 1
            if count > 1:
                self._flag(job_id, f"{state} recorded {count} times (a verdict or a light result twice)")
        image = fields.get("image", "")
        if image:
            kind = "light" if image == "light" else "final"
            self._stored.add((job_id, "light" if kind == "light" else fields.get("tier", "")))
            count = self._images[(job_id, kind)] = self._images.get((job_id, kind), 0) + 1
            if count > 1:
                self._flag(job_id, f"{kind} image stored {count} times (this one: {image})")
        if state in _TERMINAL_VALUES:
            count = self._terminal[job_id] = self._terminal.get(job_id, 0) + 1
            if count > 1:
                self._flag(job_id, f"{count} terminal transitions (this one: {state})")

    def _hand_back(self, job_id: str, tier: str, owner: str) -> None:
        """A claim its owner gave back before starting it (shared.store.hand_back): the next claim
        is a first one again. A hand-back by anyone but the claim's holder is double work waiting
        to happen (the store refuses it)."""
        owners = self._claims.get((job_id, tier), [])
        if not owners or owners[-1] != owner:
            self._flag(job_id, f"claim handed back by {owner!r}, who did not hold it ({tier})")
            return
        owners.clear()

    def _flag(self, job_id: str, reason: str) -> None:
        self.findings.setdefault(job_id, []).append(reason)

    @property
    def jobs(self) -> list[str]:
        """The jobs found, in the order they were first found."""
        return list(self.findings)


_TERMINAL_VALUES = frozenset(state.value for state in TERMINAL_STATES)


def double_work(events: Iterable[Any], died_pids: Iterable[int] = ()) -> list[str]:
    """The ids of the jobs generated (or stored, or finished) twice in `events`; see DoubleWork."""
    return DoubleWork(died_pids).feed(events).jobs


@dataclass
class Outcome:
    """What became of a load's jobs: their records (None: no record), and `doubled`, the jobs the
    event stream shows were worked on twice (double_work)."""

    records: list[JobRecord | None]
    doubled: set[str] = field(default_factory=set)

    @property
    def lost(self) -> int:
        return sum(1 for r in self.records if r is None or not r.state.terminal)

    @property
    def duplicated_ids(self) -> list[str]:
        """Jobs of this load with more than one terminal transition, or found by double_work."""
        return [r.job_id for r in self.records
                if r is not None and (terminal_count(r) > 1 or r.job_id in self.doubled)]

    @property
    def duplicated(self) -> int:
        return len(self.duplicated_ids)

    def count(self, state: JobState) -> int:
        return sum(1 for r in self.records if r is not None and r.state is state)

    def __str__(self) -> str:
        return (f"lost={self.lost} duplicated={self.duplicated} failed={self.count(JobState.failed)} "
                f"expired={self.count(JobState.expired)} done={self.count(JobState.done)} of {len(self.records)}"
                + self.what_went_wrong())

    def what_went_wrong(self) -> str:
        """The jobs not done, by their state, and the history of the first three of each: a failed
        fault test then says where its jobs stopped (no record, queued, routed, a claim)."""
        wrong: dict[str, list[JobRecord | None]] = {}
        for record in self.records:
            if record is None or record.state is not JobState.done:
                wrong.setdefault("no record" if record is None else record.state.value, []).append(record)
        lines = [f"{state}: {len(records)}" for state, records in sorted(wrong.items())]
        for records in wrong.values():
            for record in records[:3]:
                if record is not None:
                    steps = ", ".join(f"{t.state.value}@{t.at:.1f} {t.detail[:80]}".strip() for t in record.history)
                    lines.append(f"  {record.job_id} (error {record.error!r}): {steps}")
        return ("\n" + "\n".join(lines)) if lines else ""


def terminal_count(record: JobRecord) -> int:
    return sum(1 for transition in record.history if transition.state in TERMINAL_STATES)


# A Redis of a fault run's own: the machine's one serves everything else and is never killed.
# Its flags come from the checkout's compose.yaml: the fault harness (make test-faults, chaos, soak,
# drill) runs in a checkout only, never from an installed hadis.
REPO = Path(__file__).resolve().parents[2]


def compose_redis_args(source: str = "compose.yaml",
                       names: tuple[str, ...] = ("--appendonly", "--appendfsync")) -> list[str]:
    """The flags `names` that `source` gives Redis (by default compose.yaml's persistence), so a
    fault run crashes the Redis users get (read as text: each flag appears once, in the command)."""
    text = (REPO / source).read_text()
    flags = []
    for name in names:
        found = re.search(rf"{name} (\w+)", text)
        if found is None:
            raise RuntimeError(f"{source} gives Redis no {name}")
        flags += [name, found.group(1)]
    return flags


def cluster_redis_args() -> list[str]:
    """The cluster's write bound (docker/cluster/redis-ha.sh): a primary takes writes only while a
    replica follows it."""
    return compose_redis_args("docker/cluster/redis-ha.sh", ("--min-replicas-to-write", "--min-replicas-max-lag"))


class RedisServer:
    """A redis-server on its own port and data directory, persisted as compose persists it, to be
    killed with SIGKILL and started again on the same data."""

    def __init__(self, directory: Path | str, port: int, password: str = "", extra_args: tuple[str, ...] = ()) -> None:
        self.directory, self.port, self.password = Path(directory), port, password
        self.extra_args = extra_args  # e.g. --replicaof HOST PORT
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0" if self.password else \
            f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 60.0) -> None:
        auth = ["--requirepass", self.password] if self.password else []
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", *compose_redis_args(), "--save", "",
             "--dir", str(self.directory), "--logfile", "redis.log", *auth, *self.extra_args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        give_up_at = time.monotonic() + timeout_s
        while time.monotonic() < give_up_at:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode} (see {self.directory})")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not listen on {self.port} within {timeout_s} s")

    def stop(self, signum: int = signal.SIGKILL) -> int | None:
        """Signal it (SIGKILL by default) and wait; its pid, or None when it was not running."""
        if self.process is None:
            return None
        pid = self.process.pid
        self.process.send_signal(signum)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)
        self.process = None
        return pid
