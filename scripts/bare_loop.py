"""The bare loop of `make bench-worker`: a generator called back to back, in a process of its own.

    python scripts/bare_loop.py BACKEND PROFILE MODEL DEVICE TIME_SCALE

builds the generator and warms it up, prints `ready`, then answers each line `IMAGES BATCH` on
stdin with the images/s of generating that many images (the benchmark's prompts and seeds) in
batches of BATCH, timed here. The benchmark starts one such process per epoch, next to a fresh
worker: two processes running the same model on the same CPU differ by up to 3 % in speed for as
long as they live (measured on the 2-core development machine: median ratios 0.98-1.03 between
pairs of fresh processes), so a single pair would measure its luck, not the worker.
"""

from __future__ import annotations

import sys
import time

from shared.backends import make_generator
from shared.backends.base import GenerationInput
from shared.profiles import load_profile
from shared.reference import prompts


def prompt_and_seed(index: int) -> tuple[str, int]:
    """The benchmark's i-th image, on both paths."""
    texts = prompts()
    return texts[index % len(texts)], index


def inputs(count: int, resolution: int) -> list[GenerationInput]:
    batch = []
    for index in range(count):
        prompt, seed = prompt_and_seed(index)
        batch.append(GenerationInput(f"bare-{index}", prompt, "", seed, resolution, resolution))
    return batch


def main(argv: list[str]) -> None:
    backend, profile_name, model_name, device, time_scale = argv
    model = load_profile(profile_name).model(model_name)
    generator = make_generator(backend, model, device=device, time_scale=float(time_scale))
    generator.warm_up()
    print("ready", flush=True)
    for line in sys.stdin:
        count, batch = (int(value) for value in line.split())
        batch_inputs = inputs(count, model.resolution)
        started = time.perf_counter()
        for start in range(0, count, batch):
            generator.generate(batch_inputs[start:start + batch])
        print(f"{count / (time.perf_counter() - started):.6f}", flush=True)
    generator.close()


if __name__ == "__main__":
    main(sys.argv[1:])
