"""Shard runs in separate processes: four at once, and one killed with SIGKILL mid-shard and then resumed.

The instance is the repository's own dagster.yaml (SQLite storage under a temporary directory), so the runs share
run storage, the Parquet warehouse and the DuckDB catalog exactly as `make ui` runs do.
"""

import os
import shutil
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from nuggets_pipeline.core.paths import REPO_ROOT
from nuggets_pipeline.core.storage import Warehouse
from nuggets_pipeline.defs.pools import WORKER_TAG, worker_identity
from nuggets_pipeline_tests.defs.operations.workers import PAUSED, context, score_shard
from nuggets_pipeline_tests.materialize import prepare

SECRET = "hf_nuggets-test-sentinel-3c1e9a"  # a token-shaped value that must never be written anywhere
HANG_GUARD_S = 300  # only stops a hung test; nothing here asserts on durations


class Setup:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.home = root / "home"
        self.dagster_home = root / "dagster_home"

    def warehouse(self) -> Warehouse:
        return Warehouse(self.home / "warehouse")

    @contextmanager
    def instance(self) -> Iterator[dg.DagsterInstance]:
        # dagster.yaml reads its storage folder from the environment, lazily: keep it set while in use.
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("NUGGETS_DAGSTER_STORAGE", str(self.dagster_home / "storage"))
            with dg.DagsterInstance.from_config(str(self.dagster_home)) as created:
                yield created


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """24 examples: 4 anchors and 20 candidates in 5 shards, zero-shot scored: shards 0-3 for the concurrency
    test, shard 4 for the kill test."""
    found = Setup(tmp_path_factory.mktemp("faults"))
    found.home.mkdir()
    found.dagster_home.mkdir()
    shutil.copy(REPO_ROOT / "dagster.yaml", found.dagster_home / "dagster.yaml")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NUGGETS_HOME", str(found.home))
        with found.instance() as instance:
            prepare(instance, found.root / "pool.json", rows=24, shards=5)
            assert sorted(instance.get_dynamic_partitions("candidate_shards")) == [f"base-00{i}" for i in range(5)]
        yield found


def start(setup: Setup, shard: str, **options: object):  # type: ignore[no-untyped-def]
    process = context().Process(
        target=score_shard, args=(str(setup.home), str(setup.dagster_home), shard), kwargs=options
    )
    process.start()
    return process


@pytest.mark.slow
def test_four_shard_runs_at_once_in_separate_processes(setup: Setup) -> None:
    shards = [f"base-00{i}" for i in range(4)]
    with setup.instance() as instance:
        # Four model slots, as a machine (or cluster) with four GPUs would set with
        # `dagster instance concurrency set model 4`; with the laptop's 1 the four runs would take turns.
        instance.event_log_storage.set_concurrency_slots("model", 4)
    barrier = context().Barrier(len(shards))
    workers = [start(setup, s, barrier=barrier, environment={"HF_TOKEN": SECRET}) for s in shards]
    for worker in workers:
        worker.join(HANG_GUARD_S)
    assert [w.exitcode for w in workers] == [0, 0, 0, 0]  # a DuckDB lock error would fail its run

    candidates = setup.warehouse().read("candidates")
    expected = candidates[candidates["shard"].isin(shards)]
    scores = setup.warehouse().query("select candidate_id, shard from nuggets.one_shot_scores")
    assert sorted(scores["candidate_id"]) == sorted(expected["id"])
    pairs = setup.warehouse().query("select candidate_id, anchor_id from nuggets.one_shot_pair_deltas")
    assert len(pairs) == len(expected) * 4 and not pairs.duplicated().any()
    with setup.instance() as instance:
        runs = instance.get_runs(dg.RunsFilter(tags={"dagster/partition": shards}))
        # Four runs from four processes, all of them recorded as successful in the shared run storage.
        assert {r.tags["dagster/partition"] for r in runs if r.status == dg.DagsterRunStatus.SUCCESS} == set(shards)
        assert len({r.tags["nuggets/worker_pid"] for r in runs}) == 4

    # The token was in every run's environment; it is in no log, no event, no table, no catalog.
    for path in [*setup.home.rglob("*"), *setup.dagster_home.rglob("*")]:
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


@pytest.mark.slow
def test_a_run_killed_mid_shard_resumes_from_its_last_checkpoint(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    shard = "base-004"
    with setup.instance() as instance:
        instance.event_log_storage.set_concurrency_slots("model", 1)  # the laptop's setting (dagster.yaml)
    candidates = setup.warehouse().read("candidates")
    in_shard = set(candidates.loc[candidates["shard"] == shard, "id"])
    assert len(in_shard) >= 5, "the shard needs more than two checkpoints' worth of candidates"
    # Freeze the run after the second chunk's pair deltas are written but before its scores are: the worst
    # moment, between the two files of one checkpoint step. Then SIGKILL it.
    worker = start(setup, shard, checkpoint_every=2, pause_after="pairs-00001.parquet")
    marker = setup.root / PAUSED
    worker.join(0)
    while not marker.exists():
        worker.join(0.2)
        assert worker.exitcode is None, "the run ended before it reached the kill point"
    os.kill(worker.pid, signal.SIGKILL)
    worker.join(HANG_GUARD_S)
    assert worker.exitcode == -signal.SIGKILL

    [checkpoints] = (setup.home / "checkpoints" / "one_shot_scores" / shard).iterdir()
    assert sorted(p.name for p in checkpoints.glob("*.parquet")) == [
        "pairs-00000.parquet",
        "pairs-00001.parquet",
        "scores-00000.parquet",
    ]
    assert not (setup.home / "warehouse" / "one_shot_scores" / f"{shard}.parquet").exists()
    kept = (checkpoints / "scores-00000.parquet").read_bytes()
    assert len(pd.read_parquet(checkpoints / "scores-00000.parquet")) == 2  # all that the kill may not lose

    monkeypatch.setenv("NUGGETS_HOME", str(setup.home))
    with setup.instance() as instance:
        # The killed run is still "started" and still holds the one model slot, and no daemon runs here.
        [killed] = instance.get_runs(dg.RunsFilter(tags={"dagster/partition": shard}))
        assert killed.status == dg.DagsterRunStatus.STARTED
        assert killed.tags[WORKER_TAG].split(":")[1] == str(worker.pid)  # the process that claimed the slot
        assert instance.event_log_storage.get_concurrency_info("model").active_run_ids == {killed.run_id}
    # The next run, in a process of its own as a CLI run would be, sees the holder is dead: it marks that run
    # failed, takes the slot and resumes. (Before, it waited for ever, spinning a core.)
    resumed = start(setup, shard, checkpoint_every=2)
    resumed.join(HANG_GUARD_S)
    assert resumed.exitcode == 0
    with setup.instance() as instance:
        runs = instance.get_runs(dg.RunsFilter(tags={"dagster/partition": shard}))
        statuses = {r.run_id: r.status for r in runs}
        assert statuses[killed.run_id] == dg.DagsterRunStatus.FAILURE
        [again] = [r for r in runs if r.run_id != killed.run_id]
        assert again.status == dg.DagsterRunStatus.SUCCESS
        logged = [entry.user_message for entry in instance.all_logs(again.run_id)]
        assert not instance.event_log_storage.get_concurrency_info("model").active_run_ids
    assert any(f"{shard}: resuming, 2 candidates already checkpointed" in m for m in logged)
    assert (checkpoints / "scores-00000.parquet").read_bytes() == kept  # the checkpoint was reused, not redone

    scores = pd.read_parquet(setup.home / "warehouse" / "one_shot_scores" / f"{shard}.parquet")
    assert set(scores["candidate_id"]) == in_shard and scores["candidate_id"].is_unique
    pairs = setup.warehouse().read("one_shot_pair_deltas", [shard])
    assert len(pairs) == len(in_shard) * 4 and not pairs.duplicated(["candidate_id", "anchor_id"]).any()


@pytest.mark.slow
def test_a_step_waiting_for_a_live_holder_sleeps_and_stops_on_sigterm(setup: Setup) -> None:
    """A slot held by a live process is not taken from it; the waiting run stops cleanly on SIGTERM, marked as
    ended, its pending claim given back (before, it ignored SIGTERM and stayed "started" for ever)."""
    shard = "base-003"  # scored by the first test already (tests of this module run in order)
    with setup.instance() as instance:
        instance.event_log_storage.set_concurrency_slots("model", 1)
        for earlier in instance.event_log_storage.get_concurrency_info("model").active_run_ids:
            instance.event_log_storage.free_concurrency_slots_for_run(earlier)  # whatever an earlier test left
        # The slot's holder: a run whose worker is this (live) test process.
        holder = instance.create_run_for_job(
            dg.GraphDefinition("holder").to_job(), tags={WORKER_TAG: worker_identity()}
        )
        assert instance.event_log_storage.claim_concurrency_slot("model", holder.run_id, "step").is_claimed
    try:
        waiting = start(setup, shard)
        run, pending = None, set()
        while run is None or run.run_id not in pending:
            waiting.join(0.2)
            assert waiting.exitcode is None, "the run ended instead of waiting for the slot"
            with setup.instance() as instance:
                found = instance.get_runs(dg.RunsFilter(tags={"dagster/partition": shard}))
                run = next((r for r in found if r.status == dg.DagsterRunStatus.STARTED), None)
                pending = instance.event_log_storage.get_concurrency_info("model").pending_run_ids
        assert waiting.is_alive()  # still waiting: the holder is alive, its slot was not taken
        os.kill(waiting.pid, signal.SIGTERM)
        waiting.join(HANG_GUARD_S)
        assert waiting.exitcode is not None
        with setup.instance() as instance:
            ended = instance.get_run_by_id(run.run_id)
            assert ended is not None and ended.is_finished and ended.status != dg.DagsterRunStatus.SUCCESS
            info = instance.event_log_storage.get_concurrency_info("model")
            assert run.run_id not in info.pending_run_ids and info.active_run_ids == {holder.run_id}
    finally:
        with setup.instance() as instance:
            instance.event_log_storage.free_concurrency_slots_for_run(holder.run_id)
