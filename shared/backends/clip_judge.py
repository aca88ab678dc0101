"""The quality judge: a frozen open_clip image encoder plus a small real-vs-generated head.

score = softmax(head(normalise(encode_image(x))))[:, 1], i.e. P(real).

The encoder has random weights unless a local open_clip checkpoint is given; the
head is read from a safetensors file (keys of an nn.Sequential:
"0.weight", "0.bias", "2.weight", "2.bias") or initialised from `seed`.
"""

from __future__ import annotations

import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from shared.backends.base import ScoreInput, Scorer

HEAD_HIDDEN = 256


def make_head(embed_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(embed_dim, HEAD_HIDDEN), nn.ReLU(), nn.Linear(HEAD_HIDDEN, 2))


class ClipJudge(Scorer):
    def __init__(
        self,
        *,
        arch: str = "ViT-B-32",
        checkpoint: str | None = None,
        head_path: str | None = None,
        seed: int = 0,
        device: str = "cpu",
    ) -> None:
        self.device = torch.device(device)
        config = open_clip.get_model_config(arch)
        if config is None:
            raise ValueError(f"unknown open_clip architecture {arch!r}")
        embed_dim = int(config["embed_dim"])
        # Seeded so every judge built with the same seed gives the same scores.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            clip, _, self.preprocess = open_clip.create_model_and_transforms(arch, pretrained=checkpoint)
            head = make_head(embed_dim)
        if head_path is not None:
            head.load_state_dict(load_file(head_path))
        # Only the image tower is used: drop the text tower's weights.
        self.visual: nn.Module | None = clip.visual.eval().requires_grad_(False).to(self.device)
        self.head = head.eval().requires_grad_(False).to(self.device)

    def score(self, batch: list[ScoreInput]) -> list[float]:
        if not batch:
            return []
        if self.visual is None:
            raise RuntimeError("judge is closed")
        pixels = torch.stack([self.preprocess(item.image.convert("RGB")) for item in batch]).to(self.device)
        with torch.inference_mode():
            embedding = F.normalize(self.visual(pixels).float(), dim=-1)
            p_real = self.head(embedding).softmax(dim=-1)[:, 1]
        return p_real.cpu().tolist()

    def close(self) -> None:
        self.visual = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
