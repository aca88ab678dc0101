"""One webhook attempt over HTTP, within bounds: resolve the receiver's host, check EVERY address it
resolves to (shared/policies/webhooks.py: address_problem), connect to the checked address itself,
POST, read at most a few KiB of the answer, follow no redirect.

Why connect to the address checked rather than hand httpx the host name: httpx would resolve the
name again, and a name whose DNS answer changes between the two lookups (DNS rebinding: a public
address for the check, 127.0.0.1 for the connection) would walk past the check. So the request goes
to `scheme://<checked address>:<port>/path` with the `Host` header and, for https, the TLS server
name (SNI, and the certificate's check) of the URL's own host.

Why no keep-alive: connections would be pooled by address, and two receivers' host names on one
address (a CDN) would share a TLS connection made for the first one's name. Why no proxy from the
environment (trust_env=False): a proxy would connect wherever it likes, past the check.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx

from shared.policies.webhooks import Attempt, Network, address_problem, parse_networks
from shared.settings import Settings

Resolver = Callable[[str, int], Awaitable[list[str]]]


async def resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to, for TCP, in the resolver's order (an IP literal: itself)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass(frozen=True)
class Bounds:
    """What one attempt may cost (the settings' HADIS_WEBHOOK_*; docs/jobs.md, Webhooks)."""

    connect_s: float = 5.0
    total_s: float = 15.0
    max_response_bytes: int = 4096
    concurrency: int = 32
    allow_private: bool = False
    allowed: tuple[Network, ...] = ()

    @classmethod
    def of(cls, settings: Settings) -> Bounds:
        return cls(settings.webhook_connect_timeout_s, settings.webhook_timeout_s,
                   settings.webhook_max_response_bytes, settings.webhook_concurrency,
                   settings.webhook_allow_private, parse_networks(settings.webhook_allow_networks))


class WebhookClient:
    """Attempts at most `bounds.concurrency` connections at once (the pool's limit; the sender also
    claims no more deliveries than that)."""

    def __init__(self, bounds: Bounds, resolver: Resolver = resolve, verify: ssl.SSLContext | bool = True) -> None:
        """`verify`: httpx's (the system's CAs by default; a test gives a context that trusts its own CA)."""
        self.bounds = bounds
        self.resolver = resolver
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(bounds.total_s, connect=bounds.connect_s), follow_redirects=False, trust_env=False,
            limits=httpx.Limits(max_connections=bounds.concurrency, max_keepalive_connections=0), verify=verify)

    async def close(self) -> None:
        await self._http.aclose()

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> Attempt:
        """One attempt; never raises for the receiver's sake: its outcome says what happened. The
        status counts once it has come, whatever becomes of the rest of the answer (its body is read
        only to bound it: a receiver that trickles it is cut off at the attempt's bound)."""
        status: list[int] = []
        try:
            async with asyncio.timeout(self.bounds.total_s):
                return await self._post(url, body, headers, status)
        except TimeoutError:
            error = f"no answer within {self.bounds.total_s:g} s"
        except (httpx.HTTPError, OSError) as problem:  # OSError: a resolver failure too; tried again later
            error = f"{type(problem).__name__}: {problem}"[:300]
        return Attempt(status=status[0]) if status else Attempt(error=error)

    async def _post(self, url: str, body: bytes, headers: dict[str, str], status: list[int]) -> Attempt:
        try:
            parts = httpx.URL(url)
        except httpx.InvalidURL as error:
            return Attempt(error=f"invalid URL: {error}", refused=True)
        if parts.scheme not in ("http", "https") or not parts.host:
            return Attempt(error="not an http or https URL", refused=True)
        addresses = await self.resolver(parts.host, parts.port or (443 if parts.scheme == "https" else 80))
        if not addresses:
            return Attempt(error=f"{parts.host} resolves to no address")
        for address in addresses:  # every one: a resolver may hand out any of them next time
            problem = address_problem(address, self.bounds.allow_private, self.bounds.allowed)
            if problem is not None:
                return Attempt(error=f"refused: {parts.host} resolves to {problem} (HADIS_WEBHOOK_ALLOW_*)",
                               refused=True)
        target = parts.copy_with(host=addresses[0])
        extensions = {"sni_hostname": parts.host} if parts.scheme == "https" else {}
        request_headers = {**headers, "host": parts.netloc.decode("ascii"), "user-agent": "hadis-webhooks"}
        async with self._http.stream("POST", target, content=body, headers=request_headers,
                                     extensions=extensions) as response:
            status.append(response.status_code)
            read = 0
            if self.bounds.max_response_bytes > 0:
                async for chunk in response.aiter_raw():  # raw: a compressed answer is not inflated either
                    read += len(chunk)
                    if read >= self.bounds.max_response_bytes:
                        break
            return Attempt(status=response.status_code)
