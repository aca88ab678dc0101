"""The engine core of the service classes (shared/policies/classes.py holds the single rules): how
the router places a batch job and how the controller plans both classes in one round. As
shared/policies/engine.py for the rest, the services (services/router.py, services/controller.py)
and the simulator (shared/experiments/simulator.py) call these same functions, so that a batch job
lands, and a placement is published, alike in both.

The interactive class never sees the batch class: the store counts batch arrivals apart from the
controller's demand (transition.lua), and engine.observation reads the two tier queues only, not
their batch queues (<ns>.tier.<tier>.batch). A burst of batch jobs moves the batch placement
(Plan.batch_heavy, Plan.batch_first), never the interactive plan's fields.

Pure: plain values in, a decision out; no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shared.policies import classes
from shared.policies import quality as quality_rules
from shared.policies.control import Observation, PlanSchedule
from shared.policies.engine import BatchTimes
from shared.policies.sustained_demand import SustainedRate
from shared.schemas import Plan, Tier

# A plan's reason and its batch placement's, in one string (the placement's replaced at each change).
BATCH_REASON = " | batch: "


def batch_route(job_id: str, quality: str, plan: Plan) -> Tier:
    """The tier of a batch-class job: no prompt score, no cascade (the judge never judges it). Its
    quality's tier when it forces one (low, high) that the plan gives GPUs, else the plan's batch
    placement (Plan.batch_heavy) by the job's own draw (classes.job_draw): a redelivery, or another
    router, lands it in the same tier."""
    forced = quality_rules.forced_tier(quality)
    if forced is not None and classes.tier_gpus(plan, forced) > 0:
        return forced
    return classes.batch_tier(plan, classes.job_draw(job_id))


@dataclass(frozen=True)
class ControlStep:
    """A planning round of both classes: the plan fields to publish (None: nothing changes), the
    batch class's placement under the plan in force after it (for the metrics and the log), and the
    queued batch jobs to move so that the queues follow it (classes.rebalance; None: none)."""

    fields: dict[str, Any] | None
    placement: classes.BatchPlacement
    move: classes.Move | None = None


def control_step(schedule: PlanSchedule, observation: Observation, current: Plan | None, gpus: list[str],
                 backlog: classes.Backlog, times: BatchTimes, weight: float, colocate: bool = False) -> ControlStep:
    """One round of the controller for both service classes. The interactive plan is PlanSchedule's
    (its dwell, its GPU assignment), from an observation without batch demand. The batch placement
    (classes.place_batch, for the interactive demand the policy plans for, on the plan that will be
    in force) rides on every plan published, and is published alone, the interactive fields kept
    as they are, only when it moves materially (classes.moved): not every round."""
    fields = schedule.step(observation, current, gpus)
    if fields is not None:
        plan = Plan.model_validate({**fields, "version": current.version if current else 0})
    elif current is not None:
        plan = current
    else:
        return ControlStep(None, classes.BatchPlacement(1.0, (), "no plan"))
    placement = classes.place_batch(plan, interactive_demand(schedule, observation), backlog, times.seconds, weight,
                                    colocate)
    move = classes.rebalance(plan, placement.queued_heavy, {Tier.light: observation.light_batch_queued,
                                                            Tier.heavy: observation.heavy_batch_queued},
                             all_heavy=placement.heavy >= 1.0)
    if fields is None:
        if not classes.moved(plan, placement):
            return ControlStep(None, placement, move)
        fields = plan.model_dump(exclude={"version", "created_at"})
    fields["reason"] = batch_reason(fields.get("reason", ""), placement)
    fields.update(batch_heavy=placement.heavy, batch_first=list(placement.first))
    return ControlStep(fields, placement, move)


def batch_reason(reason: str, placement: classes.BatchPlacement) -> str:
    """A plan's reason with the batch placement's in place of the one before (none without a
    backlog: the interactive reason alone)."""
    interactive = reason.split(BATCH_REASON, 1)[0]
    return interactive if placement.reason == "no batch backlog" else f"{interactive}{BATCH_REASON}{placement.reason}"


def interactive_demand(schedule: PlanSchedule, observation: Observation) -> float:
    """The interactive demand that the batch placement leaves room for: the sustained estimate of a
    policy that keeps one (hadis), never below the controller's EWMA (the leftover must not be
    overestimated on a rise). Read, not asked of the policy: some measure their rate when asked."""
    sustained = getattr(schedule.policy, "sustained", None)
    if isinstance(sustained, SustainedRate) and len(sustained.samples) >= 2:
        return max(observation.demand_qps, sustained.rate())
    return observation.demand_qps
