"""A job's `quality` (OpenAI's name) on the cascade, and how the jobs that force a tier combine with
the plan: pure, so that the router, the judge, the controller and the simulator decide alike.

- `low`: the light model only. Routed light, never escalated: the judge does not score its image
  (nothing it could decide would change the answer) and serves it at once.
- `high`: the heavy model only. Routed straight to heavy when the heavy tier can finish it by its
  deadline (the router's HeavyRoom, as for a prompt the score sends there); refused otherwise, and by
  a plan without heavy GPUs: the job fails with 503 rather than get an image it did not ask for.
- `medium`, `auto`: the cascade as planned.
OpenAI's dall-e-3 names are aliases: `standard` is medium, `hd` high (and `xhigh`, `max` high).

**The plan with forced jobs.** A plan's r and d are fractions of all arrivals, as the planner's
rows are (its capacity and GPUs follow from them): r the share routed straight to heavy, d the share
of light images escalated. The jobs that force a tier take part of those shares: the `high_share`
of the arrivals is part of r (so r >= high_share: `fits`), the `low_share` is part of the light
images that are not escalated (so (1 - r)(1 - d) >= low_share). The router and the judge apply the
rest to the cascade's own jobs (`auto_point`): the heavy tier's load is what the plan sized, and the
planner keeps planning the cascade, only over the rows that leave room for the forced shares."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from shared.arrival_rate import DemandTracker
from shared.schemas import QUALITIES, Plan, QualityName, Tier

ALIASES = {"standard": "medium", "hd": "high", "xhigh": "high", "max": "high"}
# Shares are published rounded to this step: a plan changes when the mix does, not its noise.
SHARE_STEP = 0.05


def normalize(quality: str | None) -> QualityName:
    """A quality as the Job contract names it (low, medium, high, auto): OpenAI's aliases mapped,
    None is auto. Anything else is an error naming the accepted values."""
    if quality is None:
        return "auto"
    quality = ALIASES.get(quality, quality)
    if quality not in QUALITIES:
        raise ValueError(f"quality must be one of low, medium, high, auto (or standard, hd), not {quality!r}")
    return cast(QualityName, quality)


def forced_tier(quality: str) -> Tier | None:
    """The tier a quality forces: low the light one, high the heavy one; None for the cascade."""
    return Tier.light if quality == "low" else Tier.heavy if quality == "high" else None


@dataclass(frozen=True)
class QualityMix:
    """The shares of the arrivals that force the light tier (low) and the heavy tier (high)."""

    low: float = 0.0
    high: float = 0.0

    @property
    def auto(self) -> float:
        return max(1.0 - self.low - self.high, 0.0)


def observed_mix(total_qps: float, low_qps: float, high_qps: float) -> QualityMix:
    """The mix from arrival rates (each an estimate of the same kind), rounded to SHARE_STEP
    upwards, so a forced share is never planned below what was seen."""
    if total_qps <= 0:
        return QualityMix()

    def share(rate: float) -> float:
        raw = min(max(rate / total_qps, 0.0), 1.0)
        steps = -int(-round(raw / SHARE_STEP, 6) // 1)  # the ceiling, unmoved by float noise
        return min(round(steps * SHARE_STEP, 6), 1.0) if raw > 1e-9 else 0.0

    low, high = share(low_qps), share(high_qps)
    if low + high > 1.0:
        low = round(1.0 - high, 6)
    return QualityMix(low, high)


class MixTracker:
    """The arrival rates of the forced qualities, EWMAs as the demand's (DemandTracker, the same
    half-life), for the controller and the simulator alike: the mix is their share of the demand."""

    def __init__(self, halflife_s: float, now: float) -> None:
        self.rates = {name: DemandTracker(halflife_s, now) for name in ("low", "high")}

    def arrived(self, quality: str, count: int = 1) -> None:
        if quality in self.rates:
            self.rates[quality].arrived(count)

    def update(self, now: float) -> None:
        for tracker in self.rates.values():
            tracker.update(now)

    def mix(self, total_qps: float) -> QualityMix:
        return observed_mix(total_qps, self.rates["low"].rate_qps, self.rates["high"].rate_qps)


def settled_mix(planned: QualityMix, observed: QualityMix) -> QualityMix:
    """The mix to plan with, given the one the current plan was made for: a share that rises is
    taken at once (the forced jobs need their tier now), one that falls only once it is more than
    two steps lower. Without it the estimate's noise moved a share by a step every few seconds, and
    each step published a plan (36 plans in 5 minutes of a steady 4 jobs/s with 30 % low, 13 without
    low jobs, in the simulator)."""
    def share(old: float, new: float) -> float:
        return new if new > old or new < old - 2 * SHARE_STEP - 1e-9 else old

    low, high = share(planned.low, observed.low), share(planned.high, observed.high)
    if low + high > 1.0:
        return observed
    return QualityMix(low, high)


def mix_of(plan: Plan) -> QualityMix:
    return QualityMix(plan.low_share, plan.high_share)


def fits(r: float, d: float, mix: QualityMix) -> bool:
    """Whether a plan's overall (r, d) leaves room for the forced shares: the high jobs within r,
    the low jobs within the light images not escalated."""
    return r + 1e-9 >= mix.high and (1.0 - r) * (1.0 - d) + 1e-9 >= mix.low


def rows_for(rows: Sequence[tuple[tuple[str, str], float, float]], mix: QualityMix) -> list[bool]:
    """Which planner rows (pair, r, d) a plan may use with this mix: those that `fit` it. A pair
    none of whose rows fits keeps them all (its forced jobs then overload a tier a little, the
    planner's structure logic needs every pair it has): the planner plans the cascade, and the
    forced shares only narrow the rows it picks from."""
    allowed = [fits(r, d, mix) for _, r, d in rows]
    any_of_pair: dict[tuple[str, str], bool] = {}
    for (pair, _, _), ok in zip(rows, allowed, strict=True):
        any_of_pair[pair] = any_of_pair.get(pair, False) or ok
    return [ok or not any_of_pair[pair] for (pair, _, _), ok in zip(rows, allowed, strict=True)]


def auto_point(r: float, d: float, mix: QualityMix) -> tuple[float, float]:
    """The r and d for the cascade's own jobs that make, with the forced ones, the overall (r, d):
    r_auto = (r - high) / auto, and d_auto escalates the light images of the d share, none of
    which is a low job's: d_auto = d (1 - r) / (auto (1 - r_auto)). A plan that does not fit the mix
    (r < high: the forced jobs fill more than r) routes no auto job to heavy, and d_auto is at most 1."""
    auto = mix.auto
    if auto <= 0:
        return 0.0, 0.0
    r_auto = min(max((r - mix.high) / auto, 0.0), 1.0)
    light_auto = auto * (1.0 - r_auto)
    if light_auto <= 0:
        return r_auto, 0.0
    return r_auto, min(d * (1.0 - max(r, mix.high)) / light_auto, 1.0)


def overall_point(r_auto: float, d_auto: float, mix: QualityMix) -> tuple[float, float]:
    """The inverse of auto_point: the overall (r, d) when the auto jobs follow (r_auto, d_auto) and
    the forced ones their tiers: r = high + auto r_auto; d = auto (1 - r_auto) d_auto / (1 - r)."""
    r = mix.high + mix.auto * r_auto
    light = 1.0 - r
    return r, (mix.auto * (1.0 - r_auto) * d_auto / light if light > 0 else 0.0)


def for_auto_jobs(plan: Plan) -> Plan:
    """The plan as the router's threshold and the judge's percentile apply it to the cascade's jobs
    (auto_point); the plan itself when it has no forced shares."""
    if plan.low_share <= 0 and plan.high_share <= 0:
        return plan
    r, d = auto_point(plan.r, plan.d, mix_of(plan))
    return plan.model_copy(update={"r": r, "d": d})


def heavy_refusal(plan: Plan, admitted: bool, heavy_batch_s: float) -> str | None:
    """Why a high job is refused, or None: a plan without heavy GPUs, or a heavy tier that cannot
    end it by its deadline (`admitted`: the router's HeavyRoom said no)."""
    if plan.heavy_gpus <= 0:
        return "503 HeavyUnavailable: quality=high needs the heavy model, and the plan has no heavy GPUs"
    if not admitted:
        return (f"503 HeavyUnavailable: quality=high needs the heavy model ({plan.heavy_model}), which cannot "
                f"finish it by its deadline at the current load (one batch takes {heavy_batch_s:.3g} s); "
                "retry later, with a longer deadline, or with quality=auto")
    return None
