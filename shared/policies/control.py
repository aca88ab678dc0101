"""Controller policies: given what the controller observes, the plan it wants (every field of a
Plan except its version and GPU assignment). Experiments plug more policies in here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from shared.schemas import Plan
from shared.settings import Settings


@dataclass(frozen=True)
class Observation:
    now: float
    demand_qps: float  # the arrival-rate estimate, before the safety margin
    queued_jobs: int  # ready messages in the tier and judge queues
    queueing_s: float  # Little's-law wait of a new job behind them
    gpus: int  # GPUs registered by live agents
    current: Plan | None


class ControlPolicy(Protocol):
    name: str

    def decide(self, observation: Observation) -> dict[str, Any]:
        """Plan fields without version, created_at and assignment."""


class StaticPolicy:
    """No automatic changes: the plan from settings when the controller starts, then whatever
    plan is current (an operator's `hadis set-plan` sticks)."""

    name = "static"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.started = False

    def decide(self, observation: Observation) -> dict[str, Any]:
        plan = self.settings.static_plan(version=0)
        if self.started and observation.current is not None:
            plan = observation.current
        self.started = True
        return plan.model_dump(exclude={"version", "created_at", "assignment"})


class HadisPolicy:
    """The HADIS planner: the best-quality configuration that covers the demand within the SLO."""

    name = "hadis"

    def __init__(self, settings: Settings) -> None:
        from shared.policies.planner import Planner, load_table
        from shared.profiles import load_profile

        self.settings = settings
        self.planner = Planner(load_profile(settings.profile), load_table(settings.profile),
                               light_share=settings.planner_light_share, margin=settings.demand_margin)

    def decide(self, observation: Observation) -> dict[str, Any]:
        decision = self.planner.plan(observation.demand_qps, observation.gpus, self.settings.slo_s,
                                     queueing_s=observation.queueing_s)
        return decision.plan_fields()


POLICIES = {"static": StaticPolicy, "hadis": HadisPolicy}


def make_policy(settings: Settings) -> ControlPolicy:
    return POLICIES[settings.controller_policy](settings)
