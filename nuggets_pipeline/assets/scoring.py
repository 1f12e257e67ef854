"""Stage 3: zero-shot anchor log-probs, partitioned one-shot golden scores, and the golden subset."""

import json
import shutil
import time
from pathlib import Path

import dagster as dg
import pandas as pd
import pandera.pandas as pa
from pydantic import Field, model_validator

from nuggets_pipeline import metadata as md
from nuggets_pipeline.core.anchors import anchor_set_hash
from nuggets_pipeline.core.checkpoints import read_chunk_checkpoints
from nuggets_pipeline.core.incoming import INCREMENTS_TABLE, shard_candidates, with_increments
from nuggets_pipeline.core.scoring import score_one_shot, score_zero_shot
from nuggets_pipeline.core.selection import select_golden, threshold_table
from nuggets_pipeline.core.storage import Warehouse, write_parquet_atomic
from nuggets_pipeline.partitions import candidate_shards, shards_per_run
from nuggets_pipeline.resources import ModelResource, ScoringResource, WarehouseResource
from nuggets_pipeline.schemas import GoldenSubsetSchema, GoldenSubsetType, OneShotScoresSchema, ZeroShotSchema
from nuggets_pipeline.sensors import MODEL_POD_TAGS, selection_condition

PAIR_DELTAS_TABLE = "one_shot_pair_deltas"


def column_schema(schema: type[pa.DataFrameModel]) -> dg.TableSchema:
    return dg.TableSchema(
        columns=[dg.TableColumn(name, str(column.dtype)) for name, column in schema.to_schema().columns.items()]
    )


@dg.asset(
    group_name="scoring",
    code_version="zero-shot-v1",
    pool="model",
    op_tags=MODEL_POD_TAGS,
    description="log p(anchor response | BOS + anchor prompt) for every anchor: the baseline of each comparison.",
)
def zero_shot_losses(
    context: dg.AssetExecutionContext,
    anchor_set: pd.DataFrame,
    scoring_model: ModelResource,
    scoring: ScoringResource,
) -> dg.Output[pd.DataFrame]:
    loaded = scoring_model.load()
    started = time.perf_counter()
    frame = score_zero_shot(loaded, anchor_set, scoring.core_config(scoring_model.template))
    seconds = time.perf_counter() - started
    frame["model_fingerprint"] = scoring.fingerprint(loaded.fingerprint, scoring_model.template)
    frame["anchor_set_hash"] = anchor_set_hash(anchor_set)
    ZeroShotSchema.validate(frame)
    tokens = int(frame["response_tokens"].sum() + frame["prompt_tokens"].sum())
    context.log.info(f"zero-shot scored {len(frame)} anchors in {seconds:.1f}s")
    return dg.Output(
        frame,
        metadata={
            "dagster/row_count": len(frame),
            "dagster/column_schema": column_schema(ZeroShotSchema),
            "model": loaded.name,
            "device": scoring_model.device_used(),
            "scoring_fingerprint": frame["model_fingerprint"].iloc[0],
            "anchor_set_hash": frame["anchor_set_hash"].iloc[0],
            "truncated_anchors": int(frame["truncated"].sum()),
            "mean_logprob_per_token": float(frame["logprob_sum"].sum() / frame["response_tokens"].sum()),
            "response_tokens": md.histogram_md(frame["response_tokens"], bins=8, label="response tokens"),
            "tokens_per_s": tokens / seconds if seconds else 0.0,
            "wall_s": seconds,
        },
        # The same model, template and anchors give the same version: re-running it leaves the scores current in
        # the UI, while a change marks every one_shot_scores partition as upstream-changed (stale).
        data_version=dg.DataVersion(f"{frame['model_fingerprint'].iloc[0]}-{frame['anchor_set_hash'].iloc[0]}"),
    )


def _checkpoint_dir(home: Path, shard: str, fingerprint: str, anchors_hash: str) -> Path:
    return home / "checkpoints" / "one_shot_scores" / shard / f"{fingerprint}-{anchors_hash}"


def score_shard(
    context: dg.AssetExecutionContext,
    shard: str,
    shard_candidates: pd.DataFrame,
    anchor_set: pd.DataFrame,
    zero_shot_losses: pd.DataFrame,
    scoring_model: ModelResource,
    scoring: ScoringResource,
    warehouse: WarehouseResource,
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Score one shard, checkpointing every few candidates so a killed run resumes where it stopped."""
    loaded = scoring_model.load()
    fingerprint = scoring.fingerprint(loaded.fingerprint, scoring_model.template)
    anchors_hash = anchor_set_hash(anchor_set)
    stale = zero_shot_losses[
        (zero_shot_losses["model_fingerprint"] != fingerprint) | (zero_shot_losses["anchor_set_hash"] != anchors_hash)
    ]
    if len(stale):
        raise dg.Failure(
            "zero_shot_losses were computed with another model, template or anchor set: re-materialise it first",
            metadata={"expected_fingerprint": fingerprint, "expected_anchor_set_hash": anchors_hash},
        )
    checkpoints = _checkpoint_dir(warehouse.root(), shard, fingerprint, anchors_hash)
    # A checkpoint that cannot be read is set aside (renamed, logged) and its candidates are scored again.
    chunks, next_index = read_chunk_checkpoints(
        checkpoints, ("scores", "pairs"), ("candidate_id",), context.log.warning
    )
    done = [chunk["scores"] for chunk in chunks.values()]
    done_ids = set(pd.concat(done)["candidate_id"]) if done else set()
    todo = shard_candidates[~shard_candidates["id"].isin(done_ids)]
    if done_ids:
        context.log.info(f"{shard}: resuming, {len(done_ids)} candidates already checkpointed, {len(todo)} to go")
    totals = {"anchor_tokens": 0.0, "prefix_tokens": 0.0, "seconds": 0.0, "passes": 0.0, "passes_total": 0.0}
    config = scoring.core_config(scoring_model.template)
    for chunk in score_one_shot(loaded, anchor_set, zero_shot_losses, todo, config):
        # Scores and pair deltas of a chunk land in one checkpoint step: deltas first, so a kill between the
        # two writes re-scores the chunk instead of leaving scores without their deltas.
        write_parquet_atomic(chunk.pair_deltas, checkpoints / f"pairs-{next_index:05d}.parquet")
        write_parquet_atomic(chunk.scores, checkpoints / f"scores-{next_index:05d}.parquet")
        next_index += 1
        done.append(chunk.scores)
        totals["anchor_tokens"] += chunk.anchor_tokens
        totals["prefix_tokens"] += chunk.prefix_tokens
        totals["seconds"] += chunk.seconds
        totals["passes"] += chunk.anchor_passes
        totals["passes_total"] += chunk.anchor_passes_total
        context.log.info(
            f"{shard}: {sum(len(d) for d in done)}/{len(shard_candidates)} candidates, "
            f"{chunk.tokens_per_s:.0f} anchor tokens/s"
        )
    scores = pd.concat(done, ignore_index=True) if done else pd.DataFrame(columns=["candidate_id"])
    scores = scores.drop_duplicates("candidate_id", keep="last")
    scores = scores[scores["candidate_id"].isin(set(shard_candidates["id"]))].reset_index(drop=True)
    scores.insert(1, "shard", shard)
    scores["model_fingerprint"] = fingerprint
    scores["anchor_set_hash"] = anchors_hash
    scores["decision_threshold"] = float("nan") if config.decision_threshold is None else config.decision_threshold
    pair_files = sorted(checkpoints.glob("pairs-*.parquet"))
    pairs = pd.concat([pd.read_parquet(p) for p in pair_files], ignore_index=True) if pair_files else pd.DataFrame()
    if len(pairs):
        pairs = pairs.drop_duplicates(["candidate_id", "anchor_id"], keep="last")
        Warehouse(warehouse.warehouse().root).write(PAIR_DELTAS_TABLE, pairs.assign(shard=shard), shard)
    OneShotScoresSchema.validate(scores)
    return scores, totals


@dg.asset(
    group_name="scoring",
    partitions_def=candidate_shards,
    code_version="one-shot-v1",
    pool="model",
    op_tags=MODEL_POD_TAGS,
    # NUGGETS_SHARDS_PER_RUN: 1 (default) fans a backfill out, one run (pod) per shard; N scores N per run.
    backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=shards_per_run()),
    description="Golden score of every candidate in a shard: the fraction of anchors its one-shot prefix helps.",
)
def one_shot_scores(
    context: dg.AssetExecutionContext,
    candidates: pd.DataFrame,
    anchor_set: pd.DataFrame,
    zero_shot_losses: pd.DataFrame,
    scoring_model: ModelResource,
    scoring: ScoringResource,
    warehouse: WarehouseResource,
):
    outputs: dict[str, pd.DataFrame] = {}
    rows = []
    store = warehouse.warehouse()
    for shard in context.partition_keys:
        # Base shards come from `candidates`; a shard of an incoming batch from that batch's stored increment.
        in_shard = shard_candidates(candidates, shard, store)
        if in_shard.empty:
            raise dg.Failure(
                f"shard {shard} has no candidates: re-materialise `candidates` (or its incoming batch) "
                "or delete the partition"
            )
        started = time.perf_counter()
        scores, totals = score_shard(
            context, shard, in_shard, anchor_set, zero_shot_losses, scoring_model, scoring, warehouse
        )
        wall = time.perf_counter() - started
        outputs[shard] = scores
        rows.append(
            {
                "shard": shard,
                "candidates": len(scores),
                "anchor_passes": int(totals["passes"]),
                "passes_saved": 1 - totals["passes"] / totals["passes_total"] if totals["passes_total"] else 0.0,
                "tokens_per_s": totals["anchor_tokens"] / totals["seconds"] if totals["seconds"] else 0.0,
                "candidates_per_s": len(scores) / wall if wall else 0.0,
                "wall_s": wall,
            }
        )
    summary = pd.DataFrame(rows)
    all_scores = pd.concat(outputs.values(), ignore_index=True)
    metadata = {
        "dagster/row_count": len(all_scores),
        "dagster/column_schema": column_schema(OneShotScoresSchema),
        "candidates_scored": int(summary["candidates"].sum()),
        "device": scoring_model.device_used(),
        "anchor_passes": int(summary["anchor_passes"].sum()),
        "tokens_per_s": float(summary["tokens_per_s"].mean()),
        "candidates_per_s": float(summary["candidates_per_s"].mean()),
        "wall_s": float(summary["wall_s"].sum()),
        "shards": md.table(summary),
        "golden_scores": md.histogram_md(
            all_scores["golden_score"], bins=[i / 10 for i in range(11)], label="golden score"
        ),
        "scoring_fingerprint": all_scores["model_fingerprint"].iloc[0],
        "anchor_set_hash": all_scores["anchor_set_hash"].iloc[0],
    }
    if len(outputs) == 1:
        return dg.Output(next(iter(outputs.values())), metadata=metadata)
    return dg.Output(outputs, metadata=metadata)


class GoldenSelectionConfig(dg.Config):
    threshold: float | None = Field(default=0.8, description="keep golden_score > threshold (the paper: 0.8)")
    top_k: int | None = Field(default=None, gt=0, description="keep the k best instead")
    top_fraction: float | None = Field(default=None, gt=0, le=1, description="keep this fraction instead")

    @model_validator(mode="after")
    def _one_criterion(self) -> "GoldenSelectionConfig":
        chosen = [v is not None for v in (self.top_k, self.top_fraction)]
        if sum(chosen) > 1:
            raise ValueError("choose at most one of top_k and top_fraction")
        return self

    def criterion(self) -> dict[str, float | int | None]:
        if self.top_k is not None:
            return {"top_k": self.top_k}
        if self.top_fraction is not None:
            return {"top_fraction": self.top_fraction}
        if self.threshold is None:
            raise ValueError("no selection criterion: set threshold, top_k or top_fraction")
        return {"threshold": self.threshold}


def scored_shards(warehouse: Warehouse) -> pd.DataFrame:
    folder = warehouse.table_dir("one_shot_scores")
    files = sorted(folder.glob("*.parquet"))
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True) if files else pd.DataFrame()


def coverage(candidates: pd.DataFrame, scores: pd.DataFrame, zero_shot: pd.DataFrame) -> dict[str, object]:
    """Which shards are missing, incomplete, or scored with another model, template or anchor set."""
    expected_fingerprint = zero_shot["model_fingerprint"].iloc[0]
    expected_anchors = zero_shot["anchor_set_hash"].iloc[0]
    shards = sorted(candidates["shard"].unique())
    present = set(scores["shard"]) if len(scores) else set()
    current = (
        scores[(scores["model_fingerprint"] == expected_fingerprint) & (scores["anchor_set_hash"] == expected_anchors)]
        if len(scores)
        else scores
    )
    stale = sorted(present - set(current["shard"])) if len(scores) else []
    scored_ids = set(current["candidate_id"]) if len(current) else set()
    unscored = candidates[~candidates["id"].isin(scored_ids)]
    return {
        "shards_expected": len(shards),
        "shards_missing": sorted(set(shards) - present),
        "shards_stale": stale,
        "candidates_unscored": len(unscored),
        "complete": not (set(shards) - present) and not stale and unscored.empty,
    }


@dg.asset(
    group_name="scoring",
    # Increments are read from the warehouse (their candidates join the pool); the dep draws that lineage.
    deps=[one_shot_scores, dg.AssetDep(INCREMENTS_TABLE)],
    dagster_type=GoldenSubsetType,
    code_version="golden-v1",
    automation_condition=selection_condition(),
    description="The candidates whose one-shot prefix helps the most anchors; also exported as Alpaca JSON.",
)
def golden_subset(
    context: dg.AssetExecutionContext,
    config: GoldenSelectionConfig,
    candidates: pd.DataFrame,
    zero_shot_losses: pd.DataFrame,
    warehouse: WarehouseResource,
) -> dg.Output[pd.DataFrame]:
    store = warehouse.warehouse()
    candidates = with_increments(candidates, store)
    scores = scored_shards(store)
    if scores.empty:
        raise dg.Failure("no one_shot_scores shard has been materialised yet: score the candidate shards first")
    cover = coverage(candidates, scores, zero_shot_losses)
    current = scores[scores["model_fingerprint"] == zero_shot_losses["model_fingerprint"].iloc[0]]
    current = current[current["candidate_id"].isin(set(candidates["id"]))]
    decided = current["decision_threshold"].dropna().unique()
    criterion = config.criterion()
    if len(decided) and criterion != {"threshold": float(decided[0])}:
        raise dg.Failure(
            f"scores were settled early in decision mode at threshold {decided[0]}: select with that threshold, "
            "or re-score exactly (scoring.decision_threshold = null)"
        )
    chosen = select_golden(current, **criterion)
    subset = candidates.merge(chosen[["candidate_id", "golden_score"]], left_on="id", right_on="candidate_id")
    subset = subset.sort_values("golden_score", ascending=False, na_position="last")
    subset = subset[["id", "instruction", "input", "output", "golden_score"]].reset_index(drop=True)
    GoldenSubsetSchema.validate(subset)
    export = warehouse.root() / "exports" / "golden_subset.json"
    export.parent.mkdir(parents=True, exist_ok=True)
    staging = export.with_suffix(".json.tmp")
    staging.write_text(
        json.dumps(subset[["instruction", "input", "output"]].to_dict(orient="records"), indent=1, ensure_ascii=False)
    )
    shutil.move(staging, export)
    ranked = current.merge(candidates[["id", "instruction", "output"]], left_on="candidate_id", right_on="id")
    ranked = ranked.sort_values("golden_score", ascending=False)
    if not cover["complete"]:
        context.log.warning(f"golden_subset built from incomplete scores: {cover}")
    plot = md.histogram_plot(
        current["golden_score"],
        warehouse.root() / "plots" / "golden_scores.png",
        "Golden scores",
        "fraction of anchors helped",
        bins=20,
    )
    return dg.Output(
        subset,
        metadata={
            "dagster/row_count": len(subset),
            "criterion": json.dumps(criterion),
            "candidates_scored": len(current),
            "selected_fraction": len(subset) / len(current) if len(current) else 0.0,
            "coverage_complete": bool(cover["complete"]),
            "shards_missing": ", ".join(cover["shards_missing"]) or "none",
            "golden_score_histogram": md.histogram_md(
                current["golden_score"], bins=[i / 10 for i in range(11)], label="golden score"
            ),
            "golden_score_plot": plot,
            "threshold_table": md.table(threshold_table(current)),
            "top_examples": md.preview(ranked, ["golden_score", "instruction", "output"], rows=5),
            "bottom_examples": md.preview(ranked.iloc[::-1], ["golden_score", "instruction", "output"], rows=5),
            "export": dg.MetadataValue.path(str(export)),
        },
    )
