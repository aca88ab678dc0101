"""The event stream: one entry per state change of any job, written by the transition script (see
transition.lua), and the arrivals counter beside it. Followers read it instead of polling records:
the controller's demand, a client that waits for many jobs at once."""

from __future__ import annotations

import time

import orjson

from shared.policies.classes import BACKLOG_HORIZONS_S, Backlog
from shared.schemas import JobState
from shared.store.base import RedisStore


class JobEvents(RedisStore):
    """Reading `<ns>:events`, `<ns>:arrivals` and the batch backlog (see the package's docstring for
    the keys)."""

    async def arrivals(self) -> int:
        """Jobs recorded `queued` so far (the router's records, counted by the transition script):
        the controller's demand, read in one call a tick, however many events the jobs make."""
        return int(await self._call(self._redis.get, self.arrivals_key) or 0)

    async def batch_arrivals(self) -> int:
        """Batch jobs recorded `queued` so far (counted apart by the transition script: no demand of
        the interactive plan's)."""
        return int(await self._call(self._redis.get, self.batch_arrivals_key) or 0)

    async def batch_backlog(self, now: float, horizons: tuple[float, ...] = BACKLOG_HORIZONS_S) -> Backlog:
        """The batch jobs not yet ended whose deadline is within each horizon of `now` (those past
        it included), and all of them: a ZCOUNT a horizon and a ZCARD, in one round trip."""
        async def read() -> list:
            async with self._redis.pipeline(transaction=False) as pipe:
                for horizon in horizons:
                    pipe.zcount(self.batch_due_key, "-inf", now + horizon)
                pipe.zcard(self.batch_due_key)
                return await pipe.execute()

        counts = [int(count) for count in await self._call(read)]
        return Backlog(tuple(horizons), tuple(counts[:-1]), counts[-1])

    async def count_forced(self, quality: str) -> None:
        """One more arrival whose quality forces a tier (low or high), counted by the router when it
        records the job: the controller plans with their shares (shared/policies/quality.py)."""
        key = f"{self.arrivals_key}:quality"

        async def count() -> None:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hincrby(key, quality, 1)
                pipe.expire(key, self.ttl)
                await pipe.execute()

        await self._call(count)

    async def forced_arrivals(self) -> dict[str, int]:
        """The arrivals count_forced has counted so far, by quality."""
        raw = await self._call(self._redis.hgetall, f"{self.arrivals_key}:quality")
        return {name.decode(): int(value) for name, value in raw.items()}

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

    async def summaries(self, job_ids: list[str], fields: tuple[str, ...],
                        with_history: list[str] | None = None) -> tuple[list[dict[str, str]], dict[str, list[dict]]]:
        """The named fields of these jobs' records (an empty dict for a record that is gone), and the
        histories of the jobs in `with_history`, in one round trip: what the dashboard reads of the
        jobs that ended since its last tick (services/api/dashboard.py)."""
        with_history = with_history or []
        if not job_ids and not with_history:
            return [], {}

        async def read() -> list:
            async with self._redis.pipeline(transaction=False) as pipe:
                for job_id in job_ids:
                    pipe.hmget(self.job_key(job_id), list(fields))
                for job_id in with_history:
                    pipe.lrange(f"{self.job_key(job_id)}:history", 0, -1)
                return await pipe.execute()

        replies = await self._call(read)
        records = [{name: value.decode() for name, value in zip(fields, values, strict=True) if value is not None}
                   for values in replies[:len(job_ids)]]
        histories = {job_id: [orjson.loads(item) for item in items]
                     for job_id, items in zip(with_history, replies[len(job_ids):], strict=True)}
        return records, histories
