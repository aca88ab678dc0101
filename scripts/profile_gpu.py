"""Latency profiler: per model and batch size, p50/p90 latency, peak memory, the largest
batch that fits, and the time to switch models through pinned host memory.

Models come from an existing profile (their family, hf_id, steps, guidance, resolution);
what runs is the diffusers backend (shared/backends/diffusers_backend.py) on them:

    # the published weights, by hf_id (needs the Hub or a local cache)
    .venv/bin/python scripts/profile_gpu.py --profile h200 --models sd-turbo sdxl-lightning
    # the published architectures with random weights (shared/backends/published.py)
    .venv/bin/python scripts/profile_gpu.py --random-weights --models sd-turbo sdxl-lightning \
        --batches 1 2 4 8 16 --name h100-random
    # the tiny pipelines on this CPU (what the tests run)
    .venv/bin/python scripts/profile_gpu.py --tiny --batches 1 2 4
    # whether torch.compile with CUDA graphs cuts SD-Turbo's launch-bound batch-1 latency
    .venv/bin/python scripts/profile_gpu.py --random-weights --models sd-turbo --batches 1 2 4 \
        --compile reduce-overhead

Writes OUT/NAME.json, a profile that `HADIS_PROFILE` and the planner read (latency_ms =
the p50 of each batch size; max_batch = the largest batch that fitted, when a larger one
ran out of memory), and OUT/measurements/NAME.json with every figure. Last line:
`profile_written <path>`.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import get_args

import orjson

from shared.backends.profiling import (
    CompileBackend,
    CompileMode,
    Measurements,
    ModelMeasurement,
    ModelToProfile,
    Weights,
    default_device,
    loader_for,
    measurements_record,
    profile_models,
)
from shared.profiles import PROFILES_DIR, Profile, load_profile

GIB = 1024**3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument("--random-weights", action="store_true",
                         help="the published architectures, random weights (no download)")
    weights.add_argument("--tiny", action="store_true", help="the tiny pipelines (profile tiny-cpu by default)")
    parser.add_argument("--profile", help="where the models are defined (default: h200; tiny-cpu with --tiny)")
    parser.add_argument("--models", nargs="+", help="model names in that profile (default: all)")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 2, 4, 8, 16])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per batch size (after one untimed)")
    parser.add_argument("--swap-runs", type=int, default=3, help="switches in and out per model")
    parser.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda when available)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float16", "bfloat16", "float32"])
    parser.add_argument("--compile", dest="compile_mode", choices=list(get_args(CompileMode)),
                        help="torch.compile the denoiser in this mode (reduce-overhead: CUDA graphs); no swaps")
    parser.add_argument("--compile-backend", choices=list(get_args(CompileBackend)), default="inductor",
                        help="torch.compile's backend (default inductor; aot_eager and eager trace the denoiser "
                             "but run its ops unchanged: a check of the tracing, not a profile to serve by)")
    parser.add_argument("--name", help="the written profile's name (default from device, weights, compile mode)")
    parser.add_argument("--out", type=Path, default=PROFILES_DIR)
    args = parser.parse_args(argv)
    if any(batch < 1 for batch in args.batches) or args.runs < 1 or args.swap_runs < 0:
        parser.error("batches and runs must be >= 1, swap runs >= 0")
    return args


def weights_of(args: argparse.Namespace) -> Weights:
    if args.tiny:
        return "tiny"
    return "random" if args.random_weights else "published"


def default_name(device_text: str, weights: Weights, compile_mode: str | None = None,
                 compile_backend: str = "inductor") -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", device_text.lower().split("(")[0].split(",")[0]).strip("-")
    backend = "" if compile_backend == "inductor" else f"-{compile_backend.replace('_', '-')}"
    compiled = f"-compiled-{compile_mode}{backend}" if compile_mode else ""
    return f"measured-{slug}-{weights}{compiled}"[:64]


def print_model(measurement: ModelMeasurement) -> None:
    print(f"{measurement.name}: loaded in {measurement.load_s:.2f} s, first image in {measurement.warm_up_s:.2f} s")
    for point in measurement.points:
        if point.fits:
            memory = point.peak_memory_bytes / GIB
            print(f"  batch {point.batch:3d}: p50 {point.p50_ms:10.1f} ms  p90 {point.p90_ms:10.1f} ms  "
                  f"peak {memory:7.2f} GiB  ({point.p50_ms / point.batch:8.1f} ms/image)")
        else:
            print(f"  batch {point.batch:3d}: does not fit ({point.error})")


def to_profile(record: Measurements, source: Profile) -> Profile:
    models = {}
    for name, measured in record.models.items():
        latency_ms = {p.batch: p.p50_ms for p in measured.points if p.fits}
        cap = measured.largest_fitting_batch if measured.first_failing_batch is not None else None
        models[name] = source.model(name).model_copy(update={"latency_ms": latency_ms, "max_batch": cap})
    names = list(models)
    light = source.default_light if source.default_light in models else names[0]
    heavy = source.default_heavy if source.default_heavy in models else names[-1]
    swaps = ", ".join(f"{m.name} in {m.swap_in_s:.3f} s / out {m.swap_out_s:.3f} s"
                      for m in record.models.values() if m.swap_in_s is not None)
    description = (
        f"Measured by scripts/profile_gpu.py through the diffusers backend: whole-pipeline batch latency "
        f"(p50 of {record.runs_per_batch} runs after one untimed run; prompt to PIL images), {record.weights} "
        f"weights, {record.dtype}{compiled_text(record)}. Model definitions from profile {source.name}. "
        f"Switch through host memory, pinned on CUDA (median of each model's swaps): "
        f"{swaps or 'not measured (one model)'}. p90, peak memory ({record.memory_kind}) and load times: "
        f"measurements/{record.name}.json."
    )
    return Profile(
        name=record.name, description=description, source=f"scripts/profile_gpu.py, measurements/{record.name}.json",
        device=f"{record.device}, torch {record.torch_version}, diffusers {record.diffusers_version}, {record.dtype}",
        time_unit_note="Real time.", models=models, default_light=light, default_heavy=heavy,
    )


def compiled_text(record: Measurements) -> str:
    if not record.compile_mode:
        return ""
    if record.compile_backend != "inductor":
        return f", denoiser compiled (torch.compile backend {record.compile_backend}: traced, ops run unchanged)"
    return f", denoiser compiled (torch.compile mode {record.compile_mode})"


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(payload, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS) + b"\n")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    weights = weights_of(args)
    device = args.device or ("cpu" if args.tiny else default_device())
    source = load_profile(args.profile or ("tiny-cpu" if args.tiny else "h200"))
    names = args.models or list(source.models)
    targets = [ModelToProfile(source.model(name), loader_for(source.model(name), weights, device, args.dtype))
               for name in names]
    measured = profile_models(targets, device=device, dtype=args.dtype, batches=args.batches, runs=args.runs,
                              swap_runs=args.swap_runs, compile_mode=args.compile_mode,
                              compile_backend=args.compile_backend, on_model=print_model)
    record = measurements_record("pending", device, args.dtype, weights, args.runs, measured, args.compile_mode,
                                 args.compile_backend)
    name = args.name or default_name(record.device, weights, args.compile_mode, args.compile_backend)
    record = record.model_copy(update={"name": name})
    for model in measured.values():
        if model.swap_in_s is not None:
            print(f"{model.name}: switch in {model.swap_in_s * 1000:.1f} ms, out {model.swap_out_s * 1000:.1f} ms "
                  f"(median of {model.swap_runs})")
    profile = to_profile(record, source)
    profile_path = args.out / f"{record.name}.json"
    write_json(args.out / "measurements" / f"{record.name}.json", record.model_dump(mode="json"))
    write_json(profile_path, profile.model_dump(mode="json"))
    print(f"device: {record.device}")
    print(f"profile_written {profile_path}")


if __name__ == "__main__":
    main()
