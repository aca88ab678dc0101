"""The tiny backends run the real diffusers pipeline classes with random weights."""

from __future__ import annotations

import numpy as np
import pytest
from open_clip.tokenizer import SimpleTokenizer

from shared.backends import make_generator
from shared.backends.base import GenerationInput
from shared.backends.tiny import TinyGenerator, clip_tokenizer
from shared.profiles import ModelProfile, load_profile

PIPELINE_CLASS = {
    "tiny-sd-turbo": "StableDiffusionPipeline",
    "tiny-sd": "StableDiffusionPipeline",
    "tiny-sdxl-lightning": "StableDiffusionXLPipeline",
    "tiny-sd35": "StableDiffusion3Pipeline",
}


def model(name: str) -> ModelProfile:
    return load_profile("tiny-cpu").model(name)


def inputs(seeds: list[int], negative: str = "blurry") -> list[GenerationInput]:
    return [GenerationInput(f"job-{s}", f"a red ball on a green field {s}", negative, s, 512, 768) for s in seeds]


def pixels(generator: TinyGenerator, batch: list[GenerationInput]) -> list[np.ndarray]:
    return [np.asarray(image) for image in generator.generate(batch)]


@pytest.fixture(scope="module", params=sorted(PIPELINE_CLASS))
def tiny(request: pytest.FixtureRequest) -> TinyGenerator:
    generator = make_generator("tiny", model(request.param))
    assert isinstance(generator, TinyGenerator)
    return generator


def test_real_pipeline_class_and_size(tiny: TinyGenerator) -> None:
    assert type(tiny.pipeline).__name__ == PIPELINE_CLASS[tiny.model.name]
    images = tiny.generate(inputs([1, 2, 3, 4]))
    assert len(images) == 4
    # The job asked for 512x768: tiny always uses the model's resolution.
    assert all(image.size == (64, 64) and image.mode == "RGB" for image in images)


def test_same_seed_same_pixels_other_seed_differs(tiny: TinyGenerator) -> None:
    first = pixels(tiny, inputs([7, 8]))
    second = pixels(tiny, inputs([7, 8]))
    assert np.array_equal(first[0], second[0])
    assert np.array_equal(first[1], second[1])
    assert not np.array_equal(first[0], first[1])


def test_two_builds_have_the_same_weights() -> None:
    batch = inputs([3])
    assert np.array_equal(pixels(TinyGenerator(model("tiny-sd-turbo")), batch)[0],
                          pixels(TinyGenerator(model("tiny-sd-turbo")), batch)[0])


def test_negative_prompt_is_used_when_guided() -> None:
    generator = TinyGenerator(model("tiny-sd"))
    assert generator.model.guidance > 1
    plain = pixels(generator, inputs([5], negative=""))[0]
    negative = pixels(generator, inputs([5], negative="low quality, watermark"))[0]
    assert not np.array_equal(plain, negative)


def test_warm_up_close_and_empty_batch() -> None:
    generator = TinyGenerator(model("tiny-sd-turbo"))
    generator.warm_up()
    assert generator.generate([]) == []
    generator.close()
    with pytest.raises(RuntimeError):
        generator.generate(inputs([1]))


def test_tokenizer_matches_clip_bpe() -> None:
    text = "A red ball sits in the grass, on a green field! Don't 42"
    ids = clip_tokenizer()(text).input_ids
    assert ids == [49406, *SimpleTokenizer().encode(text), 49407]
    assert len(clip_tokenizer()) == 49408


def test_unknown_generator_kind() -> None:
    with pytest.raises(ValueError, match="emulated, tiny"):
        make_generator("huge", model("tiny-sd"))
