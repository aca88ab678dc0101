"""The mixed scenario's summary (loadtest/mixed.py): per feature its counts and Locust's latency
percentiles, the cancels' answers and times, the streams' events, the webhook deliveries (verified
once, duplicates, bad signatures, missing, refused by the stack, late) and their delay from the
job's end; and the violations, what makes the run's exit code 1."""

from __future__ import annotations

import logging
import math
from dataclasses import asdict
from typing import Any

from loadtest import mixed

log = logging.getLogger("hadis.loadtest")


# ---- the summary ---------------------------------------------------------------------------

def percentiles(values: list[float]) -> dict[str, float | None]:
    """p50, p95, p99 and max of values (seconds, nearest rank), None without any."""
    ordered = sorted(values)
    if not ordered:
        return {"p50": None, "p95": None, "p99": None, "max": None}
    def rank(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))], 3)
    return {"p50": rank(0.50), "p95": rank(0.95), "p99": rank(0.99), "max": round(ordered[-1], 3)}


def settle_cut_short() -> None:
    """Jobs still open when the run ended (--run-time, Ctrl-C): lost, whatever their state later."""
    mix = mixed.MIX
    for kind in mix.in_flight.values():
        mix.tallies[kind].lost += 1
    mix.in_flight.clear()


def webhook_figures() -> dict[str, Any]:
    """Per webhook job that ended: exactly one verified delivery (ok), more (duplicate: the extra
    ones counted), none (missing, or refused_address when the stack gave it up), late (the first
    after the bound), and deliveries whose signature failed; the delay from the job's end."""
    mix = mixed.MIX
    figures = {"jobs": len(mix.webhook_jobs), "ok": 0, "duplicate": 0, "bad_signature": 0, "missing": 0,
               "refused_address": 0, "late": 0, "unexpected": 0}
    by_job = mix.receiver.by_job if mix.receiver else {}
    delays: list[float] = []
    for job_id in mix.webhook_jobs:
        verified = [d for d in by_job.get(job_id, []) if d.verified]
        figures["bad_signature"] += sum(1 for d in by_job.get(job_id, []) if not d.verified)
        if not verified:
            figures["refused_address" if job_id in mix.webhook_refused else "missing"] += 1
            continue
        figures["ok"] += 1
        figures["duplicate"] += len(verified) - 1
        first = verified[0]
        if first.ended_at is not None:
            delays.append(first.received_at - first.ended_at)
            figures["late"] += delays[-1] > mix.options.webhook_timeout
    # Deliveries for webhook jobs the client gave up on (lost: they ended after the job timeout),
    # and for jobs this run did not send (another run's, on the same receiver port).
    figures["after_lost"] = sum(len(ds) for job_id, ds in by_job.items()
                                if job_id in mix.webhook_sent and job_id not in mix.webhook_jobs)
    figures["unexpected"] = sum(len(ds) for job_id, ds in by_job.items() if job_id not in mix.webhook_sent)
    figures["delay_s"] = percentiles(delays)
    if mix.webhook_refused:
        figures["refused_errors"] = sorted(set(mix.webhook_refused.values()))[:3]
    return figures


def summary(environment) -> dict[str, Any]:
    """The summary's `mixed` part, at the end of the run (jobs still open are lost by then); the
    latency percentiles are Locust's own, of the `feature` rows, so the CSV and the summary agree."""
    mix = mixed.MIX
    settle_cut_short()
    features = {}
    for kind in mix.shares:
        entry = environment.stats.get(kind, "feature")
        latency = {f"p{int(q * 100)}_s": round(entry.get_response_time_percentile(q) / 1000.0, 3)
                   if entry.num_requests else None for q in (0.5, 0.95, 0.99)}
        features[kind] = {**asdict(mix.tallies[kind]), **latency}
    result = {"mix": {kind: round(share, 4) for kind, share in mix.shares.items()}, "mix_seed": mix.options.mix_seed,
              "features": features,
              "resubmitted": mix.resubmitted,
              "cancel": {"answers": mix.cancel_answers, "mismatch": mix.cancel_mismatch,
                         "answer_s": percentiles(mix.cancel_answer_s)},
              "stream": {"partial_events": mix.partial_events, "completed_events": mix.completed_events,
                         "short_streams": mix.short_streams, "first_partial_s": percentiles(mix.first_partial_s)}}
    if mix.receiver is not None:
        result["webhooks"] = webhook_figures()
        mix.receiver.stop()
    result["violations"] = violations(result)
    result["lost"] = sum(t.lost for t in mix.tallies.values())
    return result


def violations(result: dict[str, Any]) -> dict[str, int]:
    """What fails the run (loadtest/mixed.py's docstring), by what; empty when nothing did."""
    mix = mixed.MIX
    tallies = mix.tallies.values()
    found = {"lost": sum(t.lost for t in tallies), "failed": sum(t.failed for t in tallies),
             "expired": sum(t.expired for t in tallies), "not_accepted": sum(t.not_accepted for t in tallies),
             "bad": sum(t.bad for t in tallies),
             "cancel_other_answers": sum(n for status, n in mix.cancel_answers.items() if status not in ("200", "409"))}
    webhooks = result.get("webhooks", {})
    for name in ("missing", "bad_signature", "late", "refused_address"):
        found[f"webhook_{name}"] = webhooks.get(name, 0)
    if webhooks.get("refused_address"):
        log.warning("%d webhook deliveries were refused by the stack (%s): start it with "
                    "HADIS_WEBHOOK_ALLOW_NETWORKS=127.0.0.1/32 to check them", webhooks["refused_address"],
                    webhooks.get("refused_errors"))
    return {name: count for name, count in found.items() if count}
