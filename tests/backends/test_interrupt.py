"""A batch's control block: cancel flags and steps, in a generator of the worker's process and in
the model process (tiny diffusers pipeline on the CPU, through callback_on_step_end)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson
import pytest

from shared.backends.base import GenerationInput
from shared.backends.control import BatchBook, ControlBlock, GenerationCancelled
from shared.backends.emulated import EmulatedGenerator
from shared.backends.model_process import LoadRequest, ModelProcess
from shared.profiles import ModelProfile

SLOW_STEPS = 100  # the tiny SD at 64 px: 5 to 40 ms a step on a shared CPU, so 0.5 to 4 s a batch


def slow_profile(directory: Path, steps: int = SLOW_STEPS, latency_ms: dict[int, float] | None = None) -> str:
    """A profile file with one tiny model of many steps (a run of seconds), for cancel tests; with
    `latency_ms`, batch times for the queue model (admission and the ETA)."""
    path = directory / "tiny-slow.json"
    model = {"name": "tiny-slow", "family": "sd", "steps": steps, "guidance": 0.0, "resolution": 64,
             **({"latency_ms": {str(size): ms for size, ms in latency_ms.items()}} if latency_ms else {})}
    path.write_bytes(orjson.dumps({"name": "tiny-slow", "models": {"tiny-slow": model},
                                   "default_light": "tiny-slow", "default_heavy": "tiny-slow"}))
    return str(path)


def inputs(count: int, prefix: str = "job") -> list[GenerationInput]:
    return [GenerationInput(f"{prefix}-{i}", "a red fox", "", i, 64, 64) for i in range(count)]


def wait_for(condition, timeout_s: float = 30.0) -> None:
    give_up_at = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < give_up_at, "condition not met in time"
        time.sleep(0.002)


def test_a_slot_holds_flags_and_steps_for_its_batch_only() -> None:
    block = ControlBlock.local()
    block.open(3, rows=2)
    assert not block.cancelled(3) and block.progress(3) is None
    block.report(3, 5, 10)
    assert block.progress(3) == (5, 10)
    block.cancel(3, 0)
    assert not block.cancelled(3) and block.cancelled(3, 0, 1)
    block.cancel(3, 1)
    assert block.cancelled(3)
    block.open(3 + 8, rows=1)  # the same slot, a later batch: the old batch's reads find nothing
    assert block.progress(3) is None and not block.cancelled(3) and not block.cancelled(11)
    block.cancel(3, 0)  # a stale cancel leaves the new batch alone
    assert not block.cancelled(11)


def test_a_cancel_before_the_batch_begins_is_flagged_when_it_does() -> None:
    book = BatchBook(ControlBlock.local())
    book.cancel(["b"])
    seq = book.begin(["a", "b"])
    assert book.block.cancelled(seq, 1, 2) and not book.block.cancelled(seq, 0, 1)
    book.cancel(["a"])
    assert book.block.cancelled(seq)
    book.end(["a", "b"])
    assert book.progress("a") is None


def test_the_emulated_generator_stops_at_its_next_step() -> None:
    model = ModelProfile(name="m", family="sd", steps=50, guidance=0.0, resolution=64, latency_ms={1: 2000.0})
    generator = EmulatedGenerator(model)
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(generator.generate_timed, inputs(1))
        wait_for(lambda: generator.progress("job-0") is not None)
        step, steps = generator.progress("job-0") or (0, 0)
        assert steps == 50 and step >= 1
        cancelled_at = time.perf_counter()
        generator.cancel(["job-0"])
        with pytest.raises(GenerationCancelled):
            running.result(timeout=5)
        assert time.perf_counter() - cancelled_at < 0.5  # a step is 40 ms; the whole batch 2 s


def test_a_partly_cancelled_batch_runs_to_its_end() -> None:
    model = ModelProfile(name="m", family="sd", steps=10, guidance=0.0, resolution=64, latency_ms={2: 200.0})
    generator = EmulatedGenerator(model)
    generator.cancel(["job-1"])
    assert len(generator.generate_timed(inputs(2)).images) == 2


@pytest.fixture(scope="module")
def tiny_slow(tmp_path_factory):
    process = ModelProcess(load_timeout_s=120, generate_timeout_s=60)
    process.load(LoadRequest(kind="tiny", profile=slow_profile(tmp_path_factory.mktemp("profile")), model="tiny-slow"))
    yield process
    process.close()


def test_a_cancelled_batch_frees_the_model_process_within_a_few_steps(tiny_slow: ModelProcess) -> None:
    """Steps are reported while the child runs; a cancel ends the batch at its next step, and a
    batch sent behind it starts at once. Prints the figures (not asserted tightly: shared CPUs)."""
    full = tiny_slow.generate(inputs(1, "warm"))  # one uninterrupted batch: the time of a step
    step_s = full.busy_s / SLOW_STEPS
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(tiny_slow.generate, inputs(1, "first"))
        seen: list[int] = []

        def stepped() -> bool:
            progress = tiny_slow.book.progress("first-0")
            if progress is not None and (not seen or progress[0] != seen[-1]):
                seen.append(progress[0])
            return len(seen) >= 3

        wait_for(stepped)
        following = pool.submit(tiny_slow.generate, inputs(1, "next"))
        wait_for(lambda: "next-0" in tiny_slow.book.rows)
        cancelled_at = time.perf_counter()
        tiny_slow.book.cancel(["first-0"])
        with pytest.raises(GenerationCancelled):
            first.result(timeout=30)
        freed_s = time.perf_counter() - cancelled_at
        wait_for(lambda: (tiny_slow.book.progress("next-0") or (0, 0))[0] >= 1)
        next_step_s = time.perf_counter() - cancelled_at
        assert len(following.result(timeout=60).images) == 1
    assert seen == sorted(seen) and seen[-1] < SLOW_STEPS
    print(f"\ncancel -> child idle {freed_s * 1000:.1f} ms, -> next batch's first step {next_step_s * 1000:.1f} ms; "
          f"one step {step_s * 1000:.2f} ms; uninterrupted batch {full.busy_s:.2f} s")
    assert freed_s < full.busy_s / 2  # far sooner than the batch's end


def test_one_cancelled_job_of_two_leaves_the_other_its_image(tiny_slow: ModelProcess) -> None:
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(tiny_slow.generate, inputs(2, "pair"))
        wait_for(lambda: tiny_slow.book.progress("pair-0") is not None)
        tiny_slow.book.cancel(["pair-1"])
        generated = running.result(timeout=60)
    assert len(generated.images) == 2  # the batch ran on: the worker discards the cancelled job's image
