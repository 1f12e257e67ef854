"""Crash-safe one-shot scoring of one shard: checkpoint, resume, deduplicate, store the pair deltas.

A shard is scored ``config.candidates_per_chunk`` candidates at a time; each chunk's scores and pair deltas are
checkpointed (atomic writes) under the warehouse's checkpoint folder of that shard and scoring version (the
scoring fingerprint and anchor-set hash), so a killed run resumes where it stopped and two versions never mix:

- a chunk counts only once its scores file is written, and its pair deltas are written first, so a kill between
  the two writes re-scores the chunk instead of leaving scores without their deltas;
- a checkpoint that cannot be read is set aside (renamed, logged) and its candidates are scored again
  (``checkpoints.read_chunk_checkpoints``);
- a candidate scored twice (a chunk redone after a kill) keeps its last row, and so does a (candidate, anchor)
  delta; only the shard's current candidates are returned.

Plain Python over ``scoring.score_one_shot`` and ``storage.Warehouse``: no Dagster, so it is tested directly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from nuggets_pipeline.core.checkpoints import read_chunk_checkpoints
from nuggets_pipeline.core.modeling import LoadedModel
from nuggets_pipeline.core.score_tables import SCORES_TABLE
from nuggets_pipeline.core.scoring import SCORE_COLUMNS, OneShotChunk, ScoringConfig, score_one_shot
from nuggets_pipeline.core.storage import Warehouse, write_parquet_atomic
from nuggets_pipeline.core.versions import anchor_set_hash

PAIR_DELTAS_TABLE = "one_shot_pair_deltas"
Log = Callable[[str], None]


class StaleZeroShotError(ValueError):
    """The zero-shot losses were computed with another scoring function or anchor set than the shard's."""

    def __init__(self, fingerprint: str, anchors_hash: str) -> None:
        self.fingerprint, self.anchors_hash = fingerprint, anchors_hash
        super().__init__(
            "zero_shot_losses were computed with another model, template or anchor set: re-materialise it first"
        )


@dataclass
class ShardResult:
    """A shard's scores (one row per current candidate, with its provenance) and what scoring it cost this run."""

    scores: pd.DataFrame
    pair_deltas: pd.DataFrame  # every delta of the shard, also stored as PAIR_DELTAS_TABLE (empty if none kept)
    checkpoints: Path
    resumed: int = 0  # candidates found checkpointed by an earlier run
    anchor_tokens: int = 0  # the sums of the OneShotChunk fields of the chunks scored in this run
    prefix_tokens: int = 0
    anchor_passes: int = 0
    anchor_passes_total: int = 0
    seconds: float = 0.0

    def add(self, chunk: OneShotChunk) -> None:
        self.anchor_tokens += chunk.anchor_tokens
        self.prefix_tokens += chunk.prefix_tokens
        self.anchor_passes += chunk.anchor_passes
        self.anchor_passes_total += chunk.anchor_passes_total
        self.seconds += chunk.seconds

    @property
    def tokens_per_s(self) -> float:
        """Anchor tokens per second of scoring; 0.0 when nothing was scored (a fully resumed shard)."""
        return self.anchor_tokens / self.seconds if self.seconds else 0.0

    @property
    def passes_saved(self) -> float:
        """The share of (candidate, anchor) passes decision mode skipped; 0.0 when nothing was scored."""
        return 1 - self.anchor_passes / self.anchor_passes_total if self.anchor_passes_total else 0.0


def checkpoint_folder(warehouse: Warehouse, shard: str, fingerprint: str, anchors_hash: str) -> Path:
    """Where a shard's chunks of one scoring version (fingerprint and anchor set) are checkpointed."""
    return warehouse.checkpoint_dir(SCORES_TABLE, shard, f"{fingerprint}-{anchors_hash}")


def chunk_path(folder: Path, kind: str, index: int) -> Path:
    """A chunk's file of one kind (``scores`` or ``pairs``): what ``read_chunk_checkpoints`` finds."""
    return folder / f"{kind}-{index:05d}.parquet"


def score_shard_resumable(
    loaded: LoadedModel,
    anchor_set: pd.DataFrame,
    zero_shot: pd.DataFrame,
    candidates: pd.DataFrame,
    config: ScoringConfig,
    *,
    shard: str,
    fingerprint: str,
    warehouse: Warehouse,
    log: Log,
    warn: Log | None = None,
) -> ShardResult:
    """Score ``candidates`` (the rows of ``shard``), resuming from the checkpoints of the same scoring version.

    ``fingerprint`` identifies the scoring function (model, template, separator, ...); ``zero_shot`` must carry it
    and the anchor set's hash, else ``StaleZeroShotError``. ``log`` gets progress, ``warn`` (default ``log``) each
    checkpoint set aside. The pair deltas are written to the warehouse (``PAIR_DELTAS_TABLE``, partition ``shard``);
    the scores are returned for the caller to store.
    """
    warn = warn or log
    anchors_hash = anchor_set_hash(anchor_set)
    stale = zero_shot[(zero_shot["model_fingerprint"] != fingerprint) | (zero_shot["anchor_set_hash"] != anchors_hash)]
    if len(stale):
        raise StaleZeroShotError(fingerprint, anchors_hash)
    checkpoints = checkpoint_folder(warehouse, shard, fingerprint, anchors_hash)
    chunks, next_index = read_chunk_checkpoints(checkpoints, ("scores", "pairs"), ("candidate_id",), warn)
    done = [chunk["scores"] for chunk in chunks.values()]
    done_ids = set(pd.concat(done)["candidate_id"]) if done else set()
    todo = candidates[~candidates["id"].isin(done_ids)]
    result = ShardResult(scores=pd.DataFrame(), pair_deltas=pd.DataFrame(), checkpoints=checkpoints)
    if done_ids:
        result.resumed = len(done_ids)
        log(f"{shard}: resuming, {len(done_ids)} candidates already checkpointed, {len(todo)} to go")
    for chunk in score_one_shot(loaded, anchor_set, zero_shot, todo, config):
        # Deltas first: a kill between the two writes re-scores the chunk instead of leaving scores without deltas.
        write_parquet_atomic(chunk.pair_deltas, chunk_path(checkpoints, "pairs", next_index))
        write_parquet_atomic(chunk.scores, chunk_path(checkpoints, "scores", next_index))
        next_index += 1
        done.append(chunk.scores)
        result.add(chunk)
        log(
            f"{shard}: {sum(len(d) for d in done)}/{len(candidates)} candidates, "
            f"{chunk.tokens_per_s:.0f} anchor tokens/s"
        )
    scores = pd.concat(done, ignore_index=True) if done else pd.DataFrame(columns=["candidate_id"])
    scores = scores.drop_duplicates("candidate_id", keep="last")
    scores = scores[scores["candidate_id"].isin(set(candidates["id"]))].reset_index(drop=True)
    scores.insert(1, "shard", shard)
    scores["model_fingerprint"] = fingerprint
    scores["anchor_set_hash"] = anchors_hash
    scores["decision_threshold"] = float("nan") if config.decision_threshold is None else config.decision_threshold
    result.scores = scores
    # Every pairs file, an orphan of a killed chunk included: its candidates' newer rows win the deduplication.
    pair_files = warehouse.checkpoint_files(checkpoints, "pairs")
    pairs = pd.concat([warehouse.read_file(p) for p in pair_files], ignore_index=True) if pair_files else pd.DataFrame()
    if len(pairs):
        pairs = pairs.drop_duplicates(["candidate_id", "anchor_id"], keep="last").assign(shard=shard)
        warehouse.write(PAIR_DELTAS_TABLE, pairs, shard)
    result.pair_deltas = pairs
    return result


def seed_checkpoints(warehouse: Warehouse, scores: pd.DataFrame, fingerprint: str, anchors_hash: str) -> list[Path]:
    """Place scores computed elsewhere (a committed scored pool, one row per candidate with its ``shard``) as each
    shard's checkpoint of this scoring version: one chunk of scores per shard, no deltas, so
    ``score_shard_resumable`` resumes from it and finds nothing left to score. The caller checks the scores belong
    to this version and pool; the paths written are returned."""
    written = []
    for shard, rows in scores.groupby("shard"):
        path = chunk_path(checkpoint_folder(warehouse, str(shard), fingerprint, anchors_hash), "scores", 0)
        write_parquet_atomic(rows[SCORE_COLUMNS].reset_index(drop=True), path)
        written.append(path)
    return written


__all__ = [
    "PAIR_DELTAS_TABLE",
    "ShardResult",
    "StaleZeroShotError",
    "checkpoint_folder",
    "chunk_path",
    "score_shard_resumable",
    "seed_checkpoints",
]
