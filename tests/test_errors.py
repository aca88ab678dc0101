import pytest

from shared.errors import (
    BackendFailed,
    Disposition,
    Expired,
    InvalidJob,
    Overloaded,
    StoreRejected,
    Unavailable,
    describe,
    disposition_for,
)


@pytest.mark.parametrize(
    "error, delivery, expected",
    [
        (InvalidJob("bad"), 1, Disposition.dead_letter),
        (Expired("late"), 1, Disposition.ack),
        (Overloaded("full"), 1, Disposition.ack),
        (BackendFailed("oom"), 1, Disposition.requeue),
        (BackendFailed("oom"), 3, Disposition.dead_letter),
        (Unavailable("redis"), 2, Disposition.requeue),
        # An outage does not spend the job's retries (the broker's x-delivery-limit still bounds it).
        (Unavailable("redis"), 3, Disposition.requeue),
        (StoreRejected("WRONGTYPE"), 1, Disposition.dead_letter),
        (RuntimeError("surprise"), 1, Disposition.requeue),
        (RuntimeError("surprise"), 3, Disposition.dead_letter),
    ],
)
def test_disposition_table(error, delivery, expected):
    assert disposition_for(error, delivery, max_deliveries=3) is expected


def test_describe_names_status_and_kind():
    assert describe(InvalidJob("prompt: too long")) == "422 InvalidJob: prompt: too long"
    assert describe(ValueError("x")) == "500 ValueError: x"
