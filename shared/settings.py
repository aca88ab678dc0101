"""All configuration, from environment variables prefixed HADIS_ (or a .env file),
validated once at start-up: a bad value stops the service before it consumes."""

from __future__ import annotations

import os
import socket
from functools import lru_cache
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.schemas import Plan, Tier

# Backends whose model runs in a process of its own under HADIS_MODEL_PROCESS=auto: their Python
# would otherwise share the worker's interpreter lock (shared/backends/model_process.py says why).
MODEL_PROCESS_BY_DEFAULT = ("tiny", "diffusers")


def parse_cpu_list(text: str) -> frozenset[int]:
    """A CPU list as taskset and cpuset write it: "3", "0-3", "0,2,4-5"."""
    cpus: set[int] = set()
    for part in text.split(","):
        first, dash, last = part.partition("-")
        if not first.isdigit() or (dash and not last.isdigit()):
            raise ValueError(f"{text!r} is not a CPU list such as 0-3 or 2,3")
        low, high = int(first), int(last or first)
        if high < low:
            raise ValueError(f"CPU range {part!r} runs backwards")
        cpus.update(range(low, high + 1))
    return frozenset(cpus)


class ConnectionSettings(BaseModel):
    """The outside systems: RabbitMQ, Redis (a server or Sentinels), and the namespace that
    isolates one deployment's queues and keys from another's."""

    amqp_url: SecretStr = SecretStr("amqp://guest:guest@127.0.0.1:5672/")
    redis_url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    redis_sentinels: str = Field(
        default="", pattern=r"^([A-Za-z0-9.-]+:[0-9]{1,5}(,[A-Za-z0-9.-]+:[0-9]{1,5})*)?$",
        description="host:port,... of Redis Sentinels: the store asks them for the primary of "
                    "HADIS_REDIS_SENTINEL_MASTER and follows a failover (HADIS_REDIS_URL then gives only the "
                    "password and the database); empty: HADIS_REDIS_URL is the server.")
    redis_sentinel_master: str = Field(default="hadis", pattern=r"^[A-Za-z0-9._-]{1,64}$")
    redis_replicas_acked: int = Field(
        default=0, ge=0, le=16,
        description="Terminal writes wait (WAIT) for this many replicas to have them before they count as "
                    "done: with replication a failover then cannot lose a finished job's record.")
    redis_replicas_wait_ms: int = Field(default=1000, ge=1, le=60_000,
                                        description="The longest a terminal write waits for its replicas.")
    namespace: str = Field(default="hadis", pattern=r"^[a-z][a-z0-9_-]{0,31}$",
                           description="Prefix of every queue and Redis key: isolates experiments.")


class ModelSettings(BaseModel):
    """The models a worker and the judge run, the profile that prices them, and where they run
    (fault injection included: it acts on the model calls)."""

    backend: Literal["tiny", "emulated", "diffusers"] = "tiny"
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = Field(
        default="auto", description="diffusers weights: auto = fp16 on CUDA, fp32 on the CPU.")
    judge_backend: Literal["clip", "clipscore", "emulated"] = "clip"
    router: Literal["rule", "learned"] = Field(default="rule", description="The paper's rule score or the learned one.")
    clip_checkpoint: str | None = Field(default=None, description="A local open_clip checkpoint for the judges.")
    profile: str = "tiny-cpu"
    device: str = "cpu"
    time_scale: float = Field(default=1.0, ge=0.0, description="Multiplies emulated latencies.")
    emulated_fail_pattern: str | None = Field(
        default=None, max_length=200, description="Fault injection: the emulated model raises on matching prompts.")
    crash_at: str = Field(default="", max_length=500,
                          description="Fault injection: exit at these named crash points (shared/crashpoints.py).")
    model_process: Literal["auto", "separate", "inline"] = Field(
        default="auto", description="Run the worker's model in a process of its own (auto: for tiny and diffusers).")
    model_cpus: str = Field(
        default="", max_length=200,
        description="CPUs the model process runs on (0-3, 2,3); empty: any. Keeps serving work off the model's cores.")
    model_load_timeout_s: float = Field(default=3600.0, gt=0, le=86_400,
                                        description="Bound on loading a model (a first download included).")
    generate_timeout_s: float = Field(default=600.0, gt=0, le=86_400,
                                      description="Bound on one batch in the model process; then it is killed.")
    clip_arch: str = "ViT-B-32"
    judge_head_path: str | None = None


class FleetSettings(BaseModel):
    """Workers and the agent that starts them: which tier and GPU a worker serves, and which
    GPUs (real or emulated) this host's agent owns."""

    tier: Tier = Tier.light
    gpu: str = Field(default="cpu0", description="The GPU (or emulated GPU) this worker owns.")
    worker_instance: str = Field(default="", pattern=r"^[0-9a-f]{0,32}$",
                                 description="Set by the agent for each worker it starts (unique per start; "
                                             "see shared.store.owner_id); empty: the worker makes one.")
    busy_carry_file: str = Field(default="", max_length=4096,
                                 description="Set by the agent for each worker: where a worker leaves its busy-time "
                                             "counters when it ends and the next one on its GPU takes them from "
                                             "(shared/busy_carry.py); empty: none.")
    batch_wait_ms: int = Field(default=20, ge=0, le=10_000, description="Longest wait to fill a batch.")

    # The agent: the GPUs of this host (CUDA ids "0,1,...") or, without GPUs, emulated ones.
    host: str = Field(default_factory=socket.gethostname)
    gpus: str = Field(default="", pattern=r"^[0-9,]*$", description="CUDA device ids this host's agent owns.")
    emulated_gpus: int = Field(default=2, ge=0, le=4096, description="Emulated GPUs when HADIS_GPUS is empty.")
    heartbeat_s: float = Field(default=2.0, gt=0, le=60, description="Agents and workers renew their records.")


class ControllerSettings(BaseModel):
    """The controller's planning: its policy, how it reads demand and bursts, and what a change
    of plan must be worth (docs/planner.md)."""

    controller_policy: Literal["static", "hadis", "hadis-paper", "router-only", "disc-only", "diffserve", "proteus",
                               "infaas-acc", "clipper-light", "clipper-heavy", "planned-static"] = Field(
        default="static", description="static, ours (hadis), or a baseline (docs/experiments.md).")
    static_demand_qps: float | None = Field(
        default=None, ge=0,
        description="planned-static: the one demand (qps) the planner plans for, once; the plan never changes "
                    "(a baseline: `hadis simulate --policy best-static` sweeps it).")
    plan_period_s: float = Field(default=10.0, gt=0, le=3600, description="How often the controller re-plans.")
    plan_min_dwell_s: float = Field(default=30.0, ge=0, description="Least time between two planned changes.")
    demand_halflife_s: float = Field(default=10.0, gt=0, description="Half-life of the arrival-rate EWMA.")
    demand_margin: float = Field(default=0.1, ge=0, le=10, description="Plan for demand x (1 + margin).")
    demand_hold_s: float | None = Field(
        default=None, gt=0, le=3600,
        description="hadis: a rise in arrivals counts as demand once it has lasted this long; a burst up to a third "
                    "of it never does (shared/policies/sustained_demand.py). Unset: the SLO (a burst the queue "
                    "absorbs within the SLO is not demand).")
    demand_window_s: float | None = Field(
        default=None, gt=0, le=36_000,
        description="hadis: the span of the demand estimate, over which a fall is followed. Unset: 5 x the SLO.")
    plan_ahead_s: float | None = Field(
        default=None, ge=0, le=3600,
        description="hadis: the model pair and tier sizes are chosen for the demand expected this far ahead, at "
                    "its sustained rise (shared/policies/sustained_demand.py: trend); a falling demand is not "
                    "extrapolated. Unset: 3 x the demand hold (the estimate's lag, a switch, and the services' own "
                    "delay).")
    plan_confirm_s: float | None = Field(
        default=None, ge=0, le=3600,
        description="hadis: the model pair and tier sizes change only when the demand estimates of this many "
                    "seconds agree: a better structure must suit the highest of them, the current one is left only "
                    "when it fails the lowest (0: every estimate acts at once). Unset: a third of the demand hold.")
    plan_risk: float = Field(default=0.005, ge=0, le=1,
                             description="hadis: the share of jobs the structure may risk missing over the "
                                         "remembered bursts (shared/policies/bursts.py); 1 turns the burst risk off.")
    burst_prior: float = Field(default=0.2, ge=0, le=1,
                               description="hadis: the burst assumed before any is seen, as a share of the "
                                           "fleet's highest capacity for one SLO, replayed until 100 jobs have "
                                           "arrived (shared/policies/readiness.py; 0: none).")
    burst_memory_s: float | None = Field(
        default=None, gt=0, le=86_400,
        description="hadis: the half-life of the burst history (kept for three). Unset: 30 x the SLO.")
    plan_horizon_s: float = Field(default=60.0, gt=0, le=3600,
                                  description="hadis: a change of model pair or tier sizes must serve more jobs over "
                                              "this horizon than keeping the plan, its switch's lost capacity "
                                              "included (shared/policies/transitions.py).")
    plan_min_gain_fid: float = Field(default=0.25, ge=0, le=100,
                                     description="hadis: while the plan keeps up, a change of model pair or tier "
                                                 "sizes must improve the FID by at least this much.")
    plan_max_moving_gpus: int = Field(default=2, ge=1, le=4096,
                                      description="hadis: GPUs that change tier in one step of a switch (each gets a "
                                                  "new worker); the rest serve meanwhile and move in later steps.")
    worker_start_s: float = Field(default=3.0, ge=0, le=600,
                                  description="A worker process's start, to its first batch (measured: about 3 s "
                                              "here); the planner prices tier moves with it, the simulator models it.")
    worker_start_each_s: float = Field(default=1.25, ge=0, le=600,
                                       description="What each other worker starting at once on the host adds to a "
                                                   "start (16 at once: 21-23 s on 2 cores).")
    planner_light_share: Literal["routed", "all"] = "routed"
    gpu_absent_s: float = Field(
        default=300.0, ge=0, le=86_400,
        description="A GPU whose agent stops renewing its registration stays in the plan this long (fail "
                    "static: a late heartbeat is not a lost GPU); an agent's clean shutdown removes it at once.")


class StaticPlanSettings(BaseModel):
    """The static plan: controller_policy=static, and every service's plan until one is published."""

    plan_light_model: str | None = None
    plan_heavy_model: str | None = None
    plan_r: float = Field(default=0.2, ge=0.0, le=1.0)
    plan_d: float = Field(default=0.3, ge=0.0, le=1.0)
    plan_light_batch: int = Field(default=4, ge=1, le=64)
    plan_heavy_batch: int = Field(default=2, ge=1, le=64)
    plan_light_gpus: int = Field(default=1, ge=0)
    plan_heavy_gpus: int = Field(default=1, ge=0)
    plan_poll_s: float = Field(default=0.5, gt=0, le=30, description="How often services check the plan version.")


class BoundsSettings(BaseModel):
    """Bounds on jobs and queues, and how long a service waits through an outage."""

    slo_s: float = Field(default=60.0, gt=0, le=3600, description="Default latency objective of a job.")
    # The batch class (docs/classes.md): its objective, and its weight, the most of the fleet's GPUs that
    # it may take ahead of interactive work when its deadlines come near (interactive's is the rest).
    batch_slo_s: float = Field(default=900.0, gt=0, le=3600, description="Default latency objective of a batch job.")
    batch_weight: float = Field(default=0.25, ge=0.0, le=1.0,
                                description="The share of the GPUs batch work may take first when its deadlines "
                                            "come near (0: never; it then waits for the capacity interactive leaves).")
    batch_yield: Literal["pause", "step", "finish"] = Field(
        default="pause", description="pause: a running batch job's batch pauses at its next denoising step for an "
                                     "interactive job behind it and resumes from there (step where the model "
                                     "cannot pause); step: it stops and runs again later; finish: it always ends.")
    batch_colocate: bool = Field(
        default=True, description="A light GPU keeps the heavy model loaded beside its own and serves the heavy "
                                  "tier's batch jobs with it when it has no light work: turn off where a GPU's "
                                  "memory cannot hold both models.")
    job_ttl_s: int = Field(default=86_400, ge=60, description="TTL of every job record (the result's retention).")
    image_ttl_s: int = Field(default=86_400, ge=60, description="TTL of a job's images in Redis (capped at job_ttl_s).")
    max_deliveries: int = Field(default=3, ge=1, le=20, description="Deliveries before a job is dead-lettered.")
    queue_max_length: int = Field(default=100_000, ge=100, description="Bound of every work queue (reject-publish).")
    shutdown_grace_s: float = Field(default=30.0, ge=0, description="How long a stopping service finishes work.")

    # Outages: how long a service waits for RabbitMQ and Redis (docs/reliability.md).
    connect_retry_s: float = Field(default=3600.0, gt=0, le=86_400,
                                   description="A starting service retries RabbitMQ and Redis this long, then exits.")
    store_retry_s: float = Field(default=300.0, gt=0, le=3600,
                                 description="One Redis call retries a lost connection this long, then Unavailable.")
    publish_timeout_s: float = Field(default=30.0, gt=0, le=3600,
                                     description="Bound on one publish and its confirm, reconnection included.")
    redis_memory_warn: float = Field(default=0.8, gt=0, le=1,
                                     description="The controller warns when Redis uses this share of its maxmemory.")


class ApiSettings(BaseModel):
    """The HTTP api (services/api/, docs/backends.md, docs/security.md): its listener, request
    bounds, and each tenant's limits."""

    api_host: str = Field(default="127.0.0.1", description="Address the api listens on (0.0.0.0 in containers).")
    api_port: int = Field(default=8080, ge=0, le=65535)
    api_public_url: str | None = Field(default=None, max_length=500,
                                       description="Base of the image URLs the api hands out; unset: the request's.")
    api_max_body_bytes: int = Field(default=256 * 1024, ge=1024, le=16 * 2**20, description="Largest request body.")
    api_max_header_bytes: int = Field(default=16 * 1024, ge=1024, le=2**20,
                                      description="Largest request line and headers, together.")
    api_body_timeout_s: float = Field(default=10.0, gt=0, le=600,
                                      description="A client must send its whole body within this time.")
    api_max_connections: int = Field(default=1000, ge=1, le=100_000,
                                     description="Open connections at once; beyond it the api answers 503.")
    api_max_waiters: int = Field(default=1000, ge=1, le=100_000,
                                 description="Images requests and event streams waiting at once; beyond it 503.")
    api_max_waiters_per_tenant: int = Field(default=100, ge=1, le=100_000,
                                            description="A tenant's images requests and event streams at once, "
                                                        "per api replica; beyond it 429.")
    api_read_rate_per_s: float = Field(default=50.0, gt=0, le=100_000,
                                       description="A tenant's reads (records, events, images) per second, per "
                                                   "replica; beyond its burst (twice) 429.")
    api_fair_fill: float = Field(default=0.5, ge=0, le=10,
                                 description="The fleet's capacity for the fair share: the units its current plan "
                                             "serves within this share of one objective; 0: no fair share.")
    api_image_mb: float = Field(default=1024.0, gt=0, le=2**20,
                                description="A tenant's image bytes added to the store per image TTL, unless set.")
    api_store_full: float = Field(default=0.9, gt=0, le=1,
                                  description="The api refuses new jobs (503) while Redis uses this share of its "
                                              "maxmemory: the jobs in flight keep room for their images.")
    api_max_n: int = Field(default=10, ge=1, le=100, description="Most images one images request may ask for.")
    api_wait_grace_s: float = Field(default=5.0, ge=0, le=600,
                                    description="An images request waits for its jobs until the deadline and this.")
    api_rate_per_s: float = Field(default=10.0, gt=0, le=100_000,
                                  description="A tenant's rate in units (512x512 images) per second, unless set.")
    api_burst: int = Field(default=40, ge=1, le=1_000_000, description="A tenant's burst in units, unless set.")
    api_max_active: int = Field(default=100, ge=1, le=1_000_000,
                                description="A tenant's units not yet terminal, unless set.")
    api_key_cache_s: float = Field(default=30.0, ge=0, le=3600,
                                   description="A checked key is trusted this long: a revoked key works at most so.")


class WebhookSettings(BaseModel):
    """The webhook sender (services/webhooks.py; docs/jobs.md, Webhooks): its retry schedule, and
    the bounds on every attempt and on the addresses it may reach."""

    webhook_max_attempts: int = Field(default=10, ge=1, le=100, description="Attempts of one delivery, then failed.")
    webhook_retry_first_s: float = Field(default=8.0, gt=0, le=3600,
                                         description="The wait after a first failed attempt; doubled after each.")
    webhook_retry_max_s: float = Field(default=1800.0, gt=0, le=86_400,
                                       description="The longest wait between two attempts (10 attempts: ~1 hour).")
    webhook_retry_jitter: float = Field(default=0.2, ge=0, le=1,
                                        description="Each wait moves by up to this share of itself, at random.")
    webhook_connect_timeout_s: float = Field(default=5.0, gt=0, le=60,
                                             description="Bound on connecting to a receiver (TLS included).")
    webhook_timeout_s: float = Field(default=15.0, gt=0, le=300,
                                     description="Bound on one whole attempt: resolving, connecting, sending, the "
                                                 "answer's status and its first bytes.")
    webhook_max_response_bytes: int = Field(default=4096, ge=0, le=2**20,
                                            description="The most of a receiver's answer the sender reads.")
    webhook_concurrency: int = Field(default=32, ge=1, le=10_000,
                                     description="Attempts (connections) at once, per sender process.")
    webhook_poll_s: float = Field(default=0.25, gt=0, le=60,
                                  description="How often the sender looks for deliveries that are due.")
    webhook_allow_private: bool = Field(default=False,
                                        description="Let receivers be on loopback, private, link-local or reserved "
                                                    "addresses (a deployment whose receivers are its own).")
    webhook_allow_networks: str = Field(default="", max_length=2000,
                                        description="CIDRs (comma-separated) receivers may be on although not "
                                                    "global, e.g. 10.1.0.0/16; empty: none.")

    @field_validator("webhook_allow_networks")
    @classmethod
    def networks_parse(cls, text: str) -> str:
        from shared.policies.webhooks import parse_networks

        parse_networks(text)
        return text


class ProcessSettings(BaseModel):
    """How every service process runs: its event loop, profiling, metrics and logs."""

    # The event loop of every service process: uvloop (libuv) where it is installed (the `serve`
    # extra), else asyncio's own; "asyncio" forces the latter.
    event_loop: Literal["auto", "uvloop", "asyncio"] = "auto"
    cpu_profile_dir: str = Field(default="", description="Profile each service process's event-loop thread "
                                 "with cProfile and write <dir>/<service>-<pid>.prof when it stops (make "
                                 "bench-pipeline BENCH_ARGS=--profile); empty: no profiling.")

    # Observability.
    metrics_port: int | None = Field(default=None, ge=0, le=65535,
                                     description="Serve Prometheus metrics on this port; unset: none.")

    # Logging.
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"


# Every setting, one group per base class above; read once, frozen, validated as a whole (the
# validators check settings of several groups together, so they live here). pydantic orders fields
# by the reversed MRO: the groups are listed last first, so that the fields (model_dump, as_env, the
# JSON schema) keep the order in which this module reads. No docstring: it would become the JSON
# schema's description.
class Settings(ProcessSettings, WebhookSettings, ApiSettings, BoundsSettings, StaticPlanSettings, ControllerSettings,
               FleetSettings, ModelSettings, ConnectionSettings, BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HADIS_", env_file=".env", extra="ignore", frozen=True)

    @model_validator(mode="after")
    def plan_models_exist(self) -> Settings:
        from shared.profiles import load_profile

        try:
            profile = load_profile(self.profile)
        except FileNotFoundError as error:
            # Name the setting: a command's own --profile is not what failed here.
            raise ValueError(f"HADIS_PROFILE={self.profile}: {error}") from None
        for name in (self.plan_light_model, self.plan_heavy_model):
            if name is not None:
                profile.model(name)
        return self

    @model_validator(mode="after")
    def crash_points_known(self) -> Settings:
        from shared.crashpoints import parse

        parse(self.crash_at)
        return self

    @model_validator(mode="after")
    def model_cpus_usable(self) -> Settings:
        if not self.model_cpus:
            return self
        cpus = parse_cpu_list(self.model_cpus)
        if not self.model_in_own_process:
            raise ValueError("HADIS_MODEL_CPUS pins the model process, and this model runs inline "
                             f"(HADIS_MODEL_PROCESS={self.model_process}, HADIS_BACKEND={self.backend})")
        if max(cpus) >= (os.cpu_count() or 1):
            raise ValueError(f"HADIS_MODEL_CPUS={self.model_cpus} names a CPU this machine lacks "
                             f"(it has {os.cpu_count()})")
        return self

    @property
    def model_in_own_process(self) -> bool:
        if self.model_process == "auto":
            return self.backend in MODEL_PROCESS_BY_DEFAULT
        return self.model_process == "separate"

    @property
    def model_cpu_set(self) -> frozenset[int] | None:
        return parse_cpu_list(self.model_cpus) if self.model_cpus else None

    def as_env(self) -> dict[str, str]:
        """These settings as HADIS_* variables, for the processes this one starts."""
        env = {}
        for name, value in self.model_dump(mode="json").items():
            if value is None:
                continue
            if isinstance(getattr(self, name), SecretStr):
                value = getattr(self, name).get_secret_value()
            env[f"HADIS_{name.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
        return env

    @property
    def latency_scale(self) -> float:
        """What profiled latencies are multiplied by here: emulated models sleep `time_scale`
        times the profile; real ones take the profiled time."""
        return self.time_scale if self.backend == "emulated" else 1.0

    def owned_gpus(self) -> list[str]:
        """This host's GPU ids: "cuda<i>" for real devices, "<host>-emu<i>" for emulated ones."""
        if self.gpus:
            return [f"cuda{index}" for index in self.gpus.split(",") if index]
        return [f"{self.host}-emu{index}" for index in range(self.emulated_gpus)]

    def static_plan(self, version: int) -> Plan:
        from shared.profiles import load_profile

        profile = load_profile(self.profile)
        return Plan(
            version=version,
            light_model=self.plan_light_model or profile.default_light,
            heavy_model=self.plan_heavy_model or profile.default_heavy,
            r=self.plan_r,
            d=self.plan_d,
            light_batch=self.plan_light_batch,
            heavy_batch=self.plan_heavy_batch,
            light_gpus=self.plan_light_gpus,
            heavy_gpus=self.plan_heavy_gpus,
            reason="static plan from settings",
        )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
