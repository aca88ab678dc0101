"""Tiny random-weight variants of the real diffusers pipelines, for CPUs and tests.

Each family is built from the same pipeline, model and scheduler classes as the
full-size model, with configs written here and random weights (seeded, so two
builds are identical). Nothing is downloaded: the CLIP tokenizer's vocab.json and
merges.txt are derived from the BPE file open_clip ships.

Images are always generated at `model.resolution`: the job's width and height
are ignored, because the tiny models exist to exercise the serving path, not to
honour a requested size.
"""

from __future__ import annotations

import gzip
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    AutoencoderTiny,
    DiffusionPipeline,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from open_clip.tokenizer import bytes_to_unicode, default_bpe
from PIL import Image
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from shared.backends.base import GenerationInput, Generator
from shared.backends.control import NO_CONTROL, StepControl
from shared.backends.generation import latent_decoder, run_open, warm_up_input
from shared.profiles import ModelProfile

# The real CLIP BPE: 256 byte symbols, their word-final forms, 48,894 merges, 2 specials.
CLIP_VOCAB_SIZE = 49408
CLIP_MAX_LENGTH = 77
BOS_ID, EOS_ID = 49406, 49407
TEXT_HIDDEN = 32
VAE_CHANNELS = (8, 16, 32, 32)  # four levels: the real 8x latent downsampling
WEIGHTS_SEED = 0


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "hadis"


def _clip_bpe_files() -> tuple[dict[str, int], list[str]]:
    """vocab and merges exactly as CLIP's own tokenizer derives them from the BPE file."""
    with gzip.open(default_bpe(), "rt", encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    byte_chars = list(bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars]
    tokens += ["".join(merge.split()) for merge in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {token: i for i, token in enumerate(tokens)}, merges


def _write_atomic(path: Path, text: str) -> None:
    # Several workers may build at once: each writes its own temp file, then renames.
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent, delete=False) as handle:
        handle.write(text)
    os.chmod(handle.name, 0o644)
    os.replace(handle.name, path)


def clip_tokenizer_dir() -> Path:
    """A directory holding vocab.json and merges.txt, written on first use."""
    directory = cache_dir() / "clip-bpe-16e6"
    if (directory / "vocab.json").exists() and (directory / "merges.txt").exists():
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    vocab, merges = _clip_bpe_files()
    _write_atomic(directory / "merges.txt", "#version: 0.2\n" + "\n".join(merges) + "\n")
    _write_atomic(directory / "vocab.json", json.dumps(vocab, ensure_ascii=False))
    return directory


@lru_cache(maxsize=1)
def clip_tokenizer() -> CLIPTokenizer:
    return CLIPTokenizer.from_pretrained(str(clip_tokenizer_dir()), model_max_length=CLIP_MAX_LENGTH)


def _text_config() -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE,
        max_position_embeddings=CLIP_MAX_LENGTH,
        hidden_size=TEXT_HIDDEN,
        intermediate_size=64,
        num_hidden_layers=2,  # SDXL and SD3 read the penultimate layer
        num_attention_heads=4,
        projection_dim=TEXT_HIDDEN,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=EOS_ID,
        hidden_act="quick_gelu",
    )


def _vae(
    latent_channels: int, scaling_factor: float, shift_factor: float | None = None, quant_conv: bool = True
) -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(VAE_CHANNELS),
        up_block_types=("UpDecoderBlock2D",) * len(VAE_CHANNELS),
        block_out_channels=VAE_CHANNELS,
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=8,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
        use_quant_conv=quant_conv,
        use_post_quant_conv=quant_conv,
    )


def _euler(steps: int) -> EulerDiscreteScheduler:
    # Few-step distilled models (Turbo, Lightning) start from the last training timestep.
    return EulerDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        timestep_spacing="trailing" if steps <= 2 else "leading",
        steps_offset=1,
    )


def _unet(model: ModelProfile, **architecture) -> UNet2DConditionModel:
    """A two-level UNet of 32 and 64 channels over 4 latent channels: what SD and SDXL share at
    this size; `architecture` is where they differ (block kinds, attention, conditioning)."""
    return UNet2DConditionModel(sample_size=model.resolution // 8, in_channels=4, out_channels=4,
                                block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
                                **architecture)


def _build_sd(model: ModelProfile) -> DiffusionPipeline:
    unet = _unet(
        model,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=8,
        cross_attention_dim=TEXT_HIDDEN,
    )
    return StableDiffusionPipeline(
        vae=_vae(latent_channels=4, scaling_factor=0.18215),
        text_encoder=CLIPTextModel(_text_config()),
        tokenizer=clip_tokenizer(),
        unet=unet,
        scheduler=_euler(model.steps),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _build_sdxl(model: ModelProfile) -> DiffusionPipeline:
    time_embed_dim = 8
    unet = _unet(
        model,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(4, 8),
        transformer_layers_per_block=(1, 2),
        use_linear_projection=True,
        cross_attention_dim=2 * TEXT_HIDDEN,  # both encoders' hidden states, concatenated
        addition_embed_type="text_time",
        addition_time_embed_dim=time_embed_dim,
        # six size/crop ids, each embedded, plus the second encoder's pooled projection
        projection_class_embeddings_input_dim=6 * time_embed_dim + TEXT_HIDDEN,
    )
    return StableDiffusionXLPipeline(
        vae=_vae(latent_channels=4, scaling_factor=0.13025),
        text_encoder=CLIPTextModel(_text_config()),
        text_encoder_2=CLIPTextModelWithProjection(_text_config()),
        tokenizer=clip_tokenizer(),
        tokenizer_2=clip_tokenizer(),
        unet=unet,
        scheduler=_euler(model.steps),
        add_watermarker=False,
    )


def _build_sd3(model: ModelProfile) -> DiffusionPipeline:
    transformer = SD3Transformer2DModel(
        sample_size=model.resolution // 8,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=2 * TEXT_HIDDEN,  # CLIP states are zero-padded up to this width
        caption_projection_dim=32,
        pooled_projection_dim=2 * TEXT_HIDDEN,
        pos_embed_max_size=max(model.resolution // 16, 16),
    )
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
        vae=_vae(latent_channels=16, scaling_factor=1.5305, shift_factor=0.0609, quant_conv=False),
        text_encoder=CLIPTextModelWithProjection(_text_config()),
        tokenizer=clip_tokenizer(),
        text_encoder_2=CLIPTextModelWithProjection(_text_config()),
        tokenizer_2=clip_tokenizer(),
        text_encoder_3=None,
        tokenizer_3=None,
    )


def preview_vae(model: ModelProfile) -> AutoencoderTiny:
    """The previews' decoder: TAESD's architecture (AutoencoderTiny, TAESD3's 16 latent channels
    for SD3) at the tiny size, random weights seeded like the pipeline's: 8x upsampling in three
    levels of 8 channels, one block each."""
    with _seeded(WEIGHTS_SEED):
        return AutoencoderTiny(encoder_block_out_channels=(8,) * 4, decoder_block_out_channels=(8,) * 4,
                               num_encoder_blocks=(1,) * 4, num_decoder_blocks=(1,) * 4,
                               latent_channels=16 if model.family == "sd3" else 4)


BUILDERS: dict[str, Callable[[ModelProfile], DiffusionPipeline]] = {
    "sd": _build_sd,
    "sdxl": _build_sdxl,
    "sd3": _build_sd3,
}


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    # Seed the weight init without disturbing the caller's global RNG state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def build_pipeline(model: ModelProfile) -> DiffusionPipeline:
    """The tiny pipeline for `model.family`, with deterministic random weights."""
    try:
        builder = BUILDERS[model.family]
    except KeyError:
        raise ValueError(f"no tiny pipeline for family {model.family!r}; known: {sorted(BUILDERS)}") from None
    with _seeded(WEIGHTS_SEED):
        pipeline = builder(model)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


class TinyGenerator(Generator):
    """A real diffusers pipeline with tiny random weights; ignores the job's width/height."""

    def __init__(self, model: ModelProfile, device: str = "cpu") -> None:
        super().__init__(model)
        self.device = torch.device(device)
        self.pipeline: DiffusionPipeline | None = build_pipeline(model).to(self.device)
        self.decode_preview = latent_decoder(preview_vae(model).to(self.device))

    def generate(self, batch: list[GenerationInput], control: StepControl = NO_CONTROL) -> list[Image.Image]:
        return run_open(self.pipeline, self.model, batch, control, self.decode_preview)

    def warm_up(self) -> None:
        self.generate([warm_up_input(self.model)])

    def close(self) -> None:
        self.pipeline = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
