"""New files in the incoming folder: ingested once, scored in new shards only, existing scores left untouched."""

import json
import shutil
from pathlib import Path

import dagster as dg
import pytest

from nuggets_pipeline.core.storage import Warehouse
from nuggets_pipeline.definitions import defs
from nuggets_pipeline.sensors import INGEST_JOB, SCORE_JOB
from nuggets_pipeline_tests.accounting import assert_rows_accounted
from nuggets_pipeline_tests.materialize import ASSETS, example, execute, score, tiny_resources


def tick(instance: dg.DagsterInstance, cursor: str | None) -> tuple[list[dg.RunRequest], str | None]:
    """One sensor evaluation, applying its partition requests the way the daemon does."""
    context = dg.build_sensor_context(
        instance=instance, instance_ref=instance.get_ref(), cursor=cursor, definitions=defs
    )
    data = defs.get_sensor_def("incoming_data").evaluate_tick(context)
    for request in data.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return list(data.run_requests or []), data.cursor


def write_batch(path: Path, new: range, repeated: range) -> Path:
    lines = [json.dumps(example(i, "colour")) for i in new]
    lines += [json.dumps(example(i)) for i in repeated]  # already in the base pool
    lines += ["{broken", json.dumps({"instruction": "No answer", "output": "  "})]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.slow
def test_a_new_file_is_ingested_once_and_only_its_shards_are_scored(
    prepared: dg.DagsterInstance, isolated_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NUGGETS_INCOMING_SETTLE_S", "0")
    assert score(prepared, "base-000", "base-001").success  # both base shards in one run
    scores_dir = isolated_home / "warehouse" / "one_shot_scores"
    base_files = {p.name: p.read_bytes() for p in scores_dir.glob("*.parquet")}

    incoming = isolated_home / "incoming"
    incoming.mkdir()
    (incoming / ".upload.jsonl").write_text("{}")  # hidden: still being written by someone
    write_batch(incoming / "batch-1.jsonl", range(10), range(3))
    requests, cursor = tick(prepared, None)
    assert [(r.job_name, r.partition_key[:3]) for r in requests] == [(INGEST_JOB, "inc")]
    batch = requests[0].partition_key
    result = execute(prepared, requests[0], shard_size=5)
    assert result.success
    increment = result.output_for_node("ingest_increment_file", "candidate_increments")
    quarantined = result.output_for_node("ingest_increment_file", "quarantined_increments")
    assert len(increment) == 10 and increment["shard"].str.startswith(f"{batch}-").all()
    reasons = sorted(r.split(":")[0] for r in quarantined["reason"])
    assert reasons == ["duplicate"] * 3 + ["empty_output", "malformed_json"]
    assert_rows_accounted(increment, quarantined, 10 + 3 + 2)
    new_shards = sorted(increment["shard"].unique())
    assert set(new_shards) <= set(prepared.get_dynamic_partitions("candidate_shards"))

    # Next tick: scoring runs for exactly the new shards, and no second ingestion of the same file.
    requests, cursor = tick(prepared, cursor)
    assert sorted((r.job_name, r.partition_key) for r in requests) == [(SCORE_JOB, s) for s in new_shards]
    for request in requests:
        assert execute(prepared, request).success
    assert {p.name: p.read_bytes() for p in scores_dir.glob("*.parquet") if p.name in base_files} == base_files
    warehouse = Warehouse(isolated_home / "warehouse")
    scored = warehouse.query("select candidate_id, shard from nuggets.one_shot_scores")
    assert len(scored) == 12 + 10 and scored["candidate_id"].is_unique
    assert set(scored.loc[scored["shard"].str.startswith(batch), "candidate_id"]) == set(increment["id"])
    assert tick(prepared, cursor)[0] == []

    # The same bytes under another name are recognised; one more row makes a new batch with one new candidate.
    shutil.copy(incoming / "batch-1.jsonl", incoming / "resent.jsonl")
    assert tick(prepared, cursor)[0] == []
    write_batch(incoming / "batch-2.jsonl", range(11), range(0))
    requests, cursor = tick(prepared, cursor)
    assert len(requests) == 1 and requests[0].partition_key != batch
    second = execute(prepared, requests[0])
    assert len(second.output_for_node("ingest_increment_file", "candidate_increments")) == 1
    requests, cursor = tick(prepared, cursor)
    assert len(requests) == 1 and requests[0].job_name == SCORE_JOB
    assert execute(prepared, requests[0]).success

    # The selection and its blocking coverage check see the base pool and both batches.
    selected = dg.materialize(
        ASSETS,
        selection=["golden_subset"],
        instance=prepared,
        resources=tiny_resources(),
        run_config={"ops": {"golden_subset": {"config": {"threshold": 0.5}}}},
    )
    assert selected.get_asset_materialization_events()[0].materialization.metadata["candidates_scored"].value == 12 + 11
    check = selected.get_asset_check_evaluations()[0]
    assert check.passed, check.metadata


def test_a_file_still_being_written_waits(
    instance: dg.DagsterInstance, isolated_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    incoming = isolated_home / "incoming"
    incoming.mkdir()
    write_batch(incoming / "batch.jsonl.part", range(3), range(0))
    monkeypatch.setenv("NUGGETS_INCOMING_SETTLE_S", "3600")
    write_batch(incoming / "batch.jsonl", range(3), range(0))
    assert tick(instance, None)[0] == []  # modified less than an hour ago
    monkeypatch.setenv("NUGGETS_INCOMING_SETTLE_S", "0")
    requests, _ = tick(instance, None)
    assert [r.tags["nuggets/incoming_file"] for r in requests] == ["batch.jsonl"]


def test_definitions_register_the_operations() -> None:
    sensors = {s.name: s for s in defs.sensors}
    for name in ("incoming_data", "nuggets_automation"):
        assert sensors[name].default_status == dg.DefaultSensorStatus.RUNNING
    assert defs.resolve_job_def(SCORE_JOB).partitions_def.name == "candidate_shards"
