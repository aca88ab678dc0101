"""One call of a diffusers text-to-image pipeline for a batch, as every backend makes it."""

from __future__ import annotations

import torch
from diffusers import DiffusionPipeline
from PIL import Image

from shared.backends.base import GenerationInput
from shared.backends.control import NO_CONTROL, StepControl
from shared.profiles import ModelProfile


def run_pipeline(pipeline: DiffusionPipeline, model: ModelProfile, batch: list[GenerationInput],
                 control: StepControl = NO_CONTROL) -> list[Image.Image]:
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
            callback_on_step_end=control.on_step_end(model.steps),
        )
    return list(output.images)


def run_open(pipeline: DiffusionPipeline | None, model: ModelProfile,
             batch: list[GenerationInput], control: StepControl = NO_CONTROL) -> list[Image.Image]:
    """run_pipeline for a generator that may be closed: nothing for no inputs (no pipeline call),
    an error once closed (its pipeline is gone: a call would be a use after close)."""
    if not batch:
        return []
    if pipeline is None:
        raise RuntimeError("generator is closed")
    return run_pipeline(pipeline, model, batch, control)


def warm_up_input(model: ModelProfile) -> GenerationInput:
    """One image at the model's resolution: what a warm-up generates, so that kernels are chosen
    and memory pools exist before the first job."""
    side = model.resolution
    return GenerationInput("warm-up", "a warm-up prompt", "", 0, side, side)
