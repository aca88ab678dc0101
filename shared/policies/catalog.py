"""Every controller policy by name: what HADIS_CONTROLLER_POLICY, `hadis experiment` and
`hadis simulate` choose from."""

from __future__ import annotations

from shared.policies.baselines import (
    ClipperHeavyPolicy,
    ClipperLightPolicy,
    DiffServePolicy,
    DiscOnlyPolicy,
    HadisPaperPolicy,
    InfaasAccuracyPolicy,
    PlannedStaticPolicy,
    ProteusPolicy,
    RouterOnlyPolicy,
)
from shared.policies.control import ControlPolicy, StaticPolicy
from shared.policies.hadis import HadisPolicy
from shared.settings import Settings

POLICIES: dict[str, type] = {
    "static": StaticPolicy,
    "hadis": HadisPolicy,
    "hadis-paper": HadisPaperPolicy,
    "router-only": RouterOnlyPolicy,
    "disc-only": DiscOnlyPolicy,
    "diffserve": DiffServePolicy,
    "proteus": ProteusPolicy,
    "infaas-acc": InfaasAccuracyPolicy,
    "clipper-light": ClipperLightPolicy,
    "clipper-heavy": ClipperHeavyPolicy,
    "planned-static": PlannedStaticPolicy,
}
# The default set of scripts/compare.py: the fixed plans need a plan (static) or a demand (planned-static).
COMPARED = [name for name in POLICIES if name not in ("static", "planned-static")]


def make_policy(settings: Settings) -> ControlPolicy:
    return POLICIES[settings.controller_policy](settings)

