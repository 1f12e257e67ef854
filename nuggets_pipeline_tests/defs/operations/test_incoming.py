"""New files in the incoming folder: ingested once, scored in new shards only, existing scores left untouched."""

import json
import shutil
from pathlib import Path

import dagster as dg
import pytest

from nuggets_pipeline.core.storage import Warehouse
from nuggets_pipeline.defs.definitions import defs
from nuggets_pipeline.defs.sensors import INGEST_JOB, SCORE_JOB
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

    # The `full` control trains on the pool golden selected from, batches included (it used to take the base 12).
    trained = dg.materialize(
        ASSETS,
        selection=["finetuned_model"],
        instance=prepared,
        resources=tiny_resources(),
        partition_key="full",
        run_config={"ops": {"finetuned_model": {"config": {"max_steps": 1}}}},
    )
    assert trained.get_asset_materialization_events()[0].materialization.metadata["examples"].value == 12 + 11


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


def run_request(instance: dg.DagsterInstance, request: dg.RunRequest) -> dg.ExecuteInProcessResult:
    """A sensor's ingestion request run in process, as the daemon would, without raising on a failure."""
    return dg.materialize(
        ASSETS,
        selection=["candidate_increments", "quarantined_increments"],
        instance=instance,
        resources=tiny_resources(),
        partition_key=request.partition_key,
        run_config=request.run_config,
        tags=request.tags,
        raise_on_error=False,
    )


def failure_text(result: dg.ExecuteInProcessResult) -> str:
    error = result.get_step_failure_events()[0].step_failure_data.error
    messages = []
    while error is not None:
        messages.append(error.message)
        error = error.cause
    return "\n".join(messages)


def test_a_file_moved_between_tick_and_run_fails_saying_so_and_its_batch_is_retried_when_it_is_back(
    prepared: dg.DagsterInstance, isolated_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 23 item 5: the run failed with a raw FileNotFoundError, and the sensor skipped that content for ever
    because its batch id was registered. A rename inside the folder is followed; a content that failed for its
    own sake (not JSON) is not retried every tick, only once it is touched or put back."""
    monkeypatch.setenv("NUGGETS_INCOMING_SETTLE_S", "0")
    incoming = isolated_home / "incoming"
    incoming.mkdir()
    write_batch(incoming / "moved.jsonl", range(20, 24), range(0))
    [request], cursor = tick(prepared, None)
    (incoming / "moved.jsonl").rename(incoming / "renamed.jsonl")  # between the tick and the run
    renamed = run_request(prepared, request)
    assert renamed.success and renamed.output_for_node("ingest_increment_file", "candidate_increments")["id"].size == 4

    write_batch(incoming / "away.jsonl", range(30, 33), range(0))
    requests, cursor = tick(prepared, cursor)  # with the scoring run of the first batch's shard
    [request] = [r for r in requests if r.job_name == INGEST_JOB]
    outside = tmp_path / "elsewhere.jsonl"
    (incoming / "away.jsonl").rename(outside)  # gone from the folder
    failed = run_request(prepared, request)
    assert not failed.success
    message = failure_text(failed)
    assert f"{incoming / 'away.jsonl'} was removed or renamed after batch {request.partition_key}" in message
    assert "requests this batch again" in message and "FileNotFoundError" not in message
    assert [r for r in tick(prepared, cursor)[0] if r.job_name == INGEST_JOB] == []  # still gone: nothing to run
    shutil.copy2(outside, incoming / "back.jsonl")  # back, under another name, mtime kept
    requests, cursor = tick(prepared, cursor)
    [retry] = [r for r in requests if r.job_name == INGEST_JOB]
    assert retry.partition_key == request.partition_key and retry.run_key != request.run_key
    assert run_request(prepared, retry).success
    requests, cursor = tick(prepared, cursor)
    assert [r.job_name for r in requests] == [SCORE_JOB]  # stored: its shard is scored, never ingested again

    (incoming / "broken.json").write_text('{"instruction": "x"')
    [broken], cursor = tick(prepared, cursor)
    assert not run_request(prepared, broken).success  # not JSON: fails for what it holds
    assert tick(prepared, cursor)[0] == []  # the same bytes seen the same way would fail the same way
    (incoming / "broken.json").touch()
    [again] = tick(prepared, cursor)[0]
    assert again.partition_key == broken.partition_key  # touched (or copied back): tried once more


def test_bytes_replaced_with_size_and_mtime_kept_are_read_again(
    instance: dg.DagsterInstance, isolated_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 23 item 5: the cursor skipped hashing while size and mtime agreed, so a file rewritten in place with
    its mtime restored (cp -p, touch -d) was never re-read. Its ctime changed: that makes the sensor hash it."""
    import os

    monkeypatch.setenv("NUGGETS_INCOMING_SETTLE_S", "0")
    incoming = isolated_home / "incoming"
    incoming.mkdir()
    path = write_batch(incoming / "data.jsonl", range(3), range(0))
    before = path.stat()
    [first], cursor = tick(instance, None)
    text = path.read_text()
    path.write_text(text.replace("colour 1", "colour 7"))  # same length, other bytes
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert [path.stat().st_size, path.stat().st_mtime_ns] == [before.st_size, before.st_mtime_ns]
    [second], _ = tick(instance, cursor)
    assert second.partition_key != first.partition_key
