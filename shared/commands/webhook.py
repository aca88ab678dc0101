"""`hadis webhook`: a tenant's default webhook URL and its signing secret (docs/jobs.md, Webhooks),
beside `hadis api-key`. Without --tenant: the jobs that have none (AMQP jobs of the services' own user).

    hadis webhook set --tenant acme --url https://acme.example/hooks   the default for jobs without one
    hadis webhook clear --tenant acme                                  no default any more
    hadis webhook show --tenant acme                                   the URL and the secret(s)
    hadis webhook rotate-secret --tenant acme [--grace 86400]          a new secret; the old one signs too
                                                                       for the grace
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shared.store import Store

DEFAULT_GRACE_S = 86_400.0


def add_parser(commands: argparse._SubParsersAction) -> None:
    from shared.cli import positive, tenant_name

    p = commands.add_parser("webhook", help="a tenant's default webhook URL and its signing secret")
    actions = p.add_subparsers(dest="action", required=True)
    for name, text in (("set", "set the tenant's default URL (jobs that name none get it)"),
                       ("clear", "remove the tenant's default URL"),
                       ("show", "print the tenant's default URL and signing secrets (current first)"),
                       ("rotate-secret", "a new signing secret; the old one signs beside it for --grace")):
        action = actions.add_parser(name, help=text)
        action.add_argument("--tenant", type=tenant_name,
                            help="the tenant (default: jobs without a tenant, e.g. AMQP jobs of the services' user)")
        if name == "set":
            action.add_argument("--url", required=True, type=webhook_url, help="http:// or https:// URL")
        if name == "rotate-secret":
            action.add_argument("--grace", type=positive(float), default=DEFAULT_GRACE_S,
                                help=f"seconds the old secret still signs beside the new (default {DEFAULT_GRACE_S:g})")
    p.set_defaults(handler=run)


def webhook_url(text: str) -> str:
    from shared.schemas import check_webhook_url

    try:
        return check_webhook_url(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


async def run(args: argparse.Namespace) -> int:
    from shared.settings import get_settings
    from shared.store import Store

    store = await Store.connect(get_settings())
    try:
        return await act(args, store)
    finally:
        await store.close()


async def act(args: argparse.Namespace, store: Store) -> int:
    from shared.cli import print_json

    tenant = args.tenant
    if args.action == "set":
        await store.set_tenant_webhook_url(tenant, args.url)
    elif args.action == "clear":
        await store.set_tenant_webhook_url(tenant, None)
    elif args.action == "rotate-secret":
        secret = await store.rotate_webhook_secret(tenant, args.grace)
        print_json({"tenant": tenant, "secret": secret, "previous_signs_for_s": args.grace,
                    "note": "deliveries carry a signature under each secret until the grace ends"})
        return 0
    print_json({"tenant": tenant, "url": await store.tenant_webhook_url(tenant),
                "secrets": await store.webhook_secrets(tenant)})
    return 0
