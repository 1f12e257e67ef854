"""The re-scoring schedule: a source that grows in place gets its new rows (only) ingested and scored."""

import json
from pathlib import Path

import dagster as dg
import pytest

from nuggets_pipeline.core.storage import Warehouse
from nuggets_pipeline.defs import automation
from nuggets_pipeline.defs.definitions import defs
from nuggets_pipeline.defs.sensors import INGEST_JOB, SCORE_JOB
from nuggets_pipeline_tests.materialize import example, execute, materialize_pool, score


def schedule_tick(instance: dg.DagsterInstance) -> list[dg.RunRequest] | str:
    context = dg.build_schedule_context(
        instance=instance, instance_ref=instance.get_ref(), repository_def=defs.get_repository_def()
    )
    data = defs.get_schedule_def("rescore_new_source_rows").evaluate_tick(context)
    return list(data.run_requests) if data.run_requests else data.skip_message


def sensor_tick(instance: dg.DagsterInstance) -> list[dg.RunRequest]:
    context = dg.build_sensor_context(instance=instance, instance_ref=instance.get_ref(), definitions=defs)
    return list(defs.get_sensor_def("incoming_data").evaluate_tick(context).run_requests or [])


def write_lines(path: Path, rows: list[dict], mode: str = "w") -> None:
    with path.open(mode) as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")


@pytest.mark.slow
def test_appended_rows_become_an_increment_and_only_they_are_scored(
    instance: dg.DagsterInstance, tmp_path: Path, isolated_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "grows.jsonl"
    write_lines(source, [example(i) for i in range(16)] + [{"instruction": "No answer", "output": " "}])
    assert materialize_pool(instance, source).success
    assert score(instance, "base-000", "base-001").success
    scores_dir = isolated_home / "warehouse" / "one_shot_scores"
    base_scores = {p.name: p.read_bytes() for p in scores_dir.iterdir() if p.suffix == ".parquet"}

    # Nothing new: no run, and not one byte of the source is hashed (size and mtime match what was read).
    def no_hashing(path: Path) -> str:
        raise AssertionError(f"hashed {path} on a tick with nothing new")

    with monkeypatch.context() as patched:
        patched.setattr(automation, "file_digest", no_hashing)
        assert "unchanged since instructions read it" in schedule_tick(instance)

    # The source grows in place: 5 new rows, a repeat of an old one, a new bad row.
    new_rows = [example(i, "colour") for i in range(5)]
    write_lines(source, [*new_rows, example(3), {"instruction": "Still no answer", "output": ""}], mode="a")
    requests = schedule_tick(instance)
    assert [(r.job_name, r.partition_key[:3]) for r in requests] == [(INGEST_JOB, "inc")]
    ingested = execute(instance, requests[0])
    assert ingested.success
    increment = ingested.output_for_node("ingest_increment_file", "candidate_increments")
    quarantined = ingested.output_for_node("ingest_increment_file", "quarantined_increments")
    assert sorted(increment["instruction"]) == sorted(r["instruction"] for r in new_rows)
    assert list(quarantined["reason"].str.split(":").str[0]) == ["empty_output"]  # the old bad row is not repeated
    meta = ingested.get_asset_materialization_events()[0].materialization.metadata
    assert meta["rows_already_stored"].value == 16 + 1 + 1

    # The incoming sensor sends exactly the new shards to scoring; nothing already scored is touched.
    new_shards = sorted(increment["shard"].unique())
    score_requests = sensor_tick(instance)
    assert sorted((r.job_name, r.partition_key) for r in score_requests) == [(SCORE_JOB, s) for s in new_shards]
    for request in score_requests:
        assert execute(instance, request).success
    assert {n: (scores_dir / n).read_bytes() for n in base_scores} == base_scores
    scored = Warehouse(isolated_home / "warehouse").sql(
        "SELECT candidate_id FROM scores WHERE shard = ANY($shards)",
        {"shards": new_shards},
        files={"scores": ([scores_dir / f"{s}.parquet" for s in new_shards], None)},
    )
    assert set(scored["candidate_id"]) == set(increment["id"])

    # The same content is not ingested twice.
    assert "content already ingested" in schedule_tick(instance)


def test_the_schedule_is_registered_and_on() -> None:
    schedule = defs.get_schedule_def("rescore_new_source_rows")
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert schedule.job_name == INGEST_JOB


@pytest.mark.slow
def test_an_increment_whose_ingestion_failed_is_requested_again_at_the_next_tick(
    instance: dg.DagsterInstance, tmp_path: Path, isolated_home: Path
) -> None:
    """Before: the schedule registered the increment's partition, its run failed, and every later tick said
    "content already ingested" while none of the new rows ever were."""
    source = tmp_path / "grows.jsonl"
    write_lines(source, [example(i) for i in range(8)])
    assert materialize_pool(instance, source).success
    write_lines(source, [example(i, "colour") for i in range(3)], mode="a")
    [first] = schedule_tick(instance)

    # The run fails (here: it is pointed at a file that is gone), so nothing is stored.
    assert not execute(instance, first, raise_on_error=False, path=str(tmp_path / "gone.jsonl")).success
    [again] = schedule_tick(instance)
    assert again.partition_key == first.partition_key and again.run_key != first.run_key
    assert again.run_config == first.run_config

    assert execute(instance, again).success
    assert "content already ingested" in schedule_tick(instance)
