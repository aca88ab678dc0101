"""Where a worker's model runs: in the worker's own process, or in a model process of its own.

A host holds one model, or two (a light GPU keeps the heavy model beside its own for batch work:
docs/classes.md): `load` loads one (and warms it up) in place of those not named in `keep`, `close`
ends them all. Both models run on the host's one executor, one batch after another, as on one GPU.
HADIS_MODEL_PROCESS picks the host: `separate` for the torch backends (tiny, diffusers), whose
Python would otherwise share the worker's interpreter lock (model_process.py says why);
`inline` for the emulated one, which only sleeps. `auto` chooses so
(`Settings.model_in_own_process`). HADIS_MODEL_CPUS pins the model process to its own cores.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from shared.backends.base import Generator
from shared.backends.model_process import LoadRequest, ModelProcess, ProcessGenerator, warm_generator
from shared.profiles import ModelProfile
from shared.settings import Settings


class GeneratorHost(Protocol):
    # Batches the worker may hand over at once: the model runs them in turn, but one that is
    # already waiting starts without a round trip through the worker.
    concurrent_batches: int

    def load(self, model: ModelProfile, keep: Sequence[str] = ()) -> Generator:
        """The model, warmed up, in place of those held before but the ones named in `keep`."""

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
        self.generators: dict[str, Generator] = {}

    def load(self, model: ModelProfile, keep: Sequence[str] = ()) -> Generator:
        for name in [name for name in self.generators if name not in keep and name != model.name]:
            self.generators.pop(name).close()
        if model.name not in self.generators:
            self.generators[model.name] = warm_generator(load_request(self.settings, model), model)
        return self.generators[model.name]

    def close(self) -> None:
        while self.generators:
            self.generators.popitem()[1].close()


class ProcessHost:
    concurrent_batches = 2

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.process = ModelProcess(load_timeout_s=settings.model_load_timeout_s,
                                    generate_timeout_s=settings.generate_timeout_s, cpus=settings.model_cpu_set)

    def load(self, model: ModelProfile, keep: Sequence[str] = ()) -> Generator:
        can_pause = self.process.load(load_request(self.settings, model).model_copy(update={"keep": list(keep)}))
        return ProcessGenerator(model, self.process, can_pause)

    def close(self) -> None:
        self.process.close()


def make_host(settings: Settings) -> GeneratorHost:
    return ProcessHost(settings) if settings.model_in_own_process else InlineHost(settings)
