"""The published architectures, built with random weights, for profiling where the
weights cannot be fetched (the compute cost of a network does not depend on its
weight values).

The hyperparameters below are the published `config.json` files of the models'
Hugging Face repositories, written out here because the Hub cannot be reached:

- `sd15`: runwayml/stable-diffusion-v1-5 (unet, vae, text_encoder = CLIP ViT-L/14 text).
  UNet 859,520,964 parameters.
- `sd21`: stabilityai/sd-turbo (the SD 2.1 architecture at 512 px: the same UNet with
  linear projections, head dims 5/10/20/20 and 1024-wide cross-attention; text_encoder =
  OpenCLIP ViT-H/14 text, 23 layers as SD 2.x uses it). UNet 865,910,724 parameters.
- `sdxl`: stabilityai/stable-diffusion-xl-base-1.0, which SDXL-Lightning and SDXL-Turbo
  share (unet, vae, text_encoder = CLIP ViT-L/14 text, text_encoder_2 = OpenCLIP
  ViT-bigG/14 text with projection). UNet 2,567,463,684 parameters.

The tests build each one on the meta device and check these parameter counts.
SDXS (a pruned UNet) and the SD3.5 models (MMDiT + T5-XXL, whose tokenizer cannot be
built offline) are not written here; the H200 profile has measured those.

The tokenizers are CLIP's BPE (shared.backends.tiny.clip_tokenizer): SD 2.x's tokenizer
pads with "!" instead of the end token, which changes no shape and no cost.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import (
    AutoencoderKL,
    DiffusionPipeline,
    EulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from shared.backends.tiny import CLIP_MAX_LENGTH, CLIP_VOCAB_SIZE, clip_tokenizer
from shared.profiles import ModelProfile

SD_BLOCKS = {
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "in_channels": 4,
    "out_channels": 4,
}
UNET_CONFIGS: dict[str, dict] = {
    "sd15": {**SD_BLOCKS, "sample_size": 64, "attention_head_dim": 8, "cross_attention_dim": 768},
    "sd21": {**SD_BLOCKS, "sample_size": 64, "attention_head_dim": (5, 10, 20, 20), "cross_attention_dim": 1024,
             "use_linear_projection": True},
    "sdxl": {
        "sample_size": 128,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        "block_out_channels": (320, 640, 1280),
        "layers_per_block": 2,
        "attention_head_dim": (5, 10, 20),
        "transformer_layers_per_block": (1, 2, 10),
        "cross_attention_dim": 2048,
        "use_linear_projection": True,
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": 256,
        "projection_class_embeddings_input_dim": 2816,
        "norm_num_groups": 32,
    },
}
VAE_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
}
CLIP_L = {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12, "num_hidden_layers": 12,
          "projection_dim": 768, "hidden_act": "quick_gelu"}
OPENCLIP_H = {"hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16, "num_hidden_layers": 23,
              "projection_dim": 512, "hidden_act": "gelu"}
OPENCLIP_BIGG = {"hidden_size": 1280, "intermediate_size": 5120, "num_attention_heads": 20, "num_hidden_layers": 32,
                 "projection_dim": 1280, "hidden_act": "gelu"}
SCALED_LINEAR = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                 "beta_schedule": "scaled_linear", "steps_offset": 1}

# The architecture a Hub repository holds (what downloading its configs would give).
ARCHITECTURES = {
    "runwayml/stable-diffusion-v1-5": "sd15",
    "stable-diffusion-v1-5/stable-diffusion-v1-5": "sd15",
    "stabilityai/sd-turbo": "sd21",
    "stabilityai/stable-diffusion-xl-base-1.0": "sdxl",
    "ByteDance/SDXL-Lightning": "sdxl",
    "stabilityai/sdxl-turbo": "sdxl",
}


def _text_encoder(shape: dict, with_projection: bool) -> CLIPTextModel | CLIPTextModelWithProjection:
    config = CLIPTextConfig(vocab_size=CLIP_VOCAB_SIZE, max_position_embeddings=CLIP_MAX_LENGTH,
                            bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, **shape)
    return CLIPTextModelWithProjection(config) if with_projection else CLIPTextModel(config)


def _unet(architecture: str, model: ModelProfile) -> UNet2DConditionModel:
    return UNet2DConditionModel(**{**UNET_CONFIGS[architecture], "sample_size": model.resolution // 8})


def _scheduler(architecture: str, model: ModelProfile) -> PNDMScheduler | EulerDiscreteScheduler:
    if architecture == "sd15":
        return PNDMScheduler(**SCALED_LINEAR, skip_prk_steps=True, set_alpha_to_one=False)
    if architecture == "sd21":
        return EulerDiscreteScheduler(**SCALED_LINEAR, timestep_spacing="trailing")
    spacing = "trailing" if model.unet_checkpoint or model.steps <= 2 else "leading"
    return EulerDiscreteScheduler(**SCALED_LINEAR, timestep_spacing=spacing)


def _sd_modules(architecture: str, model: ModelProfile) -> dict[str, torch.nn.Module]:
    return {
        "vae": AutoencoderKL(**VAE_CONFIG, scaling_factor=0.18215),
        "text_encoder": _text_encoder(CLIP_L if architecture == "sd15" else OPENCLIP_H, with_projection=False),
        "unet": _unet(architecture, model),
    }


def _sdxl_modules(architecture: str, model: ModelProfile) -> dict[str, torch.nn.Module]:
    return {
        "vae": AutoencoderKL(**VAE_CONFIG, scaling_factor=0.13025, force_upcast=True),
        "text_encoder": _text_encoder(CLIP_L, with_projection=False),
        "text_encoder_2": _text_encoder(OPENCLIP_BIGG, with_projection=True),
        "unet": _unet(architecture, model),
    }


def _sd_pipeline(modules: dict, scheduler) -> DiffusionPipeline:
    return StableDiffusionPipeline(**modules, tokenizer=clip_tokenizer(), scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)


def _sdxl_pipeline(modules: dict, scheduler) -> DiffusionPipeline:
    return StableDiffusionXLPipeline(**modules, tokenizer=clip_tokenizer(), tokenizer_2=clip_tokenizer(),
                                     scheduler=scheduler, add_watermarker=False)


MODULE_BUILDERS: dict[str, Callable[[str, ModelProfile], dict[str, torch.nn.Module]]] = {
    "sd15": _sd_modules, "sd21": _sd_modules, "sdxl": _sdxl_modules,
}
PIPELINE_BUILDERS: dict[str, Callable[[dict, object], DiffusionPipeline]] = {
    "sd15": _sd_pipeline, "sd21": _sd_pipeline, "sdxl": _sdxl_pipeline,
}


def architecture_of(model: ModelProfile) -> str:
    try:
        return ARCHITECTURES[model.hf_id or ""]
    except KeyError:
        raise ValueError(f"no published architecture written for {model.name} ({model.hf_id}); "
                         f"known repositories: {sorted(ARCHITECTURES)}") from None


def build_random_pipeline(model: ModelProfile, device: str | torch.device = "cpu",
                          dtype: torch.dtype = torch.float32, seed: int = 0) -> DiffusionPipeline:
    """The published architecture of `model`, with random weights initialised on `device`
    (fast on a GPU; "meta" allocates nothing), in `dtype`."""
    architecture = architecture_of(model)
    # Only the modules are built under the device: schedulers keep their tables on the CPU.
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        modules = MODULE_BUILDERS[architecture](architecture, model)
    if dtype != torch.float32:
        for module in modules.values():
            module.to(dtype=dtype)
    pipeline = PIPELINE_BUILDERS[architecture](modules, _scheduler(architecture, model))
    pipeline.set_progress_bar_config(disable=True)
    return pipeline
