"""Model backends behind one interface (base.py), chosen by kind.

The concrete modules are imported inside the factories, so importing this package
never imports torch: the emulated backends and the PNG helpers run without it.
"""

from __future__ import annotations

import threading
from functools import wraps

from shared.backends.base import GenerationInput, Generator, ScoreInput, Scorer
from shared.backends.images import decode_image, decode_png, encode_image, encode_png
from shared.profiles import ModelProfile

GENERATOR_KINDS = ("diffusers", "emulated", "tiny")
SCORER_KINDS = ("clip", "emulated", "clipscore")

__all__ = [
    "GENERATOR_KINDS",
    "SCORER_KINDS",
    "GenerationInput",
    "Generator",
    "ScoreInput",
    "Scorer",
    "decode_image",
    "decode_png",
    "encode_image",
    "encode_png",
    "make_generator",
    "make_scorer",
]


# transformers' lazy modules are not safe to import from two threads at once (seen as "cannot
# import name 'PreTrainedModel'" when two workers of one process load models together), so
# models are built one at a time in a process.
_BUILDING = threading.Lock()


def _one_at_a_time(factory):
    @wraps(factory)
    def build(*args, **kwargs):
        with _BUILDING:
            return factory(*args, **kwargs)

    return build


@_one_at_a_time
def make_generator(
    kind: str, model: ModelProfile, *, device: str = "cpu", time_scale: float = 1.0, dtype: str = "auto",
    fail_pattern: str | None = None,
) -> Generator:
    """`device` applies to "tiny" and "diffusers", `dtype` to "diffusers" ("auto": fp16 on
    CUDA, fp32 on the CPU), `time_scale` and `fail_pattern` (fault injection) to "emulated"."""
    if kind == "diffusers":
        from shared.backends.diffusers_backend import DiffusersGenerator

        return DiffusersGenerator(model, device=device, dtype=dtype)
    if kind == "tiny":
        from shared.backends.tiny import TinyGenerator

        return TinyGenerator(model, device=device)
    if kind == "emulated":
        from shared.backends.emulated import EmulatedGenerator

        return EmulatedGenerator(model, time_scale=time_scale, fail_pattern=fail_pattern)
    raise ValueError(f"unknown generator kind {kind!r}; known: {', '.join(GENERATOR_KINDS)}")


@_one_at_a_time
def make_scorer(
    kind: str,
    *,
    device: str = "cpu",
    clip_arch: str = "ViT-B-32",
    head_path: str | None = None,
    clip_checkpoint: str | None = None,
    seed: int = 0,
) -> Scorer:
    """`device`, `clip_arch` and `clip_checkpoint` apply to "clip" and "clipscore", `head_path`
    to "clip", `seed` to all (it fixes random weights)."""
    if kind == "clip":
        from shared.backends.clip_judge import ClipJudge

        return ClipJudge(arch=clip_arch, checkpoint=clip_checkpoint, head_path=head_path, seed=seed, device=device)
    if kind == "clipscore":
        from shared.backends.clipscore import ClipScoreJudge

        return ClipScoreJudge(arch=clip_arch, checkpoint=clip_checkpoint, seed=seed, device=device)
    if kind == "emulated":
        from shared.backends.emulated import EmulatedScorer

        return EmulatedScorer(seed=seed)
    raise ValueError(f"unknown scorer kind {kind!r}; known: {', '.join(SCORER_KINDS)}")
