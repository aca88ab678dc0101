"""Where a job is while it runs, and its cancel: the store's side of `DELETE /v1/jobs/{id}` and of
the `progress` events of `GET /v1/jobs/{id}/events` (docs/jobs.md, Cancel and progress).

Keys of a namespace `ns`, beside the package's:

    ns:cancels    pub/sub channel: the id of each job cancelled, published once, after its record
                  turned `cancelled` (workers listen, to stop a batch that runs it)
    ns:waiting:<tier>  zset  the tier's waiting line (job id -> when it joined), kept by transition.lua
    ns:progress   stream  one entry per progress write of a batch (job_ids, step, steps, model), capped at
                  PROGRESS_MAX_LENGTH, expiring like a record: what the api's event hub follows
                  beside `ns:events`, so that progress never wakes the readers of state changes

The record is the truth: a cancel is the transition script's (one atomic change, refused when the
record is terminal already); the channel only tells workers sooner. A worker that misses the
message (its connection was down) learns it at its batch's next progress write, which answers the
ids of the batch's records found `cancelled` (no round trip of its own): at most PROGRESS_S late,
and the GPU time of those steps is all that is spent."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.errors import Unavailable
from shared.logging import get_logger
from shared.outcome import Applied, Outcome
from shared.schemas import JobState
from shared.store.records import Change, JobRecords

log = get_logger(__name__)

PROGRESS_MAX_LENGTH = 20_000  # the progress stream's length, about (XADD MAXLEN ~): a few seconds at full load
RESUBSCRIBE_S = 0.5  # after a lost pub/sub connection

# A batch's progress in one step: the step written only to records still `generating` (a record
# that moved on, or ended, is left alone: no write may resurrect a key, and none outlive the job),
# then one stream entry for the jobs written, so the api's SSE streams see it.
# KEYS: the job records, then the progress stream. ARGV: 1 step, 2 steps, 3 the stream's TTL,
# 4 its MAXLEN, 5 the model, then the job ids in the order of KEYS. Returns {the number of records
# written, then the ids of those found cancelled}: a worker that missed a cancel's message learns it here.
_PROGRESS = """
local n = #KEYS - 1
local written, cancelled = {}, {}
for i = 1, n do
  local state = redis.call('HGET', KEYS[i], 'state')
  if state == 'generating' then
    redis.call('HSET', KEYS[i], 'step', ARGV[1], 'steps', ARGV[2])
    written[#written + 1] = ARGV[5 + i]
  elseif state == 'cancelled' then
    cancelled[#cancelled + 1] = ARGV[5 + i]
  end
end
if #written > 0 then
  redis.call('XADD', KEYS[n + 1], 'MAXLEN', '~', ARGV[4], '*', 'job_ids', table.concat(written, ','),
             'step', ARGV[1], 'steps', ARGV[2], 'model', ARGV[5])
  redis.call('EXPIRE', KEYS[n + 1], ARGV[3])
end
return {#written, unpack(cancelled)}
"""


class JobProgress(JobRecords):
    """Cancels and progress (see the module's docstring for the keys)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._progress = self._redis.register_script(_PROGRESS)

    @property
    def cancel_channel(self) -> str:
        return f"{self.ns}:cancels"

    @property
    def progress_key(self) -> str:
        return f"{self.ns}:progress"

    async def cancel(self, job_id: str, reason: str) -> Outcome:
        """Make the record `cancelled` from any state that is not terminal (the script decides:
        refused, with the state it found, when the job has ended), then tell the workers."""
        outcome = await self.apply(Change(job_id, JobState.cancelled, detail=reason))
        if outcome.result is Applied.applied:
            await self._call(self._redis.publish, self.cancel_channel, job_id)
        return outcome

    async def cancels(self, stopping: asyncio.Event) -> AsyncIterator[str]:
        """The ids of jobs cancelled from now on, until `stopping` is set. A lost connection is
        subscribed again (messages published meanwhile are lost: see the module's docstring)."""
        while not stopping.is_set():
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(self.cancel_channel)
                while not stopping.is_set():
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        yield message["data"].decode()
            except (RedisConnectionError, RedisTimeoutError, OSError) as error:
                log.warning("cancel_channel_lost", error=str(error))
                await asyncio.sleep(RESUBSCRIBE_S)
            finally:
                await pubsub.aclose()

    async def write_progress(self, batches: list[tuple[list[str], int, int, str]]) -> tuple[int, list[str]]:
        """Each batch's (job ids, step, steps, model), in one round trip however many batches: the
        records still `generating` take the step, and one stream entry a batch tells the api.
        Returns the records written and the ids among them found `cancelled`."""
        batches = [batch for batch in batches if batch[0]]
        if not batches:
            return 0, []

        async def write() -> list:
            for _attempt in range(2):  # EVALSHA directly, as JobRecords does (one round trip); NOSCRIPT: load
                async with self._redis.pipeline(transaction=False) as pipe:
                    for job_ids, step, steps, model in batches:
                        keys = [*(self.job_key(job_id) for job_id in job_ids), self.progress_key]
                        pipe.evalsha(self._progress.sha, len(keys), *keys, step, steps, self.ttl,
                                     PROGRESS_MAX_LENGTH, model, *job_ids)
                    try:
                        return await pipe.execute()
                    except NoScriptError:
                        await self._redis.script_load(_PROGRESS)
            raise Unavailable("Redis refused the progress script")

        replies = await self._call(write)
        cancelled = [job_id.decode() for reply in replies for job_id in reply[1:]]
        return sum(int(reply[0]) for reply in replies), cancelled

    async def queue_position(self, job_id: str, tier: str, priority: str | None = None) -> int | None:
        """How many jobs are ahead of this one in its tier's waiting line (ZRANK: O(log n)); None
        when it is in none (not routed yet, claimed, or ended). A batch job's line is its tier's
        batch line: the batch jobs ahead of it (interactive ones go first whatever their number)."""
        rank = await self._call(self._redis.zrank, self.waiting_key(tier, priority), job_id)
        return int(rank) if rank is not None else None

    async def read_streams(self, last_ids: dict[str, str], count: int = 1000,
                           block_ms: int | None = None) -> list[tuple[str, str, dict[str, str]]]:
        """Entries after last_ids of several streams in one XREAD: [(stream, entry id, fields)]."""
        reply = await self._call(self._redis.xread, last_ids, count=count, block=block_ms)
        return [(stream.decode(), entry_id.decode(), {k.decode(): v.decode() for k, v in data.items()})
                for stream, entries in reply or [] for entry_id, data in entries]
