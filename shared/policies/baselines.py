"""The policies hadis is compared with, reproduced over the same planner and tables
(docs/experiments.md has a paragraph and the source of each), and the single-model ones."""

from __future__ import annotations

import math
from typing import Any

from shared.policies.control import BATCH_SIZES, Observation, PlannerPolicy, WindowRate
from shared.policies.pareto import ParetoRow, ParetoTable, build_table, load_quality, load_table
from shared.policies.planner import Planner
from shared.profiles import Profile, load_profile
from shared.settings import Settings


class HadisPaperPolicy(PlannerPolicy):
    """The paper's policy as published: the same tables, but the light tier provisioned for all
    of the demand, demand measured as the mean arrival rate of the last planning period (no
    margin, no queue term), re-planned every 50 s of trace time."""

    name = "hadis-paper"
    period_s = 50.0

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.window = WindowRate()

    def make_planner(self) -> Planner:
        return Planner(self.profile, load_table(self.settings.profile), light_share="all", margin=0.0,
                       batch_sizes=BATCH_SIZES)

    def demand(self, observation: Observation) -> float:
        return self.window.rate(observation)

    def queueing(self, observation: Observation) -> float:
        return 0.0


def filtered_table(profile: Profile, quality_name: str, keep,
                   pairs: list[tuple[str, str]] | None = None) -> ParetoTable:
    """A Pareto table built from the quality rows that `keep(row)` accepts (ablations and baselines)."""
    quality = load_quality(quality_name)
    rows = [row for row in quality.rows if keep(row) and (pairs is None or (row.light_model, row.heavy_model) in pairs)]
    return build_table(quality.model_copy(update={"rows": rows}), profile)


class AblationPolicy(PlannerPolicy):
    """Our planner over the half of the table that `keeps` selects."""

    @staticmethod
    def keeps(row) -> bool:
        return True

    def make_planner(self) -> Planner:
        table = filtered_table(self.profile, load_table(self.settings.profile).quality_table, self.keeps)
        return Planner(self.profile, table, light_share=self.settings.planner_light_share,
                       margin=self.settings.demand_margin, batch_sizes=BATCH_SIZES, use_spare_gpus=True)


class RouterOnlyPolicy(AblationPolicy):
    """Ablation: the router alone (d = 0), no judge escalation."""

    name = "router-only"

    @staticmethod
    def keeps(row) -> bool:
        return row.d == 0.0


class DiscOnlyPolicy(AblationPolicy):
    """Ablation: the judge alone (r = 0), every prompt tries the light model first."""

    name = "disc-only"

    @staticmethod
    def keeps(row) -> bool:
        return row.r == 0.0


DIFFSERVE_PAIR = ("sd35-large-turbo", "sd35-large")


class DiffServePolicy(PlannerPolicy):
    """DiffServe: one fixed cascade, sd35-large-turbo -> sd35-large, judge only (r = 0); the
    escalation threshold is the largest the demand and the SLO allow (the best FID of the pair's
    judge-only rows), with the same demand estimate and GPU split as ours."""

    name = "diffserve"

    def make_planner(self) -> Planner:
        quality = load_table(self.settings.profile).quality_table
        table = filtered_table(self.profile, quality, lambda row: row.r == 0.0, pairs=[DIFFSERVE_PAIR])
        return Planner(self.profile, table, light_share="all", margin=self.settings.demand_margin,
                       batch_sizes=BATCH_SIZES, use_spare_gpus=True)


class ProteusPolicy(PlannerPolicy):
    """Proteus (accuracy scaling): a mix of model variants, each query served by one model (no
    cascade), chosen to maximise the expected per-query accuracy under the demand. Its objective
    is linear in the shares: FID_est = (1 - x) FID_light + x FID_heavy. Solved exactly by the
    same planner over every two-model split x (and single models) with that objective; the
    services realise a split with the router at r = x. Its mix is scored, like every policy's,
    by the measured FID of what it served."""

    name = "proteus"

    def make_planner(self) -> Planner:
        quality = load_table(self.settings.profile).quality_table
        table = filtered_table(self.profile, quality, lambda row: row.d == 0.0)
        linear = [row.model_copy(update={"fid": self.linear_fid(row)}) for row in table.rows]
        return Planner(self.profile, table.model_copy(update={"rows": linear}), light_share="routed",
                       margin=self.settings.demand_margin, batch_sizes=BATCH_SIZES, use_spare_gpus=True)

    def linear_fid(self, row: ParetoRow) -> float:
        light, heavy = self.profile.model(row.light_model).fid, self.profile.model(row.heavy_model).fid
        if light is None or heavy is None:
            raise ValueError(f"proteus needs the stand-alone FID of {row.light_model} and {row.heavy_model}")
        return round((1.0 - row.r) * light + row.r * heavy, 6)


class PlannedStaticPolicy(PlannerPolicy):
    """The planner's plan for one fixed demand (HADIS_STATIC_DEMAND_QPS), asked once and never
    changed (re-planned only if the GPUs change): the baseline an adaptive controller must beat.
    Its planner is hadis's (the whole table, the routed light share, the margin, spare GPUs as
    headroom), so the only thing it lacks is adaptation; `hadis simulate --policy best-static`
    sweeps the demand and keeps the best plan in hindsight (shared/experiments/best_static.py)."""

    name = "planned-static"

    def __init__(self, settings: Settings) -> None:
        if settings.static_demand_qps is None:
            raise ValueError("the planned-static policy plans for one fixed demand: set HADIS_STATIC_DEMAND_QPS "
                             "(hadis experiment/simulate --static-demand QPS)")
        super().__init__(settings)
        self.fixed: tuple[int, dict[str, Any]] | None = None  # (GPUs, the decision for them)

    def make_planner(self) -> Planner:
        return Planner(self.profile, load_table(self.settings.profile), light_share=self.settings.planner_light_share,
                       margin=self.settings.demand_margin, batch_sizes=BATCH_SIZES, use_spare_gpus=True)

    def decide(self, observation: Observation) -> dict[str, Any]:
        if self.fixed is None or self.fixed[0] != observation.gpus:
            demand = float(self.settings.static_demand_qps or 0.0)
            decision = self.planner.plan(demand, observation.gpus, self.settings.slo_s, queueing_s=0.0)
            fields = decision.plan_fields()
            fields["reason"] = fields["reason"].replace("hadis planner", f"{self.name} planner for {demand:g} qps", 1)
            self.fixed = (observation.gpus, fields)
        return dict(self.fixed[1])


class SingleModelPolicy:
    """One model on every GPU (no router split, no judge): a single-model plan sends every job
    to the heavy tier (r = 1) with light_model = heavy_model. The batch size is the smallest that
    covers the demand within the SLO, else the one with the most throughput within it."""

    name = "single"
    period_s: float | None = None
    degrade_at_once = False

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.profile = load_profile(settings.profile)
        self.ladder = quality_ladder(settings.profile)

    def plan_for(self, model_name: str, observation: Observation, why: str) -> dict[str, Any]:
        model = self.profile.model(model_name)
        gpus = max(observation.gpus, 1)
        demand = observation.demand_qps * (1.0 + self.settings.demand_margin)
        batch = single_model_batch(self.profile, model_name, demand, gpus, self.settings.slo_s - observation.queueing_s)
        return {"light_model": model_name, "heavy_model": model_name, "r": 1.0, "d": 0.0, "light_batch": 1,
                "heavy_batch": batch, "light_gpus": 0, "heavy_gpus": observation.gpus, "fid": model.fid,
                "reason": f"{self.name}: {model_name} batch {batch} on {observation.gpus} GPUs; {why}"}


def single_model_batch(profile: Profile, model_name: str, demand_qps: float, gpus: int, budget_s: float) -> int:
    model = profile.model(model_name)
    allowed = [b for b in BATCH_SIZES if model.max_batch is None or b <= model.max_batch]
    within = [b for b in allowed if model.batch_latency_s(b) <= budget_s] or allowed[:1]
    covering = [b for b in within if gpus * b / model.batch_latency_s(b) >= demand_qps]
    if covering:
        return covering[0]
    return max(within, key=lambda b: b / model.batch_latency_s(b))


def quality_ladder(profile_name: str) -> list[str]:
    """The profile's models with a measured FID, from the cheapest to the best."""
    profile = load_profile(profile_name)
    models = [m for m in load_table(profile_name).models if profile.model(m).latency_ms]
    return sorted(models, key=lambda m: profile.model(m).batch_latency_s(1))


class ClipperLightPolicy(SingleModelPolicy):
    """Clipper with the lightest model on every GPU (adaptive batching, no model choice)."""

    name = "clipper-light"

    def decide(self, observation: Observation) -> dict[str, Any]:
        return self.plan_for(self.ladder[0], observation, "the lightest model")


class ClipperHeavyPolicy(SingleModelPolicy):
    """Clipper with the best model on every GPU."""

    name = "clipper-heavy"

    def decide(self, observation: Observation) -> dict[str, Any]:
        return self.plan_for(self.ladder[-1], observation, "the best model")


class InfaasAccuracyPolicy(SingleModelPolicy):
    """INFaaS in its accuracy mode: one model variant serves everything; when the expected latency
    (queue wait + batch) exceeds the SLO it steps down to the next cheaper variant, and when it
    is below 0.89 x SLO it steps up to the next better one. It looks at the model it serves,
    not at the one it steps to, so under a load that only a cheaper model can carry it
    oscillates, as the published policy does."""

    name = "infaas-acc"
    STEP_UP_BELOW = 0.89

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.level = len(self.ladder) - 1

    def expected_latency_s(self, level: int, observation: Observation) -> float:
        """Queue wait + batch time, stretched by 1 / (1 - utilisation): a model that cannot keep
        up with the demand on all the GPUs has no finite expected latency."""
        name = self.ladder[level]
        model = self.profile.model(name)
        demand = observation.demand_qps * (1.0 + self.settings.demand_margin)
        gpus = max(observation.gpus, 1)
        batch = single_model_batch(self.profile, name, demand, gpus, self.settings.slo_s)
        utilisation = demand * model.batch_latency_s(batch) / (gpus * batch)
        if utilisation >= 1.0:
            return math.inf
        return observation.queueing_s + model.batch_latency_s(batch) / (1.0 - utilisation)

    def decide(self, observation: Observation) -> dict[str, Any]:
        slo = self.settings.slo_s
        latency = self.expected_latency_s(self.level, observation)
        if latency > slo and self.level > 0:
            self.level, why = self.level - 1, f"expected {latency:.2f} s > SLO: step down"
        elif latency < self.STEP_UP_BELOW * slo and self.level < len(self.ladder) - 1:
            self.level, why = self.level + 1, f"expected {latency:.2f} s < {self.STEP_UP_BELOW} x SLO: step up"
        else:
            why = f"expected {latency:.2f} s: hold"
        return self.plan_for(self.ladder[self.level], observation, why)
