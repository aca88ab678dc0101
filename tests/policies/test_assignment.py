from shared.policies.assignment import assign, moves
from shared.schemas import Tier

L, H = Tier.light, Tier.heavy
GPUS = ["g0", "g1", "g2", "g3"]


def test_fresh_assignment_fills_in_order():
    assert assign(GPUS, 3, 1, {}) == {"g0": H, "g1": L, "g2": L, "g3": L}


def test_keeps_gpus_on_their_tier_when_counts_shift():
    current = {"g0": L, "g1": L, "g2": L, "g3": H}
    after = assign(GPUS, 2, 2, current)
    assert sorted(after.values()).count(H) == 2 and after["g3"] is H
    assert moves(current, after) == 1


def test_counts_are_cut_to_the_gpus_available_heavy_first():
    assert assign(["g0"], 1, 1, {}) == {"g0": H}
    assert assign(GPUS, 0, 0, {"g0": L}) == {}


def test_lost_gpu_is_dropped_and_counts_refilled():
    current = {"g0": H, "g1": L, "g2": L, "g3": L}
    after = assign(["g1", "g2", "g3"], 2, 1, current)
    assert sorted(after) == ["g1", "g2", "g3"] and list(after.values()).count(H) == 1
