"""Where a job is, for its client: its place in its tier's waiting line and its ETA (the pure queue
model of shared/policies/eta.py, with the plan this api applies and the profile's batch times), on
GET /v1/jobs/{id} and in its SSE stream. One Redis command (ZRANK) for a job that waits in a
line; none for one that runs (its step is in its record, or in the progress event)."""

from __future__ import annotations

from typing import Any

from shared.policies.engine import BatchTimes
from shared.policies.eta import TierModel, eta_s
from shared.profiles import load_profile
from shared.schemas import JobRecord, JobState, Tier
from shared.service import Service


class Whereabouts:
    def __init__(self, service: Service) -> None:
        self.service = service
        self.times = BatchTimes(load_profile(service.settings.profile), service.settings.latency_scale)

    def tier_model(self, tier: Tier, model: str | None = None) -> TierModel:
        """The plan's queue model of a tier (its model's batch time, or `model`'s: a batch runs
        with the model it was admitted for)."""
        plan = self.service.plans.current
        batch = plan.batch_for(tier)
        gpus = plan.light_gpus if tier is Tier.light else plan.heavy_gpus
        try:
            batch_s = self.times.seconds(model or plan.model_for(tier), batch)
        except KeyError:  # a model this api's profile does not know: no estimate
            batch_s = 0.0
        return TierModel(batch, gpus, batch_s)

    async def of(self, record: JobRecord) -> dict[str, Any]:
        """`queue` (the tier, and the jobs ahead in its line: a batch job's is its tier's batch line)
        and `eta_s` of a job not ended; {} for one that has."""
        if record.state.terminal:
            return {}
        tier = Tier.heavy if record.state is JobState.escalated else record.tier
        if tier is None:  # queued: the router has not chosen a tier yet
            return {"queue": None, "eta_s": None}
        position = None
        if record.state in (JobState.routed, JobState.escalated):
            position = await self.service.store.queue_position(record.job_id, tier.value, record.priority)
        model = record.model if record.state is JobState.generating else None
        eta = eta_s(record.state, self.tier_model(tier, model), position, record.step, record.steps)
        return {"queue": {"tier": tier.value, "position": position} if position is not None else None,
                "eta_s": round(eta, 3) if eta is not None else None}

    def running_eta(self, tier: Tier | None, model: str, step: int, steps: int) -> float | None:
        """The ETA a progress event carries: the rest of its batch."""
        if tier is None:
            return None
        eta = eta_s(JobState.generating, self.tier_model(tier, model or None), step=step, steps=steps)
        return round(eta, 3) if eta is not None else None
