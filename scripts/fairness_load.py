"""The load and the accounting of the fairness run (scripts/fairness.py says what it is): images
requests from this process in an open loop, what each answer says about its jobs, and what became of
every job in the store."""

from __future__ import annotations

import asyncio
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout: tests.faults.processes

from shared.reference import prompts
from shared.schemas import JobRecord, JobState
from shared.store import Store
from tests.faults.processes import read_all_events

DRAIN_S = 90.0
_ID_IN_URL = re.compile(r"/v1/jobs/([A-Za-z0-9_.-]+)/image")
_QUOTED_ID = re.compile(r"'([A-Za-z0-9_.-]{8,128})'")
# Answers of a request whose jobs were accepted (they ended, or were not ready in time).
ACCEPTED_CODES = {"not_ready_in_time", "deadline_exceeded", "job_failed", "invalid_job", "image_missing"}


@dataclass
class Reply:
    """One images request: when it was sent (monotonic), how long its answer took, what it was."""

    tenant: str
    phase: str
    sent_at: float
    n: int
    seconds: float = 0.0
    status: int = 0  # 0: no answer (a transport error or the client's timeout)
    code: str = ""
    ids: list[str] = field(default_factory=list)

    @property
    def accepted(self) -> bool:
        return self.status == 200 or self.code in ACCEPTED_CODES


def read_reply(reply: Reply, response: httpx.Response) -> None:
    """The status, the error code, and the job ids an answer names: those of its image URLs (200), or the
    list a 408 not_ready_in_time gives. Other answers name none (the events stream has their jobs)."""
    reply.status = response.status_code
    try:
        body = response.json()
    except ValueError:
        return
    if response.status_code == 200:
        reply.ids = [m.group(1) for item in body.get("data", []) if (m := _ID_IN_URL.search(item.get("url", "")))]
        return
    error = body.get("error") or {}
    reply.code = str(error.get("code") or "")
    if reply.code == "not_ready_in_time":
        reply.ids = _QUOTED_ID.findall(str(error.get("message", "")))


async def one_request(http: httpx.AsyncClient, reply: Reply, body: dict) -> None:
    started = time.monotonic()
    try:
        read_reply(reply, await http.post("/v1/images/generations", json=body))
    except httpx.HTTPError as error:
        reply.code = type(error).__name__
    reply.seconds = time.monotonic() - started


async def paced(http: httpx.AsyncClient, tenant: str, phase: str, rate: float, seconds: float, n: int,
                size: tuple[int, int], replies: list[Reply]) -> list[asyncio.Task]:
    """An open loop: `rate` images requests/s for `seconds`, each answered whenever it is (the tasks)."""
    texts, started, tasks = prompts(), time.monotonic(), []
    for index in range(int(rate * seconds)):
        delay = started + index / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        body = {"prompt": texts[(index * 7919 + len(tenant)) % len(texts)], "n": n,
                "size": f"{size[0]}x{size[1]}", "response_format": "url"}
        reply = Reply(tenant, phase, time.monotonic(), n)
        replies.append(reply)
        tasks.append(asyncio.create_task(one_request(http, reply, body)))
    return tasks


def client_for(base: str, key: str, timeout_s: float) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=timeout_s,
                             limits=httpx.Limits(max_connections=400, max_keepalive_connections=400))


async def all_job_ids(store: Store, since_id: str, replies: list[Reply]) -> set[str]:
    """Every job of the run: those named in answers and those with an event in the namespace."""
    ids = {job_id for reply in replies for job_id in reply.ids}
    ids |= {event["job_id"] for _, event in await read_all_events(store, since_id) if event.get("job_id")}
    return ids


async def drain(store: Store, ids: list[str], timeout_s: float) -> None:
    """Until every job is terminal, or timeout_s."""
    give_up_at = time.monotonic() + timeout_s
    while time.monotonic() < give_up_at:
        states = await store.states(ids)
        if all(state is not None and state.terminal for state in states):
            return
        await asyncio.sleep(1.0)


def within_slo(record: JobRecord | None) -> bool:
    if record is None or record.state is not JobState.done or record.latency_s is None:
        return False
    if record.deadline is None or record.submitted_at is None:
        return False
    return record.latency_s <= record.deadline - record.submitted_at + 1e-6


def b_share(replies: list[Reply], phase: str, records: dict[str, JobRecord | None]) -> float:
    """The share of B's requests in `phase` whose job was done within its objective (refusals miss)."""
    mine = [reply for reply in replies if reply.tenant == "b" and reply.phase == phase]
    good = sum(1 for reply in mine if reply.status == 200 and reply.ids and all(
        within_slo(records.get(job_id)) for job_id in reply.ids))
    return good / len(mine) if mine else 0.0


def describe(replies: list[Reply], tenant: str, phase: str, records: dict[str, JobRecord | None]) -> str:
    """One tenant's phase in a line: requests, answers by status and code, its named jobs' states, latencies."""
    mine = [reply for reply in replies if reply.tenant == tenant and reply.phase == phase]
    if not mine:
        return f"{phase}: {tenant.upper()} sent nothing"
    answers = Counter(f"{reply.status}{' ' + reply.code if reply.code else ''}" for reply in mine)
    accepted = [reply for reply in mine if reply.accepted]
    states = Counter(records[job_id].state.value if records.get(job_id) else "no record"
                     for reply in mine for job_id in reply.ids)
    seconds = sorted(reply.seconds for reply in mine if reply.status == 200)
    p50 = f"{seconds[len(seconds) // 2]:.2f}" if seconds else "-"
    p99 = f"{seconds[min(len(seconds) - 1, int(len(seconds) * 0.99))]:.2f}" if seconds else "-"
    return (f"{phase}: {tenant.upper()} sent {len(mine)} requests ({sum(r.n for r in mine)} images), "
            f"accepted {len(accepted)} ({sum(r.n for r in accepted)} images); answers "
            f"{dict(answers.most_common())}; named jobs {dict(states)}; 200s in p50 {p50} s, p99 {p99} s")


async def account(store: Store, since_id: str, replies: list[Reply]) -> tuple[dict, int]:
    """Every job's record once the objective has passed for all (bounded), and how many were lost:
    not terminal, plus accepted jobs the store has no trace of."""
    ids = sorted(await all_job_ids(store, since_id, replies))
    await drain(store, ids, DRAIN_S)
    records = {job_id: await store.get(job_id) for job_id in ids}
    unfinished = [job_id for job_id, record in records.items() if record is None or not record.state.terminal]
    accepted = sum(reply.n for reply in replies if reply.accepted)
    lost = len(unfinished) + max(0, accepted - len(ids))
    if unfinished:
        print(f"not terminal after {DRAIN_S:.0f} s: {len(unfinished)}, e.g. {unfinished[:3]}")
    return records, lost


def served_line(records: dict[str, JobRecord | None], started: float, ended: float) -> str:
    """The fleet's output in the flood: jobs done between two wall-clock times, by tenant."""
    done = Counter(record.tenant for record in records.values() if record is not None
                   and record.state is JobState.done and record.history and started <= record.history[-1].at <= ended)
    seconds = ended - started
    return (f"flood: the fleet served {sum(done.values()) / seconds:.2f} jobs/s in {seconds:.0f} s "
            f"(A {done.get('a', 0) / seconds:.2f}, B {done.get('b', 0) / seconds:.2f})")
