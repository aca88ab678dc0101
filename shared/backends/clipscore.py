"""A second judge kind: CLIPScore, the agreement between the prompt and the image.

CLIPScore (Hessel et al., 2021) is w * max(cos(text, image), 0) with CLIP's
embeddings. The judge needs a score in [0, 1] whose percentiles decide (d is a
fraction, not a score level), so this scorer returns (1 + cos) / 2: the same
order as cos, hence the same escalations as CLIPScore wherever cos > 0, without
the clipping that would tie every disagreeing image at 0.

The model is a whole open_clip model (text and image towers), random weights
from `seed` unless a local checkpoint is given: with random weights the scores
are deterministic but carry no meaning.
"""

from __future__ import annotations

from typing import Protocol

import open_clip
import torch
import torch.nn.functional as F

from shared.backends.base import ScoreInput, Scorer


class _ClipModel(Protocol):
    """What the scorer uses of an open_clip model (open_clip has no type information)."""

    def encode_image(self, image: torch.Tensor) -> torch.Tensor: ...

    def encode_text(self, text: torch.Tensor) -> torch.Tensor: ...


class ClipScoreJudge(Scorer):
    def __init__(self, *, arch: str = "ViT-B-32", checkpoint: str | None = None, seed: int = 0,
                 device: str = "cpu") -> None:
        if open_clip.get_model_config(arch) is None:
            raise ValueError(f"unknown open_clip architecture {arch!r}")
        self.device = torch.device(device)
        # Seeded so every scorer built with the same seed gives the same scores.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model, _, self.preprocess = open_clip.create_model_and_transforms(arch, pretrained=checkpoint)
        self.model: _ClipModel | None = model.eval().requires_grad_(False).to(self.device)
        self.tokenizer = open_clip.get_tokenizer(arch)

    def score(self, batch: list[ScoreInput]) -> list[float]:
        if not batch:
            return []
        if self.model is None:
            raise RuntimeError("judge is closed")
        pixels = torch.stack([self.preprocess(item.image.convert("RGB")) for item in batch]).to(self.device)
        tokens = self.tokenizer([item.prompt for item in batch]).to(self.device)
        with torch.inference_mode():
            image = F.normalize(self.model.encode_image(pixels).float(), dim=-1)
            text = F.normalize(self.model.encode_text(tokens).float(), dim=-1)
            cosine = (image * text).sum(dim=-1)
        return ((1.0 + cosine) / 2.0).clamp(0.0, 1.0).cpu().tolist()

    def close(self) -> None:
        self.model = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
