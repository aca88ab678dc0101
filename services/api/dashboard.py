"""The dashboard's one computation per tick, shared by every viewer.

While anybody looks (an open stream, or a snapshot asked for in the last IDLE_S), one task ticks
every TICK_S: it reads what happened since the last tick from the store's event stream, the plan
(and its history when the version moved), the workers' heartbeats of the planned GPUs (one MGET),
the agents (a keyspace scan, every AGENTS_READ_S), the queue depths from the broker, and the
records of the jobs that ended (one pipelined round trip for all of them); folds it into the
window (shared/dashboard/), and serializes one snapshot. Every viewer's stream sends those same
bytes: N viewers cost N writes of the snapshot, not N computations. A slow viewer skips to the
newest snapshot; none queues up.

Nobody looking, it reads nothing (the event stream carries every job's changes: reading it costs
the api CPU at full load). The first look resumes BACKFILL_S back in the stream (never before what
it read already), at most MAX_EVENTS_PER_TICK events a tick, so a first look at a busy fleet
catches up over a few ticks rather than in one long read; the snapshot says `behind` meanwhile.

Bounds: the window's (shared/dashboard/window.py), MAX_VIEWERS streams at once (429 beyond),
a snapshot of fixed shape (150 points a series, RECENT jobs, CHANGES plan changes)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson

from shared.dashboard import feed, fleet
from shared.dashboard.window import FidOf, Window, overall, series
from shared.errors import HadisError
from shared.logging import get_logger
from shared.schemas import Plan, Tier
from shared.service import Service

log = get_logger(__name__)

TICK_S = 1.0
IDLE_S = 60.0
BACKFILL_S = 60.0
EVENT_CHUNK = 2_000
MAX_EVENTS_PER_TICK = 20_000
AGENTS_READ_S = 10.0
MAX_VIEWERS = 32
KEEPALIVE_S = 15.0
CHANGES = 10


def fid_lookup(profile: str) -> FidOf | None:
    """The quality table's FIDs for the profile's pairs; None for a profile without one (tiny-cpu)."""
    from shared.experiments.report import FidLookup
    from shared.policies.pareto import load_quality, load_table
    from shared.profiles import load_profile

    try:
        return FidLookup(load_quality(load_table(profile).quality_table), load_profile(profile))
    except (FileNotFoundError, ValueError, KeyError):
        return None


class Dashboard:
    """The ticker, its state and its latest snapshot (the module's docstring)."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.settings = service.settings
        self.window = Window()
        self.fold = feed.Fold(self.window)
        self.recent = feed.Recent()
        self.switches = fleet.Switches(self.price)
        self.lookup: FidOf | None = None
        self.frame = b""  # the latest snapshot as an SSE frame
        self.snapshot_json = b""
        self._fresh = asyncio.Event()  # set (and replaced) at every new snapshot
        self._task: asyncio.Task[None] | None = None
        self.viewers = 0
        self.wanted_until = 0.0
        self.last_id: str | None = None
        self.agents: dict[str, list[str]] = {}
        self.agents_read_at = -AGENTS_READ_S
        self.history: list[Plan] = []
        self.cost: dict[str, Any] = {}

    def price(self, before: Plan, after: Plan) -> float:
        """A switch's expected seconds, as the controller prices it."""
        from shared.policies.transitions import Structure, transition
        from shared.profiles import load_profile

        return transition(Structure.of(before), Structure.of(after), load_profile(self.settings.profile),
                          worker_start_s=self.settings.worker_start_s,
                          worker_start_each_s=self.settings.worker_start_each_s).seconds

    # Who looks.
    def touch(self) -> None:
        """Somebody looks: tick (again) until IDLE_S after the last look."""
        self.wanted_until = time.monotonic() + IDLE_S
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="dashboard")

    @property
    def wanted(self) -> bool:
        return not self.service.stopping.is_set() and (self.viewers > 0 or time.monotonic() < self.wanted_until)

    async def snapshot(self, timeout_s: float = 10.0) -> bytes:
        """The latest snapshot (JSON); the first look waits for the first tick."""
        self.touch()
        if not self.snapshot_json:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await self._fresh.wait()
        return self.snapshot_json

    async def frames(self) -> AsyncIterator[bytes]:
        """A viewer's stream: the latest snapshot, then each new one (a comment every KEEPALIVE_S when
        none comes), until the service stops. The caller counts the viewer (viewing)."""
        self.touch()
        sent = b""
        while not self.service.stopping.is_set():
            if self.frame and self.frame is not sent:
                sent = self.frame
                yield sent
            fresh = self._fresh
            try:
                async with asyncio.timeout(KEEPALIVE_S):
                    await fresh.wait()
            except TimeoutError:
                yield b": keep-alive\n\n"

    @contextlib.contextmanager
    def viewing(self) -> Iterator[None]:
        self.viewers += 1
        try:
            yield
        finally:
            self.viewers -= 1

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._wake()

    def _wake(self) -> None:
        """Wake every stream waiting for a snapshot; the next ones wait for the one after."""
        fresh, self._fresh = self._fresh, asyncio.Event()
        fresh.set()

    # The ticks.
    async def _run(self) -> None:
        if self.lookup is None:
            self.lookup = await asyncio.to_thread(fid_lookup, self.settings.profile)
        while self.wanted:
            started = time.monotonic()
            try:
                await self.tick()
            except (HadisError, OSError) as error:
                log.warning("dashboard_tick_failed", error=str(error))
                self.publish({"error": f"the dashboard could not read the fleet: {error}", "at": time.time()},
                             event=b"status")
            except Exception as error:  # noqa: BLE001 - a bad tick must not end the page's updates
                log.exception("dashboard_tick_failed", error=str(error))
            await asyncio.sleep(max(TICK_S - (time.monotonic() - started), 0.05))
        self._wake()  # the streams see the service stop (or nobody is left to see it)

    async def tick(self) -> None:
        """One tick: read, fold, publish (the module's docstring). `cost` says what it took: the store's
        and the broker's round trips, and the CPU of its computation (folding, counting, composing and
        serializing; the reads' waits are not CPU)."""
        started, calls, cpu, now = time.perf_counter(), [0], [0.0], time.time()
        depths_read = asyncio.create_task(self.depths())  # the broker's answers, meanwhile
        try:
            events, behind = await self.read_events(now, calls)
            with _clock(cpu):
                ended = self.fold.events(events)
            plan, workers = await self.read_fleet(calls)
            await self.read_ended(ended, plan, calls, cpu)
            depths = await depths_read
        finally:
            depths_read.cancel()  # nothing, once it is done
        with _clock(cpu):
            self.window.sampled(now, {tier: depths.get(tier, 0) for tier in ("light", "heavy")},
                                plan.r if plan else None, plan.d if plan else None)
            self.switches.follow(plan, now, workers)
            self.cost = {"store_round_trips": calls[0], "broker_round_trips": len(depths), "events": len(events),
                         "ended": len(ended), "viewers": self.viewers, "behind": behind,
                         "tick_ms": round((time.perf_counter() - started) * 1000, 2), "cpu_ms": self.cost.get("cpu_ms")}
            self.publish(self.compose(now, plan, workers, depths))
        self.cost["cpu_ms"] = round(cpu[0] * 1000, 2)  # shown in the next snapshot

    async def read_fleet(self, calls: list[int]) -> tuple[Plan | None, list[dict[str, Any]]]:
        """The plan (its history when its version moved), the agents (every AGENTS_READ_S) and the
        heartbeats of the planned and registered GPUs' workers."""
        store = self.service.store
        plan = await store.get_plan()
        if plan is not None and (not self.history or self.history[0].version != plan.version):
            self.history = await store.plan_history()
            calls[0] += 1
        if time.monotonic() - self.agents_read_at >= AGENTS_READ_S:
            self.agents, self.agents_read_at = await store.agents(), time.monotonic()
            calls[0] += 2  # at least a SCAN and an MGET (a SCAN of a large keyspace takes more)
        gpus = sorted(set(plan.assignment if plan else ()) | {gpu for owned in self.agents.values() for gpu in owned})
        calls[0] += 2  # the plan, the workers
        return plan, await store.workers_of(gpus)

    async def read_events(self, now: float, calls: list[int]) -> tuple[list, bool]:
        """The events since the last tick (a first tick: BACKFILL_S back), at most MAX_EVENTS_PER_TICK;
        True when more remain (behind)."""
        since = f"{int((now - BACKFILL_S) * 1000)}-0"
        last = since if self.last_id is None else max(self.last_id, since, key=_stream_order)
        events: list = []
        while len(events) < MAX_EVENTS_PER_TICK:
            chunk = await self.service.store.read_events(last, count=EVENT_CHUNK)
            calls[0] += 1
            if chunk:
                last = chunk[-1][0]
                events += chunk
            if len(chunk) < EVENT_CHUNK:
                self.last_id = last
                return events, False
        self.last_id = last
        return events, True

    async def read_ended(self, ended: list[feed.Ended], plan: Plan | None, calls: list[int], cpu: list[float]) -> None:
        """The records of the jobs that ended (one round trip), counted in the window; the newest listed."""
        if not ended:
            return
        listed = self.recent.newest(ended, time.monotonic())
        records, histories = await self.service.store.summaries([job.job_id for job in ended], feed.RECORD_FIELDS,
                                                                [job.job_id for job in listed])
        calls[0] += 1
        with _clock(cpu):
            pairs = fleet.pairs(self.history, plan)
            for job, fields in zip(ended, records, strict=True):
                self.window.finished(feed.finished(job, fields, pairs))
            for job, fields in zip(ended, records, strict=True):
                if job.job_id in histories:
                    self.recent.add(job, fields, histories[job.job_id])

    async def depths(self) -> dict[str, int]:
        """Jobs waiting in each work queue, by its short name (short_names)."""
        names = short_names(self.service.bus.queues)
        return {names.get(queue, queue): depth for queue, depth in (await self.service.bus.depths()).items()}

    def compose(self, now: float, plan: Plan | None, workers: list[dict], depths: dict[str, int]) -> dict[str, Any]:
        return {"at": now, "namespace": self.settings.namespace, "profile": self.settings.profile,
                "slo_s": self.settings.slo_s, "plan": fleet.plan_view(plan),
                "changes": fleet.changes(self.history, self.switches, CHANGES),
                "gpus": fleet.grid(plan, workers, self.agents), "queues": depths,
                "window": overall(self.window, now, self.lookup), "series": series(self.window, now, self.lookup),
                "recent": self.recent.view(), "cost": self.cost}

    def publish(self, snapshot: dict[str, Any], event: bytes = b"snapshot") -> None:
        data = orjson.dumps(snapshot, option=orjson.OPT_SERIALIZE_NUMPY)
        if event == b"snapshot":
            self.snapshot_json = data
        self.frame = b"event: " + event + b"\ndata: " + data + b"\n\n"
        self._wake()


@contextlib.contextmanager
def _clock(total: list[float]) -> Iterator[None]:
    """Adds the CPU time of the block (no await inside) to total[0]."""
    started = time.thread_time()
    try:
        yield
    finally:
        total[0] += time.thread_time() - started


def _stream_order(event_id: str) -> tuple[int, int]:
    milliseconds, _, sequence = event_id.partition("-")
    return int(milliseconds), int(sequence or 0)


def short_names(queues: Any) -> dict[str, str]:
    """The work queues' names on the page: requests, light, heavy, judge, and the batch class's
    requests.batch, light.batch, heavy.batch."""
    return {queues.requests: "requests", queues.tier(Tier.light): "light", queues.tier(Tier.heavy): "heavy",
            queues.judge: "judge", queues.requests_batch: "requests.batch",
            queues.batch(Tier.light): "light.batch", queues.batch(Tier.heavy): "heavy.batch"}
