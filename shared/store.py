"""Redis: job records, images, the plan and completion events; the only module that imports redis.

Keys of a namespace `ns` (every key has a TTL):

    ns:job:<id>           hash   the record's scalar fields
    ns:job:<id>:history   list   one Transition JSON per state change
    ns:image:<id>         string the final PNG
    ns:image:<id>:light   string the light model's PNG, kept for the judge
    ns:done:<id>          pub/sub channel: the terminal state, published once
    ns:events             stream every transition (job_id, state, at, tier, model), capped
    ns:arrivals           counter jobs recorded `queued` (the controller's demand), set by the transition script
                          (expires like a record: a counter that went back only resets the controller's baseline)
    ns:plan               string the current Plan JSON;  ns:plan:version  its counter
    ns:agent:<host>       string an agent's GPUs (JSON), expires unless renewed
    ns:agent-left:<host>  string the GPUs of an agent that shut down cleanly (JSON), for AGENT_LEFT_TTL_S
    ns:worker:<gpu>       string a worker's heartbeat (tier, model, pid, host), expires unless renewed
    ns:lease:<name>       string the holder of a lease (the planning controller)
    ns:owner:<gpu>/<pid>  string a worker's liveness: its `generating` claims hold while it exists

The HTTP api's keys (docs/security.md):

    ns:api:key:<id>           hash   an API key's tenant, salt and salted hash; no TTL (revoked by deleting)
    ns:api:tenant:<tenant>    hash   the tenant's limits (rate, burst, max_active); no TTL
    ns:api:rate:<tenant>      string the tenant's GCRA time (shared/policies/tenancy.py), expires when idle
    ns:api:slots:<tenant>     zset   the tenant's jobs not yet terminal, scored by when the slot lapses
    ns:api:idem:<tenant>:<h>  string the job an Idempotency-Key (SHA-256 h) was given, for job_ttl_s
    ns:api:url-secret         string the secret that signs image URLs, made once; no TTL

Job keys, and the api's rate and idempotency keys, have TTLs; keys, tenants and the URL secret are
configuration and last until deleted. State changes run as Lua scripts, so each is atomic. Terminal states are final:
a second `done` for a redelivered job is a no-op, which is what makes completion
idempotent (exactly one visible result per job).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import orjson
import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.apikeys import StoredKey
from shared.errors import StoreRejected, Unavailable
from shared.logging import get_logger
from shared.outcome import Applied, Outcome
from shared.policies.tenancy import Limits
from shared.schemas import TERMINAL_STATES, JobRecord, JobState, Plan
from shared.settings import Settings

log = get_logger(__name__)

EVENTS_MAX_LENGTH = 200_000
AGENT_LEFT_TTL_S = 86_400  # longer than any HADIS_GPU_ABSENT_S: the controller sees the departure
RETRY_FIRST_S, RETRY_MAX_S = 0.1, 2.0  # backoff of a Redis call during an outage

_TERMINAL = ",".join(sorted(s.value for s in TERMINAL_STATES))

# KEYS: record, history, final image, events, light image, arrivals counter
# ARGV: 1 states (comma-separated, the last is the new state), 2 detail json, 3 record ttl, 4 done channel,
#       5 create (0/1), 6 job_id, 7 image bytes or "", 8 image mode ("", final, light, promote), 9 image ttl,
#       10 owner ("" for none), 11 owner key prefix, 12 the fields to set, a JSON object of strings (one
#       argument, not two per field: redis-py packs every argument in Python, the services' biggest
#       Redis cost per job before, measured by make bench-pipeline --profile).
# Returns {code, state before}: 1 applied, 0 refused (the record exists, for a create; it is terminal, for a
# transition), -1 no record, 2 stale (the record is already at a later step), 3 busy (another live worker
# holds the claim), 4 no light image to promote.
#
# States only move forward. A job's steps, in order: queued 0, routed 1, generating on light 2, judging 3,
# escalated 4, generating on heavy 5, terminal 9 (the rank of `generating` depends on the tier). A change to a
# lower rank is refused as stale, so a late redelivery cannot reset a later state; the same rank is refused
# too (a verdict or a light image is stored once), except a re-route and a `generating` claim: a claim passes
# to a new owner only when the old owner's liveness key has expired (it died before storing). The one step
# back: a claim's own owner may hand it back (`routed`, or `escalated` on heavy) before it starts the job
# (see hand_back); the event names that owner, the record forgets it.
# The transition's time is Redis's clock, so a history is in order whichever process wrote it.
_TRANSITION = f"""
local terminal = {{}}
for s in string.gmatch('{_TERMINAL}', '[^,]+') do terminal[s] = true end
local function rank(state, tier)
  if state == 'queued' then return 0 end
  if state == 'routed' then return 1 end
  if state == 'generating' then if tier == 'heavy' then return 5 end return 2 end
  if state == 'judging' then return 3 end
  if state == 'escalated' then return 4 end
  return 9
end
local handback = false
local record = redis.call('HMGET', KEYS[1], 'state', 'tier', 'owner')
local current, current_tier, current_owner = record[1], record[2], record[3]
local extra = cjson.decode(ARGV[12])
local state
for s in string.gmatch(ARGV[1], '[^,]+') do state = s end
local tier = extra['tier'] or current_tier
if ARGV[5] == '1' then
  if current then return {{0, current}} end
elseif not current then
  return {{-1, false}}
elseif terminal[current] then
  return {{0, current}}
else
  local new_rank, old_rank = rank(state, tier), rank(current, current_tier)
  if new_rank < old_rank then
    handback = current == 'generating' and ARGV[10] ~= '' and current_owner == ARGV[10] and
               (state == 'routed' or state == 'escalated')
    if not handback then return {{2, current}} end
  end
  if new_rank == old_rank then
    if state == 'generating' then
      if current_owner and current_owner ~= ARGV[10] and
         redis.call('EXISTS', ARGV[11] .. current_owner) == 1 then
        return {{3, current}}
      end
    elseif state ~= 'routed' then
      return {{2, current}}
    end
  end
end
if ARGV[8] == 'promote' and redis.call('EXISTS', KEYS[5]) == 0 then return {{4, current}} end
local now = redis.call('TIME')
local at = now[1] .. '.' .. string.format('%06d', tonumber(now[2]))
local ttl, image_ttl = tonumber(ARGV[3]), tonumber(ARGV[9])
for s in string.gmatch(ARGV[1], '[^,]+') do
  local transition = '{{"state":"' .. s .. '","at":' .. at .. ',"detail":' .. ARGV[2] .. '}}'
  redis.call('RPUSH', KEYS[2], transition)
  local event = {{'job_id', ARGV[6], 'state', s, 'transition', transition, 'tier', tier or ''}}
  if s == state then
    if ARGV[10] ~= '' then event[#event + 1] = 'owner'; event[#event + 1] = ARGV[10] end
    if ARGV[8] ~= '' then event[#event + 1] = 'image'; event[#event + 1] = ARGV[8] end
  end
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', {EVENTS_MAX_LENGTH}, '*', unpack(event))
  if s == 'queued' then redis.call('INCR', KEYS[6]); redis.call('EXPIRE', KEYS[6], ttl) end
end
local fields = {{'state', state}}
if handback then
  redis.call('HDEL', KEYS[1], 'owner')
elseif ARGV[10] ~= '' then
  fields[#fields + 1] = 'owner'; fields[#fields + 1] = ARGV[10]
end
for name, value in pairs(extra) do fields[#fields + 1] = name; fields[#fields + 1] = value end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('EXPIRE', KEYS[2], ttl)
redis.call('EXPIRE', KEYS[4], ttl)
if ARGV[8] == 'final' then
  redis.call('SET', KEYS[3], ARGV[7], 'EX', image_ttl)
elseif ARGV[8] == 'light' then
  redis.call('SET', KEYS[5], ARGV[7], 'EX', image_ttl)
elseif ARGV[8] == 'promote' then
  redis.call('RENAME', KEYS[5], KEYS[3])
  redis.call('EXPIRE', KEYS[3], image_ttl)
end
if terminal[state] then
  redis.call('DEL', KEYS[5])
  redis.call('PUBLISH', ARGV[4], state)
end
return {{1, current}}
"""

# KEYS: the rate key. ARGV: the expected value ("" when none), the new value, its TTL in ms.
_SWAP = """
local current = redis.call('GET', KEYS[1])
if (current or '') ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""

# KEYS: a tenant's slots. ARGV: now, job id, when its slot lapses, the limit, the key's TTL in ms.
# Lapsed slots are dropped first; a job that holds a slot already keeps it (a retried request).
_TAKE_SLOT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZSCORE', KEYS[1], ARGV[2]) then return 1 end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
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



@dataclass(frozen=True)
class Change:
    """One atomic change of a job record. `passing` are states recorded on the way (a router
    creates a record `queued` and `routed` in one step). The image goes to the final key, or,
    with image_variant="light", to the key the judge reads; `promote_light` makes the light
    image the final one (a rename in Redis: the image is stored once). `owner` claims the
    `generating` step for a worker (see owner_id)."""

    job_id: str
    state: JobState
    fields: dict[str, Any] = field(default_factory=dict)
    create: bool = False
    passing: tuple[JobState, ...] = ()
    detail: str = ""
    image: bytes = b""
    image_variant: str = ""
    promote_light: bool = False
    owner: str = ""

    @property
    def image_mode(self) -> str:
        if self.promote_light:
            return "promote"
        if not self.image:
            return ""
        return "light" if self.image_variant == "light" else "final"


def serve_light(job_id: str, reason: str) -> Change:
    """`done` with the light image as the final one: a heavy step that cannot be had (too late, its
    queue full) serves the image the job already has."""
    return Change(job_id, JobState.done, {"tier": "light", "escalated": False}, promote_light=True, detail=reason)


def hand_back(job_id: str, owner: str, *, escalated: bool, reason: str) -> Change:
    """Give up a `generating` claim its owner has not started (a worker that stops): the record
    goes back to the step before the claim, so whoever gets the redelivery may still move the job,
    to the light tier when the heavy one is too late. Only the claim's owner can (the store
    refuses anyone else as stale)."""
    return Change(job_id, JobState.escalated if escalated else JobState.routed, owner=owner, detail=reason)


def owner_id(gpu: str, pid: int, instance: str = "") -> str:
    """Who holds a `generating` claim: a worker process (its GPU, pid and an instance token), alive
    while its heartbeat renews `<ns>:owner:<owner>`. The token tells apart two workers with the same
    pid on one GPU, which containers make common (a restarted container numbers its processes
    from 1 again): without it a new worker would keep its dead namesake's claims alive."""
    return f"{gpu}/{pid}.{instance}" if instance else f"{gpu}/{pid}"


_RECORD_FIELDS = frozenset(JobRecord.model_fields)
_JSON_FIELDS = ("metadata",)
_FLOAT_FIELDS = ("submitted_at", "deadline", "router_score", "judge_score")
_INT_FIELDS = ("plan_version",)


def _encode(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (dict, list)):
        return orjson.dumps(value).decode()
    return str(value)


def _sentinel_client(settings: Settings, options: dict[str, Any]) -> aioredis.Redis:
    """A client of whichever server the Sentinels name primary: on a lost connection or a READONLY
    answer (a demoted primary) it asks them again, and _call's retry carries the command over."""
    url = urlparse(settings.redis_url.get_secret_value())
    database = int(url.path.lstrip("/") or 0)
    addresses = [(host, int(port)) for host, port in
                 (entry.rsplit(":", 1) for entry in settings.redis_sentinels.split(","))]
    sentinel = Sentinel(addresses, socket_timeout=2, socket_connect_timeout=2)
    return sentinel.master_for(settings.redis_sentinel_master, password=url.password, db=database, **options)


class Store:
    def __init__(self, settings: Settings, client: aioredis.Redis) -> None:
        self.settings = settings
        self.ns = settings.namespace
        self.ttl = settings.job_ttl_s
        self.image_ttl = min(settings.image_ttl_s, settings.job_ttl_s)
        self.retry_s = settings.store_retry_s
        self._redis = client
        self._transition = client.register_script(_TRANSITION)
        self._lease = client.register_script(_LEASE)
        self._swap = client.register_script(_SWAP)
        self._take_slot = client.register_script(_TAKE_SLOT)

    @classmethod
    async def connect(cls, settings: Settings, *, retry_s: float | None = None) -> Store:
        """Connect, waiting up to retry_s (default: the settings' store_retry_s) for Redis to answer."""
        options: dict[str, Any] = dict(socket_connect_timeout=5, socket_timeout=10, health_check_interval=15,
                                       retry_on_timeout=True)
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
        """Run a Redis command, retrying a lost connection (or a Redis out of memory) with backoff
        for retry_s (the settings' store_retry_s), then raise Unavailable. A command Redis refuses
        for another reason (a key of the wrong type) raises StoreRejected at once."""
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
                if not str(error).startswith(("OOM", "LOADING", "BUSY", "MASTERDOWN", "READONLY")):
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

    @property
    def plan_key(self) -> str:
        return f"{self.ns}:plan"

    @property
    def owner_prefix(self) -> str:
        return f"{self.ns}:owner:"

    # Job records.
    def _script_call(self, change: Change) -> tuple[list[str], list]:
        fields = dict(change.fields)
        if change.create:
            fields["job_id"] = change.job_id
        if change.image_mode in ("final", "promote"):
            fields["image_key"] = self.image_key(change.job_id)
        encoded = orjson.dumps({name: _encode(value) for name, value in fields.items() if value is not None})
        job_key = self.job_key(change.job_id)
        keys = [job_key, f"{job_key}:history", self.image_key(change.job_id), self.events_key,
                self.image_key(change.job_id, "light"), self.arrivals_key]
        states = ",".join(s.value for s in (*change.passing, change.state))
        argv = [states, orjson.dumps(change.detail[:500]), self.ttl, self.done_channel(change.job_id),
                "1" if change.create else "0", change.job_id, change.image, change.image_mode, self.image_ttl,
                change.owner, self.owner_prefix, encoded]
        return keys, argv

    @staticmethod
    def _outcome(reply: list) -> Outcome:
        code, before = reply
        return Outcome(Applied(int(code)), JobState(before.decode()) if before else None)

    async def apply(self, change: Change) -> Outcome:
        """Apply one change atomically (see _TRANSITION for what is refused and why)."""
        if self._waits_for_replicas([change]):
            return (await self.apply_many([change]))[0]
        keys, argv = self._script_call(change)
        return self._outcome(await self._call(self._transition, keys=keys, args=argv))

    def _waits_for_replicas(self, changes: list[Change]) -> bool:
        return self.settings.redis_replicas_acked > 0 and any(change.state.terminal for change in changes)

    async def apply_many(self, changes: list[Change]) -> list[Outcome]:
        """Several changes in one round trip (each still atomic on its own)."""
        if not changes:
            return []

        async def run_pipeline() -> list:
            # EVALSHA directly: a registered script in a pipeline first asks SCRIPT EXISTS, a round
            # trip per batch. A Redis that lost its scripts (restarted) answers NOSCRIPT: load, retry.
            for _attempt in range(2):
                async with self._redis.pipeline(transaction=False) as pipe:
                    for change in changes:
                        keys, argv = self._script_call(change)
                        pipe.evalsha(self._transition.sha, len(keys), *keys, *argv)
                    if wait:  # on the pipeline's connection: WAIT covers that connection's writes
                        pipe.execute_command("WAIT", self.settings.redis_replicas_acked,
                                             self.settings.redis_replicas_wait_ms)
                    try:
                        return await pipe.execute()
                    except NoScriptError:
                        await self._redis.script_load(_TRANSITION)
            raise Unavailable("Redis refused the transition script")

        wait = self._waits_for_replicas(changes)
        replies = await self._call(run_pipeline)
        if wait and int(replies[-1]) < self.settings.redis_replicas_acked:
            log.warning("store_replicas_behind", acked=int(replies[-1]), wanted=self.settings.redis_replicas_acked)
        return [self._outcome(reply) for reply in replies[:len(changes)]]

    async def create(self, job_id: str, state: JobState = JobState.queued, **fields: Any) -> bool:
        """Create the record; False when a record with this id already exists."""
        return (await self.apply(Change(job_id, state, fields, create=True))).applied

    async def transition(self, job_id: str, state: JobState, *, detail: str = "", image: bytes = b"",
                         **fields: Any) -> bool:
        """Move a record to `state` (with an image, for done). False when the record is already
        terminal (a duplicate) or further on; raises KeyError when there is no record."""
        outcome = await self.apply(Change(job_id, state, fields, detail=detail, image=image))
        if outcome.result is Applied.missing:
            raise KeyError(f"no record for job {job_id}")
        return outcome.applied

    async def fail(self, job_id: str, state: JobState, reason: str, *, create_only: bool = False,
                   **fields: Any) -> bool:
        """Make a record terminal (failed or expired) whether or not it exists yet. With create_only,
        an existing record is left alone: the caller cannot prove the job is its own (a message too
        broken to parse names an id, and anybody can write any id into a message)."""
        if await self.create(job_id, state, error=reason, **fields):
            return True
        if create_only:
            return False
        return await self.transition(job_id, state, detail=reason, error=reason, **fields)

    async def states(self, job_ids: list[str]) -> list[JobState | None]:
        """The current state of each job (None: no record), in one round trip."""
        async def read() -> list:
            async with self._redis.pipeline(transaction=False) as pipe:
                for job_id in job_ids:
                    pipe.hget(self.job_key(job_id), "state")
                return await pipe.execute()

        return [JobState(raw.decode()) if raw else None for raw in await self._call(read)] if job_ids else []

    async def get(self, job_id: str) -> JobRecord | None:
        raw, history = await self._call(self._get_raw, job_id)
        if not raw:
            return None
        # Fields this version does not know (written by a newer service, or internal ones such as
        # the claim's owner) are left out, so an old reader still reads a new record.
        fields: dict[str, Any] = {k.decode(): v.decode() for k, v in raw.items() if k.decode() in _RECORD_FIELDS}
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

    async def arrivals(self) -> int:
        """Jobs recorded `queued` so far (the router's records, counted by the transition script):
        the controller's demand, read in one call a tick, however many events the jobs make."""
        return int(await self._call(self._redis.get, self.arrivals_key) or 0)

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
            events = await self.read_events(last_id, count=5000, block_ms=min(block_ms, 1000))
            for _, event in events:
                if event["job_id"] in waiting and JobState(event["state"]).terminal:
                    waiting.discard(event["job_id"])
                    finished[event["job_id"]] = event["state"]
            if events:
                last_id = events[-1][0]
        return finished

    async def read_events(self, last_id: str = "0-0", count: int = 1000, block_ms: int | None = None) -> list:
        """Events after `last_id`: [(event_id, {field: value})]."""
        reply = await self._call(self._redis.xread, {self.events_key: last_id}, count=count, block=block_ms)
        if not reply:
            return []
        return [(event_id.decode(), {k.decode(): v.decode() for k, v in data.items()})
                for event_id, data in reply[0][1]]

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

    # The HTTP api: keys, tenants' limits, rate state, quota slots, idempotency keys.
    def _api(self, *parts: str) -> str:
        return ":".join((self.ns, "api", *parts))

    async def put_api_key(self, stored: StoredKey) -> None:
        await self._call(self._redis.hset, self._api("key", stored.key_id), mapping=stored.as_fields())

    async def get_api_key(self, key_id: str) -> StoredKey | None:
        fields = await self._call(self._redis.hgetall, self._api("key", key_id))
        if not fields:
            return None
        return StoredKey.from_fields(key_id, {k.decode(): v.decode() for k, v in fields.items()})

    async def api_keys(self) -> list[StoredKey]:
        async def scan() -> list[str]:
            return [key.decode() async for key in self._redis.scan_iter(match=self._api("key", "*"), count=1000)]

        found = [await self.get_api_key(key.rsplit(":", 1)[1]) for key in await self._call(scan)]
        return sorted((key for key in found if key is not None), key=lambda key: key.created_at)

    async def delete_api_key(self, key_id: str) -> bool:
        return bool(await self._call(self._redis.delete, self._api("key", key_id)))

    async def set_tenant_limits(self, tenant: str, limits: Limits) -> None:
        await self._call(self._redis.hset, self._api("tenant", tenant),
                         mapping={"rate": repr(limits.rate), "burst": limits.burst, "max_active": limits.max_active})

    async def tenant_limits(self, tenant: str) -> Limits | None:
        fields = await self._call(self._redis.hgetall, self._api("tenant", tenant))
        if not fields:
            return None
        values = {k.decode(): v.decode() for k, v in fields.items()}
        return Limits(float(values["rate"]), int(values["burst"]), int(values["max_active"]))

    async def rate_tat(self, tenant: str) -> tuple[str, float | None]:
        """The tenant's GCRA time, as stored (for swap_rate_tat) and as a number (None: none yet)."""
        raw = await self._call(self._redis.get, self._api("rate", tenant))
        return (raw.decode(), float(raw)) if raw else ("", None)

    async def swap_rate_tat(self, tenant: str, expected: str, tat: float, ttl_s: float) -> bool:
        """Store the tenant's new GCRA time if nobody changed it since it was read (another replica)."""
        return bool(await self._call(self._swap, keys=[self._api("rate", tenant)],
                                     args=[expected, repr(tat), max(int(ttl_s * 1000), 1)]))

    async def take_slot(self, tenant: str, job_id: str, lapses_at: float, limit: int, now: float) -> bool:
        """A quota slot for the job (False: the tenant has `limit` jobs in flight)."""
        ttl_ms = max(int((lapses_at - now) * 1000), 1)
        return bool(await self._call(self._take_slot, keys=[self._api("slots", tenant)],
                                     args=[repr(now), job_id, repr(lapses_at), limit, ttl_ms]))

    async def slots(self, tenant: str) -> list[str]:
        return [raw.decode() for raw in await self._call(self._redis.zrange, self._api("slots", tenant), 0, -1)]

    async def release_slots(self, tenant: str, job_ids: list[str]) -> None:
        if job_ids:
            await self._call(self._redis.zrem, self._api("slots", tenant), *job_ids)

    async def claim_idempotency_key(self, tenant: str, key_digest: str, value: str) -> str | None:
        """Bind an Idempotency-Key to `value` for job_ttl_s; the value it was bound to already, if any."""
        key = self._api("idem", tenant, key_digest)
        if await self._call(self._redis.set, key, value, nx=True, ex=self.ttl):
            return None
        existing = await self._call(self._redis.get, key)
        return existing.decode() if existing else None

    async def url_secret(self) -> bytes:
        """The secret that signs image URLs: made by the first api replica, shared by all."""
        key = self._api("url-secret")
        await self._call(self._redis.set, key, secrets.token_hex(32), nx=True)
        return await self._call(self._redis.get, key)

    # Housekeeping (tests, experiments).
    async def delete_namespace(self) -> int:
        deleted = 0
        async for key in self._redis.scan_iter(match=f"{self.ns}:*", count=1000):
            deleted += await self._redis.delete(key)
        return deleted

    async def ping(self) -> bool:
        return bool(await self._call(self._redis.ping))
