import json

import pytest

from shared.profiles import PROFILES_DIR, ModelProfile, Profile, load_profile

PAPER_MODELS = ("sdxl-lightning", "sd35-large-turbo", "sd35-medium", "sd35-large")

# The data README's H200 table (ms per batch), ../shared/data/README.md.
H200_README = {
    "sd-turbo": (49, 261),
    "sdxl-turbo": (102, 295),
    "sdxl-lightning": (195, 1669),
    "sd-v15": (1331, 4962),
    "sdxl": (2786, 29531),
    "sd35-large-turbo": (507, 6955),
    "sd35-medium": (4260, 62282),
    "sd35-large": (9590, 146196),
}


@pytest.mark.parametrize("path", sorted(PROFILES_DIR.glob("*.json")), ids=lambda p: p.stem)
def test_every_profile_validates(path):
    profile = Profile.model_validate(json.loads(path.read_text()))
    assert profile.name == path.stem
    assert profile.default_light in profile.models and profile.default_heavy in profile.models
    for name, model in profile.models.items():
        assert model.name == name


def test_paper_l40s_batch_one():
    profile = load_profile("paper-l40s")
    assert tuple(profile.models) == PAPER_MODELS
    latencies = [profile.model(name).batch_latency_s(1) for name in PAPER_MODELS]
    assert latencies == pytest.approx([0.5, 1.3, 13.0, 27.0])
    assert [profile.model(name).reference_index for name in PAPER_MODELS] == [0, 1, 2, 3]
    assert profile.model("sd35-large").max_batch == 2


def test_paper_l40s_x10_batch_one():
    profile = load_profile("paper-l40s-x10")
    assert tuple(profile.models) == PAPER_MODELS
    latencies_ms = [profile.model(name).latency_ms[1] for name in PAPER_MODELS]
    assert latencies_ms == pytest.approx([50, 130, 1300, 2700])
    assert all(profile.model(name).max_batch is None for name in PAPER_MODELS)


def test_x10_is_a_tenth_of_l40s_within_rounding():
    real, x10 = load_profile("paper-l40s"), load_profile("paper-l40s-x10")
    for name in PAPER_MODELS:
        for batch, ms in real.model(name).latency_ms.items():
            assert abs(x10.model(name).latency_ms[batch] * 10 - ms) <= 50  # L40S table rounds to 0.1 s


def test_h200_reproduces_the_readme_table():
    profile = load_profile("h200")
    for name, (batch_1, batch_16) in H200_README.items():
        model = profile.model(name)
        assert abs(model.latency_ms[1] - batch_1) <= 1
        assert abs(model.latency_ms[16] - batch_16) <= 1


def test_diffserve_excludes_out_of_memory_batches():
    profile = load_profile("diffserve-a100")
    for name in ("sdxl-lightning", "sdxl"):
        assert profile.model(name).max_batch == 16
        assert max(profile.model(name).latency_ms) == 16
    assert all(ms < 100000 for model in profile.models.values() for ms in model.latency_ms.values())
    assert all(model.reference_index is None for model in profile.models.values())


def test_batch_latency_interpolates_and_extrapolates():
    points = {1: 100, 2: 150, 4: 220, 8: 410}
    model = ModelProfile(name="m", family="sd", steps=1, guidance=0.0, resolution=512, latency_ms=points)
    assert model.batch_latency_s(2) == pytest.approx(0.150)
    assert model.batch_latency_s(3) == pytest.approx(0.185)  # halfway between 2 and 4
    assert model.batch_latency_s(6) == pytest.approx(0.315)
    assert model.batch_latency_s(16) == pytest.approx(0.410 + (0.410 - 0.220) / 4 * 8)  # slope of the last two points


def test_batch_latency_on_a_real_profile():
    model = load_profile("h200").model("sd-turbo")
    assert model.latency_ms[4] / 1000 < model.batch_latency_s(6) < model.latency_ms[8] / 1000
    assert model.batch_latency_s(32) > model.batch_latency_s(16)
