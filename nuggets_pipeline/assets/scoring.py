"""Stage 3: zero-shot anchor log-probs, partitioned one-shot golden scores, and the golden subset."""

import json
import shutil
import time

import dagster as dg
import pandas as pd
import pandera.pandas as pa
from pydantic import Field, model_validator

from nuggets_pipeline import metadata as md
from nuggets_pipeline.core.anchors import anchor_set_hash
from nuggets_pipeline.core.checkpoints import read_chunk_checkpoints
from nuggets_pipeline.core.incoming import INCREMENTS_TABLE, shard_candidates, with_increments
from nuggets_pipeline.core.score_tables import coverage, current_scores, threshold_table
from nuggets_pipeline.core.scoring import score_one_shot, score_zero_shot
from nuggets_pipeline.core.selection import select_golden
from nuggets_pipeline.core.storage import write_parquet_atomic
from nuggets_pipeline.execution import MODEL_POD_TAGS
from nuggets_pipeline.partitions import candidate_shards
from nuggets_pipeline.resources import ModelResource, ScoringResource, WarehouseResource
from nuggets_pipeline.schemas import (
    CandidatesSchema,
    GoldenSubsetSchema,
    GoldenSubsetType,
    OneShotScoresSchema,
    ZeroShotSchema,
)

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
    store = warehouse.warehouse()
    checkpoints = store.checkpoint_dir("one_shot_scores", shard, f"{fingerprint}-{anchors_hash}")
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
    pair_files = store.checkpoint_files(checkpoints, "pairs")
    pairs = pd.concat([store.read_file(p) for p in pair_files], ignore_index=True) if pair_files else pd.DataFrame()
    if len(pairs):
        pairs = pairs.drop_duplicates(["candidate_id", "anchor_id"], keep="last")
        store.write(PAIR_DELTAS_TABLE, pairs.assign(shard=shard), shard)
    OneShotScoresSchema.validate(scores)
    return scores, totals


@dg.asset(
    group_name="scoring",
    partitions_def=candidate_shards,
    code_version="one-shot-v1",
    pool="model",
    op_tags=MODEL_POD_TAGS,
    # One run (pod) per shard of a backfill; the definitions apply NUGGETS_SHARDS_PER_RUN (execution.backfill_policy).
    backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=1),
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


# The paper kept 7,525 of 52,002 Alpaca examples (golden score > 0.8): a 14.47% share. The default selects that
# share, so a pipeline run with no edits always has something to train on (a small scoring model such as SmolLM2
# rarely scores a candidate above 0.8; see README, "Stale scores" and "Selection defaults").
PAPER_GOLDEN_SHARE = round(7_525 / 52_002, 4)


class GoldenSelectionConfig(dg.Config):
    threshold: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="keep golden_score > threshold; the paper's rule is 0.8 (set this one field, leave the others "
        "empty)",
    )
    top_k: int | None = Field(default=None, gt=0, description="keep the k best")
    top_fraction: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description=f"keep this fraction of the best; when no criterion is set, {PAPER_GOLDEN_SHARE} (the paper's "
        "golden share, 7,525 of 52,002)",
    )
    allow_partial: bool = Field(
        default=False,
        description="select from the shards whose scores are current even when others are stale or missing "
        "(said in the metadata); by default the selection refuses",
    )

    @model_validator(mode="after")
    def _one_criterion(self) -> "GoldenSelectionConfig":
        chosen = [
            name
            for name, value in (
                ("threshold", self.threshold),
                ("top_k", self.top_k),
                ("top_fraction", self.top_fraction),
            )
            if value is not None
        ]
        if len(chosen) > 1:
            raise ValueError(
                f"golden_subset: {' and '.join(chosen)} are both set; they select differently, so set exactly one "
                "(or none for the default, the paper's golden share as top_fraction)"
            )
        return self

    def criterion(self) -> dict[str, float | int]:
        if self.top_k is not None:
            return {"top_k": self.top_k}
        if self.threshold is not None:
            return {"threshold": self.threshold}
        return {"top_fraction": self.top_fraction if self.top_fraction is not None else PAPER_GOLDEN_SHARE}


def current_provenance(zero_shot_losses: pd.DataFrame, anchor_set: pd.DataFrame) -> tuple[str, str]:
    """The scoring fingerprint and anchor-set hash every score (and every subset) must carry to be current."""
    anchors = anchor_set_hash(anchor_set)
    zero_shot_anchors = set(zero_shot_losses["anchor_set_hash"])
    if zero_shot_anchors != {anchors}:
        raise dg.Failure(
            f"zero_shot_losses was computed against anchor set {', '.join(sorted(zero_shot_anchors))}, the current "
            f"anchor_set is {anchors}: materialise zero_shot_losses, then re-score one_shot_scores",
            metadata={"anchor_set_hash": anchors},
        )
    fingerprints = sorted(set(zero_shot_losses["model_fingerprint"]))
    if len(fingerprints) != 1:
        raise dg.Failure(f"zero_shot_losses mixes scoring fingerprints {fingerprints}: materialise it again")
    return fingerprints[0], anchors


@dg.asset(
    group_name="scoring",
    # Increments are read from the warehouse (their candidates join the pool); the dep draws that lineage.
    deps=[one_shot_scores, dg.AssetDep(INCREMENTS_TABLE)],
    dagster_type=GoldenSubsetType,
    code_version="golden-v2",
    # Rebuilt at NUGGETS_SELECTION_CRON after new scores: the definitions apply automation.selection_condition.
    description="The candidates whose one-shot prefix helps the most anchors; also exported as Alpaca JSON. "
    "Refuses scores that do not match the current model, template, separator and anchor set.",
)
def golden_subset(
    context: dg.AssetExecutionContext,
    config: GoldenSelectionConfig,
    candidates: pd.DataFrame,
    anchor_set: pd.DataFrame,
    zero_shot_losses: pd.DataFrame,
    warehouse: WarehouseResource,
) -> dg.Output[pd.DataFrame]:
    store = warehouse.warehouse()
    pool = with_increments(candidates, store, CandidatesSchema)
    fingerprint, anchors = current_provenance(zero_shot_losses, anchor_set)
    cover = coverage(store, pool, fingerprint, anchors, OneShotScoresSchema)
    partial = not cover.complete
    if partial and not config.allow_partial:
        # Refuse before anything is stored: a subset from stale scores must never reach training.
        raise dg.Failure(
            f"golden_subset refuses to select: {len(cover.to_rescore)} of {len(cover.shards)} shards have no "
            f"complete scores for the current scoring fingerprint {fingerprint} and anchor set {anchors} "
            f"({cover.summary()}). Fix: {cover.backfill_hint()}. Or set allow_partial: true to select from the "
            f"current rows only.",
            metadata={**cover.metadata(), "backfill_partitions": ", ".join(cover.to_rescore)},
        )
    current = current_scores(store, pool, fingerprint, anchors, OneShotScoresSchema)
    if current.empty:
        raise dg.Failure(
            "no current one_shot_scores: score the candidate shards first "
            f"({cover.backfill_hint() if cover.to_rescore else 'one_shot_scores has no partition'})",
            metadata=cover.metadata(),
        )
    if partial:
        context.log.warning(f"allow_partial: selecting from {len(current)} current rows only ({cover.summary()})")
    decided = current["decision_threshold"].dropna().unique() if "decision_threshold" in current else []
    criterion = config.criterion()
    if len(decided) and criterion != {"threshold": float(decided[0])}:
        raise dg.Failure(
            f"scores were settled early in decision mode at threshold {decided[0]}: select with that threshold, "
            "or re-score exactly (scoring.decision_threshold = null)"
        )
    thresholds = threshold_table(store, current)
    chosen = select_golden(current, **criterion)
    if chosen.empty:
        raise dg.Failure(
            f"the selection {json.dumps(criterion)} keeps none of the {len(current)} scored candidates, which would "
            "leave nothing to train on. Subset size per threshold:\n\n"
            f"{thresholds.to_markdown(index=False, floatfmt=('.2f', '.0f', '.4f', '.0f'))}\n\n"
            f"Choose a lower threshold, or top_fraction (the default, {PAPER_GOLDEN_SHARE}) or top_k.",
            metadata={"threshold_table": md.table(thresholds), "candidates_scored": len(current)},
        )
    subset = pool.merge(chosen[["candidate_id", "golden_score"]], left_on="id", right_on="candidate_id")
    subset = subset.sort_values("golden_score", ascending=False, na_position="last")
    subset = subset[["id", "instruction", "input", "output", "golden_score"]].reset_index(drop=True)
    subset["scores_fingerprint"] = fingerprint
    subset["anchor_set_hash"] = anchors
    GoldenSubsetSchema.validate(subset)
    export = warehouse.root() / "exports" / "golden_subset.json"
    export.parent.mkdir(parents=True, exist_ok=True)
    staging = export.with_suffix(".json.tmp")
    staging.write_text(
        json.dumps(subset[["instruction", "input", "output"]].to_dict(orient="records"), indent=1, ensure_ascii=False)
    )
    shutil.move(staging, export)
    ranked = current.merge(pool[["id", "instruction", "output"]], left_on="candidate_id", right_on="id")
    ranked = ranked.sort_values("golden_score", ascending=False)
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
            "selected_fraction": len(subset) / len(current),
            "coverage_complete": cover.complete,
            "partial": partial,
            "partial_note": (
                f"allow_partial: selected from current rows only; not used: {cover.summary()}" if partial else "no"
            ),
            **cover.metadata(),
            "golden_score_histogram": md.histogram_md(
                current["golden_score"], bins=[i / 10 for i in range(11)], label="golden score"
            ),
            "golden_score_plot": plot,
            "threshold_table": md.table(thresholds),
            "top_examples": md.preview(ranked, ["golden_score", "instruction", "output"], rows=5),
            "bottom_examples": md.preview(ranked.iloc[::-1], ["golden_score", "instruction", "output"], rows=5),
            "export": dg.MetadataValue.path(str(export)),
        },
    )
