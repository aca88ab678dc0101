"""Streamed previews (OpenAI's `partial_images`): which denoising steps show one, how large, and
every bound on them (docs/jobs.md, Previews). Plain functions: the model's side, the worker and
the api read the same numbers, and tests call them without a model.

A job asks for k previews (0-3, MAX_PARTIAL_IMAGES); with n denoising steps they are taken after
steps round(n·(i+1)/(k+1)), i < k: evenly spread, never the last step (that is the final image),
so a model of few steps gives fewer (a 1-step model none: OpenAI allows the final image to come
before all the partial ones). Each is the intermediate latents decoded by a small decoder,
scaled to at most PREVIEW_MAX_SIDE pixels a side, and encoded in the job's output format at
PREVIEW_QUALITY: a few KiB that travel on the model process's pipe and sit in the store for
PREVIEW_TTL_S, not the size of an image."""

from __future__ import annotations

import math

MAX_PARTIAL_IMAGES = 3  # OpenAI's bound (0-3)
PREVIEW_MAX_SIDE = 256  # pixels, the longer side of a preview
PREVIEW_QUALITY = 70  # jpeg and webp previews (png ones are lossless): small, and only a preview
MAX_PREVIEW_BYTES = 512 * 1024  # a preview frame larger than this breaks the model process's protocol
PREVIEW_TTL_S = 600  # a preview's key lives this long: a stream reads it within seconds of its write


def preview_steps(partial_images: int, steps: int) -> list[int]:
    """The steps (1-based, each < steps) after which a job asking for `partial_images` previews
    gets one, in order, without repeats: fewer than asked when the model has too few steps."""
    wanted = max(0, min(partial_images, MAX_PARTIAL_IMAGES))
    chosen: list[int] = []
    for i in range(wanted):
        step = math.floor(steps * (i + 1) / (wanted + 1) + 0.5)  # round half up, not to even
        if 1 <= step < steps and step not in chosen:
            chosen.append(step)
    return chosen


def preview_schedule(partial_images: list[int], steps: int) -> dict[int, list[tuple[int, int]]]:
    """For a batch whose rows ask for these numbers of previews: step -> [(row, preview index)].
    A batch where nobody asked has an empty schedule (it decodes nothing)."""
    schedule: dict[int, list[tuple[int, int]]] = {}
    for row, wanted in enumerate(partial_images):
        for index, step in enumerate(preview_steps(wanted, steps)):
            schedule.setdefault(step, []).append((row, index))
    return schedule


def preview_size(width: int, height: int, max_side: int = PREVIEW_MAX_SIDE) -> tuple[int, int]:
    """A preview's size: the image's aspect, its longer side at most max_side (never enlarged)."""
    scale = min(1.0, max_side / max(width, height, 1))
    return max(1, round(width * scale)), max(1, round(height * scale))


def previews_for(partial_images: int, escalated: bool) -> int:
    """The previews a generation makes for a job: none when the job was escalated (its light
    generation made them: `partial_images` is a bound on the whole job, as OpenAI's is)."""
    return 0 if escalated else max(0, min(partial_images, MAX_PARTIAL_IMAGES))
