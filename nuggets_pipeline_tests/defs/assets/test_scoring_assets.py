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
    checks = {e.asset_check_key.name: e for e in result.get_asset_check_evaluations()}
    assert checks["golden_subset_scores_complete"].passed
    # The reliability readout from the stored pair deltas: a line of plain language, the figures, a WARN check.
    metadata = result.get_asset_materialization_events()[0].materialization.metadata
    figures = metadata["reliability_figures"].value
    assert figures["candidates"] == 26 and figures["anchors"] == 4 and figures["line"] == metadata["reliability"].value
    assert metadata["reliability"].value.split(":")[0].split(" —")[0] in {
        "reliable", "partly anchor noise", "mostly anchor noise", "cannot say"
    }  # fmt: skip
    reliability = checks["ranking_reliability"]
    assert reliability.severity == dg.AssetCheckSeverity.WARN
    assert reliability.passed == (figures["reliability"] is not None and figures["reliability"] >= 0.7)

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


def test_the_reliability_check_warns_below_0_7_and_without_a_figure(prepared: dg.DagsterInstance) -> None:
    only = dg.AssetSelection.checks(dg.AssetCheckKey(dg.AssetKey("golden_subset"), "ranking_reliability"))

    def evaluate(figures: dict[str, object]) -> dg.AssetCheckEvaluation:
        recorded = {"reliability_figures": dg.MetadataValue.json(figures)}
        prepared.report_runless_asset_event(dg.AssetMaterialization("golden_subset", metadata=recorded))
        resources = tiny_resources()
        result = dg.materialize(ASSETS, selection=only, instance=prepared, resources=resources, raise_on_error=False)
        [check] = result.get_asset_check_evaluations()
        return check

    noisy = evaluate({"reliability": 0.42, "line": "mostly anchor noise: add anchors (about 220 for 0.8)",
                      "anchors_for_reliability_0_8": 220})  # fmt: skip
    assert not noisy.passed and noisy.severity == dg.AssetCheckSeverity.WARN
    assert noisy.metadata["anchors_for_reliability_0_8"].value == 220
    assert "add anchors" in noisy.metadata["reliability"].value
    assert evaluate({"reliability": 0.7, "line": "partly anchor noise"}).passed
    assert not evaluate({"reliability": None, "line": "cannot say: only 3 candidates"}).passed
