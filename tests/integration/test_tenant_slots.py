"""The store's slot script against the rule it applies (shared/policies/tenancy.py): the quota in
units and the fair share are written twice, once in Lua for atomicity and once in Python for the
simulator and the reader; drawn sequences of takes and releases must get the same answers from both."""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.policies.tenancy import fair_admits
from shared.store import Store
from tests.helpers import make_settings

pytestmark = [pytest.mark.integration]

TENANTS = {"a": 1.0, "b": 2.0, "c": 1.0}
CAPACITY, MAX_UNITS = 12.0, 10.0

steps = st.lists(st.tuples(st.sampled_from(sorted(TENANTS)), st.sampled_from([1.0, 4.0, 16.0]),
                           st.integers(1, 3), st.booleans()), min_size=1, max_size=25)


def model_take(held: dict[str, dict[str, float]], tenant: str, jobs: list[str], units: float) -> str:
    mine, cost = sum(held[tenant].values()), units * len(jobs)
    if mine + cost > MAX_UNITS:
        return "quota"
    total = sum(sum(taken.values()) for taken in held.values())
    others = {t: sum(taken.values()) for t, taken in held.items() if t != tenant and sum(taken.values()) > 0}
    weights = TENANTS[tenant] + sum(TENANTS[t] for t in others)
    top = max((units / TENANTS[t] for t, units in others.items()), default=0.0)
    if not fair_admits(cost, mine, total, CAPACITY, TENANTS[tenant], weights, len(jobs), top):
        return "fair"
    held[tenant].update(dict.fromkeys(jobs, units))
    return ""


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps)
async def test_the_slot_script_and_the_rule_agree(plan):
    store = await Store.connect(make_settings())
    try:
        for tenant, weight in TENANTS.items():
            await store._redis.hset(store._api("tenant", tenant), "weight", repr(weight))
        held: dict[str, dict[str, float]] = {tenant: {} for tenant in TENANTS}
        now = time.time()
        for index, (tenant, units, count, release_first) in enumerate(plan):
            if release_first and held[tenant]:
                oldest = next(iter(held[tenant]))
                del held[tenant][oldest]
                await store.release_slots(tenant, [oldest, "never-taken"])
            jobs = [f"j{index}.{k}" for k in range(count)]
            got = await store.take_slots(tenant, [(job, now + 600, units) for job in jobs], MAX_UNITS, CAPACITY,
                                         TENANTS[tenant], now)
            assert got == model_take(held, tenant, jobs, units), (index, tenant, units, count, held)
    finally:
        await store.delete_namespace()
        await store.close()
