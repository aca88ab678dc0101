"""The learned router: predicts from the prompt alone whether the judge would escalate
the light model's image, and sends the most likely fraction r straight to heavy.

score(prompt) = w · embed(prompt) + b, the log-odds that the light model's image
scores in the judge's lowest fraction d (= LABEL_D, 0.3) of that model's scores,
i.e. that the judge would escalate it at d. One L2-regularised logistic
regression per light model of the paper (reference columns 0, 1, 2), trained on
the 5,000 reference prompts and their published judge scores, plus a "pooled"
one trained on the mean of the three light models' labels for light models
without their own (every model outside the reference set).

r is a percentile over the reference prompts, as for the rule router: each
classifier carries the quantiles of its own scores on them, so r = 0.3 sends 30 %
of a reference-like load heavy. The file is written by
scripts/train_learned_router.py; the embedding function is passed in (from
shared/backends/text_embedding.py) so this module never imports torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import orjson
from pydantic import Field

from shared.profiles import PROFILES_DIR, ModelProfile
from shared.schemas import Strict

ROUTERS_DIR = PROFILES_DIR / "routers"
DEFAULT_ROUTER_FILE = ROUTERS_DIR / "learned-minilm.json"
LIGHT_INDICES = (0, 1, 2)  # the paper's light models (model 3, SD3.5-Large, is only ever heavy)
POOLED = "pooled"
LABEL_D = 0.3
L2 = 1.0  # the inverse of scikit-learn's C: 1.0 is its default
CALIBRATION_POINTS = 1001

EmbedFn = Callable[[Sequence[str]], np.ndarray]


class LinearClassifier(Strict):
    weights: list[float]
    bias: float
    calibration: list[float] = Field(description="Quantiles of the score over the reference prompts, "
                                                 "at levels 0, 1/(n-1), ..., 1.")
    trained_on: str = ""

    def decision(self, embeddings: np.ndarray) -> np.ndarray:
        return np.asarray(embeddings, dtype=float) @ np.asarray(self.weights) + self.bias


class LearnedRouterFile(Strict):
    description: str
    embedding: str
    embedding_dim: int
    label_d: float
    l2: float
    classifiers: dict[str, LinearClassifier]


def escalation_labels(judge_scores: np.ndarray, d: float = LABEL_D) -> np.ndarray:
    """1 where the judge would escalate at d: below the d-quantile (JudgeCalibration.escalate)."""
    scores = np.asarray(judge_scores, dtype=float)
    return (scores < np.quantile(scores, d)).astype(float)


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve of `scores` for binary `labels` (Mann-Whitney, ties count half)."""
    positive = np.asarray(labels, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("ROC AUC needs both classes")
    from scipy.stats import rankdata  # here, not at the top: the router service never trains (scipy.stats: 0.7 s)

    ranks = rankdata(np.asarray(scores, dtype=float))
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def fit_logistic(embeddings: np.ndarray, labels: np.ndarray, l2: float = L2) -> tuple[np.ndarray, float]:
    """L2-regularised logistic regression (the bias unpenalised), by L-BFGS: (weights, bias).

    Minimises 0.5 * l2 * |w|^2 + the summed log loss, scikit-learn's objective with C = 1 / l2.
    Labels may be soft (in [0, 1]): the pooled classifier learns the fraction of light models
    whose image the judge would escalate."""
    from scipy.optimize import minimize  # here, not at the top: offline training only (see roc_auc)
    from scipy.special import expit, log_expit

    x = np.asarray(embeddings, dtype=float)
    y = np.asarray(labels, dtype=float)

    def loss_and_gradient(params: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = params[:-1], params[-1]
        logits = x @ w + b
        loss = -(y * log_expit(logits) + (1.0 - y) * log_expit(-logits)).sum() + 0.5 * l2 * w @ w
        residual = expit(logits) - y
        gradient = np.append(x.T @ residual + l2 * w, residual.sum())
        return float(loss), gradient

    start = np.zeros(x.shape[1] + 1)
    result = minimize(loss_and_gradient, start, jac=True, method="L-BFGS-B", options={"maxiter": 2000})
    return result.x[:-1], float(result.x[-1])


def train_classifier(embeddings: np.ndarray, labels: np.ndarray, trained_on: str, l2: float = L2) -> LinearClassifier:
    weights, bias = fit_logistic(embeddings, labels, l2)
    scores = np.asarray(embeddings, dtype=float) @ weights + bias
    levels = np.linspace(0.0, 1.0, CALIBRATION_POINTS)
    return LinearClassifier(weights=weights.tolist(), bias=bias, calibration=np.quantile(scores, levels).tolist(),
                            trained_on=trained_on)


def train_router_file(embeddings: np.ndarray, judge_scores: np.ndarray, embedding: str,
                      d: float = LABEL_D, l2: float = L2) -> LearnedRouterFile:
    """One classifier per light model (column of `judge_scores`) and one pooled over them."""
    labels = {index: escalation_labels(judge_scores[:, index], d) for index in LIGHT_INDICES}
    classifiers = {
        str(index): train_classifier(embeddings, labels[index], f"reference model {index}, d = {d}", l2)
        for index in LIGHT_INDICES
    }
    pooled_labels = np.mean([labels[index] for index in LIGHT_INDICES], axis=0)
    classifiers[POOLED] = train_classifier(embeddings, pooled_labels,
                                           f"reference models {list(LIGHT_INDICES)} (mean label), d = {d}", l2)
    return LearnedRouterFile(
        description="Learned router: logistic regression from a prompt embedding to 'the judge would escalate "
                    "the light model's image at d'; one classifier per light reference model, and 'pooled'.",
        embedding=embedding,
        embedding_dim=int(embeddings.shape[1]),
        label_d=d,
        l2=l2,
        classifiers=classifiers,
    )


def save_router_file(router_file: LearnedRouterFile, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(router_file.model_dump(mode="json")))


@lru_cache(maxsize=4)
def load_router_file(path: Path = DEFAULT_ROUTER_FILE) -> LearnedRouterFile:
    return LearnedRouterFile.model_validate(orjson.loads(Path(path).read_bytes()))


def classifier_key(model: ModelProfile) -> str:
    """A paper light model has its own classifier; any other model uses the pooled one."""
    if model.reference_index in LIGHT_INDICES:
        return str(model.reference_index)
    return POOLED


class LearnedRouter:
    """Same surface as RuleRouter: score(prompt), threshold(r), goes_heavy(score, r)."""

    inline = False  # an embedding per prompt: the router scores these in batches, off the event loop

    def __init__(self, classifier: LinearClassifier, embed: EmbedFn) -> None:
        self.classifier = classifier
        self.embed = embed
        self.levels = np.linspace(0.0, 1.0, len(classifier.calibration))
        self.calibration = np.asarray(classifier.calibration, dtype=float)

    @classmethod
    def for_model(cls, model: ModelProfile, embed: EmbedFn, path: Path = DEFAULT_ROUTER_FILE) -> LearnedRouter:
        return cls(load_router_file(path).classifiers[classifier_key(model)], embed)

    def score_many(self, prompts: Sequence[str]) -> np.ndarray:
        if not prompts:
            return np.zeros(0)
        return self.classifier.decision(self.embed(list(prompts)))

    def score(self, prompt: str) -> float:
        return float(self.score_many([prompt])[0])

    def threshold(self, r: float) -> float:
        """The score at or above which a prompt goes heavy, for heavy fraction r."""
        if r <= 0:
            return float("inf")
        if r >= 1:
            return float("-inf")
        return float(np.interp(1.0 - r, self.levels, self.calibration))

    def goes_heavy(self, score: float, r: float) -> bool:
        return score >= self.threshold(r)

    def route_heavy(self, prompt: str, r: float) -> bool:
        return self.goes_heavy(self.score(prompt), r)
