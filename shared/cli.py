"""The `hadis` command."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from shared.schemas import PRIORITIES, Job, JobRecord

if TYPE_CHECKING:
    from shared.store import Store


def print_json(data: object) -> None:
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")


def record_json(record: JobRecord) -> dict:
    data = record.model_dump(mode="json")
    data["latency_s"] = record.latency_s
    return data


async def submit(args: argparse.Namespace) -> int:
    from shared.client import Client
    from shared.settings import get_settings

    job = Job(prompt=args.prompt, negative_prompt=args.negative_prompt, seed=args.seed, width=args.width,
              height=args.height, slo_s=args.slo, priority=args.priority)
    settings = get_settings()
    # By default, wait past the job's deadline (its class's objective: a batch job's is minutes).
    timeout = args.timeout or max(120.0, job.effective_deadline(settings.slo_s, settings.batch_slo_s)
                                  - job.submitted_at + 30.0)
    async with Client.connect() as client:
        await client.submit(job)
        record = await client.wait(job.job_id, timeout_s=timeout)
        if record is None:
            print_json({"job_id": job.job_id, "error": f"not finished within {timeout:g} s",
                        "record": (r.model_dump(mode="json") if (r := await client.status(job.job_id)) else None)})
            return 2
        if args.out and record.state == "done":
            image = await client.image(job.job_id)
            if image is None:
                print_json({"job_id": job.job_id, "error": "done, but its image is no longer in the store",
                            "record": record_json(record)})
                return 1
            Path(args.out).write_bytes(image)
        print_json(record_json(record))
        return 0 if record.state == "done" else 1


async def status(args: argparse.Namespace) -> int:
    from shared.client import Client

    if args.cluster:
        return await cluster_status(args.rate_window)
    if not args.job_id:
        print_json({"error": "give a JOB_ID, or --cluster"})
        return 2
    async with Client.connect() as client:
        record = await client.status(args.job_id)
    if record is None:
        print_json({"job_id": args.job_id, "error": "no such job (never submitted, or expired from the store)"})
        return 1
    print_json(record_json(record))
    return 0


async def cancel(args: argparse.Namespace) -> int:
    """Cancel a job that has not ended (as DELETE /v1/jobs/{id} does, for an operator)."""
    from shared.client import Client

    async with Client.connect() as client:
        outcome = await client.cancel(args.job_id)
        record = await client.status(args.job_id)
    if not outcome.applied:
        state = outcome.before.value if outcome.before else None
        print_json({"job_id": args.job_id, "error": f"not cancelled: the job is {state or 'not recorded'}"})
        return 1
    print_json(record_json(record) if record is not None else {"job_id": args.job_id, "state": "cancelled"})
    return 0


async def cluster_status(rate_window_s: float = 1.0) -> int:
    """The plan, the agents and their GPUs, which worker serves which tier on which GPU, and the
    service classes (shared/commands/cluster.py)."""
    from shared.commands.cluster import cluster_view
    from shared.settings import get_settings
    from shared.store import Store

    store = await Store.connect(get_settings())
    try:
        print_json(await cluster_view(store, rate_window_s))
    finally:
        await store.close()
    return 0


async def set_plan(args: argparse.Namespace) -> int:
    from shared.settings import get_settings
    from shared.store import Store

    settings = get_settings()
    store = await Store.connect(settings)
    try:
        current = await store.get_plan() or settings.static_plan(version=0)
        changes = {k: v for k, v in vars(args).items() if k in current.model_fields and v is not None}
        fields = {**current.model_dump(exclude={"version", "created_at"}), **changes, "reason": "hadis set-plan"}
        plan = await store.publish_plan(fields)
    finally:
        await store.close()
    print_json(plan.model_dump(mode="json"))
    return 0


def serve(args: argparse.Namespace) -> int:
    from shared import supervisor

    if args.service == "all":
        return supervisor.supervise(supervisor.default_children())
    module = f"services.{args.service}"
    import runpy

    runpy.run_module(module, run_name="__main__")
    return 0


async def api_key(args: argparse.Namespace) -> int:
    """Keys of the HTTP api's tenants: a new key is printed once; only its salted hash is stored."""
    from shared import apikeys
    from shared.policies.tenancy import Limits
    from shared.settings import get_settings
    from shared.store import Store

    settings = get_settings()
    store = await Store.connect(settings)
    try:
        if args.action in ("rotate-url-secret", "revoke-urls"):
            return await url_secret(args, store)
        if args.action == "create":
            key, stored = apikeys.new_key(args.tenant, operator=args.operator, classes=args.classes)
            await store.put_api_key(stored)
            limits = None
            given = {name: getattr(args, name) for name in ("rate", "burst", "max_active", "weight", "image_mb")
                     if getattr(args, name) is not None}
            if given:
                current = await store.tenant_limits(args.tenant) or Limits(
                    settings.api_rate_per_s, settings.api_burst, settings.api_max_active,
                    image_mb=settings.api_image_mb)
                limits = dataclasses.replace(current, **given)
                await store.set_tenant_limits(args.tenant, limits)
            limits = limits or await store.tenant_limits(args.tenant)
            print_json({"key": key, "key_id": stored.key_id, "tenant": stored.tenant, "operator": stored.operator,
                        "classes": list(stored.classes),
                        "limits": vars(limits) if limits else "the defaults (HADIS_API_RATE_PER_S, ...)",
                        "note": "shown once: only a salted hash is stored"})
        elif args.action == "list":
            print_json([{"key_id": key.key_id, "tenant": key.tenant, "operator": key.operator,
                         "classes": list(key.classes), "created_at": key.created_at}
                        for key in await store.api_keys()])
        else:
            if not await store.delete_api_key(args.key_id):
                print_json({"key_id": args.key_id, "error": "no such key"})
                return 1
            print_json({"key_id": args.key_id, "revoked": True,
                        "note": f"api replicas trust a checked key (and its image URLs) up to "
                                f"{settings.api_key_cache_s:g} s"})
    finally:
        await store.close()
    return 0


async def url_secret(args: argparse.Namespace, store: Store) -> int:
    """The secret that signs image URLs: rotated (the old one verifies for a grace, so URLs handed out
    stay valid; by default the image TTL, as long as any of them lives), or deleted with the previous
    one (every URL handed out stops working). Api replicas read it at most CACHE_S before."""
    from shared.urlsigning import CACHE_S

    note = f"api replicas take this up within {CACHE_S:g} s"
    if args.action == "revoke-urls":
        await store.delete_url_secrets()
        print_json({"revoked": "every signed image URL handed out", "note": note})
        return 0
    grace = store.image_ttl if args.grace is None else args.grace
    had_one = await store.rotate_url_secret(grace)
    print_json({"rotated": True, "previous_valid_s": grace if had_one else 0, "note": note})
    return 0


def positive(kind: type[int] | type[float]):
    """An argparse type: a finite number above zero."""
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not 0 < value < float("inf"):
            raise argparse.ArgumentTypeError(f"must be above zero: {text!r}")
        return value
    return parse


def class_names(text: str) -> tuple[str, ...]:
    """An argparse type: a comma-separated list of service classes (`interactive,batch`)."""
    from shared.apikeys import parse_classes

    try:
        return parse_classes(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def tenant_name(text: str) -> str:
    from shared.schemas import valid_tenant

    if not valid_tenant(text):
        raise argparse.ArgumentTypeError("1-64 of a-z 0-9 _ -, starting with a letter or digit")
    return text


def schema(args: argparse.Namespace) -> int:
    print_json(Job.model_json_schema())
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Every sub-command, in the order `hadis --help` lists them: one function per group here, and
    the bigger commands' own (shared/commands/) add theirs."""
    parser = argparse.ArgumentParser(prog="hadis", description="Hybrid adaptive diffusion serving.")
    commands = parser.add_subparsers(dest="command", required=True)
    add_job_parsers(commands)
    add_set_plan_parser(commands)
    p = commands.add_parser("serve", help="run one service, or all of them under a supervisor")
    p.add_argument("service", choices=["all", "api", "router", "worker", "judge", "controller", "agent", "webhooks"])
    p.set_defaults(handler=serve)
    add_api_key_parser(commands)
    p = commands.add_parser("schema", help="print the Job JSON Schema")
    p.set_defaults(handler=schema)

    from shared.commands import experiment, router_eval, train_judge, webhook
    from shared.commands import plan as plan_command
    from shared.commands import trace as trace_command

    plan_command.add_parser(commands)
    experiment.add_parsers(commands)
    trace_command.add_parsers(commands)
    router_eval.add_parser(commands)
    train_judge.add_parser(commands)
    webhook.add_parser(commands)
    return parser


def add_job_parsers(commands: argparse._SubParsersAction) -> None:
    """`submit`, `status` and `cancel`: a job from the command line, through the AMQP front door."""
    p = commands.add_parser("submit", help="enqueue a prompt, wait, save the image, print the record")
    p.add_argument("prompt")
    p.add_argument("--out", help="where to write the PNG")
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--seed", type=int)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--slo", type=float, help="latency objective in seconds (default: the class's)")
    p.add_argument("--priority", choices=PRIORITIES, default="interactive",
                   help="the service class: interactive (HADIS_SLO_S) or batch (HADIS_BATCH_SLO_S, served on the "
                   "capacity interactive work leaves); docs/jobs.md")
    p.add_argument("--timeout", type=positive(float), help="how long to wait for the result (default: 120 s, or "
                   "the job's objective and 30 s when longer, as a batch job's is)")
    p.set_defaults(handler=submit)

    p = commands.add_parser("status", help="print a job record, or the cluster (--cluster)")
    p.add_argument("job_id", nargs="?")
    p.add_argument("--cluster", action="store_true", help="which worker serves which tier on which GPU, and the "
                   "service classes: each one's arrivals, the batch backlog by deadline and its placement")
    p.add_argument("--rate-window", type=float, default=1.0, metavar="S",
                   help="with --cluster: seconds over which each class's arrival rate is measured (0: counts only)")
    p.set_defaults(handler=status)

    p = commands.add_parser("cancel", help="cancel a job that has not ended (queued, waiting or generating)")
    p.add_argument("job_id")
    p.set_defaults(handler=cancel)


def add_set_plan_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("set-plan", help="publish a new plan version (operators; the controller owns plans)")
    for name in ("light_model", "heavy_model"):
        p.add_argument(f"--{name.replace('_', '-')}", dest=name)
    for name in ("r", "d"):
        p.add_argument(f"--{name}", type=float)
    for name in ("light_batch", "heavy_batch"):
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=int)
    p.set_defaults(handler=set_plan)


def add_api_key_parser(commands: argparse._SubParsersAction) -> None:
    """`api-key` and its actions: the HTTP api's keys, tenants' limits and the URL secrets."""
    p = commands.add_parser("api-key", help="make, list or revoke the HTTP api's keys (one tenant each) and "
                            "image URLs")
    keys = p.add_subparsers(dest="action", required=True)
    create = keys.add_parser("create", help="a new key for a tenant, printed once")
    create.add_argument("--tenant", required=True, type=tenant_name)
    create.add_argument("--rate", type=positive(float),
                        help="the tenant's units per second, all its keys (a unit is one 512x512 image)")
    create.add_argument("--burst", type=positive(int), help="units at once above the rate")
    create.add_argument("--max-active", type=positive(int), help="units in flight (jobs not yet terminal)")
    create.add_argument("--weight", type=positive(float), help="its share of a saturated fleet (default 1)")
    create.add_argument("--image-mb", type=positive(float), help="image bytes it may add to the store per image TTL")
    create.add_argument("--operator", action="store_true",
                        help="an operator's key: it may also read the fleet's live status (/dashboard), every "
                        "tenant's included")
    create.add_argument("--classes", type=class_names, default=PRIORITIES,
                        help="the service classes its requests may ask for, comma-separated (default: "
                        f"{','.join(PRIORITIES)}); another is refused with 403 priority_not_allowed")
    keys.add_parser("list", help="key ids and tenants (never the keys)")
    revoke = keys.add_parser("revoke", help="delete a key")
    revoke.add_argument("key_id")
    rotate = keys.add_parser("rotate-url-secret", help="a new secret for image URLs; the old one verifies for --grace")
    rotate.add_argument("--grace", type=positive(float), help="seconds the old secret still verifies (default: the "
                        "image TTL, so no URL handed out breaks)")
    keys.add_parser("revoke-urls", help="delete the URL secrets: every signed image URL handed out stops working")
    p.set_defaults(handler=api_key)


def main(argv: list[str] | None = None) -> None:
    from shared.logging import configure
    from shared.settings import get_settings

    args = build_parser().parse_args(argv)
    configure(get_settings(), f"cli-{args.command}")
    result = args.handler(args)
    if asyncio.iscoroutine(result):
        result = asyncio.run(result)
    raise SystemExit(result)
