"""The real diffusers pipelines, by Hugging Face id or local directory.

What runs is decided by the model's profile entry, never by its name:

- `family` picks the pipeline class (sd: StableDiffusionPipeline, sdxl:
  StableDiffusionXLPipeline, sd3: StableDiffusion3Pipeline);
- `hf_id` is a Hub repository or a local directory (a `save_pretrained` layout);
- `unet_checkpoint` is a UNet-only safetensors file (SDXL-Lightning) in `hf_id` (or an
  absolute path). It replaces the UNet of the family's base pipeline, and the scheduler
  becomes Euler on "trailing" timesteps, as the checkpoint's model card prescribes: the
  base's scheduler is set up for its own 50 steps. Every other model keeps the scheduler
  its repository ships (SD-Turbo: Euler trailing, SD3.5: flow-matching Euler, ...);
- `steps`, `guidance` and `resolution` are the call's arguments; the negative prompt is
  used only when guidance > 1 (classifier-free guidance).

Images are generated at the profile's resolution (the batch is one tensor, and the
profiled latencies hold for that size); the job's width and height are not used.

fp16 on CUDA, fp32 on the CPU, unless a dtype is given. Each image has its own CPU
torch.Generator seeded from the job, so an image starts from the same noise whatever
its batch or device (batched kernels may still round a pixel one level apart). A CUDA
out-of-memory splits the batch in halves and retries them (and later batches are cut to
the size that fitted) instead of failing the jobs. Pipelines live in a ModelCache: a
closed generator's model waits in pinned host memory, and the time each generator took
to become resident is `swap`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers import (
    AutoencoderTiny,
    DiffusionPipeline,
    EulerDiscreteScheduler,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from PIL import Image

from shared.backends.base import GenerationInput, Generator
from shared.backends.control import NO_CONTROL, StepControl
from shared.backends.generation import LatentDecoder, latent_decoder, run_open, warm_up_input
from shared.backends.model_cache import ModelCache, Swap, default_cache
from shared.logging import get_logger
from shared.profiles import ModelProfile

log = get_logger(__name__)

PIPELINE_CLASSES: dict[str, type[DiffusionPipeline]] = {
    "sd": StableDiffusionPipeline,
    "sdxl": StableDiffusionXLPipeline,
    "sd3": StableDiffusion3Pipeline,
}
# Components a serving pipeline leaves out: the SD safety checker, the SDXL watermark.
PIPELINE_OPTIONS: dict[str, dict] = {
    "sd": {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False},
    "sdxl": {"add_watermarker": False},
    "sd3": {},
}
# The pipeline a UNet-only checkpoint from the Hub plugs into, per family: SDXL-Lightning's
# UNet is trained on SDXL base 1.0. A local hf_id directory holding a pipeline is its own base.
CHECKPOINT_BASES = {"sdxl": "stabilityai/stable-diffusion-xl-base-1.0"}
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}

PipelineLoader = Callable[[], DiffusionPipeline]


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """"auto" is fp16 on CUDA and fp32 elsewhere (CPU kernels for fp16 are slow or missing)."""
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    try:
        return DTYPES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; known: auto, {', '.join(DTYPES)}") from None


def _is_local(source: str) -> bool:
    return Path(source).expanduser().is_dir()


def _hf_id(model: ModelProfile) -> str:
    if model.hf_id is None:
        raise ValueError(f"model {model.name} has no hf_id: the diffusers backend needs a Hub id or a local path")
    return model.hf_id


def checkpoint_base(model: ModelProfile, base: str | None = None) -> str:
    """The pipeline that `model.unet_checkpoint` replaces the UNet of."""
    if base is not None:
        return base
    hf_id = _hf_id(model)
    if _is_local(hf_id) and (Path(hf_id).expanduser() / "model_index.json").exists():
        return hf_id
    try:
        return CHECKPOINT_BASES[model.family]
    except KeyError:
        raise ValueError(f"no base pipeline known for a {model.family!r} UNet checkpoint ({model.name})") from None


def checkpoint_path(model: ModelProfile) -> Path:
    """The UNet file: an absolute path, a file in a local hf_id directory, or one fetched from the Hub."""
    if model.unet_checkpoint is None:
        raise ValueError(f"model {model.name} has no unet_checkpoint")
    path = Path(model.unet_checkpoint).expanduser()
    if path.is_absolute():
        return path
    hf_id = _hf_id(model)
    if _is_local(hf_id):
        return Path(hf_id).expanduser() / path
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(hf_id, model.unet_checkpoint))


def load_unet_checkpoint(path: Path, base: str, dtype: torch.dtype) -> UNet2DConditionModel:
    """The base's UNet architecture with the checkpoint's weights (nothing else is initialised)."""
    from safetensors.torch import load_file

    config = UNet2DConditionModel.load_config(base, subfolder="unet")
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
    unet.load_state_dict(load_file(str(path)), strict=True, assign=True)
    left_empty = [name for name, tensor in [*unet.named_parameters(), *unet.named_buffers()] if tensor.is_meta]
    if left_empty:
        raise ValueError(f"UNet checkpoint {path} leaves {len(left_empty)} tensors unset, e.g. {left_empty[:3]}")
    return unet.to(dtype)


def load_pipeline(model: ModelProfile, dtype: torch.dtype, base: str | None = None) -> DiffusionPipeline:
    """The model's pipeline on the CPU, in `dtype`, with its scheduler."""
    source = _hf_id(model)
    pipeline_class = PIPELINE_CLASSES[model.family]
    options = dict(PIPELINE_OPTIONS[model.family])
    if model.unet_checkpoint:
        source = checkpoint_base(model, base)
        options["unet"] = load_unet_checkpoint(checkpoint_path(model), source, dtype)
    options.update(absent_components(pipeline_class, source, options))
    pipeline = pipeline_class.from_pretrained(source, dtype=dtype, **options)
    configure_scheduler(pipeline, model)
    return pipeline


def absent_components(pipeline_class: type[DiffusionPipeline], source: str, given: dict) -> dict[str, None]:
    """Components the class requires but the repository holds none of (absent, or saved as
    [null, null]), as None: a pipeline saved without one (an SD3 without its T5 encoder)
    loads without it, as it was saved; diffusers itself refuses a null required component."""
    index = pipeline_class.load_config(source)
    required = [name for name, parameter in inspect.signature(pipeline_class.__init__).parameters.items()
                if name != "self" and parameter.default is inspect.Parameter.empty]
    return {name: None for name in required
            if name not in given and (not index.get(name) or index[name][0] is None)}


def configure_scheduler(pipeline: DiffusionPipeline, model: ModelProfile) -> None:
    if model.unet_checkpoint:
        pipeline.scheduler = EulerDiscreteScheduler.from_config(pipeline.scheduler.config, timestep_spacing="trailing")


def cache_key(model: ModelProfile, dtype: torch.dtype) -> str:
    return f"{model.name}|{model.family}|{model.hf_id}|{model.unet_checkpoint}|{dtype}"


def preview_decoder(model: ModelProfile, device: torch.device, dtype: torch.dtype) -> LatentDecoder | None:
    """The decoder of the model's previews: the AutoencoderTiny weights its profile names (TAESD's:
    a few MB, a few ms a preview on a GPU), or none, and the model makes no previews. Never the
    pipeline's own VAE: at 1024 px its decode is a large part of a step."""
    if model.preview_decoder is None:
        return None
    vae = AutoencoderTiny.from_pretrained(model.preview_decoder, torch_dtype=dtype)
    return latent_decoder(vae.to(device))


class DiffusersGenerator(Generator):
    """One model's pipeline on one device.

    `load` builds the pipeline when the cache does not hold it yet (default: from the
    model's hf_id; the profiler passes random-weight builders, tests their own pipelines).
    """

    def __init__(
        self,
        model: ModelProfile,
        device: str = "cuda",
        dtype: str = "auto",
        *,
        load: PipelineLoader | None = None,
        cache: ModelCache | None = None,
        base: str | None = None,
    ) -> None:
        super().__init__(model)
        self.device = torch.device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.cache = cache if cache is not None else default_cache(self.device)
        self.key = cache_key(model, self.dtype)
        loader = load or (lambda: load_pipeline(model, self.dtype, base))
        pipeline, swap = self.cache.acquire(self.key, loader)
        self.swap: Swap = swap  # how, and in how many seconds, this model became resident
        pipeline.set_progress_bar_config(disable=True)
        self.pipeline: DiffusionPipeline | None = pipeline
        self.batch_cap: int | None = model.max_batch
        self.decode_preview = preview_decoder(model, self.device, self.dtype)
        self.oom_splits = 0

    def generate(self, batch: list[GenerationInput], control: StepControl = NO_CONTROL) -> list[Image.Image]:
        if self.batch_cap is not None and len(batch) > self.batch_cap:
            return self._in_chunks(batch, self.batch_cap, control)
        try:
            return self.run_batch(batch, control)
        except torch.cuda.OutOfMemoryError:
            if len(batch) == 1:
                raise
        # Out of the except block: the error's traceback, which holds the failed call's
        # tensors, is gone before the halves run.
        half = len(batch) // 2
        self.batch_cap = half if self.batch_cap is None else min(self.batch_cap, half)
        self.oom_splits += 1
        log.warning("out_of_memory_splitting", model=self.model.name, batch=len(batch), cap=self.batch_cap)
        self._free_device_memory()
        return self._in_chunks(batch, half, control)

    def _in_chunks(self, batch: list[GenerationInput], size: int, control: StepControl) -> list[Image.Image]:
        images: list[Image.Image] = []
        for start in range(0, len(batch), size):
            images += self.generate(batch[start:start + size], control.part(start, start + size))
        return images

    def run_batch(self, batch: list[GenerationInput], control: StepControl = NO_CONTROL) -> list[Image.Image]:
        """One pipeline call for the whole batch (no splitting): the profiler's unit."""
        return run_open(self.pipeline, self.model, batch, control, self.decode_preview)

    def warm_up(self) -> None:
        """One image, so that kernels are chosen and memory pools exist before the first job."""
        self.run_batch([warm_up_input(self.model)])
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def close(self) -> None:
        """Back to host memory (kept in the cache for the next switch)."""
        if self.pipeline is None:
            return
        self.pipeline = None
        self.cache.release(self.key)

    def _free_device_memory(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
