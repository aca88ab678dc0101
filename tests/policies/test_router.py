import math

import numpy as np
import pytest
from scipy.stats import spearmanr

from shared import reference
from shared.policies.featurizer import featurize_many
from shared.policies.router import PAPER_WEIGHTS, RuleRouter, default_router


def heavy_fraction(router: RuleRouter, r: float) -> float:
    return float(np.mean([router.goes_heavy(score, r) for score in router.calibration_scores]))


def test_r_zero_sends_nothing_heavy():
    router = default_router()
    assert router.threshold(0.0) == math.inf
    assert heavy_fraction(router, 0.0) == 0.0
    assert not router.goes_heavy(1e9, -0.5)


def test_r_one_sends_everything_heavy():
    router = default_router()
    assert router.threshold(1.0) == -math.inf
    assert heavy_fraction(router, 1.0) == 1.0
    assert router.goes_heavy(-1e9, 1.5)


def test_heavy_fraction_tracks_r():
    router = default_router()
    assert abs(heavy_fraction(router, 0.3) - 0.3) <= 0.01
    for r in (0.05, 0.1, 0.5, 0.7, 0.9):
        assert abs(heavy_fraction(router, r) - r) <= 0.01


def test_threshold_decreases_with_r():
    router = default_router()
    thresholds = [router.threshold(r) for r in (0.1, 0.3, 0.5, 0.9)]
    assert thresholds == sorted(thresholds, reverse=True)


def test_reference_prompts_use_published_features():
    router = default_router()
    published = reference.features()
    ours = featurize_many(reference.prompts()[:300])
    # a prompt our featurizer gets wrong still scores from its published features
    prompts = reference.prompts()
    differing = next(
        i for i in range(300) if not np.array_equal(ours[i], published[i]) and reference.prompt_id(prompts[i]) == i
    )
    prompt = prompts[differing]
    assert np.array_equal(router.features(prompt), published[differing])
    assert router.score(prompt) == router.calibration_scores[differing]
    assert router.score(prompt) == pytest.approx(router.score_features(published[differing]))
    assert router.score(prompt) != pytest.approx(router.score_features(ours[differing]))


def test_paper_score_is_z_scored_features_dot_weights():
    router = default_router()
    published = reference.features()
    z = (published - published.mean(axis=0)) / published.std(axis=0, ddof=1)
    assert np.allclose(router.calibration_scores, z @ PAPER_WEIGHTS)


def test_unknown_prompts_get_finite_scores():
    router = default_router()
    for prompt in ("", "a surreal painting of a cat wearing a top hat, trending on artstation", "!!!", "x" * 2000):
        assert reference.prompt_id(prompt) is None
        assert math.isfinite(router.score(prompt))


def test_harder_prompts_score_higher():
    router = default_router()
    hard = "a woman in a white shirt and shorts is about to hit a volleyball on the beach"
    assert router.score("a cat") < router.score(hard)


def test_router_scores_from_our_features_rank_like_the_published_ones():
    router = default_router()
    ours = router.score_features(featurize_many(reference.prompts()))
    assert spearmanr(ours, router.calibration_scores)[0] > 0.95


def test_constant_feature_does_not_divide_by_zero(monkeypatch):
    published = reference.features().copy()
    published[:, 7] = 0.0
    monkeypatch.setattr(reference, "features", lambda: published)
    router = RuleRouter()
    assert router.std[7] == 1.0
    assert np.all(np.isfinite(router.calibration_scores))


def test_custom_calibration_set():
    router = RuleRouter(calibration=np.arange(100.0))
    assert router.threshold(0.1) == np.quantile(np.arange(100.0), 0.9)
    assert heavy_fraction(router, 0.25) == 0.25
