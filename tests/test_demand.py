import pytest

from shared.arrival_rate import DemandTracker, queueing_delay_s


def test_steady_arrivals_converge_to_their_rate():
    tracker = DemandTracker(halflife_s=5.0, now=0.0)
    for second in range(1, 61):
        tracker.arrived(20)
        tracker.update(float(second))
    assert tracker.rate_qps == pytest.approx(20.0, rel=0.01)


def test_half_life_means_half_way_after_one_half_life():
    tracker = DemandTracker(halflife_s=10.0, now=0.0)
    tracker.arrived(100)
    assert tracker.update(10.0) == pytest.approx(5.0)  # observed 10 qps, half of it after 10 s


def test_no_time_elapsed_keeps_rate():
    tracker = DemandTracker(halflife_s=10.0, now=5.0)
    tracker.arrived(3)
    assert tracker.update(5.0) == 0.0


def test_littles_law_with_cap():
    assert queueing_delay_s(30, 10.0, cap_s=60) == 3.0
    assert queueing_delay_s(0, 0.0, cap_s=60) == 0.0
    assert queueing_delay_s(5, 0.0, cap_s=60) == 60
    assert queueing_delay_s(10_000, 1.0, cap_s=60) == 60
