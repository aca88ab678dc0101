"""When to restart a process that died: exponential backoff that forgets and never gives up.

The supervisor (`hadis serve all`, one child per service) and the agent (one worker per GPU) both
use this rule, so a dependency outage is ridden out the same way everywhere. A process that dies
is restarted after BASE_DELAY_S; each further death that comes quickly (the process ran for less
than STABLE_AFTER_S) doubles the delay, up to MAX_DELAY_S. A process that stayed up STABLE_AFTER_S
before dying starts the count over. There is no limit on the number of restarts: a process that
dies because RabbitMQ or Redis is restarting, or is down for an hour, comes back within
MAX_DELAY_S of the dependency coming back, and a process that dies for good costs one start every
MAX_DELAY_S, which is cheap. Giving up (what the earlier "5 restarts a minute" budget did) turned
a 4-second broker restart into a stack that stayed down.

Pure: no clocks are read and nothing is logged here; the caller passes the times in (monotonic
seconds) and acts on the delay."""

from __future__ import annotations

from dataclasses import dataclass, replace

# The documented bounds of the restart retry.
# The first restart waits this long: long enough that a process crashing at once (its broker
# refusing connections) does not spin a CPU, short enough that a single crash costs nothing.
BASE_DELAY_S = 0.5
# The longest wait between restarts. Reached after 7 quick deaths in a row (0.5, 1, 2, 4, 8, 16,
# then 30 s: about 30 s of failing); from then on a process that keeps dying is tried twice a
# minute, and comes back at most this long after whatever killed it is fixed.
MAX_DELAY_S = 30.0
# Uptime after which a death is not "quick": the process was working, so its earlier deaths are
# forgotten and the next restart waits BASE_DELAY_S again. Longer than a service takes to start
# and connect, so a process that crashes just after connecting still backs off.
STABLE_AFTER_S = 60.0


@dataclass(frozen=True)
class RestartBackoff:
    """The restart state of one process (a service, or a GPU's worker): its quick deaths in a
    row and when the last one happened, with the rule's constants (injectable: tests use small
    ones). A value: each death gives a new one (`after_death`)."""

    base_s: float = BASE_DELAY_S
    cap_s: float = MAX_DELAY_S
    stable_s: float = STABLE_AFTER_S
    deaths: int = 0  # quick deaths in a row; 0: none since the last stable run (or ever)
    died_at: float | None = None  # the last death (caller's clock), None: never died

    def __post_init__(self) -> None:
        if not 0 < self.base_s <= self.cap_s:
            raise ValueError(f"need 0 < base_s <= cap_s, got base_s={self.base_s} cap_s={self.cap_s}")
        if self.stable_s <= 0:
            raise ValueError(f"need stable_s > 0, got {self.stable_s}")

    def after_death(self, now: float, started_at: float) -> RestartBackoff:
        """The state after the process, started at `started_at`, died at `now`. A run of at
        least `stable_s` resets the count (this death is then the first one): old deaths are
        forgotten, so a process that crashes once a day always restarts after `base_s`."""
        quick = now - started_at < self.stable_s
        return replace(self, deaths=self.deaths + 1 if quick else 1, died_at=now)

    @property
    def delay_s(self) -> float:
        """How long to wait after the last death before restarting: `base_s` doubled for each
        quick death before it, at most `cap_s`; 0 if it never died."""
        if self.deaths == 0:
            return 0.0
        # The exponent is bounded so that a process dying for weeks does not overflow a float.
        return min(self.base_s * 2.0 ** min(self.deaths - 1, 64), self.cap_s)

    @property
    def ready_at(self) -> float:
        """When the process may be started again (caller's clock); -inf if it never died."""
        return float("-inf") if self.died_at is None else self.died_at + self.delay_s

    def ready(self, now: float) -> bool:
        return now >= self.ready_at

    @property
    def at_cap(self) -> bool:
        """The delay has reached `cap_s`: the process keeps dying (worth a warning, each time)."""
        return self.deaths > 0 and self.delay_s >= self.cap_s
