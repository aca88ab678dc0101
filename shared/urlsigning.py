"""Signed image URLs: what one carries, how it is signed and checked. No HTTP and no store here.

A URL `/v1/jobs/<job>/image?expires=<unix s>&key_id=<API key id>&signature=<64 hex>` lets whoever
holds it fetch that one image until `expires`, without a key, as OpenAI's URLs do. The signature is
HMAC-SHA256 under the deployment's URL secret of the job id, the expiry and the id of the API key
that asked for the URL: the api serves a URL only while that key exists, so revoking a leaked key
revokes its URLs too (a URL not bound to its key stayed valid for the whole image TTL).

Two secrets verify: the current one and, for a grace after `hadis api-key rotate-url-secret`, the
one before it, so a rotation does not break URLs already handed out. Replicas read both through
`SecretCache`, so a rotation or `hadis api-key revoke-urls` reaches all of them within its TTL.

The query comes from anybody, unauthenticated: it is parsed strictly (ASCII digits and lowercase hex
of fixed lengths) before any number is made or digest compared, so no input can raise (int() of
5,000 digits, of "²", compare_digest of a non-ASCII str all used to) and a refusal costs one HMAC."""

from __future__ import annotations

import asyncio
import enum
import hashlib
import hmac
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

PARAMS = ("expires", "key_id", "signature")
CACHE_S = 5.0  # the longest a replica signs or verifies with secrets it read before (docs/security.md)
_EXPIRES_RE = re.compile(r"[0-9]{1,12}")  # unix seconds up to year 33658: no digit limit, no "²"
_KEY_ID_RE = re.compile(r"[0-9a-f]{12}")  # the id of shared/apikeys.py's `hds_<id>_<secret>`
_SIGNATURE_RE = re.compile(r"[0-9a-f]{64}")  # what hexdigest() of SHA-256 writes
_CONTEXT = b"hadis image url v1"  # this MAC signs nothing else, whatever the secret is reused for


class Malformed(ValueError):
    """A query that cannot be a signed URL's; the message names the parameter, never echoes it."""


@dataclass(frozen=True)
class SignedQuery:
    expires: int
    key_id: str
    signature: str


@dataclass(frozen=True)
class Secrets:
    """The URL secret now, and the one before the last rotation while its grace lasts."""

    current: bytes
    previous: bytes | None = None


class Verdict(enum.Enum):
    valid = "valid"
    expired = "expired"  # genuine, but past its expiry
    forged = "forged"  # altered, or signed under a secret no longer stored


def sign(secret: bytes, job_id: str, expires: int, key_id: str) -> str:
    message = b"\n".join((_CONTEXT, job_id.encode(), str(expires).encode(), key_id.encode()))
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def query(secret: bytes, job_id: str, expires: int, key_id: str) -> str:
    """The query string of a URL for job_id's image, valid until expires (unix seconds)."""
    return f"expires={expires}&key_id={key_id}&signature={sign(secret, job_id, expires, key_id)}"


def parse(params: Mapping[str, Sequence[str]]) -> SignedQuery | None:
    """The signed query in params (each name's values): None when it has none of PARAMS (then the
    caller's key decides); Malformed unless each is there once and well formed."""
    values = {name: list(params.get(name) or ()) for name in PARAMS}
    if not any(values.values()):
        return None
    for name, given in values.items():
        if len(given) != 1:
            raise Malformed(f"`{name}` is {'missing' if not given else 'given more than once'}")
    expires, key_id, signature = (values[name][0] for name in PARAMS)
    if not _EXPIRES_RE.fullmatch(expires):
        raise Malformed("`expires` must be 1 to 12 digits (unix seconds)")
    if not _KEY_ID_RE.fullmatch(key_id):
        raise Malformed("`key_id` must be 12 lowercase hex digits")
    if not _SIGNATURE_RE.fullmatch(signature):
        raise Malformed("`signature` must be 64 lowercase hex digits")
    return SignedQuery(int(expires), key_id, signature)


def verify(secrets: Secrets, job_id: str, signed: SignedQuery, now: float) -> Verdict:
    """The signature first, under either secret, then the expiry: only a genuine URL learns that it
    expired. Both sides of each comparison are ASCII (parse made sure of the given one)."""
    if not job_id.isascii():
        return Verdict.forged
    genuine = False
    for secret in (secrets.current, secrets.previous):
        if secret is not None:
            genuine |= hmac.compare_digest(sign(secret, job_id, signed.expires, signed.key_id), signed.signature)
    if not genuine:
        return Verdict.forged
    return Verdict.valid if now <= signed.expires else Verdict.expired


class SecretCache:
    """The secrets as read at most ttl_s ago. Every URL minted or checked needs them; a read per
    request would put a Redis round trip on every unauthenticated fetch, and a read once at start
    (as before) left each replica with its own copy: a deleted secret revoked nothing, and replicas
    started after a failover refused each other's URLs. One read at a time per process."""

    def __init__(self, read: Callable[[], Awaitable[Secrets]], ttl_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self._read, self._clock = read, clock
        self._value: Secrets | None = None
        self._read_at = 0.0
        self._lock = asyncio.Lock()

    def _fresh(self) -> Secrets | None:
        if self._value is not None and self._clock() - self._read_at < self.ttl_s:
            return self._value
        return None

    async def get(self) -> Secrets:
        if (value := self._fresh()) is not None:
            return value
        async with self._lock:
            if (value := self._fresh()) is not None:
                return value
            started = self._clock()  # the age counts from before the read: the bound holds
            value = await self._read()
            self._value, self._read_at = value, started
            return value
