"""The paper's rule-based router: score = z-scored prompt features · w.

The hardest fraction r of prompts (highest scores) goes straight to the heavy
model. r is a percentile over a calibration set, the 5,000 reference prompts, so
that "r = 0.3" sends 30 % of a reference-like load to heavy whatever the score
scale. Reference prompts are scored from their published features (exactly the
paper's numbers); any other prompt from shared.policies.featurizer.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property, lru_cache

import numpy as np

from shared import reference
from shared.policies.featurizer import featurize

# diffserve-2 / HADIS: the weight vector the authors selected, in FEATURE_NAMES order.
PAPER_WEIGHTS = np.array([0.85, 0.32, 0.72, 0.99, 0.76, 0.07, 0.78, 0.01])

Featurizer = Callable[[str], np.ndarray]


class RuleRouter:
    def __init__(
        self,
        weights: np.ndarray = PAPER_WEIGHTS,
        featurizer: Featurizer = featurize,
        calibration: np.ndarray | None = None,
    ) -> None:
        """`calibration`: the scores r is a percentile of; the reference prompts' by default."""
        self.weights = np.asarray(weights, dtype=float)
        self.featurizer = featurizer
        self._calibration = None if calibration is None else np.asarray(calibration, dtype=float)
        published = reference.features()
        self.mean = published.mean(axis=0)
        # ddof=1 as the authors' pandas code; a constant feature gets std 1 (it adds nothing).
        std = published.std(axis=0, ddof=1)
        self.std = np.where(std > 0, std, 1.0)

    @cached_property
    def reference_scores(self) -> np.ndarray:
        """Scores of the reference prompts, in prompt-id order."""
        return self.score_features(reference.features())

    @property
    def calibration_scores(self) -> np.ndarray:
        return self.reference_scores if self._calibration is None else self._calibration

    def score_features(self, features: np.ndarray) -> np.ndarray:
        """Scores of one (8,) feature vector or an (n, 8) array."""
        return ((np.asarray(features, dtype=float) - self.mean) / self.std) @ self.weights

    def features(self, prompt: str) -> np.ndarray:
        prompt_id = reference.prompt_id(prompt)
        if prompt_id is not None:
            return reference.features()[prompt_id]
        return self.featurizer(prompt)

    def score(self, prompt: str) -> float:
        prompt_id = reference.prompt_id(prompt)
        if prompt_id is not None:
            return float(self.reference_scores[prompt_id])
        return float(self.score_features(self.featurizer(prompt)))

    def threshold(self, r: float) -> float:
        """The score at or above which a prompt goes heavy, for heavy fraction r."""
        if r <= 0:
            return float("inf")
        if r >= 1:
            return float("-inf")
        return float(np.quantile(self.calibration_scores, 1.0 - r))

    def goes_heavy(self, score: float, r: float) -> bool:
        return score >= self.threshold(r)

    def route_heavy(self, prompt: str, r: float) -> bool:
        return self.goes_heavy(self.score(prompt), r)


@lru_cache(maxsize=1)
def default_router() -> RuleRouter:
    """One shared router with the paper's weights (its calibration is computed once)."""
    return RuleRouter()
