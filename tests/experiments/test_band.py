"""The simulator's band (shared/experiments/band.py): its grid, its range and the agreement rule."""

from __future__ import annotations

import pytest

from shared.experiments.band import (
    FID_TOLERANCE,
    VIOLATION_TOLERANCE,
    Band,
    Point,
    agrees,
    perturbations,
    points_of,
)


def test_the_grid_is_four_phases_of_the_period_with_three_start_times_each_nominal_first():
    grid = perturbations(6.0, 3.0, 1.25)
    assert len(grid) == 12
    assert (grid[0].offset_s, grid[0].worker_start_s, grid[0].worker_start_each_s) == (0.0, 3.0, 1.25)
    assert sorted({p.offset_s for p in grid}) == [0.0, 1.5, 3.0, 4.5]
    assert {(p.worker_start_s, p.worker_start_each_s) for p in grid} == {(3.0, 1.25), (2.5, 1.1), (3.5, 1.4)}
    # Start times never go below zero.
    assert min(p.worker_start_s for p in perturbations(60.0, 0.2, 0.0)) == 0.0


def test_a_band_is_the_range_of_its_runs_and_keeps_the_first_as_nominal():
    band = Band.of([Point(0.03, 24.7), Point(0.01, 24.8), Point(0.04, None), Point(0.02, 24.6)])
    assert band.nominal == Point(0.03, 24.7)
    assert band.violations == (0.01, 0.04) and band.fid == (24.6, 24.8) and band.runs == 4
    assert Band.from_json(band.to_json()) == band
    with pytest.raises(ValueError):
        Band.of([])


def test_an_experiment_agrees_within_the_band_widened_by_the_target():
    band = Band.of([Point(0.02, 22.0), Point(0.05, 22.4)])
    assert agrees(Point(0.035, 22.2), band)
    assert agrees(Point(0.05 + VIOLATION_TOLERANCE - 1e-9, 22.4 + FID_TOLERANCE - 1e-9), band)
    assert not agrees(Point(0.05 + VIOLATION_TOLERANCE + 1e-6, 22.2), band)  # too many violations
    assert not agrees(Point(0.02 - VIOLATION_TOLERANCE - 1e-6, 22.2), band)  # too few: it disagrees too
    assert not agrees(Point(0.03, 22.0 - FID_TOLERANCE - 1e-6), band)
    assert not agrees(Point(0.03, None), band)  # nothing done against a band that did
    assert agrees(Point(0.0, None), Band.of([Point(0.0, None)]))


def test_points_come_from_reports():
    reports = [{"slo_violation_ratio": 0.1, "mean_fid": 20.0}, {"slo_violation_ratio": 0.0, "mean_fid": None}]
    assert points_of(reports) == [Point(0.1, 20.0), Point(0.0, None)]
