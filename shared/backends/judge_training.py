"""Training of the judge's real-vs-generated head, as in the paper: the open_clip image
encoder stays frozen, its unit-length embeddings of two folders of images (real/ and
generated/) are computed once, and the 512 -> 256 -> 2 head is trained on them with
a class-balanced cross-entropy (class 1 = real, so softmax[:, 1] is P(real)).

The head is saved as safetensors under the same keys ClipJudge loads, with the
encoder it was trained on in the file's metadata (`hadis train-judge`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TypedDict

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pydantic import Field
from safetensors.torch import save_file
from torch import nn

from shared.backends.clip_judge import ENCODER_KEY, ClipJudge, make_head
from shared.policies.learned_router import roc_auc
from shared.schemas import Strict

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
REAL, GENERATED = 1, 0


class HeadTrainingReport(Strict):
    out: str
    encoder: str
    real_images: int
    generated_images: int
    epochs: int
    train_accuracy: float
    train_auc: float
    holdout_images: int = 0
    holdout_accuracy: float | None = None
    holdout_auc: float | None = None
    mean_p_real: dict[str, float] = Field(description="Mean P(real) of the training images of each class.")


def image_paths(folder: Path) -> list[Path]:
    """The images under a folder (recursively), in a stable order."""
    paths = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {folder}")
    return paths


def _chunks(paths: list[Path], size: int) -> Iterator[list[Path]]:
    for start in range(0, len(paths), size):
        yield paths[start : start + size]


def embed_images(judge: ClipJudge, paths: list[Path], batch_size: int = 64) -> torch.Tensor:
    """(n, embed_dim) frozen-encoder embeddings, loading `batch_size` images at a time."""
    parts = []
    for chunk in _chunks(paths, batch_size):
        images = []
        for path in chunk:
            with Image.open(path) as image:
                images.append(image.convert("RGB"))
        parts.append(judge.embed(images).cpu())
    return torch.cat(parts)


def train_head(embeddings: torch.Tensor, labels: torch.Tensor, *, epochs: int = 300, lr: float = 1e-3,
               weight_decay: float = 1e-4, seed: int = 0) -> nn.Sequential:
    """Full-batch Adam on the fixed embeddings (they fit in memory: 512 floats an image)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = make_head(embeddings.shape[1])
    counts = torch.bincount(labels, minlength=2).clamp(min=1).float()
    class_weights = counts.sum() / (2 * counts)  # each class weighs the same, however many images it has
    optimizer = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)
    head.train()
    for _ in range(epochs):
        optimizer.zero_grad()
        loss = F.cross_entropy(head(embeddings), labels, weight=class_weights)
        loss.backward()
        optimizer.step()
    return head.eval().requires_grad_(False)


def p_real(head: nn.Sequential, embeddings: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        return head(embeddings).softmax(dim=-1)[:, REAL].numpy()


def holdout_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (train, holdout): `fraction` of each class held out."""
    generator = torch.Generator().manual_seed(seed)
    train, holdout = [], []
    for cls in (GENERATED, REAL):
        members = torch.nonzero(labels == cls).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        n_holdout = min(int(round(fraction * len(members))), len(members) - 1)  # keep one to train on
        holdout.append(members[:n_holdout])
        train.append(members[n_holdout:])
    return torch.cat(train), torch.cat(holdout)


def train_judge_head(real_dir: Path, generated_dir: Path, out: Path, *, arch: str = "ViT-B-32",
                     checkpoint: str | None = None, seed: int = 0, device: str = "cpu", epochs: int = 300,
                     batch_size: int = 64, holdout: float = 0.0) -> HeadTrainingReport:
    """Embed both folders with the judge's frozen encoder, train the head, save it to `out`."""
    if not 0.0 <= holdout < 1.0:
        raise ValueError(f"holdout must be in [0, 1), got {holdout}")
    real, generated = image_paths(real_dir), image_paths(generated_dir)
    judge = ClipJudge(arch=arch, checkpoint=checkpoint, seed=seed, device=device)
    embeddings = torch.cat([embed_images(judge, real, batch_size), embed_images(judge, generated, batch_size)])
    labels = torch.tensor([REAL] * len(real) + [GENERATED] * len(generated))
    train, held = holdout_split(labels, holdout, seed)
    head = train_head(embeddings[train], labels[train], epochs=epochs, seed=seed)

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(out),
              metadata={ENCODER_KEY: judge.encoder_id, "real_images": str(len(real)),
                        "generated_images": str(len(generated))})
    judge.close()
    train_p = p_real(head, embeddings[train])
    train_real = labels[train].numpy() == REAL
    return HeadTrainingReport(
        out=str(out), encoder=judge.encoder_id, real_images=len(real), generated_images=len(generated),
        epochs=epochs, train_accuracy=float(np.mean((train_p >= 0.5) == train_real)),
        train_auc=roc_auc(train_real, train_p),
        mean_p_real={"real": float(train_p[train_real].mean()), "generated": float(train_p[~train_real].mean())},
        **holdout_metrics(p_real(head, embeddings[held]), labels[held].numpy() == REAL),
    )


class HoldoutMetrics(TypedDict, total=False):
    holdout_images: int
    holdout_accuracy: float
    holdout_auc: float | None


def holdout_metrics(held_p: np.ndarray, held_real: np.ndarray) -> HoldoutMetrics:
    if len(held_p) == 0:
        return {}
    both_classes = 0 < held_real.sum() < len(held_real)
    return {"holdout_images": len(held_p), "holdout_accuracy": float(np.mean((held_p >= 0.5) == held_real)),
            "holdout_auc": roc_auc(held_real, held_p) if both_classes else None}
