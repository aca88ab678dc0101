"""Measuring models through the diffusers backend: batch latency (p50/p90), peak memory,
the largest batch that fits, and the time to switch models through the host cache.

Used by scripts/profile_gpu.py. Peak memory is the CUDA allocator's peak on a GPU and
the process's peak resident set (VmHWM, reset before each batch size) on a CPU.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import diffusers
import numpy as np
import torch

from shared.backends.base import GenerationInput
from shared.backends.diffusers_backend import DiffusersGenerator, PipelineLoader, resolve_dtype
from shared.backends.model_cache import ModelCache
from shared.profiles import ModelProfile
from shared.schemas import Strict, now

Weights = Literal["published", "random", "tiny"]
MemoryKind = Literal["cuda_max_allocated", "process_peak_rss"]
# torch.compile modes for the denoiser; "reduce-overhead" replays CUDA graphs, which is what a
# launch-bound model (SD-Turbo at batch 1) needs.
CompileMode = Literal["default", "reduce-overhead", "max-autotune"]
# torch.compile's backend: inductor (its kernels; what a GPU profile measures), or aot_eager and eager, which
# trace the denoiser as inductor does but run its ops as they are (checks the tracing in seconds: on the CPU,
# inductor spends 100 CPU-s compiling C++ for the tiny pipeline when its cache is cold).
CompileBackend = Literal["inductor", "aot_eager", "eager"]
PROMPTS = ("a red bicycle leaning on a brick wall", "a lighthouse on a cliff at dusk, oil painting",
           "a bowl of ramen, studio photograph", "an astronaut riding a horse on the moon")


class BatchPoint(Strict):
    batch: int
    fits: bool
    runs: int = 0
    p50_ms: float | None = None
    p90_ms: float | None = None
    peak_memory_bytes: int | None = None
    error: str | None = None


class ModelMeasurement(Strict):
    name: str
    family: str
    hf_id: str | None
    unet_checkpoint: str | None
    steps: int
    guidance: float
    resolution: int
    load_s: float
    warm_up_s: float | None = None  # the first image, compilation included when compiled
    swap_in_s: float | None = None
    swap_out_s: float | None = None
    swap_runs: int = 0
    largest_fitting_batch: int | None
    first_failing_batch: int | None
    points: list[BatchPoint]


class Measurements(Strict):
    name: str
    device: str
    dtype: str
    weights: Weights
    memory_kind: MemoryKind
    torch_version: str
    diffusers_version: str
    runs_per_batch: int
    compile_mode: CompileMode | None = None
    compile_backend: CompileBackend = "inductor"
    created_at: float
    models: dict[str, ModelMeasurement]


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        return f"{properties.name} ({properties.total_memory // 2**20} MiB), CUDA {torch.version.cuda}"
    return f"CPU {_cpu_model()}, {torch.get_num_threads()} torch threads"


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def memory_kind(device: torch.device) -> MemoryKind:
    return "cuda_max_allocated" if device.type == "cuda" else "process_peak_rss"


def _reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return
    # Writing 5 resets the process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0). Where
    # that is not allowed, the figure is the process's peak so far (batch sizes ascend, so the
    # peak of a larger batch is still its own).
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_inputs(batch: int, resolution: int) -> list[GenerationInput]:
    return [GenerationInput(f"profile-{i}", PROMPTS[i % len(PROMPTS)], "blurry, low quality", i,
                            resolution, resolution) for i in range(batch)]


def measure_batch(generator: DiffusersGenerator, batch: int, runs: int) -> BatchPoint:
    """One untimed run, then `runs` timed ones; an out-of-memory marks the batch as not fitting."""
    device = generator.device
    inputs = make_inputs(batch, generator.model.resolution)
    try:
        generator.run_batch(inputs)
        _reset_peak_memory(device)
        latencies = []
        for _ in range(runs):
            started = time.perf_counter()
            generator.run_batch(inputs)
            _synchronize(device)
            latencies.append((time.perf_counter() - started) * 1000.0)
    except torch.cuda.OutOfMemoryError as error:
        message = str(error).splitlines()[0][:200]
    else:
        return BatchPoint(batch=batch, fits=True, runs=runs, p50_ms=round(float(np.percentile(latencies, 50)), 3),
                          p90_ms=round(float(np.percentile(latencies, 90)), 3),
                          peak_memory_bytes=_peak_memory(device))
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return BatchPoint(batch=batch, fits=False, error=message)


def measure_batches(generator: DiffusersGenerator, batches: list[int], runs: int) -> list[BatchPoint]:
    """Ascending batch sizes until the first that does not fit."""
    points = []
    for batch in sorted(batches):
        point = measure_batch(generator, batch, runs)
        points.append(point)
        if not point.fits:
            break
    return points


def compile_denoiser(pipeline: diffusers.DiffusionPipeline, mode: CompileMode,
                     backend: CompileBackend = "inductor") -> None:
    """torch.compile the UNet (SD, SDXL) or the MMDiT (SD3): nearly all of a step's time. Each new
    batch size compiles again, in measure_batch's untimed run. The mode is inductor's."""
    name = "unet" if getattr(pipeline, "unet", None) is not None else "transformer"
    module = getattr(pipeline, name)
    compiled = torch.compile(module, mode=mode) if backend == "inductor" else torch.compile(module, backend=backend)
    setattr(pipeline, name, compiled)


@dataclass
class ModelToProfile:
    model: ModelProfile
    load: PipelineLoader | None  # None: from the model's hf_id


def profile_models(
    targets: list[ModelToProfile],
    *,
    device: str,
    dtype: str,
    batches: list[int],
    runs: int,
    swap_runs: int,
    compile_mode: CompileMode | None = None,
    compile_backend: CompileBackend = "inductor",
    on_model: Callable[[ModelMeasurement], None] = lambda measurement: None,
) -> dict[str, ModelMeasurement]:
    """Each model loaded once into a shared host cache and measured; then every model is
    switched in and out `swap_runs` times, as a worker moved between tiers does (not with
    `compile_mode`: a compiled denoiser is measured, not moved)."""
    cache = ModelCache(device)
    measured: dict[str, ModelMeasurement] = {}
    for target in targets:
        generator = DiffusersGenerator(target.model, device=device, dtype=dtype, load=target.load, cache=cache)
        if compile_mode is not None:
            compile_denoiser(generator.pipeline, compile_mode, compile_backend)
        started = time.perf_counter()
        generator.warm_up()
        warm_up_s = round(time.perf_counter() - started, 3)
        points = measure_batches(generator, batches, runs)
        generator.close()
        measured[target.model.name] = _measurement(target.model, generator.swap.seconds, points).model_copy(
            update={"warm_up_s": warm_up_s})
        on_model(measured[target.model.name])
    if compile_mode is not None:
        swap_runs = 0
    swaps_in: dict[str, list[float]] = {name: [] for name in measured}
    swaps_out: dict[str, list[float]] = {name: [] for name in measured}
    for _ in range(swap_runs if len(targets) > 1 else 0):
        for target in targets:
            generator = DiffusersGenerator(target.model, device=device, dtype=dtype, load=target.load, cache=cache)
            swaps_in[target.model.name].append(generator.swap.seconds)
            generator.close()
            swaps_out[target.model.name].append(cache.last_release_s or 0.0)
    return {name: measurement.model_copy(update=_swap_summary(swaps_in[name], swaps_out[name]))
            for name, measurement in measured.items()}


def _swap_summary(swaps_in: list[float], swaps_out: list[float]) -> dict:
    if not swaps_in:
        return {}
    return {"swap_in_s": round(statistics.median(swaps_in), 4), "swap_out_s": round(statistics.median(swaps_out), 4),
            "swap_runs": len(swaps_in)}


def _measurement(model: ModelProfile, load_s: float, points: list[BatchPoint]) -> ModelMeasurement:
    fitting = [p.batch for p in points if p.fits]
    failing = [p.batch for p in points if not p.fits]
    return ModelMeasurement(
        name=model.name, family=model.family, hf_id=model.hf_id, unet_checkpoint=model.unet_checkpoint,
        steps=model.steps, guidance=model.guidance, resolution=model.resolution, load_s=round(load_s, 3),
        largest_fitting_batch=max(fitting) if fitting else None,
        first_failing_batch=min(failing) if failing else None, points=points,
    )


def measurements_record(name: str, device: str, dtype: str, weights: Weights, runs: int,
                        models: dict[str, ModelMeasurement], compile_mode: CompileMode | None = None,
                        compile_backend: CompileBackend = "inductor") -> Measurements:
    torch_device = torch.device(device)
    resolved = resolve_dtype(dtype, torch_device)
    return Measurements(
        name=name, device=device_description(torch_device), dtype=str(resolved).removeprefix("torch."),
        weights=weights, memory_kind=memory_kind(torch_device), torch_version=torch.__version__,
        diffusers_version=diffusers.__version__, runs_per_batch=runs, compile_mode=compile_mode,
        compile_backend=compile_backend, created_at=now(),
        models=models,
    )


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def loader_for(model: ModelProfile, weights: Weights, device: str, dtype: str) -> PipelineLoader | None:
    """How to build `model` for profiling: None loads the published weights by hf_id."""
    if weights == "published":
        return None
    torch_device = torch.device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    if weights == "tiny":
        from shared.backends.tiny import build_pipeline

        return lambda: (build_pipeline(model) if torch_dtype == torch.float32
                        else build_pipeline(model).to(dtype=torch_dtype))
    from shared.backends.published import build_random_pipeline

    return lambda: build_random_pipeline(model, torch_device, torch_dtype)
