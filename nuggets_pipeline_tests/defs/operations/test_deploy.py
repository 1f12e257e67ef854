"""The Kubernetes profile: the instance configuration validates, and the definitions load under it."""

import importlib.util
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._config import process_config, resolve_to_config_type
from dagster._core.instance.config import dagster_instance_config
from dagster_k8s import K8sRunLauncher
from dagster_k8s.container_context import K8sContainerContext
from dagster_k8s.job import UserDefinedDagsterK8sConfig, get_user_defined_k8s_config
from dagster_postgres import DagsterPostgresStorage

from nuggets_pipeline.core.paths import REPO_ROOT
from nuggets_pipeline.core.settings import Settings
from nuggets_pipeline.defs.definitions import build_defs

DEPLOY = REPO_ROOT / "deploy"
# Stand-ins for what Kubernetes Secrets put into the environment; nothing here reaches a cluster.
CLUSTER_ENV = {
    "DAGSTER_PG_HOST": "postgres.nuggets.svc.cluster.local",
    "DAGSTER_PG_USER": "dagster",
    "DAGSTER_PG_PASSWORD": "stand-in-password",
    "DAGSTER_PG_DB": "dagster",
    "DAGSTER_K8S_JOB_NAMESPACE": "nuggets",
}


def valid(schema_owner: type, config: dict) -> None:
    result = process_config(resolve_to_config_type(schema_owner.config_type()), config)
    assert result.success, [e.message for e in result.errors]


def test_the_k8s_instance_profile_validates(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in CLUSTER_ENV.items():
        monkeypatch.setenv(name, value)
    config, custom_class = dagster_instance_config(str(DEPLOY / "k8s"), "dagster.yaml")
    assert custom_class is None
    launcher = config["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_k8s", "K8sRunLauncher")
    valid(K8sRunLauncher, launcher["config"])
    valid(DagsterPostgresStorage, config["storage"]["postgres"])
    assert config["run_monitoring"]["free_slots_after_run_end_seconds"] > 0
    assert config["concurrency"]["pools"]["default_limit"] >= 1
    # The only credential is read from the environment; the file holds no password.
    raw = (DEPLOY / "k8s" / "dagster.yaml").read_text()
    assert "stand-in-password" not in raw and yaml.safe_load(raw)["storage"]["postgres"]["postgres_db"]["password"] == {
        "env": "DAGSTER_PG_PASSWORD"
    }


def test_the_helm_values_run_these_definitions_on_k8s() -> None:
    values = yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert values["postgresql"]["enabled"] is False and "postgresqlPassword" not in values["postgresql"]
    assert values["generatePostgresqlPasswordSecret"] is False
    [deployment] = values["dagster-user-deployments"]["deployments"]
    module = deployment["dagsterApiGrpcArgs"][deployment["dagsterApiGrpcArgs"].index("--module-name") + 1]
    assert importlib.util.find_spec(module) is not None
    env = {item["name"]: item["value"] for item in deployment["env"]}
    assert env["NUGGETS_DEPLOYMENT"] == "cluster"
    assert Settings(**{k: v for k, v in env.items() if k.startswith("NUGGETS_")}).executor == "k8s"
    assert deployment["includeConfigInLaunchedRuns"]["enabled"] is True
    assert values["dagsterDaemon"]["runMonitoring"]["freeSlotsAfterRunEndSeconds"] > 0
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert module in dockerfile and "NUGGETS_DEPLOYMENT=cluster" in dockerfile


def describe(defs: dg.Definitions) -> dict[str, object]:
    dg.Definitions.validate_loadable(defs)
    # By asset key: a multi-asset's keys share its one step.
    steps = {
        spec.key.to_user_string(): defs.resolve_assets_def(spec.key).node_def for spec in defs.resolve_all_asset_specs()
    }
    return {
        "executor": defs.resolve_job_def("score_shards").executor_def.name,
        "shards_per_run": defs.resolve_assets_def("one_shot_scores").backfill_policy.max_partitions_per_run,
        "pods": {name: get_user_defined_k8s_config(node.tags).container_config for name, node in steps.items()},
        "model_pool": sorted(name for name, node in steps.items() if node.pool == "model"),
    }


def test_definitions_under_the_k8s_profile_put_each_model_step_in_a_gpu_pod(monkeypatch: pytest.MonkeyPatch) -> None:
    """The code location as the Helm deployment's environment builds it (no module reloads: nothing is frozen
    at import)."""
    values = yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())
    [deployment] = values["dagster-user-deployments"]["deployments"]
    for item in deployment["env"]:
        if item["name"] != "NUGGETS_HOME":  # /var/lib/nuggets is the pod's volume, not this machine's
            monkeypatch.setenv(item["name"], item["value"])
    loaded = describe(build_defs())
    monkeypatch.setenv("NUGGETS_SHARDS_PER_RUN", "16")
    fanned_in = describe(build_defs())
    assert loaded["executor"] == "k8s"
    assert loaded["shards_per_run"] == 1 and fanned_in["shards_per_run"] == 16
    # Every step that runs a model (the model pool) gets its GPU, fine-tuning and evaluation as well as scoring.
    assert set(loaded["model_pool"]) >= {
        "anchor_set",
        "zero_shot_losses",
        "ifd_scores",
        "one_shot_screening",
        "one_shot_scores",
        "finetuned_model",
        "mt_bench_results",
        "alpaca_eval_results",
        "judge_calibration",
    }
    for step in loaded["model_pool"]:
        resources = loaded["pods"][step]["resources"]
        assert resources["requests"]["nvidia.com/gpu"] == "1" and resources["limits"]["nvidia.com/gpu"] == "1", step
    assert loaded["pods"]["instructions"] == {}  # ingestion needs no GPU


def step_pod(defs: dg.Definitions, step: str) -> dict:
    """The container config the k8s executor gives ``step``'s pod: its op tags, then the executor's per-step
    config merged over them, as K8sStepHandler does."""
    executor = defs.resolve_job_def("stage_train").executor_def
    resolved = executor.apply_config_mapping({})
    assert resolved.success, resolved.errors
    per_step = (resolved.value or {}).get("config", {}).get("per_step_k8s_config", {}).get(step, {})
    node = defs.resolve_assets_def(step).node_def
    merged = K8sContainerContext(run_k8s_config=get_user_defined_k8s_config(node.tags)).merge(
        K8sContainerContext(run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(per_step))
    )
    return merged.run_k8s_config.container_config


def test_a_multi_gpu_training_pod_is_one_setting_away(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: `launcher: accelerate` on 8 GPUs ran in the one-GPU pod of every model step (and so started one
    process). NUGGETS_TRAINING_GPUS=8 gives fine-tuning alone 8 GPUs; scoring keeps its one."""
    monkeypatch.setenv("NUGGETS_DEPLOYMENT", "cluster")
    one = build_defs()
    assert step_pod(one, "finetuned_model")["resources"]["limits"]["nvidia.com/gpu"] == "1"
    monkeypatch.setenv("NUGGETS_TRAINING_GPUS", "8")
    eight = build_defs()
    training = step_pod(eight, "finetuned_model")["resources"]
    assert training["requests"]["nvidia.com/gpu"] == training["limits"]["nvidia.com/gpu"] == "8"
    assert training["requests"]["cpu"] == "32"
    assert step_pod(eight, "one_shot_scores")["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert describe(eight)["executor"] == "k8s_job_executor_training_8_gpus"


def test_the_local_executor_is_bounded() -> None:
    from nuggets_pipeline.defs.definitions import defs

    executor = defs.resolve_job_def("score_shards").executor_def
    assert executor.name == "bounded_multiprocess"
    assert Path(REPO_ROOT / "dagster.yaml").read_text().count("max_concurrent_runs: 2") == 1
