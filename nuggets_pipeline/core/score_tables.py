"""Reads of the stored one-shot scores across shards, as SQL in DuckDB over the shards' Parquet files.

Only the files of shards that are in the current candidate pool are ever read: after a re-shard (3 shards -> 2),
the file of a shard that no longer exists is listed by name and never opened, so old rows can neither be
selected nor collide with the current ones. A row counts as current only if it carries the current scoring
fingerprint and anchor-set hash (``core.versions.ScoringVersion``) and belongs to the pool shard it was stored
under; ``core.versions`` is the API the pipeline reads through.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pandas as pd

from nuggets_pipeline.core.selection import PAPER_THRESHOLDS
from nuggets_pipeline.core.storage import FILENAME_COLUMN, StoredTableError, Warehouse

if TYPE_CHECKING:  # core.versions reads scores through this module
    from nuggets_pipeline.core.versions import ScoringVersion

SCORES_TABLE = "one_shot_scores"

_SHARD_STATUS_SQL = """
WITH files AS (
    SELECT shard,
           count(*) AS rows_stored,
           count(*) FILTER (WHERE model_fingerprint <> $fingerprint OR anchor_set_hash <> $anchors) AS rows_stale,
           string_agg(DISTINCT model_fingerprint, ',') AS fingerprints,
           string_agg(DISTINCT anchor_set_hash, ',') AS anchor_hashes
    FROM scores GROUP BY shard
), matched AS (
    SELECT p.shard, count(*) AS candidates, count(s.candidate_id) AS scored_current
    FROM pool p
    LEFT JOIN scores s
      ON s.candidate_id = p.id AND s.shard = p.shard
     AND s.model_fingerprint = $fingerprint AND s.anchor_set_hash = $anchors
    GROUP BY p.shard
)
SELECT m.shard, m.candidates, m.scored_current,
       coalesce(f.rows_stored, 0) AS rows_stored, coalesce(f.rows_stale, 0) AS rows_stale,
       f.fingerprints, f.anchor_hashes,
       CASE WHEN f.shard IS NULL THEN 'missing'
            WHEN f.rows_stale > 0 THEN 'stale'
            WHEN m.scored_current < m.candidates THEN 'incomplete'
            ELSE 'current' END AS status
FROM matched m LEFT JOIN files f ON f.shard = m.shard
ORDER BY m.shard
"""

_CURRENT_SQL = """
SELECT s.* FROM scores s
JOIN pool p ON s.candidate_id = p.id AND s.shard = p.shard
WHERE s.model_fingerprint = $fingerprint AND s.anchor_set_hash = $anchors
ORDER BY s.shard, s.candidate_id
"""

# Decision-mode rows only bound their score (see core.selection._above); both bounds count here the same way.
_THRESHOLD_SQL = """
WITH t AS (SELECT unnest($thresholds::DOUBLE[]) AS threshold), n AS (SELECT count(*) AS total FROM scores)
SELECT t.threshold,
       count(s.candidate_id) FILTER (
           WHERE (s.verdict = 'exact' AND s.golden_score > t.threshold)
              OR (s.verdict <> 'exact' AND s.wins / s.n_anchors > t.threshold)) AS subset_size,
       count(s.candidate_id) FILTER (
           WHERE s.verdict <> 'exact' AND s.wins / s.n_anchors <= t.threshold
             AND (s.wins + s.n_anchors - s.anchors_scored) / s.n_anchors > t.threshold) AS undecided,
       any_value(n.total) AS scored
FROM t CROSS JOIN n LEFT JOIN scores s ON true
GROUP BY t.threshold ORDER BY t.threshold
"""


@dataclass
class Coverage:
    """Per pool shard: current, stale, incomplete or missing; plus stored shards that left the pool."""

    version: ScoringVersion
    shards: pd.DataFrame  # one row per pool shard (see _SHARD_STATUS_SQL)
    not_in_pool: list[str] = field(default_factory=list)

    def named(self, status: str) -> list[str]:
        return sorted(self.shards.loc[self.shards["status"] == status, "shard"])

    @property
    def to_rescore(self) -> list[str]:
        """The exact partition keys of one_shot_scores a backfill must (re)materialise."""
        return sorted(self.shards.loc[self.shards["status"] != "current", "shard"])

    @property
    def complete(self) -> bool:
        return not self.to_rescore

    @property
    def candidates_unscored(self) -> int:
        return int((self.shards["candidates"] - self.shards["scored_current"]).sum())

    def summary(self) -> str:
        parts = [f"{status}: {', '.join(self.named(status))}" for status in ("stale", "missing", "incomplete")]
        return "; ".join(p for p in parts if not p.endswith(": "))

    def backfill_hint(self) -> str:
        keys = self.to_rescore
        return (
            f"backfill one_shot_scores for partitions {', '.join(keys)} (UI: one_shot_scores -> Materialize -> "
            f"select those partitions; CLI: dagster asset materialize --select one_shot_scores --partition "
            f"<key>, once per key)"
        )

    def metadata(self) -> dict[str, object]:
        return {
            "shards_expected": len(self.shards),
            "shards_missing": ", ".join(self.named("missing")) or "none",
            "shards_stale": ", ".join(self.named("stale")) or "none",
            "shards_incomplete": ", ".join(self.named("incomplete")) or "none",
            "shards_not_in_pool": ", ".join(self.not_in_pool) or "none",
            "candidates_unscored": self.candidates_unscored,
            **self.version.metadata(),
        }


def _score_files(warehouse: Warehouse, pool: pd.DataFrame) -> tuple[list, list[str]]:
    shards = sorted(pool["shard"].unique())
    stored = warehouse.partitions(SCORES_TABLE)
    files = warehouse.files(SCORES_TABLE, [s for s in shards if s in set(stored)])
    return files, sorted(set(stored) - set(shards))


def _over_pool(
    warehouse: Warehouse, query: str, files: list, pool: pd.DataFrame, version: ScoringVersion, schema: object | None
) -> pd.DataFrame:
    """``query`` over the pool's score files (``scores``) and the pool's ids and shards (``pool``), at ``version``."""
    return warehouse.sql(
        query,
        {"fingerprint": version.fingerprint, "anchors": version.anchor_set_hash},
        files={"scores": (files, schema)},
        frames={"pool": pool[["id", "shard"]]},
    )


def coverage(
    warehouse: Warehouse, pool: pd.DataFrame, version: ScoringVersion, schema: object | None = None
) -> Coverage:
    """Which shards of ``pool`` (columns id, shard) hold scores at ``version`` for every candidate."""
    files, not_in_pool = _score_files(warehouse, pool)
    return Coverage(version, _over_pool(warehouse, _SHARD_STATUS_SQL, files, pool, version, schema), not_in_pool)


def scores_at(
    warehouse: Warehouse, pool: pd.DataFrame, version: ScoringVersion, schema: object | None = None
) -> pd.DataFrame:
    """The stored score rows of ``pool``'s candidates that carry ``version``."""
    files, _ = _score_files(warehouse, pool)
    found = _over_pool(warehouse, _CURRENT_SQL, files, pool, version, schema)
    if schema is not None and len(found):
        _validate_rows(schema, found)
    return found.drop(columns=[FILENAME_COLUMN]).reset_index(drop=True)


def _validate_rows(schema: object, frame: pd.DataFrame) -> None:
    """pandera on rows read back from several files; a failure names the files its failing rows came from."""
    import pandera.errors

    try:
        schema.validate(frame.drop(columns=[FILENAME_COLUMN]), lazy=True)  # type: ignore[attr-defined]
    except pandera.errors.SchemaErrors as error:
        index = pd.to_numeric(error.failure_cases["index"], errors="coerce").dropna().astype(int)
        files = sorted(set(frame.loc[frame.index.intersection(index), FILENAME_COLUMN])) or sorted(
            set(frame[FILENAME_COLUMN])
        )
        raise StoredTableError(", ".join(files), f"rows fail {schema.__name__}: {str(error)[:1500]}") from error


def threshold_table(
    warehouse: Warehouse, scores: pd.DataFrame, thresholds: tuple[float, ...] = PAPER_THRESHOLDS
) -> pd.DataFrame:
    """Subset size per threshold (the paper's Table 3) over ``scores``, in SQL."""
    table = warehouse.sql(
        _THRESHOLD_SQL,
        {"thresholds": list(thresholds)},
        frames={"scores": scores[["candidate_id", "golden_score", "wins", "n_anchors", "anchors_scored", "verdict"]]},
    )
    table["fraction"] = table["subset_size"] / table["scored"].where(table["scored"] > 0)
    return table[["threshold", "subset_size", "fraction", "undecided"]]


def current_pair_deltas(warehouse: Warehouse, current: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """The stored (candidate, anchor) deltas behind ``current`` (rows of ``scores_at``), and how many of its
    candidates had to be left out because their stored deltas do not add up to their current score.

    The pair table carries no fingerprint: a shard scored with ``keep_pair_deltas`` off keeps an older version's
    file. A candidate counts only if its deltas give exactly its stored wins and anchors scored, so the readout
    never mixes versions.
    """
    from nuggets_pipeline.core.shard_scoring import PAIR_DELTAS_TABLE  # shard_scoring imports this module

    columns = ["candidate_id", "anchor_id", "delta"]
    empty = pd.DataFrame({c: pd.Series(dtype=object if c != "delta" else float) for c in columns})
    if current.empty:
        return empty, 0
    stored = set(warehouse.partitions(PAIR_DELTAS_TABLE))
    files = warehouse.files(PAIR_DELTAS_TABLE, [s for s in sorted(current["shard"].unique()) if s in stored])
    if not files:
        return empty, len(current)
    pairs = warehouse.sql(
        "SELECT p.candidate_id, p.anchor_id, p.delta FROM pairs p JOIN scores s "
        "ON p.candidate_id = s.candidate_id AND p.shard = s.shard",
        files={"pairs": (files, None)},
        frames={"scores": current[["candidate_id", "shard"]]},
    )
    pairs = pairs.drop_duplicates(["candidate_id", "anchor_id"], keep="last")
    won = pairs.assign(win=pairs["delta"] > 0).groupby("candidate_id")["win"].agg(pair_wins="sum", pairs="size")
    joined = current.set_index("candidate_id")[["wins", "anchors_scored"]].join(won, how="left")
    agree = (joined["pair_wins"] == joined["wins"]) & (joined["pairs"] == joined["anchors_scored"])
    kept = pairs[pairs["candidate_id"].isin(set(joined.index[agree]))].reset_index(drop=True)
    return kept, int((~agree).sum())
