"""Judge threshold d as a percentile of the judge's recent scores.

The judge scores each light image (higher = more real-looking); the lowest-d
fraction is escalated to the heavy model. The percentile is taken over a bounded
window of recent scores once it holds enough of them, so it follows the live
score distribution; before that, over the model's reference distribution
(reference.judge_scores() for the paper models); with no data at all the score
is taken as its own percentile.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from shared import reference
from shared.profiles import ModelProfile


class JudgeCalibration:
    # A quantile over the window costs a sort: thresholds are recomputed after this many new scores.
    REFRESH_EVERY = 16

    def __init__(self, initial: np.ndarray | None, window: int = 2048, min_samples: int = 64) -> None:
        if window < 1 or min_samples < 1:
            raise ValueError("window and min_samples must be >= 1")
        self.initial = None if initial is None or len(initial) == 0 else np.sort(np.asarray(initial, dtype=float))
        self.recent: deque[float] = deque(maxlen=window)
        self.min_samples = min_samples
        self._thresholds: dict[float, float] = {}
        self._unseen = 0

    def observe(self, score: float) -> None:
        self.recent.append(float(score))
        self._unseen += 1
        if self._unseen >= self.REFRESH_EVERY or len(self.recent) == self.min_samples:
            self._thresholds.clear()
            self._unseen = 0

    def threshold(self, d: float) -> float:
        """Scores below this are escalated, for escalated fraction d."""
        if d <= 0:
            return float("-inf")
        if d >= 1:
            return float("inf")
        if d not in self._thresholds:
            self._thresholds[d] = self._quantile(d)
        return self._thresholds[d]

    def _quantile(self, d: float) -> float:
        if len(self.recent) >= self.min_samples:
            return float(np.quantile(np.fromiter(self.recent, dtype=float), d))
        if self.initial is not None:
            return float(np.quantile(self.initial, d))
        return float(d)

    def escalate(self, score: float, d: float) -> bool:
        return score < self.threshold(d)


def calibration_for(model: ModelProfile, window: int = 2048, min_samples: int = 64) -> JudgeCalibration:
    """A calibration seeded with the model's reference judge scores, when it has them."""
    initial = None
    if model.reference_index is not None:
        initial = reference.judge_scores()[:, model.reference_index]
    return JudgeCalibration(initial, window=window, min_samples=min_samples)
