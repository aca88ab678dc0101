"""docker/prometheus/ and docker/grafana/ as files (no Prometheus needed; tests/integration/test_prometheus.py
runs them): every metric and label they name is one shared/metrics.py exports, the dashboard is a
well-formed Grafana dashboard, make run's scrape config matches the ports the supervisor gives, and the
compose profile mounts what exists where the provisioning looks."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import yaml
from prometheus_client import Counter, Gauge, Histogram

from shared import metrics
from tests.prometheus import DASHBOARD, RULES, dashboard_exprs, rule_list, selectors

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS_DIR = ROOT / "docker" / "prometheus"
GRAFANA_DIR = ROOT / "docker" / "grafana"
COMPOSE = ROOT / "compose.yaml"
TARGET_LABELS = {"job", "instance"}  # Prometheus's own, on every scraped series


SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created")}


def exported() -> dict[str, set[str]]:
    """Every series name the registry exports (with the suffixes of its type) -> its label names."""
    names: dict[str, set[str]] = {"up": set()}
    for family in metrics.REGISTRY.collect():  # process_*, python_* and the GPU collector's too
        for suffix in SUFFIXES.get(family.type, ("",)):
            names[family.name + suffix] = set()
    for value in vars(metrics).values():
        if isinstance(value, Counter | Gauge | Histogram):
            for suffix in SUFFIXES.get(value._type, ("",)):
                names[value._name + suffix] = set(value._labelnames) | ({"le"} if suffix == "_bucket" else set())
    names["hadis_gpu_memory_bytes"] = {"gpu", "kind"}  # GpuMemoryCollector's
    return names


def all_selectors() -> list[tuple[str, str]]:
    found = [(rule.get("record") or rule["alert"], selector)
             for rule in rule_list() for selector in selectors(rule["expr"])]
    return found + [("dashboard", selector) for expr in dashboard_exprs() for selector in selectors(expr)]


def test_every_metric_and_label_named_is_exported_or_recorded():
    names = exported()
    recorded = {rule["record"] for rule in rule_list() if "record" in rule}
    wrong = []
    for where, selector in all_selectors():
        name = re.match(r"[\w:]+", selector).group()
        labels = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", selector[len(name):]))
        if name in recorded:
            continue
        if name not in names:
            wrong.append(f"{where}: {name} is not exported")
        elif labels - names[name] - TARGET_LABELS:
            wrong.append(f"{where}: {name} has no label {sorted(labels - names[name] - TARGET_LABELS)}")
    assert not wrong, "\n".join(wrong)
    assert len(all_selectors()) > 40


def test_the_brief_s_panels_are_there():
    text = " ".join(dashboard_exprs())
    for family in ("hadis_plan_gpus", "hadis_plan_share", "hadis_queue_depth", "hadis_routed_total",
                   "slo_attainment", "hadis_job_latency_seconds_bucket", "hadis_plan_fid", "hadis_judge_verdicts_total",
                   'hadis_plan_share{kind="d"}', "hadis_api_jobs_accepted_total", "hadis_workers"):
        assert family in text, family


def test_the_dashboard_is_grafana_s_json_model():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "hadis-overview" and dashboard["schemaVersion"] >= 36
    (variable,) = dashboard["templating"]["list"]
    assert variable["type"] == "datasource" and variable["query"] == "prometheus"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    cells = set()
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["w"] > 0 and grid["h"] > 0, panel["title"]
        area = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not area & cells, f"{panel['title']} overlaps another panel"
        cells |= area
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["description"] and panel["targets"], panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)) and all(target["expr"] for target in panel["targets"]), panel["title"]


def test_make_run_s_config_is_the_rendering_of_its_default_ports():
    """docker/prometheus/prometheus.yml as committed is what scripts/prometheus_local.py writes for
    HADIS_METRICS_PORT=9100 and two emulated GPUs: the ports of shared/supervisor.py and services/agent.py."""
    spec = importlib.util.spec_from_file_location("prometheus_local", ROOT / "scripts" / "prometheus_local.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("prometheus_local", module)
    spec.loader.exec_module(module)
    template = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    rendered = module.render(template, module.ports(9100, 2), RULES, None)
    assert rendered["scrape_configs"] == template["scrape_configs"]
    assert template["rule_files"] == ["rules.yml"]
    jobs = [scrape["job_name"] for scrape in template["scrape_configs"]]
    compose_jobs = [scrape["job_name"] for scrape in yaml.safe_load((PROMETHEUS_DIR / "prometheus.compose.yml")
                                                                     .read_text())["scrape_configs"]]
    assert jobs == compose_jobs[:len(jobs)]  # the same job names: HadisServiceDown names them


def test_the_compose_profile_mounts_what_exists_where_provisioning_looks():
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["observability"], name
        assert services[name]["healthcheck"]["test"], name
        for volume in services[name]["volumes"]:
            source, target = volume.split(":")[:2]
            if source.startswith("./"):
                assert (ROOT / source).exists(), volume
    grafana = {volume.split(":")[1]: volume.split(":")[0] for volume in services["grafana"]["volumes"]}
    provider = yaml.safe_load((GRAFANA_DIR / "provisioning/dashboards/hadis.yml").read_text())["providers"][0]
    assert grafana[f"{provider['options']['path']}/hadis.json"] == "./docker/grafana/hadis.json"
    assert grafana["/etc/grafana/provisioning"] == "./docker/grafana/provisioning"
    (datasource,) = yaml.safe_load((GRAFANA_DIR / "provisioning/datasources/prometheus.yml").read_text())["datasources"]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    assert "GF_SECURITY_ADMIN_PASSWORD" in " ".join(services["grafana"]["entrypoint"])  # refuses to start without
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.compose.yml").read_text())
    for scrape in config["scrape_configs"]:
        for discovery in scrape.get("dns_sd_configs", []):
            assert set(discovery["names"]) <= set(services), scrape["job_name"]
