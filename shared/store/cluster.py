"""The plan and the cluster in the store: agents and their GPUs, worker heartbeats and their
claims' liveness, the planning controller's lease, Redis's memory."""

from __future__ import annotations

import time
from typing import Any

import orjson

from shared.schemas import Plan
from shared.store.base import RedisStore

AGENT_LEFT_TTL_S = 86_400  # longer than any HADIS_GPU_ABSENT_S: the controller sees the departure
PLAN_HISTORY = 50  # plans kept in ns:plan:history, newest first, with their reasons (the dashboard shows them)


class Cluster(RedisStore):
    """The plan, agents, workers and leases."""

    # The plan.
    async def publish_plan(self, plan_fields: dict[str, Any]) -> Plan:
        """Store a new plan under the next version number."""
        version = await self._call(self._redis.incr, f"{self.plan_key}:version")
        plan = Plan.model_validate({**plan_fields, "version": version})
        raw = plan.model_dump_json()

        async def store() -> None:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.set(self.plan_key, raw, ex=self.ttl)
                pipe.lpush(f"{self.plan_key}:history", raw)
                pipe.ltrim(f"{self.plan_key}:history", 0, PLAN_HISTORY - 1)
                pipe.expire(f"{self.plan_key}:history", self.ttl)
                pipe.expire(f"{self.plan_key}:version", self.ttl)
                await pipe.execute()

        await self._call(store)
        return plan

    async def plan_history(self, count: int = PLAN_HISTORY) -> list[Plan]:
        """The last `count` plans published (at most PLAN_HISTORY), newest first."""
        raws = await self._call(self._redis.lrange, f"{self.plan_key}:history", 0, max(count, 1) - 1)
        return [Plan.model_validate_json(raw) for raw in raws]

    async def refresh_plan_ttl(self) -> None:
        await self._call(self._redis.expire, self.plan_key, self.ttl)
        await self._call(self._redis.expire, f"{self.plan_key}:version", self.ttl)
        await self._call(self._redis.expire, f"{self.plan_key}:history", self.ttl)

    async def get_plan(self) -> Plan | None:
        raw = await self._call(self._redis.get, self.plan_key)
        return Plan.model_validate_json(raw) if raw else None

    # The cluster: agents (one per host, owning its GPUs), worker heartbeats, the controller's lease.
    async def register_agent(self, host: str, gpus: list[str], ttl_s: float) -> None:
        record = {"host": host, "gpus": gpus, "at": time.time()}

        async def register() -> None:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.set(f"{self.ns}:agent:{host}", orjson.dumps(record), px=int(ttl_s * 1000))
                pipe.delete(f"{self.ns}:agent-left:{host}")
                await pipe.execute()

        await self._call(register)

    async def register_agent_left(self, host: str, gpus: list[str]) -> None:
        """A clean shutdown: the controller drops these GPUs from the plan at once (shared/policies/fleet.py)."""
        record = {"host": host, "gpus": gpus, "at": time.time()}

        async def leave() -> None:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(f"{self.ns}:agent:{host}")
                pipe.set(f"{self.ns}:agent-left:{host}", orjson.dumps(record), ex=AGENT_LEFT_TTL_S)
                await pipe.execute()

        await self._call(leave)

    async def departed_agents(self) -> dict[str, list[str]]:
        """Agents that shut down cleanly and have not registered since: host -> its GPU ids."""
        records = await self._scan_json(f"{self.ns}:agent-left:*")
        return {record["host"]: record["gpus"] for record in records}

    async def agents(self) -> dict[str, list[str]]:
        """Live agents (their registration has not expired): host -> its GPU ids."""
        records = await self._scan_json(f"{self.ns}:agent:*")
        return {record["host"]: record["gpus"] for record in records}

    async def heartbeat_worker(self, gpu: str, info: dict[str, Any], ttl_s: float, owner: str = "") -> None:
        """Renew a worker's record and, with `owner`, the liveness of its claims (see owner_id)."""
        record = {**info, "gpu": gpu, "at": time.time()}

        async def renew() -> None:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.set(f"{self.ns}:worker:{gpu}", orjson.dumps(record), px=int(ttl_s * 1000))
                if owner:
                    pipe.set(self.owner_prefix + owner, b"1", px=int(ttl_s * 1000))
                await pipe.execute()

        await self._call(renew)

    async def clear_worker(self, gpu: str, owner: str = "") -> None:
        """A worker that stops (or that its agent saw die) no longer holds claims."""
        keys = [f"{self.ns}:worker:{gpu}"] + ([self.owner_prefix + owner] if owner else [])
        await self._call(self._redis.delete, *keys)

    async def forget_owner(self, owner: str) -> None:
        """An owner that died: its claims pass to the next worker at once, not when the key expires."""
        await self._call(self._redis.delete, self.owner_prefix + owner)

    async def memory(self) -> tuple[int, int]:
        """Redis's used memory and its maxmemory (0: unbounded), in bytes."""
        info = await self._call(self._redis.info, "memory")
        return int(info.get("used_memory", 0)), int(info.get("maxmemory", 0))

    async def workers(self) -> list[dict[str, Any]]:
        """Live workers, from their heartbeats."""
        return sorted(await self._scan_json(f"{self.ns}:worker:*"), key=lambda record: record["gpu"])

    async def workers_of(self, gpus: list[str]) -> list[dict[str, Any]]:
        """The live workers of these GPUs, from their heartbeats: one MGET, no keyspace scan."""
        if not gpus:
            return []
        values = await self._call(self._redis.mget, [f"{self.ns}:worker:{gpu}" for gpu in gpus])
        return [orjson.loads(value) for value in values if value is not None]

    async def _scan_json(self, pattern: str) -> list[dict[str, Any]]:
        async def scan() -> list[dict[str, Any]]:
            keys = [key async for key in self._redis.scan_iter(match=pattern, count=1000)]
            values = await self._redis.mget(keys) if keys else []
            return [orjson.loads(value) for value in values if value is not None]

        return await self._call(scan)

    async def hold_lease(self, name: str, holder: str, ttl_s: float) -> bool:
        """Take or renew a lease; False while another holder has it (one planning controller)."""
        return bool(await self._call(self._lease, keys=[f"{self.ns}:lease:{name}"],
                                     args=[holder, int(ttl_s * 1000)]))

    async def lease_holder(self, name: str) -> str | None:
        """Who holds a lease now (`<host>:<pid>:<token>` for a controller); None when nobody does."""
        holder = await self._call(self._redis.get, f"{self.ns}:lease:{name}")
        return holder.decode() if isinstance(holder, bytes) else holder
