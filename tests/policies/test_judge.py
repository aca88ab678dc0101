import math

import numpy as np
import pytest

from shared import reference
from shared.policies.judge import JudgeCalibration, calibration_for
from shared.profiles import ModelProfile


def model(reference_index: int | None) -> ModelProfile:
    return ModelProfile(
        name="m", family="sdxl", steps=2, guidance=0.0, resolution=1024, reference_index=reference_index
    )


def test_d_zero_never_escalates():
    calibration = JudgeCalibration(np.linspace(0, 1, 101))
    assert calibration.threshold(0.0) == -math.inf
    assert not calibration.escalate(0.0, 0.0)
    assert not calibration.escalate(-1e9, -0.2)


def test_d_one_always_escalates():
    calibration = JudgeCalibration(np.linspace(0, 1, 101))
    assert calibration.threshold(1.0) == math.inf
    assert calibration.escalate(1.0, 1.0)
    assert calibration.escalate(1e9, 1.3)


def test_d_quantile_of_the_initial_distribution():
    initial = np.random.default_rng(0).random(1000)
    calibration = JudgeCalibration(initial)
    assert calibration.threshold(0.25) == pytest.approx(np.quantile(initial, 0.25))
    escalated = np.mean([calibration.escalate(score, 0.25) for score in initial])
    assert abs(escalated - 0.25) <= 0.01


def test_window_takes_over_after_min_samples():
    calibration = JudgeCalibration(np.linspace(0, 1, 101), window=100, min_samples=10)
    for _ in range(9):
        calibration.observe(5.0)
    assert calibration.threshold(0.5) == pytest.approx(0.5)  # still the initial distribution
    calibration.observe(5.0)
    assert calibration.threshold(0.5) == pytest.approx(5.0)


def test_window_is_bounded():
    calibration = JudgeCalibration(None, window=50, min_samples=10)
    for score in range(1000):
        calibration.observe(float(score))
    assert len(calibration.recent) == 50
    assert calibration.threshold(0.5) == pytest.approx(np.quantile(np.arange(950.0, 1000.0), 0.5))


def test_no_data_uses_the_score_as_its_own_percentile():
    calibration = JudgeCalibration(None)
    assert calibration.threshold(0.3) == 0.3
    assert calibration.escalate(0.2, 0.3)
    assert not calibration.escalate(0.4, 0.3)
    assert JudgeCalibration(np.array([])).threshold(0.3) == 0.3


def test_calibration_for_a_reference_model():
    calibration = calibration_for(model(1))
    scores = reference.judge_scores()[:, 1]
    assert calibration.threshold(0.4) == pytest.approx(np.quantile(scores, 0.4))


def test_calibration_for_a_model_without_reference_scores():
    assert calibration_for(model(None)).threshold(0.4) == 0.4


def test_judge_replicas_on_competing_consumers_converge_to_one_threshold():
    """Two judges share the judge queue (competing consumers, deliveries in prefetch-sized runs): each
    calibrates on its own half of the scores. Their thresholds agree to within the window's sampling
    error, and together they escalate the fraction d that one judge would, also after the score
    distribution shifts (a new light model): no shared state is needed. The one difference: with k
    replicas a window of 2048 spans 2048 k jobs of the stream, so each follows a shift k times slower."""
    rng = np.random.default_rng(7)
    scores = np.concatenate([rng.normal(0.0, 1.0, 8000), rng.normal(1.5, 0.7, 8000)])  # a shift half-way
    d = 0.3
    replicas, alone = [JudgeCalibration(None) for _ in range(2)], JudgeCalibration(None)
    escalated, escalated_alone = [], []
    for start in range(0, len(scores), 8):  # a run of 8 deliveries goes to one replica at random
        judge = replicas[rng.integers(2)]
        for score in scores[start:start + 8]:
            escalated.append(judge.escalate(score, d))
            judge.observe(score)
            escalated_alone.append(alone.escalate(score, d))
            alone.observe(score)
    gap = abs(replicas[0].threshold(d) - replicas[1].threshold(d))
    assert gap < 0.1, gap  # ~0.03 expected: two windows of 2048 draws
    for part in (slice(4200, 8000), slice(12200, 16000)):  # settled (2 x 2048 on), before and after the shift
        assert abs(np.mean(escalated[part]) - d) < 0.03
        assert abs(np.mean(escalated[part]) - np.mean(escalated_alone[part])) < 0.03
