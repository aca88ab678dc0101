"""The quality judge: a frozen open_clip image encoder plus a small real-vs-generated head.

score = softmax(head(normalise(encode_image(x))))[:, 1], i.e. P(real).

The encoder has random weights unless a local open_clip checkpoint is given; the
head is read from a safetensors file (keys of an nn.Sequential:
"0.weight", "0.bias", "2.weight", "2.bias") or initialised from `seed`. A head
trained by shared/backends/judge_training.py records the encoder it was trained
on in the file's metadata; loading it beside a different encoder is refused,
since its scores would mean nothing there.
"""

from __future__ import annotations

from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from shared.backends.base import ScoreInput, Scorer

HEAD_HIDDEN = 256
ENCODER_KEY = "encoder"  # safetensors metadata: which encoder a head was trained on


def make_head(embed_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(embed_dim, HEAD_HIDDEN), nn.ReLU(), nn.Linear(HEAD_HIDDEN, 2))


def encoder_id(arch: str, checkpoint: str | None, seed: int) -> str:
    """Names the image encoder: random weights are fixed by the seed, a checkpoint by its file name."""
    if checkpoint is None:
        return f"open_clip {arch} random seed {seed}"
    return f"open_clip {arch} checkpoint {Path(checkpoint).name}"


def load_head(head: nn.Sequential, head_path: str, expected_encoder: str) -> None:
    with safe_open(head_path, framework="pt") as handle:
        trained_on = (handle.metadata() or {}).get(ENCODER_KEY)
    if trained_on is not None and trained_on != expected_encoder:
        raise ValueError(f"judge head {head_path} was trained on {trained_on!r}, not on {expected_encoder!r}")
    head.load_state_dict(load_file(head_path))


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
        self.encoder_id = encoder_id(arch, checkpoint, seed)
        if head_path is not None:
            load_head(head, head_path, self.encoder_id)
        # Only the image tower is used: drop the text tower's weights.
        self.visual: nn.Module | None = clip.visual.eval().requires_grad_(False).to(self.device)
        self.head = head.eval().requires_grad_(False).to(self.device)

    def embed(self, images: list[Image.Image]) -> torch.Tensor:
        """(n, embed_dim) unit-length image embeddings: the head's input."""
        if self.visual is None:
            raise RuntimeError("judge is closed")
        pixels = torch.stack([self.preprocess(image.convert("RGB")) for image in images]).to(self.device)
        with torch.inference_mode():
            return F.normalize(self.visual(pixels).float(), dim=-1)

    def score(self, batch: list[ScoreInput]) -> list[float]:
        if not batch:
            return []
        embedding = self.embed([item.image for item in batch])
        with torch.inference_mode():
            p_real = self.head(embedding).softmax(dim=-1)[:, 1]
        return p_real.cpu().tolist()

    def close(self) -> None:
        self.visual = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
