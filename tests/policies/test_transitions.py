"""What a change of structure costs, and when it is worth it (shared/policies/transitions.py)."""

from __future__ import annotations

import pytest

from shared.policies.transitions import (
    Structure,
    Switch,
    SwitchWatch,
    backlog_wait_s,
    changing_gpus,
    stagger,
    start_s,
    transition,
    worth_switching,
)
from shared.profiles import load_profile

START = {"worker_start_s": 3.0, "worker_start_each_s": 1.25}


@pytest.fixture
def profile():
    profile = load_profile("paper-l40s-x10").model_copy(deep=True)
    for model in profile.models.values():
        object.__setattr__(model, "load_s", None)
    return profile


def test_concurrent_starts_take_longer():
    assert start_s(1, 3.0, 1.25) == 3.0
    assert start_s(16, 3.0, 1.25) == pytest.approx(21.75)  # measured: 21-23 s for 16 at once on 2 cores


def test_moving_gpus_between_tiers_costs_worker_starts_and_the_rest_serve(profile):
    old = Structure("sd35-large-turbo", "sd35-medium", 5, 11)
    cost = transition(old, Structure("sd35-large-turbo", "sd35-medium", 2, 14), profile, **START)
    assert (cost.new_workers, cost.reloads) == (3, 0)
    assert cost.seconds == pytest.approx(3.0 + 2 * 1.25)
    assert cost.serving == Structure("sd35-large-turbo", "sd35-medium", 2, 11)


def test_a_new_pair_reloads_the_gpus_that_stay_and_measured_loads_count(profile):
    old = Structure("sd35-large-turbo", "sd35-medium", 2, 14)
    new = Structure("sd35-medium", "sd35-large", 7, 9)
    instant = transition(old, new, profile, **START)
    assert (instant.new_workers, instant.reloads) == (5, 2 + 9)
    assert instant.serving == Structure("sd35-medium", "sd35-large", 2, 9)  # loads take no time
    object.__setattr__(profile.model("sd35-large"), "load_s", 20.0)
    object.__setattr__(profile.model("sd35-medium"), "load_s", 8.0)
    slow = transition(old, new, profile, **START)
    assert slow.seconds == pytest.approx(20.0)  # the heavy reload outlasts the new light workers (8 s + 8 s)
    assert slow.serving.light_gpus == slow.serving.heavy_gpus == 0  # both models change: nothing serves


def test_a_plan_that_keeps_up_switches_only_if_the_switch_costs_no_deadline():
    keeps_up = dict(keep_qps=20.0, new_qps=12.0, demand_qps=10.0, horizon_s=60.0)
    assert worth_switching(**keeps_up, during_qps=10.0, switch_s=20.0).switch
    # 5 s with nothing serving: 50 jobs behind, drained at 2 jobs/s spare: 30 s of waiting
    assert backlog_wait_s(new_qps=12.0, during_qps=0.0, demand_qps=10.0, switch_s=5.0) == pytest.approx(30.0)
    assert not worth_switching(**keeps_up, during_qps=0.0, switch_s=5.0, slack_s=4.0).switch
    assert worth_switching(**{**keeps_up, "new_qps": 200.0}, during_qps=0.0, switch_s=1.0, slack_s=4.0).switch


def test_a_plan_that_falls_behind_switches_when_the_switch_pays_back_within_the_horizon():
    behind = dict(keep_qps=8.0, new_qps=16.0, demand_qps=12.0)
    assert worth_switching(**behind, during_qps=4.0, switch_s=10.0, horizon_s=60.0).switch  # 40 + 600 > 480
    verdict = worth_switching(**behind, during_qps=0.0, switch_s=50.0, horizon_s=60.0)  # 120 < 480
    assert not verdict.switch and verdict.served_keep == pytest.approx(480.0)


def test_a_switch_is_followed_until_every_moved_gpu_serves_its_new_work():
    before, after = {"g0": "light", "g1": "heavy", "g2": "heavy"}, {"g0": "light", "g1": "light", "g2": "heavy"}
    waiting = changing_gpus(before, after, ("a", "b"), ("a", "c"))
    assert waiting == {"g1": ("light", "a"), "g2": ("heavy", "c")}  # g0 keeps tier and model
    watch = SwitchWatch()
    assert watch.start(Switch(7, started=100.0, expected_s=5.0, waiting=waiting)) is None
    old = [{"gpu": "g1", "tier": "heavy", "model": "b"}, {"gpu": "g2", "tier": "heavy", "model": "b"}]
    assert watch.update(101.0, old) is None
    assert watch.update(103.0, [{"gpu": "g1", "tier": "light", "model": "a"}]) is None  # g2 still loading
    done = watch.update(106.5, [{"gpu": "g1", "tier": "light", "model": "a"},
                                {"gpu": "g2", "tier": "heavy", "model": "c"}])
    assert done is not None and done.version == 7
    assert done.realised_s == pytest.approx(6.5) and done.dark_gpu_s == pytest.approx(3.0 + 6.5)
    assert watch.current is None


def test_a_newer_switch_supersedes_one_in_progress():
    watch = SwitchWatch()
    first = Switch(1, 0.0, 3.0, {"g0": ("heavy", "b")})
    watch.start(first)
    assert watch.start(Switch(2, 1.0, 3.0, {"g0": ("light", "a")})) is first
    assert watch.start(Switch(3, 2.0, 0.0, {})) is not None and watch.current is None  # nothing moves


@pytest.mark.parametrize(("current", "target", "step"), [
    ((6, 10), (12, 4), (8, 8)),  # two heavy GPUs move over
    ((12, 4), (1, 15), (10, 6)),
    ((1, 1), (6, 10), (6, 10)),  # GPUs new to the plan are not moves
    ((2, 2), (8, 8), (8, 8)),
    ((2, 2), (12, 4), (12, 4)),  # the new GPUs cover the light tier's need, heavy keeps its two
    ((4, 4), (1, 15), (2, 14)),  # 8 new GPUs go heavy, two light ones move too
    ((8, 8), (6, 6), (6, 6)),  # GPUs gone: nothing moves
])
def test_a_switch_moves_at_most_two_serving_gpus_per_step(current, target, step):
    old = Structure("a", "b", *current)
    new = stagger(old, Structure("c", "d", *target), max_moving=2)
    assert (new.light_model, new.heavy_model) == ("c", "d")
    assert (new.light_gpus, new.heavy_gpus) == step
