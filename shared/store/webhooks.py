"""Webhook deliveries in the store: the senders' schedule, each delivery's state, and each tenant's
default URL and signing secrets. The transition script (transition.lua) makes a delivery, in the
same change that makes a record with a `webhook_url` terminal; the sender (services/webhooks.py)
claims the ones that are due, tries them, and settles each with its outcome.

Keys (docs/jobs.md, Webhooks):

    ns:webhooks:due              zset    job ids by when their delivery is next due (Redis time); no TTL:
                                         a member leaves when its delivery is delivered or failed
    ns:job:<id>:webhook          hash    the delivery: url, tenant, type, at, state, attempts, last_status,
                                         last_error, last_at, next_at, delivered_at; expires with the record
    ns:api:webhook:<tenant>      hash    the tenant's default `url` and signing `secret` (`-`: jobs with no
                                         tenant); no TTL
    ns:api:webhook:<tenant>:prev string  the secret before the last rotation, for its grace

A claim is a lease: it moves the delivery's due time lease_s ahead and counts the attempt, so a
sender that dies mid-attempt (kill -9, a lost host) leaves a delivery that is due again when the
lease ends, and another sender (or the same, restarted) tries it. Every time is Redis's clock: the
senders on several hosts share one schedule whatever their own clocks say.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shared.policies.webhooks import DeliveryState, new_secret
from shared.store.base import RedisStore

NO_TENANT = "-"  # not a tenant name (one cannot start with '-'): the secret of jobs without a tenant

# KEYS: the schedule. ARGV: 1 most to claim, 2 lease s, 3 delivery key prefix, 4 its suffix.
# Returns {now, id1, hash1, id2, hash2, ...}: each claimed delivery's hash after the claim.
_CLAIM = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local out = {tostring(now)}
for _, id in ipairs(ids) do
  local key = ARGV[3] .. id .. ARGV[4]
  if redis.call('EXISTS', key) == 0 then
    redis.call('ZREM', KEYS[1], id)
  else
    redis.call('HINCRBY', key, 'attempts', 1)
    redis.call('HSET', key, 'state', 'delivering', 'next_at', '')
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), id)
    out[#out + 1] = id
    out[#out + 1] = redis.call('HGETALL', key)
  end
end
return out
"""

# KEYS: the schedule, the delivery. ARGV: 1 job id, 2 the attempt claimed, 3 the new state, 4 the wait (s)
# when pending, 5 the status code or "", 6 the error or "". Applies only while the attempt is still the
# delivery's latest (a sender whose lease ran out and was overtaken changes nothing): 1, else 0. A delivery
# pending again lives at least 10 minutes past its next attempt, should the record expire sooner (a short
# HADIS_JOB_TTL_S): its event then carries the job's id and state only.
_SETTLE = """
if redis.call('HGET', KEYS[2], 'attempts') ~= ARGV[2] then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local fields = {'state', ARGV[3], 'last_status', ARGV[5], 'last_error', ARGV[6], 'last_at', tostring(now)}
if ARGV[3] == 'pending' then
  local due = now + tonumber(ARGV[4])
  redis.call('ZADD', KEYS[1], due, ARGV[1])
  local keep = math.ceil(tonumber(ARGV[4])) + 600
  if redis.call('TTL', KEYS[2]) < keep then redis.call('EXPIRE', KEYS[2], keep) end
  fields[#fields + 1] = 'next_at'; fields[#fields + 1] = tostring(due)
else
  redis.call('ZREM', KEYS[1], ARGV[1])
  fields[#fields + 1] = 'next_at'; fields[#fields + 1] = ''
  if ARGV[3] == 'delivered' then fields[#fields + 1] = 'delivered_at'; fields[#fields + 1] = tostring(now) end
end
redis.call('HSET', KEYS[2], unpack(fields))
return 1
"""

# KEYS: the tenant's hash, its previous secret. ARGV: the new secret, the grace in ms (0: none).
_ROTATE = """
local old = redis.call('HGET', KEYS[1], 'secret')
redis.call('HSET', KEYS[1], 'secret', ARGV[1])
if old and tonumber(ARGV[2]) > 0 then redis.call('SET', KEYS[2], old, 'PX', ARGV[2]) else redis.call('DEL', KEYS[2]) end
return old and 1 or 0
"""


@dataclass(frozen=True)
class Claim:
    """A delivery a sender holds for one attempt (`attempt`, counted from 1)."""

    job_id: str
    attempt: int
    url: str
    tenant: str | None
    type: str
    at: float  # when the job became terminal (Redis time)


def _decode(raw: list) -> dict[str, str]:
    return {raw[i].decode(): raw[i + 1].decode() for i in range(0, len(raw), 2)}


def _number(text: str | None) -> float | None:
    return float(text) if text else None


def status_view(fields: dict[str, str]) -> dict[str, Any]:
    """A delivery as `GET /v1/jobs/{id}` shows it (`webhook`): times are Unix seconds or null."""
    return {"state": fields.get("state", DeliveryState.pending.value), "type": fields.get("type"),
            "attempts": int(fields.get("attempts") or 0),
            "last_status": int(fields["last_status"]) if fields.get("last_status") else None,
            "last_error": fields.get("last_error") or None, "last_attempt_at": _number(fields.get("last_at")),
            "next_attempt_at": _number(fields.get("next_at")), "delivered_at": _number(fields.get("delivered_at"))}


class Webhooks(RedisStore):
    """The deliveries' schedule and states, and the tenants' webhook URLs and secrets."""

    def _webhook_config_key(self, tenant: str | None) -> str:
        return self._api("webhook", tenant or NO_TENANT)

    async def claim_webhooks(self, limit: int, lease_s: float) -> list[Claim]:
        """Up to `limit` deliveries that are due, each leased for lease_s (see the module's docstring)."""
        if limit <= 0:
            return []
        reply = await self._call(self._redis.eval, _CLAIM, 1, self.webhooks_due_key, limit, repr(lease_s),
                                 f"{self.ns}:job:", ":webhook")
        claims = []
        for index in range(1, len(reply), 2):
            job_id, fields = reply[index].decode(), _decode(reply[index + 1])
            claims.append(Claim(job_id, int(fields["attempts"]), fields.get("url", ""), fields.get("tenant") or None,
                                fields.get("type", "job.unknown"), float(fields.get("at") or 0.0)))
        return claims

    async def settle_webhook(self, claim: Claim, state: DeliveryState, delay_s: float = 0.0,
                             status: int | None = None, error: str = "") -> bool:
        """Record an attempt's outcome: pending again after delay_s, or delivered or failed (final:
        out of the schedule). False when another sender has claimed the delivery since (nothing written)."""
        keys = [self.webhooks_due_key, self.webhook_key(claim.job_id)]
        return bool(await self._call(self._redis.eval, _SETTLE, len(keys), *keys, claim.job_id, claim.attempt,
                                     state.value, repr(delay_s), "" if status is None else status, error[:300]))

    async def webhook_status(self, job_id: str) -> dict[str, Any] | None:
        """The job's delivery as the api shows it; None when the job has none (yet)."""
        fields = await self._call(self._redis.hgetall, self.webhook_key(job_id))
        return status_view({k.decode(): v.decode() for k, v in fields.items()}) if fields else None

    async def webhooks_due(self) -> int:
        """Deliveries not yet delivered or failed (the schedule's size)."""
        return int(await self._call(self._redis.zcard, self.webhooks_due_key))

    # Tenants' defaults and secrets.
    async def tenant_webhook_url(self, tenant: str | None) -> str | None:
        raw = await self._call(self._redis.hget, self._webhook_config_key(tenant), "url")
        return raw.decode() if raw else None

    async def set_tenant_webhook_url(self, tenant: str | None, url: str | None) -> None:
        """The tenant's default URL (None: none): jobs it submits without one get it, from then on."""
        key = self._webhook_config_key(tenant)
        if url is None:
            await self._call(self._redis.hdel, key, "url")
        else:
            await self._call(self._redis.hset, key, "url", url)

    async def webhook_secrets(self, tenant: str | None) -> list[str]:
        """The tenant's signing secrets, current first, then the previous one while its grace lasts.
        A tenant without one gets one here (HSETNX, so concurrent senders agree on it)."""
        key = self._webhook_config_key(tenant)

        async def read() -> list:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hsetnx(key, "secret", new_secret())
                pipe.hget(key, "secret")
                pipe.get(f"{key}:prev")
                return await pipe.execute()

        _, current, previous = await self._call(read)
        return [secret.decode() for secret in (current, previous) if secret]

    async def rotate_webhook_secret(self, tenant: str | None, grace_s: float) -> str:
        """A new current secret, returned; the old one still signs (beside it) for grace_s (0: not at all)."""
        key, secret = self._webhook_config_key(tenant), new_secret()
        await self._call(self._redis.eval, _ROTATE, 2, key, f"{key}:prev", secret, max(int(grace_s * 1000), 0))
        return secret
