"""Who is calling: the tenant behind an API key, and that tenant's limits. Both are read from the
store and trusted for HADIS_API_KEY_CACHE_S, so a request costs no store round trip for them while
a revocation or a new limit still reaches every replica within that time (docs/security.md)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from fastapi import Request

from shared import apikeys, metrics
from shared.images_api import ApiError
from shared.policies import tenancy
from shared.schemas import PRIORITIES
from shared.service import Service

ANONYMOUS = "-"  # the tenant a refusal is counted under before a key is checked
V = TypeVar("V")


class Recent(Generic[V]):
    """Values read from the store, trusted for ttl_s, at most BOUND of them (then forgotten at
    once: a flood of distinct keys cannot grow the process). What the store lacks is not kept."""

    BOUND = 10_000

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._values: dict[str, tuple[V, float]] = {}

    async def get(self, key: str, read: Callable[[], Awaitable[V | None]]) -> V | None:
        cached = self._values.get(key)
        if cached is not None and time.monotonic() - cached[1] < self.ttl_s:
            return cached[0]
        value = await read()
        if value is not None:
            if len(self._values) >= self.BOUND:
                self._values.clear()
            self._values[key] = (value, time.monotonic())
        return value


@dataclass(frozen=True)
class Caller:
    tenant: str
    limits: tenancy.Limits
    key_id: str = ""
    operator: bool = False  # the key may read the fleet's status (services/api/routes/dashboard.py)
    classes: tuple[str, ...] = PRIORITIES  # the service classes the key may ask for (shared/apikeys.py)

    def check_class(self, priority: object) -> None:
        """403 `priority_not_allowed` for a known class the key may not use, before any job is made;
        anything else passes (a value that is not a class is the request's validation's 400)."""
        if priority in PRIORITIES and priority not in self.classes:
            metrics.observe_api_refused(self.tenant, "class")
            raise ApiError(403, f"this API key may not submit {priority} jobs (a request without `priority` is "
                           f"interactive); it may submit: {', '.join(self.classes)}", type="permission_error",
                           code="priority_not_allowed", param="priority")


class Keys:
    """The key check and the tenants' limits, each behind a Recent cache of its own."""

    def __init__(self, service: Service) -> None:
        self.settings = service.settings
        self.store = service.store
        self.keys: Recent[apikeys.StoredKey] = Recent(self.settings.api_key_cache_s)
        self._tenant_limits: Recent[tenancy.Limits] = Recent(self.settings.api_key_cache_s)

    async def caller(self, request: Request) -> Caller:
        """The caller behind the request's bearer key, else 401 (counted as anonymous). The tenant is
        left in the request's scope for the request metrics."""
        token = apikeys.bearer_token(request.headers.get("authorization"))
        parsed = apikeys.parse_key(token) if token else None
        if parsed is None:
            metrics.observe_api_refused(ANONYMOUS, "auth")
            raise ApiError(401, "missing or malformed API key: send `Authorization: Bearer hds_...` "
                           "(hadis api-key create --tenant NAME makes one)", code="invalid_api_key")
        key_id, secret = parsed
        stored = await self.stored_key(key_id)
        if stored is None or not apikeys.verify(stored, secret):
            metrics.observe_api_refused(ANONYMOUS, "auth")
            raise ApiError(401, "invalid API key", code="invalid_api_key")
        request.scope.setdefault("state", {})["tenant"] = stored.tenant
        return Caller(stored.tenant, await self.limits(stored.tenant), key_id, stored.operator, stored.classes)

    async def operator(self, request: Request) -> Caller:
        """The caller behind an operator's key: 401 without a valid key (as caller), 403 for a tenant's."""
        caller = await self.caller(request)
        if not caller.operator:
            metrics.observe_api_refused(caller.tenant, "operator")
            raise ApiError(403, "this API key is not an operator's: the fleet's status needs one "
                           "(hadis api-key create --tenant NAME --operator)", type="permission_error",
                           code="operator_key_required")
        return caller

    async def stored_key(self, key_id: str) -> apikeys.StoredKey | None:
        return await self.keys.get(key_id, lambda: self.store.get_api_key(key_id))

    async def limits(self, tenant: str) -> tenancy.Limits:
        """The tenant's own limits (hadis api-key create --rate ...), else the settings' defaults."""
        settings = self.settings
        defaults = tenancy.Limits(settings.api_rate_per_s, settings.api_burst, settings.api_max_active,
                                  image_mb=settings.api_image_mb)

        async def read() -> tenancy.Limits:
            return await self.store.tenant_limits(tenant) or defaults

        return await self._tenant_limits.get(tenant, read) or defaults
