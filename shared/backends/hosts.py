"""Where a worker's model runs: in the worker's own process, or in a model process of its own.

A host holds one model at a time: `load` replaces it (and warms it up), `close` ends it.
HADIS_MODEL_PROCESS picks the host: `separate` for the torch backends (tiny, diffusers), whose
Python would otherwise share the worker's interpreter lock (model_process.py says why);
`inline` for the emulated one, which only sleeps. `auto` chooses so
(`Settings.model_in_own_process`). HADIS_MODEL_CPUS pins the model process to its own cores.
"""

from __future__ import annotations

from typing import Protocol

from shared.backends.base import Generator
from shared.backends.model_process import LoadRequest, ModelProcess, ProcessGenerator, warm_generator
from shared.profiles import ModelProfile
from shared.settings import Settings


class GeneratorHost(Protocol):
    # Batches the worker may hand over at once: the model runs them in turn, but one that is
    # already waiting starts without a round trip through the worker.
    concurrent_batches: int

    def load(self, model: ModelProfile) -> Generator:
        """The model, warmed up, in place of the one held before."""

    def close(self) -> None:
        """Release the model (and the process holding it)."""


def load_request(settings: Settings, model: ModelProfile) -> LoadRequest:
    return LoadRequest(kind=settings.backend, profile=settings.profile, model=model.name, device=settings.device,
                       dtype=settings.dtype, time_scale=settings.time_scale,
                       fail_pattern=settings.emulated_fail_pattern)


class InlineHost:
    concurrent_batches = 1

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.generator: Generator | None = None

    def load(self, model: ModelProfile) -> Generator:
        self.close()
        self.generator = warm_generator(load_request(self.settings, model), model)
        return self.generator

    def close(self) -> None:
        if self.generator is not None:
            generator, self.generator = self.generator, None
            generator.close()


class ProcessHost:
    concurrent_batches = 2

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.process = ModelProcess(load_timeout_s=settings.model_load_timeout_s,
                                    generate_timeout_s=settings.generate_timeout_s, cpus=settings.model_cpu_set)

    def load(self, model: ModelProfile) -> Generator:
        can_pause = self.process.load(load_request(self.settings, model))
        return ProcessGenerator(model, self.process, can_pause)

    def close(self) -> None:
        self.process.close()


def make_host(settings: Settings) -> GeneratorHost:
    return ProcessHost(settings) if settings.model_in_own_process else InlineHost(settings)
