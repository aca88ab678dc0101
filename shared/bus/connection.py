"""Reaching the broker: retrying through an outage, and the nodes of a cluster in turn.

Outages: a service waits for the broker at start (HADIS_CONNECT_RETRY_S, with backoff) and
through it at run time: both connections are aio-pika's robust ones, which reconnect and
restore channels and consumers. A cluster is several URLs; every connection attempt takes the
next one, so a dead node costs one attempt, not an outage.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import aio_pika
from aio_pika.abc import AbstractRobustConnection
from aio_pika.exceptions import AMQPError, ChannelInvalidStateError, ChannelPreconditionFailed
from aiormq.exceptions import ChannelAccessRefused
from yarl import URL

from shared.errors import Unavailable
from shared.logging import get_logger
from shared.settings import Settings

log = get_logger("shared.bus")  # one logger for the whole bus: operators filter on it
T = TypeVar("T")

RECONNECT_INTERVAL_S = 1.0
CONNECT_TIMEOUT_S = 10.0
BACKOFF_FIRST_S, BACKOFF_MAX_S = 0.25, 5.0  # between attempts to connect, declare or start a consumer
CONNECTION_ERRORS = (AMQPError, ChannelInvalidStateError, ConnectionError, OSError, asyncio.TimeoutError,
                     RuntimeError)  # aio-pika raises RuntimeError for a robust connection that is reconnecting


async def retry(what: str, attempt: Callable[[], Awaitable[T]], bound_s: float) -> T:
    """Run `attempt` until it succeeds, backing off between failures, for at most bound_s; then
    raise Unavailable. Only connection-level failures are retried."""
    give_up_at = time.monotonic() + bound_s
    delay = BACKOFF_FIRST_S
    while True:
        try:
            return await attempt()
        except (ChannelPreconditionFailed, ChannelAccessRefused):
            raise  # a configuration error (arguments that differ, permissions), not an outage
        except CONNECTION_ERRORS as error:
            if time.monotonic() + delay > give_up_at:
                raise Unavailable(f"{what}: RabbitMQ unavailable for {bound_s:.0f} s: {error}") from error
            log.warning("broker_retry", what=what, error=str(error) or type(error).__name__, retry_in_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX_S)


def broker_urls(text: str) -> list[str]:
    """HADIS_AMQP_URL: one broker URL, or several separated by commas (the nodes of a cluster)."""
    return [url.strip() for url in text.split(",") if url.strip()]


def service_users(settings: Settings) -> frozenset[str]:
    """Whose messages are the services' own: the users of HADIS_AMQP_URL (one per cluster, usually)."""
    return frozenset(URL(url).user or "guest" for url in broker_urls(settings.amqp_url.get_secret_value()))


class FailoverConnection(aio_pika.RobustConnection):
    """A robust connection that tries the cluster's nodes in turn: each connection attempt (the
    first, and every reconnection after a node died) takes the next URL, so a dead node costs one
    failed attempt (RECONNECT_INTERVAL_S), not an outage. aio-pika reads `url` once per connection
    attempt (and once when constructed); printing the connection does not move it on."""

    def __init__(self, url: object, *args: object, failover_urls: list[str] | None = None, **kwargs: object) -> None:
        self._urls = [URL(each) for each in (failover_urls or [str(url)])]
        self._next = 0
        self.current = self._urls[0]
        super().__init__(url, *args, **kwargs)  # type: ignore[arg-type]
        self._next = 0  # the constructor's read: the first attempt still takes the first URL

    @property
    def url(self) -> URL:
        url = self._urls[self._next % len(self._urls)]
        self._next += 1
        self.current = url
        return url

    @url.setter
    def url(self, value: URL) -> None:
        pass  # the list given at construction is the truth

    @property
    def user(self) -> str:
        """The user this connection logs in as now (aiormq's default: guest)."""
        return self.current.user or "guest"

    def __str__(self) -> str:
        return str(self.current.with_password("******") if self.current.password else self.current)


async def open_connection(settings: Settings, role: str) -> AbstractRobustConnection:
    """The first node that answers, of the cluster's (a first attempt that fails is not retried
    by aio-pika: the next node is tried here; `retry` repeats the round)."""
    urls = broker_urls(settings.amqp_url.get_secret_value())
    if not urls:
        raise ValueError("HADIS_AMQP_URL names no broker")
    failure: BaseException = ConnectionError("no broker answered")
    for first in range(len(urls)):
        order = urls[first:] + urls[:first]
        try:
            return await aio_pika.connect_robust(
                order[0],
                timeout=CONNECT_TIMEOUT_S,
                reconnect_interval=RECONNECT_INTERVAL_S,
                client_properties={"connection_name": f"hadis-{settings.namespace}-{role}"},
                connection_class=FailoverConnection,
                failover_urls=order,
            )
        except CONNECTION_ERRORS as error:
            failure = error
    raise failure
