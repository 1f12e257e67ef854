"""How runs execute: the executor (bounded step concurrency locally, a pod per step on Kubernetes) and the pod
tags that give every step running a model its GPU."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dagster as dg

from nuggets_pipeline.core.settings import Settings


def gpu_pod(gpus: int) -> dict[str, Any]:
    """The container config of a pod with ``gpus`` GPUs, and CPU and memory in proportion (a GPU's share covers
    loading a 7B model in bf16)."""
    return {
        "container_config": {
            "resources": {
                "requests": {"nvidia.com/gpu": str(gpus), "cpu": str(4 * gpus), "memory": f"{32 * gpus}Gi"},
                "limits": {"nvidia.com/gpu": str(gpus), "memory": f"{48 * gpus}Gi"},
            }
        }
    }


# A pod with one GPU for every step that runs a model, read by dagster-k8s's k8s_job_executor (the cluster
# profile's executor, NUGGETS_EXECUTOR=k8s); ignored by the local executors.
MODEL_POD_TAGS: dict[str, Any] = {"dagster-k8s/config": gpu_pod(1)}
TRAINING_STEP = "finetuned_model"


def model_step(**asset_options: Any) -> Callable[[Callable[..., Any]], dg.AssetsDefinition]:
    """``dg.asset`` for a step that runs a model (embedding, scoring, fine-tuning, generating, judging): in the
    ``model`` pool, so one instance runs one such step at a time on its machine, and with the GPU pod tags, so every
    such step gets its GPU on Kubernetes. The other options are ``dg.asset``'s."""
    return dg.asset(pool="model", op_tags=MODEL_POD_TAGS, **asset_options)


def executor(settings: Settings) -> dg.ExecutorDefinition:
    """Steps at once in one run are bounded: the 'model' pool already keeps model steps to one per machine."""
    if settings.executor == "k8s":
        from dagster_k8s import k8s_job_executor

        if settings.training_gpus == 1:
            return k8s_job_executor
        # The executor's per-step config is merged over the step's op tags: fine-tuning alone gets N GPUs, so a
        # launched multi-GPU run is not squeezed into the one-GPU pod of every model step.
        return k8s_job_executor.configured(
            {"per_step_k8s_config": {TRAINING_STEP: gpu_pod(settings.training_gpus)}},
            name=f"k8s_job_executor_training_{settings.training_gpus}_gpus",
        )
    if settings.executor == "in_process":
        return dg.in_process_executor
    return dg.multiprocess_executor.configured(
        {"max_concurrent": settings.max_concurrent_steps}, name="bounded_multiprocess"
    )


def backfill_policy(settings: Settings) -> dg.BackfillPolicy:
    """Shards one backfill run of one_shot_scores scores: 1 fans a backfill out (a run, a pod, per shard); a large
    value keeps it in one run (one model load)."""
    return dg.BackfillPolicy.multi_run(max_partitions_per_run=settings.shards_per_run)
