"""Running the real services in-process against the real RabbitMQ and Redis."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest_asyncio

from services import api, controller, judge, router, webhooks, worker
from shared import apikeys
from shared.bus import Bus
from shared.client import Client
from shared.policies.tenancy import Limits
from shared.schemas import PRIORITIES, Job, JobRecord, Plan, Tier
from shared.service import Service, ServiceMain, serve
from shared.settings import Settings
from shared.store import Store
from tests.helpers import free_port

PLAN_APPLIED_S = 30.0


class Stack:
    def __init__(self, settings: Settings, client: Client, services: dict[str, Service]) -> None:
        self.settings = settings
        self.client = client
        self.bus: Bus = client.bus
        self.store: Store = client.store
        self.services = services  # name: the running service, as it started

    async def set_plan(self, **changes) -> Plan:
        """Publish a plan and wait until every service has applied it."""
        current = await self.store.get_plan() or self.settings.static_plan(version=0)
        fields = {**current.model_dump(exclude={"version", "created_at"}), **changes}
        plan = await self.store.publish_plan(fields)
        give_up_at = time.monotonic() + PLAN_APPLIED_S
        while behind := [name for name, service in self.services.items()
                         if service.plans.current.version < plan.version]:
            assert time.monotonic() < give_up_at, f"plan {plan.version} not applied in {PLAN_APPLIED_S} s by {behind}"
            await asyncio.sleep(0.05)
        return plan

    async def submit_many(self, jobs: list[Job]) -> None:
        await asyncio.gather(*(self.client.submit(job) for job in jobs))

    async def wait_all(self, job_ids: list[str], timeout_s: float = 120.0) -> list[JobRecord]:
        records = await asyncio.gather(*(self.client.wait(job_id, timeout_s) for job_id in job_ids))
        missing = [job_id for job_id, record in zip(job_ids, records, strict=True) if record is None]
        assert not missing, f"{len(missing)} jobs not terminal in {timeout_s} s, e.g. {missing[:3]}"
        return list(records)


async def wait_for_consumers(bus: Bus, queues: list[str], timeout_s: float = 300.0) -> None:
    """Until every queue has a consumer. A bound on a stack's start, not a product figure: a tiny
    worker consumes once its model process has imported torch and diffusers (8 CPU-s alone), and
    CI's busiest minutes took test_cancel's stack past 120 s."""
    give_up_at = time.monotonic() + timeout_s
    while True:
        counts = [await bus.consumers(queue) for queue in queues]
        if all(counts):
            return
        assert time.monotonic() < give_up_at, f"services not consuming: {dict(zip(queues, counts, strict=True))}"
        await asyncio.sleep(0.2)


async def wait_for_plan(store: Store, timeout_s: float = 30.0) -> None:
    """The controller's first plan, so that a test's own plan is not overwritten by it."""
    give_up_at = time.monotonic() + timeout_s
    while await store.get_plan() is None:
        assert time.monotonic() < give_up_at, "the controller published no plan"
        await asyncio.sleep(0.1)


SERVICES = {
    "controller": controller.main,
    "router": router.main,
    "judge": judge.main,
    "light": worker.main,
    "heavy": worker.main,
}


def noting_start(main: ServiceMain, started: dict[str, Service]) -> ServiceMain:
    """`main`, which first notes its service in `started` (so a test can see its plan)."""
    async def noted(service: Service) -> None:
        started[service.name] = service
        await main(service)
    return noted


@asynccontextmanager
async def running_stack(settings: Settings, services: tuple[str, ...] = tuple(SERVICES),
                        keep_namespace: bool = False) -> AsyncIterator[Stack]:
    """The services in this process until the block ends; their namespace goes with them unless
    `keep_namespace` (a test that looks at what stopped services left, or starts others on it)."""
    stopping = asyncio.Event()
    tasks, started = [], {}
    for name in services:
        service_settings = settings
        if name in ("light", "heavy"):
            service_settings = settings.model_copy(update={"tier": Tier(name), "gpu": f"{name}0"})
        main = noting_start(SERVICES[name], started)
        tasks.append(asyncio.create_task(serve(name, main, service_settings, stopping), name=name))
    client = await Client.open(settings)
    stack = Stack(settings, client, started)
    try:
        queues = stack.bus.queues
        wanted = {"router": queues.requests, "judge": queues.judge, "light": queues.tier(Tier.light),
                  "heavy": queues.tier(Tier.heavy), "controller": queues.dead_watch}
        await wait_for_consumers(stack.bus, [wanted[name] for name in services])
        if "controller" in services:
            await wait_for_plan(stack.store)
        yield stack
    finally:
        stopping.set()
        done, pending = await asyncio.wait(tasks, timeout=120)
        assert not pending, f"services did not stop within 120 s: {[task.get_name() for task in pending]}"
        results = [task.exception() if not task.cancelled() else asyncio.CancelledError() for task in tasks]
        if not keep_namespace:
            await stack.bus.delete_namespace()
            await stack.store.delete_namespace()
        await client.close()
        crashed = [(task.get_name(), r) for task, r in zip(tasks, results, strict=True) if isinstance(r, BaseException)]
        assert not crashed, f"services crashed: {crashed}"
        await report_leftover_tasks()


async def report_leftover_tasks(wait_s: float = 2.0) -> None:
    """Print the tasks still running once the services have stopped (after `wait_s` for them to
    end). pytest-asyncio cancels them when the test's loop closes, and one that does not end when
    cancelled hangs the test's teardown until its timeout (CI once lost 300 s so, on a task that
    nothing named): this puts the culprit's stack in the test's captured output. Nothing fails
    here: a test's own tasks may outlive a stack."""
    current = asyncio.current_task()
    left = [task for task in asyncio.all_tasks() if task is not current and not task.done()]
    if left:
        await asyncio.wait(left, timeout=wait_s)
    for task in (task for task in left if not task.done()):
        frames = "; ".join(f"{frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}"
                           for frame in task.get_stack(limit=4))
        print(f"task left running after the stack stopped: {task.get_name()} {task.get_coro()!r} at {frames}",
              file=sys.stderr)




@asynccontextmanager
async def running_api(settings: Settings, timeout_s: float = 60.0) -> AsyncIterator[str]:
    """The api service in this process on a free port, until the block ends; yields its base URL."""
    settings = settings.model_copy(update={"api_port": free_port()})
    stopping = asyncio.Event()
    task = asyncio.create_task(serve("api", api.main, settings, stopping), name="api")
    base = f"http://127.0.0.1:{settings.api_port}"
    try:
        give_up_at = time.monotonic() + timeout_s
        async with httpx.AsyncClient(base_url=base, timeout=5) as http:
            while True:
                assert not task.done(), f"the api stopped: {task.exception() if not task.cancelled() else 'cancelled'}"
                try:
                    if (await http.get("/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < give_up_at, f"the api did not answer /healthz in {timeout_s} s"
                await asyncio.sleep(0.1)
        yield base
    finally:
        stopping.set()
        await asyncio.wait_for(task, 60)


class Door:
    """The api alone, as the tests of its HTTP door meet it (tests/hostile/test_http_tenancy.py,
    tests/integration/test_api_classes.py): its base URL, its store and bus, and fresh tenants
    with limits high enough that only a test's own limits bite."""

    def __init__(self, base: str, store: Store, bus: Bus) -> None:
        self.base, self.store, self.bus = base, store, bus
        self.tenants = 0

    async def tenant(self, classes: tuple[str, ...] = PRIORITIES, **limits) -> tuple[str, str]:
        """A new tenant whose key may ask for `classes`, with `limits` over the high defaults: (name, key)."""
        self.tenants += 1
        name = f"tenant-{self.tenants}"
        key, stored = apikeys.new_key(name, classes=classes)
        await self.store.put_api_key(stored)
        values = {"rate": 10_000, "burst": 10_000, "max_active": 100_000, **limits}
        await self.store.set_tenant_limits(name, Limits(**values))
        return name, key

    async def tenant_http(self, **limits) -> tuple[str, httpx.AsyncClient]:
        """A new tenant (every class) and a client that sends its key: (name, client)."""
        name, key = await self.tenant(**limits)
        return name, self.http(key)

    def http(self, key: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base, headers={"Authorization": f"Bearer {key}"}, timeout=30)

    async def published(self) -> int:
        """Jobs waiting in the requests queue: nothing consumes it here, so all the api published."""
        return await self.bus.depth(self.bus.queues.requests)


def door_fixture(settings: Settings):
    """A module's `door` fixture (`door = door_fixture(SETTINGS)`): one api for the module's tests,
    its namespace deleted after them."""

    @pytest_asyncio.fixture(scope="module", loop_scope="module", name="door")
    async def door() -> AsyncIterator[Door]:
        async with running_api(settings) as base:
            store, bus = await Store.connect(settings), await Bus.connect(settings)
            yield Door(base, store, bus)
            await bus.delete_namespace()
            await store.delete_namespace()
            await bus.close()
            await store.close()

    return door


@asynccontextmanager
async def running_webhooks(settings: Settings) -> AsyncIterator[None]:
    """The webhook sender (services/webhooks.py) in this process, beside running_stack's services."""
    stopping = asyncio.Event()
    task = asyncio.create_task(serve("webhooks", webhooks.main, settings, stopping), name="webhooks")
    try:
        yield
    finally:
        stopping.set()
        await asyncio.wait_for(task, 60)
