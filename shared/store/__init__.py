"""Redis: job records, images, the plan and completion events; the only module that imports redis.

Keys of a namespace `ns` (every key has a TTL):

    ns:job:<id>           hash   the record's scalar fields
    ns:job:<id>:history   list   one Transition JSON per state change
    ns:image:<id>         string the final PNG
    ns:image:<id>:light   string the light model's PNG, kept for the judge
    ns:done:<id>          pub/sub channel: the terminal state, published once
    ns:events             stream every transition (job_id, state, at, tier, model), capped
    ns:arrivals           counter jobs recorded `queued` (the controller's demand), set by the transition script
                          (expires like a record: a counter that went back only resets the controller's baseline)
    ns:arrivals:batch     counter batch jobs recorded `queued` (no demand of the interactive plan's: counted apart)
    ns:batch:due          zset   batch jobs not yet ended, scored by deadline (the batch backlog, transition.lua)
    ns:plan               string the current Plan JSON;  ns:plan:version  its counter
    ns:plan:history       list   the last PLAN_HISTORY plans published (JSON, newest first, with their reasons)
    ns:agent:<host>       string an agent's GPUs (JSON), expires unless renewed
    ns:agent-left:<host>  string the GPUs of an agent that shut down cleanly (JSON), for AGENT_LEFT_TTL_S
    ns:worker:<gpu>       string a worker's heartbeat (tier, model, pid, host), expires unless renewed
    ns:lease:<name>       string the holder of a lease (the planning controller)
    ns:owner:<gpu>/<pid>  string a worker's liveness: its `generating` claims hold while it exists
    ns:cancels            pub/sub channel: each cancelled job's id (shared/store/progress.py)
    ns:progress           stream the progress of running batches, capped (shared/store/progress.py)
    ns:waiting:<tier>     zset   the tier's waiting line: jobs routed or escalated there, not yet claimed
    ns:waiting:<tier>:batch  zset  the same for the tier's batch jobs (a line of their own)
    ns:preview:<id>:<i>   string a job's i-th preview while it generates, for 10 minutes (shared/store/previews.py)

The HTTP api's keys (docs/security.md):

    ns:api:key:<id>           hash   an API key's tenant, salt and salted hash; no TTL (revoked by deleting)
    ns:api:tenant:<tenant>    hash   the tenant's limits (rate, burst, max_active); no TTL
    ns:api:rate:<tenant>      string the tenant's GCRA time (shared/policies/tenancy.py), expires when idle
    ns:api:bytes:<tenant>     string the GCRA time of its image-bytes budget, expires when idle
    ns:api:slots:<tenant>     zset   the tenant's jobs not yet terminal, scored by when the slot lapses
    ns:api:units:<tenant>     hash   those jobs' units (pixels over 512x512), expires with the slots
    ns:api:inflight           hash   every tenant's units in flight (the fair share's total)
    ns:api:lapse              zset   when each tenant's last slot lapses (a tenant gone quiet leaves the total)
    ns:api:idem:<tenant>:<h>  string the job an Idempotency-Key (SHA-256 h) was given, for job_ttl_s
    ns:api:url-secret         string the secret that signs image URLs, made by an api that finds none; no TTL
    ns:api:url-secret:prev    string the secret before the last rotation, for its grace (shared/urlsigning.py)

Webhooks (shared/store/webhooks.py, docs/jobs.md):

    ns:webhooks:due               zset   job ids by when their delivery is next due, until delivered or failed
    ns:job:<id>:webhook           hash   the job's delivery (url, type, state, attempts, last status, next attempt)
    ns:api:webhook:<tenant>       hash   the tenant's default webhook `url` and signing `secret`; no TTL
    ns:api:webhook:<tenant>:prev  string the secret before the last rotation, for its grace

Job keys, and the api's rate and idempotency keys, have TTLs; keys, tenants and the URL secret are
configuration and last until deleted. State changes run as Lua scripts (a job's: transition.lua), so
each is atomic. Terminal states are final: a second `done` for a redelivered job is a no-op, which is
what makes completion idempotent (exactly one visible result per job).
"""

from __future__ import annotations

from shared.store.cluster import AGENT_LEFT_TTL_S, Cluster
from shared.store.events import JobEvents
from shared.store.previews import JobPreviews
from shared.store.progress import JobProgress
from shared.store.records import Change, JobRecords, Upsert, Upserted, hand_back, owner_id, serve_light
from shared.store.tenants import Tenants
from shared.store.transition import EVENTS_MAX_LENGTH
from shared.store.webhooks import Claim, Webhooks

__all__ = ["AGENT_LEFT_TTL_S", "EVENTS_MAX_LENGTH", "Change", "Claim", "Store", "Upsert", "Upserted", "hand_back",
           "owner_id", "serve_light"]


class Store(JobProgress, JobPreviews, JobRecords, JobEvents, Cluster, Tenants, Webhooks):
    """Every part of the store on one connection: what the services hold as `service.store`."""
