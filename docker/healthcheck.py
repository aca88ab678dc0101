"""The health probe each service container runs (compose.yaml's `healthcheck`):

    python docker/healthcheck.py router|judge|worker|controller|api|agent|webhooks [--metrics-port PORT]

Healthy (exit 0) when RabbitMQ and Redis answer, the service's queue has a consumer (the api
consumes none: its HTTP server is up when its readiness says so; the agent neither: it is ready
once it has registered its GPUs, and its workers come and go with the plan; the webhook sender
neither: it reads its work from Redis), and,
with --metrics-port, the service's own metrics endpoint on 127.0.0.1 says
`hadis_service_ready{service=...} 1`: the queue check sees any replica, the endpoint sees this
process. Unhealthy (exit 1) prints one line saying why; `docker inspect` shows it.
Settings come from the same HADIS_* variables as the service (the worker's queue from HADIS_TIER).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prometheus_client.parser import text_string_to_metric_families

from shared.bus import Bus, Queues
from shared.settings import Settings, get_settings
from shared.store import Store

SERVICES = ("router", "judge", "worker", "controller", "api", "agent", "webhooks")
CONSUME_NOTHING = ("api", "agent", "webhooks")
CHECK_TIMEOUT_S = 8.0


class Unhealthy(Exception):
    pass


def queue_of(service: str, settings: Settings) -> str:
    """The queue the service consumes, or, for the api and the agent, the ingress (it must exist)."""
    queues = Queues(settings.namespace)
    return {"router": queues.requests, "judge": queues.judge, "worker": queues.tier(settings.tier),
            "controller": queues.dead_watch, "api": queues.requests, "agent": queues.requests,
            "webhooks": queues.requests}[service]


async def check_broker_and_store(service: str, settings: Settings) -> None:
    queue = queue_of(service, settings)
    try:
        bus = await Bus.connect(settings, declare=False)
    except Exception as error:
        raise Unhealthy(f"RabbitMQ: {error}") from error
    try:
        consumers = await bus.consumers(queue)
    except Exception as error:
        raise Unhealthy(f"queue {queue}: {error}") from error
    finally:
        await bus.close()
    if consumers < 1 and service not in CONSUME_NOTHING:
        raise Unhealthy(f"queue {queue} has no consumer")
    try:
        store = await Store.connect(settings)
    except Exception as error:
        raise Unhealthy(f"Redis: {error}") from error
    await store.close()


def ready_value(metrics_text: str, service: str) -> float | None:
    for family in text_string_to_metric_families(metrics_text):
        if family.name == "hadis_service_ready":
            for sample in family.samples:
                if sample.labels.get("service") == service:
                    return sample.value
    return None


def check_metrics(service: str, port: int) -> None:
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            text = response.read().decode()
    except (urllib.error.URLError, OSError) as error:
        raise Unhealthy(f"metrics endpoint {url}: {error}") from error
    if ready_value(text, service) != 1:
        raise Unhealthy(f"{url} does not report hadis_service_ready{{service=\"{service}\"}} 1")


async def check(service: str, settings: Settings, metrics_port: int | None) -> None:
    if metrics_port is not None:
        check_metrics(service, metrics_port)
    try:
        await asyncio.wait_for(check_broker_and_store(service, settings), timeout=CHECK_TIMEOUT_S)
    except TimeoutError:
        raise Unhealthy(f"RabbitMQ or Redis did not answer within {CHECK_TIMEOUT_S} s") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("service", choices=SERVICES)
    parser.add_argument("--metrics-port", type=int, help="also require this process's readiness on 127.0.0.1:PORT")
    args = parser.parse_args(argv)
    try:
        asyncio.run(check(args.service, get_settings(), args.metrics_port))
    except Unhealthy as problem:
        print(f"unhealthy: {problem}")
        return 1
    print("healthy")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
