"""Image URLs: signed, so a client can hand them on without its key (as OpenAI's are), and bound to
that key, so revoking it revokes them. The signature scheme is shared/urlsigning.py; here is what
the api grants on it."""

from __future__ import annotations

import time

from fastapi import Request

from services.api.state import Api
from shared import urlsigning
from shared.images_api import ApiError, not_found
from shared.schemas import JobRecord, valid_job_id


async def image_url(api: Api, request: Request, job_id: str, key_id: str) -> str:
    """A URL of the job's image, valid as long as the image is stored and the key is not revoked."""
    expires = int(time.time()) + api.store.image_ttl
    base = (api.settings.api_public_url or str(request.base_url)).rstrip("/")
    secret = (await api.url_secrets.get()).current
    return f"{base}/v1/jobs/{job_id}/image?{urlsigning.query(secret, job_id, expires, key_id)}"


async def signed(api: Api, job_id: str, request: Request) -> JobRecord | None:
    """The record a signed URL grants; None when the query carries no signature (the key decides).
    Anybody may call this: nothing is read from the store before the signature verifies, and a
    genuine URL's fetches count against its key's tenant's read rate, as the tenant's own would."""
    params = request.query_params
    try:
        query = urlsigning.parse({name: params.getlist(name) for name in urlsigning.PARAMS})
    except urlsigning.Malformed as error:
        raise ApiError(401, f"malformed image URL: {error}", code="invalid_signature") from None
    if query is None:
        return None
    verdict = urlsigning.Verdict.forged if not valid_job_id(job_id) else \
        urlsigning.verify(await api.url_secrets.get(), job_id, query, time.time())
    if verdict is urlsigning.Verdict.forged:
        raise ApiError(401, "the image URL's signature does not verify (altered, or its secret was rotated "
                       "or revoked)", code="invalid_signature")
    if verdict is urlsigning.Verdict.expired:
        raise ApiError(403, "the image URL has expired", code="url_expired")
    stored = await api.keys.stored_key(query.key_id)
    if stored is None:
        raise ApiError(403, "the API key that made this image URL was revoked", code="url_revoked")
    api.admission.admit_read(stored.tenant)  # a URL's fetches count as its key's tenant's reads
    record = await api.store.get(job_id)
    if record is not None and record.tenant != stored.tenant:
        raise ApiError(403, "the API key that made this image URL was revoked", code="url_revoked")
    if record is None:
        raise not_found()
    return record
