"""The store's connection to Redis: retries through outages, Sentinel failover, the key names of
a namespace. The parts of the store (records, cluster, tenants) build on it."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Self
from urllib.parse import urlparse

import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ReadOnlyError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.errors import StoreRejected, Unavailable
from shared.settings import Settings
from shared.store import scripts, transition

RETRY_FIRST_S, RETRY_MAX_S = 0.1, 2.0  # backoff of a Redis call during an outage
DELETE_CHUNK = 1000  # keys a namespace's deletion scans and deletes per round trip


def _sentinel_client(settings: Settings, options: dict[str, Any]) -> aioredis.Redis:
    """A client of whichever server the Sentinels name primary: on a lost connection or a READONLY
    answer (a demoted primary) it asks them again, and _call's retry carries the command over."""
    url = urlparse(settings.redis_url.get_secret_value())
    database = int(url.path.lstrip("/") or 0)
    addresses = [(host, int(port)) for host, port in
                 (entry.rsplit(":", 1) for entry in settings.redis_sentinels.split(","))]
    sentinel = Sentinel(addresses, socket_timeout=2, socket_connect_timeout=2)
    return sentinel.master_for(settings.redis_sentinel_master, password=url.password, db=database, **options)


def on_a_replica(error: ResponseError) -> bool:
    """Whether Redis refused a command because the server is a replica: the server's role, not the
    command's fault. A write (READONLY) or, after a pipeline of transitions that wrote nothing (each
    refused by the script), WAIT, on a connection to a primary that was demoted under it. redis-py
    goes back to the Sentinels by itself only on READONLY from a Sentinel's primary; WAIT's answer
    stayed on the same connection and the job's message was dead-lettered as refused
    (tests/faults/test_cluster.py, CI 2026-12-06)."""
    return isinstance(error, ReadOnlyError) or "cannot be used with replica instances" in str(error)


def without_replicas(error: ResponseError) -> bool:
    """Whether a primary refused a write because too few replicas follow it (NOREPLICAS:
    min-replicas-to-write, docker/cluster/redis-ha.sh): a primary that lost them is likely one the
    Sentinels are replacing, and a write it took would not survive that. Asked again, the Sentinels
    name the primary that is; once a replica follows it, the write goes through."""
    return str(error).startswith("NOREPLICAS")


class RedisStore:
    """The connection, its retries and the namespace's key names, under every part of the store."""

    def __init__(self, settings: Settings, client: aioredis.Redis) -> None:
        self.settings = settings
        self.ns = settings.namespace
        self.ttl = settings.job_ttl_s
        self.image_ttl = min(settings.image_ttl_s, settings.job_ttl_s)
        self.retry_s = settings.store_retry_s
        self._redis = client
        self._transition = client.register_script(transition.SOURCE)
        self._lease = client.register_script(scripts._LEASE)
        self._admit = client.register_script(scripts._ADMIT)
        self._release_slots = client.register_script(scripts._RELEASE_SLOTS)

    @classmethod
    async def connect(cls, settings: Settings, *, retry_s: float | None = None) -> Self:
        """Connect, waiting up to retry_s (default: the settings' store_retry_s) for Redis to answer."""
        # driver_info=None: no CLIENT SETINFO in the connection's handshake. Redis 7.0 (Debian's) refuses it;
        # redis-py reads the refusal and goes on, but a handshake cut by a timeout on a loaded machine left
        # it to the next command, and a router crashed on "unknown subcommand 'SETINFO'" (CI, 2026-12-06).
        options: dict[str, Any] = dict(socket_connect_timeout=5, socket_timeout=10, health_check_interval=15,
                                       retry_on_timeout=True, driver_info=None)
        if settings.redis_sentinels:
            client = _sentinel_client(settings, options)
        else:
            client = aioredis.from_url(settings.redis_url.get_secret_value(), **options)
        store = cls(settings, client)
        await store._call(client.ping, retry_s=retry_s)
        return store

    async def close(self) -> None:
        await self._redis.aclose()

    async def _call(self, function, *args, retry_s: float | None = None, **kwargs):
        """Run a Redis command, retrying a lost connection (or a Redis out of memory, or a server
        that is a replica: on_a_replica, or a primary without its replicas: without_replicas) with
        backoff for retry_s (the settings' store_retry_s), then raise Unavailable. A command Redis
        refuses for another reason (a key of the wrong type) raises StoreRejected at once."""
        give_up_at = time.monotonic() + (self.retry_s if retry_s is None else retry_s)
        delay = RETRY_FIRST_S
        while True:
            try:
                return await function(*args, **kwargs)
            except (RedisConnectionError, RedisTimeoutError, OSError) as error:
                problem: Exception = error
            except NoScriptError:
                raise  # redis-py's Script loads the script and retries; a pipeline handles it itself
            except ResponseError as error:
                if on_a_replica(error) or without_replicas(error):  # a primary demoted, or being: ask again
                    await self._redis.connection_pool.disconnect(inuse_connections=False)
                elif not str(error).startswith(("OOM", "LOADING", "BUSY", "MASTERDOWN")):
                    raise StoreRejected(f"Redis refused the command: {error}") from error
                problem = error
            if time.monotonic() + delay > give_up_at:
                raise Unavailable(f"Redis unreachable: {problem}") from problem
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)

    # Keys.
    def job_key(self, job_id: str) -> str:
        return f"{self.ns}:job:{job_id}"

    def image_key(self, job_id: str, variant: str = "") -> str:
        return f"{self.ns}:image:{job_id}" + (f":{variant}" if variant else "")

    def done_channel(self, job_id: str) -> str:
        return f"{self.ns}:done:{job_id}"

    @property
    def events_key(self) -> str:
        return f"{self.ns}:events"

    @property
    def arrivals_key(self) -> str:
        return f"{self.ns}:arrivals"

    def webhook_key(self, job_id: str) -> str:
        return f"{self.ns}:job:{job_id}:webhook"

    @property
    def webhooks_due_key(self) -> str:
        return f"{self.ns}:webhooks:due"

    @property
    def batch_arrivals_key(self) -> str:
        """Batch jobs recorded `queued` (transition.lua): not the controller's demand, counted apart."""
        return f"{self.ns}:arrivals:batch"

    @property
    def batch_due_key(self) -> str:
        """The batch backlog (transition.lua keeps it): batch jobs not yet ended, scored by deadline."""
        return f"{self.ns}:batch:due"

    def waiting_key(self, tier: str, priority: str | None = None) -> str:
        """A tier's waiting line (transition.lua keeps it): its jobs routed or escalated, not yet
        claimed; batch jobs (priority "batch") wait in a line of their own."""
        return f"{self.ns}:waiting:{tier}" + (":batch" if priority == "batch" else "")

    @property
    def plan_key(self) -> str:
        return f"{self.ns}:plan"

    @property
    def owner_prefix(self) -> str:
        return f"{self.ns}:owner:"

    def _api(self, *parts: str) -> str:
        return ":".join((self.ns, "api", *parts))

    # Housekeeping (tests, experiments).
    async def delete_namespace(self) -> int:
        """Every key of the namespace, deleted. Each delete retries as any write does (_call): just
        after a Sentinel failover the new primary refuses writes until a replica follows it
        (NOREPLICAS), and a bare delete failed the sentinel fault test once its writes had passed."""
        keys = [key async for key in self._redis.scan_iter(match=f"{self.ns}:*", count=DELETE_CHUNK)]
        deleted = 0
        for start in range(0, len(keys), DELETE_CHUNK):  # one round trip per chunk, not per key
            deleted += await self._call(self._redis.delete, *keys[start:start + DELETE_CHUNK])
        return deleted

    async def ping(self) -> bool:
        return bool(await self._call(self._redis.ping))
