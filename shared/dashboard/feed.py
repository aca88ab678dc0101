"""The store's event stream folded into the window, and the jobs that ended, as the dashboard reads them.

Each event (one state change of one job: `job_id`, `state`, `tier`, and the transition's time) moves
a counter: `queued` is an arrival, `routed` an arrival at its tier's queue, `escalated` one at the
heavy tier's and the judge's verdict to escalate; a `done` after `judging` is its verdict to keep
the light image. A terminal event names a job whose record the caller reads once (its tenant,
objective and plan: `RECORD_FIELDS`, in one round trip for all of a tick's) to count it
(`finished`); every RECENT_EVERY_S, the newest `RECENT` of them are listed with their history (a
sample a human can read, and a bound on the thumbnails the page fetches: a real image's costs the api
tens of milliseconds to shrink).

Bounds: the jobs waiting for a verdict are at most JUDGING_BOUND (the oldest are forgotten: a job
stuck in judging that long is not the judge's rate), the recent jobs RECENT."""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from shared.dashboard.window import Finished, Window

TERMINAL = frozenset({"done", "failed", "expired"})
RECORD_FIELDS = ("tenant", "submitted_at", "deadline", "plan_version", "escalated", "tier", "model", "error")
JUDGING_BOUND = 50_000
RECENT = 8
RECENT_EVERY_S = 5.0


@dataclass(frozen=True)
class Ended:
    """A terminal event: the job whose record is to be read."""

    job_id: str
    state: str
    at: float
    tier: str


def event_time(fields: Mapping[str, str]) -> float:
    """The transition's time, from the event's `transition` JSON (0 when unreadable)."""
    try:
        return float(orjson.loads(fields.get("transition", "{}")).get("at", 0.0))
    except (orjson.JSONDecodeError, TypeError, ValueError, AttributeError):
        return 0.0


class Fold:
    """Events in, counters of the window out; the terminal ones handed back to be read."""

    def __init__(self, window: Window) -> None:
        self.window = window
        self.judging: OrderedDict[str, None] = OrderedDict()  # jobs awaiting the judge's verdict

    def events(self, events: list[tuple[str, Mapping[str, str]]]) -> list[Ended]:
        """Fold a batch of (event id, fields); the terminal events among them, in order."""
        ended = []
        for _, fields in events:
            job_id, state = fields.get("job_id", ""), fields.get("state", "")
            at, tier = event_time(fields), fields.get("tier", "")
            if not job_id or not at:
                continue
            if state in TERMINAL:
                self._verdict(job_id, at, escalated=False, given=state == "done")
                ended.append(Ended(job_id, state, at, tier))
            else:
                self._step(job_id, state, at, tier)
        return ended

    def _step(self, job_id: str, state: str, at: float, tier: str) -> None:
        if state == "queued":
            self.window.arrived(at)
        elif state == "routed" and tier in ("light", "heavy"):
            self.window.arrived(at, tier)
        elif state == "judging":
            self.judging[job_id] = None
            if len(self.judging) > JUDGING_BOUND:
                self.judging.popitem(last=False)
        elif state == "escalated":
            self.window.arrived(at, "heavy")
            self._verdict(job_id, at, escalated=True, given=True)

    def _verdict(self, job_id: str, at: float, *, escalated: bool, given: bool) -> None:
        """The judge's verdict on a job it was judging (given=False: the job ended another way)."""
        if self.judging.pop(job_id, False) is None and given:
            self.window.judged(at, escalated)


def finished(ended: Ended, fields: Mapping[str, str], pairs: Mapping[int, tuple[str, str]]) -> Finished:
    """The ended job as the window counts it, from its record's RECORD_FIELDS (`pairs`: plan version ->
    its models; a record that is gone is counted without tenant, objective or pair)."""
    submitted, deadline = _number(fields.get("submitted_at")), _number(fields.get("deadline"))
    version = _number(fields.get("plan_version"))
    return Finished(
        at=ended.at, state=ended.state, tenant=fields.get("tenant", ""),
        slo_s=deadline - submitted if deadline is not None and submitted is not None else None,
        latency_s=ended.at - submitted if submitted is not None else None,
        tier=fields.get("tier") or ended.tier or None, escalated=fields.get("escalated") == "1",
        pair=pairs.get(int(version)) if version is not None else None)


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None


class Recent:
    """The newest RECENT ended jobs, as the page lists them: who, what, how long each step took."""

    def __init__(self, bound: int = RECENT, every_s: float = RECENT_EVERY_S) -> None:
        self.jobs: deque[dict[str, Any]] = deque(maxlen=bound)
        self.every_s = every_s
        self.listed_at: float | None = None

    def newest(self, ended: list[Ended], now: float) -> list[Ended]:
        """Which of a tick's ended jobs will be listed (their histories are read with their records):
        the newest, at most every `every_s` (`now` on a monotonic clock); none in between."""
        if not ended or (self.listed_at is not None and now - self.listed_at < self.every_s):
            return []
        self.listed_at = now
        return ended[-(self.jobs.maxlen or 0):]

    def add(self, ended: Ended, fields: Mapping[str, str], history: list[dict[str, Any]]) -> None:
        submitted, deadline = _number(fields.get("submitted_at")), _number(fields.get("deadline"))
        start = submitted if submitted is not None else float(history[0].get("at", ended.at)) if history else ended.at
        self.jobs.appendleft({
            "job_id": ended.job_id, "state": ended.state, "tenant": fields.get("tenant", ""),
            "tier": fields.get("tier") or ended.tier or None, "model": fields.get("model"),
            "escalated": fields.get("escalated") == "1", "error": fields.get("error"), "at": ended.at,
            "latency_s": ended.at - start,
            "slo_s": deadline - start if deadline is not None else None,
            "steps": [{"state": step.get("state"), "t_s": round(float(step.get("at", start)) - start, 3)}
                      for step in history]})

    def view(self) -> list[dict[str, Any]]:
        return list(self.jobs)
