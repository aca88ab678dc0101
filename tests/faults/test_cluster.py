"""Outgrowing one machine, proven the way the engines are: kill nodes under load and count.

Three RabbitMQ nodes (quorum queues of three members) and Redis with a replica and three Sentinels;
the services with two controllers, two routers and two judges (competing consumers; the controllers
contend for the planning lease). Under a steady load from an outside client, SIGKILL, one after
another: the node leading the busiest quorum queue, the Redis primary, one router and one judge
replica, the planning controller. Every job must end `done`, none generated twice, and nobody is
restarted by hand: clients and services fail over by themselves.

The last line printed is `cluster_test nodes=3 kills=<n> done=<n> of <n> lost=<n> duplicated=<n>`;
before it, one line per kill with the failover time (the first job submitted after the kill that
finished, and when)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pytest

from shared.client import Client
from shared.schemas import JobState
from tests.faults.harness import fault_settings
from tests.faults.processes import Cluster, Load, cluster
from tests.faults.servers import MASTER, RabbitCluster, RabbitNode, RedisGroup

pytestmark = [pytest.mark.integration]

RATE_QPS = 5
LOAD_S = 40  # at least; on until KILL_EVERY_S after the last kill
KILL_EVERY_S = 8  # between kills: each failover is over before the next fault


@dataclass
class Kill:
    what: str
    at: float  # time.time() of the SIGKILL
    processes: int = 1  # killed at that instant

    def failover_s(self, load: Load, finished: dict[str, float]) -> float | None:
        """From the kill to the end of the first job submitted after it that finished: new work
        flows again end to end. None if no such job finished."""
        after = [finished[job.job_id] for job in load.jobs
                 if job.submitted_at is not None and job.submitted_at > self.at and job.job_id in finished]
        return min(after) - self.at if after else None


async def planning_controller(client: Client, running: Cluster, timeout_s: float = 30.0) -> str:
    """The running controller replica holding the lease (`<host>:<pid>:<token>`), waited for: just after a
    Redis failover the lease (3 ticks) may have lapsed while the planner's store calls were retried,
    and a replica takes it again at its next tick (CI once read it empty there)."""
    give_up_at = time.monotonic() + timeout_s
    while True:
        holder = await client.store.lease_holder("controller") or ""
        pid = int(holder.split(":")[1]) if holder.count(":") >= 2 else -1
        for name, child in running.children.items():
            if (name.startswith("controller") and child.process is not None and child.process.pid == pid
                    and child.process.poll() is None):
                return name
        if time.monotonic() >= give_up_at:
            raise AssertionError(f"no running controller held the lease within {timeout_s} s ({holder!r})")
        await asyncio.sleep(0.2)


# Its own bounds (three RabbitMQ nodes and the Redis group started, about 50 s of load through five
# kills, then up to 180 s for the last jobs) pass pytest's 300 s on a slow host beside CI's other lanes:
# 118 s alone, 190 s in one CI run, cut at 300 s in two others (2026-12-07). An assertion, not the
# timeout, must say what went wrong.
@pytest.mark.timeout(600)
@pytest.mark.skipif(not RabbitNode.available(), reason="needs Debian's rabbitmq-server")
async def test_killing_nodes_and_replicas_under_load_loses_nothing(tmp_path):
    (tmp_path / "rabbit").mkdir()
    (tmp_path / "redis").mkdir()
    rabbit, redis = RabbitCluster(tmp_path / "rabbit"), RedisGroup(tmp_path / "redis")
    await asyncio.gather(asyncio.to_thread(rabbit.start), asyncio.to_thread(redis.start))
    kills: list[Kill] = []
    try:
        settings = fault_settings(amqp_url=rabbit.url, redis_sentinels=redis.sentinels, redis_sentinel_master=MASTER,
                                  redis_replicas_acked=1, store_retry_s=120)
        client = await Client.open(settings)
        try:
            async with cluster(settings, client, replicas={"controller": 2, "router": 2, "judge": 2}) as running:
                load, faults_over = Load(client, rate_qps=RATE_QPS), asyncio.Event()
                loading = asyncio.create_task(load.run(seconds=LOAD_S, prefix="cluster", until=faults_over))

                async def kill(what: str, action: Callable[[], Awaitable[object]], processes: int = 1) -> None:
                    await asyncio.sleep(KILL_EVERY_S)
                    if loading.done():  # the load stops only after the last fault: it failed
                        loading.result()
                    kills.append(Kill(what, time.time(), processes))
                    await action()

                busiest = client.bus.queues.requests
                leader = await asyncio.to_thread(rabbit.leader_of, busiest)
                await kill(f"rabbitmq node leading {busiest}", lambda: asyncio.to_thread(leader.kill))
                await kill("redis primary", lambda: asyncio.to_thread(redis.kill, "primary"))
                await kill("router and judge replicas",
                           lambda: asyncio.gather(asyncio.to_thread(running.kill, "router"),
                                                  asyncio.to_thread(running.kill, "judge")), processes=2)
                planner = await planning_controller(client, running)
                killed_pid = running.children[planner].process.pid
                await kill(f"planning controller ({planner})", lambda: asyncio.to_thread(running.kill, planner))
                await asyncio.sleep(KILL_EVERY_S)  # the last failover, under load too
                faults_over.set()
                await loading
                outcome = await load.outcome(timeout_s=180)
                killed = {"router", "judge", planner}
                alive = all(child.process.poll() is None for name, child in running.children.items()
                            if name not in killed)
                new_planner = await planning_controller(client, running)
                new_pid = running.children[new_planner].process.pid
        finally:
            await client.close()
    finally:
        await asyncio.gather(asyncio.to_thread(rabbit.stop), asyncio.to_thread(redis.stop))
    finished = {record.job_id: record.history[-1].at for record in outcome.records
                if record is not None and record.state is JobState.done}
    for fault in kills:
        failover = fault.failover_s(load, finished)
        print(f"kill {fault.what}: first job submitted after it done "
              + (f"{failover:.1f} s after the kill" if failover is not None else "never"))
    print(f"the lease passed from {planner} (pid {killed_pid}) to {new_planner} (pid {new_pid})")
    done = outcome.count(JobState.done)
    print(f"cluster_test nodes=3 kills={sum(fault.processes for fault in kills)} done={done} of {len(load.jobs)} "
          f"lost={outcome.lost} duplicated={outcome.duplicated}")
    assert alive, "a service that was not killed died"
    # The lease passed to a live process: the other replica, or the killed one restarted by then (a race
    # either may win, so the name alone proves nothing).
    assert new_pid != killed_pid
    assert outcome.lost == 0 and outcome.duplicated == 0, str(outcome)
    assert done == len(load.jobs), str(outcome)
