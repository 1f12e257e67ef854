"""What the settings decide when the code location loads is checked on the definitions it serves: the executor,
the sensors' intervals, the backfill policy, the resources; a bad value stops the code location."""

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from nuggets_pipeline.cli import build_parser
from nuggets_pipeline.core.paths import REPO_ROOT
from nuggets_pipeline.core.settings import Settings, SettingsError
from nuggets_pipeline.defs.definitions import build_defs, default_resources
from nuggets_pipeline.runs.flags import run_config


def executor_config(defs: dg.Definitions) -> dict:
    executor = defs.resolve_job_def("score_shards").executor_def
    return executor.config_schema.resolve_config({}).value["config"]


def test_the_executor_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NUGGETS_MAX_CONCURRENT_STEPS", "3")
    defs = build_defs()
    assert defs.resolve_job_def("score_shards").executor_def.name == "bounded_multiprocess"
    assert executor_config(defs)["max_concurrent"] == 3
    monkeypatch.setenv("NUGGETS_EXECUTOR", "in_process")
    assert build_defs().resolve_job_def("ingest_increments").executor_def is dg.in_process_executor


def test_the_sensor_intervals_follow_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NUGGETS_SENSOR_INTERVAL_S", "5")
    defs = build_defs()
    assert {s.name: s.minimum_interval_seconds for s in defs.sensors} == {"incoming_data": 5, "nuggets_automation": 5}
    monkeypatch.setenv("NUGGETS_RESCORE_CRON", "15 1 * * *")
    assert build_defs().get_schedule_def("rescore_new_source_rows").cron_schedule == "15 1 * * *"


def test_the_cluster_profile_builds_the_cluster_definitions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NUGGETS_DEPLOYMENT", "cluster")
    defs = build_defs()
    assert defs.resolve_job_def("score_shards").executor_def.name == "k8s"
    assert defs.resolve_assets_def("one_shot_scores").backfill_policy == dg.BackfillPolicy.multi_run(1)
    assert {defs.resources[name].device for name in ("scoring_model", "training_model", "judge")} == {"cuda"}
    local = build_defs(Settings(deployment="local", shards_per_run=4))  # settings passed in, not the environment's
    assert local.resolve_job_def("score_shards").executor_def.name == "bounded_multiprocess"
    assert local.resolve_assets_def("one_shot_scores").backfill_policy == dg.BackfillPolicy.multi_run(4)


def test_model_names_set_in_the_environment_show_their_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NUGGETS_SCORING_MODEL", "tiny-random-llama")
    monkeypatch.setenv("NUGGETS_SCORING_DTYPE", "float32")
    bound = default_resources()
    scoring = bound["scoring_model"]
    assert isinstance(scoring.model, dg.EnvVar) and scoring.model.env_var_name == "NUGGETS_SCORING_MODEL"
    assert scoring.dtype == "float32"  # a validated field gets the value (Dagster would validate the name)
    assert bound["training_model"].model == "smollm2-135m-instruct" and not isinstance(
        bound["training_model"].model, dg.EnvVar
    )
    # A run launched with flags carries the variable, not its name, and validates as the launchpad would check it.
    argv = ["run", "--source", "user.jsonl", "--device", "cpu"]
    config = run_config(build_parser().parse_args(argv), bound)
    assert config["resources"]["scoring_model"]["config"]["model"] == {"env": "NUGGETS_SCORING_MODEL"}
    defs = build_defs()
    job = dg.Definitions(
        assets=list(defs.assets), asset_checks=list(defs.asset_checks), resources=bound
    ).get_implicit_global_asset_job_def()
    resolved = dg.validate_run_config(job, config)["resources"]["scoring_model"]["config"]
    assert resolved["model"] == "tiny-random-llama" and resolved["device"] == "cpu"


def test_a_bad_value_stops_building_the_definitions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NUGGETS_SENSOR_INTERVAL_S", "often")
    with pytest.raises(SettingsError, match="NUGGETS_SENSOR_INTERVAL_S='often'"):
        build_defs()


@pytest.mark.slow
def test_a_bad_value_stops_the_code_location(tmp_path: Path) -> None:
    """As `dagster dev` or the code server loads it: the command fails and says which variable."""
    env = {**os.environ, "NUGGETS_SHARDS_PER_RUN": "abc", "PYTHONPATH": str(REPO_ROOT), "DAGSTER_HOME": str(tmp_path)}
    command = [sys.executable, "-m", "dagster", "definitions", "validate", "-m", "nuggets_pipeline.defs.definitions"]
    result = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    assert "NUGGETS_SHARDS_PER_RUN='abc': Input should be a valid integer" in result.stdout + result.stderr
