"""The learned router: the committed classifiers, their percentile calibration, and the fit."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from scipy.stats import mannwhitneyu

from shared import reference
from shared.backends.text_embedding import embed_prompts
from shared.policies.learned_router import (
    DEFAULT_ROUTER_FILE,
    LIGHT_INDICES,
    POOLED,
    LearnedRouter,
    escalation_labels,
    fit_logistic,
    load_router_file,
    roc_auc,
    train_router_file,
)
from shared.profiles import load_profile

# Every 10th reference prompt: 500 prompts spread over the file (its order is not random),
# embedded once for these tests (a few seconds on the CPU).
SAMPLE = np.arange(0, 5000, 10)


@pytest.fixture(scope="module")
def sample_embeddings() -> np.ndarray:
    prompts = reference.prompts()
    return embed_prompts([prompts[i] for i in SAMPLE])


@pytest.fixture(scope="module")
def router() -> LearnedRouter:
    return LearnedRouter.for_model(load_profile("paper-l40s").model("sdxl-lightning"), embed_prompts)


def heavy_fraction(router: LearnedRouter, scores: np.ndarray, r: float) -> float:
    return float(np.mean([router.goes_heavy(score, r) for score in scores]))


def test_committed_file_has_a_classifier_per_light_model_and_a_pooled_one() -> None:
    router_file = load_router_file(DEFAULT_ROUTER_FILE)
    assert set(router_file.classifiers) == {"0", "1", "2", POOLED}
    for classifier in router_file.classifiers.values():
        assert len(classifier.weights) == router_file.embedding_dim == 384
        assert classifier.calibration == sorted(classifier.calibration)


def test_each_light_model_gets_its_own_classifier_and_others_the_pooled_one() -> None:
    router_file = load_router_file(DEFAULT_ROUTER_FILE)
    paper = load_profile("paper-l40s")
    for name, key in (("sdxl-lightning", "0"), ("sd35-large-turbo", "1"), ("sd35-medium", "2"),
                      ("sd35-large", POOLED)):
        assert LearnedRouter.for_model(paper.model(name), embed_prompts).classifier == router_file.classifiers[key]
    tiny = load_profile("tiny-cpu").model("tiny-sd-turbo")
    assert LearnedRouter.for_model(tiny, embed_prompts).classifier == router_file.classifiers[POOLED]


def test_r_zero_sends_none_and_r_one_sends_all(router: LearnedRouter) -> None:
    assert router.threshold(0.0) == math.inf and router.threshold(-1.0) == math.inf
    assert router.threshold(1.0) == -math.inf and router.threshold(2.0) == -math.inf
    assert not router.goes_heavy(1e9, 0.0)
    assert router.goes_heavy(-1e9, 1.0)


def test_r_is_a_percentile_of_the_reference_prompts(router: LearnedRouter, sample_embeddings: np.ndarray) -> None:
    # The stored calibration comes from all 5,000 prompts; a sample of 500 lands within
    # about two binomial standard deviations (0.02 at r = 0.3) of r.
    scores = router.classifier.decision(sample_embeddings)
    for r in (0.1, 0.3, 0.5, 0.9):
        assert abs(heavy_fraction(router, scores, r) - r) <= 0.05
    assert heavy_fraction(router, scores, 0.0) == 0.0
    assert heavy_fraction(router, scores, 1.0) == 1.0
    thresholds = [router.threshold(r) for r in (0.1, 0.3, 0.5, 0.9)]
    assert thresholds == sorted(thresholds, reverse=True)


def test_scores_prompts_through_the_embedding(router: LearnedRouter, sample_embeddings: np.ndarray) -> None:
    prompts = [reference.prompts()[i] for i in SAMPLE[:3]]
    assert router.score(prompts[0]) == pytest.approx(router.classifier.decision(sample_embeddings[:1])[0], abs=1e-4)
    assert np.allclose(router.score_many(prompts), router.classifier.decision(sample_embeddings[:3]), atol=1e-4)
    assert router.score_many([]).shape == (0,)


def test_unknown_prompts_get_finite_deterministic_scores(router: LearnedRouter) -> None:
    for prompt in ("", "a surreal painting of a cat wearing a top hat, trending on artstation", "!!!", "x" * 2000):
        assert reference.prompt_id(prompt) is None
        score = router.score(prompt)
        assert math.isfinite(score) and score == router.score(prompt)


def test_in_sample_it_predicts_the_judge_and_the_paper_score_does_not(sample_embeddings: np.ndarray) -> None:
    router_file = load_router_file(DEFAULT_ROUTER_FILE)
    scores = reference.judge_scores()
    for index in LIGHT_INDICES:
        labels = escalation_labels(scores[:, index])[SAMPLE]
        learned = router_file.classifiers[str(index)].decision(sample_embeddings)
        assert roc_auc(labels, learned) > 0.7  # in sample; cross-validated figures: hadis router-eval


def test_escalation_labels_are_the_lowest_d() -> None:
    scores = np.arange(100.0)
    labels = escalation_labels(scores, 0.3)
    assert labels.sum() == 30 and labels[:30].all()


def test_roc_auc_matches_mann_whitney() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    scores = np.round(rng.normal(size=200) + labels, 1)  # with ties
    u = mannwhitneyu(scores[labels == 1], scores[labels == 0]).statistic
    assert roc_auc(labels, scores) == pytest.approx(u / (labels.sum() * (200 - labels.sum())))
    assert roc_auc([0, 0, 1, 1], [1, 2, 3, 4]) == 1.0
    assert roc_auc([1, 1, 0, 0], [1, 2, 3, 4]) == 0.0
    assert roc_auc([0, 1], [5, 5]) == 0.5
    with pytest.raises(ValueError):
        roc_auc([1, 1], [0.1, 0.2])


def test_fit_logistic_recovers_a_known_model() -> None:
    rng = np.random.default_rng(1)
    true_weights, true_bias = np.array([2.0, -1.0, 0.0]), 0.5
    x = rng.normal(size=(20_000, 3))
    labels = (rng.random(20_000) < 1 / (1 + np.exp(-(x @ true_weights + true_bias)))).astype(float)
    weights, bias = fit_logistic(x, labels, l2=1e-3)
    assert np.allclose(weights, true_weights, atol=0.1)
    assert bias == pytest.approx(true_bias, abs=0.1)


def test_training_writes_calibrated_classifiers(sample_embeddings: np.ndarray) -> None:
    router_file = train_router_file(sample_embeddings, reference.judge_scores()[SAMPLE], "test")
    for key, classifier in router_file.classifiers.items():
        router = LearnedRouter(classifier, embed_prompts)
        scores = classifier.decision(sample_embeddings)
        # Calibrated on exactly these prompts: r is met to the sample's granularity.
        for r in (0.1, 0.3, 0.5):
            assert abs(heavy_fraction(router, scores, r) - r) <= 0.005, key


def test_the_policy_does_not_import_torch() -> None:
    code = ("import sys; import shared.policies.learned_router, shared.commands.router_eval; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_router_service_does_not_import_scipy() -> None:
    """Every router process (a fault test's cluster, a compose stack) paid 1.2 s of imports for the
    scipy that only offline training uses (fit_logistic, roc_auc)."""
    code = "import sys; import services.router; assert 'scipy' not in sys.modules, 'scipy imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
