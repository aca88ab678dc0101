"""Emulated backends: profiled latency and profiled judge scores, no torch."""

from __future__ import annotations

import io
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, UnidentifiedImageError

from shared import reference
from shared.backends import decode_png, encode_png, make_generator, make_scorer
from shared.backends.base import GenerationInput, ScoreInput
from shared.backends.emulated import EmulatedGenerator, EmulatedScorer
from shared.profiles import ModelProfile

ROOT = Path(__file__).resolve().parents[2]


def profile(reference_index: int | None = 0, latency_ms: dict[int, float] | None = None) -> ModelProfile:
    return ModelProfile(
        name="m",
        family="sd",
        steps=1,
        guidance=0.0,
        resolution=64,
        reference_index=reference_index,
        latency_ms=latency_ms or {1: 50, 2: 80},
    )


def inputs(n: int) -> list[GenerationInput]:
    return [GenerationInput(f"job-{i}", "a cat", "", i, 512, 512) for i in range(n)]


def timed(generator: EmulatedGenerator, n: int) -> tuple[float, list[Image.Image]]:
    start = time.perf_counter()
    images = generator.generate(inputs(n))
    return time.perf_counter() - start, images


def test_generator_sleeps_the_profiled_latency() -> None:
    generator = make_generator("emulated", profile(), time_scale=1.0)
    assert isinstance(generator, EmulatedGenerator)
    elapsed, images = timed(generator, 2)
    assert 0.075 <= elapsed < 0.4
    assert len(images) == 2 and images[0].size == (64, 64) and images[0].mode == "RGB"
    elapsed, _ = timed(generator, 3)  # extrapolated: 110 ms
    assert 0.105 <= elapsed < 0.45


def test_time_scale_scales_and_zero_does_not_sleep() -> None:
    elapsed, _ = timed(EmulatedGenerator(profile(), time_scale=0.5), 1)
    assert 0.024 <= elapsed < 0.3
    elapsed, _ = timed(EmulatedGenerator(profile(), time_scale=0), 64)
    assert elapsed < 0.05


def test_placeholders_follow_the_seed() -> None:
    generator = EmulatedGenerator(profile(), time_scale=0)
    first, second = generator.generate(inputs(2)), generator.generate(inputs(2))
    assert first[0].tobytes() == second[0].tobytes()
    assert first[0].tobytes() != first[1].tobytes()


def test_generator_needs_a_latency_profile_to_sleep() -> None:
    bare = ModelProfile(name="m", family="sd", steps=1, guidance=0.0, resolution=64)
    with pytest.raises(ValueError, match="latency"):
        EmulatedGenerator(bare, time_scale=1.0)
    assert len(EmulatedGenerator(bare, time_scale=0).generate(inputs(1))) == 1


def score(scorer: EmulatedScorer, prompt: str, model: ModelProfile) -> float:
    return scorer.score([ScoreInput("job", prompt, Image.new("RGB", (8, 8)), model)])[0]


def test_scorer_returns_the_reference_score() -> None:
    scorer = make_scorer("emulated")
    assert isinstance(scorer, EmulatedScorer)
    prompt = reference.prompts()[0]
    assert score(scorer, prompt, profile(reference_index=0)) == pytest.approx(reference.judge_scores()[0, 0])


def test_scorer_is_deterministic_for_unknown_prompts() -> None:
    prompt = "a prompt that is not in the reference set, 1f0c"
    assert reference.prompt_id(prompt) is None
    for column in (0, 3, None):
        model = profile(reference_index=column)
        value = score(EmulatedScorer(), prompt, model)
        assert 0.0 <= value <= 1.0
        assert value == score(EmulatedScorer(), prompt, model)
    column = reference.judge_scores()[:, 2]
    assert score(EmulatedScorer(), prompt, profile(reference_index=2)) in column


def test_scorer_is_stable_across_processes() -> None:
    code = "from shared.backends.emulated import stable_hash; print(stable_hash('prompt', 0, 'a cat'))"
    runs = {
        subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                       env={"PYTHONHASHSEED": seed, "PATH": ""}).stdout
        for seed in ("1", "2")
    }
    assert len(runs) == 1


def test_importing_the_package_does_not_import_torch() -> None:
    code = (
        "import sys, shared.backends, shared.backends.emulated, shared.backends.images\n"
        "from shared.backends import make_generator, make_scorer\n"
        "from shared.profiles import load_profile\n"
        "make_scorer('emulated'); make_generator('emulated', load_profile('tiny-cpu').model('tiny-sd'), time_scale=0)\n"
        "heavy = {'torch', 'diffusers', 'transformers', 'open_clip'} & set(sys.modules)\n"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_unknown_scorer_kind() -> None:
    with pytest.raises(ValueError, match="clip, emulated"):
        make_scorer("oracle")


def test_png_roundtrip() -> None:
    array = np.random.default_rng(0).integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
    image = Image.fromarray(array, "RGB")
    data = encode_png(image)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    decoded = decode_png(data)
    assert decoded.size == (64, 48) and decoded.mode == "RGB"
    assert np.array_equal(np.asarray(decoded), array)


def test_decode_png_refuses_other_formats() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="JPEG")
    with pytest.raises(UnidentifiedImageError):
        decode_png(buffer.getvalue())
