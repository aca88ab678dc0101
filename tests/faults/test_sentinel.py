"""Redis with a replica and three Sentinels: the primary is killed (SIGKILL) while jobs are being
finished; the store follows the failover by itself, and, with HADIS_REDIS_REPLICAS_ACKED=1, no
finished job's record is lost. Without it, the test measures what asynchronous replication loses."""

from __future__ import annotations

import asyncio
import time

import pytest

from shared.schemas import JobState
from shared.store import Change, Store
from tests.faults.processes import RedisServer, cluster_redis_args
from tests.faults.servers import MASTER, RedisGroup, cli
from tests.helpers import free_port, make_settings

pytestmark = [pytest.mark.integration]

async def finish_jobs(store: Store, prefix: str, until: asyncio.Event, acked: list[str],
                      finished_at: dict[str, float]) -> None:
    """Jobs created and finished one after another; an id goes to `acked` once its `done` returned."""
    index = 0
    while not until.is_set():
        job_id = f"{prefix}-{index}"
        await store.apply(Change(job_id, JobState.queued, {"prompt": "a kite"}, create=True))
        await store.apply(Change(job_id, JobState.done, {"tier": "light"}))
        acked.append(job_id)
        finished_at[job_id] = time.monotonic()
        index += 1


@pytest.mark.parametrize("replicas_acked", [1, 0])
async def test_primary_killed_mid_load_store_follows_the_failover(tmp_path, replicas_acked):
    group = RedisGroup(tmp_path)
    group.start()
    settings = make_settings(redis_sentinels=group.sentinels, redis_sentinel_master=MASTER,
                             redis_replicas_acked=replicas_acked, store_retry_s=60)
    try:
        store = await Store.connect(settings)
        until, acked, finished_at = asyncio.Event(), [], {}
        writing = asyncio.create_task(finish_jobs(store, "job", until, acked, finished_at))
        await asyncio.sleep(2.0)
        acked_before_kill = len(acked)
        killed_at = time.monotonic()
        await asyncio.to_thread(group.kill, "primary")
        give_up_at = killed_at + 60
        while not [at for at in finished_at.values() if at > killed_at + 0.5]:
            assert time.monotonic() < give_up_at, "no write succeeded within 60 s of the kill"
            assert not writing.done(), writing.exception()
            await asyncio.sleep(0.1)
        failover_s = min(at for at in finished_at.values() if at > killed_at + 0.5) - killed_at
        await asyncio.sleep(1.0)
        until.set()
        await writing
        states = await store.states(acked)
        lost = [job_id for job_id, state in zip(acked, states, strict=True) if state is not JobState.done]
        print(f"sentinel failover (replicas_acked={replicas_acked}): first write {failover_s:.1f} s after the "
              f"kill; {len(acked)} jobs finished ({acked_before_kill} before it), lost {len(lost)}")
        await store.delete_namespace()
        await store.close()
    finally:
        group.stop()
    assert acked_before_kill > 10 and len(acked) > acked_before_kill
    if replicas_acked:
        assert lost == [], lost


async def test_a_primary_demoted_under_an_open_connection_is_left_not_blamed_on_the_job(tmp_path):
    """The server the store is connected to becomes a replica (REPLICAOF, which leaves its clients
    connected: a Sentinel failover that a loaded machine aborted did so in CI) and a terminal write
    that the script refuses (it writes nothing, so no READONLY) meets WAIT on a replica. That is the
    server's role, not the job: the store drops the connection and retries, and the write goes
    through once a primary answers. Before, it raised StoreRejected at once and the job's message
    was dead-lettered (tests/faults/test_cluster.py)."""
    server = RedisServer(tmp_path, free_port())
    server.start()
    settings = make_settings(redis_url=server.url, redis_replicas_acked=1, redis_replicas_wait_ms=10,
                             store_retry_s=30)
    try:
        store = await Store.connect(settings)
        try:
            await store.apply(Change("held", JobState.queued, {"prompt": "a kite"}, create=True))
            # A master that does not exist: the server stays a replica, its link down, until promoted.
            assert "OK" in await asyncio.to_thread(cli, server.port, "replicaof", "127.0.0.1", str(free_port()))
            refused = asyncio.create_task(store.apply(Change("never-made", JobState.done, {"tier": "light"})))
            await asyncio.sleep(1.0)
            assert not refused.done(), refused  # retrying, not refused as the job's fault
            assert "OK" in await asyncio.to_thread(cli, server.port, "replicaof", "no", "one")
            outcome = await asyncio.wait_for(refused, timeout=20)
            assert not outcome.applied  # no such record: the script's own refusal, now from a primary
            assert await store.states(["held"]) == [JobState.queued]
        finally:
            await asyncio.to_thread(cli, server.port, "replicaof", "no", "one")
            await store.delete_namespace()
            await store.close()
    finally:
        server.stop()


async def test_a_primary_without_its_replicas_holds_writes_until_one_follows(tmp_path):
    """A primary run as the cluster runs them (min-replicas-to-write 1, docker/cluster/redis-ha.sh)
    refuses writes while no replica follows it (NOREPLICAS): the store retries, as for a primary
    demoted under it, and the write goes through once one does. That refusal is what keeps a
    primary the Sentinels are replacing from taking writes that its resync would flush (CI,
    2026-12-07: two replicas promoted 2 s apart, the first's 11 s of writes lost, jobs without a
    record). Before, NOREPLICAS raised StoreRejected at once and the job's message was dead-lettered."""
    server = RedisServer(tmp_path, free_port(), extra_args=tuple(cluster_redis_args()))
    server.start()
    settings = make_settings(redis_url=server.url, store_retry_s=30)
    try:
        store = await Store.connect(settings)
        try:
            held = asyncio.create_task(store.apply(Change("held", JobState.queued, {"prompt": "a kite"}, create=True)))
            await asyncio.sleep(1.0)
            assert not held.done(), held  # retrying, not refused as the job's fault
            # A replica follows again (here: the bound lifted, as a replica's arrival would lift it).
            assert "OK" in await asyncio.to_thread(cli, server.port, "config", "set", "min-replicas-to-write", "0")
            outcome = await asyncio.wait_for(held, timeout=20)
            assert outcome.applied
            assert await store.states(["held"]) == [JobState.queued]
            # Housekeeping waits too: a bare delete once failed the failover test after its writes had passed.
            assert "OK" in await asyncio.to_thread(cli, server.port, "config", "set", "min-replicas-to-write", "1")
            deleting = asyncio.create_task(store.delete_namespace())
            await asyncio.sleep(1.0)
            assert not deleting.done(), deleting
            assert "OK" in await asyncio.to_thread(cli, server.port, "config", "set", "min-replicas-to-write", "0")
            assert await asyncio.wait_for(deleting, timeout=20) >= 1
            assert await store.states(["held"]) == [None]
        finally:
            await asyncio.to_thread(cli, server.port, "config", "set", "min-replicas-to-write", "0")
            await store.delete_namespace()
            await store.close()
    finally:
        server.stop()
