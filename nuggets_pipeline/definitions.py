"""The code location: every asset, check, resource, sensor and schedule of nuggets-pipeline."""

from __future__ import annotations

import os

import dagster as dg

from nuggets_pipeline import checks, sensors
from nuggets_pipeline.assets import anchors, evaluation, exports, incoming, ingestion, scoring, training
from nuggets_pipeline.resources import (
    JudgeResource,
    ModelResource,
    ScoringResource,
    WarehouseIOManagerFactory,
    WarehouseResource,
)

warehouse = WarehouseResource()


def _threads() -> int | None:
    value = os.environ.get("NUGGETS_THREADS")
    return int(value) if value else None


def default_resources() -> dict[str, object]:
    """Resources with defaults that run offline; environment variables pick other models without code changes."""
    device = os.environ.get("NUGGETS_DEVICE", "auto")  # one device for every model: cpu, cuda, cuda:N or auto
    return {
        "io_manager": WarehouseIOManagerFactory(warehouse=warehouse),
        "warehouse": warehouse,
        "scoring_model": ModelResource(
            model=os.environ.get("NUGGETS_SCORING_MODEL", "smollm2-135m-instruct"),
            # "auto": the fastest dtype the hardware computes natively (float32 on AVX2-only CPUs); set float32 to
            # score bit-for-bit the same everywhere.
            dtype=os.environ.get("NUGGETS_SCORING_DTYPE", "auto"),
            device=device,
            threads=_threads(),
        ),
        "scoring": ScoringResource(),
        # The model that is fine-tuned is configured apart from the scoring model (weak-to-strong selection).
        "training_model": ModelResource(
            model=os.environ.get("NUGGETS_TRAINING_MODEL", "smollm2-135m-instruct"),
            device=device,
            threads=_threads(),
        ),
        # Starts multi-process fine-tuning (finetuned_model launcher accelerate/torchrun), reads its Pipes messages.
        "pipes_subprocess_client": dg.PipesSubprocessClient(),
        "judge": JudgeResource(
            backend=os.environ.get("NUGGETS_JUDGE_BACKEND", "local"),
            model=os.environ.get("NUGGETS_JUDGE_MODEL", "smollm2-135m-instruct"),
            base_url=os.environ.get("NUGGETS_JUDGE_BASE_URL", "https://api.openai.com/v1"),
            device=device,
        ),
    }


defs = dg.Definitions(
    assets=dg.load_assets_from_modules([ingestion, anchors, incoming, scoring, training, evaluation, exports]),
    asset_checks=dg.load_asset_checks_from_modules([checks]),
    resources=default_resources(),
    jobs=sensors.JOBS,
    sensors=sensors.SENSORS,
    schedules=sensors.SCHEDULES,
    executor=sensors.executor(),
)
