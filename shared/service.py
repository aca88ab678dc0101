"""What every service shares: connect to the broker and the store, follow the plan,
stop gracefully on SIGTERM/SIGINT, and settle a failed message in one place."""

from __future__ import annotations

import asyncio
import cProfile
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from shared import busy_carry, crashpoints, metrics
from shared.bus import Bus, Delivery
from shared.errors import Disposition, Expired, describe, disposition_for
from shared.logging import configure, get_logger
from shared.plans import PlanWatcher
from shared.schemas import JobState
from shared.settings import Settings, get_settings
from shared.store import Store

log = get_logger(__name__)


@dataclass
class Service:
    name: str
    settings: Settings
    bus: Bus
    store: Store
    plans: PlanWatcher
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    async def settle_failure(self, delivery: Delivery, error: BaseException, job_ids: Iterable[str], *,
                             owned: bool = True, also: Iterable[Delivery] = (),
                             priority: str = "interactive") -> Disposition:
        """The one place that turns an error into ack / requeue / dead-letter, and writes the
        terminal record when the job will not be tried again. `owned=False` for a message that
        could not be parsed: the id it names may be another job's, so only a missing record is
        written (a message must not fail a job it cannot prove is its own). `also`: duplicate
        deliveries of the same job, settled the same way; `priority`: the jobs' service class (the
        class metrics)."""
        disposition = disposition_for(error, delivery.delivery_count, self.settings.max_deliveries)
        reason = describe(error)
        log.warning("job_error", error=reason, disposition=disposition.value, delivery=delivery.delivery_count)
        if disposition is not Disposition.requeue:
            state = JobState.expired if isinstance(error, Expired) else JobState.failed
            for job_id in job_ids:
                try:
                    if await self.store.fail(job_id, state, reason, create_only=not owned):
                        metrics.observe_unserved(state, priority=priority)
                except Exception as store_error:  # settle all the same: a dead letter is recorded later
                    log.warning("fail_record_not_written", job_id=job_id, error=describe(store_error))
        for each in (delivery, *also):
            await each.settle(disposition)
        return disposition


ServiceMain = Callable[[Service], Awaitable[None]]


async def serve(name: str, main: ServiceMain, settings: Settings | None = None,
                stopping: asyncio.Event | None = None) -> None:
    """Run a service until `stopping` is set (SIGTERM/SIGINT set it when run as a process)."""
    settings = settings or get_settings()
    crashpoints.arm(settings.crash_at)
    # Both wait out an outage at start (HADIS_CONNECT_RETRY_S): a service never exits because
    # RabbitMQ or Redis is away for seconds or minutes.
    bus = await Bus.connect(settings)
    try:
        store = await Store.connect(settings, retry_s=settings.connect_retry_s)
    except BaseException:
        await bus.close()
        raise
    plans = PlanWatcher(store, settings)
    service = Service(name, settings, bus, store, plans, stopping or asyncio.Event())
    try:
        await plans.start()
        log.info("service_started", service=name)
        await main(service)
    finally:
        await plans.stop()
        await bus.close()
        await store.close()
        log.info("service_stopped", service=name)


def run(name: str, main: ServiceMain) -> None:
    """Entry point of a service process."""
    settings = get_settings()
    configure(settings, name)
    carry = Path(settings.busy_carry_file) if settings.busy_carry_file else None
    if carry is not None:  # before the counters are served: a reader never sees them without it
        busy_carry.take(carry)
    if settings.metrics_port is not None:
        metrics.start_metrics_server(settings.metrics_port)

    async def run_with_signals() -> None:
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stopping.set)
        log.info("event_loop", loop=type(loop).__module__.split(".")[0])
        await serve(name, main, settings, stopping)

    try:
        with cpu_profile(settings.cpu_profile_dir, name), \
                asyncio.Runner(loop_factory=loop_factory(settings.event_loop)) as runner:
            runner.run(run_with_signals())
    finally:
        if carry is not None:  # after its last batch, whatever ended the process (short of a kill)
            busy_carry.leave(carry)


@contextmanager
def cpu_profile(directory: str, name: str) -> Iterator[None]:
    """cProfile over the service's life, on CPU time (process_time: idle waits cost nothing; the CPU of
    the model and scoring threads lands on whatever the loop thread runs then), when a directory is set:
    where a job's CPU goes, per service (scripts/bench_pipeline.py --profile)."""
    if not directory:
        yield
        return
    profiler = cProfile.Profile(time.process_time)
    profiler.enable()
    try:
        yield
    finally:
        profiler.disable()
        Path(directory).mkdir(parents=True, exist_ok=True)
        profiler.dump_stats(Path(directory) / f"{name}-{os.getpid()}.prof")


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop (HADIS_EVENT_LOOP=auto or uvloop): the services spend most of their time in the
    loop's socket and callback machinery, which libuv runs in C; None: asyncio's default loop."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise RuntimeError("HADIS_EVENT_LOOP=uvloop, and uvloop is not installed (the serve extra)") from None
        return None
    return uvloop.new_event_loop


class InFlight:
    """Counts handlers at work, so a stopping service can wait for them (bounded)."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def __enter__(self) -> InFlight:
        self.count += 1
        self._idle.clear()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.count -= 1
        if self.count == 0:
            self._idle.set()

    async def drain(self, grace_s: float) -> None:
        """Wait up to grace_s for in-flight work; messages still unsettled after that go back to
        their queue when the channel closes."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=grace_s)
        except TimeoutError:
            log.warning("drain_timeout", in_flight=self.count)
