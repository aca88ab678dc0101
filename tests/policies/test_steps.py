"""The crash-consistency rules (shared/policies/steps.py), without a broker or a store."""

import pytest

from shared.outcome import Applied, Outcome
from shared.policies import steps
from shared.policies.steps import Next
from shared.schemas import JobState, Tier

S = JobState


@pytest.mark.parametrize("tier, result, before, expected", [
    (Tier.light, Applied.applied, S.routed, Next.work),
    (Tier.light, Applied.applied, S.generating, Next.work),  # its owner died before storing
    (Tier.light, Applied.busy, S.generating, Next.wait),  # a live worker is generating it
    (Tier.light, Applied.missing, None, Next.no_record),
    (Tier.light, Applied.stale, S.judging, Next.hand_on),  # stored, the judge task maybe not published
    (Tier.light, Applied.stale, S.escalated, Next.ack),  # the judge has it
    (Tier.light, Applied.stale, S.generating, Next.ack),  # generating on heavy: a later step
    (Tier.light, Applied.refused, S.done, Next.ack),
    (Tier.heavy, Applied.applied, S.escalated, Next.work),
    (Tier.heavy, Applied.busy, S.generating, Next.wait),
    (Tier.heavy, Applied.refused, S.done, Next.ack),
])
def test_after_claim(tier, result, before, expected):
    assert steps.after_claim(tier, Outcome(result, before)) is expected


@pytest.mark.parametrize("tier, result, before, expected", [
    (Tier.light, Applied.applied, S.generating, Next.hand_on),
    (Tier.heavy, Applied.applied, S.generating, Next.ack),
    (Tier.light, Applied.stale, S.judging, Next.hand_on),
    (Tier.light, Applied.stale, S.escalated, Next.ack),
    (Tier.heavy, Applied.refused, S.done, Next.ack),
    (Tier.heavy, Applied.missing, None, Next.no_record),
])
def test_after_store(tier, result, before, expected):
    assert steps.after_store(tier, Outcome(result, before)) is expected


@pytest.mark.parametrize("state, expected", [
    (S.judging, Next.work), (S.escalated, Next.hand_on), (S.generating, Next.ack), (S.done, Next.ack),
    (S.failed, Next.ack), (None, Next.no_record),
])
def test_before_judging_reuses_a_stored_verdict(state, expected):
    assert steps.before_judging(state) is expected


@pytest.mark.parametrize("result, before, escalated, expected", [
    (Applied.applied, S.judging, True, Next.hand_on),
    (Applied.applied, S.judging, False, Next.ack),
    (Applied.stale, S.escalated, False, Next.hand_on),  # another delivery escalated it first: follow that
    (Applied.refused, S.done, True, Next.ack),
    (Applied.missing, None, True, Next.no_record),
])
def test_after_verdict_follows_the_stored_verdict(result, before, escalated, expected):
    assert steps.after_verdict(Outcome(result, before), escalated) is expected


def test_rerouting_only_what_an_earlier_router_left_half_done():
    assert steps.rerouting(S.queued, redelivered=False)
    assert steps.rerouting(S.routed, redelivered=True)
    assert not steps.rerouting(S.routed, redelivered=False)  # the same id submitted twice
    assert not steps.rerouting(S.generating, redelivered=True)
    assert not steps.rerouting(None, redelivered=True)


def test_same_job_needs_the_same_prompt_and_submission_time():
    assert steps.same_job("a cat", 1000.0, "a cat", 1000.0)
    assert not steps.same_job("a cat", 1000.0, "a dog", 1000.0)
    assert not steps.same_job("a cat", 1000.0, "a cat", 1001.0)
    assert not steps.same_job("a cat", None, "a cat", 1000.0)
