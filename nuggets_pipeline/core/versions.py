"""The one owner of "the current scoring version": which scores count, and over which pool.

A stored score is current when it carries the current scoring fingerprint (model, dtype, template, separator and
length cap: ``scoring_fingerprint``) and the hash of the current anchor set, and belongs to a shard of the
current pool: the base candidates plus every incoming batch that joined it. The golden selection, every training
control (random, bottom, full), the exports and the checks ask this module, so they all draw from one pool and
read one set of scores; none of them derives the version on its own.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import pandas as pd

from nuggets_pipeline.core.ids import ids_hash
from nuggets_pipeline.core.incoming import read_increments
from nuggets_pipeline.core.score_tables import Coverage, coverage, scores_at
from nuggets_pipeline.core.storage import Warehouse

SUBSET_FINGERPRINT_COLUMN = "scores_fingerprint"  # a golden subset row: the version its scores had
ANCHORS_COLUMN = "anchor_set_hash"


class StaleVersionError(ValueError):
    """Stored data belong to another scoring version; the message says what to materialise again."""

    def __init__(self, message: str, metadata: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.metadata = metadata or {}


def scoring_fingerprint(model_fingerprint: str, template: str, separator: str, max_length: int | None) -> str:
    """Identifies the scoring function: a change of model (weights, dtype), template, separator or length cap
    changes it, and with it every score's version."""
    parts = [model_fingerprint, template, separator, str(max_length)]
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16]


def anchor_set_hash(anchor_set: pd.DataFrame) -> str:
    """The anchor set's identity: its ids, in order (``core.ids``)."""
    return ids_hash(anchor_set["id"])


@dataclass(frozen=True)
class ScoringVersion:
    """The scoring fingerprint and the anchor-set hash every current score (and subset row) carries."""

    fingerprint: str
    anchor_set_hash: str

    def __str__(self) -> str:
        return f"scoring fingerprint {self.fingerprint} and anchor set {self.anchor_set_hash}"

    def metadata(self) -> dict[str, str]:
        return {"scoring_fingerprint": self.fingerprint, "anchor_set_hash": self.anchor_set_hash}

    def stamp(self, subset: pd.DataFrame) -> pd.DataFrame:
        """``subset`` with the version it was selected at, so training can refuse it once scores change."""
        return subset.assign(**{SUBSET_FINGERPRINT_COLUMN: self.fingerprint, ANCHORS_COLUMN: self.anchor_set_hash})

    def check_subset(self, subset: pd.DataFrame) -> None:
        """Refuse a golden subset selected from scores of another model, template, separator or anchor set."""
        if not {SUBSET_FINGERPRINT_COLUMN, ANCHORS_COLUMN} <= set(subset.columns):
            raise StaleVersionError(
                "the stored golden_subset carries no provenance (an older build): materialise golden_subset"
            )
        found = sorted(set(zip(subset[SUBSET_FINGERPRINT_COLUMN], subset[ANCHORS_COLUMN], strict=True)))
        if len(subset) and found != [(self.fingerprint, self.anchor_set_hash)]:
            raise StaleVersionError(
                f"the stored golden_subset was selected from stale scores (fingerprint, anchor set) {found}; the "
                f"current ones are ({self.fingerprint}, {self.anchor_set_hash}). Re-score one_shot_scores and "
                "materialise golden_subset first.",
                metadata={"subset_provenance": str(found), **self.metadata()},
            )


def current_version(zero_shot_losses: pd.DataFrame, anchor_set: pd.DataFrame) -> ScoringVersion:
    """The version of today's scores: the fingerprint the zero-shot baselines were computed with, provided they
    were computed against today's anchor set (else every one-shot score against them would be stale too)."""
    anchors = anchor_set_hash(anchor_set)
    zero_shot_anchors = set(zero_shot_losses[ANCHORS_COLUMN])
    if zero_shot_anchors != {anchors}:
        raise StaleVersionError(
            f"zero_shot_losses was computed against anchor set {', '.join(sorted(zero_shot_anchors)) or 'none'}, the "
            f"current anchor_set is {anchors}: materialise zero_shot_losses, then re-score one_shot_scores",
            metadata={ANCHORS_COLUMN: anchors},
        )
    fingerprints = sorted(set(zero_shot_losses["model_fingerprint"]))
    if len(fingerprints) != 1:
        raise StaleVersionError(f"zero_shot_losses mixes scoring fingerprints {fingerprints}: materialise it again")
    return ScoringVersion(fingerprints[0], anchors)


def current_pool(candidates: pd.DataFrame, warehouse: Warehouse, schema: Any | None = None) -> pd.DataFrame:
    """The whole candidate pool: the base ``candidates`` and every stored incoming batch's candidates (each batch
    file checked against ``schema``, the candidates schema, when given)."""
    increments = read_increments(warehouse, schema=schema)
    if increments.empty:
        return candidates
    return pd.concat([candidates, increments[candidates.columns]], ignore_index=True)


def current_scores(
    warehouse: Warehouse, pool: pd.DataFrame, version: ScoringVersion, schema: Any | None = None
) -> pd.DataFrame:
    """The stored one-shot scores of ``pool``'s candidates at ``version``, read only from the pool's shards."""
    return scores_at(warehouse, pool, version, schema)


def current_coverage(
    warehouse: Warehouse, pool: pd.DataFrame, version: ScoringVersion, schema: Any | None = None
) -> Coverage:
    """Which shards of ``pool`` hold scores at ``version`` for every candidate, which are stale or missing."""
    return coverage(warehouse, pool, version, schema)
