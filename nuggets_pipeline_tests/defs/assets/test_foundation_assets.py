"""Materialise the ingestion and anchor stages for real, with the tiny model, into a temporary home."""

import json
from pathlib import Path

import dagster as dg
import pytest

from nuggets_pipeline.core.paths import KMEANS_100_ANCHORS
from nuggets_pipeline.core.storage import Warehouse
from nuggets_pipeline.defs import checks
from nuggets_pipeline.defs.assets import anchors, ingestion
from nuggets_pipeline.defs.definitions import default_resources
from nuggets_pipeline.defs.resources import ModelResource


def resources() -> dict:
    found = default_resources()
    found["scoring_model"] = ModelResource(model="tiny-random-llama")
    return found


def write_source(path: Path) -> Path:
    rows = [{"instruction": f"Task {i}", "input": "", "output": f"Answer {i}"} for i in range(60)]
    rows += [
        {"instruction": "", "output": "x"},
        {"instruction": "dup", "output": "d"},
        {"instruction": "dup", "output": "d"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n{broken\n")
    return path


def test_ingest_anchor_and_candidates_materialise(tmp_path: Path, isolated_home: Path) -> None:
    instance = dg.DagsterInstance.ephemeral()
    source = write_source(tmp_path / "pool.jsonl")
    result = dg.materialize(
        [
            ingestion.ingest_instructions,
            anchors.anchor_set,
            anchors.candidates,
            checks.quarantine_rate,
            checks.anchors_disjoint_from_candidates,
        ],
        resources=resources(),
        instance=instance,
        run_config={
            "ops": {
                "ingest_instructions": {"config": {"sources": [str(source)]}},
                "anchor_set": {"config": {"method": "kmeans", "n": 4, "kmeans_pool_size": 0}},
                "candidates": {"config": {"shards": 3, "limit": None}},
            }
        },
    )
    assert result.success
    events = {
        e.materialization.asset_key.to_user_string(): e.materialization.metadata
        for e in result.get_asset_materialization_events()
    }
    assert events["instructions"]["dagster/row_count"].value == 61
    assert events["quarantined_instructions"]["dagster/row_count"].value == 3
    assert "empty_instruction" in events["quarantined_instructions"]["by_reason"].value
    assert events["anchor_set"]["embedding_model"].value == "tiny-random-llama"
    warehouse = Warehouse(isolated_home / "warehouse")
    counts = warehouse.query("select count(*) n, count(distinct shard) s from nuggets.candidates")
    assert counts.loc[0, "n"] == 57 and counts.loc[0, "s"] == 3
    overlap = warehouse.query("select count(*) n from nuggets.candidates join nuggets.anchor_set using (id)")
    assert overlap.loc[0, "n"] == 0
    assert sorted(instance.get_dynamic_partitions("candidate_shards")) == ["base-000", "base-001", "base-002"]
    verdicts = {e.asset_check_key.name: e.passed for e in result.get_asset_check_evaluations()}
    assert verdicts == {"quarantine_rate": True, "anchors_disjoint_from_candidates": True}  # 3 of 64 rows is under 5%


def test_paper_anchor_file_and_random_anchors(isolated_home: Path) -> None:
    result = dg.materialize(
        [ingestion.ingest_instructions, anchors.anchor_set],
        resources=resources(),
        instance=dg.DagsterInstance.ephemeral(),
        run_config={"ops": {"anchor_set": {"config": {"method": "file", "file": KMEANS_100_ANCHORS}}}},
    )
    assert result.success
    assert result.output_for_node("anchor_set").shape[0] == 100  # no n: the whole file


@pytest.mark.slow
def test_anchor_file_honours_n_deterministically_and_refuses_more_than_it_holds(isolated_home: Path) -> None:
    def run(n: int, seed: int = 0) -> dg.ExecuteInProcessResult:
        config = {"method": "file", "file": KMEANS_100_ANCHORS, "n": n, "seed": seed}
        return dg.materialize(
            [ingestion.ingest_instructions, anchors.anchor_set],
            resources=resources(),
            instance=dg.DagsterInstance.ephemeral(),
            run_config={"ops": {"anchor_set": {"config": config}}},
            raise_on_error=False,
        )

    first, again = run(10), run(10)
    ids = first.output_for_node("anchor_set")["id"].tolist()
    assert len(ids) == 10 and again.output_for_node("anchor_set")["id"].tolist() == ids
    assert run(10, seed=1).output_for_node("anchor_set")["id"].tolist() != ids
    too_many = run(101)
    assert not too_many.success
    [event] = too_many.get_step_failure_events()
    assert "n=101 anchors asked for, but the file holds 100" in event.step_failure_data.error.message


def test_a_missing_source_fails_the_run_with_a_message_naming_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.jsonl"
    with pytest.raises(Exception, match=r"nowhere\.jsonl"):
        dg.materialize(
            [ingestion.ingest_instructions],
            resources=resources(),
            run_config={"ops": {"ingest_instructions": {"config": {"sources": [str(missing)]}}}},
        )


def test_definitions_load_and_validate() -> None:
    from nuggets_pipeline.defs.definitions import defs

    dg.Definitions.validate_loadable(defs)
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {"instructions", "quarantined_instructions", "anchor_set", "candidates"} <= keys
