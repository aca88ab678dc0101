"""A three-node RabbitMQ cluster under the services, with the broker list as HADIS_AMQP_URL: the node
leading the busiest quorum queue is killed with SIGKILL while jobs keep coming; the services fail
over to the other nodes by themselves and every job ends `done`, none twice."""

from __future__ import annotations

import asyncio
import time

import pytest

from shared.client import Client
from shared.faults import Load, cluster
from shared.schemas import JobState
from tests.faults.harness import fault_settings
from tests.faults.servers import RabbitCluster, RabbitNode

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.skipif(not RabbitNode.available(), reason="needs Debian's rabbitmq-server")
async def test_killing_the_quorum_leader_node_loses_nothing(tmp_path):
    nodes = RabbitCluster(tmp_path)
    await asyncio.to_thread(nodes.start)
    try:
        settings = fault_settings(amqp_url=nodes.url)
        client = await Client.open(settings)
        try:
            async with cluster(settings, client) as running:
                load = Load(client, rate_qps=5)
                loading = asyncio.create_task(load.run(seconds=12, prefix="cluster"))
                await asyncio.sleep(4)
                leader = await asyncio.to_thread(nodes.leader_of, client.bus.queues.requests)
                killed_at = time.monotonic()
                await asyncio.to_thread(leader.kill)
                await loading
                outcome = await load.outcome(timeout_s=180)
                after_kill = time.monotonic() - killed_at
                alive = all(child.process.poll() is None for child in running.children.values())
        finally:
            await client.close()
    finally:
        await asyncio.to_thread(nodes.stop)
    print(f"cluster_test nodes=3 kills=1 done={outcome.count(JobState.done)} of {len(load.jobs)} "
          f"lost={outcome.lost} duplicated={outcome.duplicated} (all terminal {after_kill:.1f} s after the kill)")
    assert alive, "a service died"
    assert outcome.lost == 0 and outcome.duplicated == 0, str(outcome)
    assert outcome.count(JobState.done) == len(load.jobs), str(outcome)
