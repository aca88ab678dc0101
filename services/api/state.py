"""The one object every route shares: the service's store and bus, the event hub, the key check,
the budgets, the URL secrets and the operator's dashboard. create_app puts it on the app
(app.state.api); a route reaches it with api_of(request), so the routes are plain module functions
and the app holds no other state."""

from __future__ import annotations

from fastapi import Request

from services.api.admission import Admission
from services.api.dashboard import Dashboard
from services.api.keys import Caller, Keys
from services.api.whereabouts import Whereabouts
from shared import urlsigning
from shared.events import EventHub
from shared.images_api import not_found
from shared.schemas import JobRecord, valid_job_id
from shared.service import Service


class Api:
    """What the routes share, apart from HTTP."""

    def __init__(self, service: Service, hub: EventHub) -> None:
        self.service = service
        self.settings = service.settings
        self.store = service.store
        self.hub = hub
        # Read at most this long ago: a rotation or revocation reaches every replica within it.
        self.url_secrets = urlsigning.SecretCache(self.store.url_secrets,
                                                  min(urlsigning.CACHE_S, self.settings.api_key_cache_s))
        self.keys = Keys(service)
        self.admission = Admission(service)
        self.dashboard = Dashboard(service)  # ticks only while an operator looks
        self.whereabouts = Whereabouts(service)  # a job's place in line and its ETA

    async def caller(self, request: Request) -> Caller:
        return await self.keys.caller(request)

    async def own_record(self, caller: Caller, job_id: str) -> JobRecord:
        """The caller's job (404 for another tenant's, as for none), within its read rate."""
        self.admission.admit_read(caller.tenant)
        record = await self.store.get(job_id) if valid_job_id(job_id) else None
        if record is None or record.tenant != caller.tenant:
            raise not_found()
        if record.state.terminal:
            await self.store.release_slots(caller.tenant, [job_id])
        return record


def api_of(request: Request) -> Api:
    """The Api create_app put on the request's app."""
    api: Api = request.app.state.api
    return api
