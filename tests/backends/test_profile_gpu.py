"""scripts/profile_gpu.py on the CPU with the tiny pipelines: the profile it writes loads,
and a batch that runs out of memory caps the profile's max_batch."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import orjson
import pytest

from shared.backends.profiling import Measurements, ModelToProfile, measurements_record, profile_models
from shared.profiles import load_profile
from tests.backends.test_diffusers_backend import out_of_memory_pipeline, tiny_model

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "profile_gpu.py"


@pytest.fixture(scope="module")
def profile_gpu():
    spec = importlib.util.spec_from_file_location("profile_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_profile_run_writes_a_loadable_profile(profile_gpu, tmp_path: Path, capsys) -> None:
    profile_gpu.main(["--tiny", "--models", "tiny-sd-turbo", "tiny-sdxl-lightning", "--batches", "1", "2",
                      "--runs", "2", "--swap-runs", "1", "--out", str(tmp_path), "--name", "tiny-test"])
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert last_line == f"profile_written {tmp_path / 'tiny-test.json'}"

    profile = load_profile(str(tmp_path / "tiny-test.json"))
    assert sorted(profile.models) == ["tiny-sd-turbo", "tiny-sdxl-lightning"]
    assert (profile.default_light, profile.default_heavy) == ("tiny-sd-turbo", "tiny-sdxl-lightning")
    assert "CPU" in profile.device and "float32" in profile.device
    for model in profile.models.values():
        assert sorted(model.latency_ms) == [1, 2] and model.max_batch is None
        assert model.steps == tiny_model(model.name).steps

    record = Measurements.model_validate(orjson.loads((tmp_path / "measurements" / "tiny-test.json").read_bytes()))
    assert record.weights == "tiny" and record.memory_kind == "process_peak_rss"
    for measured in record.models.values():
        assert measured.swap_runs == 1 and measured.swap_in_s is not None and measured.swap_out_s is not None
        assert measured.largest_fitting_batch == 2 and measured.first_failing_batch is None
        for point in measured.points:
            assert point.fits and point.runs == 2 and point.p50_ms <= point.p90_ms
            assert point.peak_memory_bytes > 100 * 2**20


def test_a_batch_that_runs_out_of_memory_caps_the_profile(profile_gpu) -> None:
    model = tiny_model("tiny-sd-turbo")
    measured = profile_models([ModelToProfile(model, lambda: out_of_memory_pipeline(limit=2))], device="cpu",
                              dtype="auto", batches=[4, 1, 2, 8], runs=1, swap_runs=1)
    points = measured[model.name].points
    assert [(p.batch, p.fits) for p in points] == [(1, True), (2, True), (4, False)]
    assert "out of memory" in points[-1].error
    assert measured[model.name].swap_in_s is None  # one model: nothing to switch with
    record = measurements_record("oom", "cpu", "auto", "tiny", 1, measured)
    profile = profile_gpu.to_profile(record, load_profile("tiny-cpu"))
    assert profile.models[model.name].max_batch == 2
    assert sorted(profile.models[model.name].latency_ms) == [1, 2]


def test_a_compiled_denoiser_is_measured_and_named(profile_gpu, tmp_path: Path, capsys) -> None:
    """torch.compile through aot_eager: the denoiser traced as inductor traces it, its ops run unchanged. Inductor
    itself spent 100 CPU-s compiling C++ for the tiny UNet whenever its cache was cold, which it is in every new
    checkout (its cache keys carry the source files' paths); a GPU profile compiles with it
    (scripts/device/profile.sh)."""
    profile_gpu.main(["--tiny", "--models", "tiny-sd-turbo", "--batches", "1", "--runs", "2", "--compile", "default",
                      "--compile-backend", "aot_eager", "--out", str(tmp_path)])
    written = Path(capsys.readouterr().out.strip().splitlines()[-1].removeprefix("profile_written "))
    assert written.name.endswith("-tiny-compiled-default-aot-eager.json")
    record = Measurements.model_validate(orjson.loads((tmp_path / "measurements" / written.name).read_bytes()))
    measured = record.models["tiny-sd-turbo"]
    assert record.compile_mode == "default" and record.compile_backend == "aot_eager"
    assert measured.warm_up_s > 0 and measured.points[0].fits
    assert measured.swap_runs == 0
    assert "compiled (torch.compile backend aot_eager" in load_profile(str(written)).description


def test_the_compiled_profile_is_named_and_described_by_its_backend(profile_gpu) -> None:
    assert profile_gpu.default_name("NVIDIA H100 80GB HBM3 (81559 MiB), CUDA 13.0", "published", "default") == \
        "measured-nvidia-h100-80gb-hbm3-published-compiled-default"
    assert profile_gpu.default_name("CPU x", "tiny", "default", "aot_eager").endswith("-compiled-default-aot-eager")
    record = measurements_record("r", "cpu", "auto", "tiny", 1, {}, "reduce-overhead")
    assert record.compile_backend == "inductor"
    assert profile_gpu.compiled_text(record) == ", denoiser compiled (torch.compile mode reduce-overhead)"
