"""A worker's busy-time counters carried to the next worker on its GPU (shared/busy_carry.py): what
one leaves, the next takes once, malformed or foreign series are not carried."""

from __future__ import annotations

import json

import pytest

from shared import busy_carry, metrics


def busy(tier: str, priority: str) -> float:
    return metrics.REGISTRY.get_sample_value("hadis_class_busy_seconds_total", {"tier": tier, "priority": priority})


def carried(counter: str, priority: str) -> float:
    return metrics.REGISTRY.get_sample_value("hadis_carried_seconds", {"counter": counter, "priority": priority})


def test_what_a_worker_leaves_is_its_totals(tmp_path):
    metrics.observe_class_busy("light", "batch", 2.5)
    path = tmp_path / "gpu0.busy.json"
    busy_carry.leave(path)
    left = json.loads(path.read_text())
    series = {(s["labels"]["tier"], s["labels"]["priority"]): s["value"] for s in left["hadis_class_busy_seconds"]}
    assert series[("light", "batch")] == pytest.approx(busy("light", "batch"))
    assert [p.name for p in tmp_path.iterdir()] == ["gpu0.busy.json"]  # no partial file left behind


def test_the_next_worker_takes_it_once(tmp_path):
    path = tmp_path / "gpu0.busy.json"
    path.write_text(json.dumps({
        "hadis_class_busy_seconds": [
            {"labels": {"tier": "heavy", "priority": "interactive"}, "value": 7.0},
            {"labels": {"tier": "nowhere", "priority": "interactive"}, "value": 100.0},  # not a tier
            {"labels": {"tier": "heavy"}, "value": 100.0},  # not its labels
            {"labels": {"tier": "heavy", "priority": "batch"}, "value": float("nan")},
            "not a series"],
        "hadis_batch_yield_lost_seconds": [{"labels": {"tier": "light"}, "value": 0.5}]}))
    busy_before, lost_before = busy("heavy", "interactive"), \
        metrics.REGISTRY.get_sample_value("hadis_batch_yield_lost_seconds_total", {"tier": "light"})
    carried_before = carried("hadis_class_busy_seconds", "interactive") or 0.0
    busy_carry.take(path)
    assert busy("heavy", "interactive") == pytest.approx(busy_before + 7.0)
    assert carried("hadis_class_busy_seconds", "interactive") == pytest.approx(carried_before + 7.0)
    assert metrics.REGISTRY.get_sample_value("hadis_batch_yield_lost_seconds_total",
                                             {"tier": "light"}) == pytest.approx(lost_before + 0.5)
    assert not path.exists()
    busy_carry.take(path)  # nothing left: nothing carried twice
    assert busy("heavy", "interactive") == pytest.approx(busy_before + 7.0)


def test_an_unreadable_file_carries_nothing_and_is_removed(tmp_path):
    path = tmp_path / "gpu0.busy.json"
    path.write_text("{not json")
    before = busy("light", "interactive")
    busy_carry.take(path)
    assert busy("light", "interactive") == before and not path.exists()
    path.write_bytes(b" " * (busy_carry.MAX_FILE_BYTES + 1))
    busy_carry.take(path)
    assert not path.exists()
