"""The IFD selector (core.ifd) as assets: instruction-following difficulty of every candidate, and the subset it
selects. It stands beside NUGGETS: two forward passes per candidate and no anchors, so it needs only
`candidates` (and any incoming batch), not the anchor set or the one-shot scores. The `ifd` training variant
trains on its top examples at the golden subset's size; `nuggets run --selector ifd` adds it to a run."""

import time

import dagster as dg
import pandas as pd
from pydantic import Field, model_validator
from scipy.stats import spearmanr

from nuggets_pipeline.core.ifd import IFDConfig, score_ifd, select_by_ifd
from nuggets_pipeline.core.incoming import INCREMENTS_TABLE
from nuggets_pipeline.core.selection import response_lengths
from nuggets_pipeline.core.versions import current_pool
from nuggets_pipeline.defs import metadata as md
from nuggets_pipeline.defs.execution import model_step
from nuggets_pipeline.defs.resources import ModelResource, ScoringResource, WarehouseResource
from nuggets_pipeline.defs.schemas import CandidatesSchema, IFDScoresSchema, IFDScoresType, IFDSubsetType

IFD_SCORES = "ifd_scores"  # the stored table the `ifd` training variant reads


@model_step(
    group_name="scoring",
    deps=[dg.AssetDep(INCREMENTS_TABLE)],  # incoming batches join the pool, as they do for golden
    dagster_type=IFDScoresType,
    code_version="ifd-v1",
)
def ifd_scores(
    context: dg.AssetExecutionContext,
    candidates: pd.DataFrame,
    scoring_model: ModelResource,
    scoring: ScoringResource,
    warehouse: WarehouseResource,
) -> dg.Output[pd.DataFrame]:
    """Instruction-following difficulty of every candidate with the scoring model: mean response NLL given the prompt
    over the same response's NLL alone (Cherry LLM; Superfiltering with a small scorer)."""
    pool = current_pool(candidates, warehouse.warehouse(), CandidatesSchema)
    loaded = scoring_model.load()
    core = scoring.core_config(scoring_model.template)
    started = time.perf_counter()
    frame = score_ifd(
        loaded, pool, IFDConfig(template=core.template, max_length=core.max_length, batch_tokens=core.batch_tokens)
    )
    seconds = time.perf_counter() - started
    frame["model_fingerprint"] = scoring.fingerprint(loaded.fingerprint, scoring_model.template)
    IFDScoresSchema.validate(frame)
    # score_ifd keeps the pool's row order, so the pool's response lengths line up with the frame's rows.
    rho = spearmanr(frame["ifd"], response_lengths(pool).to_numpy()).statistic if len(frame) > 2 else float("nan")
    tokens = int(2 * frame["response_tokens"].sum() + frame["prompt_tokens"].sum())
    context.log.info(f"IFD of {len(frame)} candidates in {seconds:.1f}s")
    return md.table_output(
        frame,
        {
            "model": loaded.name,
            "scoring_fingerprint": str(frame["model_fingerprint"].iloc[0]) if len(frame) else "",
            "ifd_histogram": md.histogram_md(frame["ifd"], bins=10, label="IFD"),
            # Cherry LLM drops these before ranking: the instruction does not help predict the response at all.
            "ifd_at_or_above_1": int((frame["ifd"] >= 1).sum()),
            "truncated": int(frame["truncated"].sum()),
            "spearman_ifd_vs_response_chars": float(rho),
            "forward_tokens": tokens,
            "tokens_per_s": tokens / seconds if seconds else 0.0,
            "wall_s": seconds,
        },
    )


class IFDSubsetConfig(dg.Config):
    """Exactly one of top_k and top_fraction; top_fraction counts every scored candidate, so with the golden
    subset's fraction both subsets have the same size whenever enough candidates lie below ``max_ifd``."""

    top_k: int | None = Field(default=None, gt=0, description="keep the k highest-IFD candidates below max_ifd")
    top_fraction: float | None = Field(default=0.25, gt=0, le=1, description="keep this fraction of the pool")
    max_ifd: float = Field(default=1.0, gt=0, description="drop IFD at or above this (1: the prompt does not help)")

    @model_validator(mode="after")
    def _one_size(self) -> "IFDSubsetConfig":
        if self.top_k is not None and self.top_fraction is not None:
            raise ValueError("ifd_subset: set top_k or top_fraction, not both (set top_fraction: null with top_k)")
        if self.top_k is None and self.top_fraction is None:
            raise ValueError("ifd_subset: set top_k or top_fraction")
        return self


@dg.asset(
    group_name="scoring",
    dagster_type=IFDSubsetType,
    code_version="ifd-subset-v1",
)
def ifd_subset(
    context: dg.AssetExecutionContext,
    config: IFDSubsetConfig,
    ifd_scores: pd.DataFrame,
    candidates: pd.DataFrame,
    warehouse: WarehouseResource,
) -> dg.Output[pd.DataFrame]:
    """The candidates with the highest IFD below the cap: the IFD selector's training set."""
    pool = current_pool(candidates, warehouse.warehouse(), CandidatesSchema).set_index("id")
    chosen = select_by_ifd(ifd_scores, top_k=config.top_k, top_fraction=config.top_fraction, max_ifd=config.max_ifd)
    subset = pool.loc[chosen["candidate_id"], ["instruction", "input", "output"]].reset_index()
    subset["ifd"] = chosen["ifd"].to_numpy()
    subset["ifd_rank"] = range(1, len(subset) + 1)
    subset["model_fingerprint"] = chosen["model_fingerprint"].to_numpy()
    lengths = response_lengths(subset)
    context.log.info(f"IFD selected {len(subset)} of {len(ifd_scores)} candidates")
    return md.table_output(
        subset,
        {
            "pool": len(ifd_scores),
            "dropped_at_or_above_max_ifd": int((ifd_scores["ifd"] >= config.max_ifd).sum()),
            "mean_response_chars": float(lengths.mean()) if len(subset) else 0.0,
            "pool_mean_response_chars": float(response_lengths(pool.reset_index()).mean()),
            "top_examples": md.preview(subset, ["ifd", "instruction", "output"], rows=5),
        },
    )


__all__ = ["IFD_SCORES", "IFDSubsetConfig", "ifd_scores", "ifd_subset"]
