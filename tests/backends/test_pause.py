"""Pausing a batch at a step and resuming it from there (docs/classes.md, Settings.batch_yield
"pause"): the control block's pause flag, the emulated generator in the worker's process, and the
same across the model process's pipes."""

from __future__ import annotations

import os
import signal
from concurrent.futures import ThreadPoolExecutor

import pytest

from shared.backends.control import BatchBook, ControlBlock, GenerationCancelled, GenerationPaused
from shared.backends.emulated import EmulatedGenerator, placeholder_image
from shared.backends.model_process import LoadRequest, ModelProcess
from shared.errors import BackendFailed
from shared.profiles import ModelProfile
from tests.backends.test_interrupt import inputs, wait_for

STEPS = 50
MODEL = ModelProfile(name="m", family="sd", steps=STEPS, guidance=0.0, resolution=64, latency_ms={1: 2000.0})


def test_a_pause_stops_the_batch_at_its_next_step_and_a_steps_report_does_not_clear_it() -> None:
    block = ControlBlock.local()
    block.open(5, rows=1)
    control = block.control(5)
    control.step(1, 10)
    block.pause(5)
    block.report(5, 2, 10)  # the model's report of a step leaves the worker's flag alone
    assert block.paused(5)
    with pytest.raises(GenerationPaused) as paused:
        control.step(3, 10)
    assert paused.value.step == 3
    control.step(10, 10)  # the last step: the batch is done, nothing to pause
    block.open(5 + 8, rows=1)  # the slot's next batch starts unpaused
    assert not block.paused(13)


def test_a_cancel_wins_over_a_pause() -> None:
    block = ControlBlock.local()
    block.open(1, rows=1)
    block.pause(1)
    block.cancel(1, 0)
    with pytest.raises(GenerationCancelled):
        block.control(1).step(2, 10)


def test_a_pause_before_the_batch_begins_pauses_it_as_it_does() -> None:
    book = BatchBook(ControlBlock.local())
    assert book.pause(["a", "b"])
    seq = book.begin(["a", "b"])
    assert book.block.paused(seq)
    book.end(["a", "b"])
    book.pause(["c"])
    book.forget(["c"])  # it never began: its jobs run again later, unpaused
    assert not book.block.paused(book.begin(["c"]))


def run_until_paused(generator, batch, first_step: int = 0) -> int:
    """Run the batch, pause it once it has run a few steps past `first_step`; the step it paused at.
    The pause says how long the model ran it: at least its steps' emulated time (40 ms a step)."""
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(generator.generate_timed, batch, None, first_step)
        wait_for(lambda: (generator.progress(batch[0].job_id) or (0, 0))[0] >= first_step + 3)
        assert generator.pause([item.job_id for item in batch])
        with pytest.raises(GenerationPaused) as paused:
            running.result(timeout=10)
    step_s = MODEL.latency_ms[1] / 1000 / STEPS
    assert paused.value.busy_s is not None and paused.value.busy_s >= 0.9 * step_s * (paused.value.step - first_step)
    return paused.value.step


def test_the_emulated_generator_resumes_a_paused_batch_from_its_step() -> None:
    generator = EmulatedGenerator(MODEL)
    assert generator.can_pause
    batch = inputs(1)
    step = run_until_paused(generator, batch)
    assert 3 <= step < STEPS
    seen: list[int] = []
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(generator.generate_timed, batch, None, step)
        wait_for(lambda: seen.append((generator.progress("job-0") or (0, 0))[0]) is None and seen[-1] > 0)
        images = running.result(timeout=10).images
    assert seen[-1] > step  # it went on from its step: never back to the first ones
    assert [image.tobytes() for image in images] == [placeholder_image(0).tobytes()]


def test_a_generator_that_cannot_pause_says_so_and_runs_on() -> None:
    class Plain(EmulatedGenerator):
        can_pause = False

    generator = Plain(MODEL.model_copy(update={"latency_ms": {1: 200.0}}))
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(generator.generate_timed, inputs(1))
        wait_for(lambda: generator.progress("job-0") is not None)
        assert not generator.pause(["job-0"])
        assert len(running.result(timeout=10).images) == 1


def test_a_pause_and_a_resume_cross_the_model_process() -> None:
    """The child's generator says it can pause (its load's reply); a paused batch comes back as
    GenerationPaused with its step, and the same batch sent with that first_step runs on from it."""
    process = ModelProcess(load_timeout_s=60, generate_timeout_s=60)
    try:
        assert process.load(LoadRequest(kind="emulated", profile="paper-l40s-x10", model="sd35-medium"))
        batch = inputs(1)
        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(process.generate, batch)
            wait_for(lambda: (process.book.progress("job-0") or (0, 0))[0] >= 3)
            assert process.book.pause(["job-0"])
            with pytest.raises(GenerationPaused) as paused:
                running.result(timeout=10)
        step = paused.value.step
        assert 3 <= step < 50
        assert paused.value.busy_s is not None and paused.value.busy_s > 0  # the child's time on it, carried back
        seen: list[int] = []
        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(process.generate, batch, None, step)
            wait_for(lambda: seen.append((process.book.progress("job-0") or (0, 0))[0]) is None and seen[-1] > 0)
            assert len(running.result(timeout=10).images) == 1
        assert seen[-1] > step
    finally:
        process.close()


def test_a_model_process_holds_a_second_model_beside_the_first_and_reloads_both_after_a_death() -> None:
    """LoadRequest.keep: the light model stays loaded when the heavy one is loaded beside it, each
    batch runs with the model it names; a child that dies comes back with both; a load that keeps
    nothing unloads the other."""
    light = LoadRequest(kind="emulated", profile="paper-l40s-x10", model="sdxl-lightning", time_scale=0.0)
    heavy = light.model_copy(update={"model": "sd35-medium", "keep": ["sdxl-lightning"]})
    process = ModelProcess(load_timeout_s=60, generate_timeout_s=60)
    try:
        process.load(light)
        process.load(heavy)
        for model in ("sdxl-lightning", "sd35-medium"):
            assert len(process.generate(inputs(1), model=model).images) == 1
        assert process.pid is not None
        os.kill(process.pid, signal.SIGKILL)
        wait_for(lambda: not process.alive)
        for model in ("sd35-medium", "sdxl-lightning"):  # both reloaded with the new child
            assert len(process.generate(inputs(1), model=model).images) == 1
        process.load(light.model_copy(update={"model": "sd35-large-turbo"}))
        with pytest.raises(BackendFailed, match="not loaded"):
            process.generate(inputs(1), model="sd35-medium")
    finally:
        process.close()
