"""Settings: every field's name, default and HADIS_* variable; CPU lists and the model process's
CPUs, validated at start-up."""

from __future__ import annotations

import enum
import os

import pytest
from pydantic import SecretStr, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import EnvSettingsSource

from shared.settings import Settings, parse_cpu_list

# Every field and its default, in order, as Settings had them before its fields moved into group
# base classes (issue 30): operators' .env files and compose files name these, so a field that
# disappears, is renamed or changes its default must be a deliberate change of this list.
FIELDS_AND_DEFAULTS = [
    ('amqp_url', 'amqp://guest:guest@127.0.0.1:5672/'), ('redis_url', 'redis://127.0.0.1:6379/0'),
    ('redis_sentinels', ''), ('redis_sentinel_master', 'hadis'), ('redis_replicas_acked', 0),
    ('redis_replicas_wait_ms', 1000), ('namespace', 'hadis'), ('backend', 'tiny'), ('dtype', 'auto'),
    ('judge_backend', 'clip'), ('router', 'rule'), ('clip_checkpoint', None), ('profile', 'tiny-cpu'),
    ('device', 'cpu'), ('time_scale', 1.0), ('emulated_fail_pattern', None), ('crash_at', ''),
    ('model_process', 'auto'), ('model_cpus', ''), ('model_load_timeout_s', 3600.0), ('generate_timeout_s', 600.0),
    ('clip_arch', 'ViT-B-32'), ('judge_head_path', None), ('tier', 'light'), ('gpu', 'cpu0'), ('worker_instance', ''),
    ('busy_carry_file', ''), ('batch_wait_ms', 20), ('host', '<factory>'), ('gpus', ''), ('emulated_gpus', 2),
    ('heartbeat_s', 2.0),
    ('controller_policy', 'static'), ('static_demand_qps', None), ('plan_period_s', 10.0), ('plan_min_dwell_s', 30.0),
    ('demand_halflife_s', 10.0), ('demand_margin', 0.1), ('demand_hold_s', None), ('demand_window_s', None),
    ('plan_ahead_s', None), ('plan_confirm_s', None), ('plan_risk', 0.005), ('burst_prior', 0.2),
    ('burst_memory_s', None), ('plan_horizon_s', 60.0), ('plan_min_gain_fid', 0.25), ('plan_max_moving_gpus', 2),
    ('worker_start_s', 3.0), ('worker_start_each_s', 1.25), ('planner_light_share', 'routed'), ('gpu_absent_s', 300.0),
    ('plan_light_model', None), ('plan_heavy_model', None), ('plan_r', 0.2), ('plan_d', 0.3), ('plan_light_batch', 4),
    ('plan_heavy_batch', 2), ('plan_light_gpus', 1), ('plan_heavy_gpus', 1), ('plan_poll_s', 0.5), ('slo_s', 60.0),
    ('batch_slo_s', 900.0), ('batch_weight', 0.25), ('batch_yield', 'pause'), ('batch_colocate', True),
    ('job_ttl_s', 86400), ('image_ttl_s', 86400), ('max_deliveries', 3), ('queue_max_length', 100000),
    ('shutdown_grace_s', 30.0), ('connect_retry_s', 3600.0), ('store_retry_s', 300.0), ('publish_timeout_s', 30.0),
    ('redis_memory_warn', 0.8), ('api_host', '127.0.0.1'), ('api_port', 8080), ('api_public_url', None),
    ('api_max_body_bytes', 262144), ('api_max_header_bytes', 16384), ('api_body_timeout_s', 10.0),
    ('api_max_connections', 1000), ('api_max_waiters', 1000), ('api_max_waiters_per_tenant', 100),
    ('api_read_rate_per_s', 50.0), ('api_fair_fill', 0.5), ('api_image_mb', 1024.0), ('api_store_full', 0.9),
    ('api_max_n', 10), ('api_wait_grace_s', 5.0), ('api_rate_per_s', 10.0), ('api_burst', 40), ('api_max_active', 100),
    ('api_key_cache_s', 30.0), ('webhook_max_attempts', 10), ('webhook_retry_first_s', 8.0),
    ('webhook_retry_max_s', 1800.0), ('webhook_retry_jitter', 0.2), ('webhook_connect_timeout_s', 5.0),
    ('webhook_timeout_s', 15.0), ('webhook_max_response_bytes', 4096), ('webhook_concurrency', 32),
    ('webhook_poll_s', 0.25), ('webhook_allow_private', False), ('webhook_allow_networks', ''),
    ('event_loop', 'auto'), ('cpu_profile_dir', ''), ('metrics_port', None), ('log_format', 'auto'),
    ('log_level', 'info'),
]


def default_of(field: FieldInfo) -> object:
    """A default as the list above writes it: secrets unwrapped, enums as their values."""
    if field.default_factory is not None:
        return "<factory>"
    if isinstance(field.default, SecretStr):
        return field.default.get_secret_value()
    return field.default.value if isinstance(field.default, enum.Enum) else field.default


def test_every_field_keeps_its_name_its_order_and_its_default() -> None:
    assert [(name, default_of(field)) for name, field in Settings.model_fields.items()] == FIELDS_AND_DEFAULTS


def test_every_field_is_read_from_its_hadis_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    # The raw values the environment source reads, before validation: each field from HADIS_<NAME>.
    for name in Settings.model_fields:
        monkeypatch.setenv(f"HADIS_{name.upper()}", f"probe-{name}")
    assert EnvSettingsSource(Settings)() == {name: f"probe-{name}" for name in Settings.model_fields}


def test_as_env_gives_a_child_process_the_same_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(namespace="probe", amqp_url="amqp://u:p@h:1/", backend="emulated", tier="heavy",
                        plan_ahead_s=7.5, api_port=9, log_level="debug", host="elsewhere")
    env = settings.as_env()
    assert set(env) == {f"HADIS_{name.upper()}" for name, value in settings if value is not None}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert Settings() == settings


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
