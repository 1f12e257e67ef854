"""Asset checks: data-quality gates the UI shows next to each asset."""

import dagster as dg
import pandas as pd

from nuggets_pipeline.core.reliability import WARN_BELOW
from nuggets_pipeline.core.versions import StaleVersionError, current_coverage, current_pool, current_version
from nuggets_pipeline.defs import metadata as md
from nuggets_pipeline.defs.resources import WarehouseResource
from nuggets_pipeline.defs.schemas import CandidatesSchema, OneShotScoresSchema

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
    additional_ins={"candidates": dg.AssetIn(), "anchor_set": dg.AssetIn(), "zero_shot_losses": dg.AssetIn()},
    blocking=True,
    description="Every candidate shard is scored, with the current model, template, separator and anchor set.",
)
def golden_subset_scores_complete(
    context: dg.AssetCheckExecutionContext,
    candidates: pd.DataFrame,
    anchor_set: pd.DataFrame,
    zero_shot_losses: pd.DataFrame,
    warehouse: WarehouseResource,
) -> dg.AssetCheckResult:
    try:
        version = current_version(zero_shot_losses, anchor_set)
    except StaleVersionError as error:  # no score can be current against stale baselines: the check fails
        return dg.AssetCheckResult(passed=False, metadata={"problem": str(error), **error.metadata})
    store = warehouse.warehouse()
    # The pool is the base candidates plus every incoming batch: a new batch's unscored shards count as missing.
    cover = current_coverage(store, current_pool(candidates, store, CandidatesSchema), version, OneShotScoresSchema)
    metadata = cover.metadata()
    if cover.to_rescore:
        metadata["backfill"] = cover.backfill_hint()
    # A subset built with allow_partial was asked for explicitly (its metadata says so): a warning, not a block.
    latest = context.instance.get_latest_materialization_event(dg.AssetKey("golden_subset"))
    entry = latest.asset_materialization.metadata.get("partial") if latest and latest.asset_materialization else None
    partial = bool(entry.value) if entry is not None else False
    metadata["subset_built_with_allow_partial"] = partial
    return dg.AssetCheckResult(
        passed=cover.complete,
        severity=dg.AssetCheckSeverity.WARN if partial else dg.AssetCheckSeverity.ERROR,
        metadata=metadata,
    )


@dg.asset_check(
    asset="golden_subset",
    description=f"Warns when the ranking is mostly the luck of the anchor draw: split-half reliability below "
    f"{WARN_BELOW} (the readout in golden_subset's metadata says how many anchors would reach 0.8).",
)
def ranking_reliability(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    # The figures golden_subset recorded from the stored pair deltas: the check judges what the user was shown.
    recorded = md.latest_value(context.instance, "golden_subset", "reliability_figures")
    figures = dict(recorded) if isinstance(recorded, dict) else {}
    reliability = figures.get("reliability")
    metadata: dict[str, object] = {
        "reliability": figures.get("line", "no reliability readout: materialise golden_subset"),
        "threshold": WARN_BELOW,
    }
    if reliability is not None:
        metadata["split_half_reliability"] = float(reliability)
    if figures.get("anchors_for_reliability_0_8") is not None:
        metadata["anchors_for_reliability_0_8"] = int(figures["anchors_for_reliability_0_8"])
    # No figure (too few complete candidates, no stored deltas) is no evidence of a ranking either: it warns too.
    return dg.AssetCheckResult(
        passed=reliability is not None and reliability >= WARN_BELOW,
        severity=dg.AssetCheckSeverity.WARN,
        metadata=metadata,
        description=figures.get("line"),
    )
