"""Emulated backends: profiled latency and profiled judge scores, without a model.

They stand in for a GPU model in experiments: the generator sleeps as long as the
profile says a batch takes, and the scorer answers with the published per-prompt
judge score. Neither imports torch.
"""

from __future__ import annotations

import hashlib
import re
import time
from functools import partial

from PIL import Image

from shared import reference
from shared.backends.base import GenerationInput, Generator, ScoreInput, Scorer
from shared.backends.control import NO_CONTROL, StepControl
from shared.profiles import ModelProfile

PLACEHOLDER_SIZE = 64


def stable_hash(*parts: str | int) -> int:
    """A 64-bit hash that is the same in every process (unlike hash())."""
    digest = hashlib.blake2b(digest_size=8)
    for part in parts:
        digest.update(str(part).encode("utf-8"))
        digest.update(b"\x00")
    return int.from_bytes(digest.digest(), "big")


def placeholder_image(seed: int) -> Image.Image:
    colour = stable_hash("colour", seed).to_bytes(8, "big")[:3]
    return Image.new("RGB", (PLACEHOLDER_SIZE, PLACEHOLDER_SIZE), tuple(colour))


def placeholder_preview(seed: int, step: int, steps: int) -> Image.Image:
    """A preview of the placeholder at `step`: grey fading to the final colour, so the previews of
    an emulated run differ from each other and from the image, as a model's would."""
    final = placeholder_image(seed)
    return Image.blend(Image.new("RGB", final.size, (128, 128, 128)), final, step / max(steps, 1))


def placeholders(batch: list[GenerationInput], step: int, steps: int, rows: list[int]) -> list[Image.Image]:
    return [placeholder_preview(batch[row].seed, step, steps) for row in rows]


class EmulatedGenerator(Generator):
    """Sleeps the profiled batch latency times `time_scale`, then returns placeholders. The sleep
    is cut in the model's steps, each reported to the batch's control, so a cancel stops it at the
    next step as it would stop the model, and a pause too (it resumes from the step it reached:
    can_pause); previews (placeholder_preview) are made at the steps a model's would be, so the
    experiments exercise their path.

    `fail_pattern` injects faults for chaos and poison-job tests: a batch holding a prompt that
    matches it raises, every time, as a model that chokes on an input would."""

    can_pause = True  # its state is the step it reached

    def __init__(self, model: ModelProfile, time_scale: float = 1.0, fail_pattern: str | None = None) -> None:
        super().__init__(model)
        self.fail_pattern = re.compile(fail_pattern) if fail_pattern else None
        if time_scale < 0:
            raise ValueError(f"time_scale must be >= 0, got {time_scale}")
        if time_scale > 0 and not model.latency_ms:
            raise ValueError(f"model {model.name} has no latency profile to emulate")
        self.time_scale = time_scale

    def generate(self, batch: list[GenerationInput], control: StepControl = NO_CONTROL) -> list[Image.Image]:
        if not batch:
            return []
        poisoned = [item.job_id for item in batch if self.fail_pattern and self.fail_pattern.search(item.prompt)]
        if poisoned:
            raise RuntimeError(f"injected fault: prompt of job {poisoned[0]} matches the fail pattern")
        if self.time_scale > 0:
            steps = max(self.model.steps, 1)
            first = min(control.first_step, steps)  # a resumed batch sleeps only the steps it has left
            started, total_s = time.perf_counter(), self.model.batch_latency_s(len(batch)) * self.time_scale
            for step in range(first + 1, steps + 1):  # each step ends at its share of the total: no drift
                time.sleep(max(started + total_s * (step - first) / steps - time.perf_counter(), 0.0))
                control.step(step, steps)
                control.preview(step, steps, partial(placeholders, batch, step, steps))
        return [placeholder_image(item.seed) for item in batch]


class EmulatedScorer(Scorer):
    """The profiled judge score of the model on the prompt; ignores the image.

    A reference prompt gets its published score. Any other prompt is mapped, by a
    stable hash of its text, to one reference row, and gets that row's score for
    the model: every model sees the same row, so their relative quality holds.
    A model without a reference column gets a uniform draw from the same hash.
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def score(self, batch: list[ScoreInput]) -> list[float]:
        return [self.score_one(item.prompt, item.model) for item in batch]

    def score_one(self, prompt: str, model: ModelProfile) -> float:
        scores = reference.judge_scores()
        column = model.reference_index
        prompt_id = reference.prompt_id(prompt)
        if column is not None and prompt_id is not None:
            return float(scores[prompt_id, column])
        draw = stable_hash("prompt", self.seed, prompt)
        if column is None:
            return draw / 2**64
        return float(scores[draw % scores.shape[0], column])
