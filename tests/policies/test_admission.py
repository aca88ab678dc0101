from shared.policies.admission import HANDOFF_S, BatchTimer, ends_too_late


def test_the_profile_stands_in_until_a_batch_is_measured():
    timer = BatchTimer()
    assert timer.expected("m", 4, prior_s=1.5) == 1.5
    timer.observe("m", 2, 1.0)
    assert timer.expected("m", 4, prior_s=1.5) == 2.0  # scaled up from the nearest measured size
    assert timer.expected("m", 1, prior_s=9.0) == 1.0  # a smaller batch: no faster than measured
    assert timer.expected("other", 1, prior_s=0.3) == 0.3


def test_a_job_needs_its_handoff_time_before_the_deadline():
    assert ends_too_late(10.0 - HANDOFF_S / 2, 10.0)
    assert not ends_too_late(10.0 - 2 * HANDOFF_S, 10.0)
