"""The webhook sender's decisions: the retry schedule, the address policy, the signature (checked
against the Standard Webhooks reference algorithm written out here, and its published test vector)."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from shared.policies.webhooks import (
    Attempt,
    DeliveryState,
    RetrySchedule,
    address_problem,
    after_attempt,
    headers,
    new_secret,
    parse_networks,
    signature,
)

DEFAULT = RetrySchedule()


def test_the_default_schedule_tries_ten_times_over_about_an_hour() -> None:
    delays = [DEFAULT.delay_s(attempt, 0.5) for attempt in range(1, DEFAULT.max_attempts)]
    assert delays == [8, 16, 32, 64, 128, 256, 512, 1024, 1800]
    assert 3000 < sum(delays) < 4500
    assert DEFAULT.horizon_s() == pytest.approx(sum(delays) * 1.2)


@pytest.mark.parametrize("rand", [0.0, 0.25, 0.999])
def test_jitter_moves_each_wait_by_at_most_its_share(rand: float) -> None:
    for attempt in range(1, 12):
        base = min(8 * 2 ** (attempt - 1), 1800)
        assert base * 0.8 <= DEFAULT.delay_s(attempt, rand) <= base * 1.2


def test_two_random_draws_give_two_waits() -> None:
    assert DEFAULT.delay_s(3, 0.1) != DEFAULT.delay_s(3, 0.9)


@pytest.mark.parametrize(("outcome", "attempt", "state"), [
    (Attempt(status=200), 1, DeliveryState.delivered),
    (Attempt(status=204), 10, DeliveryState.delivered),
    (Attempt(status=500), 1, DeliveryState.pending),
    (Attempt(status=301), 1, DeliveryState.pending),  # redirects are not followed: a failure
    (Attempt(status=429), 9, DeliveryState.pending),
    (Attempt(error="timeout"), 3, DeliveryState.pending),
    (Attempt(status=500), 10, DeliveryState.failed),  # the attempts are spent
    (Attempt(status=410), 1, DeliveryState.failed),  # the receiver says it is gone
    (Attempt(error="refused: loopback", refused=True), 1, DeliveryState.failed),
])
def test_after_an_attempt(outcome: Attempt, attempt: int, state: DeliveryState) -> None:
    step = after_attempt(DEFAULT, attempt, outcome, 0.5)
    assert step.state is state
    assert (step.delay_s > 0) == (state is DeliveryState.pending)


@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.8.9.1", "::1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "fe80::1",
    "fe80::1%eth0", "fc00::1", "fd12::1", "224.0.0.1", "ff02::1", "ff0e::1", "0.0.0.0", "::", "240.0.0.1",
    "255.255.255.255", "100.64.0.1", "192.0.2.1", "198.18.0.1", "::ffff:127.0.0.1", "::ffff:10.0.0.1",
    "2002:7f00:1::1", "2002:a00:1::1", "not-an-address",
])
def test_addresses_that_are_not_global_unicast_are_refused(address: str) -> None:
    assert address_problem(address) is not None


@pytest.mark.parametrize("address", ["8.8.8.8", "93.184.215.14", "2001:4860:4860::8888", "::ffff:8.8.8.8"])
def test_global_addresses_pass(address: str) -> None:
    assert address_problem(address) is None


def test_an_allowed_network_or_allow_private_lets_a_private_address_pass() -> None:
    allowed = parse_networks("127.0.0.1, 10.0.0.0/8")
    assert address_problem("127.0.0.1", allowed=allowed) is None
    assert address_problem("10.9.9.9", allowed=allowed) is None
    assert address_problem("127.0.0.2", allowed=allowed) is not None
    assert address_problem("::ffff:10.1.1.1", allowed=allowed) is None  # judged as the IPv4 it carries
    assert address_problem("192.168.0.1", allow_private=True) is None


def test_a_malformed_network_is_refused() -> None:
    with pytest.raises(ValueError):
        parse_networks("10.0.0.0/33")


def reference_signature(secret: str, message_id: str, timestamp: str, body: bytes) -> str:
    """Standard Webhooks, written from the spec: base64 HMAC-SHA256 of `id.timestamp.body`, the key
    the base64 after `whsec_`."""
    key = base64.b64decode(secret.split("_", 1)[1])
    return "v1," + base64.b64encode(hmac.new(key, f"{message_id}.{timestamp}.".encode() + body,
                                             hashlib.sha256).digest()).decode()


def test_the_signature_matches_the_specs_test_vector() -> None:
    # The example of the Standard Webhooks specification (and of its libraries' tests).
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    assert signature(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body) == \
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_the_signature_is_the_reference_algorithms_under_every_secret() -> None:
    current, previous = new_secret(), new_secret()
    assert current.startswith("whsec_") and len(base64.b64decode(current[6:])) == 32
    sent = headers([current, previous], "job.done.abc", 1_700_000_000, b'{"a":1}')
    assert sent["webhook-id"] == "job.done.abc" and sent["webhook-timestamp"] == "1700000000"
    assert sent["webhook-signature"].split(" ") == [
        reference_signature(secret, "job.done.abc", "1700000000", b'{"a":1}') for secret in (current, previous)]
