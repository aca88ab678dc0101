"""`hadis experiment`: a trace replayed through the real services.

The controller, router, judge and an agent with N emulated GPUs run as processes against the
local RabbitMQ and Redis, in a namespace of their own (every queue and key prefixed), with the
emulated model and judge. The trace is submitted at its own pace (each job's clock starts at its
scheduled arrival, so a client that falls behind counts against the system); the runner then
waits for every job to end or for the last deadline plus a grace period, reads every record,
tears the services down, deletes the namespace and writes the report.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from shared.client import Client
from shared.experiments import class_runner
from shared.experiments.classes_sim import BatchLoad, ClassRun, PlacementEvent
from shared.experiments.report import JobOutcome, PlanEvent, interactive_fields
from shared.experiments.trace import Trace
from shared.logging import get_logger
from shared.schemas import Job, JobRecord, Plan
from shared.settings import Settings
from shared.supervisor import STOP_TIMEOUT_S, Child, stop_all

log = get_logger(__name__)

SERVICES = ("controller", "router", "judge", "agent")
READY_TIMEOUT_S = 120.0
DELETE_TIMEOUT_S = 30.0  # the namespace's queues, exchanges and keys, and the client's close, after the stop
PLAN_POLL_S = 0.25
RECORD_CHUNK = 500
MISSED_MAX = 500  # jobs written to missed.json (a collapsed run misses thousands; the first show why)


def new_namespace() -> str:
    return f"exp-{uuid.uuid4().hex[:8]}"


@dataclass
class PlanLog:
    """Every plan version the controller published, with its time on the trace clock: `events`
    the versions whose interactive fields changed (a version that moved only the batch placement is
    no plan change, as in the simulator), `placements` those whose batch placement did."""

    started_at: float
    by_version: dict[int, Plan] = field(default_factory=dict)
    events: list[PlanEvent] = field(default_factory=list)
    placements: list[PlacementEvent] = field(default_factory=list)
    backlog: Callable[[], int] = lambda: 0  # the batch jobs submitted and not ended, when a placement is seen

    def at_version(self, version: int | None) -> Plan | None:
        """The plan of that version, or the newest seen before it (one replaced within a poll)."""
        if version is None:
            return None
        seen = [v for v in self.by_version if v <= version]
        return self.by_version[max(seen)] if seen else None

    def observe(self, plan: Plan | None, now: float) -> None:
        if plan is None or plan.version in self.by_version:
            return
        before = self.by_version[max(self.by_version)] if self.by_version else None
        self.by_version[plan.version] = plan
        t_s = max(now - self.started_at, 0.0)
        placed = before is None or (before.batch_heavy, before.batch_first) != (plan.batch_heavy, plan.batch_first)
        if before is None or interactive_fields(before) != interactive_fields(plan):  # not a placement or guard alone
            self.events.append(PlanEvent.of(t_s, plan))
        if placed:
            self.placements.append(PlacementEvent(t_s, plan.batch_heavy, len(plan.batch_first), self.backlog(),
                                                  plan.reason))


class Progress:
    """One status line on stderr: trace time, submitted and ended jobs."""

    def __init__(self, total: int, duration_s: float, label: str) -> None:
        self.total, self.duration_s, self.label = total, duration_s, label
        self.submitted = self.ended = 0
        self.last = 0.0
        self.tty = sys.stderr.isatty()

    def show(self, trace_s: float, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < (0.5 if self.tty else 15.0):
            return
        self.last = now
        share = min(trace_s / self.duration_s, 1.0) if self.duration_s else 1.0
        bar = "#" * int(share * 30)
        line = (f"{self.label} [{bar:<30}] {trace_s:6.0f}/{self.duration_s:.0f} s  "
                f"submitted {self.submitted}/{self.total}  ended {self.ended}")
        sys.stderr.write(("\r" + line) if self.tty else (line + "\n"))
        sys.stderr.flush()

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\n")


class Experiment:
    def __init__(self, settings: Settings, trace: Trace, out_dir: Path, grace_s: float = 30.0,
                 batch: BatchLoad | None = None) -> None:
        self.settings = settings
        self.trace = trace
        self.out_dir = out_dir
        self.grace_s = grace_s
        self.job_ids = [f"{settings.namespace}-{i}" for i in range(len(trace))]
        # A batch backlog beside the trace (docs/classes.md): its jobs, and the agent's metrics port
        # (its workers' follow it), where the workers' busy time by class is read.
        self.batch = batch if batch is not None and batch.jobs > 0 else None
        self.batch_ids = [f"{settings.namespace}-batch-{i}" for i in range(self.batch.jobs)] if self.batch else []
        self.metrics_port = class_runner.free_port_base(len(settings.owned_gpus()) + 1) if self.batch else None
        self.class_run: ClassRun | None = None  # the run's classes, once replayed with a batch backlog
        self.children = [Child(name, f"services.{name}", self.env_for(name), log_path=out_dir / "logs" / f"{name}.log")
                         for name in SERVICES]

    def env_for(self, service: str) -> dict[str, str]:
        """The run's settings; the controller logs at info, so that every plan and every switch with
        its realised cost (plan_switch, plan_switch_done) is in logs/controller.log."""
        env = self.settings.as_env()
        if service == "controller":
            env["HADIS_LOG_LEVEL"] = "info"
        if service == "agent" and self.metrics_port is not None:
            env["HADIS_METRICS_PORT"] = str(self.metrics_port)
        return env

    async def run(self) -> tuple[list[JobOutcome], list[PlanEvent], dict]:
        """Start the services, replay, and whatever happens stop them and delete the namespace: a
        SIGTERM (a `kill`, a CI timeout) cancels the run as Ctrl-C does. Killed without it, a run
        left its services serving an orphaned namespace, and every later run on the machine
        shared its CPUs with them."""
        (self.out_dir / "logs").mkdir(parents=True, exist_ok=True)
        run_task = asyncio.current_task()
        assert run_task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, run_task.cancel)
        client = await Client.open(self.settings)
        try:
            for child in self.children:
                child.start()
            ready_s = await self.wait_ready(client)
            return await self.replay(client, ready_s)
        finally:
            await self.tear_down(client)

    async def tear_down(self, client: Client) -> None:
        """Stop the services, then delete the namespace, each step within its bound and logged, so
        that a run that does not exit says which step it waits on. The stop runs in a thread: the
        loop goes on serving the broker's heartbeats through the services' STOP_TIMEOUT_S. A second
        SIGTERM is logged and ignored, since cancelling the tear-down would orphan the services or
        the namespace it exists to remove."""
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, lambda: log.warning("sigterm_ignored_while_tearing_down"))
        started = time.monotonic()
        try:
            log.info("services_stopping", run=self.settings.namespace, services=len(self.children),
                     bound_s=STOP_TIMEOUT_S)
            await asyncio.to_thread(stop_all, self.children)
            log.info("services_stopped", took_s=round(time.monotonic() - started, 2))
            await asyncio.wait_for(self.delete_namespace(client), DELETE_TIMEOUT_S)
            log.info("namespace_deleted", took_s=round(time.monotonic() - started, 2))
        except TimeoutError:
            log.error("namespace_not_deleted", run=self.settings.namespace, bound_s=DELETE_TIMEOUT_S,
                      hint="its queues and keys start with the namespace; delete them by hand")
        finally:
            loop.remove_signal_handler(signal.SIGTERM)

    async def delete_namespace(self, client: Client) -> None:
        await client.delete_namespace()
        await client.close()

    async def wait_ready(self, client: Client) -> float:
        """Until the first plan's workers all report ready: the replay starts on a serving system."""
        started = time.monotonic()
        while time.monotonic() - started < READY_TIMEOUT_S:
            plan = await client.store.get_plan()
            if plan is not None and plan.assignment:
                workers = await client.store.workers()
                if len(workers) >= len(plan.assignment):
                    return time.monotonic() - started
            for child in self.children:
                process = child.process  # started in run()
                if process is not None and process.poll() is not None:
                    raise RuntimeError(f"service {child.name} exited with {process.returncode}; "
                                       f"see {child.log_path}")
            await asyncio.sleep(0.25)
        raise TimeoutError(f"the workers were not ready within {READY_TIMEOUT_S:.0f} s; see {self.out_dir}/logs")

    async def replay(self, client: Client, ready_s: float) -> tuple[list[JobOutcome], list[PlanEvent], dict]:
        since_id = await client.store.last_event_id()
        started_at = time.time() + 0.5
        plans = PlanLog(started_at)
        progress = Progress(len(self.trace) + len(self.batch_ids), self.trace.duration_s,
                            f"{self.settings.controller_policy}")
        ended: set[str] = set()
        batch = self.batch_side(started_at, plans, ended)
        watching = asyncio.create_task(self.watch(client, plans, progress, since_id, ended))
        try:
            if batch is not None:
                await batch.start(progress)
            lags = await self.submit_all(client, started_at, progress)
            await self.wait_ended(ended, started_at, progress, batch)
            if batch is not None:
                await batch.stop()
        finally:
            watching.cancel()
            if batch is not None:
                await batch.close()
        records = await self.read_records(client, self.job_ids)
        self.write_job_lists(records, started_at)
        outcomes = [self.outcome(record, i, started_at, plans) for i, record in enumerate(records)]
        lags.sort()
        notes = {"namespace": self.settings.namespace, "workers_ready_s": round(ready_s, 2),
                 "submit_lag_p99_s": round(lags[int(0.99 * (len(lags) - 1))], 4) if lags else None,
                 "plan_period_s": self.settings.plan_period_s, "plan_min_dwell_s": self.settings.plan_min_dwell_s}
        if batch is not None:
            self.class_run = batch.finish(await self.read_records(client, self.batch_ids), outcomes, plans.events,
                                          plans.placements, self.out_dir)
            notes.update(batch.notes())
        return outcomes, plans.events, notes

    def batch_side(self, started_at: float, plans: PlanLog, ended: set[str]) -> class_runner.BatchSide | None:
        """The batch backlog's part of the run; the plan log counts its open jobs at each placement."""
        if self.batch is None or self.metrics_port is None:
            return None
        side = class_runner.BatchSide(self.settings, self.batch, self.batch_ids, self.metrics_port, started_at)
        plans.backlog = lambda: side.submitted - sum(job_id in ended for job_id in self.batch_ids)
        return side

    async def wait_ended(self, ended: set[str], started_at: float, progress: Progress,
                         batch: class_runner.BatchSide | None) -> None:
        """Until every job ended, or the last deadline (the trace's, or the backlog's) plus the grace."""
        give_up_at = started_at + self.trace.duration_s + self.settings.slo_s + self.grace_s
        if self.batch is not None:
            give_up_at = max(give_up_at, started_at + self.batch.at_s + self.batch.slo_s + self.grace_s)
        total = len(self.job_ids) + len(self.batch_ids)
        while len(ended) < total and time.time() < give_up_at:
            if batch is not None:
                batch.check()
            progress.show(time.time() - started_at)
            await asyncio.sleep(0.5)
        progress.show(time.time() - started_at, force=True)
        progress.close()

    async def submit_all(self, client: Client, started_at: float, progress: Progress) -> list[float]:
        """Each job at its arrival time; one behind schedule goes at once, stamped with its
        scheduled time. Returns how late each submission was."""
        lags = []
        for i, job_id in enumerate(self.job_ids):
            scheduled = started_at + float(self.trace.arrival_s[i])
            delay = scheduled - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            job = Job(job_id=job_id, prompt=self.trace.prompt(i), seed=i, slo_s=self.settings.slo_s,
                      submitted_at=scheduled, metadata={"trace_index": i})
            await client.submit(job)
            lags.append(max(time.time() - scheduled, 0.0))
            progress.submitted += 1
            progress.show(time.time() - started_at)
        return lags

    async def watch(self, client: Client, plans: PlanLog, progress: Progress, since_id: str, ended: set[str]) -> None:
        """Follow the plan and the event stream (terminal states) while the trace runs."""
        ours, last_id, last_plan_poll = set(self.job_ids) | set(self.batch_ids), since_id, 0.0
        while True:
            if time.monotonic() - last_plan_poll >= PLAN_POLL_S:
                plans.observe(await client.store.get_plan(), time.time())
                last_plan_poll = time.monotonic()
            events = await client.store.read_events(last_id, count=5000, block_ms=int(PLAN_POLL_S * 1000))
            for event_id, event in events:
                last_id = event_id  # the next read starts after it
                if event["job_id"] in ours and event["state"] in ("done", "failed", "expired"):
                    ended.add(event["job_id"])
            progress.ended = len(ended)

    def write_job_lists(self, records: list[JobRecord | None], started_at: float) -> None:
        """The jobs not terminal when the run gave up (the report counts them lost), with their
        records, to unfinished.json; and the first MISSED_MAX that missed their SLO (done late, or
        shed), with where their time went, to missed.json. The namespace is deleted after the run,
        and these are what a reader of a run with lost > 0 or violations needs first."""
        unfinished: list[dict] = []
        missed: list[dict] = []
        for index, (job_id, record) in enumerate(zip(self.job_ids, records, strict=True)):
            if record is None or not record.state.terminal:
                unfinished.append(self.described(index, job_id, record, started_at))
            elif len(missed) < MISSED_MAX and self.missed(index, record, started_at):
                missed.append(self.described(index, job_id, record, started_at))
        for name, jobs in (("unfinished.json", unfinished), ("missed.json", missed)):
            if jobs:
                (self.out_dir / name).write_bytes(orjson.dumps(jobs, option=orjson.OPT_INDENT_2))

    def missed(self, index: int, record: JobRecord, started_at: float) -> bool:
        """Shed, failed, or done after its SLO: the report's own rule (JobOutcome.within_slo)."""
        outcome = JobOutcome(arrival_s=float(self.trace.arrival_s[index]), state=record.state.value,
                             end_s=record.history[-1].at - started_at, slo_s=self.settings.slo_s)
        return not outcome.within_slo

    def described(self, index: int, job_id: str, record: JobRecord | None, started_at: float) -> dict:
        return {"job_id": job_id, "trace_index": index, "arrival_s": float(self.trace.arrival_s[index]),
                "record": None if record is None else record.model_dump(mode="json"),
                "history_s": None if record is None else
                [(step.state.value, round(step.at - started_at, 3)) for step in record.history]}

    async def read_records(self, client: Client, job_ids: list[str]) -> list[JobRecord | None]:
        records: list[JobRecord | None] = []
        for start in range(0, len(job_ids), RECORD_CHUNK):
            chunk = job_ids[start:start + RECORD_CHUNK]
            records += await asyncio.gather(*(client.status(job_id) for job_id in chunk))
        return records

    def outcome(self, record: JobRecord | None, index: int, started_at: float, plans: PlanLog) -> JobOutcome:
        arrival = float(self.trace.arrival_s[index])
        if record is None or not record.state.terminal:
            return JobOutcome(arrival_s=arrival, state="lost", end_s=None, slo_s=self.settings.slo_s)
        plan = plans.at_version(record.plan_version)
        tier = record.tier.value if record.tier else None
        return JobOutcome(arrival_s=arrival, state=record.state.value, end_s=record.history[-1].at - started_at,
                          slo_s=self.settings.slo_s, light_model=plan.light_model if plan else None,
                          heavy_model=plan.heavy_model if plan else None, tier=tier,
                          routed_heavy=tier == "heavy" and not record.escalated, escalated=record.escalated)


def experiment_settings(base: Settings, *, policy: str, profile: str, gpus: int, slo_s: float,
                        **overrides) -> Settings:
    """The services' settings for one run: emulated models, its own namespace and host name."""
    namespace = new_namespace()
    fields = {**base.model_dump(), "namespace": namespace, "host": namespace, "backend": "emulated",
              "judge_backend": "emulated", "router": "rule", "profile": profile, "slo_s": slo_s,
              "controller_policy": policy, "emulated_gpus": gpus, "gpus": "", "log_format": "json",
              "log_level": "warning", "metrics_port": None, **overrides}
    return Settings(**fields)
