"""API keys: shown once, stored as a salted hash, checked in constant time."""

from __future__ import annotations

import pytest

from shared import apikeys


def test_a_key_verifies_and_its_store_holds_no_secret():
    key, stored = apikeys.new_key("acme")
    key_id, secret = apikeys.parse_key(key)
    assert key_id == stored.key_id and stored.tenant == "acme"
    assert apikeys.verify(stored, secret)
    assert secret not in str(stored.as_fields()) and secret not in stored.digest
    assert apikeys.StoredKey.from_fields(key_id, stored.as_fields()) == stored


def test_wrong_secrets_and_other_salts_fail():
    key, stored = apikeys.new_key("acme")
    _, secret = apikeys.parse_key(key)
    assert not apikeys.verify(stored, secret[:-1] + ("A" if secret[-1] != "A" else "B"))
    other_key, other = apikeys.new_key("acme")
    assert not apikeys.verify(other, secret)
    assert other.salt != stored.salt and other_key != key


@pytest.mark.parametrize("text", ["", "hds_", "hds_abc_def", "sk-123", "hds_0123456789ab_" + "A" * 42,
                                  "hds_0123456789AB_" + "A" * 43, "hds_0123456789ab_" + "A" * 43 + "\n",
                                  "hds_0123456789ab_" + "A" * 42 + "!"])
def test_malformed_keys_are_refused_before_any_lookup(text):
    assert apikeys.parse_key(text) is None


def test_bearer_header():
    assert apikeys.bearer_token("Bearer abc") == "abc"
    assert apikeys.bearer_token("bearer   abc ") == "abc"
    for header in (None, "", "Bearer", "Bearer ", "Basic abc", "abc"):
        assert apikeys.bearer_token(header) is None


@pytest.mark.parametrize("tenant", ["", "-a", "_a", "A", "a" * 65, "a b", "a:b", "é"])
def test_tenant_names_are_bounded(tenant):
    with pytest.raises(ValueError):
        apikeys.new_key(tenant)


def test_an_operators_key_says_so_and_every_other_key_does_not():
    key, stored = apikeys.new_key("ops", operator=True)
    assert stored.operator and stored.as_fields()["operator"] == "1"
    assert apikeys.StoredKey.from_fields(stored.key_id, stored.as_fields()) == stored
    _, tenant = apikeys.new_key("acme")
    assert not tenant.operator and "operator" not in tenant.as_fields()  # stored as keys always were
    before = {"tenant": "acme", "salt": tenant.salt, "digest": tenant.digest, "created_at": "1.5"}
    assert not apikeys.StoredKey.from_fields("0123456789ab", before).operator  # a key made before the flag
