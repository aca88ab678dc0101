"""The measured arrival rate: an exponentially weighted moving average of arrivals, with a
half-life (the controller's `hadis_demand_qps`), and the queueing delay it implies by Little's law
(W = L / lambda). Not the demand a plan is sized for: that is the burst-proof estimate of
shared/policies/sustained_demand.py."""

from __future__ import annotations

import math


class DemandTracker:
    def __init__(self, halflife_s: float, now: float) -> None:
        self.halflife_s = halflife_s
        self.rate_qps = 0.0
        self._last = now
        self._pending = 0
        self.total = 0  # every arrival counted so far

    def arrived(self, count: int = 1) -> None:
        self._pending += count
        self.total += count

    def update(self, now: float) -> float:
        """Fold the arrivals since the last update into the rate; returns the rate in jobs/s."""
        elapsed = now - self._last
        if elapsed <= 0:
            return self.rate_qps
        observed = self._pending / elapsed
        weight = 1.0 - math.exp(-elapsed * math.log(2) / self.halflife_s)
        self.rate_qps += weight * (observed - self.rate_qps)
        self._last, self._pending = now, 0
        return self.rate_qps


def beyond_poisson(arrived: float, expected: float, sigmas: float) -> bool:
    """Whether `arrived` jobs are more than `sigmas` Poisson deviations over the `expected` count (a
    deviation of at least one job): a burst, not a count's noise. The routers' burst guard
    (admission.beyond_pace) and the burst history's noise (bursts.BurstHistory.intervals) ask it."""
    return arrived > expected + sigmas * math.sqrt(max(expected, 1.0))


def queueing_delay_s(queued_jobs: int, rate_qps: float, cap_s: float) -> float:
    """Little's law: the time a new job waits behind `queued_jobs` at the arrival rate, capped."""
    if queued_jobs <= 0:
        return 0.0
    if rate_qps <= 0:
        return cap_s
    return min(queued_jobs / rate_qps, cap_s)
