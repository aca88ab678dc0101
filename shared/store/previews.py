"""A job's previews while it generates (OpenAI's partial images; docs/jobs.md, Previews): the
worker writes them, the api's streams read them.

Keys of a namespace `ns`:

    ns:preview:<id>:<i>  string  the job's i-th preview (0-2), encoded in its output format (at most
                                 256 px a side: a few KiB), expiring after PREVIEW_TTL_S (10 min)

and one entry on the progress stream `ns:progress` per preview (`job_ids`, `step`, `steps`, `model`
and `preview` = i), which wakes the job's waiters in the api's event hub as progress does: a
preview is written, then announced, so a waiter never reads an announced preview that is absent.

A preview is written only while its record is `generating` (one script: no key for a job that
ended or was cancelled, no key resurrected), all of a worker's pending previews in one round trip."""

from __future__ import annotations

from redis.exceptions import NoScriptError

from shared.errors import Unavailable
from shared.policies.previews import PREVIEW_TTL_S
from shared.store.progress import PROGRESS_MAX_LENGTH
from shared.store.records import JobRecords

# KEYS: 1 the record, 2 the preview's key, 3 the progress stream. ARGV: 1 the image, 2 its TTL, 3 the
# job id, 4 the index, 5 step, 6 steps, 7 model, 8 the stream's TTL, 9 its MAXLEN. Returns 1 if written.
_PREVIEW = """
if redis.call('HGET', KEYS[1], 'state') ~= 'generating' then
  return 0
end
redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[2])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[9], '*', 'job_ids', ARGV[3], 'step', ARGV[5], 'steps', ARGV[6],
           'model', ARGV[7], 'preview', ARGV[4])
redis.call('EXPIRE', KEYS[3], ARGV[8])
return 1
"""

PreviewWrite = tuple[str, int, int, int, str, bytes]  # job id, index, step, steps, model, image


class JobPreviews(JobRecords):
    """Previews (see the module's docstring for the keys)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._preview = self._redis.register_script(_PREVIEW)

    def preview_key(self, job_id: str, index: int) -> str:
        return f"{self.ns}:preview:{job_id}:{index}"

    async def write_previews(self, previews: list[PreviewWrite]) -> int:
        """Store and announce these previews in one round trip; returns how many were written (a
        job no longer `generating` gets none)."""
        if not previews:
            return 0
        stream = f"{self.ns}:progress"

        async def write() -> list:
            for _attempt in range(2):  # EVALSHA in one pipeline; NOSCRIPT: load it and go again
                async with self._redis.pipeline(transaction=False) as pipe:
                    for job_id, index, step, steps, model, image in previews:
                        pipe.evalsha(self._preview.sha, 3, self.job_key(job_id), self.preview_key(job_id, index),
                                     stream, image, PREVIEW_TTL_S, job_id, index, step, steps, model, self.ttl,
                                     PROGRESS_MAX_LENGTH)
                    try:
                        return await pipe.execute()
                    except NoScriptError:
                        await self._redis.script_load(_PREVIEW)
            raise Unavailable("Redis refused the preview script")

        return sum(int(count) for count in await self._call(write))

    async def get_previews(self, job_id: str, indexes: list[int]) -> list[bytes | None]:
        """These previews of the job (None for one not written, or expired), in one MGET."""
        if not indexes:
            return []
        return await self._call(self._redis.mget, [self.preview_key(job_id, index) for index in indexes])
