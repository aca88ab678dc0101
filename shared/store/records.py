"""Job records: the one state machine (the transition script), images, completion and the event
stream. `Change` is what a service asks of a record; the script decides whether it applies."""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.errors import Unavailable
from shared.logging import get_logger
from shared.outcome import Applied, Outcome
from shared.schemas import JobRecord, JobState, Tier
from shared.store import transition
from shared.store.base import RedisStore

log = get_logger(__name__)


@dataclass(frozen=True)
class Change:
    """One atomic change of a job record. `passing` are states recorded on the way (a router
    creates a record `queued` and `routed` in one step). The image goes to the final key, or,
    with image_variant="light", to the key the judge reads; `promote_light` makes the light
    image the final one (a rename in Redis: the image is stored once). `owner` claims the
    `generating` step for a worker (see owner_id). `only_from` applies the change only from these
    states (Applied.guarded otherwise), decided inside the script: no read-then-write race."""

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
    only_from: tuple[JobState, ...] = ()

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
_INT_FIELDS = ("plan_version", "step", "steps")


def _encode(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (dict, list)):
        return orjson.dumps(value).decode()
    return str(value)


class Upsert(StrEnum):
    """What create_or_advance did with a record (see transition.lua, mode 2)."""

    created = "created"  # there was none: made, with the states on the way
    advanced = "advanced"  # it held this body in a state it may leave: moved to the new state
    recorded = "recorded"  # it is in the new state already (a redelivery): nothing written
    differs = "differs"  # its body differs from the change's: nothing written, the caller judges
    refused = "refused"  # terminal, or in no state of only_from (a duplicate): nothing written


@dataclass(frozen=True)
class Upserted:
    """create_or_advance's answer: what it did, the state before, and for `recorded` and `differs`
    the record as it is (without its history), so the caller decides without reading it again."""

    result: Upsert
    before: JobState | None
    record: JobRecord | None = None

    @property
    def written(self) -> bool:
        return self.result in (Upsert.created, Upsert.advanced)


_UPSERT_CODES = {6: Upsert.recorded, 7: Upsert.differs}


def _state_before(reply: list) -> JobState | None:
    """The state a transition script's reply says the record was in (None: there was none)."""
    return JobState(reply[1].decode()) if reply[1] else None


def _record(raw: dict, history: list) -> JobRecord:
    """A record from its hash and history as Redis returns them (bytes). Fields this version does
    not know (written by a newer service, or internal ones such as the claim's owner) are left out,
    so an old reader still reads a new record."""
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


class JobRecords(RedisStore):
    """Job records, their images and their completion (see the package's docstring for the keys)."""

    def _script_call(self, change: Change, mode: str = "", same: tuple[str, ...] = ()) -> tuple[list[str], list]:
        """KEYS and ARGV of transition.lua for a change (mode: "1" create, "0" change, "2" create
        or advance; by default the change's own)."""
        fields = dict(change.fields)
        if change.create or mode == "2":
            fields["job_id"] = change.job_id
        if change.image_mode in ("final", "promote"):
            fields["image_key"] = self.image_key(change.job_id)
        encoded = orjson.dumps({name: _encode(value) for name, value in fields.items() if value is not None})
        job_key = self.job_key(change.job_id)
        keys = [job_key, f"{job_key}:history", self.image_key(change.job_id), self.events_key,
                self.image_key(change.job_id, "light"), self.arrivals_key, self.webhook_key(change.job_id),
                self.webhooks_due_key, self.waiting_key(Tier.light), self.waiting_key(Tier.heavy),
                self.batch_arrivals_key, self.batch_due_key, self.waiting_key(Tier.light, "batch"),
                self.waiting_key(Tier.heavy, "batch")]
        states = ",".join(s.value for s in (*change.passing, change.state))
        argv = [states, orjson.dumps(change.detail[:500]), self.ttl, self.done_channel(change.job_id),
                mode or ("1" if change.create else "0"), change.job_id, change.image, change.image_mode,
                self.image_ttl, change.owner, self.owner_prefix, encoded, ",".join(s.value for s in change.only_from),
                ",".join(same), secrets.token_hex(8)]  # ARGV 15: a repeat of this call is answered as it was
        return keys, argv

    @staticmethod
    def _outcome(reply: list) -> Outcome:
        return Outcome(Applied(int(reply[0])), _state_before(reply))

    async def apply(self, change: Change) -> Outcome:
        """Apply one change atomically (see transition.lua for what is refused and why)."""
        return self._outcome((await self._evaluate([self._script_call(change)], self._waits_for_replicas([change])))[0])

    def _waits_for_replicas(self, changes: list[Change]) -> bool:
        return self.settings.redis_replicas_acked > 0 and any(change.state.terminal for change in changes)

    async def apply_many(self, changes: list[Change]) -> list[Outcome]:
        """Several changes in one round trip (each still atomic on its own)."""
        calls = [self._script_call(change) for change in changes]
        return [self._outcome(reply) for reply in await self._evaluate(calls, self._waits_for_replicas(changes))]

    async def create_or_advance(self, change: Change, same: tuple[str, ...] = ()) -> Upserted:
        """The router's step in one round trip, whoever recorded the job first: create the record
        (the change's `passing` states on the way), or advance the one there to change.state when
        it is in a state of change.only_from and holds, byte for byte, the fields named in `same` as
        this change writes them (the same body). No read then write: a cancel, or another delivery,
        lands before or after, never between. change.create is implied. See Upsert for the answers."""
        reply = (await self._evaluate([self._script_call(change, "2", same)], self._waits_for_replicas([change])))[0]
        code, before = int(reply[0]), _state_before(reply)
        if code == 1:
            return Upserted(Upsert.advanced if before else Upsert.created, before)
        if code in _UPSERT_CODES:
            raw = reply[2]
            return Upserted(_UPSERT_CODES[code], before, _record(dict(zip(raw[::2], raw[1::2], strict=True)), []))
        return Upserted(Upsert.refused, before)

    async def _evaluate(self, calls: list[tuple[list[str], list]], wait: bool) -> list:
        """The transition script's replies to calls, in one round trip. With `wait` (a terminal
        state where replicas must acknowledge), WAIT for them after the scripts, on their connection."""
        if not calls:
            return []
        if not wait and len(calls) == 1:
            keys, argv = calls[0]
            return [await self._call(self._transition, keys=keys, args=argv)]

        async def run_pipeline() -> list:
            # EVALSHA directly: a registered script in a pipeline first asks SCRIPT EXISTS, a round
            # trip per batch. A Redis that lost its scripts (restarted) answers NOSCRIPT: load, retry.
            for _attempt in range(2):
                async with self._redis.pipeline(transaction=False) as pipe:
                    for keys, argv in calls:
                        pipe.evalsha(self._transition.sha, len(keys), *keys, *argv)
                    if wait:  # on the pipeline's connection: WAIT covers that connection's writes
                        pipe.execute_command("WAIT", self.settings.redis_replicas_acked,
                                             self.settings.redis_replicas_wait_ms)
                    try:
                        return await pipe.execute()
                    except NoScriptError:
                        await self._redis.script_load(transition.SOURCE)
            raise Unavailable("Redis refused the transition script")

        replies = await self._call(run_pipeline)
        if wait and int(replies[-1]) < self.settings.redis_replicas_acked:
            log.warning("store_replicas_behind", acked=int(replies[-1]), wanted=self.settings.redis_replicas_acked)
        return replies[:len(calls)]

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
        return _record(raw, history) if raw else None

    async def _get_raw(self, job_id: str) -> tuple[dict, list]:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(self.job_key(job_id))
            pipe.lrange(f"{self.job_key(job_id)}:history", 0, -1)
            raw, history = await pipe.execute()
        return raw, history

    # Images.
    async def get_image(self, job_id: str, variant: str = "") -> bytes | None:
        return await self._call(self._redis.get, self.image_key(job_id, variant))

    async def image_lengths(self, job_ids: list[str]) -> list[int]:
        """The final images' sizes in bytes (0: none), without reading them."""
        async def lengths() -> list[int]:
            async with self._redis.pipeline(transaction=False) as pipe:
                for job_id in job_ids:
                    pipe.strlen(self.image_key(job_id))
                return [int(length) for length in await pipe.execute()]

        return await self._call(lengths)

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
