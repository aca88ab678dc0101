"""docker/prometheus/ with a real Prometheus (tests/prometheus.py finds or unpacks it; the tests skip,
saying why, where it cannot be had).

- promtool: both scrape configs and the rules check; rules.test.yml's unit tests pass, and they test
  every alert of rules.yml both firing and not firing.
- live, one stack for the module: `hadis serve all` as `make run` runs it (emulated GPUs, the hadis
  policy, its own namespace and free ports, metrics on), a Prometheus scraping it every second with
  the config `make run` writes (scripts/prometheus_local.py) and rules.yml with every alert's `for`
  cut to 0 s (rules.test.yml tests the `for`s). Jobs through AMQP and the HTTP api; then every
  PromQL expression of rules.yml and docker/grafana/hadis.json must return data (a finite sample):
  no metric or label that the services do not export. An alert's expression is false on a healthy
  stack, so each of its series selectors must return data instead. Then jobs whose deadline nobody
  can meet: HadisSLOAttainmentLow, not pending before, fires.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from shared import apikeys
from shared.client import Client
from shared.ports import free_port_base
from shared.schemas import Job, JobState
from tests.deploy.test_make_loadtest import delete_namespace, first_job_done, tail
from tests.helpers import free_port, make_settings
from tests.prometheus import RULES, Tools, dashboard_exprs, find_tools, rule_list, selectors

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "docker" / "prometheus"
HADIS = Path(sys.executable).with_name("hadis")
GPUS = 2
AMQP_JOBS = 24
HTTP_JOBS = 6
JOB_SLO_S = 60.0  # the load's: every job is done in time (the stack runs at a fifth of the profiled times)
HOPELESS_JOBS = 30
HOPELESS_SLO_S = 0.001  # expired before the router can route it
RATE_INTERVAL = "5m"  # the dashboard's $__rate_interval: the whole test's data
WAIT_S = 60.0

# Expressions that may return nothing here, and why. Each is keyed by a string it contains, and the
# reason only holds where the condition does.
REDIS_UNBOUNDED = "the machine's Redis runs without maxmemory (compose's has one): no ratio to it"
NO_NVIDIA_SMI = "no nvidia-smi here: no GPU memory to read"


@pytest.fixture(scope="module")
def tools() -> Tools:
    found = find_tools()
    if isinstance(found, str):
        pytest.skip(found)
    return found


def promtool(tools: Tools, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(tools.promtool), *args], capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_promtool_checks_both_configs_and_the_rules(tools, tmp_path):
    rendered = tmp_path / "prometheus.yml"
    subprocess.run([sys.executable, "scripts/prometheus_local.py", str(rendered)], cwd=ROOT, check=True,
                   env={**os.environ, "HADIS_METRICS_PORT": "19100"}, timeout=60)
    for config in (PROMETHEUS_DIR / "prometheus.yml", PROMETHEUS_DIR / "prometheus.compose.yml", rendered):
        result = promtool(tools, "check", "config", str(config))
        assert result.returncode == 0, result.stdout + result.stderr
        assert "SUCCESS: 1 rule files found" in result.stdout, result.stdout
    result = promtool(tools, "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_fire_and_hold_every_alert(tools):
    result = promtool(tools, "test", "rules", str(PROMETHEUS_DIR / "rules.test.yml"))
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr
    alerts = {rule["alert"] for rule in rule_list() if "alert" in rule}
    firing, holding = set(), set()
    for case in yaml.safe_load((PROMETHEUS_DIR / "rules.test.yml").read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else holding).add(check["alertname"])
    assert alerts - firing == set(), "alerts no unit test fires"
    assert alerts - holding == set(), "alerts no unit test holds back"


# --- the live stack --------------------------------------------------------------------------------


@dataclass
class Live:
    prometheus: str  # its base URL
    env: dict[str, str]
    log: Path
    api_key: str


def stack_env(namespace: str) -> dict[str, str]:
    """make run's stack on emulated GPUs (the hadis policy plans the profiled models), at a fifth of the
    profiled times; this environment's broker and store, nothing else of the test's."""
    env = {name: value for name, value in os.environ.items()
           if not name.startswith("HADIS_") or name in ("HADIS_AMQP_URL", "HADIS_REDIS_URL")}
    api_port = free_port()
    return {**env, "HADIS_NAMESPACE": namespace, "HADIS_METRICS_PORT": str(free_port_base(5 + GPUS, attempts=200)),
            "HADIS_API_PORT": str(api_port), "HADIS_API_URL": f"http://127.0.0.1:{api_port}",
            "HADIS_EMULATED_GPUS": str(GPUS), "HADIS_BACKEND": "emulated", "HADIS_JUDGE_BACKEND": "emulated",
            "HADIS_PROFILE": "paper-l40s-x10", "HADIS_CONTROLLER_POLICY": "hadis", "HADIS_SLO_S": "6",
            "HADIS_TIME_SCALE": "0.2", "HADIS_LOG_LEVEL": "warning", "HADIS_LOG_FORMAT": "json"}


def rules_without_for(path: Path) -> Path:
    """rules.yml with every alert's `for` at 0 s: an alert fires at the first evaluation that finds it."""
    document = yaml.safe_load(RULES.read_text())
    for group in document["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                rule["for"] = "0s"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def start_prometheus(tools: Tools, env: dict[str, str], work: Path) -> tuple[subprocess.Popen, str]:
    config = work / "prometheus.yml"
    subprocess.run([sys.executable, "scripts/prometheus_local.py", str(config), "--interval", "1s",
                    "--rules", str(rules_without_for(work / "rules.yml"))], cwd=ROOT, env=env, check=True, timeout=60)
    port = free_port()
    with open(work / "prometheus.log", "ab") as output:
        process = subprocess.Popen([str(tools.prometheus), f"--config.file={config}",
                                    f"--storage.tsdb.path={work / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                                   stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    give_up_at = time.monotonic() + WAIT_S
    while True:
        assert process.poll() is None, f"prometheus exited:\n{tail(work / 'prometheus.log')}"
        try:
            with urllib.request.urlopen(f"{base}/-/ready", timeout=2) as response:
                if response.status == 200:
                    return process, base
        except OSError:
            pass
        assert time.monotonic() < give_up_at, f"prometheus not ready:\n{tail(work / 'prometheus.log')}"
        time.sleep(0.2)


def stop(process: subprocess.Popen, group: bool) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        if group:
            os.killpg(process.pid, signal.SIGKILL)
        else:
            process.kill()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def live(tools, tmp_path_factory) -> Iterator[Live]:
    """The stack, Prometheus, and the load, done (every job terminal and scraped)."""
    work = tmp_path_factory.mktemp("prometheus")
    namespace = make_settings().namespace
    env = stack_env(namespace)
    log = work / "serve-all.log"
    with open(log, "ab") as output:
        stack = subprocess.Popen([str(HADIS), "serve", "all"], cwd=ROOT, env=env, stdout=output,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    prometheus = None
    try:
        asyncio.run(first_job_done(env, stack, log))
        prometheus, base = start_prometheus(tools, env, work)
        scraping(base)
        api_key = asyncio.run(drive(env))
        scraped_after(base, time.time())
        wait_for(base, f'sum(hadis_jobs_finished_total{{state="done"}}) >= {AMQP_JOBS + HTTP_JOBS + 1}')
        wait_for(base, "hadis:slo_attainment:ratio_rate5m")
        yield Live(base, env, log, api_key)
    finally:
        if prometheus is not None:
            stop(prometheus, group=False)
        stop(stack, group=True)
        asyncio.run(delete_namespace(namespace))


def scraping(base: str) -> None:
    """Until every target has been scraped once (Prometheus applies its targets some seconds after it
    starts): a counter's increments before its first scrape are invisible to rate()."""
    give_up_at = time.monotonic() + WAIT_S
    while True:
        with urllib.request.urlopen(f"{base}/api/v1/targets", timeout=10) as response:
            targets = json.load(response)["data"]["activeTargets"]
        if len(targets) == 6 + GPUS and all(target["health"] == "up" for target in targets):  # 6 children
            return
        assert time.monotonic() < give_up_at, f"targets not all up: {[(t['scrapeUrl'], t['health']) for t in targets]}"
        time.sleep(0.2)


def scraped_after(base: str, since: float) -> None:
    """Until every target has been scraped twice since `since` (a scrape a second: once more than a
    second after it), so that the load's last counts are in, with a sample before them for rate()."""
    wait_for(base, f"min(timestamp(up)) > {since + 1.0:.3f}")


async def drive(env: dict[str, str]) -> str:
    """The load: jobs over AMQP and, for a tenant, over the HTTP api (and one request it refuses), all
    done. Returns the tenant's key."""
    client = await Client.open(make_settings(namespace=env["HADIS_NAMESPACE"]))
    try:
        key, stored = apikeys.new_key("observer")
        await client.store.put_api_key(stored)
        jobs = [Job(prompt=f"prometheus load {index}: a lighthouse at dusk", slo_s=JOB_SLO_S)
                for index in range(AMQP_JOBS)]
        for job in jobs:
            await client.submit(job)
            await asyncio.sleep(0.1)
        ids = [job.job_id for job in jobs]
        async with httpx.AsyncClient(base_url=env["HADIS_API_URL"], timeout=10) as http:
            refused = await http.post("/v1/jobs", json={"prompt": "no key"}, headers={"Authorization": "Bearer nope"})
            assert refused.status_code == 401, refused.text
            for index in range(HTTP_JOBS):
                response = await http.post("/v1/jobs", json={"prompt": f"api load {index}", "slo_s": JOB_SLO_S},
                                           headers={"Authorization": f"Bearer {key}"})
                assert response.status_code == 202, response.text
                ids.append(response.json()["id"])
        records = await asyncio.gather(*(client.wait(job_id, timeout_s=WAIT_S) for job_id in ids))
        states = [record.state if record else None for record in records]
        assert states.count(JobState.done) == len(ids), states
        return key
    finally:
        await client.close()


def query(base: str, expr: str) -> list[dict]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.load(response)
    except urllib.error.HTTPError as error:
        raise AssertionError(f"{expr}: {error.code} {error.read().decode(errors='replace')}") from None
    assert body["status"] == "success", (expr, body)
    return body["data"]["result"]


def finite(result: list[dict]) -> list[dict]:
    return [sample for sample in result if math.isfinite(float(sample["value"][1]))]


def wait_for(base: str, expr: str) -> list[dict]:
    give_up_at = time.monotonic() + WAIT_S
    while not (result := finite(query(base, expr))):
        assert time.monotonic() < give_up_at, f"no data for {expr} in {WAIT_S:.0f} s"
        time.sleep(0.5)
    return result


def may_be_empty(base: str) -> dict[str, str]:
    """Expressions (keyed by a string they contain) that may return nothing here, where the reason holds."""
    reasons = {}
    if not finite(query(base, 'hadis_store_memory_bytes{kind="max"} > 0')):
        reasons['hadis_store_memory_bytes{kind="max"} > 0'] = REDIS_UNBOUNDED
        reasons["hadis:store_memory_used:ratio"] = REDIS_UNBOUNDED
    if shutil.which("nvidia-smi") is None:
        reasons["hadis_gpu_memory_bytes"] = NO_NVIDIA_SMI
    return reasons


def expressions_to_check() -> list[tuple[str, str]]:
    """(what, PromQL) for every recording rule and dashboard query, and every series selector in them
    and in the alerts (an alert's own expression is false on a healthy stack, an `or`'s arm may hide a
    typo): each must return data."""
    checks = []
    for rule in rule_list():
        if "record" in rule:
            checks.append((f"record {rule['record']}", rule["expr"]))
        name = rule.get("record") or rule["alert"]
        checks += [(f"{name} selects {selector}", selector) for selector in selectors(rule["expr"])]
    for expr in dashboard_exprs(RATE_INTERVAL):
        checks.append((f"dashboard: {expr}", expr))
        checks += [(f"dashboard selects {selector}", selector) for selector in selectors(expr)]
    return checks


def test_every_expression_of_the_rules_and_the_dashboard_returns_data(live):
    for rule in rule_list():
        if "alert" in rule:
            query(live.prometheus, rule["expr"])  # it parses and runs
    excused = may_be_empty(live.prometheus)
    checks = expressions_to_check()
    empty, skipped = [], []
    for what, expr in checks:
        if finite(query(live.prometheus, expr)):
            continue
        reason = next((why for key, why in excused.items() if key in expr), None)
        (skipped if reason else empty).append(f"{what}" + (f" ({reason})" if reason else ""))
    assert not empty, "no data:\n" + "\n".join(empty)
    assert len(skipped) <= 6, skipped
    print(f"{len(checks) - len(skipped)} of {len(checks)} expressions returned data; excused: {skipped}")


def test_the_slo_alert_fires_when_jobs_cannot_meet_their_deadline(live):
    assert not query(live.prometheus, 'ALERTS{alertname="HadisSLOAttainmentLow"}'), "pending or firing before"
    firing = query(live.prometheus, 'ALERTS{alertstate="firing", alertname!="HadisTierQueueWithoutWorker"}')
    assert not firing, f"alerts on a healthy stack: {firing}"
    expired = asyncio.run(hopeless(live.env))
    assert expired == HOPELESS_JOBS
    scraped_after(live.prometheus, time.time())
    wait_for(live.prometheus, 'ALERTS{alertname="HadisSLOAttainmentLow", alertstate="firing"}')
    (attainment,) = finite(query(live.prometheus, "hadis:slo_attainment:ratio_rate5m"))
    assert float(attainment["value"][1]) < 0.99
    reasons = {sample["metric"]["reason"] for sample in
               finite(query(live.prometheus, "sum by (reason) (increase(hadis_slo_violations_total[5m])) > 0"))}
    assert "expired" in reasons, reasons


async def hopeless(env: dict[str, str]) -> int:
    """Jobs whose deadline passes before any tier could take them; how many ended expired."""
    client = await Client.open(make_settings(namespace=env["HADIS_NAMESPACE"]))
    try:
        jobs = [Job(prompt=f"too late {index}", slo_s=HOPELESS_SLO_S) for index in range(HOPELESS_JOBS)]
        await asyncio.gather(*(client.submit(job) for job in jobs))
        records = await asyncio.gather(*(client.wait(job.job_id, timeout_s=WAIT_S) for job in jobs))
        return sum(1 for record in records if record is not None and record.state is JobState.expired)
    finally:
        await client.close()
