"""Crash-safe shard scoring without Dagster: resume, corrupt checkpoints, deduplication and the tally."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from nuggets_pipeline.core import shard_scoring
from nuggets_pipeline.core.ids import ids_hash
from nuggets_pipeline.core.modeling import LoadedModel
from nuggets_pipeline.core.scoring import SCORE_COLUMNS, ScoringConfig, score_one_shot, score_zero_shot
from nuggets_pipeline.core.shard_scoring import (
    PAIR_DELTAS_TABLE,
    ShardResult,
    StaleZeroShotError,
    score_shard_resumable,
)
from nuggets_pipeline.core.storage import Warehouse

# one_thread: test_scoring's autouse fixture (one torch thread for tiny forwards), in force here too.
from nuggets_pipeline_tests.core.test_scoring import ANCHORS, CANDIDATES, frame, one_thread  # noqa: F401

SHARD = "base-000"
FINGERPRINT = "f" * 16
CONFIG = ScoringConfig(candidates_per_chunk=2, candidates_per_pass=2)


class Killed(RuntimeError):
    """Stands in for the SIGKILL of a run: scoring stops where it is."""


@pytest.fixture(scope="module")
def inputs(tiny_model: LoadedModel) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    anchors, candidates = frame(ANCHORS), frame(CANDIDATES)
    zero = score_zero_shot(tiny_model, anchors, CONFIG)
    zero["model_fingerprint"] = FINGERPRINT
    zero["anchor_set_hash"] = ids_hash(anchors["id"])
    return anchors, zero, candidates


def run(loaded: LoadedModel, inputs, warehouse: Warehouse, logged: list[str] | None = None, **config) -> ShardResult:
    anchors, zero, candidates = inputs
    sink = logged if logged is not None else []
    return score_shard_resumable(
        loaded,
        anchors,
        zero,
        candidates,
        ScoringConfig(**{"candidates_per_chunk": 2, "candidates_per_pass": 2, **config}),
        shard=SHARD,
        fingerprint=FINGERPRINT,
        warehouse=warehouse,
        log=sink.append,
    )


def killed_after(monkeypatch: pytest.MonkeyPatch, file_name: str) -> None:
    """Every checkpoint write up to ``file_name`` lands; that one is never written."""
    write = shard_scoring.write_parquet_atomic

    def write_or_die(data: pd.DataFrame, path: Path) -> None:
        if path.name == file_name:
            raise Killed(file_name)
        write(data, path)

    monkeypatch.setattr(shard_scoring, "write_parquet_atomic", write_or_die)


def test_a_shard_carries_the_engines_scores_its_provenance_and_the_summed_tally(
    tiny_model: LoadedModel, inputs, tmp_path: Path
) -> None:
    anchors, zero, candidates = inputs
    warehouse = Warehouse(tmp_path / "warehouse")
    result = run(tiny_model, inputs, warehouse)

    chunks = list(score_one_shot(tiny_model, anchors, zero, candidates, CONFIG))
    expected = pd.concat([c.scores for c in chunks], ignore_index=True)
    pd.testing.assert_frame_equal(result.scores[SCORE_COLUMNS], expected[SCORE_COLUMNS], check_dtype=False)
    assert (result.scores["shard"] == SHARD).all() and list(result.scores.columns[:2]) == ["candidate_id", "shard"]
    assert set(result.scores["model_fingerprint"]) == {FINGERPRINT}
    assert set(result.scores["anchor_set_hash"]) == {ids_hash(anchors["id"])}
    assert result.scores["decision_threshold"].isna().all()
    # The tally is the sum of the chunks' fields (what the asset's metadata reports).
    assert result.resumed == 0
    assert result.anchor_tokens == sum(c.anchor_tokens for c in chunks)
    assert result.prefix_tokens == sum(c.prefix_tokens for c in chunks)
    assert result.anchor_passes == result.anchor_passes_total == len(candidates) * len(anchors)
    assert result.passes_saved == 0.0 and result.tokens_per_s > 0
    stored = warehouse.read(PAIR_DELTAS_TABLE, [SHARD])
    assert len(stored) == len(candidates) * len(anchors) and set(stored["shard"]) == {SHARD}
    assert result.checkpoints.name == f"{FINGERPRINT}-{ids_hash(anchors['id'])}"


def test_a_killed_run_resumes_from_its_checkpoints_and_scores_only_the_rest(
    tiny_model: LoadedModel, inputs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    warehouse = Warehouse(tmp_path / "warehouse")
    whole = run(tiny_model, inputs, Warehouse(tmp_path / "whole" / "warehouse"))  # a home of its own
    with monkeypatch.context() as patch:
        killed_after(patch, "pairs-00001.parquet")  # the first chunk (2 candidates) is checkpointed, then killed
        with pytest.raises(Killed):
            run(tiny_model, inputs, warehouse)

    logged: list[str] = []
    resumed = run(tiny_model, inputs, warehouse, logged)
    assert f"{SHARD}: resuming, 2 candidates already checkpointed, 3 to go" in logged
    assert resumed.resumed == 2
    assert resumed.anchor_passes_total == 3 * len(inputs[0])  # this run scored only the 3 left
    pd.testing.assert_frame_equal(resumed.scores, whole.scores)
    again = run(tiny_model, inputs, warehouse, logged)  # nothing left: the tally is empty, the scores the same
    assert again.anchor_passes_total == 0 and again.tokens_per_s == 0.0 and again.passes_saved == 0.0
    pd.testing.assert_frame_equal(again.scores, whole.scores)


def test_a_kill_between_the_deltas_and_the_scores_rescoring_the_chunk_keeps_one_row_per_pair(
    tiny_model: LoadedModel, inputs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    anchors, _, candidates = inputs
    warehouse = Warehouse(tmp_path / "warehouse")
    with monkeypatch.context() as patch:
        killed_after(patch, "scores-00001.parquet")  # chunk 1's deltas are written, its scores are not
        with pytest.raises(Killed):
            run(tiny_model, inputs, warehouse)
    result = run(tiny_model, inputs, warehouse)
    folder = result.checkpoints
    # The orphan deltas stay and the chunk is redone under a new index: no new file overwrites a kept one.
    assert sorted(p.name for p in folder.glob("pairs-*.parquet"))[:3] == [
        "pairs-00000.parquet",
        "pairs-00001.parquet",
        "pairs-00002.parquet",
    ]
    assert sorted(result.scores["candidate_id"]) == sorted(candidates["id"])
    assert not result.pair_deltas.duplicated(["candidate_id", "anchor_id"]).any()
    assert len(result.pair_deltas) == len(candidates) * len(anchors)
    stored = warehouse.read(PAIR_DELTAS_TABLE, [SHARD])
    assert len(stored) == len(result.pair_deltas)


def test_duplicate_checkpointed_rows_keep_the_last_and_candidates_left_the_shard_are_dropped(
    tiny_model: LoadedModel, inputs, tmp_path: Path
) -> None:
    anchors, zero, candidates = inputs
    warehouse = Warehouse(tmp_path / "warehouse")
    first = run(tiny_model, inputs, warehouse)
    folder = first.checkpoints
    # A later chunk holding a row of an earlier one (a chunk redone) wins; a candidate no longer in the shard is gone.
    redone = pd.read_parquet(folder / "scores-00000.parquet").head(1).assign(wins=0, golden_score=0.0)
    redone.to_parquet(folder / "scores-00007.parquet")
    pd.read_parquet(folder / "pairs-00000.parquet").head(0).to_parquet(folder / "pairs-00007.parquet")
    shrunk = (anchors, zero, candidates[candidates["id"] != candidates["id"].iloc[-1]])
    result = run(tiny_model, shrunk, warehouse)
    assert result.anchor_passes_total == 0  # everything was checkpointed: nothing re-scored
    assert sorted(result.scores["candidate_id"]) == sorted(shrunk[2]["id"])
    kept = result.scores.set_index("candidate_id").loc[redone["candidate_id"].iloc[0]]
    assert kept["wins"] == 0 and kept["golden_score"] == 0.0
    assert result.scores["candidate_id"].is_unique


def test_a_corrupt_checkpoint_is_set_aside_and_its_candidates_scored_again(
    tiny_model: LoadedModel, inputs, tmp_path: Path
) -> None:
    warehouse = Warehouse(tmp_path / "warehouse")
    first = run(tiny_model, inputs, warehouse)
    broken = first.checkpoints / "scores-00001.parquet"
    lost = set(pd.read_parquet(broken)["candidate_id"])
    broken.write_bytes(b"not parquet at all")

    logged: list[str] = []
    result = run(tiny_model, inputs, warehouse, logged)
    assert any("scores-00001.parquet cannot be read" in line and "set aside" in line for line in logged)
    assert not broken.exists() and len(list(first.checkpoints.glob("scores-00001.parquet.corrupt-*"))) == 1
    assert len(list(first.checkpoints.glob("pairs-00001.parquet.corrupt-*"))) == 1  # redone with its scores
    assert f"{SHARD}: resuming, {5 - len(lost)} candidates already checkpointed, {len(lost)} to go" in logged
    assert result.anchor_passes_total == len(lost) * len(inputs[0])
    pd.testing.assert_frame_equal(
        result.scores.sort_values("candidate_id", ignore_index=True),
        first.scores.sort_values("candidate_id", ignore_index=True),
    )


def test_decision_mode_tallies_the_passes_it_saved_and_stamps_its_threshold(
    tiny_model: LoadedModel, inputs, tmp_path: Path
) -> None:
    result = run(tiny_model, inputs, Warehouse(tmp_path / "warehouse"), decision_threshold=0.5)
    assert result.anchor_passes == int(result.scores["anchors_scored"].sum())
    assert result.passes_saved == pytest.approx(1 - result.anchor_passes / result.anchor_passes_total)
    assert set(result.scores["decision_threshold"]) == {0.5}


def test_zero_shot_losses_of_another_scoring_version_are_refused(
    tiny_model: LoadedModel, inputs, tmp_path: Path
) -> None:
    anchors, zero, candidates = inputs
    warehouse = Warehouse(tmp_path / "warehouse")
    with pytest.raises(StaleZeroShotError, match="re-materialise it first") as raised:
        run(tiny_model, (anchors, zero.assign(model_fingerprint="other"), candidates), warehouse)
    assert raised.value.fingerprint == FINGERPRINT and raised.value.anchors_hash == ids_hash(anchors["id"])
    assert not (warehouse.home / "checkpoints").exists()  # refused before anything was written
