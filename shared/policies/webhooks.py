"""The webhook sender's decisions, pure: when to try a delivery again, which addresses it may
connect to, and how a delivery is signed (the Standard Webhooks convention, standardwebhooks.com).

No clock, randomness, socket or store here: the sender (services/webhooks.py) passes the attempt
number, the answer and a random number in, and acts on what comes back; the tests call the same
functions. docs/jobs.md ("Webhooks") documents every rule and bound.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32  # Standard Webhooks: a symmetric secret is 24 to 64 random bytes
SIGNATURE_VERSION = "v1"


class DeliveryState(StrEnum):
    """A delivery's state, as `GET /v1/jobs/{id}` shows it in `webhook.state`."""

    pending = "pending"  # waiting for its first attempt, or for the next one after a failure
    delivering = "delivering"  # a sender holds it (an attempt is under way)
    delivered = "delivered"  # the receiver answered 2xx: final
    failed = "failed"  # given up (attempts spent, the address refused, the receiver answered 410): final


@dataclass(frozen=True)
class RetrySchedule:
    """Exponential backoff with jitter, for a bounded number of attempts: attempt n failed, the next
    waits first_s * 2^(n-1), at most max_s, each delay moved by up to ±jitter of itself (so the
    deliveries that failed together, a receiver that was down, do not all come back together)."""

    max_attempts: int = 10
    first_s: float = 8.0
    max_s: float = 1800.0
    jitter: float = 0.2

    def delay_s(self, attempt: int, rand: float) -> float:
        """The wait after failed attempt `attempt` (1 = the first); rand is uniform in [0, 1)."""
        base = min(self.first_s * 2.0 ** min(attempt - 1, 64), self.max_s)
        return max(base * (1.0 + self.jitter * (2.0 * rand - 1.0)), 0.0)

    def horizon_s(self) -> float:
        """The longest time between the first attempt and the last (every delay at its most)."""
        return sum(min(self.first_s * 2.0 ** (n - 1), self.max_s) * (1.0 + self.jitter)
                   for n in range(1, self.max_attempts))


@dataclass(frozen=True)
class Attempt:
    """What one attempt came to: the receiver's status code, or an error before any (None), and
    whether the address was refused by the policy (address_problem) or the URL is unusable."""

    status: int | None = None
    error: str = ""
    refused: bool = False


@dataclass(frozen=True)
class Next:
    """What to do after an attempt: the delivery's new state and, when pending, the wait."""

    state: DeliveryState
    delay_s: float = 0.0


def after_attempt(schedule: RetrySchedule, attempt: int, outcome: Attempt, rand: float) -> Next:
    """A 2xx delivers. A refused address or URL, and 410 Gone (the receiver says the endpoint is no
    more, as Standard Webhooks suggests), fail at once: trying again changes nothing. Anything else
    (a 3xx, since redirects are not followed, a 4xx, a 5xx, a timeout, a refused connection) is
    tried again after the schedule's delay, until max_attempts are spent."""
    if outcome.status is not None and 200 <= outcome.status < 300:
        return Next(DeliveryState.delivered)
    if outcome.refused or outcome.status == 410 or attempt >= schedule.max_attempts:
        return Next(DeliveryState.failed)
    return Next(DeliveryState.pending, schedule.delay_s(attempt, rand))


# Addresses.
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_networks(text: str) -> tuple[Network, ...]:
    """HADIS_WEBHOOK_ALLOW_NETWORKS: CIDRs separated by commas (`10.0.0.0/8,fd00::/8`); a bare
    address is its own /32 or /128. Raises ValueError on anything else."""
    return tuple(ipaddress.ip_network(part.strip(), strict=False) for part in text.split(",") if part.strip())


def address_problem(address: str, allow_private: bool = False, allowed: Iterable[Network] = ()) -> str | None:
    """Why the sender may not connect to `address` (None: it may). Only global unicast addresses
    are allowed: loopback, private (RFC 1918, fc00::/7), shared (100.64/10), link-local (the cloud
    metadata service at 169.254.169.254 among them), multicast, reserved and unspecified ones are
    refused, so a tenant cannot aim hadis at the deployment's own network (SSRF). An IPv4 address
    written as IPv6 (::ffff:127.0.0.1, 6to4, Teredo) is judged as the IPv4 address it carries.
    `allowed` networks (and everything, with allow_private) pass: a deployment whose receivers are
    on its own network says so."""
    try:
        ip: Address = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return f"{address!r} is not an IP address"
    if isinstance(ip, ipaddress.IPv6Address):
        carried = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if carried is not None:
            ip = carried
    if allow_private or any(ip.version == network.version and ip in network for network in allowed):
        return None
    for kind in ("loopback", "link_local", "multicast", "unspecified", "private", "reserved"):
        if getattr(ip, f"is_{kind}"):
            return f"{ip} is {kind.replace('_', '-')}"
    if not ip.is_global:
        return f"{ip} is not a global address"
    return None


# Signatures.
def new_secret() -> str:
    """A signing secret as Standard Webhooks writes it: `whsec_` and base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_...` secret: the base64 after the prefix, decoded."""
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def signature(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """`v1,` and base64 of HMAC-SHA256 over `{id}.{timestamp}.{body}`, under the secret's key."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


def signature_header(secrets_: Iterable[str], message_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header: one signature per secret, separated by spaces (a rotated
    secret's predecessor signs too, for its grace: a receiver that holds either one verifies)."""
    return " ".join(signature(secret, message_id, timestamp, body) for secret in secrets_)


def headers(secrets_: Iterable[str], message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers of one attempt, and the body's type."""
    return {"webhook-id": message_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": signature_header(secrets_, message_id, timestamp, body),
            "content-type": "application/json"}
