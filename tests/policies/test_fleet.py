"""Fail static: which GPUs the controller plans with when agents go quiet or leave."""

from __future__ import annotations

from shared.policies.control import Observation, PlanSchedule, StaticPolicy
from shared.policies.fleet import Fleet
from tests.helpers import make_settings


def test_a_quiet_gpu_stays_until_its_grace_runs_out():
    fleet = Fleet(absent_s=300)
    assert fleet.update(["a", "b"], [], now=0) == ["a", "b"]
    assert fleet.update(["a"], [], now=10) == ["a", "b"]  # b's agent is late: b stays
    assert fleet.absent(["a"]) == ["b"]
    assert fleet.update(["a"], [], now=300) == ["a", "b"]
    assert fleet.update(["a"], [], now=300.5) == ["a"]  # 300.5 s unseen: gone
    assert fleet.update(["a", "b"], [], now=301) == ["a", "b"]  # and back when it registers


def test_a_clean_departure_is_at_once_unless_it_came_back():
    fleet = Fleet(absent_s=300)
    fleet.update(["a", "b", "c"], [], now=0)
    assert fleet.update(["a"], ["b"], now=1) == ["a", "c"]
    assert fleet.update(["a", "b"], ["b"], now=2) == ["a", "b", "c"]  # registered again: live wins


def test_remembered_gpus_get_the_same_grace():
    fleet = Fleet(absent_s=60)
    fleet.remember(["x", "y"], now=100)
    assert fleet.update([], [], now=150) == ["x", "y"]
    assert fleet.update([], [], now=161) == []


def test_no_gpus_never_replaces_a_plan():
    settings = make_settings()
    schedule = PlanSchedule(StaticPolicy(settings), period_s=1, min_dwell_s=0)
    current = settings.static_plan(version=3).model_copy(update={"assignment": {}})
    observation = Observation(now=0, demand_qps=1, queued_jobs=5, queueing_s=0, gpus=0, current=current,
                              light_queued=5)
    assert schedule.step(observation, current, []) is None
    first = PlanSchedule(StaticPolicy(settings), period_s=1, min_dwell_s=0)
    assert first.step(observation, None, []) is not None  # the very first plan is published all the same
