"""Stored tables are checked when read back: a damaged shard fails with its file named, nothing else is lost."""

from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from nuggets_pipeline.core.score_tables import threshold_table
from nuggets_pipeline.core.selection import threshold_table as threshold_table_in_pandas
from nuggets_pipeline.core.storage import StoredTableError, Warehouse
from nuggets_pipeline.defs.schemas import OneShotScoresSchema
from nuggets_pipeline_tests.materialize import ASSETS, score, select, tiny_resources


def failure(result: dg.ExecuteInProcessResult) -> str:
    """The step's error message and those of its causes (an unexpected error is wrapped by Dagster)."""
    assert not result.success
    error, messages = result.get_step_failure_events()[0].step_failure_data.error, []
    while error is not None:
        messages.append(error.message)
        error = error.cause
    return "\n".join(messages)


def test_a_damaged_score_shard_fails_naming_the_file_and_nothing_else_is_lost(
    prepared: dg.DagsterInstance, isolated_home: Path
) -> None:
    for shard in ("base-000", "base-001"):
        assert score(prepared, shard).success
    folder = isolated_home / "warehouse" / "one_shot_scores"
    intact = (folder / "base-000.parquet").read_bytes()
    damaged = folder / "base-001.parquet"

    # A column of the wrong type (golden_score written as text).
    frame = pd.read_parquet(damaged)
    frame.assign(golden_score=frame["golden_score"].astype(str)).to_parquet(damaged, index=False)
    message = failure(select(prepared, top_fraction=1.0))
    assert str(damaged) in message and "golden_score" in message and "stored as string" in message

    # A truncated file.
    damaged.write_bytes(damaged.read_bytes()[:100])
    message = failure(select(prepared, top_fraction=1.0))
    assert str(damaged) in message and "not a readable Parquet file" in message
    assert (folder / "base-000.parquet").read_bytes() == intact  # the other shard is untouched

    # Re-scoring the damaged shard is all it takes (the catalog view skipped the bad file meanwhile).
    assert score(prepared, "base-001").success
    assert select(prepared, top_fraction=1.0).success
    assert (folder / "base-000.parquet").read_bytes() == intact


def test_an_asset_read_back_through_the_io_manager_is_validated(
    prepared: dg.DagsterInstance, isolated_home: Path
) -> None:
    path = isolated_home / "warehouse" / "candidates" / "all.parquet"
    frame = pd.read_parquet(path)
    frame.assign(row_number=frame["row_number"].astype(str)).to_parquet(path, index=False)
    result = dg.materialize(
        ASSETS,
        selection=["one_shot_scores"],
        instance=prepared,
        resources=tiny_resources(),
        partition_key="base-000",
        raise_on_error=False,
    )
    assert str(path) in failure(result) and "row_number" in failure(result)


def test_pandera_checks_rows_read_back(tmp_path: Path) -> None:
    warehouse = Warehouse(tmp_path / "warehouse")
    bad = pd.DataFrame({"candidate_id": ["0" * 16], "golden_score": [1.5]})  # the right types, a value out of range
    path = warehouse.write("one_shot_scores", bad, "base-000")
    with pytest.raises(StoredTableError, match=str(path)):
        warehouse.read("one_shot_scores", schema=OneShotScoresSchema)


def test_the_sql_threshold_table_matches_the_selection_rule(tmp_path: Path) -> None:
    scores = pd.DataFrame(
        {
            "candidate_id": [f"{i:016x}" for i in range(6)],
            "golden_score": [0.9, 0.8, 0.85, 0.5, float("nan"), float("nan")],
            "wins": [9, 8, 17, 1, 9, 0],
            "n_anchors": [10, 10, 20, 2, 10, 10],
            "anchors_scored": [10, 10, 20, 2, 9, 3],
            "verdict": ["exact", "exact", "exact", "exact", "accept", "reject"],
        }
    )
    thresholds = (0.5, 0.8)  # rows decided at 0.8 can be placed against 0.8 and 0.5 ... except the reject row
    table = threshold_table(Warehouse(tmp_path / "w"), scores, thresholds)
    assert table["undecided"].tolist() == [1, 0]
    exact = scores[scores["verdict"] != "reject"]
    reference = threshold_table_in_pandas(exact, thresholds)
    assert table["subset_size"].tolist() == reference["subset_size"].tolist()
