"""Previews on the model's side: the steps chosen (a pure function), the tiny diffusers pipelines
decoding them with a random-weight AutoencoderTiny at those steps only and only for the rows that
asked, the emulated backend's placeholders at the same points, and the model process's frames that
carry them to the worker before the batch's reply."""

from __future__ import annotations

import io
import time

import pytest
from PIL import Image

from shared.backends.base import GenerationInput
from shared.backends.control import NO_CONTROL
from shared.backends.emulated import EmulatedGenerator
from shared.backends.model_process import LoadRequest, ModelProcess
from shared.backends.previews import Preview, PreviewControl, with_previews
from shared.backends.tiny import TinyGenerator
from shared.policies.previews import PREVIEW_MAX_SIDE, preview_schedule, preview_size, preview_steps, previews_for
from shared.profiles import load_profile

TINY = load_profile("tiny-cpu")


def wanting(previews: list[int], fmt: str = "png") -> list[GenerationInput]:
    return [GenerationInput(f"job-{row}", "a red bicycle", "", row, 64, 64, wanted, fmt)
            for row, wanted in enumerate(previews)]


def opened(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_previews_are_spread_over_the_steps_never_the_last():
    assert preview_steps(2, 4) == [1, 3]
    assert preview_steps(3, 28) == [7, 14, 21]
    assert preview_steps(1, 50) == [25]
    assert preview_steps(2, 2) == [1]  # fewer than asked: a model of few steps
    assert preview_steps(3, 1) == [] and preview_steps(0, 50) == []
    assert preview_steps(9, 40) == preview_steps(3, 40)  # at most three
    assert preview_schedule([0, 2, 1], 4) == {1: [(1, 0)], 3: [(1, 1)], 2: [(2, 0)]}
    assert preview_schedule([0, 0], 50) == {}


def test_a_preview_is_at_most_256_px_a_side_with_the_image_aspect():
    assert preview_size(1024, 1024) == (PREVIEW_MAX_SIDE, PREVIEW_MAX_SIDE)
    assert preview_size(1536, 1024) == (256, 171)
    assert preview_size(64, 64) == (64, 64)  # never enlarged
    assert previews_for(2, escalated=False) == 2 and previews_for(2, escalated=True) == 0


@pytest.mark.parametrize("name", ["tiny-sd", "tiny-sd35"])
def test_the_tiny_pipeline_decodes_previews_at_the_chosen_steps_for_the_rows_that_asked(name):
    model = TINY.model(name)
    generator = TinyGenerator(model)
    decoded: list[list[int]] = []
    decode = generator.decode_preview

    def counting(latents, rows):
        decoded.append(rows)
        return decode(latents, rows)

    generator.decode_preview = counting
    got: list[Preview] = []
    images = generator.generate_timed(wanting([2, 0, 1], "jpeg"), got.append).images
    assert len(images) == 3
    assert [(p.job_id, p.index, p.step, p.steps) for p in got] == [
        ("job-0", 0, 1, 4), ("job-2", 0, 2, 4), ("job-0", 1, 3, 4)]
    assert decoded == [[0], [2], [0]]  # only the rows due, at their steps
    for preview in got:
        image = opened(preview.data)
        assert image.format == "JPEG" and max(image.size) <= PREVIEW_MAX_SIDE
    # a batch where nobody asked decodes nothing, with or without a sink
    decoded.clear()
    generator.generate_timed(wanting([0, 0]), got.append)
    generator.generate_timed(wanting([2, 2]))
    assert decoded == []


def test_what_a_preview_costs_on_the_tiny_pipeline():
    generator = TinyGenerator(TINY.model("tiny-sd"))
    batch = wanting([3, 3, 3, 3])
    plain = wanting([0, 0, 0, 0])
    generator.generate_timed(plain)
    rounds, got = 5, list[Preview]()
    bare = with_previews_s = 0.0
    for _ in range(rounds):
        started = time.perf_counter()
        generator.generate_timed(plain)
        bare += time.perf_counter() - started
        started = time.perf_counter()
        generator.generate_timed(batch, got.append)
        with_previews_s += time.perf_counter() - started
    per_preview_ms = (with_previews_s - bare) / len(got) * 1000
    sizes = sorted(len(p.data) for p in got)
    print(f"\ntiny-sd, batch of 4, 4 steps: {bare / rounds * 1000:.1f} ms bare, "
          f"{with_previews_s / rounds * 1000:.1f} ms with 3 previews a job ({len(got) // rounds} a batch): "
          f"{per_preview_ms:.2f} ms a preview; "
          f"{sizes[0]}-{sizes[-1]} bytes each (64x64 png)")
    assert len(got) == 12 * rounds


def test_a_chunked_batch_renders_the_rows_of_its_chunk():
    got: list[Preview] = []
    control = with_previews(NO_CONTROL, wanting([1, 0, 1, 1]), 4, got.append)
    assert isinstance(control, PreviewControl)
    rendered: list[list[int]] = []

    def render(rows: list[int]) -> list[Image.Image]:
        rendered.append(rows)
        return [Image.new("RGB", (8, 8)) for _ in rows]

    control.part(0, 2).preview(2, 4, render)
    control.part(2, 4).preview(2, 4, render)
    assert rendered == [[0], [0, 1]]  # numbered within each chunk
    assert [p.job_id for p in got] == ["job-0", "job-2", "job-3"]
    assert with_previews(NO_CONTROL, wanting([0, 0]), 4, got.append) is NO_CONTROL


def test_the_emulated_backend_makes_placeholder_previews_at_the_same_steps():
    model = load_profile("paper-l40s-x10").model("sd35-large")
    generator = EmulatedGenerator(model, time_scale=0.001)
    got: list[Preview] = []
    generator.generate_timed(wanting([3, 0], "webp"), got.append)
    assert [(p.job_id, p.index, p.step) for p in got] == [
        ("job-0", index, step) for index, step in enumerate(preview_steps(3, model.steps))]
    assert all(opened(p.data).format == "WEBP" for p in got)
    assert len({p.data for p in got}) == 3  # each step's differs


def test_previews_come_through_the_model_process_before_the_reply():
    process = ModelProcess(load_timeout_s=120, generate_timeout_s=60)
    try:
        process.load(LoadRequest(kind="tiny", profile="tiny-cpu", model="tiny-sd"))
        got: list[Preview] = []
        generated = process.generate(wanting([2, 1]), got.append)
        assert len(generated.images) == 2
        assert sorted((p.job_id, p.index, p.step) for p in got) == [
            ("job-0", 0, 1), ("job-0", 1, 3), ("job-1", 0, 2)]
        assert all(opened(p.data).format == "PNG" for p in got)
        got.clear()
        assert len(process.generate(wanting([2, 2])).images) == 2  # nobody takes them: none made
        assert got == []
    finally:
        process.close()


def test_the_diffusers_backend_decodes_previews_with_the_decoder_its_profile_names(tmp_path):
    from shared.backends.diffusers_backend import DiffusersGenerator
    from shared.backends.model_cache import ModelCache
    from shared.backends.tiny import build_pipeline, preview_vae

    model = TINY.model("tiny-sd")
    preview_vae(model).save_pretrained(tmp_path / "taesd")  # a TAESD-shaped repository, random weights
    named = model.model_copy(update={"preview_decoder": str(tmp_path / "taesd")})
    generator = DiffusersGenerator(named, device="cpu", load=lambda: build_pipeline(model), cache=ModelCache("cpu"))
    got: list[Preview] = []
    assert len(generator.generate_timed(wanting([2, 0]), got.append).images) == 2
    assert [(p.job_id, p.index, p.step) for p in got] == [("job-0", 0, 1), ("job-0", 1, 3)]
    # without a decoder in its profile, a model makes none
    plain = DiffusersGenerator(model.model_copy(update={"name": "no-previews"}), device="cpu",
                               load=lambda: build_pipeline(model), cache=ModelCache("cpu"))
    got.clear()
    assert len(plain.generate_timed(wanting([2]), got.append).images) == 1
    assert got == []
