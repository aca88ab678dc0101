import pytest

from shared.policies.restarts import (
    BASE_DELAY_S,
    MAX_DELAY_S,
    STABLE_AFTER_S,
    RestartBackoff,
)


def die_quickly(backoff: RestartBackoff, times: int, start: float = 0.0, uptime: float = 0.1) -> list[float]:
    """Deaths in a row, each restart at ready_at and each run `uptime` long; the delays seen."""
    delays, started_at = [], start
    for _ in range(times):
        backoff = backoff.after_death(started_at + uptime, started_at)
        delays.append(backoff.delay_s)
        started_at = backoff.ready_at
    return delays


def test_a_process_that_never_died_may_start_at_once():
    backoff = RestartBackoff()
    assert backoff.delay_s == 0.0
    assert backoff.ready(now=-1e9)
    assert not backoff.at_cap


def test_quick_deaths_double_the_delay_up_to_the_cap():
    assert die_quickly(RestartBackoff(), 9) == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert (BASE_DELAY_S, MAX_DELAY_S) == (0.5, 30.0)


def test_the_restart_waits_the_delay_after_the_death():
    backoff = RestartBackoff(base_s=1.0, cap_s=8.0, stable_s=10.0)
    backoff = backoff.after_death(now=100.0, started_at=99.0).after_death(now=103.0, started_at=102.0)
    assert backoff.deaths == 2 and backoff.died_at == 103.0
    assert backoff.delay_s == 2.0 and backoff.ready_at == 105.0
    assert not backoff.ready(104.9) and backoff.ready(105.0)


def test_a_stable_run_forgets_the_earlier_deaths():
    backoff = RestartBackoff(base_s=0.5, cap_s=30.0, stable_s=60.0)
    started_at = 0.0
    for _ in range(10):  # each run 1 s long, restarted as soon as ready
        backoff = backoff.after_death(now=started_at + 1.0, started_at=started_at)
        started_at = backoff.ready_at
    assert backoff.deaths == 10 and backoff.at_cap
    started_at = backoff.ready_at
    stable = backoff.after_death(now=started_at + STABLE_AFTER_S, started_at=started_at)
    assert stable.deaths == 1 and stable.delay_s == 0.5 and not stable.at_cap
    just_short = backoff.after_death(now=started_at + 59.9, started_at=started_at)
    assert just_short.deaths == 11 and just_short.delay_s == 30.0


def test_a_death_after_the_outage_counts_from_the_start_again():
    # A RabbitMQ restart: 4 quick deaths, then the process serves for an hour and dies once.
    delays = die_quickly(RestartBackoff(), 4)
    assert delays == [0.5, 1.0, 2.0, 4.0] and sum(delays) < 10
    backoff = RestartBackoff()
    for _ in range(4):
        backoff = backoff.after_death(now=0.0, started_at=0.0)
    assert backoff.after_death(now=3600.0, started_at=10.0).delay_s == BASE_DELAY_S


def test_it_never_gives_up_and_never_overflows():
    backoff = RestartBackoff(base_s=0.5, cap_s=30.0)
    for _ in range(5000):
        backoff = backoff.after_death(now=0.0, started_at=0.0)
    assert backoff.deaths == 5000
    assert backoff.delay_s == 30.0 and backoff.at_cap
    assert backoff.ready(backoff.died_at + 30.0)


def test_the_cap_is_reached_once_and_stays():
    delays = die_quickly(RestartBackoff(base_s=0.05, cap_s=0.4, stable_s=5.0), 8)
    assert delays == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.4, 0.4, 0.4, 0.4])
    assert delays == sorted(delays)


def test_a_value_each_death_gives_a_new_one():
    first = RestartBackoff()
    second = first.after_death(now=1.0, started_at=0.0)
    assert first.deaths == 0 and second.deaths == 1
    with pytest.raises(AttributeError):
        second.deaths = 3  # frozen


@pytest.mark.parametrize("fields", [{"base_s": 0.0}, {"base_s": 2.0, "cap_s": 1.0}, {"stable_s": 0.0}])
def test_nonsense_constants_are_refused(fields):
    with pytest.raises(ValueError):
        RestartBackoff(**fields)
