"""Fakes at a service's edges (a delivery, a store that applies every change), for tests that
drive the services' own methods without a broker or a store: the engine replay and the intake."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from shared.errors import Disposition
from shared.outcome import Applied, Outcome
from shared.schemas import JobState
from shared.store import Change


@dataclass
class FakeDelivery:
    body: bytes
    delivery_count: int = 1
    stale: bool = False
    message_id: str | None = None
    user_id: str | None = None
    settled: list[Disposition] = field(default_factory=list)

    def tenant_for(self, claimed: str | None) -> str | None:
        return claimed

    async def settle(self, disposition: Disposition) -> None:
        self.settled.append(disposition)


class FakeStore:
    """Applies every change (a claim, a re-route, a served light image) and records it."""

    def __init__(self, gpus: list[str] | None = None) -> None:
        self.changes: list[Change] = []
        self.failed: dict[str, JobState] = {}
        self.gpus = gpus or []

    async def apply(self, change: Change) -> Outcome:
        self.changes.append(change)
        return Outcome(Applied.applied, JobState.routed)

    async def apply_many(self, changes: list[Change]) -> list[Outcome]:
        return [await self.apply(change) for change in changes]

    async def fail(self, job_id: str, state: JobState, reason: str, create_only: bool = False) -> bool:
        self.failed[job_id] = state
        return True

    async def get_plan(self) -> None:
        return None

    async def agents(self) -> dict[str, list[str]]:
        return {"host": self.gpus}

    async def departed_agents(self) -> dict[str, list[str]]:
        return {}

    async def workers(self) -> list[dict[str, Any]]:
        return [{"gpu": gpu, "tier": "light", "model": "fake"} for gpu in self.gpus]

    def __getattr__(self, name: str) -> Any:
        """Any other write (the router's record of a new job, however it is spelled): made, a new
        record (no earlier one to follow)."""
        async def made(*args: Any, **kwargs: Any) -> SimpleNamespace:
            return SimpleNamespace(applied=True, result=None, record=None, before=None)
        return made
