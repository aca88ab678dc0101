"""`hadis api-key`: a key is printed once, the store keeps only its salted hash, and revoking works."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from shared import apikeys
from shared.store import Store
from tests.helpers import make_settings

pytestmark = [pytest.mark.integration]

HADIS = str(Path(sys.executable).with_name("hadis"))


def hadis(namespace: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([HADIS, *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "HADIS_NAMESPACE": namespace, "HADIS_LOG_LEVEL": "warning"})


async def test_create_list_revoke():
    settings = make_settings()
    store = await Store.connect(settings)
    try:
        made = hadis(settings.namespace, "api-key", "create", "--tenant", "acme", "--rate", "5", "--max-active", "3")
        assert made.returncode == 0, made.stderr
        printed = orjson.loads(made.stdout)
        key_id, secret = apikeys.parse_key(printed["key"])
        stored = await store.get_api_key(key_id)
        assert stored is not None and stored.tenant == "acme" and apikeys.verify(stored, secret)
        raw = await store._redis.hgetall(f"{settings.namespace}:api:key:{key_id}")
        assert secret.encode() not in b"".join(k + v for k, v in raw.items())
        limits = await store.tenant_limits("acme")
        assert (limits.rate, limits.burst, limits.max_active) == (5.0, settings.api_burst, 3)

        assert printed["operator"] is False and not stored.operator
        operator = orjson.loads(hadis(settings.namespace, "api-key", "create", "--tenant", "ops", "--operator").stdout)
        assert operator["operator"] is True
        operator_id, _ = apikeys.parse_key(operator["key"])
        assert (await store.get_api_key(operator_id)).operator
        assert hadis(settings.namespace, "api-key", "revoke", operator_id).returncode == 0

        assert printed["classes"] == ["interactive", "batch"] and stored.classes == ("interactive", "batch")
        limited = orjson.loads(hadis(settings.namespace, "api-key", "create", "--tenant", "acme", "--classes",
                                     "batch").stdout)
        limited_id, _ = apikeys.parse_key(limited["key"])
        assert limited["classes"] == ["batch"] and (await store.get_api_key(limited_id)).classes == ("batch",)
        listed = orjson.loads(hadis(settings.namespace, "api-key", "list").stdout)
        assert [(entry["key_id"], entry["classes"]) for entry in listed] == [(key_id, ["interactive", "batch"]),
                                                                              (limited_id, ["batch"])]
        assert hadis(settings.namespace, "api-key", "revoke", limited_id).returncode == 0
        bad = hadis(settings.namespace, "api-key", "create", "--tenant", "acme", "--classes", "urgent")
        assert bad.returncode == 2 and "--classes" in bad.stderr

        listed = orjson.loads(hadis(settings.namespace, "api-key", "list").stdout)
        assert [entry["key_id"] for entry in listed] == [key_id] and "key" not in listed[0]
        assert listed[0]["operator"] is False

        assert hadis(settings.namespace, "api-key", "revoke", key_id).returncode == 0
        assert await store.get_api_key(key_id) is None
        assert hadis(settings.namespace, "api-key", "revoke", key_id).returncode == 1
        refused = hadis(settings.namespace, "api-key", "create", "--tenant", "Not Valid")
        assert refused.returncode == 2 and "--tenant" in refused.stderr
    finally:
        await store.delete_namespace()
        await store.close()
