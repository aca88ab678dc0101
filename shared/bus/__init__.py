"""RabbitMQ: the queue topology, declared in one place, and the only package that imports aio-pika.

Topology of a namespace `ns` (every name is prefixed, so experiments are isolated):

    ns.requests      quorum  ingress: Job JSON from any backend
    ns.requests.batch quorum ingress of batch-class jobs (docs/classes.md): never in front of interactive ones
    ns.tier.light    quorum  Task for the light workers
    ns.tier.heavy    quorum  Task for the heavy workers
    ns.judge         quorum  Task for the quality judge
    ns.ingress       fanout exchange whose one queue is ns.requests (producers' door)
    ns.ingress.batch fanout exchange whose one queue is ns.requests.batch (the batch door)
    ns.dlx           fanout exchange: where every work queue dead-letters
    ns.dead          quorum  dead letters kept for operators (bounded, oldest dropped)
    ns.dead.watch    quorum  dead letters the controller turns into `failed` records

One module per concern, so that none grows past what a reader holds at once:

    topology.py     queue names, bounds and dead-lettering; declaring and deleting a namespace
    connection.py   connecting to a cluster's nodes, retrying through an outage
    publishing.py   publishes with confirms, on a connection of their own
    consuming.py    consumers and the Delivery that services settle
    core.py         the Bus that services hold, which ties them together

Callers import from `shared.bus` only: the split is this package's business.
"""

from shared.bus.connection import (
    BACKOFF_FIRST_S,
    BACKOFF_MAX_S,
    CONNECT_TIMEOUT_S,
    CONNECTION_ERRORS,
    RECONNECT_INTERVAL_S,
    FailoverConnection,
    broker_urls,
    retry,
)
from shared.bus.consuming import Consumer, Delivery, DeliveryHandler
from shared.bus.core import INSPECT_TIMEOUT_S, Bus
from shared.bus.topology import (
    BROKER_MAX_MESSAGE_BYTES,
    DEAD_LETTER_DELIVERY_LIMIT,
    DEAD_LETTER_MAX_LENGTH,
    QUEUE_BYTES_PER_MESSAGE,
    Queues,
)

__all__ = [
    "BACKOFF_FIRST_S",
    "BACKOFF_MAX_S",
    "BROKER_MAX_MESSAGE_BYTES",
    "CONNECTION_ERRORS",
    "CONNECT_TIMEOUT_S",
    "DEAD_LETTER_DELIVERY_LIMIT",
    "DEAD_LETTER_MAX_LENGTH",
    "INSPECT_TIMEOUT_S",
    "QUEUE_BYTES_PER_MESSAGE",
    "RECONNECT_INTERVAL_S",
    "Bus",
    "Consumer",
    "Delivery",
    "DeliveryHandler",
    "FailoverConnection",
    "Queues",
    "broker_urls",
    "retry",
]
