"""The store's state machine against the real Redis: states only move forward, a result is stored
once, a `generating` claim passes on only when its owner is gone, images are stored once and the
light one does not outlive the job."""

import pytest

from shared.errors import StoreRejected
from shared.outcome import Applied
from shared.schemas import JobState
from shared.store import Change, hand_back, owner_id, serve_light
from tests.helpers import make_settings, namespace

pytestmark = pytest.mark.integration

LIGHT, HEAVY = {"tier": "light"}, {"tier": "heavy"}


async def routed(store, job_id: str, tier: str = "light") -> None:
    assert (await store.apply(Change(job_id, JobState.routed, {"tier": tier, "prompt": "p"}, create=True,
                                     passing=(JobState.queued,)))).applied


async def test_a_stale_redelivery_cannot_move_a_record_backwards():
    async with namespace(make_settings()) as (_, store):
        await routed(store, "j")
        assert (await store.apply(Change("j", JobState.generating, LIGHT, owner="w/1"))).applied
        assert (await store.apply(Change("j", JobState.judging, LIGHT, image=b"L", image_variant="light"))).applied
        assert (await store.apply(Change("j", JobState.escalated, {"judge_score": 0.1}))).applied
        # The light worker's delivery comes back (it was killed between publishing and acking).
        late = await store.apply(Change("j", JobState.generating, LIGHT, owner="w/2"))
        assert late.result is Applied.stale and late.before is JobState.escalated
        again = await store.apply(Change("j", JobState.judging, LIGHT, image=b"L2", image_variant="light"))
        assert again.result is Applied.stale
        assert (await store.get("j")).state is JobState.escalated
        assert await store.get_image("j", "light") == b"L"
        # The heavy claim is a later step.
        assert (await store.apply(Change("j", JobState.generating, HEAVY, owner="h/1"))).applied


async def test_a_verdict_is_stored_once():
    async with namespace(make_settings()) as (_, store):
        await routed(store, "j")
        await store.apply(Change("j", JobState.generating, LIGHT, owner="w/1"))
        await store.apply(Change("j", JobState.judging, LIGHT, image=b"L", image_variant="light"))
        assert (await store.apply(Change("j", JobState.escalated, {"judge_score": 0.1}))).applied
        second = await store.apply(Change("j", JobState.escalated, {"judge_score": 0.9}))
        assert second.result is Applied.stale and second.before is JobState.escalated
        assert (await store.get("j")).judge_score == 0.1


async def test_a_claim_passes_on_only_when_its_owner_is_gone():
    async with namespace(make_settings()) as (_, store):
        await routed(store, "j")
        alive, other = owner_id("gpu0", 11), owner_id("gpu1", 22)
        await store.heartbeat_worker("gpu0", {}, ttl_s=30, owner=alive)
        assert (await store.apply(Change("j", JobState.generating, LIGHT, owner=alive))).applied
        busy = await store.apply(Change("j", JobState.generating, LIGHT, owner=other))
        assert busy.result is Applied.busy and busy.before is JobState.generating
        # The same owner may claim again (its own redelivery); the record does not move.
        assert (await store.apply(Change("j", JobState.generating, LIGHT, owner=alive))).applied
        await store.forget_owner(alive)  # its agent saw it die
        assert (await store.apply(Change("j", JobState.generating, LIGHT, owner=other))).applied
        events = [event for _, event in await store.read_events() if event["state"] == "generating"]
        assert [event["owner"] for event in events] == [alive, alive, other]
        assert {event["tier"] for event in events} == {"light"}


async def test_only_a_claims_owner_hands_it_back_and_the_job_moves_on_from_there():
    """A worker that stops gives back what it claimed and did not start: the record goes back to
    the step before (routed; escalated on heavy), so the redelivery may still go to the light tier.
    Nobody else can move a claim back: that would let a late redelivery reset a job."""
    async with namespace(make_settings()) as (_, store):
        await routed(store, "j", tier="heavy")
        holder, other = owner_id("gpu0", 11), owner_id("gpu1", 22)
        await store.heartbeat_worker("gpu0", {}, ttl_s=30, owner=holder)
        assert (await store.apply(Change("j", JobState.generating, HEAVY, owner=holder))).applied
        refused = await store.apply(hand_back("j", other, escalated=False, reason="not mine"))
        assert refused.result is Applied.stale and refused.before is JobState.generating
        assert (await store.apply(Change("j", JobState.routed, {"tier": "heavy"}))).result is Applied.stale
        assert (await store.apply(hand_back("j", holder, escalated=False, reason="stopping"))).applied
        record = await store.get("j")
        assert record.state is JobState.routed and record.tier.value == "heavy"
        assert record.history[-1].detail == "stopping"
        # Its owner is still alive, yet the job is free: the re-route to light and a claim there.
        assert (await store.apply(Change("j", JobState.routed, LIGHT))).applied
        assert (await store.apply(Change("j", JobState.generating, LIGHT, owner=other))).applied
        # A second hand-back by the first owner is stale: it holds nothing now.
        again = await store.apply(hand_back("j", holder, escalated=False, reason="stopping"))
        assert again.result is Applied.stale
        events = [event for _, event in await store.read_events() if event["state"] == "routed"]
        assert [event.get("owner") for event in events] == [None, holder, None]


async def test_an_escalated_jobs_heavy_claim_is_handed_back_to_escalated():
    async with namespace(make_settings()) as (_, store):
        await routed(store, "j")
        await store.apply(Change("j", JobState.generating, LIGHT, owner="w/1"))
        await store.apply(Change("j", JobState.judging, LIGHT, image=b"L", image_variant="light"))
        await store.apply(Change("j", JobState.escalated, {"judge_score": 0.1, "tier": "heavy"}))
        assert (await store.apply(Change("j", JobState.generating, HEAVY, owner="h/1"))).applied
        assert (await store.apply(hand_back("j", "h/1", escalated=True, reason="stopping"))).applied
        assert (await store.get("j")).state is JobState.escalated
        # The light image is still there for the heavy tier's too-late fallback.
        assert (await store.apply(serve_light("j", "too late"))).applied
        assert await store.get_image("j") == b"L"


async def test_the_light_image_becomes_the_final_one_and_is_stored_once():
    async with namespace(make_settings()) as (_, store):
        await routed(store, "j")
        await store.apply(Change("j", JobState.judging, LIGHT, image=b"L", image_variant="light"))
        outcome = await store.apply(Change("j", JobState.done, {"judge_score": 0.8}, promote_light=True))
        assert outcome.applied
        assert await store.get_image("j") == b"L" and await store.get_image("j", "light") is None
        record = await store.get("j")
        assert record.state is JobState.done and record.image_key == store.image_key("j")
        image_events = [event for _, event in await store.read_events() if "image" in event]
        assert [event["image"] for event in image_events] == ["light", "promote"]


async def test_a_heavy_result_deletes_the_light_image():
    async with namespace(make_settings()) as (_, store):
        await routed(store, "j")
        await store.apply(Change("j", JobState.judging, LIGHT, image=b"L", image_variant="light"))
        await store.apply(Change("j", JobState.escalated, {}))
        assert (await store.apply(Change("j", JobState.done, HEAVY, image=b"H"))).applied
        assert await store.get_image("j") == b"H" and await store.get_image("j", "light") is None


async def test_serving_the_light_image_needs_one():
    async with namespace(make_settings()) as (_, store):
        await routed(store, "j", tier="heavy")
        outcome = await store.apply(serve_light("j", "too late"))
        assert outcome.result is Applied.no_image
        assert (await store.get("j")).state is JobState.routed


async def test_images_expire_with_their_own_ttl():
    async with namespace(make_settings(job_ttl_s=600, image_ttl_s=120)) as (_, store):
        await routed(store, "j")
        await store.apply(Change("j", JobState.done, LIGHT, image=b"F"))
        assert 0 < await store._redis.ttl(store.image_key("j")) <= 120
        assert 120 < await store._redis.ttl(store.job_key("j")) <= 600


async def test_a_key_of_the_wrong_type_is_refused_not_retried():
    async with namespace(make_settings(store_retry_s=30)) as (_, store):
        await store._redis.set(store.job_key("odd"), b"a string, not a hash")
        with pytest.raises(StoreRejected):
            await store.apply(Change("odd", JobState.failed, {}))


async def test_a_message_cannot_fail_a_job_it_does_not_own():
    async with namespace(make_settings()) as (_, store):
        await routed(store, "j")
        assert not await store.fail("j", JobState.failed, "422 InvalidJob: someone else's id", create_only=True)
        assert (await store.get("j")).state is JobState.routed
        assert await store.fail("fresh", JobState.failed, "422 InvalidJob: bad", create_only=True)
        assert (await store.get("fresh")).state is JobState.failed


async def test_a_new_worker_with_a_dead_workers_pid_does_not_keep_its_claims():
    """Containers reuse pids: a restarted worker on the same GPU with the same pid has another
    owner id (its instance token), so the dead worker's claim passes on once its key is gone."""
    settings = make_settings()
    async with namespace(settings) as (_, store):
        dead, reborn = owner_id("gpu0", 11, "aaaa0001"), owner_id("gpu0", 11, "bbbb0002")
        assert dead != reborn
        await store.apply(Change("j", JobState.routed, {"tier": "light"}, create=True, passing=(JobState.queued,)))
        await store.heartbeat_worker("gpu0", {"tier": "light"}, ttl_s=30, owner=dead)
        assert (await store.apply(Change("j", JobState.generating, {"tier": "light"}, owner=dead))).applied
        await store.forget_owner(dead)  # the agent saw it die
        await store.heartbeat_worker("gpu0", {"tier": "light"}, ttl_s=30, owner=reborn)
        other = owner_id("gpu1", 22, "cccc0003")
        await store.heartbeat_worker("gpu1", {"tier": "light"}, ttl_s=30, owner=other)
        assert (await store.apply(Change("j", JobState.generating, {"tier": "light"}, owner=other))).applied
