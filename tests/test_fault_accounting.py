"""The accounting of a fault run (tests/faults/processes.py): the double-generation detector over synthetic
event streams, and Outcome's counts. No broker, no store."""

from __future__ import annotations

import time

from shared.schemas import JobRecord, JobState, Transition
from tests.faults.processes import DoubleWork, Outcome, compose_redis_args, double_work, owner_pid


def event(job_id: str, state: str, tier: str = "", owner: str = "", image: str = "") -> tuple[str, dict[str, str]]:
    fields = {"job_id": job_id, "state": state, "transition": "{}", "tier": tier}
    if owner:
        fields["owner"] = owner
    if image:
        fields["image"] = image
    return f"{time.monotonic_ns()}-0", fields


def light_flow(job_id: str, owner: str) -> list:
    return [event(job_id, "queued"), event(job_id, "routed", "light"),
            event(job_id, "generating", "light", owner), event(job_id, "judging", "light", image="light"),
            event(job_id, "done", "light", image="promote")]


def test_a_clean_run_has_no_finding():
    events = light_flow("a", "emu0/100") + [
        event("b", "queued"), event("b", "routed", "light"), event("b", "generating", "light", "emu0/100"),
        event("b", "judging", "light", image="light"), event("b", "escalated", "heavy"),
        event("b", "generating", "heavy", "emu1/200"), event("b", "done", "heavy", image="final"),
        event("c", "queued"), event("c", "routed", "heavy"), event("c", "generating", "heavy", "emu1/200"),
        event("c", "done", "heavy", image="final"),
    ]
    assert double_work(events) == []


def test_a_second_claim_while_the_first_owner_lives_is_flagged():
    events = [event("a", "queued"), event("a", "routed", "light"),
              event("a", "generating", "light", "emu0/100"),
              event("a", "generating", "light", "emu1/200"),  # 100 never died
              event("a", "judging", "light", image="light"), event("a", "done", "light", image="promote")]
    assert double_work(events, died_pids={999}) == ["a"]


def test_a_claim_passed_on_from_a_killed_owner_is_not_flagged():
    events = [event("a", "queued"), event("a", "routed", "light"),
              event("a", "generating", "light", "emu0/100"),  # 100 is SIGKILLed before it stores
              event("a", "generating", "light", "emu0/101"),
              event("a", "judging", "light", image="light"), event("a", "done", "light", image="promote")]
    assert double_work(events, died_pids={100}) == []
    # The same stream with nobody known dead: generated twice.
    assert double_work(events) == ["a"]


def test_the_same_owner_claiming_twice_is_flagged():
    events = [event("a", "routed", "heavy"), event("a", "generating", "heavy", "emu1/200"),
              event("a", "generating", "heavy", "emu1/200"), event("a", "done", "heavy", image="final")]
    assert double_work(events, died_pids={200}) == ["a"]


def test_claims_of_different_tiers_are_one_each():
    events = light_flow("a", "emu0/100")[:-1] + [
        event("a", "escalated", "heavy"), event("a", "generating", "heavy", "emu0/100"),
        event("a", "done", "heavy", image="final")]
    assert double_work(events) == []


def test_a_chain_is_judged_by_the_claim_just_before():
    # 100 died, 101 took over and lives: a third claim by 102 is work done twice.
    events = [event("a", "generating", "light", f"emu0/{pid}") for pid in (100, 101, 102)]
    assert double_work(events, died_pids={100}) == ["a"]
    assert double_work(events, died_pids={100, 101}) == []


def test_a_claim_handed_back_by_its_owner_is_no_claim():
    # emu1/200 stopped (it lives on) and handed back; its redelivery went to the light tier.
    events = [event("a", "routed", "heavy"), event("a", "generating", "heavy", "emu1/200"),
              event("a", "routed", "heavy", "emu1/200"), event("a", "routed", "light"),
              event("a", "generating", "light", "emu0/100"), event("a", "judging", "light", image="light"),
              event("a", "done", "light", image="promote")]
    assert double_work(events) == []
    # An escalated job's heavy claim goes back to `escalated`: not a second verdict.
    escalated = light_flow("b", "emu0/100")[:-1] + [
        event("b", "escalated", "heavy"), event("b", "generating", "heavy", "emu1/200"),
        event("b", "escalated", "heavy", "emu1/200"), event("b", "generating", "heavy", "emu1/201"),
        event("b", "done", "heavy", image="final")]
    assert double_work(escalated) == []


def test_a_hand_back_by_who_does_not_hold_the_claim_is_flagged():
    events = [event("a", "generating", "heavy", "emu1/200"), event("a", "routed", "heavy", "emu1/201"),
              event("a", "generating", "heavy", "emu1/202"), event("a", "done", "heavy", image="final")]
    found = DoubleWork().feed(events)
    assert found.jobs == ["a"]
    assert any("did not hold it" in reason for reason in found.findings["a"])


def test_two_images_of_a_kind_are_flagged():
    two_light = light_flow("a", "emu0/100")
    two_light.insert(4, event("a", "judging", "light", image="light"))
    assert double_work(two_light) == ["a"]

    final_then_promote = [event("b", "generating", "heavy", "emu1/200"), event("b", "done", "heavy", image="final"),
                          event("b", "done", "light", image="promote")]
    found = DoubleWork().feed(final_then_promote)
    assert found.jobs == ["b"]
    assert any("final image stored 2 times" in reason for reason in found.findings["b"])

    # One light image and one final one are the escalated flow, not a duplicate.
    assert double_work([event("c", "judging", "light", image="light"),
                        event("c", "done", "heavy", image="final")]) == []


def test_two_terminal_transitions_are_flagged():
    assert double_work([event("a", "done", "heavy", image="final"), event("a", "failed", "heavy")]) == ["a"]


def test_events_as_plain_dicts_and_owner_pids():
    assert double_work([fields for _, fields in light_flow("a", "x/1")]) == []
    assert owner_pid("host-emu0/4242") == 4242
    assert owner_pid("host-emu0/11.9f3a01bc") == 11  # with the instance token a worker adds
    assert owner_pid("") is None and owner_pid("gpu/") is None


def record(job_id: str, *states: JobState) -> JobRecord:
    return JobRecord(job_id=job_id, state=states[-1], submitted_at=0.0, deadline=60.0,
                     history=[Transition(state=s, at=float(i)) for i, s in enumerate(states)])


def test_outcome_counts_event_findings_of_its_jobs():
    records = [record("a", JobState.queued, JobState.done), record("b", JobState.queued, JobState.done),
               record("c", JobState.queued, JobState.routed), None]
    outcome = Outcome(records, doubled={"b", "elsewhere"})
    assert outcome.duplicated == 1 and outcome.duplicated_ids == ["b"]
    assert outcome.lost == 2 and outcome.count(JobState.done) == 2
    assert Outcome(records).duplicated == 0
    assert Outcome([record("d", JobState.done, JobState.done)]).duplicated == 1


def test_a_claim_after_the_tier_stored_its_result_is_flagged_even_if_its_owner_died():
    # The light worker stored its image and died before acking; its redelivery must not generate again.
    events = [event("a", "queued"), event("a", "routed", "light"), event("a", "generating", "light", "emu0/100"),
              event("a", "judging", "light", image="light"), event("a", "generating", "light", "emu0/101")]
    assert double_work(events, died_pids={100}) == ["a"]


def test_a_verdict_drawn_twice_is_flagged():
    events = [event("a", "queued"), event("a", "routed", "light"), event("a", "generating", "light", "emu0/100"),
              event("a", "judging", "light", image="light"), event("a", "escalated", "light"),
              event("a", "escalated", "light")]
    assert double_work(events) == ["a"]


def test_fault_runs_persist_redis_as_compose_does():
    # docs/reliability.md promises that a kill -9 of Redis loses nothing: that needs fsync always.
    assert compose_redis_args() == ["--appendonly", "yes", "--appendfsync", "always"]
