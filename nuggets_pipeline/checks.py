"""Asset checks: data-quality gates the UI shows next to each asset."""

import dagster as dg
import pandas as pd

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
