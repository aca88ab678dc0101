"""`hadis status --cluster` against the real Redis (shared/commands/cluster.py: cluster_view): the
classes' arrivals and rate from the store's counters, the batch backlog the transition script keeps,
and the placement of the plan in force, beside the plan, agents and workers it always showed."""

from __future__ import annotations

import asyncio
import time

import pytest

from shared.commands.cluster import cluster_view
from shared.schemas import Job, JobState
from shared.store import Change
from tests.helpers import make_settings, namespace

pytestmark = pytest.mark.integration


async def test_the_cluster_view_shows_each_class_the_backlog_and_the_placement():
    settings = make_settings(batch_slo_s=100.0)
    async with namespace(settings) as (_, store):
        now = time.time()
        batch = [Job(prompt=f"thumbnail {i}", priority="batch", submitted_at=now) for i in range(20)]
        await store.apply_many([Change(job.job_id, JobState.queued,
                                       job.record_fields(job.effective_deadline(6.0, 100.0)), create=True)
                                for job in batch])
        for index in range(3):
            await store.create(f"now-{index}", JobState.queued)
        await store.publish_plan({**settings.static_plan(version=0).model_dump(exclude={"version", "created_at"}),
                                  "batch_heavy": 0.4, "batch_first": ["gpu01"]})
        await store.register_agent("host-a", ["gpu00", "gpu01"], ttl_s=30)

        async def arrive() -> None:
            await asyncio.sleep(0.2)
            for index in range(4):
                await store.create(f"later-{index}", JobState.queued)

        view, _ = await asyncio.gather(cluster_view(store, rate_window_s=1.0), arrive())
    assert view["plan"]["batch_heavy"] == 0.4 and view["agents"] == {"host-a": ["gpu00", "gpu01"]}
    classes = view["classes"]
    assert classes["interactive"]["arrivals"] == 7 and classes["interactive"]["arrivals_qps"] == pytest.approx(4.0)
    assert classes["batch"]["arrivals"] == 20 and classes["batch"]["arrivals_qps"] == 0.0
    backlog = classes["batch"]["backlog"]
    assert backlog["not_ended"] == 20 and backlog["due_within"]["1m"] == 0 and backlog["due_within"]["2m"] == 20
    assert classes["batch"]["placement"] == {"heavy_share": 0.4, "light_share": 0.6, "reserved_gpus": 1,
                                             "reserved": ["gpu01"]}
