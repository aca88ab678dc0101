"""Which GPUs the controller plans with: fail static.

Agents renew a registration every heartbeat; a registration that lapses means the controller lost
sight of an agent, not that its GPUs are gone: a CPU-starved agent (a noisy neighbour), a Redis
failover or a network blip all look the same for a few seconds. Withdrawing those GPUs from the
plan would stop their workers and restart them moments later, a restart storm that hurts far more
than planning with a GPU that really died (its queue is shared, so other workers take its jobs).
So a GPU leaves the fleet only when its agent says it is leaving (a clean shutdown) or after a
long, explicit absence (HADIS_GPU_ABSENT_S, minutes by default).

Pure: the caller passes the clock and what it read from the store."""

from __future__ import annotations

from collections.abc import Iterable


class Fleet:
    """GPU id -> when it was last seen registered."""

    def __init__(self, absent_s: float) -> None:
        self.absent_s = absent_s
        self.last_seen: dict[str, float] = {}

    def remember(self, gpus: Iterable[str], now: float) -> None:
        """GPUs known to be there without a registration just now (the current plan's, when the
        controller starts): they get the same grace as GPUs seen registered."""
        for gpu in gpus:
            self.last_seen.setdefault(gpu, now)

    def update(self, live: Iterable[str], departed: Iterable[str], now: float) -> list[str]:
        """The GPUs to plan with: the live ones, and the absent ones until their grace runs out;
        never a GPU whose agent shut down cleanly (unless it is live again)."""
        live = set(live)
        for gpu in live:
            self.last_seen[gpu] = now
        for gpu in set(departed) - live:
            self.last_seen.pop(gpu, None)
        for gpu, seen in list(self.last_seen.items()):
            if now - seen > self.absent_s:
                del self.last_seen[gpu]
        return sorted(self.last_seen)

    def absent(self, live: Iterable[str]) -> list[str]:
        """GPUs planned with that are not registered just now (for the log and metrics)."""
        return sorted(set(self.last_seen) - set(live))
