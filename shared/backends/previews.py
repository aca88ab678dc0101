"""Previews while a batch generates (OpenAI's partial images): the model's side. No torch here
(the emulated backend makes previews too); the decoder of latents is the backend's
(shared/backends/generation.py: `latent_decoder`).

A batch's inputs say how many previews each job wants (`GenerationInput.previews`, 0-3). The
generator's StepControl is wrapped in a PreviewControl holding the batch's schedule
(shared/policies/previews.py: step -> the rows due then); at a step with rows due, the backend's
`render` decodes only those rows, each image is scaled down (at most 256 px a side), encoded in
its job's format, and handed to the sink: in the model process, a frame written on the reply pipe
before the batch's reply (model_process.py); in the worker's own process, the worker's callback. A
batch where no job asked has no PreviewControl: it pays nothing, not even a check per step."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from shared.backends.control import StepControl
from shared.backends.images import encode_image
from shared.policies.previews import PREVIEW_QUALITY, preview_schedule, preview_size


@dataclass(frozen=True)
class Preview:
    """One preview of one job: its index among the job's previews, the step it shows, the image."""

    job_id: str
    index: int
    step: int
    steps: int
    data: bytes  # encoded in the job's output format
    format: str


PreviewSink = Callable[[Preview], None]


def encode_preview(image: Image.Image, fmt: str) -> bytes:
    """The image scaled to a preview's size (never enlarged) and encoded small."""
    size = preview_size(image.width, image.height)
    if size != image.size:
        image = image.resize(size, Image.Resampling.BILINEAR)
    return encode_image(image, fmt, PREVIEW_QUALITY)


class PreviewControl(StepControl):
    """A StepControl that also makes the batch's previews (see the module's docstring). `part`
    keeps the whole batch's schedule: a backend that runs the batch in chunks renders the rows of
    its chunk, numbered within it."""

    def __init__(self, inner: StepControl, inputs: Sequence[Any], steps: int, sink: PreviewSink,
                 start: int = 0, stop: int | None = None) -> None:
        super().__init__(inner.block, inner.seq, start, stop, inner.first_step)
        self.inputs, self.steps, self.sink = inputs, steps, sink
        self.schedule = preview_schedule([item.previews for item in inputs], steps)

    def part(self, start: int, stop: int) -> StepControl:
        return PreviewControl(StepControl(self.block, self.seq, first_step=self.first_step), self.inputs, self.steps,
                              self.sink, self.start + start, self.start + stop)

    def preview(self, step: int, steps: int, render: Callable[[list[int]], list[Any]]) -> None:
        stop = len(self.inputs) if self.stop is None else self.stop
        due = [(row, index) for row, index in self.schedule.get(step, ()) if self.start <= row < stop]
        if not due:
            return
        images = render([row - self.start for row, _ in due])
        for (row, index), image in zip(due, images, strict=True):
            item = self.inputs[row]
            self.sink(Preview(item.job_id, index, step, steps, encode_preview(image, item.preview_format),
                              item.preview_format))


def with_previews(control: StepControl, inputs: Sequence[Any], steps: int, sink: PreviewSink | None) -> StepControl:
    """`control` with the batch's previews when a job of it asked for any and someone takes them."""
    if sink is None or not any(item.previews for item in inputs):
        return control
    return PreviewControl(control, inputs, steps, sink, control.start, control.stop)
