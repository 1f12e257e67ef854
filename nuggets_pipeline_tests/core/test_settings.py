"""One typed settings object: every NUGGETS_* variable declared once, parsed and validated the same way."""

import re
from pathlib import Path

import pytest

from nuggets_pipeline.core.paths import REPO_ROOT
from nuggets_pipeline.core.settings import (
    SECRETS,
    Settings,
    SettingsError,
    declared_variables,
    get_settings,
    render_table,
)

PACKAGE = REPO_ROOT / "nuggets_pipeline"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in declared_variables():
        monkeypatch.delenv(name, raising=False)


def test_the_defaults_are_the_values_the_modules_used_before() -> None:
    settings = get_settings()
    assert settings.model_dump() == {
        "deployment": "local",
        "home": None,
        "data_dir": None,
        "model_cache": None,
        "incoming_dir": None,
        "dagster_storage": None,
        "scoring_model": "smollm2-135m-instruct",
        "scoring_dtype": "auto",
        "scoring_mode": "exact",
        "training_model": "smollm2-135m-instruct",
        "judge_backend": "local",
        "judge_model": "smollm2-135m-instruct",
        "judge_base_url": "https://api.openai.com/v1",
        "judge_timeout_s": 60.0,
        "judge_max_retries": 3,
        "judge_max_failed_fraction": 0.5,
        "device": None,
        "threads": None,
        "simulated_devices": None,
        "device_wait_s": 600.0,
        "incoming_settle_s": 10.0,
        "sensor_interval_s": 30.0,
        "rescore_cron": "0 2 * * *",
        "selection_cron": "0 3 * * *",
        "selection_timezone": "UTC",
        "executor": "multiprocess",
        "max_concurrent_steps": 2,
        "shards_per_run": 1,
        "training_gpus": 1,
    }


def test_values_are_parsed_to_their_types_and_empty_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NUGGETS_THREADS", "4")
    monkeypatch.setenv("NUGGETS_HOME", "~/elsewhere")
    monkeypatch.setenv("NUGGETS_INCOMING_SETTLE_S", "0.5")
    monkeypatch.setenv("NUGGETS_SIMULATED_DEVICES", "0")
    monkeypatch.setenv("NUGGETS_DEVICE", "cuda:1")
    monkeypatch.setenv("NUGGETS_DATA_DIR", "")  # empty: as if unset
    settings = get_settings()
    assert settings.threads == 4 and settings.home == Path("~/elsewhere") and settings.incoming_settle_s == 0.5
    assert settings.simulated_devices == 0 and settings.device == "cuda:1" and settings.data_dir is None


def test_the_names_are_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("nuggets_shards_per_run", "5")  # not the variable os.environ.get read before
    assert get_settings().shards_per_run == 1


def test_validated_once_per_environment_and_a_change_is_seen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NUGGETS_SHARDS_PER_RUN", "3")
    first = get_settings()
    assert get_settings() is first  # the same values: not parsed again
    monkeypatch.setenv("NUGGETS_SHARDS_PER_RUN", "4")
    assert get_settings().shards_per_run == 4  # no cache to clear


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("NUGGETS_SHARDS_PER_RUN", "0", "greater than or equal to 1"),
        ("NUGGETS_SHARDS_PER_RUN", "abc", "valid integer"),
        ("NUGGETS_SENSOR_INTERVAL_S", "0", "greater than or equal to 1"),
        ("NUGGETS_INCOMING_SETTLE_S", "soon", "valid number"),
        ("NUGGETS_MAX_CONCURRENT_STEPS", "0", "greater than or equal to 1"),
        ("NUGGETS_EXECUTOR", "celery", "'multiprocess', 'in_process' or 'k8s'"),
        ("NUGGETS_DEPLOYMENT", "prod", "'local' or 'cluster'"),
        ("NUGGETS_DEVICE", "gpu", "use cpu, cuda, cuda:N or auto"),
        ("NUGGETS_SCORING_DTYPE", "fp8", "'auto', 'float32', 'bfloat16' or 'float16'"),
        ("NUGGETS_JUDGE_BACKEND", "anthropic", "'local' or 'openai'"),
        ("NUGGETS_SIMULATED_DEVICES", "-1", "greater than or equal to 0"),
        ("NUGGETS_DEVICE_WAIT_S", "-1", "greater than or equal to 0"),
        ("NUGGETS_THREADS", "0", "greater than or equal to 1"),
        ("NUGGETS_SELECTION_TIMEZONE", "Mars/Olympus", "unknown time zone"),
        ("NUGGETS_JUDGE_TIMEOUT_S", "0", "greater than 0"),
        ("NUGGETS_JUDGE_MAX_RETRIES", "-1", "greater than or equal to 0"),
        ("NUGGETS_JUDGE_MAX_FAILED_FRACTION", "1.5", "less than or equal to 1"),
    ],
)
def test_a_bad_value_names_the_variable_its_value_and_meaning(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as raised:
        get_settings()
    text = str(raised.value)
    assert f"{variable}={value!r}: " in text and message in text
    field = variable.removeprefix("NUGGETS_").lower()
    assert Settings.model_fields[field].description in text


def test_every_bad_value_is_reported_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NUGGETS_SHARDS_PER_RUN", "0")
    monkeypatch.setenv("NUGGETS_EXECUTOR", "celery")
    with pytest.raises(SettingsError, match=r"(?s)NUGGETS_EXECUTOR=.*NUGGETS_SHARDS_PER_RUN="):
        get_settings()


def test_the_cluster_profile_changes_defaults_and_explicit_values_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NUGGETS_DEPLOYMENT", "cluster")
    cluster = get_settings()
    assert (cluster.executor, cluster.shards_per_run, cluster.device) == ("k8s", 1, "cuda")
    assert cluster.scoring_model == "smollm2-135m-instruct"  # what the profile does not name keeps its default
    monkeypatch.setenv("NUGGETS_EXECUTOR", "in_process")
    monkeypatch.setenv("NUGGETS_SHARDS_PER_RUN", "16")
    assert (get_settings().executor, get_settings().shards_per_run) == ("in_process", 16)
    assert Settings(deployment="cluster", device="cpu").device == "cpu"  # by name too (build_defs callers)


def test_credentials_in_the_judge_base_url_are_refused_and_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: accepted, then logged in clear with every retry warning and sent as an unredacted Basic header."""
    monkeypatch.setenv("NUGGETS_JUDGE_BASE_URL", "http://user:s3cret-pass-123@judge.internal/v1")
    with pytest.raises(SettingsError) as raised:
        get_settings()
    text = str(raised.value)
    assert "NUGGETS_JUDGE_BASE_URL='http://***@judge.internal/v1'" in text, text
    assert "carries credentials" in text and "NUGGETS_JUDGE_API_KEY" in text and "s3cret-pass-123" not in text
    monkeypatch.setenv("NUGGETS_JUDGE_BASE_URL", "http://judge.internal:8000/v1")  # a port is no credential
    assert get_settings().judge_base_url == "http://judge.internal:8000/v1"


def test_secrets_are_not_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NUGGETS_JUDGE_API_KEY", "sk-very-secret")
    settings = get_settings()
    assert "sk-very-secret" not in repr(settings) and "sk-very-secret" not in settings.model_dump_json()
    assert "NUGGETS_JUDGE_API_KEY" not in declared_variables()


def test_every_variable_the_package_names_is_declared_and_read_only_through_the_settings() -> None:
    named: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        named |= set(re.findall(r"NUGGETS_[A-Z_]+[A-Z]", text))
        if path.name != "settings.py":
            # No module parses a NUGGETS_* variable itself (writing a default for Dagster's storage is allowed).
            assert not re.search(r"environ(\.get)?[\[(]\s*\"NUGGETS_", text), path
            assert not re.search(r"getenv\(\s*\"NUGGETS_", text), path
    assert named <= {*declared_variables(), *SECRETS}, named - {*declared_variables(), *SECRETS}


def test_docs_settings_md_is_the_rendered_table() -> None:
    committed = (REPO_ROOT / "docs" / "settings.md").read_text()
    assert committed == render_table(), "run: python -m nuggets_pipeline.core.settings > docs/settings.md"
    for variable in [*declared_variables(), *SECRETS]:
        assert f"`{variable}`" in committed
