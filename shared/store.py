"""Redis: job records, images, the plan and completion events; the only module that imports redis.

Keys of a namespace `ns` (every key has a TTL):

    ns:job:<id>           hash   the record's scalar fields
    ns:job:<id>:history   list   one Transition JSON per state change
    ns:image:<id>         string the final PNG
    ns:image:<id>:light   string the light model's PNG, kept for the judge
    ns:done:<id>          pub/sub channel: the terminal state, published once
    ns:events             stream every transition (job_id, state, at, tier, model), capped
    ns:plan               string the current Plan JSON;  ns:plan:version  its counter
    ns:agent:<host>       string an agent's GPUs (JSON), expires unless renewed
    ns:worker:<gpu>       string a worker's heartbeat (tier, model, pid, host), expires unless renewed
    ns:lease:<name>       string the holder of a lease (the planning controller)

State changes run as Lua scripts, so each is atomic. Terminal states are final:
a second `done` for a redelivered job is a no-op, which is what makes completion
idempotent (exactly one visible result per job).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, TimeoutError as RedisTimeoutError

from shared.errors import Unavailable
from shared.schemas import TERMINAL_STATES, JobRecord, JobState, Plan
from shared.settings import Settings

EVENTS_MAX_LENGTH = 200_000
RETRY_S = 10.0

_TERMINAL = ",".join(sorted(s.value for s in TERMINAL_STATES))

# KEYS: record, history, image, events
# ARGV: states (comma-separated, the last is the new state), detail json, ttl, channel, create (0/1), job_id,
#       image bytes or "", n_fields, fields...
# Returns 1 applied, 0 refused (the record exists, for a create; it is terminal, for a transition), -1 no record.
# The transition's time is Redis's clock, so a history is in order whichever process wrote it.
_TRANSITION = f"""
local terminal = {{}}
for s in string.gmatch('{_TERMINAL}', '[^,]+') do terminal[s] = true end
local current = redis.call('HGET', KEYS[1], 'state')
if ARGV[5] == '1' then
  if current then return 0 end
elseif not current then
  return -1
elseif terminal[current] then
  return 0
end
local now = redis.call('TIME')
local at = now[1] .. '.' .. string.format('%06d', tonumber(now[2]))
local ttl = tonumber(ARGV[3])
local state
for s in string.gmatch(ARGV[1], '[^,]+') do
  state = s
  local transition = '{{"state":"' .. s .. '","at":' .. at .. ',"detail":' .. ARGV[2] .. '}}'
  redis.call('RPUSH', KEYS[2], transition)
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', {EVENTS_MAX_LENGTH}, '*', 'job_id', ARGV[6], 'state', s,
             'transition', transition)
end
local fields = {{'state', state}}
for i = 1, tonumber(ARGV[8]) * 2 do fields[#fields + 1] = ARGV[8 + i] end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('EXPIRE', KEYS[2], ttl)
redis.call('EXPIRE', KEYS[4], ttl)
if ARGV[7] ~= '' then redis.call('SET', KEYS[3], ARGV[7], 'EX', ttl) end
if terminal[state] then redis.call('PUBLISH', ARGV[4], state) end
return 1
"""

_LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

APPLIED, REFUSED, MISSING = 1, 0, -1


@dataclass(frozen=True)
class Change:
    """One atomic change of a job record. `passing` are states recorded on the way (a router
    creates a record `queued` and `routed` in one step). The image goes to the final key, or,
    with image_variant="light", to the key the judge reads."""

    job_id: str
    state: JobState
    fields: dict[str, Any] = field(default_factory=dict)
    create: bool = False
    passing: tuple[JobState, ...] = ()
    detail: str = ""
    image: bytes = b""
    image_variant: str = ""


_JSON_FIELDS = ("metadata",)
_FLOAT_FIELDS = ("submitted_at", "deadline", "router_score", "judge_score")
_INT_FIELDS = ("plan_version",)


def _encode(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (dict, list)):
        return orjson.dumps(value).decode()
    return str(value)


class Store:
    def __init__(self, settings: Settings, client: aioredis.Redis) -> None:
        self.settings = settings
        self.ns = settings.namespace
        self.ttl = settings.job_ttl_s
        self._redis = client
        self._transition = client.register_script(_TRANSITION)
        self._lease = client.register_script(_LEASE)

    @classmethod
    async def connect(cls, settings: Settings) -> "Store":
        client = aioredis.from_url(
            settings.redis_url.get_secret_value(),
            socket_connect_timeout=5,
            socket_timeout=10,
            health_check_interval=15,
            retry_on_timeout=True,
        )
        store = cls(settings, client)
        await store._call(client.ping)
        return store

    async def close(self) -> None:
        await self._redis.aclose()

    async def _call(self, function, *args, **kwargs):
        """Run a Redis command, retrying a lost connection for RETRY_S, then raise Unavailable."""
        give_up_at = time.monotonic() + RETRY_S
        while True:
            try:
                return await function(*args, **kwargs)
            except (RedisConnectionError, RedisTimeoutError, OSError) as error:
                if time.monotonic() > give_up_at:
                    raise Unavailable(f"Redis unreachable: {error}") from error
                await asyncio.sleep(0.5)

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
    def plan_key(self) -> str:
        return f"{self.ns}:plan"

    # Job records.
    def _script_call(self, change: Change) -> tuple[list[str], list]:
        fields = dict(change.fields)
        if change.create:
            fields["job_id"] = change.job_id
        if change.image and not change.image_variant:
            fields["image_key"] = self.image_key(change.job_id)
        flat: list[str] = []
        for name, value in fields.items():
            if value is not None:
                flat += [name, _encode(value)]
        job_key = self.job_key(change.job_id)
        keys = [job_key, f"{job_key}:history", self.image_key(change.job_id, change.image_variant), self.events_key]
        states = ",".join(s.value for s in (*change.passing, change.state))
        argv = [states, orjson.dumps(change.detail[:500]).decode(), self.ttl, self.done_channel(change.job_id),
                "1" if change.create else "0", change.job_id, change.image, len(flat) // 2, *flat]
        return keys, argv

    async def apply(self, change: Change) -> int:
        """APPLIED, REFUSED (exists, for a create; terminal, for a transition) or MISSING."""
        keys, argv = self._script_call(change)
        return int(await self._call(self._transition, keys=keys, args=argv))

    async def apply_many(self, changes: list[Change]) -> list[int]:
        """Several changes in one round trip (each still atomic on its own)."""
        if not changes:
            return []

        async def run_pipeline() -> list:
            # EVALSHA directly: a registered script in a pipeline first asks SCRIPT EXISTS, a round
            # trip per batch. A Redis that lost its scripts (restarted) answers NOSCRIPT: load, retry.
            for attempt in range(2):
                async with self._redis.pipeline(transaction=False) as pipe:
                    for change in changes:
                        keys, argv = self._script_call(change)
                        pipe.evalsha(self._transition.sha, len(keys), *keys, *argv)
                    try:
                        return await pipe.execute()
                    except NoScriptError:
                        await self._redis.script_load(_TRANSITION)
            raise Unavailable("Redis refused the transition script")

        return [int(result) for result in await self._call(run_pipeline)]

    async def create(self, job_id: str, state: JobState = JobState.queued, **fields: Any) -> bool:
        """Create the record; False when a record with this id already exists."""
        return await self.apply(Change(job_id, state, fields, create=True)) == APPLIED

    async def transition(self, job_id: str, state: JobState, *, detail: str = "", image: bytes = b"",
                         **fields: Any) -> bool:
        """Move a record to `state` (with an image, for done). False when the record is already
        terminal (a duplicate); raises KeyError when there is no record."""
        result = await self.apply(Change(job_id, state, fields, detail=detail, image=image))
        if result == MISSING:
            raise KeyError(f"no record for job {job_id}")
        return result == APPLIED

    async def fail(self, job_id: str, state: JobState, reason: str, **fields: Any) -> bool:
        """Make a record terminal (failed or expired) whether or not it exists yet."""
        if await self.create(job_id, state, error=reason, **fields):
            return True
        return await self.transition(job_id, state, detail=reason, error=reason, **fields)

    async def get(self, job_id: str) -> JobRecord | None:
        raw, history = await self._call(self._get_raw, job_id)
        if not raw:
            return None
        fields: dict[str, Any] = {k.decode(): v.decode() for k, v in raw.items()}
        for name in _JSON_FIELDS:
            if name in fields:
                fields[name] = orjson.loads(fields[name])
        for name in _FLOAT_FIELDS:
            if name in fields:
                fields[name] = float(fields[name])
        for name in _INT_FIELDS:
            if name in fields:
                fields[name] = int(fields[name])
        if "escalated" in fields:
            fields["escalated"] = fields["escalated"] == "1"
        fields["history"] = [orjson.loads(item) for item in history]
        return JobRecord.model_validate(fields)

    async def _get_raw(self, job_id: str) -> tuple[dict, list]:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(self.job_key(job_id))
            pipe.lrange(f"{self.job_key(job_id)}:history", 0, -1)
            raw, history = await pipe.execute()
        return raw, history

    # Images.
    async def get_image(self, job_id: str, variant: str = "") -> bytes | None:
        return await self._call(self._redis.get, self.image_key(job_id, variant))

    async def get_images(self, job_ids: list[str], variant: str = "") -> list[bytes | None]:
        return await self._call(self._redis.mget, [self.image_key(job_id, variant) for job_id in job_ids])

    # Completion.
    async def wait_terminal(self, job_id: str, timeout_s: float) -> JobRecord | None:
        """Wait for the record to reach a terminal state: subscribe first, then re-check the
        record, so a completion between the two cannot be missed. None on timeout. A lost
        connection (Redis restarting) re-subscribes and re-checks."""
        give_up_at = time.monotonic() + timeout_s
        while time.monotonic() < give_up_at:
            try:
                return await self._wait_subscribed(job_id, give_up_at)
            except (RedisConnectionError, RedisTimeoutError, OSError):
                await asyncio.sleep(0.5)
        return None

    async def _wait_subscribed(self, job_id: str, give_up_at: float) -> JobRecord | None:
        pubsub = self._redis.pubsub()
        try:
            await pubsub.subscribe(self.done_channel(job_id))
            while True:
                record = await self.get(job_id)
                if record is not None and record.state.terminal:
                    return record
                remaining = give_up_at - time.monotonic()
                if remaining <= 0:
                    return None
                # A bounded wait, then re-check: also covers a message lost with a dropped connection.
                await pubsub.get_message(ignore_subscribe_messages=True, timeout=min(remaining, 5.0))
        finally:
            await pubsub.aclose()

    async def last_event_id(self) -> str:
        """The id of the newest event ("0-0" when none): follow events after it."""
        newest = await self._call(self._redis.xrevrange, self.events_key, count=1)
        return newest[0][0].decode() if newest else "0-0"

    async def wait_many(self, job_ids: list[str], since_id: str, timeout_s: float) -> dict[str, str]:
        """Terminal states of many jobs, by following the event stream from `since_id` (taken
        before they were submitted, so nothing is missed) with one connection. Jobs that do not
        finish within timeout_s are absent from the result."""
        waiting, finished = set(job_ids), {}
        give_up_at, last_id = time.monotonic() + timeout_s, since_id
        while waiting and time.monotonic() < give_up_at:
            block_ms = max(int((give_up_at - time.monotonic()) * 1000), 1)
            for last_id, event in await self.read_events(last_id, count=5000, block_ms=min(block_ms, 1000)):
                if event["job_id"] in waiting and JobState(event["state"]).terminal:
                    waiting.discard(event["job_id"])
                    finished[event["job_id"]] = event["state"]
        return finished

    async def read_events(self, last_id: str = "0-0", count: int = 1000, block_ms: int | None = None) -> list:
        """Events after `last_id`: [(event_id, {field: value})]."""
        reply = await self._call(self._redis.xread, {self.events_key: last_id}, count=count, block=block_ms)
        if not reply:
            return []
        return [(event_id.decode(), {k.decode(): v.decode() for k, v in data.items()}) for event_id, data in reply[0][1]]

    # The plan.
    async def publish_plan(self, plan_fields: dict[str, Any]) -> Plan:
        """Store a new plan under the next version number."""
        version = await self._call(self._redis.incr, f"{self.plan_key}:version")
        plan = Plan.model_validate({**plan_fields, "version": version})
        await self._call(self._redis.set, self.plan_key, plan.model_dump_json(), ex=self.ttl)
        await self._call(self._redis.expire, f"{self.plan_key}:version", self.ttl)
        return plan

    async def refresh_plan_ttl(self) -> None:
        await self._call(self._redis.expire, self.plan_key, self.ttl)
        await self._call(self._redis.expire, f"{self.plan_key}:version", self.ttl)

    async def get_plan(self) -> Plan | None:
        raw = await self._call(self._redis.get, self.plan_key)
        return Plan.model_validate_json(raw) if raw else None

    # The cluster: agents (one per host, owning its GPUs), worker heartbeats, the controller's lease.
    async def register_agent(self, host: str, gpus: list[str], ttl_s: float) -> None:
        record = {"host": host, "gpus": gpus, "at": time.time()}
        await self._call(self._redis.set, f"{self.ns}:agent:{host}", orjson.dumps(record), px=int(ttl_s * 1000))

    async def agents(self) -> dict[str, list[str]]:
        """Live agents (their registration has not expired): host -> its GPU ids."""
        records = await self._scan_json(f"{self.ns}:agent:*")
        return {record["host"]: record["gpus"] for record in records}

    async def heartbeat_worker(self, gpu: str, info: dict[str, Any], ttl_s: float) -> None:
        record = {**info, "gpu": gpu, "at": time.time()}
        await self._call(self._redis.set, f"{self.ns}:worker:{gpu}", orjson.dumps(record), px=int(ttl_s * 1000))

    async def clear_worker(self, gpu: str) -> None:
        await self._call(self._redis.delete, f"{self.ns}:worker:{gpu}")

    async def workers(self) -> list[dict[str, Any]]:
        """Live workers, from their heartbeats."""
        return sorted(await self._scan_json(f"{self.ns}:worker:*"), key=lambda record: record["gpu"])

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

    # Housekeeping (tests, experiments).
    async def delete_namespace(self) -> int:
        deleted = 0
        async for key in self._redis.scan_iter(match=f"{self.ns}:*", count=1000):
            deleted += await self._redis.delete(key)
        return deleted

    async def ping(self) -> bool:
        return bool(await self._call(self._redis.ping))
