"""The selection is rebuilt at the configured time after new scores, and only then; stale scores show up."""

import datetime
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.definitions.data_version import StaleStatus
from dagster._utils.test.data_versions import get_stale_status_resolver  # the resolver behind the UI's badge

from nuggets_pipeline.core.settings import SettingsError
from nuggets_pipeline.defs.definitions import build_defs, defs
from nuggets_pipeline.defs.partitions import CANDIDATE_SHARDS
from nuggets_pipeline.defs.resources import ModelResource
from nuggets_pipeline_tests.materialize import ASSETS, score, tiny_resources

UTC = datetime.UTC
GOLDEN = dg.AssetKey("golden_subset")


def evaluate(instance: dg.DagsterInstance, at: datetime.datetime, cursor=None):  # type: ignore[no-untyped-def]
    selection = dg.AssetSelection.assets(GOLDEN)
    return dg.evaluate_automation_conditions(
        defs=defs, instance=instance, asset_selection=selection, evaluation_time=at, cursor=cursor
    )


def stale_status(instance: dg.DagsterInstance, shard: str) -> StaleStatus:
    return get_stale_status_resolver(instance, list(defs.assets)).get_status(dg.AssetKey("one_shot_scores"), shard)


def test_golden_subset_is_rebuilt_at_the_cron_tick_after_new_scores(instance: dg.DagsterInstance) -> None:
    day = datetime.datetime(2026, 3, 2, tzinfo=UTC)
    first = evaluate(instance, day.replace(hour=1))
    assert first.total_requested == 0
    instance.add_dynamic_partitions(CANDIDATE_SHARDS, ["inc0000beef-000"])
    instance.report_runless_asset_event(dg.AssetMaterialization("one_shot_scores", partition="inc0000beef-000"))
    before = evaluate(instance, day.replace(hour=2), first.cursor)
    assert before.total_requested == 0  # new scores, but the 03:00 tick has not come yet
    at_tick = evaluate(instance, day.replace(hour=3, minute=1), before.cursor)
    assert at_tick.get_num_requested(GOLDEN) == 1
    instance.report_runless_asset_event(dg.AssetMaterialization(GOLDEN))
    next_day = evaluate(instance, day.replace(day=3, hour=3, minute=1), at_tick.cursor)
    assert next_day.total_requested == 0  # nothing new since the last build: no run


def test_the_cron_is_configurable(monkeypatch: pytest.MonkeyPatch) -> None:
    """On the asset the code location serves, not on a helper."""
    monkeypatch.setenv("NUGGETS_SELECTION_CRON", "30 18 * * 1-5")
    monkeypatch.setenv("NUGGETS_SELECTION_TIMEZONE", "Europe/Paris")
    condition = build_defs().resolve_assets_def(GOLDEN).automation_conditions_by_key[GOLDEN]
    assert condition.get_label() == "new scores, then cron 30 18 * * 1-5 (Europe/Paris)"
    schedule = build_defs().get_schedule_def("rescore_new_source_rows")
    assert (schedule.cron_schedule, schedule.execution_timezone) == ("0 2 * * *", "Europe/Paris")
    monkeypatch.setenv("NUGGETS_SELECTION_CRON", "at six")
    with pytest.raises(SettingsError, match=r"NUGGETS_SELECTION_CRON='at six': .*Invalid cron schedule"):
        build_defs()


def test_backfill_runs_take_a_configurable_number_of_shards(monkeypatch: pytest.MonkeyPatch) -> None:
    one_shot = dg.AssetKey("one_shot_scores")
    assert defs.resolve_assets_def(one_shot).backfill_policy == dg.BackfillPolicy.multi_run(1)
    monkeypatch.setenv("NUGGETS_SHARDS_PER_RUN", "8")
    assert build_defs().resolve_assets_def(one_shot).backfill_policy == dg.BackfillPolicy.multi_run(8)
    monkeypatch.setenv("NUGGETS_SHARDS_PER_RUN", "0")
    with pytest.raises(SettingsError, match="NUGGETS_SHARDS_PER_RUN='0': Input should be greater than or equal to 1"):
        build_defs()


@pytest.mark.slow
def test_a_model_change_makes_every_score_visibly_stale(prepared: dg.DagsterInstance, isolated_home: Path) -> None:
    """The template is part of the scoring fingerprint, as the model and the anchor set are."""
    assert score(prepared, "base-000", "base-001").success  # both shards in one run (a single-run backfill)
    assert stale_status(prepared, "base-000") == StaleStatus.FRESH
    # Re-running zero-shot with the same model, template and anchors leaves the scores current ...
    assert dg.materialize(ASSETS, selection=["zero_shot_losses"], instance=prepared, resources=tiny_resources()).success
    assert stale_status(prepared, "base-000") == StaleStatus.FRESH

    # ... and another template (as another model or anchor set would) makes every shard stale.
    resources = tiny_resources()
    resources["scoring_model"] = ModelResource(model="tiny-random-llama", template="alpaca")
    assert dg.materialize(ASSETS, selection=["zero_shot_losses"], instance=prepared, resources=resources).success
    for shard in ("base-000", "base-001"):
        assert stale_status(prepared, shard) == StaleStatus.STALE
    check = dg.materialize(
        ASSETS,
        selection=dg.AssetSelection.checks_for_assets(GOLDEN),
        instance=prepared,
        resources=resources,
        raise_on_error=False,
    ).get_asset_check_evaluations()[0]
    assert not check.passed and check.metadata["shards_stale"].value == "base-000, base-001"

    # One backfill (here, as one run) re-scores them with the new template; they are current again.
    rescored = dg.materialize(
        ASSETS,
        selection=["one_shot_scores"],
        instance=prepared,
        resources=resources,
        tags={"dagster/asset_partition_range_start": "base-000", "dagster/asset_partition_range_end": "base-001"},
    )
    assert rescored.success
    assert stale_status(prepared, "base-001") == StaleStatus.FRESH
