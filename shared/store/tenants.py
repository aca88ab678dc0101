"""The HTTP api's tenants in the store: API keys, tenants' limits, their GCRA times, their slots
(the quota and the fair share, one script), idempotency keys and the secrets that sign image URLs."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

from shared.apikeys import StoredKey
from shared.policies.tenancy import Limits
from shared.store.base import RedisStore
from shared.urlsigning import Secrets


class Tenants(RedisStore):
    """What the api keeps per tenant (docs/security.md)."""

    # The HTTP api: keys, tenants' limits, rate state, quota slots, idempotency keys.
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
                         mapping={"rate": repr(limits.rate), "burst": limits.burst, "max_active": limits.max_active,
                                  "weight": repr(limits.weight), "image_mb": repr(limits.image_mb)})

    async def tenant_limits(self, tenant: str) -> Limits | None:
        fields = await self._call(self._redis.hgetall, self._api("tenant", tenant))
        if not fields:
            return None
        values = {k.decode(): v.decode() for k, v in fields.items()}
        return Limits(float(values["rate"]), int(values["burst"]), int(values["max_active"]),
                      float(values.get("weight", 1.0)), float(values.get("image_mb", Limits.image_mb)))

    async def gcra_times(self, tenant: str, buckets: tuple[str, ...]) -> list[tuple[str, float | None]]:
        """The tenant's GCRA times (`rate`; `bytes`, its image budget), as stored (what take_slots
        compares) and as numbers (None: none yet), in one round trip."""
        raws = await self._call(self._redis.mget, [self._api(bucket, tenant) for bucket in buckets])
        return [(raw.decode(), float(raw)) if raw else ("", None) for raw in raws]

    def _slot_keys(self, tenant: str) -> list[str]:
        return [self._api("slots", tenant), self._api("units", tenant), self._api("inflight"), self._api("lapse")]

    async def take_slots(self, tenant: str, slots: list[tuple[str, float, float]], max_units: float,
                         capacity_units: float, weight: float, now: float,
                         gcras: Sequence[tuple[str, str, float, float]] = ()) -> str:
        """Admit one request in one step (scripts._ADMIT): its (bucket, expected, new time, TTL s) GCRA
        times, and quota slots for its (job id, lapses at, units), all or none. "" when admitted, else
        "cas" (a GCRA time moved: read again), "quota" (over max_active units) or "fair" (over the
        tenant's share of a saturated fleet)."""
        args: list[Any] = [repr(now), tenant, repr(max_units), repr(capacity_units), repr(weight),
                           self._api("tenant", ""), len(gcras)]
        for _bucket, expected, tat, ttl_s in gcras:
            args += [expected, repr(tat), max(int(ttl_s * 1000), 1)]
        for job_id, lapses_at, units in slots:
            args += [job_id, repr(lapses_at), repr(units)]
        keys = self._slot_keys(tenant) + [self._api(bucket, tenant) for bucket, *_ in gcras]
        reply = await self._call(self._admit, keys=keys, args=args)
        return reply.decode() if isinstance(reply, bytes) else str(reply or "")

    async def slots(self, tenant: str) -> list[str]:
        return [raw.decode() for raw in await self._call(self._redis.zrange, self._api("slots", tenant), 0, -1)]

    async def release_slots(self, tenant: str, job_ids: list[str]) -> None:
        if job_ids:
            await self._call(self._release_slots, keys=self._slot_keys(tenant), args=[tenant, *job_ids])

    async def claim_idempotency_key(self, tenant: str, key_digest: str, value: str) -> str | None:
        """Bind an Idempotency-Key to `value` for job_ttl_s; the value it was bound to already, if any."""
        key = self._api("idem", tenant, key_digest)
        if await self._call(self._redis.set, key, value, nx=True, ex=self.ttl):
            return None
        existing = await self._call(self._redis.get, key)
        return existing.decode() if existing else None

    # The secrets that sign image URLs (shared/urlsigning.py): the current one, made by the first api
    # replica that finds none, and the one before the last rotation, kept for a grace.
    # KEYS: current, previous. ARGV: the new secret, the grace in ms. Returns 1 when there was a current one.
    _ROTATE_URL_SECRET = """
local old = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], ARGV[1])
if old then redis.call('SET', KEYS[2], old, 'PX', ARGV[2]) end
return old and 1 or 0
"""

    async def url_secrets(self) -> Secrets:
        """The current secret (made here if there is none: SET NX, in one transaction with the reads,
        so every replica ends with the stored one) and the previous one while its grace lasts."""
        current, previous = self._api("url-secret"), self._api("url-secret", "prev")

        async def read() -> list:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.set(current, secrets.token_hex(32), nx=True)
                pipe.get(current)
                pipe.get(previous)
                return await pipe.execute()

        _, now, before = await self._call(read)
        return Secrets(now, before)

    async def rotate_url_secret(self, grace_s: float) -> bool:
        """A new current secret; the old one still verifies for grace_s (False: there was none)."""
        keys = [self._api("url-secret"), self._api("url-secret", "prev")]
        return bool(await self._call(self._redis.eval, self._ROTATE_URL_SECRET, len(keys), *keys,
                                     secrets.token_hex(32), max(int(grace_s * 1000), 1)))

    async def delete_url_secrets(self) -> int:
        """Both secrets gone: every URL handed out stops verifying; the next replica makes a new one."""
        return int(await self._call(self._redis.delete, self._api("url-secret"), self._api("url-secret", "prev")))
