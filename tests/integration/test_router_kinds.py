"""Both routers and the CLIPScore judge in the running services (after the settings wiring)."""

from __future__ import annotations

import numpy as np
import pytest

from shared import reference
from shared.backends.text_embedding import embed_prompts
from shared.policies.learned_router import LearnedRouter
from shared.profiles import load_profile
from shared.schemas import Job, JobState
from tests.helpers import make_settings
from tests.stack import running_stack

pytestmark = [pytest.mark.integration]

PROMPTS = [reference.prompts()[i] for i in range(0, 5000, 125)]  # 40, spread over the file


@pytest.mark.parametrize("kind", ["rule", "learned"])
async def test_router_kind_routes_about_r_heavy(kind: str) -> None:
    settings = make_settings(backend="emulated", judge_backend="emulated", profile="paper-l40s-x10",
                             time_scale=0.0, router=kind)
    async with running_stack(settings) as stack:
        plan = await stack.set_plan(r=0.3, d=0.0)
        jobs = [Job(prompt=prompt, seed=i) for i, prompt in enumerate(PROMPTS)]
        await stack.submit_many(jobs)
        records = await stack.wait_all([job.job_id for job in jobs])
    assert all(record.state is JobState.done for record in records)
    heavy = np.mean([record.tier.value == "heavy" for record in records])
    assert abs(heavy - 0.3) < 0.2  # 40 prompts: a binomial spread of 0.07
    if kind == "learned":
        router = LearnedRouter.for_model(load_profile("paper-l40s-x10").model(plan.light_model), embed_prompts)
        expected = router.score_many([record.prompt for record in records])
        assert np.allclose([record.router_score for record in records], expected, atol=1e-4)


async def test_clipscore_judge_kind() -> None:
    settings = make_settings(backend="tiny", judge_backend="clipscore", profile="tiny-cpu")
    async with running_stack(settings) as stack:
        await stack.set_plan(r=0.0, d=0.5)
        jobs = [Job(prompt=prompt, seed=i) for i, prompt in enumerate(PROMPTS[:8])]
        await stack.submit_many(jobs)
        records = await stack.wait_all([job.job_id for job in jobs])
    assert all(record.state is JobState.done for record in records)
    assert all(record.judge_score is not None and 0.0 <= record.judge_score <= 1.0 for record in records)


async def test_a_burst_beyond_the_heavy_tiers_share_takes_the_light_path() -> None:
    """r = 0.9 on one sd35-medium GPU (1.3 s a job at batch 1, 0.77 jobs/s) and a 6 s deadline: of
    a burst of 40 jobs submitted at once, the router sends to heavy only the few that GPU can clear
    in time (shared/policies/admission.py: HeavyRoom), and the rest, which the score sends to heavy,
    down the light path at once. Before, about 36 waited in the heavy queue until the heavy worker
    found them late and handed them to light (the same end, seconds later, or shed)."""
    from shared import metrics

    diverted = metrics.HEAVY_FULL._value.get()
    settings = make_settings(backend="emulated", judge_backend="emulated", profile="paper-l40s-x10", slo_s=6.0,
                             router="rule")
    async with running_stack(settings) as stack:
        await stack.set_plan(light_model="sd35-large-turbo", heavy_model="sd35-medium", r=0.9, d=0.0,
                             light_batch=4, heavy_batch=1)
        jobs = [Job(prompt=prompt, seed=i) for i, prompt in enumerate(PROMPTS)]
        await stack.submit_many(jobs)
        records = await stack.wait_all([job.job_id for job in jobs])
    heavy = [record for record in records if record.tier is not None and record.tier.value == "heavy"]
    light_done = [record for record in records if record.state is JobState.done and record.tier.value == "light"]
    assert 1 <= len(heavy) <= 6, len(heavy)
    assert len(light_done) >= 30, len(light_done)
    assert metrics.HEAVY_FULL._value.get() - diverted >= 25  # by the router, not by the heavy worker


@pytest.mark.parametrize("guarded", [True, False])
async def test_a_burst_the_guard_sent_light_is_escalated_onto_the_heavy_places_it_left(guarded: bool) -> None:
    """A plan made in a silence (r 0.8, d 0: the judge escalates nothing of its own) with a burst
    guard of 2 jobs/s, and 40 jobs at once: the router holds the burst light from the 7th job on
    (engine.route) and tells the judge the point it held against (Task.held_for, through the broker);
    the judge escalates the worst of those images, up to the plan's heavy share, onto the places
    the heavy GPU would leave idle (engine.guarded_escalation). Without the guard the router routes
    by score and the judge escalates none: d is 0."""
    settings = make_settings(backend="emulated", judge_backend="emulated", profile="paper-l40s-x10", slo_s=6.0,
                             router="rule")
    async with running_stack(settings) as stack:
        await stack.set_plan(light_model="sdxl-lightning", heavy_model="sd35-large-turbo", r=0.8, d=0.0,
                             light_batch=4, heavy_batch=2, burst_qps=2.0 if guarded else None)
        jobs = [Job(prompt=prompt, seed=i) for i, prompt in enumerate(PROMPTS)]
        await stack.submit_many(jobs)
        records = await stack.wait_all([job.job_id for job in jobs])
    assert all(record.state is JobState.done for record in records)
    escalated = [record for record in records if record.escalated]
    if guarded:
        assert len(escalated) >= 2, [(record.tier, record.judge_score) for record in records]
        assert all(record.judge_score is not None for record in escalated)
    else:
        assert not escalated
