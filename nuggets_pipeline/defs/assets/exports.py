"""The scored pool and the golden subset as files a trainer loads (JSONL, Parquet, `datasets`, Alpaca JSON)."""

import dagster as dg
import pandas as pd
from pydantic import Field, field_validator

from nuggets_pipeline.core.exports import export_scored_pool, ranked_pool
from nuggets_pipeline.core.selection import select_golden
from nuggets_pipeline.core.versions import StaleVersionError, current_pool, current_scores, current_version
from nuggets_pipeline.defs import metadata as md
from nuggets_pipeline.defs.resources import WarehouseResource
from nuggets_pipeline.defs.schemas import CandidatesSchema, OneShotScoresSchema


class PoolExportConfig(dg.Config):
    thresholds: list[float] = Field(
        default=[],
        description="also write one Alpaca JSON per threshold (golden_score > t), like the paper's released "
        "alpaca_gpt4_0.85.json; e.g. [0.8, 0.85, 0.9]",
    )
    file_prefix: str = Field(default="alpaca_golden", description="per-threshold files are <prefix>_<t>.json")

    @field_validator("thresholds")
    @classmethod
    def _in_range(cls, values: list[float]) -> list[float]:
        if bad := [t for t in values if not 0.0 <= t <= 1.0]:
            raise ValueError(f"thresholds must be within [0, 1], got {bad}")
        return values


@dg.asset(
    group_name="scoring",
    code_version="pool-exports-v1",
)
def scored_pool_exports(
    context: dg.AssetExecutionContext,
    config: PoolExportConfig,
    golden_subset: pd.DataFrame,
    candidates: pd.DataFrame,
    anchor_set: pd.DataFrame,
    zero_shot_losses: pd.DataFrame,
    warehouse: WarehouseResource,
) -> dg.Output[pd.DataFrame]:
    """The whole scored pool ranked by golden score (JSONL, Parquet, `datasets` folder) and the golden subset as Alpaca
    JSON, under <home>/exports/golden/: data any trainer loads."""
    store = warehouse.warehouse()
    with md.failure_on(StaleVersionError):
        version = current_version(zero_shot_losses, anchor_set)
        version.check_subset(golden_subset)  # the subset and the ranked pool come from one version
    candidates = current_pool(candidates, store, CandidatesSchema)
    current = current_scores(store, candidates, version, OneShotScoresSchema)
    if current.empty:
        raise dg.Failure("no current one_shot_scores to export: score the candidate shards first")
    pool = ranked_pool(candidates, current, golden_subset["id"])
    if missing := set(golden_subset["id"]) - set(pool["id"]):
        raise dg.Failure(f"{len(missing)} golden_subset rows have no current score: re-materialise golden_subset")
    by_threshold = {}
    for threshold in config.thresholds:
        chosen = set(select_golden(current, threshold=threshold)["candidate_id"])
        by_threshold[threshold] = pool[pool["id"].isin(chosen)]
    exports = store.exports_dir
    written = export_scored_pool(pool, exports, threshold_subsets=by_threshold, prefix=config.file_prefix)
    # golden_subset itself used to write exports/golden_subset.json: a second copy, left behind by older versions,
    # that disagrees with golden/golden_subset.json as soon as the selection changes. One copy stays.
    legacy = exports / "golden_subset.json"
    if legacy.is_file():
        legacy.unlink()
        context.log.info(f"removed {legacy}, an old copy of {written['golden_subset_alpaca']}")
    context.log.info(f"exported {len(pool)} scored rows ({int(pool['selected'].sum())} selected) to {written}")
    sizes = pd.DataFrame({"threshold": list(by_threshold), "rows": [len(s) for s in by_threshold.values()]})
    return md.table_output(
        pool,
        {
            "selected": int(pool["selected"].sum()),
            "per_threshold": md.table(sizes) if len(sizes) else "none asked",
            "top_examples": md.preview(pool, ["golden_score", "instruction", "output"], rows=5),
            **md.paths_metadata(written),
        },
    )
