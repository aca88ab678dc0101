"""Settings: CPU lists and the model process's CPUs, validated at start-up."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from shared.settings import Settings, parse_cpu_list


@pytest.mark.parametrize(("text", "cpus"), [("3", {3}), ("0-3", {0, 1, 2, 3}), ("0,2,4-5", {0, 2, 4, 5})])
def test_cpu_lists_read_as_taskset_writes_them(text: str, cpus: set[int]) -> None:
    assert parse_cpu_list(text) == cpus


@pytest.mark.parametrize("text", ["", "a", "1-", "-1", "3-1", "1,,2", "1.5"])
def test_a_malformed_cpu_list_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_cpu_list(text)


def test_model_cpus_pin_the_model_process() -> None:
    settings = Settings(backend="tiny", model_cpus="0")
    assert settings.model_in_own_process and settings.model_cpu_set == {0}
    assert Settings(backend="tiny").model_cpu_set is None


@pytest.mark.parametrize(
    ("fields", "message"),
    [({"backend": "emulated"}, "runs inline"),
     ({"backend": "tiny", "model_process": "inline"}, "runs inline"),
     ({"backend": "tiny", "model_cpus": str(os.cpu_count())}, "lacks"),
     ({"backend": "tiny", "model_cpus": "x"}, "not a CPU list")],
)
def test_unusable_model_cpus_stop_the_start(fields: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(**{"model_cpus": "0", **fields})


@pytest.mark.parametrize(("backend", "choice", "own"),
                         [("tiny", "auto", True), ("diffusers", "auto", True), ("emulated", "auto", False),
                          ("emulated", "separate", True), ("tiny", "inline", False)])
def test_where_the_model_runs(backend: str, choice: str, own: bool) -> None:
    assert Settings(backend=backend, model_process=choice).model_in_own_process is own


def test_an_unknown_profile_names_the_setting_and_the_folder() -> None:
    # A command's own --profile is not what failed: the error says HADIS_PROFILE, and where it looked.
    expected = r"HADIS_PROFILE=no-such: no profile 'no-such' in .+; known: \[.*tiny-cpu"
    with pytest.raises(ValidationError, match=expected):
        Settings(profile="no-such")
