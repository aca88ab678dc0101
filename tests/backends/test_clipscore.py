"""The CLIPScore judge: prompt-image agreement with a random-weight open_clip model."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from shared.backends import SCORER_KINDS, make_scorer
from shared.backends.base import ScoreInput
from shared.backends.clipscore import ClipScoreJudge
from shared.profiles import load_profile


@pytest.fixture(scope="module")
def judge() -> ClipScoreJudge:
    scorer = make_scorer("clipscore", seed=0)
    assert isinstance(scorer, ClipScoreJudge)
    return scorer


def inputs(prompts: list[str]) -> list[ScoreInput]:
    rng = np.random.default_rng(0)
    model = load_profile("tiny-cpu").model("tiny-sd-turbo")
    return [ScoreInput(f"job-{i}", prompt, Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)), model)
            for i, prompt in enumerate(prompts)]


def test_is_a_scorer_kind() -> None:
    assert "clipscore" in SCORER_KINDS
    with pytest.raises(ValueError, match="clipscore"):
        make_scorer("no-such-kind")


def test_one_score_in_unit_interval_per_pair_and_deterministic(judge: ClipScoreJudge) -> None:
    batch = inputs(["a cat", "a red bicycle against a wall", ""])
    scores = judge.score(batch)
    assert len(scores) == 3
    assert all(isinstance(s, float) and 0.0 <= s <= 1.0 for s in scores)
    assert judge.score(batch) == pytest.approx(scores, abs=1e-6)
    assert judge.score(batch[1:2]) == pytest.approx(scores[1:2], abs=1e-5)  # independent of the batch
    assert judge.score([]) == []


def test_same_seed_same_scores_other_seed_other_scores(judge: ClipScoreJudge) -> None:
    batch = inputs(["a cat", "a dog"])
    assert ClipScoreJudge(seed=0).score(batch) == pytest.approx(judge.score(batch), abs=1e-6)
    assert ClipScoreJudge(seed=1).score(batch) != pytest.approx(judge.score(batch), abs=1e-6)


def test_the_score_depends_on_the_prompt(judge: ClipScoreJudge) -> None:
    image = inputs(["x"])[0].image
    model = load_profile("tiny-cpu").model("tiny-sd-turbo")
    pairs = [ScoreInput("a", "a cat on a sofa", image, model), ScoreInput("b", "an aeroplane at night", image, model)]
    first, second = judge.score(pairs)
    assert first != pytest.approx(second, abs=1e-6)
