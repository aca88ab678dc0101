"""The diffusers backend on the CPU: the tiny pipelines of each family are saved with
save_pretrained() and loaded back by local path through the backend's real loading code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
from safetensors.torch import load_file, save_file

from shared.backends import make_generator
from shared.backends.base import GenerationInput
from shared.backends.diffusers_backend import (
    CHECKPOINT_BASES,
    DiffusersGenerator,
    checkpoint_base,
    resolve_dtype,
)
from shared.backends.model_cache import ModelCache
from shared.backends.published import architecture_of, build_random_pipeline
from shared.backends.tiny import TinyGenerator, build_pipeline
from shared.profiles import ModelProfile, load_profile

FAMILY_MODELS = {"sd": "tiny-sd-turbo", "sdxl": "tiny-sdxl-lightning", "sd3": "tiny-sd35"}
PIPELINE_CLASS = {"sd": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline",
                  "sd3": "StableDiffusion3Pipeline"}


def tiny_model(name: str, **changes) -> ModelProfile:
    return load_profile("tiny-cpu").model(name).model_copy(update=changes)


def inputs(seeds: list[int], negative: str = "") -> list[GenerationInput]:
    return [GenerationInput(f"job-{s}", f"a red ball on a green field {s}", negative, s, 512, 512) for s in seeds]


def pixels(images) -> list[np.ndarray]:
    return [np.asarray(image).astype(np.int16) for image in images]


def close_enough(a: np.ndarray, b: np.ndarray) -> bool:
    # Saved-and-loaded weights, or another batch shape, may round one 8-bit level differently.
    return a.shape == b.shape and int(np.abs(a - b).max()) <= 2


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each tiny pipeline written as a diffusers repository directory."""
    root = tmp_path_factory.mktemp("pipelines")
    paths = {}
    for name in (*FAMILY_MODELS.values(), "tiny-sd"):
        paths[name] = root / name
        build_pipeline(tiny_model(name)).save_pretrained(paths[name])
    return paths


def local(saved: dict[str, Path], name: str, **changes) -> ModelProfile:
    return tiny_model(name, hf_id=str(saved[name]), **changes)


@pytest.mark.parametrize("family", sorted(FAMILY_MODELS))
def test_each_family_loads_by_local_path_and_matches_the_saved_weights(saved, family: str) -> None:
    name = FAMILY_MODELS[family]
    generator = DiffusersGenerator(local(saved, name), device="cpu", cache=ModelCache("cpu"))
    assert type(generator.pipeline).__name__ == PIPELINE_CLASS[family]
    assert generator.swap.source == "load" and generator.swap.seconds > 0
    assert generator.dtype == torch.float32
    loaded = pixels(generator.generate(inputs([3, 4])))
    built = pixels(TinyGenerator(tiny_model(name)).generate(inputs([3, 4])))
    assert [image.shape for image in loaded] == [(64, 64, 3)] * 2
    assert all(close_enough(a, b) for a, b in zip(loaded, built, strict=True))


def test_seeded_images_repeat_and_do_not_depend_on_the_batch(saved) -> None:
    generator = DiffusersGenerator(local(saved, "tiny-sd-turbo"), device="cpu", cache=ModelCache("cpu"))
    first = pixels(generator.generate(inputs([7, 8])))
    again = pixels(generator.generate(inputs([7, 8])))
    alone = pixels(generator.generate(inputs([8])))
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert not close_enough(first[0], first[1])
    assert close_enough(first[1], alone[0])


def test_negative_prompt_is_used_only_when_guided(saved) -> None:
    guided = DiffusersGenerator(local(saved, "tiny-sd"), device="cpu", cache=ModelCache("cpu"))
    plain = pixels(guided.generate(inputs([5], negative="")))[0]
    negative = pixels(guided.generate(inputs([5], negative="low quality, watermark")))[0]
    assert not np.array_equal(plain, negative)
    unguided = DiffusersGenerator(local(saved, "tiny-sd-turbo"), device="cpu", cache=ModelCache("cpu"))
    assert np.array_equal(pixels(unguided.generate(inputs([5], negative="")))[0],
                          pixels(unguided.generate(inputs([5], negative="low quality")))[0])


@pytest.fixture(scope="module")
def lightning_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A UNet-only repository like ByteDance/SDXL-Lightning: one safetensors file with
    other weights for the tiny SDXL base's UNet architecture."""
    base_unet = build_pipeline(tiny_model("tiny-sdxl-lightning")).unet
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(123)
        distilled = UNet2DConditionModel.from_config(base_unet.config)
    path = tmp_path_factory.mktemp("lightning") / "tiny_lightning_2step_unet.safetensors"
    save_file({k: v.contiguous() for k, v in distilled.state_dict().items()}, str(path))
    return path


def test_unet_checkpoint_replaces_the_base_unet_with_a_trailing_euler_scheduler(saved, lightning_checkpoint) -> None:
    base_dir = saved["tiny-sdxl-lightning"]
    base = DiffusersGenerator(local(saved, "tiny-sdxl-lightning"), device="cpu", cache=ModelCache("cpu"))
    # hf_id is the checkpoint's repository (a directory without a pipeline): the base comes apart.
    model = tiny_model("tiny-sdxl-lightning", hf_id=str(lightning_checkpoint.parent),
                       unet_checkpoint=lightning_checkpoint.name)
    lightning = DiffusersGenerator(model, device="cpu", cache=ModelCache("cpu"), base=str(base_dir))

    expected = load_file(str(lightning_checkpoint))
    loaded = lightning.pipeline.unet.state_dict()
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)
    assert not any(t.is_meta for t in lightning.pipeline.unet.parameters())
    scheduler = lightning.pipeline.scheduler
    assert isinstance(scheduler, EulerDiscreteScheduler) and scheduler.config.timestep_spacing == "trailing"
    assert torch.equal(lightning.pipeline.vae.decoder.conv_out.weight, base.pipeline.vae.decoder.conv_out.weight)
    assert not close_enough(pixels(lightning.generate(inputs([1])))[0], pixels(base.generate(inputs([1])))[0])


def test_checkpoint_base_rules(saved, lightning_checkpoint) -> None:
    hub = tiny_model("tiny-sdxl-lightning", hf_id="ByteDance/SDXL-Lightning", unet_checkpoint="unet.safetensors")
    assert checkpoint_base(hub) == CHECKPOINT_BASES["sdxl"]
    assert checkpoint_base(hub, base="/elsewhere") == "/elsewhere"
    # A local directory that holds a pipeline is its own base; an absolute checkpoint path works there.
    in_place = local(saved, "tiny-sdxl-lightning", unet_checkpoint=str(lightning_checkpoint))
    assert checkpoint_base(in_place) == str(saved["tiny-sdxl-lightning"])
    generator = DiffusersGenerator(in_place, device="cpu", cache=ModelCache("cpu"))
    assert generator.pipeline.scheduler.config.timestep_spacing == "trailing"
    with pytest.raises(ValueError, match="no base pipeline"):
        checkpoint_base(tiny_model("tiny-sd", hf_id="some/repo", unet_checkpoint="unet.safetensors"))


class OutOfMemoryAbove(StableDiffusionPipeline):
    """A real tiny SD pipeline that behaves like a GPU holding at most `limit` images: a larger
    call raises torch.cuda.OutOfMemoryError (the CUDA allocator's error, constructible without
    CUDA) before doing any work. Records every call's batch size."""

    limit = 2

    def __call__(self, *args, prompt, **kwargs):
        self.calls.append(len(prompt))
        if len(prompt) > self.limit:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate a batch of {len(prompt)}")
        return super().__call__(*args, prompt=prompt, **kwargs)


def out_of_memory_pipeline(limit: int) -> OutOfMemoryAbove:
    components = build_pipeline(tiny_model("tiny-sd-turbo")).components
    pipeline = OutOfMemoryAbove(**components, requires_safety_checker=False)
    pipeline.limit, pipeline.calls = limit, []
    return pipeline


def test_out_of_memory_splits_the_batch_and_caps_later_batches() -> None:
    pipeline = out_of_memory_pipeline(limit=2)
    generator = DiffusersGenerator(tiny_model("tiny-sd-turbo"), device="cpu", cache=ModelCache("cpu"),
                                   load=lambda: pipeline)
    images = pixels(generator.generate(inputs([1, 2, 3, 4, 5])))
    assert pipeline.calls == [5, 2, 2, 1]
    assert generator.oom_splits == 1 and generator.batch_cap == 2
    one_by_one = [pixels(generator.generate(inputs([seed])))[0] for seed in [1, 2, 3, 4, 5]]
    assert all(close_enough(a, b) for a, b in zip(images, one_by_one, strict=True))
    pipeline.calls.clear()
    assert len(generator.generate(inputs([6, 7, 8, 9]))) == 4
    assert pipeline.calls == [2, 2]  # no second out-of-memory: the learnt cap applies


def test_out_of_memory_of_a_single_image_fails_it() -> None:
    pipeline = out_of_memory_pipeline(limit=0)
    generator = DiffusersGenerator(tiny_model("tiny-sd-turbo"), device="cpu", cache=ModelCache("cpu"),
                                   load=lambda: pipeline)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        generator.generate(inputs([1, 2]))
    assert pipeline.calls == [2, 1]


def test_profile_max_batch_cuts_batches() -> None:
    pipeline = out_of_memory_pipeline(limit=64)
    generator = DiffusersGenerator(tiny_model("tiny-sd-turbo", max_batch=2), device="cpu", cache=ModelCache("cpu"),
                                   load=lambda: pipeline)
    assert len(generator.generate(inputs([1, 2, 3]))) == 3
    assert pipeline.calls == [2, 1]


def test_switching_models_reuses_the_host_copy(saved) -> None:
    cache = ModelCache("cpu")
    assert not cache.pin  # pinning only with CUDA
    turbo = DiffusersGenerator(local(saved, "tiny-sd-turbo"), device="cpu", cache=cache)
    before = pixels(turbo.generate(inputs([2])))[0]
    pipeline = turbo.pipeline
    turbo.close()
    assert not cache.is_resident(turbo.key) and cache.last_release_s is not None
    sd3 = DiffusersGenerator(local(saved, "tiny-sd35"), device="cpu", cache=cache)
    sd3.close()
    back = DiffusersGenerator(local(saved, "tiny-sd-turbo"), device="cpu", cache=cache)
    assert back.swap.source == "host" and back.pipeline is pipeline
    assert np.array_equal(pixels(back.generate(inputs([2])))[0], before)
    with pytest.raises(RuntimeError, match="closed"):
        turbo.generate(inputs([1]))
    assert back.generate([]) == []


def test_release_points_the_modules_back_at_the_host_copy() -> None:
    # The meta device stands in for a GPU: moving there allocates nothing, and releasing
    # must bring back the very host tensors (same storage, same values).
    pipeline = build_pipeline(tiny_model("tiny-sdxl-lightning"))
    originals = {name: param.detach().clone() for name, param in pipeline.unet.named_parameters()}
    cache = ModelCache("meta")
    resident, swap = cache.acquire("m", lambda: pipeline)
    assert swap.source == "load"
    assert all(p.is_meta for p in resident.unet.parameters())
    assert all(p.is_meta for p in resident.text_encoder_2.parameters())
    assert all(b.is_meta for b in resident.text_encoder.buffers())
    cache.release("m")
    assert all(p.device.type == "cpu" for p in pipeline.components["unet"].parameters())
    assert all(b.device.type == "cpu" for b in pipeline.text_encoder.buffers())
    assert all(torch.equal(param, originals[name]) for name, param in pipeline.unet.named_parameters())
    again, swap = cache.acquire("m", lambda: pytest.fail("loaded twice"))
    assert swap.source == "host" and again is pipeline and all(p.is_meta for p in again.vae.parameters())


def test_host_budget_evicts_the_least_recently_used_idle_model() -> None:
    models = {name: build_pipeline(tiny_model(name)) for name in ("tiny-sd-turbo", "tiny-sd", "tiny-sd35")}
    cache = ModelCache("cpu")
    cache.acquire("tiny-sd-turbo", lambda: models["tiny-sd-turbo"])
    one_model = cache.host_bytes
    cache.max_host_bytes = int(one_model * 2.5)
    cache.release("tiny-sd-turbo")
    cache.acquire("tiny-sd", lambda: models["tiny-sd"])
    cache.release("tiny-sd")
    cache.acquire("tiny-sd35", lambda: models["tiny-sd35"])  # resident: never evicted
    assert "tiny-sd-turbo" not in cache and "tiny-sd" in cache and cache.is_resident("tiny-sd35")
    assert cache.host_bytes <= cache.max_host_bytes
    cache.drop("tiny-sd35")
    assert cache.keys() == ["tiny-sd"]


def test_make_generator_builds_the_diffusers_kind(saved) -> None:
    generator = make_generator("diffusers", local(saved, "tiny-sd-turbo"), device="cpu")
    assert isinstance(generator, DiffusersGenerator)
    generator.warm_up()
    assert generator.cache.is_resident(generator.key)
    generator.close()
    generator.cache.drop(generator.key)
    with pytest.raises(ValueError, match="no hf_id"):
        DiffusersGenerator(tiny_model("tiny-sd"), device="cpu", cache=ModelCache("cpu"))


def test_dtypes() -> None:
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float16
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("int8", torch.device("cpu"))


# Parameter counts of the published checkpoints (unet, text encoders, vae).
PUBLISHED_PARAMETERS = {
    "sd-v15": {"unet": 859_520_964, "text_encoder": 123_060_480, "vae": 83_653_863},
    "sd-turbo": {"unet": 865_910_724, "text_encoder": 340_387_840, "vae": 83_653_863},
    "sdxl-lightning": {"unet": 2_567_463_684, "text_encoder": 123_060_480, "text_encoder_2": 694_659_840,
                       "vae": 83_653_863},
}


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMETERS))
def test_published_architectures_have_the_published_sizes(name: str) -> None:
    model = load_profile("h200").model(name)
    pipeline = build_random_pipeline(model, device="meta")
    counts = {part: sum(p.numel() for p in module.parameters())
              for part, module in pipeline.components.items() if isinstance(module, torch.nn.Module)}
    assert counts == PUBLISHED_PARAMETERS[name]
    assert pipeline.unet.config.sample_size == model.resolution // 8


def test_unknown_published_architecture() -> None:
    with pytest.raises(ValueError, match="no published architecture"):
        architecture_of(load_profile("h200").model("sd35-large"))
