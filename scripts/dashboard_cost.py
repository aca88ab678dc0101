"""What the operator's page costs the api and the store under load (issue 33; docs/observability-page.md).

`hadis serve all` on emulated GPUs (paper-l40s-x10, the hadis policy, HADIS_TIME_SCALE small so the
GPUs keep up) in a namespace of its own; this process submits --rate jobs/s over AMQP (the ingress,
so the api does nothing for the load itself and its CPU is the dashboard's) for three tenants. After
a warm-up, for --phase-s seconds each: no viewer (the dashboard idle), one viewer, two viewers (SSE
streams held open by this process, reading every frame). Per phase: the api process's CPU seconds per
second (its user + system time, read from /proc), Redis's commands per second by command (INFO
commandstats: all clients), the dashboard's own round trips per tick (the snapshot's `cost`), the
frames, bytes and thumbnails each viewer received (a viewer fetches each listed job's thumbnail once,
as the page does), the jobs/s the stack finished. A viewer phase starts after
--settle-s, so the first ticks' backfill (BACKFILL_S of the event stream) is not in it.

    .venv/bin/python scripts/dashboard_cost.py [--rate 100] [--phase-s 30] [--screenshot FILE]

Prints a table and writes out/dashboard-cost/result.json. --screenshot also opens the page in
headless Chromium (tests/browser.py) under the load and saves it."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared.client import Client  # noqa: E402
from shared.schemas import Job  # noqa: E402
from shared.settings import Settings  # noqa: E402
from shared.store import Store  # noqa: E402

HADIS = Path(sys.executable).with_name("hadis")
OUT = ROOT / "out" / "dashboard-cost"
ENV = {"HADIS_BACKEND": "emulated", "HADIS_JUDGE_BACKEND": "emulated", "HADIS_PROFILE": "paper-l40s-x10",
       "HADIS_CONTROLLER_POLICY": "hadis", "HADIS_SLO_S": "10", "HADIS_LOG_LEVEL": "warning",
       "HADIS_LOG_FORMAT": "json"}
TENANTS = ("tenant-a", "tenant-b", "tenant-c")
READ_COMMANDS = ("xread", "hmget", "lrange", "mget", "get", "scan")
# The reference prompts (profiles/reference): the router scores them apart, so r sends some to heavy.
PROMPTS = [line for line in (ROOT / "profiles" / "reference" / "prompts.txt").read_text().splitlines() if line.strip()]


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_stack(args: argparse.Namespace, namespace: str, port: int, log: Path) -> tuple[subprocess.Popen, dict]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("HADIS_")
           or name in ("HADIS_AMQP_URL", "HADIS_REDIS_URL")}
    env.update(ENV, HADIS_NAMESPACE=namespace, HADIS_API_PORT=str(port), HADIS_EMULATED_GPUS=str(args.gpus),
               HADIS_TIME_SCALE=str(args.time_scale))
    with open(log, "ab") as output:
        stack = subprocess.Popen([str(HADIS), "serve", "all"], cwd=ROOT, env=env, stdout=output,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    return stack, env


def api_process(stack: subprocess.Popen, timeout_s: float = 60.0) -> psutil.Process:
    give_up_at = time.monotonic() + timeout_s
    while time.monotonic() < give_up_at:
        for child in psutil.Process(stack.pid).children():
            with contextlib.suppress(psutil.Error):
                if "services.api" in child.cmdline():
                    return child
        time.sleep(0.5)
    raise SystemExit("no api process under hadis serve all")


def operator_key(env: dict) -> str:
    made = subprocess.run([str(HADIS), "api-key", "create", "--tenant", "ops", "--operator"], env=env,
                          capture_output=True, text=True, timeout=60, check=True)
    return orjson.loads(made.stdout)["key"]


async def submit_load(client: Client, rate: float, stop: asyncio.Event, counts: dict[str, int]) -> None:
    """`rate` jobs/s over AMQP until stop, paced; counts submitted and publish errors."""
    started, index, pending = time.monotonic(), 0, set()
    while not stop.is_set():
        due = started + index / rate
        if (wait := due - time.monotonic()) > 0:
            await asyncio.sleep(wait)
        job = Job(prompt=PROMPTS[index % len(PROMPTS)], tenant=TENANTS[index % len(TENANTS)])
        task = asyncio.create_task(client.submit(job))
        pending.add(task)
        task.add_done_callback(pending.discard)
        task.add_done_callback(lambda done: count(done, counts))
        index += 1
    await asyncio.gather(*pending, return_exceptions=True)


def count(task: asyncio.Task, counts: dict[str, int]) -> None:
    outcome = "errors" if task.cancelled() or task.exception() else "submitted"
    counts[outcome] = counts.get(outcome, 0) + 1


async def redis_calls(store: Store) -> dict[str, int]:
    """Redis's calls per command so far (every client's)."""
    stats = await store._call(store._redis.info, "commandstats")
    return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}


async def view(base: str, key: str, stop: asyncio.Event, tally: dict[str, Any]) -> None:
    """One viewer, as the page is: the SSE stream held open, every frame read, and the thumbnail of
    each recent job fetched once, until stop."""
    headers, fetched = {"Authorization": f"Bearer {key}"}, set()
    async with httpx.AsyncClient(base_url=base, timeout=None) as http:
        async with http.stream("GET", "/v1/ops/dashboard/stream", headers=headers) as reply:
            reply.raise_for_status()
            async for line in reply.aiter_lines():
                if line.startswith("data: "):
                    snapshot = orjson.loads(line[6:])
                    tally["frames"] += 1
                    tally["bytes"] += len(line)
                    tally["costs"].append(snapshot.get("cost", {}))
                    tally["queues"], tally["ended"] = snapshot.get("queues"), snapshot["series"]["ended"][-10:]
                    for job in snapshot["recent"]:
                        if job["state"] == "done" and job["job_id"] not in fetched:
                            fetched.add(job["job_id"])
                            thumbnail = await http.get(f"/v1/ops/dashboard/jobs/{job['job_id']}/thumbnail",
                                                       headers=headers)
                            tally["thumbnails"] += thumbnail.status_code == 200
                if stop.is_set():
                    return


async def phase(name: str, viewers: int, args: argparse.Namespace, ctx: dict[str, Any]) -> dict[str, Any]:
    """One measured phase: `viewers` streams open for settle + phase seconds, measured over the phase."""
    stop = asyncio.Event()
    tallies = [{"frames": 0, "bytes": 0, "costs": [], "thumbnails": 0} for _ in range(viewers)]
    tasks = [asyncio.create_task(view(ctx["base"], ctx["key"], stop, tally)) for tally in tallies]
    await asyncio.sleep(args.settle_s if viewers else 2.0)
    for tally in tallies:
        tally.update(frames=0, bytes=0, costs=[], thumbnails=0)
    api, store = ctx["api"], ctx["store"]
    cpu0, calls0, done0, t0 = sum(api.cpu_times()[:2]), await redis_calls(store), ctx["counts"].get("submitted", 0), \
        time.monotonic()
    await asyncio.sleep(args.phase_s)
    seconds = time.monotonic() - t0
    cpu1, calls1, done1 = sum(api.cpu_times()[:2]), await redis_calls(store), ctx["counts"].get("submitted", 0)
    stop.set()
    if tasks:
        await asyncio.wait(tasks, timeout=5)
    for task in tasks:
        task.cancel()
    costs = [cost for tally in tallies[:1] for cost in tally["costs"] if cost]
    per_command = {command: (calls1.get(command, 0) - calls0.get(command, 0)) / seconds for command in READ_COMMANDS}
    return {"phase": name, "viewers": viewers, "seconds": round(seconds, 1),
            "submitted_per_s": round((done1 - done0) / seconds, 1),
            "api_cpu_per_s": round((cpu1 - cpu0) / seconds, 4), "api_rss_mb": round(api.memory_info().rss / 2**20, 1),
            "redis_commands_per_s": round(sum(calls1.values()) / seconds - sum(calls0.values()) / seconds, 1),
            "redis_read_commands_per_s": {k: round(v, 1) for k, v in per_command.items()},
            "frames_per_s": [round(tally["frames"] / seconds, 2) for tally in tallies],
            "kb_per_s": [round(tally["bytes"] / seconds / 1024, 1) for tally in tallies],
            "thumbnails_per_s": [round(tally["thumbnails"] / seconds, 2) for tally in tallies],
            "tick": summarise(costs), "queues_at_end": tallies[0].get("queues") if tallies else None,
            "ended_per_s_window": round(ended_rate(tallies), 1) if tallies else None}


def ended_rate(tallies: list[dict[str, Any]]) -> float:
    """Jobs ended per second over the last 10 complete buckets (2 s each) the page saw."""
    ended = tallies[0].get("ended") or []
    return sum(ended) / (2.0 * len(ended)) if ended else 0.0


def summarise(costs: list[dict[str, Any]]) -> dict[str, float]:
    if not costs:
        return {}
    keys = ("store_round_trips", "broker_round_trips", "events", "ended", "tick_ms", "cpu_ms")
    return {key: round(sum(float(cost.get(key) or 0) for cost in costs) / len(costs), 2) for key in keys}


async def screenshot(base: str, key: str, path: Path) -> None:
    from tests import browser

    executable, why = browser.find_or_install()
    if executable is None:
        print(f"no screenshot: {why}")
        return
    page = await asyncio.to_thread(browser.Browser, executable)
    try:
        await asyncio.to_thread(page.open, f"{base}/dashboard")
        await asyncio.to_thread(page.evaluate, f"document.getElementById('key').value = {orjson.dumps(key).decode()};"
                                               " document.getElementById('login').requestSubmit(); true")
        await asyncio.to_thread(page.wait_for, "document.getElementById('live').textContent === 'live'", 30)
        await asyncio.sleep(4)
        await asyncio.to_thread(page.screenshot, path)
        print(f"screenshot: {path}; console errors: {page.errors()}")
    finally:
        await asyncio.to_thread(page.close)


async def measure(args: argparse.Namespace, stack: subprocess.Popen, env: dict) -> list[dict[str, Any]]:
    settings = Settings(namespace=env["HADIS_NAMESPACE"])
    client = await Client.open(settings)
    store = await Store.connect(settings)
    stop, counts = asyncio.Event(), {}
    loading = asyncio.create_task(submit_load(client, args.rate, stop, counts))
    ctx = {"base": f"http://127.0.0.1:{env['HADIS_API_PORT']}", "key": operator_key(env), "api": api_process(stack),
           "store": store, "counts": counts}
    try:
        await asyncio.sleep(args.warmup_s)
        results = [await phase(name, viewers, args, ctx) for name, viewers in
                   (("no viewer", 0), ("one viewer", 1), ("two viewers", 2))]
        if args.screenshot:
            await screenshot(ctx["base"], ctx["key"], Path(args.screenshot))
    finally:
        stop.set()
        await loading
        await client.close()
        await store.close()
    return results


async def delete_namespace(namespace: str) -> None:
    """The run's queues and keys, once its services have stopped (they write until then)."""
    settings = Settings(namespace=namespace)
    client = await Client.open(settings)
    try:
        await client.delete_namespace()
    finally:
        await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=100.0, help="jobs/s submitted over AMQP")
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--time-scale", type=float, default=0.05, help="HADIS_TIME_SCALE of the emulated models")
    parser.add_argument("--warmup-s", type=float, default=20.0)
    parser.add_argument("--settle-s", type=float, default=10.0)
    parser.add_argument("--phase-s", type=float, default=30.0)
    parser.add_argument("--screenshot", help="save the page under the load here (headless Chromium)")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    namespace = f"cost{uuid.uuid4().hex[:8]}"
    stack, env = start_stack(args, namespace, free_port(), OUT / "serve-all.log")
    try:
        time.sleep(15)
        results = asyncio.run(measure(args, stack, env))
    finally:
        stack.send_signal(signal.SIGTERM)
        try:
            stack.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(stack.pid, signal.SIGKILL)
            stack.wait(timeout=30)
        asyncio.run(delete_namespace(namespace))
    (OUT / "result.json").write_bytes(orjson.dumps({"args": vars(args), "phases": results}, option=orjson.OPT_INDENT_2))
    for result in results:
        print(orjson.dumps(result).decode())


if __name__ == "__main__":
    main()
