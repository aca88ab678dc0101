"""The experiment runner's record of the jobs a run gave up on (the report counts them lost)."""

from __future__ import annotations

import numpy as np
import orjson

from shared.experiments.runner import Experiment
from shared.experiments.trace import Trace
from shared.schemas import JobRecord, JobState, Transition
from tests.helpers import make_settings


def record(job_id: str, *states: JobState) -> JobRecord:
    return JobRecord(job_id=job_id, state=states[-1], submitted_at=100.0, deadline=106.0,
                     history=[Transition(state=s, at=100.0 + i) for i, s in enumerate(states)])


def test_unfinished_jobs_are_written_with_their_history(tmp_path):
    trace = Trace("t", np.array([0.0, 0.5, 1.0]), np.array([1, 2, 3]))
    experiment = Experiment(make_settings(namespace="exp-test"), trace, tmp_path)
    done, stuck = (record(experiment.job_ids[0], JobState.queued, JobState.done),
                   record(experiment.job_ids[1], JobState.queued, JobState.routed))
    experiment.write_job_lists([done, stuck, None], started_at=100.0)
    unfinished = orjson.loads((tmp_path / "unfinished.json").read_bytes())
    assert [job["job_id"] for job in unfinished] == experiment.job_ids[1:]
    assert unfinished[0]["history_s"] == [["queued", 0.0], ["routed", 1.0]] and unfinished[1]["record"] is None


def test_jobs_that_missed_their_slo_are_written_with_their_history(tmp_path):
    """Done within the SLO: not written; done after it, shed or failed: written (the SLO is 6 s;
    `record` puts one second between steps, from 100 s, and the run starts at 100 s)."""
    trace = Trace("t", np.array([0.0, 0.0, 0.0, 0.0]), np.array([1, 2, 3, 4]))
    experiment = Experiment(make_settings(namespace="exp-test", slo_s=6.0), trace, tmp_path)
    ids = experiment.job_ids
    in_time = record(ids[0], JobState.queued, JobState.routed, JobState.done)
    late = record(ids[1], *[JobState.queued] * 7, JobState.done)
    shed = record(ids[2], JobState.queued, JobState.expired)
    failed = record(ids[3], JobState.queued, JobState.failed)
    experiment.write_job_lists([in_time, late, shed, failed], started_at=100.0)
    missed = orjson.loads((tmp_path / "missed.json").read_bytes())
    assert [job["job_id"] for job in missed] == ids[1:]
    assert missed[0]["history_s"][-1] == ["done", 7.0]
    assert not (tmp_path / "unfinished.json").exists()


def test_a_run_that_finished_every_job_writes_no_list(tmp_path):
    trace = Trace("t", np.array([0.0]), np.array([1]))
    experiment = Experiment(make_settings(namespace="exp-test"), trace, tmp_path)
    experiment.write_job_lists([record(experiment.job_ids[0], JobState.queued, JobState.done)], started_at=100.0)
    assert not (tmp_path / "unfinished.json").exists() and not (tmp_path / "missed.json").exists()
