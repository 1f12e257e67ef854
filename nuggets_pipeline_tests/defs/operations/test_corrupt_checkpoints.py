"""A checkpoint that cannot be read is set aside and its work redone: it never blocks its shard for good."""

from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from nuggets_pipeline.core.checkpoints import read_chunk_checkpoints
from nuggets_pipeline_tests.materialize import score


def checkpoint_files(home: Path, shard: str) -> Path:
    [folder] = (home / "checkpoints" / "one_shot_scores" / shard).iterdir()
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["garbage", "torn"])
def test_a_corrupt_scoring_checkpoint_is_set_aside_and_its_candidates_rescored(
    prepared: dg.DagsterInstance, isolated_home: Path, damage: str
) -> None:
    shard = "base-000"
    assert score(prepared, shard, checkpoint_every=2).success
    folder = checkpoint_files(isolated_home, shard)
    expected = pd.read_parquet(isolated_home / "warehouse" / "one_shot_scores" / f"{shard}.parquet")
    broken = folder / "scores-00000.parquet"
    lost = set(pd.read_parquet(broken)["candidate_id"])
    content = broken.read_bytes()
    broken.write_bytes(b"not parquet at all" if damage == "garbage" else content[: len(content) // 2])

    result = score(prepared, shard, checkpoint_every=2)
    assert result.success
    logged = "\n".join(entry.user_message for entry in prepared.all_logs(result.run_id))
    assert "scores-00000.parquet cannot be read" in logged and "set aside" in logged
    assert f"resuming, {len(expected) - len(lost)} candidates already checkpointed, {len(lost)} to go" in logged
    assert not broken.exists()
    assert len(list(folder.glob("scores-00000.parquet.corrupt-*"))) == 1  # kept for a post-mortem
    assert len(list(folder.glob("pairs-00000.parquet.corrupt-*"))) == 1  # its deltas are redone with it
    rescored = pd.read_parquet(isolated_home / "warehouse" / "one_shot_scores" / f"{shard}.parquet")
    assert sorted(rescored["candidate_id"]) == sorted(expected["candidate_id"])
    pairs = pd.read_parquet(isolated_home / "warehouse" / "one_shot_pair_deltas" / f"{shard}.parquet")
    assert set(pairs["candidate_id"]) == set(expected["candidate_id"])


def test_new_chunks_never_overwrite_a_kept_checkpoint(tmp_path: Path) -> None:
    frame = pd.DataFrame({"candidate_id": ["a"]})
    for index in (0, 1, 2):
        frame.to_parquet(tmp_path / f"scores-{index:05d}.parquet")
        frame.to_parquet(tmp_path / f"pairs-{index:05d}.parquet")
    (tmp_path / "pairs-00001.parquet").write_bytes(b"torn")
    warnings: list[str] = []
    chunks, next_index = read_chunk_checkpoints(tmp_path, ("scores", "pairs"), ("candidate_id",), warnings.append)
    assert sorted(chunks) == [0, 2] and next_index == 3
    assert len(warnings) == 2 and "pairs-00001.parquet" in warnings[0]
