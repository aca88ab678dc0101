"""The webhook sender: POSTs each job's terminal event to the job's webhook URL, signed as Standard
Webhooks sign (docs/jobs.md, Webhooks).

Thin: the store holds the schedule and every delivery's state (shared/store/webhooks.py; the
transition script makes each delivery in the same change that makes its job terminal), the policy
decides (shared/policies/webhooks.py: retries, addresses, signatures), the client makes one bounded
attempt (shared/webhook_client.py). This process only claims what is due, tries it and settles it.
It keeps nothing that matters in memory: kill it at any point and the deliveries it held are due
again when their leases end, for whichever sender runs then (any number may run at once).
"""

from __future__ import annotations

import asyncio
import random
import time
from datetime import UTC, datetime

import orjson

from shared import metrics
from shared.errors import describe
from shared.images_api import record_view
from shared.logging import get_logger
from shared.policies import webhooks as policy
from shared.service import Service, run
from shared.store import Claim
from shared.webhook_client import Bounds, WebhookClient

log = get_logger(__name__)


def lease_s(timeout_s: float) -> float:
    """How long a claim holds a delivery: twice an attempt's bound and 5 s for the store's round
    trips, so a live sender always settles before anyone else may claim the same delivery."""
    return 2 * timeout_s + 5.0


def schedule_of(service: Service) -> policy.RetrySchedule:
    settings = service.settings
    return policy.RetrySchedule(settings.webhook_max_attempts, settings.webhook_retry_first_s,
                                settings.webhook_retry_max_s, settings.webhook_retry_jitter)


class Sender:
    """Claims due deliveries (no more than it has connections free), tries each in a task of its own."""

    def __init__(self, service: Service, client: WebhookClient | None = None) -> None:
        self.service = service
        self.store = service.store
        self.settings = service.settings
        self.client = client or WebhookClient(Bounds.of(self.settings))
        self.schedule = schedule_of(service)
        self.lease_s = lease_s(self.settings.webhook_timeout_s)
        self.tasks: set[asyncio.Task] = set()

    async def run(self) -> None:
        stopping = self.service.stopping
        metrics.mark_ready("webhooks")
        try:
            while not stopping.is_set():
                free = self.settings.webhook_concurrency - len(self.tasks)
                if free <= 0:  # every connection busy: claim again as soon as one is free
                    await asyncio.wait(set(self.tasks), timeout=self.settings.webhook_poll_s,
                                       return_when=asyncio.FIRST_COMPLETED)
                    continue
                claims = await self._claim(free)
                for claim in claims:
                    task = asyncio.create_task(self.deliver(claim), name=f"webhook-{claim.job_id}")
                    self.tasks.add(task)
                    task.add_done_callback(self.tasks.discard)
                if len(claims) < free:  # nothing more due now: wait a poll (or the stop)
                    try:
                        await asyncio.wait_for(stopping.wait(), self.settings.webhook_poll_s)
                    except TimeoutError:
                        pass
        finally:
            metrics.mark_ready("webhooks", False)
            await self._drain()
            await self.client.close()

    async def _claim(self, free: int) -> list[Claim]:
        try:
            return await self.store.claim_webhooks(free, self.lease_s)
        except Exception as error:  # Redis away beyond the store's retries: try again next poll
            log.warning("webhook_claim_failed", error=describe(error))
            return []

    async def _drain(self) -> None:
        """Let attempts under way finish (each is bounded); the rest are due again after their lease."""
        if self.tasks:
            _, pending = await asyncio.wait(set(self.tasks), timeout=min(self.settings.shutdown_grace_s,
                                                                         self.settings.webhook_timeout_s + 1))
            for task in pending:
                task.cancel()

    async def deliver(self, claim: Claim) -> None:
        """One attempt of one delivery, and its outcome stored. A failure here (the store away) leaves
        the claim to lapse: the delivery is tried again after its lease, nothing is lost."""
        try:
            body = await self.body(claim)
            secrets = await self.store.webhook_secrets(claim.tenant)
            headers = policy.headers(secrets, message_id(claim), int(time.time()), body)
            started = time.monotonic()
            outcome = await self.client.post(claim.url, body, headers)
            step = policy.after_attempt(self.schedule, claim.attempt, outcome, random.random())
            settled = await self.store.settle_webhook(claim, step.state, step.delay_s, outcome.status, outcome.error)
            result = "retry" if step.state is policy.DeliveryState.pending else step.state.value
            metrics.observe_webhook_attempt(result, time.time() - claim.at)
            log.info("webhook_attempt", job_id=claim.job_id, attempt=claim.attempt, status=outcome.status,
                     error=outcome.error or None, state=step.state.value, retry_in_s=round(step.delay_s, 3),
                     took_s=round(time.monotonic() - started, 3), settled=settled)
        except Exception as error:
            log.warning("webhook_attempt_failed", job_id=claim.job_id, attempt=claim.attempt, error=describe(error))

    async def body(self, claim: Claim) -> bytes:
        """The event: its type, when the job ended, and the job as the api shows it (without the
        image: its URL instead). A record gone from the store (its TTL) leaves the id and the state."""
        record = await self.store.get(claim.job_id)
        state = claim.type.removeprefix("job.")
        data = record_view(record) if record is not None else {"job_id": claim.job_id, "state": state}
        if state == "done":
            data["image_url"] = f"{(self.settings.api_public_url or '').rstrip('/')}/v1/jobs/{claim.job_id}/image"
        event = {"type": claim.type, "timestamp": datetime.fromtimestamp(claim.at, UTC).isoformat(), "data": data}
        return orjson.dumps(event)


def message_id(claim: Claim) -> str:
    """The `webhook-id`: one per event, the same on every attempt (a receiver's key to drop repeats)."""
    return f"{claim.type}.{claim.job_id}"


async def main(service: Service) -> None:
    await Sender(service).run()


if __name__ == "__main__":
    run("webhooks", main)
