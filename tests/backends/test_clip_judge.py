"""The CLIP judge: a random-weight open_clip encoder plus the P(real) head."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from shared.backends import make_scorer
from shared.backends.base import ScoreInput
from shared.backends.clip_judge import ClipJudge, make_head
from shared.profiles import load_profile


@pytest.fixture(scope="module")
def judge() -> ClipJudge:
    scorer = make_scorer("clip", seed=0)
    assert isinstance(scorer, ClipJudge)
    return scorer


def batch(n: int) -> list[ScoreInput]:
    rng = np.random.default_rng(0)
    model = load_profile("tiny-cpu").model("tiny-sd")
    return [
        ScoreInput(f"job-{i}", "a cat", Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)), model)
        for i in range(n)
    ]


def test_one_probability_per_image_and_deterministic(judge: ClipJudge) -> None:
    images = batch(3)
    scores = judge.score(images)
    assert len(scores) == 3
    assert all(isinstance(s, float) and 0.0 <= s <= 1.0 for s in scores)
    assert judge.score(images) == pytest.approx(scores, abs=1e-6)
    assert judge.score(images[:1]) == pytest.approx(scores[:1], abs=1e-5)
    assert judge.score([]) == []


def test_head_loaded_from_safetensors(judge: ClipJudge, tmp_path: Path) -> None:
    head = make_head(judge.head[0].in_features)
    # A head whose output bias alone decides: P(real) = sigmoid(10) for every image.
    for layer in (head[0], head[2]):
        torch.nn.init.zeros_(layer.weight)
        torch.nn.init.zeros_(layer.bias)
    head[2].bias.data = torch.tensor([0.0, 10.0])
    path = tmp_path / "head.safetensors"
    save_file(head.state_dict(), str(path))
    loaded = ClipJudge(head_path=str(path), seed=0)
    assert loaded.score(batch(2)) == pytest.approx([torch.sigmoid(torch.tensor(10.0)).item()] * 2, abs=1e-6)
    # The same seed builds the same encoder.
    for mine, theirs in zip(judge.visual.parameters(), loaded.visual.parameters(), strict=True):
        assert torch.equal(mine, theirs)
