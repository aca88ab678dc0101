"""What the controller reports about the cluster for alerting (docs/observability.md): which agents
register, and which stopped without leaving while their GPUs are still planned with."""

from __future__ import annotations

from services.controller import ClusterGauges
from shared import metrics


def agent_up(host: str) -> float | None:
    return metrics.REGISTRY.get_sample_value("hadis_agent_up", {"host": host})


def controller() -> ClusterGauges:
    return ClusterGauges()


def test_an_agent_that_stops_registering_is_down_until_its_gpus_leave_the_plan():
    watcher = controller()
    watcher.note_agents({"a": ["a0", "a1"], "b": ["b0"]}, {}, ["a0", "a1", "b0"])
    assert agent_up("a") == agent_up("b") == 1
    watcher.note_agents({"a": ["a0", "a1"]}, {}, ["a0", "a1", "b0"])  # b quiet, its GPU in its grace
    assert agent_up("a") == 1 and agent_up("b") == 0
    watcher.note_agents({"a": ["a0", "a1"]}, {}, ["a0", "a1"])  # the grace ran out
    assert agent_up("b") is None and "b" not in watcher.hosts


def test_a_clean_departure_is_not_an_agent_down():
    watcher = controller()
    watcher.note_agents({"a": ["a0"], "b": ["b0"]}, {}, ["a0", "b0"])
    watcher.note_agents({"a": ["a0"]}, {"b": ["b0"]}, ["a0"])
    assert agent_up("b") is None and agent_up("a") == 1
