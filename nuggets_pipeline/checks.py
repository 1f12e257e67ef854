"""Asset checks: data-quality gates the UI shows next to each asset."""

import dagster as dg
import pandas as pd

from nuggets_pipeline.assets.scoring import coverage, scored_shards
from nuggets_pipeline.core.incoming import with_increments
from nuggets_pipeline.resources import WarehouseResource

MAX_QUARANTINE_FRACTION = 0.05


@dg.asset_check(
    asset="instructions",
    additional_ins={"quarantined_instructions": dg.AssetIn()},
    description="Warns when more than 5% of the source rows were quarantined.",
)
def quarantine_rate(instructions: pd.DataFrame, quarantined_instructions: pd.DataFrame) -> dg.AssetCheckResult:
    total = len(instructions) + len(quarantined_instructions)
    fraction = len(quarantined_instructions) / total if total else 0.0
    return dg.AssetCheckResult(
        passed=fraction <= MAX_QUARANTINE_FRACTION,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"quarantined_fraction": fraction, "quarantined": len(quarantined_instructions), "total": total},
    )


@dg.asset_check(
    asset="candidates",
    additional_ins={"anchor_set": dg.AssetIn()},
    blocking=True,
    description="Anchors must never be scored as candidates.",
)
def anchors_disjoint_from_candidates(candidates: pd.DataFrame, anchor_set: pd.DataFrame) -> dg.AssetCheckResult:
    overlap = int(candidates["id"].isin(set(anchor_set["id"])).sum())
    return dg.AssetCheckResult(passed=overlap == 0, metadata={"overlapping_ids": overlap})


@dg.asset_check(
    asset="golden_subset",
    additional_deps=["one_shot_scores"],
    additional_ins={"candidates": dg.AssetIn(), "zero_shot_losses": dg.AssetIn()},
    blocking=True,
    description="Every candidate shard is scored, with the current model, template and anchor set.",
)
def golden_subset_scores_complete(
    candidates: pd.DataFrame, zero_shot_losses: pd.DataFrame, warehouse: WarehouseResource
) -> dg.AssetCheckResult:
    store = warehouse.warehouse()
    # The pool is the base candidates plus every incoming batch: a new batch's unscored shards count as missing.
    cover = coverage(with_increments(candidates, store), scored_shards(store), zero_shot_losses)
    return dg.AssetCheckResult(
        passed=bool(cover["complete"]),
        metadata={
            "shards_expected": cover["shards_expected"],
            "shards_missing": ", ".join(cover["shards_missing"]) or "none",
            "shards_stale": ", ".join(cover["shards_stale"]) or "none",
            "candidates_unscored": cover["candidates_unscored"],
        },
    )
