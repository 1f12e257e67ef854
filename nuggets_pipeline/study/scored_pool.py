"""The scored pool: the study's one_shot_scores rows, written after scoring and imported to skip it.

``--scored-pool FILE`` trains and evaluates from a committed scored pool without re-scoring: after checking the
file (every candidate once, a real score) and that it was scored with this home's model, template and anchor set
against this very pool, its rows are placed as each shard's scoring checkpoint (``core.shard_scoring
.seed_checkpoints``), so `one_shot_scores` is still materialised by the asset, finding every candidate already
scored.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from nuggets_pipeline.core.paths import nuggets_home
from nuggets_pipeline.core.scoring import SCORE_COLUMNS

if TYPE_CHECKING:
    from nuggets_pipeline.core.storage import Warehouse

# A one_shot_scores row as the scoring engine writes it, with the shard it was scored in and the version stamp
# that tells an import whether it was scored with this home's model, template and anchor set.
SCORED_POOL_COLUMNS = [
    "candidate_id",
    "shard",
    *(column for column in SCORE_COLUMNS if column != "candidate_id"),
    "model_fingerprint",
    "anchor_set_hash",
]


def warehouse() -> Warehouse:
    """The home's warehouse (the study reads what its stages wrote there)."""
    from nuggets_pipeline.core.storage import Warehouse

    return Warehouse(nuggets_home() / "warehouse")


def base_shards() -> list[str]:
    """The shards of the study's pool, read from the materialised `candidates` table."""
    return sorted(warehouse().read("candidates")["shard"].unique())


def scored_pool_frame() -> pd.DataFrame:
    """The study pool's one_shot_scores rows (the study's shards only), sorted by candidate id."""
    store = warehouse()
    scores = store.read("one_shot_scores", partitions=base_shards())
    pool_ids = set(store.read("candidates")["id"])
    scores = scores[scores["candidate_id"].isin(pool_ids)]
    return scores[SCORED_POOL_COLUMNS].sort_values("candidate_id").reset_index(drop=True)


def _first(ids: pd.Series, count: int = 5) -> str:
    unique = list(dict.fromkeys(ids.astype(str)))
    return ", ".join(unique[:count]) + (f" and {len(unique) - count} more" if len(unique) > count else "")


def read_scored_pool(path: Path) -> pd.DataFrame:
    """A scored pool file, refused (naming the file and the first offending ids) unless every candidate has one
    row with a real score: its rows become scoring checkpoints, which scoring then trusts without re-scoring.

    Exact repeats of a row are dropped (a concatenated file); the same candidate with two different scores is
    refused (a dict would keep the last, so a forged row would replace the real one and be selected). The study
    scores every candidate exactly (no decision threshold), so a golden score must be a number in [0, 1] equal to
    wins / n_anchors over all anchors: a NaN would be stored as scored."""
    try:
        pool = pd.read_parquet(path)
    except Exception as error:  # Arrow's errors (ArrowInvalid, OSError ...) name neither the file nor the cause
        raise ValueError(
            f"scored pool {path}: not a readable Parquet file ({type(error).__name__}: {str(error)[:200]}); "
            "copy it again (a truncated download?) or re-score (run without --scored-pool)"
        ) from None
    missing = [c for c in SCORED_POOL_COLUMNS if c not in pool.columns]
    if missing:
        raise ValueError(f"scored pool {path}: missing column(s) {missing}")
    pool = pool.drop_duplicates(SCORED_POOL_COLUMNS).reset_index(drop=True)
    repeated = pool.loc[pool["candidate_id"].duplicated(keep=False), "candidate_id"]
    if len(repeated):
        raise ValueError(
            f"scored pool {path}: {repeated.nunique()} candidate id(s) carry conflicting scores, first "
            f"{_first(repeated)}: refused (which row is real cannot be told); re-export the pool or re-score"
        )
    score = pd.to_numeric(pool["golden_score"], errors="coerce")
    expected = pool["wins"] / pool["n_anchors"].where(pool["n_anchors"] > 0)
    bad = (
        score.isna()
        | ~score.between(0.0, 1.0)
        | (pool["anchors_scored"] != pool["n_anchors"])
        | ((score - expected).abs() > 1e-9)
    )
    if bad.any():
        raise ValueError(
            f"scored pool {path}: {int(bad.sum())} row(s) have no valid golden score (NaN, outside [0, 1], not "
            f"wins / n_anchors, or not every anchor scored), first {_first(pool.loc[bad, 'candidate_id'])}: "
            "refused, they would be stored as scored; re-export the pool or re-score"
        )
    return pool


def import_scored_pool(path: Path) -> None:
    """Place a committed scored pool as each shard's scoring checkpoint, after checking it was scored with this
    model, template and anchor set against this very pool."""
    from nuggets_pipeline.core.shard_scoring import seed_checkpoints

    pool = read_scored_pool(path)
    store = warehouse()
    zero_shot = store.read("zero_shot_losses")
    expected = (str(zero_shot["model_fingerprint"].iloc[0]), str(zero_shot["anchor_set_hash"].iloc[0]))
    found = set(zip(pool["model_fingerprint"].astype(str), pool["anchor_set_hash"].astype(str), strict=True))
    if found != {expected}:
        raise ValueError(
            f"scored pool {path} was scored with (model fingerprint, anchor set) {sorted(found)}, but this home's "
            f"zero_shot_losses are {expected}: re-score instead (run without --scored-pool)"
        )
    candidates = store.read("candidates")
    wanted = dict(zip(candidates["id"], candidates["shard"], strict=True))
    have = dict(zip(pool["candidate_id"], pool["shard"], strict=True))
    if have != wanted:
        raise ValueError(
            f"scored pool {path} covers {len(have)} candidates, this home's pool has {len(wanted)} "
            f"({len(set(have) ^ set(wanted))} differ, or their shards do): same study settings are required"
        )
    seed_checkpoints(store, pool, *expected)


__all__ = ["SCORED_POOL_COLUMNS", "base_shards", "import_scored_pool", "read_scored_pool", "scored_pool_frame"]
