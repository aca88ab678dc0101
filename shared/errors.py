"""One error hierarchy; `disposition_for` decides ack, requeue or dead-letter in one place.

Status codes follow text-generation-inference's taxonomy so that a reader of a
record knows at a glance whose fault a failure was:
422 the job itself is bad, 424 the model failed on it, 429 the system is
overloaded, 503 an outside system is briefly unavailable, 408 too late.
"""

from __future__ import annotations

from enum import StrEnum


class Disposition(StrEnum):
    ack = "ack"  # done with it (result stored, or a terminal record written)
    requeue = "requeue"  # try again: another delivery will come
    dead_letter = "dead_letter"  # give up: the message goes to the dead-letter queue


class HadisError(Exception):
    status = 500
    retryable = True

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class InvalidJob(HadisError):
    """The message is not a valid job: wrong JSON, fields, bounds. Never retried."""

    status = 422
    retryable = False


class BackendFailed(HadisError):
    """The model raised on this batch; retried up to the delivery bound."""

    status = 424


class Overloaded(HadisError):
    """Admission control refused the job: a queue is at its bound."""

    status = 429
    retryable = False


class Unavailable(HadisError):
    """RabbitMQ or Redis could not be reached; the work is requeued."""

    status = 503


class StoreRejected(HadisError):
    """Redis answered, but refused the command (a key of the wrong type, a script error): not an
    outage, so retrying cannot help."""

    status = 500
    retryable = False


class Expired(HadisError):
    """The job's deadline passed before it could be generated."""

    status = 408
    retryable = False


def disposition_for(error: BaseException, delivery_count: int, max_deliveries: int) -> Disposition:
    """What to do with a message whose handling raised `error` on its `delivery_count`-th delivery
    (1 = first). Unknown exceptions count as backend failures: bounded retries, then dead-letter."""
    if isinstance(error, (Expired, Overloaded)):
        # A terminal record says what happened; the message itself is fine, so no dead letter.
        return Disposition.ack
    if isinstance(error, HadisError) and not error.retryable:
        return Disposition.dead_letter
    if isinstance(error, Unavailable):
        # An outage is not the job's fault: it does not spend the job's retries (the store
        # already waited HADIS_STORE_RETRY_S). The broker's x-delivery-limit still bounds it.
        return Disposition.requeue
    if delivery_count >= max_deliveries:
        return Disposition.dead_letter
    return Disposition.requeue


def describe(error: BaseException) -> str:
    """The readable reason written into a failed record."""
    if isinstance(error, HadisError):
        return f"{error.status} {type(error).__name__}: {error.reason}"
    return f"500 {type(error).__name__}: {error}"
