"""The Prometheus config for `make run`'s stack, written for this machine's ports (scripts/run.sh calls it,
and tests/integration/test_prometheus.py): docker/prometheus/prometheus.yml with each job's target at the
port `hadis serve all` gives its service (shared/supervisor.py: HADIS_METRICS_PORT for the first child,
one more for each next one), a worker target per GPU of this host's agent (services/agent.py: the
agent's port + 1 + the GPU's index), and rules.yml by its absolute path. Settings are read as the
services read them (the environment, then .env).

    python scripts/prometheus_local.py OUT [--interval 5s] [--rules FILE] [--check-ports]

--check-ports: exit 3, naming the port, when one the services would serve metrics on is taken: make run
then runs without metrics and Prometheus rather than into a crash loop of the service that cannot bind.
"""

from __future__ import annotations

import argparse
import copy
import socket
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared.settings import get_settings  # noqa: E402
from shared.supervisor import default_children  # noqa: E402

TEMPLATE = ROOT / "docker" / "prometheus" / "prometheus.yml"
RULES = ROOT / "docker" / "prometheus" / "rules.yml"
WORKER_JOB = "worker"
PORTS_TAKEN = 3


def ports(base: int, gpus: int) -> dict[str, list[int]]:
    """job -> its targets' ports: the supervisor's children in its order from `base`, then the workers
    of the agent (the last child)."""
    names = [child.name for child in default_children()]
    jobs = {name: [base + offset] for offset, name in enumerate(names)}
    agent = jobs["agent"][0]
    jobs[WORKER_JOB] = [agent + 1 + index for index in range(gpus)]
    return jobs


def render(template: dict[str, Any], jobs: dict[str, list[int]], rules: Path, interval: str | None) -> dict[str, Any]:
    config = copy.deepcopy(template)
    config["rule_files"] = [str(rules)]
    if interval:
        config["global"]["scrape_interval"] = config["global"]["evaluation_interval"] = interval
    named = {scrape["job_name"]: scrape for scrape in config["scrape_configs"]}
    missing = set(jobs) - set(named)
    if missing:
        raise SystemExit(f"{TEMPLATE} has no scrape job for {sorted(missing)}")
    for job, job_ports in jobs.items():
        named[job]["static_configs"] = [{"targets": [f"127.0.0.1:{port}" for port in job_ports]}]
    return config


def taken(port_numbers: list[int]) -> int | None:
    """The first port a service could not bind (the services serve metrics on every address)."""
    for port in port_numbers:
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("", port))
            except OSError:
                return port
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="where to write the config")
    parser.add_argument("--interval", help="scrape and evaluation interval (default: the template's)")
    parser.add_argument("--rules", type=Path, default=RULES, help="the rules file (default: %(default)s)")
    parser.add_argument("--check-ports", action="store_true", help="exit 3 when a metrics port is taken")
    args = parser.parse_args()
    settings = get_settings()
    if settings.metrics_port is None:
        parser.error("HADIS_METRICS_PORT is not set: the services serve no metrics to scrape")
    jobs = ports(settings.metrics_port, len(settings.owned_gpus()))
    if args.check_ports and (port := taken([port for job_ports in jobs.values() for port in job_ports])):
        print(f"port {port} is taken: the services could not serve metrics from HADIS_METRICS_PORT="
              f"{settings.metrics_port} on (set another)", file=sys.stderr)
        return PORTS_TAKEN
    config = render(yaml.safe_load(TEMPLATE.read_text()), jobs, args.rules.resolve(), args.interval)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(f"# Written by scripts/prometheus_local.py from {TEMPLATE.relative_to(ROOT)}: edit that.\n"
                        + yaml.safe_dump(config, sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
