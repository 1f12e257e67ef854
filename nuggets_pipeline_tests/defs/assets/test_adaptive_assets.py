"""Adaptive scoring through the Dagster graph with the tiny model: screening every shard, refinement per shard,
the selection by exactly the refined criterion, and a refinement that dies mid-round and resumes."""

import json
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

import nuggets_pipeline.core.adaptive_scoring as adaptive_scoring
from nuggets_pipeline.core.storage import Warehouse
from nuggets_pipeline.defs.resources import ScoringResource
from nuggets_pipeline_tests.materialize import ASSETS, PREPARE, example, tiny_resources

ADAPTIVE = {
    "mode": "adaptive",
    "adaptive_first_anchors": 3,
    "adaptive_round_anchors": 2,
    "adaptive_confidence": 0.8,
    "adaptive_top_fraction": 0.25,
    "checkpoint_every": 2,
}
RANGE = {"dagster/asset_partition_range_start": "base-000", "dagster/asset_partition_range_end": "base-001"}


def resources() -> dict[str, object]:
    found = tiny_resources()
    found["scoring"] = ScoringResource(**ADAPTIVE)
    return found


def prepare(instance: dg.DagsterInstance, tmp_path: Path) -> None:
    source = tmp_path / "pool.json"
    source.write_text(json.dumps([example(i, topic) for i in range(12) for topic in ("number", "day")]))
    result = dg.materialize(
        ASSETS,
        selection=PREPARE,
        instance=instance,
        resources=resources(),
        run_config={
            "ops": {
                "ingest_instructions": {"config": {"sources": [str(source)]}},
                "anchor_set": {"config": {"method": "random", "n": 9}},
                "candidates": {"config": {"shards": 2, "limit": None}},
            }
        },
    )
    assert result.success


def materialize(instance: dg.DagsterInstance, selection: list[str], **config: object) -> dg.ExecuteInProcessResult:
    run_config = {"ops": {"golden_subset": {"config": config}}} if config else {}
    return dg.materialize(
        ASSETS,
        selection=selection,
        instance=instance,
        resources=resources(),
        tags=RANGE if "golden_subset" not in selection else {},
        run_config=run_config,
        raise_on_error=False,
    )


def failure(result: dg.ExecuteInProcessResult) -> str:
    assert not result.success
    return result.get_step_failure_events()[0].step_failure_data.error.message


@pytest.mark.slow
def test_adaptive_mode_screens_refines_and_selects_by_its_own_criterion(tmp_path: Path, isolated_home: Path) -> None:
    instance = dg.DagsterInstance.ephemeral()
    prepare(instance, tmp_path)
    assert "materialise one_shot_screening for base-000, base-001 first" in failure(
        materialize(instance, ["one_shot_scores"])
    )
    assert materialize(instance, ["one_shot_screening"]).success
    scored = materialize(instance, ["one_shot_scores"])
    assert scored.success
    scores = Warehouse(isolated_home / "warehouse").read("one_shot_scores")
    assert set(scores["verdict"]) <= {"exact", "adaptive"} and (scores["verdict"] == "adaptive").any()
    assert (scores["anchors_scored"] >= 3).all() and scores["anchors_scored"].sum() < 9 * len(scores)
    assert set(scores["adaptive_rule"]) == {'{"top_fraction": 0.25}'}

    assert "refined adaptively" in failure(materialize(instance, ["golden_subset"], top_fraction=0.5))
    selected = materialize(instance, ["golden_subset"], top_fraction=0.25)
    assert selected.success, [(e.check_name, e.passed, e.metadata) for e in selected.get_asset_check_evaluations()]
    meta = selected.get_asset_materialization_events()[0].materialization.metadata
    assert meta["anchor_passes"].value == scores["anchors_scored"].sum()
    assert meta["anchor_passes_exact"].value == 9 * len(scores) and meta["passes_fraction"].value < 1
    # No full-pool fine-tune ran: the selection-to-tuning ratio is the FLOP estimate, and says so.
    assert (
        meta["selection_to_tuning_ratio"].value > 0 and "(estimated: forward FLOPs" in meta["selection_to_tuning"].value
    )
    subset = selected.output_for_node("golden_subset")
    assert len(subset) == int(0.25 * len(scores))  # exactly the configured rule


@pytest.mark.slow
def test_a_refinement_that_dies_mid_round_resumes_to_the_uninterrupted_result(
    tmp_path: Path, isolated_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The uninterrupted run, in its own home.
    monkeypatch.setenv("NUGGETS_HOME", str(tmp_path / "reference"))
    reference = dg.DagsterInstance.ephemeral()
    prepare(reference, tmp_path)
    assert materialize(reference, ["one_shot_screening"]).success
    assert materialize(reference, ["one_shot_scores"]).success
    expected = Warehouse(tmp_path / "reference" / "warehouse").read("one_shot_scores")

    monkeypatch.setenv("NUGGETS_HOME", str(isolated_home))
    instance = dg.DagsterInstance.ephemeral()
    prepare(instance, tmp_path)
    assert materialize(instance, ["one_shot_screening"]).success
    write, written = adaptive_scoring.write_parquet_atomic, []

    def dies_after_the_first_refinement_chunk(frame: pd.DataFrame, path: Path) -> None:
        write(frame, path)
        written.append(path.name)
        # The process dies right after a round's first chunk is stored: files on disk as a SIGKILL would leave.
        if any(n.startswith("plan-") for n in written) and path.name.startswith("pairs-"):
            raise KeyboardInterrupt("killed mid-round")

    monkeypatch.setattr(adaptive_scoring, "write_parquet_atomic", dies_after_the_first_refinement_chunk)
    with pytest.raises(KeyboardInterrupt):
        dg.materialize(ASSETS, selection=["one_shot_scores"], instance=instance, resources=resources(), tags=RANGE)
    assert not (isolated_home / "warehouse" / "one_shot_scores" / "base-000.parquet").exists()
    monkeypatch.setattr(adaptive_scoring, "write_parquet_atomic", write)
    assert materialize(instance, ["one_shot_scores"]).success
    resumed = Warehouse(isolated_home / "warehouse").read("one_shot_scores")
    columns = ["candidate_id", "anchors_scored", "wins", "verdict"]
    order = ["candidate_id"]
    pd.testing.assert_frame_equal(
        resumed[columns].sort_values(order).reset_index(drop=True),
        expected[columns].sort_values(order).reset_index(drop=True),
    )
