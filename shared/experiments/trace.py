"""Request traces: `arrival_ms,prompt_id` per line (the published MAF-shaped traces); the prompt
text is line `prompt_id` of the reference prompts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared import reference


@dataclass(frozen=True)
class Trace:
    name: str
    arrival_s: np.ndarray  # seconds from the start, sorted
    prompt_ids: np.ndarray

    def __len__(self) -> int:
        return len(self.arrival_s)

    @property
    def duration_s(self) -> float:
        return float(self.arrival_s[-1]) if len(self) else 0.0

    def prompt(self, index: int) -> str:
        prompts = reference.prompts()
        return prompts[int(self.prompt_ids[index]) % len(prompts)]

    def head(self, seconds: float) -> Trace:
        """The arrivals of the first `seconds` (a short trace for tests and smoke runs)."""
        keep = self.arrival_s < seconds
        return Trace(f"{self.name}[:{seconds:g}s]", self.arrival_s[keep], self.prompt_ids[keep])

    def compressed(self, factor: float) -> Trace:
        """The same arrivals `factor` times sooner: the shape and the jobs of a real-time trace,
        replayed in 1/factor of its time (with a profile and an SLO compressed as much, e.g.
        paper-l40s-x10 and 6 s for a trace made for paper-l40s and 60 s)."""
        if not factor > 0:
            raise ValueError("the compression factor must be > 0")
        if factor == 1:
            return self
        return Trace(f"{self.name}@{factor:g}x", self.arrival_s / factor, self.prompt_ids)

    def scaled(self, factor: int) -> Trace:
        """The same shape at `factor` times the rate: each gap between two arrivals holds `factor`
        evenly spaced copies of the first, each with another prompt."""
        if factor < 1:
            raise ValueError("the scale factor must be >= 1")
        if factor == 1 or len(self) == 0:
            return self
        gaps = np.diff(self.arrival_s,
                       append=self.arrival_s[-1] + np.median(np.diff(self.arrival_s)) if len(self) > 1 else 1.0)
        offsets = np.arange(factor) / factor
        arrivals = (self.arrival_s[:, None] + gaps[:, None] * offsets[None, :]).ravel()
        prompts = ((self.prompt_ids[:, None] + 7919 * np.arange(factor)[None, :]) % len(reference.prompts())).ravel()
        return Trace(f"{self.name}x{factor}", arrivals, prompts)


def load_trace(path: str | Path) -> Trace:
    """Parse a trace file; a line that is not `arrival_ms,prompt_id` is an error naming the line."""
    path = Path(path)
    arrivals, prompt_ids = [], []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        try:
            arrival, prompt = line.split(",")
            arrivals.append(float(arrival) / 1000.0)
            prompt_ids.append(int(prompt))
        except ValueError:
            raise ValueError(f"{path}:{number}: expected 'arrival_ms,prompt_id', got {line!r}") from None
    if not arrivals:
        raise ValueError(f"{path}: no arrivals")
    arrival_s = np.array(arrivals)
    order = np.argsort(arrival_s, kind="stable")
    return Trace(path.stem, arrival_s[order], np.array(prompt_ids)[order])
