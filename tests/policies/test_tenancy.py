"""The api's rate limit (GCRA) and quota slot rule, without a broker or a store."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.policies.tenancy import SLOT_GRACE_S, Limits, rate_decision, retry_after_header, slot_expires_at

LIMITS = Limits(rate=2.0, burst=4, max_active=10)


def run(times: list[float], limits: Limits = LIMITS, cost: int = 1) -> list[bool]:
    tat, admitted = None, []
    for now in times:
        decision = rate_decision(tat, now, limits, cost)
        admitted.append(decision.allowed)
        tat = decision.tat
    return admitted


def test_a_burst_is_admitted_then_the_rate():
    assert run([100.0] * 6) == [True] * 4 + [False] * 2
    # Half a second later (rate 2/s) one more fits, not two.
    assert run([100.0] * 4 + [100.5, 100.5]) == [True] * 5 + [False]


def test_a_refusal_says_when_to_retry_and_does_not_cost():
    tat = None
    for _ in range(4):
        tat = rate_decision(tat, 100.0, LIMITS).tat
    refused = rate_decision(tat, 100.0, LIMITS)
    assert not refused.allowed and refused.tat == tat and refused.retry_after_s == pytest.approx(0.5)
    assert rate_decision(tat, 100.0 + refused.retry_after_s, LIMITS).allowed


def test_an_idle_tenant_gets_its_burst_back_but_no_more():
    assert run([0.0] * 4 + [1000.0] * 5) == [True] * 4 + [True] * 4 + [False]


def test_a_cost_counts_as_that_many_requests():
    assert run([0.0, 0.0, 0.0], cost=2) == [True, True, False]
    assert not rate_decision(None, 0.0, LIMITS, cost=5).allowed  # above the burst: never


@given(st.lists(st.floats(min_value=0, max_value=100), min_size=1, max_size=200))
def test_never_more_than_burst_plus_rate_times_elapsed(offsets):
    times = sorted(offsets)
    admitted = [t for t, ok in zip(times, run(times), strict=True) if ok]
    if admitted:
        assert len(admitted) <= LIMITS.burst + LIMITS.rate * (admitted[-1] - admitted[0]) + 1e-6


@pytest.mark.parametrize("rate, burst, active", [(0, 1, 1), (-1, 1, 1), (float("inf"), 1, 1), (1, 0, 1), (1, 1, 0)])
def test_limits_are_checked(rate, burst, active):
    with pytest.raises(ValueError):
        Limits(rate, burst, active)


def test_slots_and_retry_after():
    assert slot_expires_at(1000.0) == 1000.0 + SLOT_GRACE_S
    assert retry_after_header(0.01) == "1" and retry_after_header(2.2) == "3"


def test_an_image_costs_its_pixels_with_a_floor_of_one_unit():
    from shared.policies.tenancy import job_units

    assert job_units(512, 512) == 1 and job_units(64, 64) == 1
    assert job_units(1024, 1024) == 4 and job_units(2048, 2048) == 16


def test_the_image_budget_is_a_gcra_over_the_image_ttl():
    from shared.policies.tenancy import store_decision

    limits = Limits(rate=1, burst=1, max_active=1, image_mb=3.0)
    first = store_decision(None, 0.0, limits, 2 * 2**20, 3600)
    assert first.allowed
    assert not store_decision(first.tat, 0.0, limits, 2 * 2**20, 3600).allowed  # 4 MB of a 3 MB budget
    later = store_decision(first.tat, 2400.0, limits, 2 * 2**20, 3600)  # two thirds of a TTL: 2 MB back
    assert later.allowed


def test_a_tenant_holds_its_weighted_share_only_when_others_hold_work():
    from shared.policies.tenancy import fair_admits

    assert fair_admits(5, mine=95, total=95, capacity=10, weight=1, active_weights=1)  # alone
    assert fair_admits(1, mine=0, total=100, capacity=10, weight=1, active_weights=3)  # holds nothing
    assert fair_admits(1, mine=3, total=8, capacity=10, weight=1, active_weights=2)  # below capacity
    assert not fair_admits(1, mine=5, total=10, capacity=10, weight=1, active_weights=2)  # its share is 5
    assert fair_admits(1, mine=5, total=10, capacity=10, weight=3, active_weights=4)  # weight 3 of 4: 7.5


@pytest.mark.parametrize("offset, problem", [(-3600, "past"), (0.1, "past"), (5, None), (3599, None),
                                             (3700, "more than")])
def test_deadlines_a_client_may_set(offset, problem):
    from shared.policies.tenancy import deadline_problem

    found = deadline_problem(1000.0 + offset, 1000.0, 3600.0)
    assert (found is None) if problem is None else (problem in found)
    assert deadline_problem(None, 1000.0, 3600.0) is None


def test_a_plan_serves_what_its_slower_tier_over_its_share_allows():
    from shared.policies.tenancy import capacity_units, plan_qps
    from shared.schemas import Plan

    plan = Plan(version=1, light_model="l", heavy_model="h", r=0.2, d=0.25, light_batch=4, heavy_batch=2,
                light_gpus=1, heavy_gpus=1)
    # light: 4 / 1 s over 0.8 of the jobs = 5/s; heavy: 2 / 1 s over h = 0.2 + 0.8 * 0.25 = 0.4 of them = 5/s
    assert plan_qps(plan, 1.0, 1.0) == pytest.approx(5.0)
    assert plan_qps(plan, 1.0, 2.0) == pytest.approx(2.5)  # the heavy tier bounds it
    light_only = plan.model_copy(update={"r": 0.0, "d": 0.0, "heavy_gpus": 0})
    assert plan_qps(light_only, 1.0, 0.0) == pytest.approx(4.0)
    assert capacity_units(plan_qps(plan, 0.0, 0.0), 10, 0.7) == 0.0  # no profile: no fair share
    assert capacity_units(5.0, 10, 0.7) == pytest.approx(35.0)
