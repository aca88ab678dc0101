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
    experiment.write_unfinished([done, stuck, None], started_at=100.0)
    unfinished = orjson.loads((tmp_path / "unfinished.json").read_bytes())
    assert [job["job_id"] for job in unfinished] == experiment.job_ids[1:]
    assert unfinished[0]["history_s"] == [["queued", 0.0], ["routed", 1.0]] and unfinished[1]["record"] is None


def test_a_run_that_finished_every_job_writes_no_list(tmp_path):
    trace = Trace("t", np.array([0.0]), np.array([1]))
    experiment = Experiment(make_settings(namespace="exp-test"), trace, tmp_path)
    experiment.write_unfinished([record(experiment.job_ids[0], JobState.queued, JobState.done)], started_at=100.0)
    assert not (tmp_path / "unfinished.json").exists()
