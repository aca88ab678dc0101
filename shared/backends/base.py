"""The one interface every model backend implements.

Only modules under shared/backends import torch, diffusers or open_clip, and
only lazily (inside the concrete backend modules), so that the router and the
controller start without the model stack.

Both `generate` and `score` block: callers run them off the event-loop thread.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import NamedTuple

from PIL import Image
from pydantic import ConfigDict

from shared.backends.control import NO_CONTROL, BatchBook, ControlBlock, GenerationPaused, StepControl
from shared.backends.previews import PreviewSink, with_previews
from shared.profiles import ModelProfile


@dataclass(frozen=True)
class GenerationInput:
    __pydantic_config__ = ConfigDict(extra="forbid")  # as it travels to a model process

    job_id: str
    prompt: str
    negative_prompt: str
    seed: int
    width: int
    height: int
    previews: int = 0  # previews wanted while it generates (0-3: shared/policies/previews.py)
    preview_format: str = "png"  # the job's output format, which its previews take too


@dataclass(frozen=True)
class ScoreInput:
    job_id: str
    prompt: str
    image: Image.Image
    model: ModelProfile


class Generated(NamedTuple):
    images: list[Image.Image]
    seconds: float  # how much later than the batch before it this one ended: what admission predicts
    busy_s: float  # the model's own time on it (without handing batches in and out)


class Generator(ABC):
    """Turns a batch of prompts into images with one model. A batch run by generate_timed can be
    cancelled (`cancel`) and watched (`progress`) while it runs, through the generator's book
    (control.py); a model in another process shares its book's memory with it. One that
    `can_pause` stops a batch the worker pauses (`pause`) at its next step, raising
    GenerationPaused, and runs it again from that step when asked (generate_timed's first_step)."""

    can_pause = False  # a diffusers pipeline would have to keep its latents and its scheduler's place

    def __init__(self, model: ModelProfile) -> None:
        self.model = model
        self.book = BatchBook(ControlBlock.local())

    @abstractmethod
    def generate(self, batch: list[GenerationInput], control: StepControl = NO_CONTROL) -> list[Image.Image]:
        """One image per input, in order. Raises on failure; calls control.step after each
        denoising step (which raises GenerationCancelled when every job is cancelled)."""

    def generate_timed(self, batch: list[GenerationInput], on_preview: PreviewSink | None = None,
                       first_step: int = 0) -> Generated:
        """generate, watched and cancellable through the book; `on_preview` takes the previews the
        batch's jobs asked for, as they are made (on this thread); `first_step`: the steps a paused
        batch had run (0 for a generator that cannot pause)."""
        job_ids = [item.job_id for item in batch]
        seq = self.book.begin(job_ids)
        started = time.perf_counter()
        try:
            control = with_previews(self.book.block.control(seq, first_step if self.can_pause else 0), batch,
                                    self.model.steps, on_preview)
            images = self.generate_measured(batch, control, started)
        finally:
            self.book.end(job_ids)
        seconds = time.perf_counter() - started
        return Generated(images, seconds, seconds)

    def generate_measured(self, batch: list[GenerationInput], control: StepControl,
                          started: float) -> list[Image.Image]:
        """generate; a pause carries the model's time on the batch since `started` (its steps so far
        are its class's busy time: measured, not estimated). Here and in the model's process."""
        try:
            return self.generate(batch, control)
        except GenerationPaused as paused:
            paused.busy_s = time.perf_counter() - started
            raise

    def cancel(self, job_ids: list[str]) -> None:
        """Stop these jobs: a batch of which every job is cancelled ends at its next step; a job
        whose batch has not begun is flagged when it does."""
        self.book.cancel(job_ids)

    def pause(self, job_ids: list[str]) -> bool:
        """Pause the running batch holding these jobs at its next step (can_pause); False when it
        cannot be paused (this generator cannot, or the batch is not running)."""
        return self.can_pause and self.book.pause(job_ids)

    def progress(self, job_id: str) -> tuple[int, int] | None:
        """(step, steps) of the running batch that holds this job, if it has reported one."""
        return self.book.progress(job_id)

    def warm_up(self) -> None:  # noqa: B027 (an optional hook: nothing unless a backend overrides it)
        """Run once before the worker reports ready."""

    def close(self) -> None:  # noqa: B027 (an optional hook: nothing unless a backend overrides it)
        """Release the model."""


class Scorer(ABC):
    """The quality judge's model: a score per image, higher = better (P(real))."""

    @abstractmethod
    def score(self, batch: list[ScoreInput]) -> list[float]:
        """One score in [0, 1] per input, in order."""

    def close(self) -> None:  # noqa: B027 (an optional hook: nothing unless a scorer overrides it)
        """Release the model."""
