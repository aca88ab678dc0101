"""The controller: measures demand (an EWMA of arrivals, read from the event stream) and queue
depths, asks its policy for a plan every planning period, assigns tiers to the GPUs of the fleet
(the live agents' and, failing static, those whose agent went quiet less than HADIS_GPU_ABSENT_S
ago), and publishes the result as a new plan version when it changes. A planned change
waits out a minimum dwell time (re-planning faster than a model swap completes makes plans
flap); a change of GPUs applies at once. The batch class is planned in the same round, on what the
interactive plan leaves (ClassPlanning: the backlog by deadline, the placement, the reservation), and
moves only the plan's batch fields. One controller plans at a time (a lease in Redis); every
controller turns dead letters into `failed` records and keeps the plan's TTL fresh."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from typing import TYPE_CHECKING, Any

from services.batch_mover import BatchMover
from shared import metrics
from shared.arrival_rate import DemandTracker
from shared.bus import Delivery
from shared.crashpoints import crash_point
from shared.errors import Disposition, InvalidJob, Unavailable
from shared.logging import bind_job, get_logger
from shared.policies import class_engine, engine, steps
from shared.policies.assignment import moves
from shared.policies.catalog import make_policy
from shared.policies.classes import Backlog, BatchPlacement
from shared.policies.control import Observation, PlanSchedule
from shared.policies.engine import BatchTimes
from shared.policies.fleet import Fleet
from shared.policies.quality import MixTracker
from shared.policies.transitions import Structure, Switch, SwitchWatch, changing_gpus, transition
from shared.profiles import load_profile
from shared.schemas import MAX_MESSAGE_BYTES, Job, JobState, Plan, Task, Tier, job_id_of, parse_message, valid_job_id
from shared.service import Service, run

if TYPE_CHECKING:
    from shared.store import Store

log = get_logger(__name__)

TICK_S = 1.0
HOUSEKEEPING_S = 30.0
DEAD_WATCH_PREFETCH = 32
DEAD_LETTER_RETRY_S = 5.0  # a dead letter that meets a Redis outage waits this long before it is tried again
WORKERS_READ_S = 5.0  # the workers' heartbeats are read for hadis_workers at most this often (a keyspace scan)

class ClusterGauges:
    """hadis_agent_up and hadis_workers, kept by the controller that plans (one that loses the lease
    drops them, so that a stale view does not linger beside the planner's)."""

    def __init__(self) -> None:
        self.hosts: dict[str, list[str]] = {}  # agents seen registered: host -> its GPUs (hadis_agent_up)
        self.workers_read_at = -WORKERS_READ_S  # time.monotonic() of the last read for hadis_workers
        self.held = False  # held the lease at the last tick

    def planning(self, held: bool) -> None:
        if self.held and not held:
            metrics.forget_cluster_view()
            metrics.forget_batch_placement()
        self.held = held

    def note_agents(self, agents: dict[str, list[str]], departed: dict[str, list[str]], gpus: list[str]) -> None:
        """hadis_agent_up: 1 for a registered agent, 0 for one seen before that stopped registering
        without leaving while its GPUs are still planned with (their grace); forgotten after a clean
        departure or the grace (a controller that restarts knows only the agents it has seen)."""
        self.hosts.update(agents)
        planned = set(gpus)
        up = {}
        for host, owned in list(self.hosts.items()):
            if host in agents:
                up[host] = True
            elif host not in departed and planned.intersection(owned):
                up[host] = False
            else:
                del self.hosts[host]
        metrics.observe_agents(up)

    async def observe_workers(self, store: Store, plan: Plan) -> None:
        """hadis_workers from the workers' heartbeats, every WORKERS_READ_S."""
        if time.monotonic() - self.workers_read_at < WORKERS_READ_S:
            return
        self.workers_read_at = time.monotonic()
        try:
            workers = await store.workers()
        except Exception as error:  # a metric: never the tick's undoing
            log.warning("workers_unread", error=str(error))
            return
        metrics.observe_workers(workers, {Tier.light.value: plan.light_model, Tier.heavy.value: plan.heavy_model})


class ArrivalCounts:
    """The store's arrival counters as last read. Each tick folds the jobs recorded `queued` since
    into the demand (one read a tick, not every event of every job), and the arrivals of each forced
    quality (low, high: the router counts them) into the quality mix. The first read, and a counter
    that went back (a store that lost its data), only set the baseline."""

    def __init__(self) -> None:
        self.arrivals: int | None = None
        self.forced: dict[str, int] | None = None

    async def count(self, store: Store, demand: DemandTracker, mix: MixTracker) -> None:
        arrivals = await store.arrivals()
        if self.arrivals is not None and arrivals >= self.arrivals:
            demand.arrived(arrivals - self.arrivals)
        self.arrivals = arrivals
        forced = await store.forced_arrivals()
        for quality, count in forced.items():
            if self.forced is not None and count > self.forced.get(quality, 0):
                mix.arrived(quality, count - self.forced.get(quality, 0))
        self.forced = forced


class ClassPlanning:
    """The batch class's part of a planning round, around class_engine.control_step (which the
    simulator runs too): the backlog by deadline read from the store (one round trip), the placement
    published with the plan when it moves materially, its gauges, and a `batch_reserved` line
    whenever a published plan reserves GPUs for batch work (`batch_released` when it stops)."""

    def __init__(self, times: BatchTimes, weight: float, mover: BatchMover, colocate: bool = False) -> None:
        self.times, self.weight, self.mover, self.colocate = times, weight, mover, colocate
        self.reserved: list[str] = []  # the reservation of the last plan published

    async def step(self, store: Store, schedule: PlanSchedule, observation: Observation, current: Plan | None,
                   gpus: list[str]) -> dict[str, Any] | None:
        backlog = await store.batch_backlog(observation.now)
        step = class_engine.control_step(schedule, observation, current, gpus, backlog, self.times, self.weight,
                                         self.colocate)
        in_force = step.fields if step.fields is not None else (current.model_dump() if current else {})
        due = {f"{horizon:g}": count for horizon, count in zip(backlog.horizons, backlog.due, strict=True)}
        metrics.observe_batch_placement({**due, "all": backlog.total}, len(in_force.get("batch_first", [])),
                                        in_force.get("batch_heavy", 1.0))
        if step.fields is not None:
            self.note(step.fields["batch_first"], step.placement, backlog)
        if step.move is not None:  # the queued jobs follow the placement (classes.rebalance)
            metrics.BATCH_MOVED.labels(step.move.target.value).inc(await self.mover.move(step.move))
        return step.fields

    def note(self, reserved: list[str], placement: BatchPlacement, backlog: Backlog) -> None:
        if reserved:
            log.warning("batch_reserved", gpus=reserved, reserved=len(reserved), weight=self.weight,
                        batch_heavy=placement.heavy, backlog=backlog.total, due=dict(backlog.points()),
                        reason=placement.reason)
        elif self.reserved:
            log.info("batch_released", gpus=self.reserved, backlog=backlog.total, reason=placement.reason)
        self.reserved = reserved


class Controller:
    def __init__(self, service: Service) -> None:
        self.service = service
        self.settings = service.settings
        self.policy = make_policy(self.settings)
        self.holder = f"{self.settings.host}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.demand = DemandTracker(self.settings.demand_halflife_s, time.time())
        self.schedule = PlanSchedule(self.policy, self.settings.plan_period_s, self.settings.plan_min_dwell_s)
        self.fleet, self.fleet_seeded = Fleet(self.settings.gpu_absent_s), False  # seeded from the plan once
        self.absent: list[str] = []  # planned GPUs whose agent is quiet, as last logged
        self.counts = ArrivalCounts()  # the store's arrival counters at the last tick
        self.mix = MixTracker(self.settings.demand_halflife_s, time.time())  # the forced qualities' rates
        self.switches = SwitchWatch()  # the last plan that moved GPUs, until they all serve again
        self.gauges = ClusterGauges()  # hadis_agent_up and hadis_workers, while this one plans
        self.classes = ClassPlanning(BatchTimes(load_profile(self.settings.profile), self.settings.latency_scale),
                                     self.settings.batch_weight, BatchMover(service), self.settings.batch_colocate)

    async def planned_gpus(self, now: float) -> list[str]:
        """The fleet (shared/policies/fleet.py): live agents' GPUs, and absent ones within their grace;
        a controller that starts counts the current plan's GPUs as just seen."""
        store = self.service.store
        if not self.fleet_seeded:
            current = await store.get_plan()
            self.fleet.remember(current.assignment if current else {}, now)
            self.fleet_seeded = True
        agents, departed_agents = await store.agents(), await store.departed_agents()
        live = sorted(gpu for owned in agents.values() for gpu in owned)
        departed = [gpu for owned in departed_agents.values() for gpu in owned]
        gpus = self.fleet.update(live, departed, now)
        self.gauges.note_agents(agents, departed_agents, gpus)
        absent = self.fleet.absent(live)
        if absent != self.absent:
            log.warning("gpus_absent_kept", gpus=absent, grace_s=self.settings.gpu_absent_s)
            self.absent = absent
        return gpus

    async def observe(self, now: float) -> tuple[Observation, list[str]]:
        """What the policy sees now (shared/policies/engine.py: observation, which the simulator
        calls too), from the fleet and the queues' depths."""
        bus = self.service.bus
        gpus = await self.planned_gpus(now)
        depths = await bus.depths()
        metrics.observe_queue_depths(depths)
        rate = self.demand.rate_qps
        metrics.observe_demand(rate)
        await self.gauges.observe_workers(self.service.store, self.service.plans.current)
        observation = engine.observation(now, rate, depths[bus.queues.tier(Tier.light)],
                                         depths[bus.queues.tier(Tier.heavy)], len(gpus), self.service.plans.current,
                                         self.demand.total, self.settings.slo_s, self.mix.mix(rate),
                                         {tier: depths[bus.queues.batch(tier)] for tier in Tier})
        return observation, gpus

    async def step(self) -> None:
        """One tick: measure demand (a standby too, so that it takes over warm), then plan (when this
        controller holds the lease) and publish a changed plan."""
        now = time.time()
        await self.counts.count(self.service.store, self.demand, self.mix)
        self.demand.update(now)
        self.mix.update(now)
        if not await self.service.store.hold_lease("controller", self.holder, ttl_s=3 * TICK_S):
            self.gauges.planning(False)
            return
        self.gauges.planning(True)
        await self.follow_switch(now)
        observation, gpus = await self.observe(now)
        current = await self.service.store.get_plan()
        fields = await self.classes.step(self.service.store, self.schedule, observation, current, gpus)
        if fields is not None:
            await self.publish(current, fields, observation)

    async def follow_switch(self, now: float) -> None:
        """Log (and count) what the last switch realised, once its GPUs report their new work."""
        if self.switches.current is None:
            return
        switch = self.switches.update(now, await self.service.store.workers())
        if switch is not None:
            metrics.observe_plan_switch(switch.realised_s, switch.dark_gpu_s)
            log.info("plan_switch_done", version=switch.version, gpus=len(switch.waiting),
                     expected_s=round(switch.expected_s, 2), realised_s=round(switch.realised_s, 2),
                     dark_gpu_s=round(switch.dark_gpu_s, 1))

    def start_switch(self, current: Plan | None, plan: Plan) -> None:
        """Follow the GPUs that a new plan moves (tier or model), with the switch's priced cost."""
        waiting = changing_gpus(current.assignment if current else {}, plan.assignment,
                                (current.light_model, current.heavy_model) if current else None,
                                (plan.light_model, plan.heavy_model))
        if not waiting:
            return
        expected = 0.0
        if current is not None:
            expected = transition(Structure.of(current), Structure.of(plan), load_profile(self.settings.profile),
                                  worker_start_s=self.settings.worker_start_s,
                                  worker_start_each_s=self.settings.worker_start_each_s).seconds
        superseded = self.switches.start(Switch(plan.version, time.time(), expected, waiting))
        if superseded is not None:
            log.warning("plan_switch_superseded", version=superseded.version, ready=len(superseded.ready),
                        gpus=len(superseded.waiting))
        log.info("plan_switch", version=plan.version, gpus=len(waiting), expected_s=round(expected, 2))

    async def publish(self, current: Plan | None, fields: dict[str, Any], observation: Observation) -> None:
        plan = await self.service.store.publish_plan(fields)
        await self.service.plans.refresh()
        self.start_switch(current, plan)
        log.info("plan_published", version=plan.version, policy=self.policy.name, light=plan.light_model,
                 heavy=plan.heavy_model, r=plan.r, d=plan.d, light_gpus=plan.light_gpus,
                 heavy_gpus=plan.heavy_gpus, gpu_moves=moves(current.assignment if current else {},
                                                             plan.assignment),
                 demand_qps=round(observation.demand_qps, 3), queued=observation.queued_jobs, reason=plan.reason)

    async def plan_loop(self) -> None:
        while not self.service.stopping.is_set():
            try:
                await self.step()
            except Exception as error:  # a bad tick must never stop the controller
                log.exception("planning_failed", error=str(error))
            await self.sleep(TICK_S)

    async def housekeeping(self) -> None:
        while not self.service.stopping.is_set():
            try:
                await self.service.store.refresh_plan_ttl()
                depths = await self.service.bus.depths()
                log.info("queue_depths", demand_qps=round(self.demand.rate_qps, 3),
                         **{name.split(".", 1)[1]: n for name, n in depths.items()})
                await self.check_store_memory()
            except Exception as error:
                log.warning("housekeeping_failed", error=str(error))
            await self.sleep(HOUSEKEEPING_S)

    async def check_store_memory(self) -> None:
        """Redis runs with a maxmemory and `noeviction` (compose): at the bound, writes fail and
        work waits. Say so before it happens."""
        used, maxmemory = await self.service.store.memory()
        metrics.observe_store_memory(used, maxmemory)
        if maxmemory and used >= self.settings.redis_memory_warn * maxmemory:
            log.warning("store_memory_high", used_bytes=used, max_bytes=maxmemory,
                        share=round(used / maxmemory, 3))

    async def sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self.service.stopping.wait(), timeout=seconds)
        except TimeoutError:
            pass

    async def on_dead_letter(self, delivery: Delivery) -> None:
        """Turn a dead letter into a `failed` record, once. Nothing here can loop: a dead letter that
        cannot be recorded (too large to read, no readable id, a record Redis refuses) is acked and
        counted as parked: its copy stays in <ns>.dead for an operator. Nothing raises out of here
        (the bus requeues the message of a handler that raises: the same dead letter, for ever), and
        a Redis outage holds the message rather than requeue it (each requeue counts as a delivery,
        and <ns>.dead.watch drops a message at its delivery limit)."""
        try:
            await self.record_dead_letter(delivery)
        except Exception as error:
            park(type(error).__name__, f"{type(error).__name__}: {error}")
        await delivery.settle(Disposition.ack)  # nothing, when it was settled already

    async def record_dead_letter(self, delivery: Delivery) -> None:
        size, reason = len(delivery.body), ""
        if size <= MAX_MESSAGE_BYTES:
            job_id = job_id_of(delivery.body)
        else:
            # Not parsed (shared/schemas.py: job_id_of). Its message_id, if it is a job id, gets a
            # record where none exists: it proves as little as an id in a body.
            job_id = delivery.message_id if valid_job_id(delivery.message_id) else None
            reason = f"dead-lettered: the message is {size} bytes, more than {MAX_MESSAGE_BYTES}"
        if job_id is None:
            park("oversized" if reason else "no_job_id", reason or "no readable job id")
            return
        with bind_job(job_id):
            while True:
                try:
                    recorded = await self.fail_dead_letter(job_id, delivery, reason)
                    break
                except Unavailable as error:
                    if self.service.stopping.is_set() or delivery.stale:
                        await delivery.settle(Disposition.requeue)
                        return
                    log.warning("dead_letter_waits", error=str(error))
                    await self.sleep(DEAD_LETTER_RETRY_S)  # not a hot loop while Redis is away
            if recorded:
                metrics.observe_unserved(JobState.failed)
                log.warning("dead_letter_recorded")
            crash_point("controller.after_dead_letter")

    async def fail_dead_letter(self, job_id: str, delivery: Delivery, reason: str = "") -> bool:
        """Fail the job a dead letter describes; only a missing record when the message does not
        prove it is that job's own: the recorded job (shared/policies/steps.py: recorded_job, as the
        router asks), for the tenant its sender may act for (Delivery.tenant_for: the body's word is not enough)."""
        store = self.service.store
        reason = reason or "dead-lettered: the job could not be processed"
        job = job_of(delivery.body)  # None for an oversized one: parse_message refuses it unread
        record = await store.get(job_id) if job is not None else None
        owned = job is not None and record is not None and steps.recorded_job(
            record, job.model_copy(update={"tenant": delivery.tenant_for(job.tenant)}), self.service.settings.slo_s)
        return await store.fail(job_id, JobState.failed, reason, create_only=not owned)


def park(reason: str, detail: str) -> None:
    """A dead letter acked without a record of its own (its copy stays in <ns>.dead)."""
    metrics.observe_parked_dead_letter(reason)
    log.warning("dead_letter_parked", reason=detail)


def job_of(body: bytes) -> Job | None:
    """The Job in a dead letter (an ingress Job, or a Task carrying one), if it parses."""
    for model in (Task, Job):
        try:
            parsed = parse_message(model, body)
        except InvalidJob:
            continue
        return parsed.job if isinstance(parsed, Task) else parsed  # type: ignore[return-value]
    return None


async def main(service: Service) -> None:
    controller = Controller(service)
    consumer = await service.bus.consume(service.bus.queues.dead_watch, controller.on_dead_letter,
                                         prefetch=DEAD_WATCH_PREFETCH)
    metrics.mark_ready("controller")
    await asyncio.gather(controller.plan_loop(), controller.housekeeping())
    await consumer.cancel()


if __name__ == "__main__":
    run("controller", main)
