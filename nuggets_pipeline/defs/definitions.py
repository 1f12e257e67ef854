"""The code location: every asset, check, resource, sensor and schedule of nuggets-pipeline.

Built from one validated :class:`Settings` (docs/settings.md) by ``build_defs``: a test builds the definitions
from its own settings and checks the assets, sensors and executor themselves. ``NUGGETS_DEPLOYMENT`` picks the
profile (local or cluster) whose defaults the settings start from.
"""

from __future__ import annotations

import os

import dagster as dg

from nuggets_pipeline.core.settings import Settings, env_name, get_settings
from nuggets_pipeline.defs import automation, checks, execution, jobs, pools, sensors
from nuggets_pipeline.defs.assets import anchors, evaluation, exports, ifd, incoming, ingestion, scoring, training
from nuggets_pipeline.defs.resources import (
    JudgeResource,
    ModelResource,
    ScoringResource,
    WarehouseIOManagerFactory,
    WarehouseResource,
)

ASSET_MODULES = [ingestion, anchors, incoming, scoring, ifd, training, evaluation, exports]


def _shown(settings: Settings, field: str, value: str | None = None) -> str | dg.EnvVar:
    """A resource field's value; an ``EnvVar`` where the environment set it, so the UI shows which variable the
    value comes from (Dagster resolves it from the same environment when a run starts). Only for fields without a
    validator: Dagster validates the variable's name, not its value (dtype and judge backend are checked by Settings
    and passed as values)."""
    value = getattr(settings, field) if value is None else value
    name = env_name(field)
    return dg.EnvVar(name) if os.environ.get(name) == value else value


def default_resources(settings: Settings | None = None) -> dict[str, object]:
    """Resources with defaults that run offline; environment variables pick other models without code changes."""
    settings = settings or get_settings()
    warehouse = WarehouseResource()
    device = _shown(settings, "device", settings.device or "auto")  # one device for every model
    return {
        "io_manager": WarehouseIOManagerFactory(warehouse=warehouse),
        "warehouse": warehouse,
        "scoring_model": ModelResource(
            model=_shown(settings, "scoring_model"),
            # "auto": the fastest dtype the hardware computes natively (float32 on AVX2-only CPUs); set float32 to
            # score bit-for-bit the same everywhere.
            dtype=settings.scoring_dtype,
            device=device,
            threads=settings.threads,
        ),
        "scoring": ScoringResource(mode=settings.scoring_mode),
        # The model that is fine-tuned is configured apart from the scoring model (weak-to-strong selection).
        "training_model": ModelResource(
            model=_shown(settings, "training_model"), device=device, threads=settings.threads
        ),
        # Starts multi-process fine-tuning (finetuned_model launcher accelerate/torchrun), reads its Pipes messages.
        "pipes_subprocess_client": dg.PipesSubprocessClient(),
        "judge": JudgeResource(
            backend=settings.judge_backend,
            model=_shown(settings, "judge_model"),
            base_url=_shown(settings, "judge_base_url"),
            timeout_s=settings.judge_timeout_s,
            max_retries=settings.judge_max_retries,
            max_failed_fraction=settings.judge_max_failed_fraction,
            device=device,
        ),
    }


def _configured(asset: dg.AssetsDefinition, settings: Settings) -> dg.AssetsDefinition:
    """The asset with what the settings decide applied: one_shot_scores' backfill policy, automation conditions."""
    conditions = {key: c for key, c in automation.automation_conditions(settings).items() if key in asset.keys}
    if conditions:
        asset = asset.with_attributes(automation_condition=conditions)
    if scoring.one_shot_scores.key in asset.keys or scoring.one_shot_screening.key in asset.keys:
        asset = asset.with_attributes(backfill_policy=execution.backfill_policy(settings))
    return asset


def build_defs(settings: Settings | None = None) -> dg.Definitions:
    """The code location under ``settings`` (default: the environment's, validated: a bad value stops it)."""
    settings = settings or get_settings()
    pools.install()  # runs without a daemon reclaim a dead run's pool slots; a waiting step sleeps (pools.py)
    assets = dg.load_assets_from_modules(ASSET_MODULES)
    return dg.Definitions(
        assets=[_configured(a, settings) if isinstance(a, dg.AssetsDefinition) else a for a in assets],
        asset_checks=dg.load_asset_checks_from_modules([checks]),
        resources=default_resources(settings),
        # The sensors' jobs, and one job per stage the commands run (defs/jobs.py): the UI lists them all.
        jobs=[*sensors.JOBS, *jobs.STAGE_JOBS],
        sensors=[*sensors.sensors(settings), automation.automation_sensor(settings)],
        schedules=automation.schedules(settings),
        executor=execution.executor(settings),
    )


defs = build_defs()
