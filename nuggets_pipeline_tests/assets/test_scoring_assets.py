"""anchors → zero-shot → shards → golden subset, for real with the tiny model, in a temporary home."""

from pathlib import Path

import dagster as dg

from nuggets_pipeline.core.storage import Warehouse
from nuggets_pipeline_tests.materialize import ASSETS, score, select, tiny_resources


def test_end_to_end_golden_subset_with_two_shards(prepared: dg.DagsterInstance, isolated_home: Path) -> None:
    shards = sorted(prepared.get_dynamic_partitions("candidate_shards"))
    assert shards == ["base-000", "base-001"]
    for shard in shards:
        assert score(prepared, shard).success
    warehouse = Warehouse(isolated_home / "warehouse")
    scored = warehouse.query("select * from nuggets.one_shot_scores")
    assert len(scored) == 26 and scored["candidate_id"].is_unique
    assert (scored["n_anchors"] == 4).all()
    pairs = warehouse.query("select count(*) n from nuggets.one_shot_pair_deltas")
    assert pairs["n"].iloc[0] == 26 * 4

    result = select(prepared, threshold=0.5)
    assert result.success
    subset = result.output_for_node("golden_subset")
    assert len(subset) == int((scored["golden_score"] > 0.5).sum())
    # The selection's one Alpaca JSON is scored_pool_exports' (exports/golden/, test_export_assets.py).
    assert not (isolated_home / "exports" / "golden_subset.json").exists()
    check = next(iter(result.get_asset_check_evaluations()))
    assert check.passed

    top = select(prepared, threshold=None, top_k=5)
    assert len(top.output_for_node("golden_subset")) == 5


def test_a_shard_rerun_replaces_rather_than_duplicates(prepared: dg.DagsterInstance, isolated_home: Path) -> None:
    assert score(prepared, "base-000").success
    first = Warehouse(isolated_home / "warehouse").query("select * from nuggets.one_shot_scores")
    assert score(prepared, "base-000").success
    again = Warehouse(isolated_home / "warehouse").query("select * from nuggets.one_shot_scores")
    assert len(again) == len(first) and again["candidate_id"].is_unique
    assert set(again["candidate_id"]) == set(first["candidate_id"])


def test_a_missing_shard_is_refused_and_the_blocking_check_names_it(prepared: dg.DagsterInstance) -> None:
    assert score(prepared, "base-000").success
    result = select(prepared, threshold=0.5)
    assert not result.success and result.get_asset_materialization_events() == []
    message = result.get_step_failure_events()[0].step_failure_data.error.message
    assert "missing: base-001" in message and "partitions base-001" in message
    check = dg.materialize(
        ASSETS,
        selection=dg.AssetSelection.checks_for_assets("golden_subset"),
        instance=prepared,
        resources=tiny_resources(),
        raise_on_error=False,
    ).get_asset_check_evaluations()[0]
    assert not check.passed
    assert check.metadata["shards_missing"].value == "base-001"
