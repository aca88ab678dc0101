"""API keys of the HTTP api's tenants: made, shown once, stored only as a salted hash.

A key reads `hds_<id>_<secret>`: the id (12 hex digits) finds the stored record, the secret (43
characters of URL-safe base64, 256 random bits) proves possession. The store keeps the tenant, a
random 16-byte salt and SHA-256(salt || secret), never the secret: a copy of Redis does not give
anyone a working key. A slow hash (scrypt, bcrypt) protects guessable passwords; a 256-bit random
secret cannot be guessed, so a fast salted hash is as strong here and costs microseconds a request.
The comparison is in constant time.

Tenant names follow `shared.schemas.valid_tenant`.

An *operator* key (`hadis api-key create --tenant NAME --operator`) may also read the whole fleet's
live status (`/dashboard` and `/v1/ops/dashboard*`: every tenant's counts and images); a key stored
without the flag, every key made before it existed included, is not one.

A key may be limited to some service classes (`--classes interactive`, docs/jobs.md, Service
classes): a request for another class is refused (403 `priority_not_allowed`) before any job is
made. A key stored without the field, every key made before classes existed included, may use
every class; the field is stored only for a key limited to fewer."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass

from shared.schemas import PRIORITIES, valid_tenant

PREFIX = "hds"
_KEY_RE = re.compile(rf"{PREFIX}_([0-9a-f]{{12}})_([A-Za-z0-9_-]{{43}})")


@dataclass(frozen=True)
class StoredKey:
    """What the store keeps of a key."""

    key_id: str
    tenant: str
    salt: str  # hex
    digest: str  # hex SHA-256(salt || secret)
    created_at: float
    operator: bool = False  # may read the fleet's status (the dashboard), every tenant's included
    classes: tuple[str, ...] = PRIORITIES  # the service classes its requests may ask for

    def as_fields(self) -> dict[str, str]:
        fields = {"tenant": self.tenant, "salt": self.salt, "digest": self.digest, "created_at": repr(self.created_at)}
        if self.operator:
            fields["operator"] = "1"
        if set(self.classes) != set(PRIORITIES):
            fields["classes"] = ",".join(self.classes)
        return fields

    @classmethod
    def from_fields(cls, key_id: str, fields: dict[str, str]) -> StoredKey:
        classes = parse_classes(fields["classes"]) if "classes" in fields else PRIORITIES
        return cls(key_id, fields["tenant"], fields["salt"], fields["digest"], float(fields["created_at"]),
                   fields.get("operator") == "1", classes)

    def allows(self, priority: str) -> bool:
        return priority in self.classes


def parse_classes(text: str) -> tuple[str, ...]:
    """The classes of a comma-separated list (`interactive,batch`), in PRIORITIES' order; ValueError
    for an unknown name or none at all."""
    names = {name.strip() for name in text.split(",") if name.strip()}
    unknown = sorted(names - set(PRIORITIES))
    if unknown or not names:
        raise ValueError(f"classes must be a comma-separated list of {', '.join(PRIORITIES)}"
                         + (f"; not {', '.join(unknown)}" if unknown else ""))
    return tuple(name for name in PRIORITIES if name in names)


def _digest(salt: bytes, secret: str) -> str:
    return hashlib.sha256(salt + secret.encode()).hexdigest()


def new_key(tenant: str, *, operator: bool = False, classes: tuple[str, ...] = PRIORITIES) -> tuple[str, StoredKey]:
    """A fresh key for `tenant` (limited to `classes`): (the key to hand over once, what to store)."""
    if not valid_tenant(tenant):
        raise ValueError(f"tenant {tenant!r}: 1-64 of a-z 0-9 _ -, starting with a letter or digit")
    classes = parse_classes(",".join(classes))
    key_id, secret, salt = secrets.token_hex(6), secrets.token_urlsafe(32), secrets.token_bytes(16)
    stored = StoredKey(key_id, tenant, salt.hex(), _digest(salt, secret), time.time(), operator, classes)
    return f"{PREFIX}_{key_id}_{secret}", stored


def parse_key(key: str) -> tuple[str, str] | None:
    """(id, secret) of a well-formed key; None for anything else."""
    match = _KEY_RE.fullmatch(key)
    return (match.group(1), match.group(2)) if match else None


def verify(stored: StoredKey, secret: str) -> bool:
    return hmac.compare_digest(_digest(bytes.fromhex(stored.salt), secret), stored.digest)


def bearer_token(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header (the scheme is case-insensitive)."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None
