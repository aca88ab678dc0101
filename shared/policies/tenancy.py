"""What a tenant may send through the HTTP api: a rate limit and a bound on jobs in flight.

The rate limit is GCRA (the generic cell rate algorithm, a token bucket kept as one number): each
tenant has a theoretical arrival time `tat`; a request at `now` is admitted when `tat` is at most
`(burst - 1) / rate` seconds ahead of `now`, and then pushes `tat` by `1 / rate`. One float per
tenant, shared by every api replica through the store (compare-and-set), so the limit holds for
the whole deployment, not per process. Refused requests do not move `tat` and learn when to retry.

The quota bounds a tenant's jobs that are not yet terminal. A job that never reaches a terminal
state (lost) would hold its slot for ever, so a slot also ends `SLOT_GRACE_S` after the job's
deadline, when a job can no longer be served usefully anyway.

Pure: the caller passes the clock in and does the storing."""

from __future__ import annotations

import math
from dataclasses import dataclass

# A job's quota slot outlives its deadline by this much: a worker may still finish a late job,
# and the slot is released when the api sees it terminal. After it, the slot is given back whatever
# the job's state (a bound on what a lost job can cost its tenant).
SLOT_GRACE_S = 60.0


@dataclass(frozen=True)
class Limits:
    """A tenant's limits: `rate` requests per second on average, `burst` at once, `max_active`
    jobs not yet terminal."""

    rate: float
    burst: int
    max_active: int

    def __post_init__(self) -> None:
        if not (self.rate > 0 and math.isfinite(self.rate)):
            raise ValueError(f"rate must be a positive number of requests per second, not {self.rate}")
        if self.burst < 1:
            raise ValueError(f"burst must be at least 1, not {self.burst}")
        if self.max_active < 1:
            raise ValueError(f"max_active must be at least 1, not {self.max_active}")


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    tat: float  # the tenant's theoretical arrival time to store (unchanged when refused)
    retry_after_s: float  # 0 when allowed; else when a request would be admitted


def rate_decision(tat: float | None, now: float, limits: Limits, cost: int = 1) -> RateDecision:
    """Admit `cost` requests (an images request for n images costs n) at `now`, or say when to retry.
    A cost above the burst can never be admitted: the caller refuses it as a bad request."""
    interval = 1.0 / limits.rate
    base = max(tat if tat is not None else now, now)
    new_tat = base + cost * interval
    allowed_at = new_tat - limits.burst * interval  # the earliest `now` at which this cost fits
    if allowed_at <= now + 1e-9:
        return RateDecision(True, new_tat, 0.0)
    return RateDecision(False, tat if tat is not None else now, allowed_at - now)


def slot_expires_at(deadline: float) -> float:
    """When a job's quota slot is given back even if the job never ends (see SLOT_GRACE_S)."""
    return deadline + SLOT_GRACE_S


def retry_after_header(seconds: float) -> str:
    """The Retry-After header's value: whole seconds, at least 1 (HTTP has no fractions)."""
    return str(max(1, math.ceil(seconds)))
