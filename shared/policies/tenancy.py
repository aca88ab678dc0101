"""What a tenant may send through the HTTP api: a rate limit, a bound on work in flight, a
budget of image bytes, and its weighted share of a saturated fleet.

Everything a tenant is charged is in **units**: one unit is an image of 512x512 pixels, the default
size; a larger image costs its pixels over that (1024x1024: 4, 2048x2048: 16), a smaller one still
one (a job has a cost whatever its size). The rate, the burst, the quota of work in flight and the
fair share are all counted in units, so a tenant asking for 2048x2048 images pays for them.

The rate limit is GCRA (the generic cell rate algorithm, a token bucket kept as one number): each
tenant has a theoretical arrival time `tat`; a request at `now` is admitted when `tat` is at most
`(burst - 1) / rate` seconds ahead of `now`, and then pushes `tat` by `1 / rate`. One float per
tenant, shared by every api replica through the store (compare-and-set), so the limit holds for
the whole deployment, not per process. Refused requests do not move `tat` and learn when to retry.

The quota bounds a tenant's units not yet terminal. A job that never reaches a terminal
state (lost) would hold its slot for ever, so a slot also ends `SLOT_GRACE_S` after the job's
deadline, when a job can no longer be served usefully anyway.

**Fair share.** When the work in flight of every tenant together would pass what the fleet serves
within HADIS_API_FAIR_FILL of one objective under its current plan (`plan_qps`, `capacity_units`),
a tenant is admitted only within its weighted share of that capacity, `capacity * weight / (sum of
the weights of the tenants with work in flight)`: a tenant that floods cannot hold more than its
share once others come, and one that asks for less than its share always gets in, as does one job
of a tenant that holds nothing and one that would still hold less for its weight than another
(max-min: only the largest holder is held back; a tenant that got in alone, above its share, does
not shut out the one that comes next). Below capacity, or alone, nobody is held back. The store's slot
script applies the rule atomically; `fair_admits` here is the same rule
(tests/integration/test_tenant_slots.py holds the two to the same answers).

Pure: the caller passes the clock in and does the storing."""

from __future__ import annotations

import math
from dataclasses import dataclass

from shared.schemas import Plan

# A job's quota slot outlives its deadline by this much: a worker may still finish a late job,
# and the slot is released when the api sees it terminal. After it, the slot is given back whatever
# the job's state (a bound on what a lost job can cost its tenant).
SLOT_GRACE_S = 60.0
UNIT_PIXELS = 512 * 512
PNG_BYTES_PER_PIXEL = 3.0  # an RGB PNG of a generated image is at most about its raw size (no alpha)
MIN_DEADLINE_AHEAD_S = 0.5  # a deadline closer than this cannot be served: refused, not counted as demand


@dataclass(frozen=True)
class Limits:
    """A tenant's limits: `rate` units per second on average, `burst` units at once, `max_active`
    units not yet terminal, `weight` its share of a saturated fleet, `image_mb` the image bytes it
    may add to the store within one image TTL (a second GCRA, on estimated bytes)."""

    rate: float
    burst: int
    max_active: int
    weight: float = 1.0
    image_mb: float = 1024.0

    def __post_init__(self) -> None:
        if not (self.rate > 0 and math.isfinite(self.rate)):
            raise ValueError(f"rate must be a positive number of requests per second, not {self.rate}")
        if self.burst < 1:
            raise ValueError(f"burst must be at least 1, not {self.burst}")
        if self.max_active < 1:
            raise ValueError(f"max_active must be at least 1, not {self.max_active}")
        if not (0 < self.weight <= 1000 and math.isfinite(self.weight)):
            raise ValueError(f"weight must be in (0, 1000], not {self.weight}")
        if not (self.image_mb > 0 and math.isfinite(self.image_mb)):
            raise ValueError(f"image_mb must be a positive number of MB, not {self.image_mb}")


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    tat: float  # the tenant's theoretical arrival time to store (unchanged when refused)
    retry_after_s: float  # 0 when allowed; else when a request would be admitted


def job_units(width: int, height: int) -> float:
    """What one image of this size costs its tenant (see the module's docstring)."""
    return max(1.0, width * height / UNIT_PIXELS)


def image_bytes(width: int, height: int) -> float:
    """The store bytes an image of this size is charged: its raw RGB size, a PNG's bound in practice."""
    return width * height * PNG_BYTES_PER_PIXEL


def rate_decision(tat: float | None, now: float, limits: Limits, cost: float = 1) -> RateDecision:
    """Admit `cost` units (an images request for n images costs n times an image's units) at `now`,
    or say when to retry. A cost above the burst can never be admitted: the caller refuses it."""
    return gcra(tat, now, limits.rate, limits.burst, cost)


def store_decision(tat: float | None, now: float, limits: Limits, cost_bytes: float,
                   image_ttl_s: float) -> RateDecision:
    """The image-bytes budget: `image_mb` per image TTL, as a GCRA whose burst is the whole budget.
    A tenant then holds at most about twice its budget in the store (one TTL of images expiring
    while the next is written)."""
    budget = limits.image_mb * 2**20
    return gcra(tat, now, budget / image_ttl_s, budget, cost_bytes)


def gcra(tat: float | None, now: float, rate: float, burst: float, cost: float) -> RateDecision:
    interval = 1.0 / rate
    base = max(tat if tat is not None else now, now)
    new_tat = base + cost * interval
    allowed_at = new_tat - burst * interval  # the earliest `now` at which this cost fits
    if allowed_at <= now + 1e-9:
        return RateDecision(True, new_tat, 0.0)
    return RateDecision(False, tat if tat is not None else now, allowed_at - now)


def fair_admits(cost: float, mine: float, total: float, capacity: float, weight: float,
                active_weights: float, jobs: int = 1, top: float = 0.0) -> bool:
    """Whether `cost` units more (`jobs` of them) fit a tenant holding `mine` of `total` units in
    flight (see the module's docstring). `active_weights` sums the weights of the tenants holding
    work, this one included; `top` is the most any other of them holds for its weight. A tenant
    holding nothing gets one job in, not a request of many; one that would still hold less for its
    weight than another gets in (max-min: only the largest holder is held back)."""
    if active_weights <= weight or (mine == 0 and jobs == 1) or total + cost <= capacity:
        return True
    return mine + cost <= capacity * weight / active_weights or (mine + cost) / weight <= top


def plan_qps(plan: Plan, light_batch_s: float, heavy_batch_s: float) -> float:
    """The jobs per second a plan serves: its light tier takes the (1 - r) of jobs not routed to heavy,
    its heavy tier the share h = r + (1 - r) d, so the slower of the two over its share bounds it.
    Infinite when a tier with work has no latency profile (nothing to bound it by)."""
    heavy_share = plan.r + (1.0 - plan.r) * plan.d
    rates = []
    for gpus, batch, batch_s, share in ((plan.light_gpus, plan.light_batch, light_batch_s, 1.0 - plan.r),
                                        (plan.heavy_gpus, plan.heavy_batch, heavy_batch_s, heavy_share)):
        if share <= 0:
            continue
        if batch_s <= 0:
            rates.append(math.inf)
        else:
            rates.append(gpus * batch / batch_s / share)
    return min(rates, default=math.inf)


def capacity_units(qps: float, slo_s: float, fill: float) -> float:
    """The fair share's capacity: the units a fleet serving `qps` (512x512 images a second) clears
    within `fill` of one objective. 0 (no fair share) when the rate is unbounded or unknown."""
    return qps * slo_s * fill if math.isfinite(qps) else 0.0


def deadline_problem(deadline: float | None, now: float, max_slo_s: float) -> str | None:
    """Why a deadline a client set cannot be taken (None: it can): one already past, or too close to
    be served, would count as demand the fleet cannot serve; one beyond the SLO bound is absurd."""
    if deadline is None:
        return None
    if deadline < now + MIN_DEADLINE_AHEAD_S:
        return f"deadline is in the past or less than {MIN_DEADLINE_AHEAD_S:g} s ahead"
    if deadline > now + max_slo_s:
        return f"deadline is more than {max_slo_s:g} s ahead (the longest objective)"
    return None


def slot_expires_at(deadline: float) -> float:
    """When a job's quota slot is given back even if the job never ends (see SLOT_GRACE_S)."""
    return deadline + SLOT_GRACE_S


def retry_after_header(seconds: float) -> str:
    """The Retry-After header's value: whole seconds, at least 1 (HTTP has no fractions)."""
    return str(max(1, math.ceil(seconds)))
