"""Signed image URLs without HTTP or a store: the signature binds job, expiry and key id; two
secrets verify; anything in the query that is not a well-formed signed URL is `Malformed`, and
nothing raises anything else (the api answered 500 to an unauthenticated `signature=é`)."""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qs

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared import apikeys, urlsigning
from shared.urlsigning import Malformed, Secrets, SignedQuery, Verdict

SECRET, OTHER = b"a" * 64, b"b" * 64
JOB, KEY_ID, EXPIRES = "job-1", "0123456789ab", 2_000_000_000


def params(**values: str) -> dict[str, list[str]]:
    good = dict(parse_qs(urlsigning.query(SECRET, JOB, EXPIRES, KEY_ID)))
    return {**good, **{name: [value] for name, value in values.items()}}


def test_a_url_verifies_until_it_expires_and_under_nothing_else():
    signed = urlsigning.parse(parse_qs(urlsigning.query(SECRET, JOB, EXPIRES, KEY_ID)))
    assert signed == SignedQuery(EXPIRES, KEY_ID, urlsigning.sign(SECRET, JOB, EXPIRES, KEY_ID))
    assert urlsigning.verify(Secrets(SECRET), JOB, signed, EXPIRES) is Verdict.valid
    assert urlsigning.verify(Secrets(SECRET), JOB, signed, EXPIRES + 1) is Verdict.expired
    assert urlsigning.verify(Secrets(OTHER), JOB, signed, 0) is Verdict.forged
    assert urlsigning.verify(Secrets(SECRET), "job-2", signed, 0) is Verdict.forged
    assert urlsigning.verify(Secrets(SECRET), "jöb", signed, 0) is Verdict.forged


def test_the_signature_covers_the_expiry_and_the_key_id():
    signed = urlsigning.parse(params())
    assert signed is not None
    for changed in (SignedQuery(EXPIRES + 1, KEY_ID, signed.signature),
                    SignedQuery(EXPIRES, "ba9876543210", signed.signature)):
        assert urlsigning.verify(Secrets(SECRET), JOB, changed, 0) is Verdict.forged
    # A forged URL is told it is forged, not that it expired: only a genuine one learns that.
    forged = SignedQuery(EXPIRES, KEY_ID, "0" * 64)
    assert urlsigning.verify(Secrets(SECRET), JOB, forged, EXPIRES + 1) is Verdict.forged


def test_the_previous_secret_verifies_too():
    signed = urlsigning.parse(params())
    assert signed is not None
    assert urlsigning.verify(Secrets(OTHER, previous=SECRET), JOB, signed, 0) is Verdict.valid
    assert urlsigning.verify(Secrets(OTHER, previous=b"c" * 64), JOB, signed, 0) is Verdict.forged


def test_no_signature_parameter_means_no_signed_url():
    assert urlsigning.parse({}) is None
    assert urlsigning.parse({"other": ["1"]}) is None


MALFORMED = [
    params(expires="²"),  # "²".isdigit() is True, int("²") raises
    params(expires="9" * 5000),  # int() raises past Python's digit limit
    params(expires="9" * 13),
    params(expires=""),
    params(expires="-1"),
    params(expires="+1"),
    params(expires=" 1"),
    params(expires="1\n"),
    params(expires="１"),  # a fullwidth digit
    params(signature="é"),  # compare_digest raises on non-ASCII str
    params(signature="é" * 64),
    params(signature="A" * 64),
    params(signature="0" * 63),
    params(signature="0" * 65),
    params(signature="0" * 63 + "\n"),
    params(key_id="0123456789AB"),
    params(key_id="0123456789a"),
    params(key_id="../../etc"),
    params(key_id=""),
    {**params(), "signature": ["0" * 64, "1" * 64]},
    {name: value for name, value in params().items() if name != "key_id"},
    {"expires": ["99999999999"], "signature": ["é"]},  # issue 29's query, as it reached the api
]


@pytest.mark.parametrize("query", MALFORMED)
def test_malformed_queries_are_refused_by_name(query):
    with pytest.raises(Malformed) as refused:
        urlsigning.parse(query)
    assert "é" not in str(refused.value) and "²" not in str(refused.value)


@given(st.dictionaries(st.sampled_from([*urlsigning.PARAMS, "x"]), st.lists(st.text(max_size=80), max_size=3)))
def test_no_query_raises_anything_but_malformed(query):
    try:
        signed = urlsigning.parse(query)
    except Malformed:
        return
    if signed is not None:
        assert urlsigning.verify(Secrets(SECRET, OTHER), JOB, signed, 0) in set(Verdict)


def test_the_key_id_format_is_the_api_keys():
    for _ in range(50):
        key, stored = apikeys.new_key("acme")
        assert apikeys.parse_key(key) is not None
        assert urlsigning.parse(parse_qs(urlsigning.query(SECRET, JOB, EXPIRES, stored.key_id))) is not None


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_the_cache_reads_once_per_ttl_and_once_at_a_time():
    clock, reads = Clock(), []

    async def read() -> Secrets:
        reads.append(clock.now)
        await asyncio.sleep(0.01)
        clock.now += 1.0  # a slow read: its age counts from before it
        return Secrets(bytes([len(reads)]))

    cache = urlsigning.SecretCache(read, ttl_s=5.0, clock=clock)
    first = await asyncio.gather(*(cache.get() for _ in range(20)))
    assert reads == [100.0] and {secrets.current for secrets in first} == {b"\x01"}
    clock.now = 104.9
    assert (await cache.get()).current == b"\x01" and len(reads) == 1
    clock.now = 105.0
    assert (await cache.get()).current == b"\x02" and len(reads) == 2
    assert (await urlsigning.SecretCache(read, ttl_s=0.0, clock=clock).get()).current == b"\x03"
