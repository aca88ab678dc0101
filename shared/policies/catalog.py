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
}
COMPARED = [name for name in POLICIES if name != "static"]


def make_policy(settings: Settings) -> ControlPolicy:
    return POLICIES[settings.controller_policy](settings)

