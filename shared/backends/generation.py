"""One call of a diffusers text-to-image pipeline for a batch, as every backend makes it."""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import AutoencoderTiny, DiffusionPipeline
from PIL import Image

from shared.backends.base import GenerationInput
from shared.backends.control import NO_CONTROL, StepControl
from shared.profiles import ModelProfile

LatentDecoder = Callable[[torch.Tensor, list[int]], list[Image.Image]]


def run_pipeline(pipeline: DiffusionPipeline, model: ModelProfile, batch: list[GenerationInput],
                 control: StepControl = NO_CONTROL, decode: LatentDecoder | None = None) -> list[Image.Image]:
    """The model's steps and guidance at its resolution; the negative prompt only with guidance.
    A CPU generator per image: the same seed gives the same starting noise on any device.

    After each step diffusers calls `callback_on_step_end`, where `control` reports the step and,
    when every job of the batch is cancelled, raises GenerationCancelled: the call ends there. Not
    the pipeline's `_interrupt` flag: that skips the remaining steps but still decodes the latents
    through the VAE, work (a large part of a step at 1024 px) for images nobody wants."""
    guided = model.guidance > 1.0
    generators = [torch.Generator("cpu").manual_seed(item.seed) for item in batch]
    with torch.inference_mode():
        output = pipeline(
            prompt=[item.prompt for item in batch],
            negative_prompt=[item.negative_prompt for item in batch] if guided else None,
            num_inference_steps=model.steps,
            guidance_scale=model.guidance,
            height=model.resolution,
            width=model.resolution,
            generator=generators,
            output_type="pil",
            callback_on_step_end=control.on_step_end(model.steps, decode),
        )
    return list(output.images)


def run_open(pipeline: DiffusionPipeline | None, model: ModelProfile, batch: list[GenerationInput],
             control: StepControl = NO_CONTROL, decode: LatentDecoder | None = None) -> list[Image.Image]:
    """run_pipeline for a generator that may be closed: nothing for no inputs (no pipeline call),
    an error once closed (its pipeline is gone: a call would be a use after close)."""
    if not batch:
        return []
    if pipeline is None:
        raise RuntimeError("generator is closed")
    return run_pipeline(pipeline, model, batch, control, decode)


def latent_decoder(vae: AutoencoderTiny) -> LatentDecoder:
    """Previews from a step's latents: a small decoder (TAESD's architecture, AutoencoderTiny) run
    on the rows due only, after undoing the pipeline's latent scaling as its own VAE would (the
    decoder's config: TAESD's 1.0 and 0.0 for SD and SDXL, TAESD3's for SD3). A few ms a row on a
    CPU at the tiny size, far less than the pipeline's VAE at full size."""
    def decode(latents: torch.Tensor, rows: list[int]) -> list[Image.Image]:
        with torch.inference_mode():
            picked = latents[rows].to(device=vae.device, dtype=vae.dtype)
            picked = picked / vae.config.scaling_factor + vae.config.shift_factor
            pixels = (vae.decode(picked).sample / 2 + 0.5).clamp(0, 1)
            array = (pixels.permute(0, 2, 3, 1).float().cpu().numpy() * 255).round().astype("uint8")
        return [Image.fromarray(image) for image in array]
    return decode


def warm_up_input(model: ModelProfile) -> GenerationInput:
    """One image at the model's resolution: what a warm-up generates, so that kernels are chosen
    and memory pools exist before the first job."""
    side = model.resolution
    return GenerationInput("warm-up", "a warm-up prompt", "", 0, side, side)
