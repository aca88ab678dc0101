"""Redis with a replica and three Sentinels: the primary is killed (SIGKILL) while jobs are being
finished; the store follows the failover by itself, and, with HADIS_REDIS_REPLICAS_ACKED=1, no
finished job's record is lost. Without it, the test measures what asynchronous replication loses."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from pathlib import Path

import pytest

from shared.faults import RedisServer
from shared.schemas import JobState
from shared.store import Change, Store
from tests.faults.servers import wait_port
from tests.helpers import free_port, make_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MASTER = "hadis"


class RedisGroup:
    """A primary, a replica and three Sentinels on free ports, in a directory of their own."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.primary_port, self.replica_port = free_port(), free_port()
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.servers: dict[str, RedisServer] = {}  # primary, replica
        self.processes: dict[str, subprocess.Popen] = {}  # the Sentinels

    def start(self) -> None:
        self._server("primary", self.primary_port)
        self._server("replica", self.replica_port, "--replicaof", "127.0.0.1", str(self.primary_port))
        for index, port in enumerate(self.sentinel_ports):
            config = self.directory / f"sentinel{index}.conf"
            config.write_text(f"port {port}\nbind 127.0.0.1\ndir {self.directory}\n"
                              f"sentinel monitor {MASTER} 127.0.0.1 {self.primary_port} 2\n"
                              f"sentinel down-after-milliseconds {MASTER} 1000\n"
                              f"sentinel failover-timeout {MASTER} 10000\n")
            self.processes[f"sentinel{index}"] = subprocess.Popen(
                ["redis-server", str(config), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_port(port, 30)
        # Load starts once the replica is in sync and every Sentinel knows it (they learn replicas
        # from the primary's INFO, every 10 s): before that a failover has nowhere to go.
        self._wait_for("the replica's sync", lambda: "master_link_status:up" in cli(self.replica_port, "info",
                                                                                   "replication"))
        for port in self.sentinel_ports:
            self._wait_for("the Sentinels to see the replica",
                           lambda port=port: str(self.replica_port) in cli(port, "sentinel", "replicas", MASTER))

    @staticmethod
    def _wait_for(what: str, ready, timeout_s: float = 60.0) -> None:
        give_up_at = time.monotonic() + timeout_s
        while not ready():
            assert time.monotonic() < give_up_at, f"no {what} within {timeout_s} s"
            time.sleep(0.2)

    def _server(self, name: str, port: int, *extra: str) -> None:
        (self.directory / name).mkdir()
        server = RedisServer(self.directory / name, port, extra_args=("--repl-diskless-sync-delay", "0", *extra))
        server.start()
        self.servers[name] = server

    @property
    def sentinels(self) -> str:
        return ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)

    def kill(self, name: str) -> None:
        self.servers[name].stop(signal.SIGKILL)

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)


def cli(port: int, *args: str) -> str:
    return subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True, timeout=10).stdout


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
