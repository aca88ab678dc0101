"""The HTTP api: the OpenAI Images API and async job routes in front of the same queue.

A thin service like the others: it checks the caller's key (the tenant), admits the request
(rate limit, quota of jobs in flight), validates, publishes `Job`s to the ingress queue with the
broker's confirm, and reads records and images through the store. 202 is answered only after the
confirm: an accepted job is durable, whatever happens to this process next.

    POST   /v1/images/generations   OpenAI-compatible: submit, wait up to the SLO, answer the images
    GET    /v1/models               the latency classes `model` may name
    POST   /v1/jobs                 the Job contract -> 202 {"id"}; Idempotency-Key honoured
    GET    /v1/jobs/{id}            the record
    GET    /v1/jobs/{id}/image      the PNG (ETag), with the key or a signed URL
    GET    /v1/jobs/{id}/events     server-sent events of its state changes, ending at the terminal one
    DELETE /v1/jobs/{id}            cancel while queued: it ends `failed` and is not generated
    GET    /healthz                 200 when the store and the broker answer
    GET    /dashboard               the operator's live page; its data at /v1/ops/dashboard (JSON),
                                    /v1/ops/dashboard/stream (SSE), an operator's key (docs/observability-page.md)
    GET    /openapi.json, /docs     the schema and its page

One room per concern (`python -m services.api` runs it: __main__.py):

    app.py          create_app, the route groups over one Api; main, the service's life
    state.py        Api: what every route shares (store, bus, event hub, keys, budgets, URL secrets)
    routes/         images.py (OpenAI Images API), jobs.py (async jobs), ops.py (health), dashboard.py (the page)
    dashboard.py    the page's one ticker: reads the fleet once a second for every viewer (shared/dashboard/)
    static/         the page's HTML, script and style (package data)
    keys.py         who is calling: API keys and tenants' limits, cached
    admission.py    every budget a tenant is charged (its rules in shared/policies/tenancy.py)
    submission.py   publish with confirms, the `queued` record, withdrawal on a 503
    signing.py      signed image URLs (the scheme in shared/urlsigning.py)
    streaming.py    waiting for terminal records, server-sent events, the streamed images body
    bodies.py, errors.py, middleware.py   bounded request bodies, OpenAI's error shape, the middlewares
    server.py       uvicorn inside the service's loop

Rules live elsewhere: shapes and the request-to-jobs mapping in shared/images_api.py, keys in
shared/apikeys.py. Bounds: docs/security.md."""

from services.api.app import create_app, main
from services.api.state import Api

__all__ = ["Api", "create_app", "main"]
