"""What rebuilds assets on a clock: the automation condition on `golden_subset`, the sensor that evaluates it, and
the `rescore_new_source_rows` schedule.

- `nuggets_automation` (automation condition sensor, on by default): evaluates the cron condition on
  `golden_subset`, so the selection is rebuilt at a configurable time once new scores exist.
- `rescore_new_source_rows` (schedule, on by default, `NUGGETS_RESCORE_CRON`, default 02:00 UTC): re-reads the
  local files `instructions` was last built from; a file that grew becomes an increment of its new rows only
  (the ingestion run of sensors.py, `skip_known`), whose new shards `incoming_data` then sends to scoring. A tick
  with nothing new compares sizes and mtimes only and requests nothing; an increment whose ingestion run failed is
  requested again at the next tick.

Each is built from the settings (docs/settings.md) when the definitions are built (definitions.build_defs).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import dagster as dg

from nuggets_pipeline.core.incoming import batch_key, file_digest
from nuggets_pipeline.core.settings import Settings, SettingsError, env_name
from nuggets_pipeline.defs.partitions import INCOMING_FILES
from nuggets_pipeline.defs.sensors import (
    FINISHED,
    INCREMENT_OP,
    INGEST_JOB,
    ingest_increments_job,
    latest_batch_run,
    stored_batches,
)

INSTRUCTIONS = dg.AssetKey("instructions")
GOLDEN = dg.AssetKey("golden_subset")


def _checked_cron(field: str, settings: Settings) -> str:
    """A cron Dagster accepts, else an error naming the variable (Dagster's own message names none)."""
    cron = getattr(settings, field)
    try:
        dg.AutomationCondition.cron_tick_passed(cron, settings.selection_timezone)
    except Exception as error:  # dagster raises a CheckError; say which setting holds the cron
        raise SettingsError(f"{env_name(field)}={cron!r}: {error}") from None
    return cron


def selection_condition(settings: Settings) -> dg.AutomationCondition:
    """Rebuild the selection once per cron tick, only if some input (new scores above all) changed since the last
    build, and never while scoring runs: a tick with nothing new starts no run."""
    cron = _checked_cron("selection_cron", settings)
    timezone = settings.selection_timezone
    return (
        dg.AutomationCondition.cron_tick_passed(cron, timezone).since_last_handled()
        & dg.AutomationCondition.any_deps_updated().since_last_handled()
        & ~dg.AutomationCondition.any_deps_in_progress()
        & ~dg.AutomationCondition.in_progress()
    ).with_label(f"new scores, then cron {cron} ({timezone})")


def automation_conditions(settings: Settings) -> dict[dg.AssetKey, dg.AutomationCondition]:
    """The automation condition of each asset that has one (applied by definitions.build_defs)."""
    return {GOLDEN: selection_condition(settings)}


def automation_sensor(settings: Settings) -> dg.AutomationConditionSensorDefinition:
    return dg.AutomationConditionSensorDefinition(
        "nuggets_automation",
        target=dg.AssetSelection.all(),
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=int(settings.sensor_interval_s),
        description="Evaluates the automation conditions (golden_subset's cron rebuild after new scores).",
    )


def _last_read_sources(instance: dg.DagsterInstance) -> dict[str, dict[str, Any]]:
    """The local files of the latest `instructions` build, with size, mtime and SHA-256 as they were read."""
    event = instance.get_latest_materialization_event(INSTRUCTIONS)
    materialization = event.asset_materialization if event else None
    entry = materialization.metadata.get("source_files") if materialization else None
    return json.loads(entry.value) if entry is not None else {}


def _rescore_new_source_rows(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest] | dg.SkipReason:
    sources = _last_read_sources(context.instance)
    if not sources:
        return dg.SkipReason("`instructions` has not been built from a local file yet: nothing to re-read")
    seen = set(context.instance.get_dynamic_partitions(INCOMING_FILES))
    stored: set[str] | None = None  # read once, and only when a file's batch is registered already
    requests, notes = [], []
    for name, recorded in sorted(sources.items()):
        path = Path(name)
        if not path.is_file():
            notes.append(f"{name}: gone")
            continue
        stat = path.stat()
        if [stat.st_size, stat.st_mtime_ns] == [recorded.get("size"), recorded.get("mtime_ns")]:
            notes.append(f"{path.name}: unchanged since instructions read it")
            continue  # the cheap path: no byte is read
        digest = file_digest(path)
        batch = batch_key(digest)
        if digest == recorded.get("sha256"):
            notes.append(f"{path.name}: content already ingested")
            continue
        run_key = f"source-{batch}"
        if batch in seen:
            stored = stored_batches(context.instance) if stored is None else stored
            if batch in stored:
                notes.append(f"{path.name}: content already ingested")
                continue
            latest = latest_batch_run(context.instance, batch)
            if latest is not None and latest.status not in FINISHED:
                notes.append(f"{path.name}: its increment {batch} is being ingested (run {latest.run_id})")
                continue
            if latest is not None:
                # Registered, never stored, and its last run ended without storing it (a run that succeeds stores
                # both of the increment's tables): asked again once per tick (a daily one by default), under a key
                # per ended run, as the daemon runs each key only once.
                context.log.info(f"{path.name}: requesting increment {batch} again, run {latest.run_id} failed")
                run_key = f"source-{batch}-after-{latest.run_id[:8]}"
        context.instance.add_dynamic_partitions(INCOMING_FILES, [batch])
        requests.append(
            dg.RunRequest(
                run_key=run_key,
                job_name=INGEST_JOB,
                partition_key=batch,
                run_config={"ops": {INCREMENT_OP: {"config": {"path": str(path), "skip_known": True}}}},
                tags={"nuggets/source_file": path.name},
            )
        )
    return requests or dg.SkipReason("; ".join(notes))


def rescore_new_source_rows(settings: Settings) -> dg.ScheduleDefinition:
    return dg.schedule(
        name="rescore_new_source_rows",
        cron_schedule=_checked_cron("rescore_cron", settings),
        execution_timezone=settings.selection_timezone,
        job=ingest_increments_job,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Re-reads the instruction source files; the rows they gained become an increment that is "
        "scored in new shards only. Nothing new: no run.",
    )(_rescore_new_source_rows)


def schedules(settings: Settings) -> list[dg.ScheduleDefinition]:
    return [rescore_new_source_rows(settings)]
