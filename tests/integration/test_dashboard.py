"""The operator's live page (issue 33), end to end: `hadis serve all` on emulated GPUs (the hadis policy
over paper-l40s-x10) in a namespace of its own with its api on a free port, an operator key and two
tenants' keys made by `hadis api-key create`, jobs driven through the api for both tenants; then

* the snapshot (GET /v1/ops/dashboard) holds the plan the store holds, every GPU the plan assigns,
  each tenant's jobs counted exactly, arrivals and latencies; the stream sends the same snapshot;
* no key is 401, a tenant's key 403, on the snapshot, the stream and the thumbnails;
* headless Chromium (Debian's package; tests/browser.py) opens /dashboard: a tenant's key is refused
  on the page with the api's 403; the operator's key brings the page live with no console error, no
  uncaught exception and no request outside the api; the GPU grid shows the displayed plan's GPUs
  with their tiers, the charts have points of the load driven, the tenant table names both tenants,
  the recent jobs show their thumbnails; a screenshot goes to out/test-artefacts/dashboard.png.

Skipped, saying why, only where Chromium is missing and cannot be installed from the apt cache."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import pytest

from shared.schemas import Plan
from shared.store import Store
from tests import browser
from tests.deploy.test_make_loadtest import delete_namespace, first_job_done, stack_env, tail
from tests.helpers import free_port, make_settings

pytestmark = [pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
HADIS = Path(sys.executable).with_name("hadis")
ARTEFACT = ROOT / "out" / "test-artefacts" / "dashboard.png"
TENANTS = ("tenant-a", "tenant-b")
JOBS_EACH = 40
STACK_ENV = {"HADIS_BACKEND": "emulated", "HADIS_JUDGE_BACKEND": "emulated", "HADIS_PROFILE": "paper-l40s-x10",
             "HADIS_CONTROLLER_POLICY": "hadis", "HADIS_SLO_S": "10", "HADIS_EMULATED_GPUS": "4",
             "HADIS_LOG_LEVEL": "warning", "HADIS_LOG_FORMAT": "json"}


@dataclass
class Stack:
    env: dict[str, str]
    base: str
    log: Path
    operator: str
    tenants: dict[str, str]  # tenant -> its key


def make_key(env: dict[str, str], *args: str) -> str:
    made = subprocess.run([str(HADIS), "api-key", "create", *args], env=env, capture_output=True, text=True,
                          timeout=60)
    assert made.returncode == 0, made.stderr
    return orjson.loads(made.stdout)["key"]


@pytest.fixture(scope="module")
def chromium() -> str:
    path, why = browser.find_or_install()
    if path is None:
        pytest.skip(why)
    return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    """`hadis serve all` in a session of its own (SIGTERM, then SIGKILL to it), its namespace deleted."""
    namespace, port = make_settings().namespace, free_port()
    env = {**stack_env(namespace, port), **STACK_ENV}
    log = tmp_path_factory.mktemp("dashboard") / "serve-all.log"
    with open(log, "ab") as output:
        process = subprocess.Popen([str(HADIS), "serve", "all"], cwd=ROOT, env=env, stdout=output,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        asyncio.run(first_job_done(env, process, log))
        tenants = {tenant: make_key(env, "--tenant", tenant, "--rate", "100", "--burst", "100") for tenant in TENANTS}
        yield Stack(env, env["HADIS_API_URL"], log, make_key(env, "--tenant", "ops", "--operator"), tenants)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)
        asyncio.run(delete_namespace(namespace))


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def drive(stack: Stack) -> dict[str, list[str]]:
    """JOBS_EACH jobs per tenant through POST /v1/jobs, paced over a few seconds; waits until all ended."""
    submitted: dict[str, list[str]] = {tenant: [] for tenant in TENANTS}
    async with httpx.AsyncClient(base_url=stack.base, timeout=30) as http:
        for index in range(JOBS_EACH):
            for tenant, key in stack.tenants.items():
                reply = await http.post("/v1/jobs", headers=bearer(key),
                                        json={"prompt": f"dashboard test {index}: a lighthouse at dusk"})
                assert reply.status_code == 202, reply.text
                submitted[tenant].append(reply.json()["id"])
            await asyncio.sleep(0.1)
        give_up_at = time.monotonic() + 120
        for tenant, job_ids in submitted.items():
            for job_id in job_ids:
                while True:
                    record = (await http.get(f"/v1/jobs/{job_id}", headers=bearer(stack.tenants[tenant]))).json()
                    if record.get("state") in ("done", "failed", "expired"):
                        break
                    assert time.monotonic() < give_up_at, f"{job_id} not ended: {record}\n{tail(stack.log)}"
                    await asyncio.sleep(0.2)
    return submitted


def snapshot(stack: Stack) -> dict:
    reply = httpx.get(f"{stack.base}/v1/ops/dashboard", headers=bearer(stack.operator), timeout=30)
    assert reply.status_code == 200, reply.text
    return reply.json()


def counted(stack: Stack, timeout_s: float = 20.0) -> dict:
    """A snapshot once the window counts every driven job of both tenants (within a few ticks)."""
    give_up_at = time.monotonic() + timeout_s
    while True:
        snap = snapshot(stack)
        ended = {row["name"]: row["ended"] for row in snap["window"]["tenants"]}
        if all(ended.get(tenant) == JOBS_EACH for tenant in TENANTS):
            return snap
        assert time.monotonic() < give_up_at, f"the window counts {ended}, not {JOBS_EACH} for each of {TENANTS}"
        time.sleep(0.5)


def of_one_plan(stack: Stack, timeout_s: float = 20.0) -> tuple[dict, Plan]:
    """A counted snapshot and the stored plan, read until they show the same plan version: the
    controller goes on planning after the load (the demand falls), and a plan published between
    the two reads made them differ once in CI (3 against 4)."""
    give_up_at = time.monotonic() + timeout_s
    while True:
        snap = counted(stack)
        plan = asyncio.run(stored_plan(stack))
        if plan is not None and snap["plan"]["version"] == plan.version or time.monotonic() > give_up_at:
            return snap, plan
        time.sleep(0.5)


@pytest.fixture(scope="module")
def driven(stack) -> dict[str, list[str]]:
    """The load, driven once for the module's tests: tenant -> its job ids, all ended."""
    return asyncio.run(drive(stack))


def test_the_snapshot_and_the_stream_show_the_plan_and_the_load(stack, driven):
    submitted = driven
    snap, plan = of_one_plan(stack)
    assert snap["plan"]["version"] == plan.version and snap["plan"]["light_model"] == plan.light_model
    planned = {cell["gpu"]: cell["tier"] for cell in snap["gpus"] if cell["tier"]}
    assert planned == {gpu: tier.value for gpu, tier in plan.assignment.items()} and planned
    assert len(snap["gpus"]) == 4  # HADIS_EMULATED_GPUS: the unplanned ones too
    window = snap["window"]
    assert window["ended"] >= 2 * JOBS_EACH and window["arrivals_qps"] > 0 and window["p50_s"] > 0
    assert window["judged"] > 0 and window["fid"] is not None  # paper-l40s-x10 has a quality table
    assert sum(v for v in snap["series"]["arrivals"] if v) * 2.0 >= 2 * JOBS_EACH  # jobs/s x bucket_s
    assert set(snap["queues"]) == {"requests", "light", "heavy", "judge", "requests.batch", "light.batch",
                                   "heavy.batch"}
    assert snap["changes"] and snap["changes"][0]["version"] == plan.version and snap["changes"][0]["reason"]
    recent = {job["job_id"] for job in snap["recent"]}
    assert recent and recent <= set(submitted[TENANTS[0]]) | set(submitted[TENANTS[1]])

    with httpx.stream("GET", f"{stack.base}/v1/ops/dashboard/stream", headers=bearer(stack.operator),
                      timeout=30) as reply:
        assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/event-stream")
        lines = reply.iter_lines()
        assert next(lines) == "event: snapshot"
        streamed = orjson.loads(next(lines).removeprefix("data: "))
    assert streamed["plan"]["version"] >= plan.version and streamed["window"]["ended"] >= 2 * JOBS_EACH


async def stored_plan(stack: Stack):
    store = await Store.connect(make_settings(namespace=stack.env["HADIS_NAMESPACE"]))
    try:
        return await store.get_plan()
    finally:
        await store.close()


@pytest.mark.parametrize("path", ["/v1/ops/dashboard", "/v1/ops/dashboard/stream",
                                  "/v1/ops/dashboard/jobs/0123456789abcdef0123456789abcdef/thumbnail"])
def test_only_an_operators_key_reads_the_fleet(stack, path):
    url = f"{stack.base}{path}"
    none = httpx.get(url, timeout=30)
    assert none.status_code == 401 and none.json()["error"]["code"] == "invalid_api_key"
    tenant = httpx.get(url, headers=bearer(stack.tenants[TENANTS[0]]), timeout=30)
    assert tenant.status_code == 403 and tenant.json()["error"]["code"] == "operator_key_required"
    assert "--operator" in tenant.json()["error"]["message"]
    page = httpx.get(f"{stack.base}/dashboard", timeout=30)  # the page itself holds no data
    assert page.status_code == 200 and "default-src 'none'" in page.headers["content-security-policy"]


PAGE_STATE = """JSON.stringify({
  version: document.getElementById('plan-version').textContent,
  cells: [...document.querySelectorAll('#gpus .gpu')].map(c => [c.dataset.gpu, c.dataset.tier || null]),
  charts: Object.fromEntries([...document.querySelectorAll('svg.chart')]
    .map(s => [s.id, [+s.dataset.points, +s.dataset.max]])),
  tenants: [...document.querySelectorAll('#tenants tbody tr td:first-child')].map(td => td.textContent),
  thumbnails: [...document.querySelectorAll('#recent img')].filter(i => i.complete && i.naturalWidth > 0).length,
  live: document.getElementById('live').textContent})"""


def enter_key(page: browser.Browser, key: str) -> None:
    page.evaluate(f"document.getElementById('key').value = {orjson.dumps(key).decode()}; "
                  "document.getElementById('login').requestSubmit(); true")


def test_the_page_shows_the_fleet_in_headless_chromium(stack, driven, chromium):
    counted(stack)
    page = browser.Browser(chromium)
    try:
        page.open(f"{stack.base}/dashboard")
        enter_key(page, stack.tenants[TENANTS[0]])
        shown = page.wait_for("!document.getElementById('message').hidden && "
                              "document.getElementById('message').textContent.includes('403')", 20)
        assert shown and not page.evaluate("document.getElementById('login').hidden")
        refused = page.errors()  # the browser logs the refused stream request itself, and nothing else
        assert all("403" in error and "/v1/ops/dashboard/stream" in error for error in refused), refused
        page.events.clear()

        enter_key(page, stack.operator)
        page.wait_for("document.getElementById('live').textContent === 'live' && "
                      "[...document.querySelectorAll('#recent img')].some(i => i.complete && i.naturalWidth > 0)", 30)
        state = orjson.loads(page.evaluate(PAGE_STATE))
        ARTEFACT.unlink(missing_ok=True)
        page.screenshot(ARTEFACT)
        assert page.errors() == []
        assert all(url.startswith((stack.base, "blob:", "data:")) for url in page.requested()), page.requested()
    finally:
        page.close()
    version = int(state["version"].split()[0].removeprefix("v"))
    plan = asyncio.run(plan_version(stack, version))
    assert {gpu: tier for gpu, tier in state["cells"] if tier} == {gpu: t.value for gpu, t in plan.assignment.items()}
    assert len(state["cells"]) == 4
    for chart in ("chart-arrivals", "chart-latency", "chart-attainment", "chart-fid"):
        points, top = state["charts"][chart]
        assert points > 0 and top > 0, (chart, state["charts"])
    assert state["charts"]["chart-escalation"][0] > 0, state["charts"]  # judged; none escalated when d = 0
    assert set(TENANTS) <= set(state["tenants"])
    assert state["thumbnails"] > 0
    assert ARTEFACT.stat().st_size > 10_000


async def plan_version(stack: Stack, version: int):
    store = await Store.connect(make_settings(namespace=stack.env["HADIS_NAMESPACE"]))
    try:
        found = [plan for plan in await store.plan_history() if plan.version == version]
    finally:
        await store.close()
    assert found, f"plan version {version} is not in the store's history"
    return found[0]
