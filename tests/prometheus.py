"""Prometheus and promtool for the tests of docker/prometheus/ (tests/integration/test_prometheus.py).

Taken from PATH when both are there; otherwise from Debian's package in the apt cache
(/var/cache/apt/archives/prometheus_*.deb, e.g. 2.42.0+ds-5+deb12u1), unpacked with `dpkg-deb -x`
into .venv/opt/prometheus: no root needed, no download, and nothing system-wide. `apt-get install`
would also run the package's postinst, which starts a system Prometheus on :9090 (invoke-rc.d), and
would put `prometheus` on PATH, where `make run` (tests/deploy/test_readme_commands.py) would start
one of its own. Where neither is possible the tests skip, saying why."""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "docker" / "prometheus" / "rules.yml"
DASHBOARD = ROOT / "docker" / "grafana" / "hadis.json"
APT_CACHE = "/var/cache/apt/archives"
UNPACKED = Path(sys.prefix) / "opt" / "prometheus"  # the venv's: `make clean` removes it with the venv


@dataclass(frozen=True)
class Tools:
    prometheus: Path
    promtool: Path


def on_path() -> Tools | None:
    prometheus, promtool = shutil.which("prometheus"), shutil.which("promtool")
    return Tools(Path(prometheus), Path(promtool)) if prometheus and promtool else None


def unpacked() -> Tools | None:
    tools = Tools(UNPACKED / "usr/bin/prometheus", UNPACKED / "usr/bin/promtool")
    return tools if all(os.access(path, os.X_OK) for path in (tools.prometheus, tools.promtool)) else None


def unpack(deb: str) -> None:
    """The package's files into UNPACKED, atomically (two test processes may race: the first wins)."""
    UNPACKED.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".prometheus-", dir=UNPACKED.parent))
    try:
        subprocess.run(["dpkg-deb", "-x", deb, str(staging)], check=True, capture_output=True, timeout=120)
        try:
            staging.rename(UNPACKED)
        except OSError:  # unpacked meanwhile by another process
            pass
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def find_tools() -> Tools | str:
    """The tools, or why they cannot be had here (the reason a test skips with)."""
    tools = on_path() or unpacked()
    if tools is not None:
        return tools
    debs = sorted(glob.glob(f"{APT_CACHE}/prometheus_*.deb"))
    if not debs:
        return (f"prometheus and promtool are not on PATH and no prometheus package is in {APT_CACHE}: "
                "install Prometheus (apt-get install prometheus, or https://prometheus.io/download/)")
    if shutil.which("dpkg-deb") is None:
        return f"prometheus is not on PATH and dpkg-deb is missing to unpack {debs[-1]}"
    try:
        unpack(debs[-1])
    except (subprocess.SubprocessError, OSError) as error:
        return f"could not unpack {debs[-1]}: {error}"
    return unpacked() or f"{debs[-1]} holds no usr/bin/prometheus and usr/bin/promtool"


# --- what the files ask of Prometheus --------------------------------------------------------------


SELECTOR = re.compile(r'(?<![\w:"])([a-zA-Z_:][\w:]*)\s*(\{[^}]*\})?')
STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
NOT_METRICS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
               "offset", "le", "inf", "nan"}


def selectors(expr: str) -> list[str]:
    """The series selectors of an expression (a metric name, its matchers if any): every name followed by
    `(` is a function, every name inside `by (...)`/`on (...)` a label, every quoted string a value."""
    selectors_found = []
    blanked = STRING.sub(lambda match: '"' + "x" * (len(match.group()) - 2) + '"', expr)
    blanked = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)",
                     lambda match: " " * len(match.group()), blanked)  # same length: spans map back to expr
    for match in SELECTOR.finditer(blanked):
        name = match.group(1)
        rest = blanked[match.end():].lstrip()
        if name.lower() in NOT_METRICS or rest.startswith("(") or re.fullmatch(r"\d+\w*", name):
            continue
        if blanked[:match.start()].rstrip().endswith("["):  # a range: [5m]
            continue
        selectors_found.append(expr[match.start():match.end()].strip())
    return selectors_found


def dashboard_exprs(rate_interval: str = "5m") -> list[str]:
    """Every panel's queries, with Grafana's $__rate_interval as `rate_interval`."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target["expr"].replace("$__rate_interval", rate_interval)
            for panel in panels for target in panel.get("targets", [])]


def rule_list() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]
