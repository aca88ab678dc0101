"""Prometheus metrics: one registry per process, served over HTTP by `start_metrics_server`.

Every service exposes the same families; each fills the ones it owns:

    hadis_service_ready{service}               1 once the service consumes its queue (the health check reads it)
    hadis_queue_depth{queue}                   messages ready in a work queue (controller)
    hadis_demand_qps                           the controller's measured arrival rate (EWMA)
    hadis_routed_total{tier}                   jobs the router sent to each tier (router)
    hadis_routed_light_heavy_full_total        heavy by score, light by the heavy tier's room (router)
    hadis_routed_light_burst_total             heavy by score, light in a burst the plan's r was not for (router)
    hadis_judge_verdicts_total{model,verdict}  escalated | accepted | too_late (judge): the escalation rate
    hadis_batch_size{tier}                     images per generated batch (worker)
    hadis_batch_seconds{tier,model}            time to generate one batch (worker)
    hadis_job_latency_seconds{tier}            submit-to-done latency of finished jobs (worker, judge)
    hadis_jobs_finished_total{tier,state}      jobs that reached a terminal state (every service that writes one)
    hadis_slo_violations_total{tier,reason}    late | expired | failed (every service that writes a terminal state)
    hadis_cancelled_deliveries_total{tier,how} work a worker dropped for a cancelled job: refused (its claim),
                                               waiting (before its batch), interrupted (its batch stopped),
                                               discarded (its image, made in a batch that ran on)
    hadis_class_busy_seconds_total{tier,priority}  the model's busy time by service class (worker): the
                                               GPU-seconds each class took, a stopped batch's included
    hadis_batch_yields_total{tier}             batch-class batches paused or stopped at a step for interactive
                                               work (worker)
    hadis_batch_yield_lost_seconds_total{tier} the model time the stopped ones had run (lost, run again later;
                                               none for a paused one)
    hadis_carried_seconds{counter,priority}    what a worker's two counters above started from: its GPU's
                                               previous worker's totals (shared/busy_carry.py: a tier change
                                               does not reset a GPU's busy time; 0 after a kill)
    hadis_class_jobs_finished_total{priority,state}  jobs that reached a terminal state, by class (beside
                                               hadis_jobs_finished_total, which dashboards and rules read by tier)
    hadis_class_slo_violations_total{priority} done late, expired or failed, by class
    hadis_plan_version, hadis_plan_share{kind}, hadis_plan_batch_size{tier}   the plan this process applies
    hadis_plan_gpus{tier,model}                GPUs the plan gives each tier, and the tier's model
    hadis_plan_fid{light_model,heavy_model}    the plan's expected FID, when its configuration was profiled
    hadis_workers{tier,model}                  live workers (heartbeats) per tier and model (planning controller)
    hadis_agent_up{host}                       1: the agent registers; 0: it stopped without leaving (controller)
    hadis_dead_letters_parked_total{reason}    dead letters kept in <ns>.dead without a record (controller)
    hadis_store_memory_bytes{kind}             Redis memory: used | max (0: unbounded) (controller)
    hadis_batch_backlog{horizon}               batch jobs not ended, due within the horizon (seconds; "all": every
                                               one) (planning controller; shared/policies/classes.py)
    hadis_batch_reserved_gpus                  GPUs the plan in force reserves for batch work (they take it first)
    hadis_plan_batch_heavy                     the plan's share of batch jobs routed to the heavy tier
    hadis_gpu_memory_bytes{gpu,kind}           used | total per visible GPU, read from nvidia-smi where present
    hadis_api_requests_total{route,code,tenant}  HTTP requests answered (api); tenant "-" before a key is checked
    hadis_api_request_seconds{route}           time to answer (an images request includes its wait)
    hadis_api_jobs_accepted_total{tenant}      jobs the api published (202, or an images request's jobs)
    hadis_api_refused_total{tenant,reason}     auth | rate | quota | invalid | unavailable | busy
    hadis_webhook_attempts_total{result}       delivered | retry | failed (the webhook sender)
    hadis_webhook_delivered_seconds            from a job's end to its webhook delivered, every attempt included

The escalation rate is a ratio of counters, computed where it is read, e.g. in PromQL:
    sum(rate(hadis_judge_verdicts_total{verdict="escalated"}[1m])) / sum(rate(hadis_judge_verdicts_total[1m]))

The outcome series (jobs finished, SLO violations, routed, parked dead letters) exist from 0 as soon as
this module is imported: a counter born at its first increment hides that increment from rate() and
increase(), and the first violations after a start would page nobody. docker/prometheus/rules.yml
and docker/grafana/hadis.json read these families; docs/observability.md says what each means.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from shared.schemas import JobState, Plan

# Seconds: from interactive (sub-second) models to the 3,600 s SLO bound of docs/jobs.md.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 600, 1800, 3600)
BATCH_SECONDS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 40, 80, 160)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
NVIDIA_SMI_TIMEOUT_S = 2.0
NO_TIER = "none"  # a job that failed or expired before any tier took it

REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

SERVICE_READY = Gauge("hadis_service_ready", "1 once the service consumes its queue", ["service"],
                      registry=REGISTRY)
QUEUE_DEPTH = Gauge("hadis_queue_depth", "Messages ready in a work queue", ["queue"], registry=REGISTRY)
DEMAND = Gauge("hadis_demand_qps", "Arrival rate the controller measures (EWMA), jobs per second",
               registry=REGISTRY)
PLAN_SWITCH_SECONDS = Histogram("hadis_plan_switch_seconds", "From a plan that moves GPUs (tier or model) until "
                                "every moved GPU serves again", buckets=LATENCY_BUCKETS, registry=REGISTRY)
PLAN_SWITCH_DARK = Counter("hadis_plan_switch_dark_gpu_seconds", "GPU-seconds that served nothing while switching",
                           registry=REGISTRY)
ROUTED = Counter("hadis_routed", "Jobs routed to each tier", ["tier"], registry=REGISTRY)
HEAVY_FULL = Counter("hadis_routed_light_heavy_full", "Jobs the score sent to heavy that the router sent down the "
                     "light path: the heavy tier's share could not clear them by their deadline", registry=REGISTRY)
BURST_HELD = Counter("hadis_routed_light_burst", "Jobs the score sent to heavy that the router sent down the light "
                     "path: its arrivals of the last second exceeded the plan's burst_qps", registry=REGISTRY)
VERDICTS = ("escalated", "accepted", "too_late")
JUDGE_VERDICTS = Counter("hadis_judge_verdicts", "Judge decisions on light images", ["model", "verdict"],
                         registry=REGISTRY)
BATCH_SIZE = Histogram("hadis_batch_size", "Images per generated batch", ["tier"], buckets=BATCH_SIZE_BUCKETS,
                       registry=REGISTRY)
BATCH_SECONDS = Histogram("hadis_batch_seconds", "Seconds to generate one batch", ["tier", "model"],
                          buckets=BATCH_SECONDS_BUCKETS, registry=REGISTRY)
BATCH_OVERRUN = Counter("hadis_batch_overrun_seconds", "Seconds batches ended after the end their admission "
                        "estimated (what admission counts on to let a job in: a job admitted as in time ends late "
                        "when it exceeds the handoff margin)", ["tier", "model"], registry=REGISTRY)
MODEL_BUSY = Counter("hadis_model_busy_seconds", "Seconds the model spent generating (its share of wall time is "
                     "how busy the GPU was kept)", ["tier", "model"], registry=REGISTRY)
JOB_LATENCY = Histogram("hadis_job_latency_seconds", "Submit-to-done latency of finished jobs", ["tier"],
                        buckets=LATENCY_BUCKETS, registry=REGISTRY)
JOBS_FINISHED = Counter("hadis_jobs_finished", "Jobs that reached a terminal state", ["tier", "state"],
                        registry=REGISTRY)
SLO_VIOLATIONS = Counter("hadis_slo_violations", "Jobs done late, expired or failed", ["tier", "reason"],
                         registry=REGISTRY)
CANCELLED_DELIVERIES = Counter("hadis_cancelled_deliveries", "Work a worker dropped for cancelled jobs: refused, "
                               "waiting, interrupted, discarded (docs/jobs.md, Cancel)", ["tier", "how"],
                               registry=REGISTRY)
# The service classes (shared/policies/classes.py): new families beside the tier ones, not new labels on them.
PRIORITIES = ("interactive", "batch")
CLASS_BUSY = Counter("hadis_class_busy_seconds", "Seconds the model spent generating, by service class (a batch "
                     "stopped for interactive work included)", ["tier", "priority"], registry=REGISTRY)
BATCH_YIELDS = Counter("hadis_batch_yields", "Batch-class batches paused or stopped at a step for interactive work",
                       ["tier"], registry=REGISTRY)
BATCH_YIELD_LOST = Counter("hadis_batch_yield_lost_seconds", "Model seconds that stopped batch-class batches had "
                           "run (their jobs run again later)", ["tier"], registry=REGISTRY)
CLASS_JOBS_FINISHED = Counter("hadis_class_jobs_finished", "Jobs that reached a terminal state, by service class",
                              ["priority", "state"], registry=REGISTRY)
CLASS_SLO_VIOLATIONS = Counter("hadis_class_slo_violations", "Jobs done late, expired or failed, by service class",
                               ["priority"], registry=REGISTRY)
DEAD_LETTERS_PARKED = Counter("hadis_dead_letters_parked", "Dead letters the controller could not turn into a record "
                              "(kept in <ns>.dead)", ["reason"], registry=REGISTRY)
STORE_MEMORY = Gauge("hadis_store_memory_bytes", "Redis memory: used, and its maxmemory (0: unbounded)", ["kind"],
                     registry=REGISTRY)
API_REQUESTS = Counter("hadis_api_requests", "HTTP requests answered", ["route", "code", "tenant"],
                       registry=REGISTRY)
API_SECONDS = Histogram("hadis_api_request_seconds", "Seconds to answer an HTTP request", ["route"],
                        buckets=LATENCY_BUCKETS, registry=REGISTRY)
API_JOBS = Counter("hadis_api_jobs_accepted", "Jobs the api published", ["tenant"], registry=REGISTRY)
API_REFUSED = Counter("hadis_api_refused", "Requests the api refused, by reason", ["tenant", "reason"],
                      registry=REGISTRY)
INGRESS_DISTRUSTED = Counter(
    "hadis_ingress_distrusted", "Ingress claims the router did not believe: tenant (the body named a tenant its "
    "sender may not act for: replaced), job_id_taken (the body names a recorded job it is not: dropped)",
    ["reason"], registry=REGISTRY)
PLAN_VERSION = Gauge("hadis_plan_version", "Version of the plan this process applies", registry=REGISTRY)
PLAN_SHARE = Gauge("hadis_plan_share", "The plan's fractions: r (routed), d (escalated), heavy (h = r + (1-r)d)",
                   ["kind"], registry=REGISTRY)
PLAN_BATCH_SIZE = Gauge("hadis_plan_batch_size", "The plan's batch size per tier", ["tier"], registry=REGISTRY)
PLAN_GPUS = Gauge("hadis_plan_gpus", "GPUs the plan gives each tier, with the tier's model", ["tier", "model"],
                  registry=REGISTRY)
PLAN_FID = Gauge("hadis_plan_fid", "Expected FID of the plan's configuration (lower is better), when profiled",
                 ["light_model", "heavy_model"], registry=REGISTRY)
# The batch class's placement (shared/policies/classes.py), as the planning controller reads and plans it.
BATCH_BACKLOG = Gauge("hadis_batch_backlog", "Batch jobs not ended whose deadline is within the horizon (seconds; "
                      "all: every one)", ["horizon"], registry=REGISTRY)
BATCH_RESERVED_GPUS = Gauge("hadis_batch_reserved_gpus", "GPUs the plan reserves for batch work: their workers take "
                            "batch jobs first, because batch deadlines come near", registry=REGISTRY)
BATCH_MOVED = Counter("hadis_batch_moved_total", "Queued batch jobs the controller moved to this tier's batch queue, "
                      "so that the queues follow the batch placement (docs/classes.md)", ["tier"], registry=REGISTRY)
PLAN_BATCH_HEAVY = Gauge("hadis_plan_batch_heavy", "The plan's share of batch jobs routed to the heavy tier",
                         registry=REGISTRY)
WORKERS = Gauge("hadis_workers", "Live workers (their heartbeats) per tier and model, as the planning controller "
                "reads them", ["tier", "model"], registry=REGISTRY)
AGENT_UP = Gauge("hadis_agent_up", "1 while a host's agent registers; 0 once it stopped without leaving (its GPUs "
                 "stay in the plan for HADIS_GPU_ABSENT_S); gone after a clean departure or the grace",
                 ["host"], registry=REGISTRY)
WEBHOOK_ATTEMPTS = Counter("hadis_webhook_attempts", "Webhook delivery attempts, by what came of them: delivered, "
                           "retry (pending again) or failed (given up)", ["result"], registry=REGISTRY)
WEBHOOK_DELIVERED_SECONDS = Histogram("hadis_webhook_delivered_seconds", "From a job's end to its webhook delivered",
                                      buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 7200),
                                      registry=REGISTRY)
WEBHOOK_RESULTS = ("delivered", "retry", "failed")
TIERS = ("light", "heavy")
PARKED_REASONS = ("oversized", "no_job_id")  # the controller's own; others are the error's type name


@dataclass(frozen=True)
class GpuMemory:
    gpu: str
    used_bytes: int
    total_bytes: int


def parse_nvidia_smi(output: str) -> list[GpuMemory]:
    """Rows of `nvidia-smi --query-gpu=index,memory.used,memory.total --format=csv,noheader,nounits`
    (MiB); rows it cannot read (e.g. "[N/A]" on some virtual GPUs) are left out."""
    gpus = []
    for line in output.splitlines():
        parts = [part.strip() for part in line.split(",")]
        if len(parts) != 3:
            continue
        try:
            used, total = int(parts[1]), int(parts[2])
        except ValueError:
            continue
        gpus.append(GpuMemory(parts[0], used * 2**20, total * 2**20))
    return gpus


class GpuMemoryCollector(Collector):
    """Reads device memory at scrape time from nvidia-smi, so no metric module imports torch; on a
    machine without nvidia-smi (CPU, emulated GPUs) the family is empty."""

    def __init__(self, command: str = "nvidia-smi") -> None:
        self.command = command

    def query(self) -> list[GpuMemory]:
        path = shutil.which(self.command)
        if path is None:
            return []
        try:
            result = subprocess.run(
                [path, "--query-gpu=index,memory.used,memory.total", "--format=csv,noheader,nounits"],
                capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S, check=True,
            )
        except (subprocess.SubprocessError, OSError):
            return []
        return parse_nvidia_smi(result.stdout)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("hadis_gpu_memory_bytes", "GPU memory by device (nvidia-smi)",
                                   labels=["gpu", "kind"])
        for gpu in self.query():
            family.add_metric([gpu.gpu, "used"], gpu.used_bytes)
            family.add_metric([gpu.gpu, "total"], gpu.total_bytes)
        yield family


REGISTRY.register(GpuMemoryCollector())


def start_metrics_server(port: int, addr: str = "0.0.0.0") -> WSGIServer:
    """Serve REGISTRY at http://addr:port/metrics from a daemon thread (port 0: any free port,
    read it from the returned server's `server_port`)."""
    server, _thread = start_http_server(port, addr, registry=REGISTRY)
    return server


def mark_ready(service: str, ready: bool = True) -> None:
    SERVICE_READY.labels(service).set(1 if ready else 0)


def observe_plan(plan: Plan) -> None:
    PLAN_VERSION.set(plan.version)
    PLAN_SHARE.labels("r").set(plan.r)
    PLAN_SHARE.labels("d").set(plan.d)
    PLAN_SHARE.labels("heavy").set(plan.heavy_share)
    PLAN_BATCH_SIZE.labels("light").set(plan.light_batch)
    PLAN_BATCH_SIZE.labels("heavy").set(plan.heavy_batch)
    set_exactly(PLAN_GPUS, {("light", plan.light_model): plan.light_gpus, ("heavy", plan.heavy_model): plan.heavy_gpus})
    set_exactly(PLAN_FID, {} if plan.fid is None else {(plan.light_model, plan.heavy_model): plan.fid})


def observe_batch_placement(due: Mapping[str, int], reserved_gpus: int, batch_heavy: float) -> None:
    """The batch backlog by horizon (label: seconds, or "all") and the placement of the plan in force."""
    set_exactly(BATCH_BACKLOG, {(horizon,): count for horizon, count in due.items()})
    BATCH_RESERVED_GPUS.set(reserved_gpus)
    PLAN_BATCH_HEAVY.set(batch_heavy)


def forget_batch_placement() -> None:
    """A controller that stops planning drops its view of the batch class (as forget_cluster_view)."""
    set_exactly(BATCH_BACKLOG, {})


_LABELS_SET: dict[int, set[tuple[str, ...]]] = {}  # id(gauge) -> the label values set_exactly gave it last


def set_exactly(gauge: Gauge, values: Mapping[tuple[str, ...], float]) -> None:
    """Give `gauge` these children and no other: a child that set_exactly set before and is not in
    `values` is removed (a model swapped out, a host gone), so no stale series stays behind."""
    for labels, value in values.items():
        gauge.labels(*labels).set(value)
    before = _LABELS_SET.get(id(gauge), set())
    for labels in before - set(values):
        gauge.remove(*labels)
    _LABELS_SET[id(gauge)] = set(values)


def observe_workers(workers: Iterable[Mapping[str, object]], models: Mapping[str, str]) -> None:
    """Live workers per (tier, model) from their heartbeat records; each tier is there, 0 with the
    plan's model (`models`: tier -> model) when no worker serves it."""
    counts: dict[tuple[str, ...], float] = dict.fromkeys(models.items(), 0)
    for record in workers:
        key = (str(record.get("tier")), str(record.get("model")))
        counts[key] = counts.get(key, 0) + 1
    set_exactly(WORKERS, counts)


def observe_agents(up: Mapping[str, bool]) -> None:
    """host -> registering now (True) or stopped without leaving (False); hosts not given are gone."""
    set_exactly(AGENT_UP, {(host,): 1 if live else 0 for host, live in up.items()})


def forget_cluster_view() -> None:
    """A controller that stops planning (another holds the lease) no longer reports the cluster:
    its last reading would go stale beside the planning controller's."""
    QUEUE_DEPTH.clear()
    set_exactly(WORKERS, {})
    set_exactly(AGENT_UP, {})


def observe_queue_depths(depths: Mapping[str, int]) -> None:
    for queue, depth in depths.items():
        QUEUE_DEPTH.labels(queue).set(depth)


def observe_demand(rate_qps: float) -> None:
    DEMAND.set(rate_qps)


def observe_plan_switch(realised_s: float, dark_gpu_s: float) -> None:
    PLAN_SWITCH_SECONDS.observe(realised_s)
    PLAN_SWITCH_DARK.inc(dark_gpu_s)


def observe_routed(tier: str) -> None:
    ROUTED.labels(tier).inc()


def observe_distrusted(reason: str) -> None:
    INGRESS_DISTRUSTED.labels(reason).inc()


def observe_heavy_full() -> None:
    HEAVY_FULL.inc()


def observe_burst_held() -> None:
    BURST_HELD.inc()


def observe_verdict(model: str, verdict: str) -> None:
    """verdict: "escalated", "accepted", or "too_late" (the judge wanted to escalate, the deadline had passed).
    Every verdict's series of the model exists from its first verdict on, at 0: a dashboard's escalation
    rate under a plan that escalates nothing is 0, not "no data"."""
    for each in VERDICTS:
        JUDGE_VERDICTS.labels(model, each)
    JUDGE_VERDICTS.labels(model, verdict).inc()


def observe_batch(tier: str, model: str, size: int, seconds: float, busy_s: float) -> None:
    """`seconds`: the batch as the worker saw it; `busy_s`: the model's own time on it."""
    BATCH_SIZE.labels(tier).observe(size)
    BATCH_SECONDS.labels(tier, model).observe(seconds)
    MODEL_BUSY.labels(tier, model).inc(busy_s)


def observe_batch_overrun(tier: str, model: str, seconds: float) -> None:
    BATCH_OVERRUN.labels(tier, model).inc(seconds)


def observe_done(tier: str, submitted_at: float, deadline: float, finished_at: float | None = None,
                 priority: str = "interactive") -> None:
    """A job finished with an image: its latency, and an SLO violation when it was late. `priority`:
    its service class (a caller that does not say: interactive, the default class)."""
    finished_at = time.time() if finished_at is None else finished_at
    JOB_LATENCY.labels(tier).observe(max(finished_at - submitted_at, 0.0))
    JOBS_FINISHED.labels(tier, JobState.done.value).inc()
    CLASS_JOBS_FINISHED.labels(priority, JobState.done.value).inc()
    if finished_at > deadline:
        SLO_VIOLATIONS.labels(tier, "late").inc()
        CLASS_SLO_VIOLATIONS.labels(priority).inc()


def observe_unserved(state: JobState, tier: str | None = None, priority: str = "interactive") -> None:
    """A job that ended `failed` or `expired`: always an SLO violation."""
    tier = tier or NO_TIER
    JOBS_FINISHED.labels(tier, state.value).inc()
    SLO_VIOLATIONS.labels(tier, state.value).inc()
    CLASS_JOBS_FINISHED.labels(priority, state.value).inc()
    CLASS_SLO_VIOLATIONS.labels(priority).inc()


def observe_cancelled(tier: str | None = None, priority: str = "interactive") -> None:
    """A job its client cancelled: finished, `cancelled`, and never an SLO violation (nobody waits
    for it any more); the reports leave it out of served and violated alike."""
    JOBS_FINISHED.labels(tier or NO_TIER, JobState.cancelled.value).inc()
    CLASS_JOBS_FINISHED.labels(priority, JobState.cancelled.value).inc()


def observe_class_busy(tier: str, priority: str, seconds: float) -> None:
    """The model's time on a batch of one service class (GPU-seconds by class)."""
    CLASS_BUSY.labels(tier, priority).inc(seconds)


def observe_batch_yield(tier: str, lost_s: float) -> None:
    """A batch-class batch stopped at a step for interactive work, and the model time it had run."""
    BATCH_YIELDS.labels(tier).inc()
    BATCH_YIELD_LOST.labels(tier).inc(lost_s)


def observe_cancelled_delivery(tier: str, how: str, count: int = 1) -> None:
    CANCELLED_DELIVERIES.labels(tier, how).inc(count)


def observe_parked_dead_letter(reason: str) -> None:
    DEAD_LETTERS_PARKED.labels(reason=reason).inc()


def observe_store_memory(used: int, maxmemory: int) -> None:
    STORE_MEMORY.labels(kind="used").set(used)
    STORE_MEMORY.labels(kind="max").set(maxmemory)


def observe_api_request(route: str, code: int, tenant: str, seconds: float) -> None:
    API_REQUESTS.labels(route, str(code), tenant).inc()
    API_SECONDS.labels(route).observe(seconds)


def observe_api_accepted(tenant: str, jobs: int) -> None:
    API_JOBS.labels(tenant).inc(jobs)


def observe_api_refused(tenant: str, reason: str) -> None:
    API_REFUSED.labels(tenant, reason).inc()


def observe_webhook_attempt(result: str, since_end_s: float | None = None) -> None:
    """One webhook attempt's result (WEBHOOK_RESULTS); a delivered one with its time since the job ended."""
    WEBHOOK_ATTEMPTS.labels(result).inc()
    if result == "delivered" and since_end_s is not None:
        WEBHOOK_DELIVERED_SECONDS.observe(max(since_end_s, 0.0))


def zero_outcomes() -> None:
    """Every outcome series a job can reach, at 0 (the module docstring says why)."""
    for tier in TIERS:
        JOBS_FINISHED.labels(tier, JobState.done.value)
        SLO_VIOLATIONS.labels(tier, "late")
        ROUTED.labels(tier)
        JOB_LATENCY.labels(tier)
    for tier in (*TIERS, NO_TIER):
        for state in (JobState.failed, JobState.expired):
            JOBS_FINISHED.labels(tier, state.value)
            SLO_VIOLATIONS.labels(tier, state.value)
        JOBS_FINISHED.labels(tier, JobState.cancelled.value)  # never a violation
    for priority in PRIORITIES:
        CLASS_SLO_VIOLATIONS.labels(priority)
        for state in (JobState.done, JobState.failed, JobState.expired, JobState.cancelled):
            CLASS_JOBS_FINISHED.labels(priority, state.value)
    for tier in TIERS:  # a dashboard's share of GPU-seconds by class, and its yields, read 0, not nothing
        BATCH_YIELDS.labels(tier)
        BATCH_YIELD_LOST.labels(tier)
        for priority in PRIORITIES:
            CLASS_BUSY.labels(tier, priority)
    for reason in PARKED_REASONS:
        DEAD_LETTERS_PARKED.labels(reason)
    for result in WEBHOOK_RESULTS:
        WEBHOOK_ATTEMPTS.labels(result)


zero_outcomes()
