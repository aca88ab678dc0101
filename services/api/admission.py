"""Every budget a tenant can hold at the HTTP api, each checked before work proportional to the
request is done (who the tenant is: services/api/keys.py).

    rate         units (512x512 images) per second, GCRA in the store: every replica shares it
    image bytes  estimated bytes added to the store per image TTL, GCRA in the store
    in flight    units not yet terminal (max_active), and the weighted fair share of a saturated
                 fleet, both in one store script (an all-or-none take for the request's jobs)
    waiters      requests that hold a connection while they wait (images, event streams), per
                 tenant and for the process, counted in the same step as the check (no overshoot)
    reads        records, events and images read per second, per tenant, in this process

The rules are in shared/policies/tenancy.py; their bounds in docs/security.md."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator

from services.api.keys import Caller, Recent
from shared import metrics
from shared.images_api import ApiError, bad_request
from shared.policies import tenancy
from shared.policies.admission import profiled_batch_s
from shared.profiles import load_profile
from shared.schemas import Job, Plan
from shared.service import Service

CAS_ATTEMPTS = 8  # tries of a GCRA compare-and-set when replicas contend
GCRA_BUCKETS = ("rate", "bytes")
STORE_MEMORY_CHECK_S = 1.0  # the store's memory is read at most this often


class Hold:
    """A waiter held by a request until it ends; release is idempotent (a stream may end twice)."""

    def __init__(self, admission: Admission, tenant: str) -> None:
        self.admission, self.tenant, self.held = admission, tenant, True

    def release(self) -> None:
        if self.held:
            self.held = False
            self.admission._give_back(self.tenant)


def refused(status: int, message: str, code: str, tenant: str, reason: str, retry_after: str = "1",
            type: str = "rate_limit_error") -> ApiError:
    metrics.observe_api_refused(tenant, reason)
    return ApiError(status, message, type=type, code=code, headers={"Retry-After": retry_after})


class Admission:
    """The api's budgets (see the module's docstring)."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.settings = service.settings
        self.store = service.store
        # One GCRA check per tenant at a time in this process: the compare-and-set then only
        # contends with other replicas.
        self._rate_locks: dict[str, asyncio.Lock] = {}
        self.waiters = 0
        self._waiting: dict[str, int] = {}
        self._reads: dict[str, float] = {}  # tenant -> its read GCRA time, in this process
        self._store_full_until = 0.0
        self._capacity: tuple[int, float] = (-1, 0.0)  # (plan version, its capacity in units)
        self._store_checked_at = -STORE_MEMORY_CHECK_S

    # New work: the budgets a request's jobs are charged, checked before anything proportional to them.
    async def admit(self, caller: Caller, jobs: list[Job]) -> None:
        """The request's units within the burst, the store not full, then in one store script: the
        rate and the image budget (GCRA times computed here, compare-and-set there), the quota and
        the fair share, all or nothing. Refused for quota or share, the slots of jobs already ended
        are given back (read from their records) and the request tried once more."""
        units = sum(tenancy.job_units(job.width, job.height) for job in jobs)
        if units > caller.limits.burst:
            raise bad_request(f"these images cost {units:g} units (one unit is a 512x512 image), more than this "
                              f"tenant's burst ({caller.limits.burst})", param="n", code="request_too_large")
        await self.check_store_room(caller.tenant)
        slots = [(job.job_id, tenancy.slot_expires_at(job.effective_deadline(self.settings.slo_s,
                                                                              self.settings.batch_slo_s)),
                  tenancy.job_units(job.width, job.height)) for job in jobs]
        store_bytes = sum(tenancy.image_bytes(job.width, job.height) for job in jobs)
        why, released = "", False
        async with self._rate_locks.setdefault(caller.tenant, asyncio.Lock()):
            for _attempt in range(CAS_ATTEMPTS):
                gcras = await self._charges(caller, units, store_bytes)
                why = await self.store.take_slots(caller.tenant, slots, caller.limits.max_active,
                                                  self.capacity_units(), caller.limits.weight, time.time(), gcras)
                if not why:
                    return
                if why != "cas" and released:
                    break
                if why != "cas":
                    await self.release_ended(caller.tenant)
                    released = True
        raise self._refusal(caller, why)

    async def _charges(self, caller: Caller, units: float, store_bytes: float) -> list[tuple[str, str, float, float]]:
        """The tenant's new GCRA times for this request, or its refusal (429 with when to retry)."""
        (rate_raw, rate_tat), (bytes_raw, bytes_tat) = await self.store.gcra_times(caller.tenant, GCRA_BUCKETS)
        now = time.time()
        rate = tenancy.rate_decision(rate_tat, now, caller.limits, units)
        if not rate.allowed:
            raise self._over(caller, "rate", rate.retry_after_s)
        stored = tenancy.store_decision(bytes_tat, now, caller.limits, store_bytes, float(self.store.image_ttl))
        if not stored.allowed:
            raise self._over(caller, "bytes", stored.retry_after_s)
        return [("rate", rate_raw, rate.tat, rate.tat - now + 1.0),
                ("bytes", bytes_raw, stored.tat, stored.tat - now + 1.0)]

    @staticmethod
    def _over(caller: Caller, bucket: str, retry_after_s: float) -> ApiError:
        retry = tenancy.retry_after_header(retry_after_s)
        limits = caller.limits
        if bucket == "rate":
            return refused(429, f"rate limit of {limits.rate:g} units/s (burst {limits.burst}) reached",
                           "rate_limit_exceeded", caller.tenant, "rate", retry)
        return refused(429, f"this tenant's image budget ({limits.image_mb:g} MB per image TTL) is spent",
                       "image_budget_exceeded", caller.tenant, "bytes", retry)

    @staticmethod
    def _refusal(caller: Caller, why: str) -> ApiError:
        if why == "fair":
            return refused(429, "the fleet is saturated and this tenant holds its share of it; try again",
                           "fair_share_exceeded", caller.tenant, "fair")
        if why == "quota":
            return refused(429, f"this tenant has {caller.limits.max_active} units in flight, its quota",
                           "quota_exceeded", caller.tenant, "quota")
        return refused(429, "too many concurrent requests for this tenant", "rate_limit_exceeded", caller.tenant,
                       "rate")

    def capacity_units(self) -> float:
        """What the fleet serves under its current plan within HADIS_API_FAIR_FILL of one objective,
        in units: above it, the fair share applies. Computed once a plan version."""
        plan = self.service.plans.current
        if self._capacity[0] != plan.version:
            self._capacity = (plan.version, self._capacity_of(plan))
        return self._capacity[1]

    def _capacity_of(self, plan: Plan) -> float:
        settings = self.settings
        if settings.api_fair_fill <= 0:
            return 0.0
        profile = load_profile(settings.profile)
        light_s, heavy_s = (profiled_batch_s(profile.model(name), batch, settings.latency_scale)
                            for name, batch in ((plan.light_model, plan.light_batch),
                                                (plan.heavy_model, plan.heavy_batch)))
        return tenancy.capacity_units(tenancy.plan_qps(plan, light_s, heavy_s), settings.slo_s,
                                      settings.api_fair_fill)

    async def release_ended(self, tenant: str) -> None:
        job_ids = await self.store.slots(tenant)
        states = await self.store.states(job_ids)
        await self.store.release_slots(tenant, [job_id for job_id, state in zip(job_ids, states, strict=True)
                                                if state is not None and state.terminal])

    async def check_store_room(self, tenant: str) -> None:
        """New work is refused while the store is nearly full: the jobs in flight keep the rest for
        their images, and every tenant's writes keep working (Redis runs `noeviction`)."""
        now = time.monotonic()
        if now - self._store_checked_at >= STORE_MEMORY_CHECK_S:
            self._store_checked_at = now
            used, limit = await self.store.memory()
            self._store_full_until = now + STORE_MEMORY_CHECK_S if limit and used >= \
                self.settings.api_store_full * limit else 0.0
        if now < self._store_full_until:
            raise refused(503, "the store is nearly full; new jobs wait until images expire", "store_full", tenant,
                          "store_full", "5", type="service_unavailable")

    # What a tenant holds while it waits, and what it reads.
    def hold(self, tenant: str) -> Hold:
        """One waiter of the process and one of the tenant's, checked and counted in one step (no
        await between: concurrent requests cannot overshoot); given back by Hold.release."""
        if self.waiters >= self.settings.api_max_waiters:
            raise refused(503, f"{self.waiters} requests are waiting already; try again", "too_many_waiters", tenant,
                          "busy", type="service_unavailable")
        held = self._waiting.get(tenant, 0)
        if held >= self.settings.api_max_waiters_per_tenant:
            raise refused(429, f"this tenant has {held} requests waiting (images or event streams) on this replica, "
                          "its bound", "too_many_waiters", tenant, "waiters")
        self.waiters += 1
        self._waiting[tenant] = held + 1
        return Hold(self, tenant)

    def _give_back(self, tenant: str) -> None:
        self.waiters -= 1
        self._waiting[tenant] -= 1
        if not self._waiting[tenant]:
            del self._waiting[tenant]

    @contextlib.contextmanager
    def waiting(self, tenant: str) -> Iterator[None]:
        hold = self.hold(tenant)
        try:
            yield
        finally:
            hold.release()

    def admit_read(self, tenant: str) -> None:
        """A read (record, events, image) within the tenant's read rate on this replica."""
        rate = self.settings.api_read_rate_per_s
        decision = tenancy.gcra(self._reads.get(tenant), time.monotonic(), rate, 2 * rate, 1)
        if not decision.allowed:
            raise refused(429, f"read rate of {rate:g}/s reached", "read_rate_exceeded", tenant, "reads",
                          tenancy.retry_after_header(decision.retry_after_s))
        if len(self._reads) >= Recent.BOUND:
            self._reads.clear()
        self._reads[tenant] = decision.tat
