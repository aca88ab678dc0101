"""A burst of 5,000 batch jobs through the real services (issue 31, "done when": a test through the
services): the controller (the hadis planner, 16 GPUs of a registered agent), the router, the judge and
a light and a heavy worker on emulated GPUs, under a steady interactive load submitted through the bus
as producers submit. 5,000 batch jobs are published through the client at one signal by four producer
processes, each its share concurrently (one second on an idle machine is the aim; 4.6 s was measured on
two busy cores, printed with -s). Over the planning rounds that follow, the plan's interactive fields
(models, r, d, batch sizes, GPU counts, assignment) stay those of the plan in force before the burst
while its batch placement moves; the interactive jobs submitted during the burst all end done by their
deadline; the batch backlog (Store.batch_backlog, hadis_batch_backlog) holds them. The batch objective
is short, so the backlog is due at once (a reservation) and the test ends quickly."""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from dataclasses import dataclass, field

import pytest

from shared import metrics
from shared.client import Client
from shared.schemas import Job, JobRecord, JobState, Plan
from tests.helpers import make_settings
from tests.stack import Stack, running_stack

pytestmark = pytest.mark.integration

GPUS = [f"gpu{index:02d}" for index in range(16)]
INTERACTIVE = ("light_model", "heavy_model", "r", "d", "light_batch", "heavy_batch", "light_gpus", "heavy_gpus",
               "assignment")
BURST = 5000
PRODUCERS = 4  # processes publishing the burst between them, each its jobs concurrently
# The steady interactive load: mid-way on a plateau of the planner (`hadis plan --profile paper-l40s-x10 --gpus 16
# --slo 10`: the same plan from 1.4 to 2.05 qps), so that the measured demand's noise, -15 % to +7 % seen
# around a steady 2.0 qps on a loaded machine, moves no interactive field by itself (CI saw heavy_batch 2 -> 1
# at a measured 2.14 qps with 2.0 submitted, the plan's own edge at 2.1, not the burst's doing).
RATE_QPS = 1.7
SLO_S = 10.0  # the interactive objective
# Due well after the test: the backlog fits the leftover, so nothing is reserved (a reservation takes GPUs from
# interactive work by design, and the interactive queue it makes may move the plan's batch sizes: CI saw
# heavy_batch 2 -> 1 so with a 30 s objective). tests/policies/test_classes.py tests the reservation itself.
BATCH_SLO_S = 600.0
# The interactive plan held this long before the burst (the load has settled). CI once saw 4 s too short, most
# likely a plan made while the producers' start slowed the services (a queue, planned with its wait): it held 4 s
# with another light batch, and during the burst the controller went to the load's own plan (light_batch 2, what
# `hadis plan` gives from 1.4 to 2.05 qps), which the test blamed on the burst.
STEADY_S = 8.0
WATCH_S = 8.0  # planning rounds watched after the router has recorded the whole burst (a round a second)


def burst_settings(**overrides):
    values = dict(backend="emulated", judge_backend="emulated", profile="paper-l40s-x10", time_scale=0.2,
                  controller_policy="hadis", slo_s=SLO_S, batch_slo_s=BATCH_SLO_S, plan_period_s=0.5,
                  plan_min_dwell_s=2.0, demand_halflife_s=2.0, demand_margin=0.0, burst_prior=0.0, batch_wait_ms=5)
    return make_settings(**{**values, **overrides})


def interactive_of(plan: Plan) -> dict:
    return {name: getattr(plan, name) for name in INTERACTIVE}


@dataclass
class Sample:
    at: float  # time.monotonic()
    plan: Plan
    demand_qps: float  # the controller's measured interactive demand (hadis_demand_qps)
    backlog: float | None  # hadis_batch_backlog{horizon="all"}, as the controller set it last


@dataclass
class Watch:
    """The plan in force and the controller's gauges, sampled every 0.2 s (the controller plans once a
    second): what the planning rounds published, and what they read."""

    samples: list[Sample] = field(default_factory=list)

    async def run(self, stack: Stack, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            plan = await stack.store.get_plan()
            if plan is not None:
                backlog = metrics.REGISTRY.get_sample_value("hadis_batch_backlog", {"horizon": "all"})
                demand = metrics.REGISTRY.get_sample_value("hadis_demand_qps") or 0.0
                self.samples.append(Sample(time.monotonic(), plan, demand, backlog))
            await asyncio.sleep(0.2)

    def since(self, start: float) -> list[Sample]:
        return [sample for sample in self.samples if sample.at >= start]

    async def steady(self, seconds: float, timeout_s: float) -> Plan:
        """The plan in force once its interactive fields have held for `seconds`."""
        give_up_at = time.monotonic() + timeout_s
        while time.monotonic() < give_up_at:
            now = time.monotonic()
            recent = self.since(now - seconds)
            if self.samples[:1] and self.samples[0].at <= now - seconds and \
                    len({str(interactive_of(sample.plan)) for sample in recent}) == 1:
                return recent[-1].plan
            await asyncio.sleep(0.2)
        raise AssertionError(f"the interactive plan did not hold for {seconds} s under a steady load: "
                             f"{[(s.plan.version, s.plan.r, s.plan.d, round(s.demand_qps, 2)) for s in self.samples]}")


@dataclass
class Load:
    """Interactive jobs at a steady rate through the client (the ingress queue, as producers submit)."""

    client: Client
    submitted: list[tuple[float, Job]] = field(default_factory=list)  # (time.monotonic(), job)

    async def run(self, stopping: asyncio.Event) -> None:
        started = time.monotonic()
        index = 0
        while not stopping.is_set():
            delay = started + index / RATE_QPS - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            job = Job(prompt=f"a person waits for this, {index}")
            self.submitted.append((time.monotonic(), job))
            await self.client.submit(job)
            index += 1

    def between(self, start: float, end: float) -> list[Job]:
        return [job for at, job in self.submitted if start <= at <= end]


def produce(namespace: str, start: int, count: int, ready, go, results) -> None:
    """A producer process: connects, says it is ready, and at `go` publishes its part of the burst
    (batch jobs `start`..`start + count`) concurrently through the client; puts the ids and its
    publishing time in `results`."""
    asyncio.run(produce_async(namespace, start, count, ready, go, results))


async def produce_async(namespace: str, start: int, count: int, ready, go, results) -> None:
    client = await Client.open(make_settings(namespace=namespace))
    try:
        jobs = [Job(prompt=f"catalogue image {index}", priority="batch") for index in range(start, start + count)]
        ready.put(start)
        await asyncio.to_thread(go.wait)
        started = time.monotonic()
        await asyncio.gather(*(client.submit(job) for job in jobs))
        results.put(([job.job_id for job in jobs], time.monotonic() - started))
    finally:
        await client.close()


class Burst:
    """PRODUCERS processes that publish BURST batch jobs between them at one signal (the services'
    event loop in this process does not slow the publishing, as it would not a real producer's)."""

    def __init__(self, namespace: str) -> None:
        context = multiprocessing.get_context("spawn")
        self.ready, self.go, self.results = context.Queue(), context.Event(), context.Queue()
        share = BURST // PRODUCERS
        self.processes = [context.Process(target=produce, daemon=True, args=(namespace, index * share, share,
                                                                          self.ready, self.go, self.results))
                          for index in range(PRODUCERS)]

    async def start(self) -> None:
        for process in self.processes:
            process.start()
        for _ in self.processes:
            await asyncio.to_thread(self.ready.get, True, 60)

    async def publish(self) -> tuple[list[str], float]:
        """Every producer at once; the job ids and the slowest producer's publishing time."""
        self.go.set()
        parts = [await asyncio.to_thread(self.results.get, True, 120) for _ in self.processes]
        for process in self.processes:
            await asyncio.to_thread(process.join, 30)
        return [job_id for ids, _ in parts for job_id in ids], max(seconds for _, seconds in parts)

    def stop(self) -> None:
        for process in self.processes:
            if process.is_alive():
                process.kill()


def ended(states: list[JobState | None]) -> int:
    return sum(state is not None and state.terminal for state in states)


async def until_recorded(stack: Stack, count: int, timeout_s: float = 90.0) -> None:
    """Until the router has recorded `count` batch jobs (their `queued`: the backlog holds them)."""
    give_up_at = time.monotonic() + timeout_s
    while (recorded := await stack.store.batch_arrivals()) < count:
        assert time.monotonic() < give_up_at, f"the router recorded {recorded} of {count} batch jobs in {timeout_s} s"
        await asyncio.sleep(0.2)


@dataclass
class Observed:
    before: Plan  # the plan in force before the burst
    after: list[Sample]  # the plans (and gauges) of the rounds after it
    published_s: float  # how long the burst took to publish
    interactive: list[JobRecord]  # the interactive jobs submitted during the burst
    backlog_total: int  # Store.batch_backlog's total once every batch job was recorded
    batch_ended: tuple[int, int]  # batch jobs ended just before that reading, and just after


async def run_burst(settings) -> Observed:
    producers = Burst(settings.namespace)
    async with running_stack(settings) as stack:
        await stack.store.register_agent("host-a", GPUS, ttl_s=300)
        stopping = asyncio.Event()
        watch, load = Watch(), Load(stack.client)
        tasks = [asyncio.create_task(watch.run(stack, stopping)), asyncio.create_task(load.run(stopping))]
        try:
            await producers.start()
            before = await watch.steady(STEADY_S, timeout_s=60)
            started = time.monotonic()
            job_ids, published_s = await producers.publish()
            await until_recorded(stack, BURST)
            ended_before = ended(await stack.store.states(job_ids))
            backlog = await stack.store.batch_backlog(time.time())
            ended_after = ended(await stack.store.states(job_ids))
            recorded = time.monotonic()
            await asyncio.sleep(WATCH_S)
            during = load.between(started, recorded)
        finally:
            stopping.set()
            producers.stop()
            await asyncio.gather(*tasks)
        records = await stack.wait_all([job.job_id for job in during], timeout_s=60)
        print(f"burst published in {published_s:.2f} s, recorded by the router in {recorded - started:.2f} s; "
              f"{len(during)} interactive jobs during it")
    return Observed(before, watch.since(started), published_s, records, backlog.total, (ended_before, ended_after))


def problems(observed: Observed) -> list[str]:
    """What the rounds after the burst did that they must not, each with its evidence."""
    found = []
    before = interactive_of(observed.before)
    moved = [(sample.plan.version, {name: value for name, value in interactive_of(sample.plan).items()
                                    if value != before[name]}, round(sample.demand_qps, 2))
             for sample in observed.after if interactive_of(sample.plan) != before]
    if moved:
        demand = sorted({round(sample.demand_qps, 2) for sample in observed.after})
        found.append(f"the interactive plan moved from v{observed.before.version} (version, fields, interactive "
                     f"demand qps then): {moved[:1]} in {len(moved)} samples; demand measured after the burst "
                     f"ranged {demand[0]}..{demand[-1]} qps for a steady {RATE_QPS} qps submitted")
    reserved = {tuple(sample.plan.batch_first) for sample in observed.after} - {()}
    if reserved:
        found.append(f"the controller reserved GPUs {sorted(reserved)[:1]} for a backlog the leftover covers")
    late = [(record.state.value, round(record.latency_s or 0, 2)) for record in observed.interactive
            if record.state is not JobState.done or record.history[-1].at > (record.deadline or 0)]
    if not observed.interactive or late:
        found.append(f"{len(late)} of {len(observed.interactive)} interactive jobs submitted during the burst "
                     f"not done by their deadline ({SLO_S} s): (state, latency) {late[:5]}")
    ended_before, ended_after = observed.batch_ended
    if not BURST - ended_after <= observed.backlog_total <= BURST - ended_before:
        found.append(f"Store.batch_backlog counted {observed.backlog_total} with {ended_before}..{ended_after} of "
                     f"{BURST} ended")
    peak = max(sample.backlog or 0 for sample in observed.after)
    if peak < observed.backlog_total - 500:
        found.append(f"hadis_batch_backlog peaked at {peak}, the store held {observed.backlog_total}")
    return found


# With one ingress queue the router read the burst in order: 19-27 s to record 5,000 batch jobs, the
# interactive jobs submitted meanwhile expired behind them (31 of 54), and the controller's measured
# interactive demand dropped, then spiked, and moved the plan. Batch jobs now have an ingress of their
# own (<ns>.requests.batch), which the router reads beside the interactive one.
async def test_a_burst_of_batch_jobs_through_the_services_leaves_the_interactive_plan_as_it_was():
    observed = await run_burst(burst_settings())
    found = problems(observed)
    assert not found, "\n".join(found)
