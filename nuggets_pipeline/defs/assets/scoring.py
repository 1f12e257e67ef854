"""Stage 3: zero-shot anchor log-probs, partitioned one-shot golden scores, and the golden subset."""

import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import dagster as dg
import pandas as pd
import pandera.pandas as pa
from pydantic import Field, model_validator

from nuggets_pipeline.core.adaptive_scoring import (
    SCREENING_COLUMNS,
    SCREENING_TABLE,
    ScreeningIncompleteError,
    ShardInputs,
    refine_shard,
    screen_shard,
)
from nuggets_pipeline.core.cost import SelectionCost, estimated, measured
from nuggets_pipeline.core.incoming import INCREMENTS_TABLE, shard_candidates
from nuggets_pipeline.core.modeling import LoadedModel
from nuggets_pipeline.core.reliability import SelectionRule, pair_matrix, readout
from nuggets_pipeline.core.score_tables import current_pair_deltas, threshold_table
from nuggets_pipeline.core.scoring import score_zero_shot
from nuggets_pipeline.core.selection import PAPER_GOLDEN_SHARE, select_golden
from nuggets_pipeline.core.shard_scoring import StaleZeroShotError, score_shard_resumable
from nuggets_pipeline.core.storage import Warehouse
from nuggets_pipeline.core.versions import (
    StaleVersionError,
    anchor_set_hash,
    current_coverage,
    current_pool,
    current_scores,
    current_version,
)
from nuggets_pipeline.defs import metadata as md
from nuggets_pipeline.defs.execution import model_step
from nuggets_pipeline.defs.partitions import candidate_shards
from nuggets_pipeline.defs.resources import ModelResource, ScoringResource, WarehouseResource
from nuggets_pipeline.defs.schemas import (
    CandidatesSchema,
    GoldenSubsetSchema,
    GoldenSubsetType,
    OneShotScoresSchema,
    ZeroShotSchema,
)


def column_schema(schema: type[pa.DataFrameModel]) -> dg.TableSchema:
    return dg.TableSchema(
        columns=[dg.TableColumn(name, str(column.dtype)) for name, column in schema.to_schema().columns.items()]
    )


@model_step(
    group_name="scoring",
    code_version="zero-shot-v1",
)
def zero_shot_losses(
    context: dg.AssetExecutionContext,
    anchor_set: pd.DataFrame,
    scoring_model: ModelResource,
    scoring: ScoringResource,
) -> dg.Output[pd.DataFrame]:
    """log p(anchor response | BOS + anchor prompt) for every anchor: the baseline of each comparison."""
    loaded = scoring_model.load()
    started = time.perf_counter()
    frame = score_zero_shot(loaded, anchor_set, scoring.core_config(scoring_model.template))
    seconds = time.perf_counter() - started
    frame["model_fingerprint"] = scoring.fingerprint(loaded.fingerprint, scoring_model.template)
    frame["anchor_set_hash"] = anchor_set_hash(anchor_set)
    ZeroShotSchema.validate(frame)
    tokens = int(frame["response_tokens"].sum() + frame["prompt_tokens"].sum())
    context.log.info(f"zero-shot scored {len(frame)} anchors in {seconds:.1f}s")
    return md.table_output(
        frame,
        {
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


def shard_or_fail(candidates: pd.DataFrame, shard: str, store) -> pd.DataFrame:  # type: ignore[no-untyped-def]
    """Base shards come from `candidates`; a shard of an incoming batch from that batch's stored increment."""
    in_shard = shard_candidates(candidates, shard, store)
    if in_shard.empty:
        raise dg.Failure(
            f"shard {shard} has no candidates: re-materialise `candidates` (or its incoming batch) "
            "or delete the partition"
        )
    return in_shard


def shard_row(
    shard: str,
    scores: pd.DataFrame,
    wall: float,
    anchor_passes: int,
    passes_saved: float,
    tokens_per_s: float,
    **mode_figures: Any,
) -> dict[str, Any]:
    """One shard's row of the `shards` table in one_shot_scores' metadata; ``mode_figures`` are what only one
    scoring mode knows (adaptive: its rounds and the candidates settled early)."""
    return {
        "shard": shard,
        "candidates": len(scores),
        "anchor_passes": anchor_passes,
        "passes_saved": passes_saved,
        **mode_figures,
        "tokens_per_s": tokens_per_s,
        "candidates_per_s": len(scores) / wall if wall else 0.0,
        "wall_s": wall,
    }


def shard_outputs(outputs: dict[str, pd.DataFrame], metadata: dict[str, Any]) -> dg.Output:
    """A run of one partition outputs its frame; a range run (several shards in one step) the frames by shard."""
    if len(outputs) == 1:
        return dg.Output(next(iter(outputs.values())), metadata=metadata)
    return dg.Output(outputs, metadata=metadata)


@dataclass(frozen=True)
class ShardStep:
    """What a shard-scoring step (one_shot_screening, one_shot_scores) works with: its context, its inputs, its two
    scoring resources and the warehouse its checkpoints go to."""

    context: dg.AssetExecutionContext
    candidates: pd.DataFrame
    anchor_set: pd.DataFrame
    zero_shot_losses: pd.DataFrame
    scoring_model: ModelResource
    scoring: ScoringResource
    store: Warehouse

    def shards(self) -> Iterator[tuple[str, pd.DataFrame]]:
        """Each shard of the step's partitions with its candidates, or a Failure for a shard that has none."""
        for shard in self.context.partition_keys:
            yield shard, shard_or_fail(self.candidates, shard, self.store)

    def inputs(self, loaded: LoadedModel, in_shard: pd.DataFrame) -> ShardInputs:
        return ShardInputs(
            loaded,
            self.anchor_set,
            self.zero_shot_losses,
            in_shard,
            self.scoring.core_config(self.scoring_model.template),
        )

    def keywords(self, shard: str, loaded: LoadedModel) -> dict[str, Any]:
        """The keywords every core shard scorer takes (screen_shard, refine_shard, score_shard_resumable): the shard,
        the scoring fingerprint its rows are stamped with, the warehouse its checkpoints go to, and the step's log."""
        return {
            "shard": shard,
            "fingerprint": self.scoring.fingerprint(loaded.fingerprint, self.scoring_model.template),
            "warehouse": self.store,
            "log": self.context.log.info,
            "warn": self.context.log.warning,
        }


def shard_scoring_step(
    code_version: str, deps: Sequence[dg.AssetDep] = ()
) -> Callable[[Callable[[ShardStep], dg.Output]], dg.AssetsDefinition]:
    """The asset of a shard-scoring step, named and described, as ``dg.asset`` does, by the decorated function and
    its docstring: partitioned by candidate shard, in the model pool, one run (pod) per shard of a backfill (the
    definitions apply NUGGETS_SHARDS_PER_RUN, execution.backfill_policy). The function gets the step's
    ``ShardStep``, so each step states only how it scores a shard."""

    def decorate(run: Callable[[ShardStep], dg.Output]) -> dg.AssetsDefinition:
        if not run.__doc__:
            raise TypeError(f"{run.__name__}: a shard-scoring step's docstring is its asset's description")

        @model_step(
            name=run.__name__,
            description=run.__doc__,
            group_name="scoring",
            partitions_def=candidate_shards,
            deps=list(deps),
            code_version=code_version,
            backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=1),
        )
        def step(
            context: dg.AssetExecutionContext,
            candidates: pd.DataFrame,
            anchor_set: pd.DataFrame,
            zero_shot_losses: pd.DataFrame,
            scoring_model: ModelResource,
            scoring: ScoringResource,
            warehouse: WarehouseResource,
        ) -> dg.Output:
            store = warehouse.warehouse()
            return run(ShardStep(context, candidates, anchor_set, zero_shot_losses, scoring_model, scoring, store))

        return step

    return decorate


@shard_scoring_step(code_version="screening-v1")
def one_shot_screening(step: ShardStep) -> dg.Output:
    """Adaptive mode's first pass: every candidate of a shard scored on the first anchors of one seeded order.
    one_shot_scores refines against every shard's screening, so all shards are screened first. Nothing to do in exact
    or decision mode."""
    scoring = step.scoring
    outputs: dict[str, pd.DataFrame] = {}
    if scoring.effective_mode != "adaptive":
        step.context.log.info(f"scoring mode {scoring.effective_mode}: nothing to screen")
        empty = pd.DataFrame({c: pd.Series(dtype="object") for c in SCREENING_COLUMNS})
        outputs = {shard: empty for shard in step.context.partition_keys}
    else:
        loaded = step.scoring_model.load()
        adaptive = scoring.adaptive_config()
        for shard, in_shard in step.shards():
            try:
                outputs[shard] = screen_shard(step.inputs(loaded, in_shard), adaptive, **step.keywords(shard, loaded))
            except StaleZeroShotError as error:
                raise dg.Failure(str(error)) from None
    frames = pd.concat(outputs.values(), ignore_index=True)
    metadata = {
        "dagster/row_count": len(frames),
        "mode": scoring.effective_mode,
        "first_anchors": scoring.adaptive_first_anchors,
        "anchor_passes": int(frames["anchors_scored"].sum()) if len(frames) else 0,
    }
    return shard_outputs(outputs, metadata)


def pool_screening(store, pool: pd.DataFrame) -> pd.DataFrame:  # type: ignore[no-untyped-def]
    """Every pool shard's screening rows, or a Failure naming the shards to screen first."""
    shards = sorted(pool["shard"].unique())
    screening = store.read(SCREENING_TABLE, partitions=shards, allow_missing=True)
    have = set(screening["shard"]) if len(screening) else set()
    missing = [s for s in shards if s not in have]
    if missing:
        raise dg.Failure(
            f"adaptive scoring refines against the whole pool's screening, and {len(missing)} of {len(shards)} "
            f"shards have none: materialise one_shot_screening for {', '.join(missing)} first (a backfill of "
            "one_shot_screening and one_shot_scores together runs them in that order)",
            metadata={"shards_to_screen": ", ".join(missing)},
        )
    return screening


# Adaptive mode reads every shard's screening (the cut is the pool's); exact and decision modes ignore it.
@shard_scoring_step(
    code_version="one-shot-v1", deps=[dg.AssetDep(one_shot_screening, partition_mapping=dg.AllPartitionMapping())]
)
def one_shot_scores(step: ShardStep) -> dg.Output:
    """Golden score of every candidate in a shard: the fraction of anchors its one-shot prefix helps."""
    scoring, scoring_model = step.scoring, step.scoring_model
    outputs: dict[str, pd.DataFrame] = {}
    rows = []
    adaptive = scoring.effective_mode == "adaptive"
    screening = (
        pool_screening(step.store, current_pool(step.candidates, step.store, CandidatesSchema)) if adaptive else None
    )
    for shard, in_shard in step.shards():
        started = time.perf_counter()
        loaded = scoring_model.load()  # once per process (shared); the first shard's wall time includes it
        inputs, keywords = step.inputs(loaded, in_shard), step.keywords(shard, loaded)
        if adaptive:
            try:
                refined = refine_shard(
                    inputs, scoring.adaptive_config(), scoring.adaptive_rule(), screening, **keywords
                )
            except (StaleZeroShotError, ScreeningIncompleteError) as error:
                raise dg.Failure(str(error)) from None
            wall = time.perf_counter() - started
            scores = refined.scores
            row = shard_row(
                shard,
                scores,
                wall,
                refined.anchor_passes,
                1 - refined.passes_fraction,
                refined.tokens_per_s,
                rounds=refined.rounds,
                settled_early=int(scores["settled_early"].sum()),
            )
        else:
            try:
                # Checkpoints, resume, deduplication and the pair-delta write: the core's crash-safe shard scoring.
                result = score_shard_resumable(
                    inputs.loaded, inputs.anchor_set, inputs.zero_shot, inputs.candidates, inputs.config, **keywords
                )
            except StaleZeroShotError as error:
                raise dg.Failure(
                    str(error),
                    metadata={
                        "expected_fingerprint": error.fingerprint,
                        "expected_anchor_set_hash": error.anchors_hash,
                    },
                ) from None
            wall = time.perf_counter() - started
            scores = result.scores
            row = shard_row(shard, scores, wall, result.anchor_passes, result.passes_saved, result.tokens_per_s)
        OneShotScoresSchema.validate(scores)
        outputs[shard] = scores
        rows.append(row)
    summary = pd.DataFrame(rows)
    all_scores = pd.concat(outputs.values(), ignore_index=True)
    metadata = {
        "dagster/row_count": len(all_scores),
        "dagster/column_schema": column_schema(OneShotScoresSchema),
        "mode": scoring.effective_mode,
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
        "passes_fraction": float(all_scores["anchors_scored"].sum() / all_scores["n_anchors"].sum()),
    }
    return shard_outputs(outputs, metadata)


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
        if self.threshold is not None and self.threshold >= 1:
            raise ValueError(
                f"golden_subset: threshold {self.threshold} can never select anything (a golden score is at most 1 "
                "and must be above the threshold); use a threshold below 1, or top_k / top_fraction"
            )
        return self

    def criterion(self) -> dict[str, float | int]:
        if self.top_k is not None:
            return {"top_k": self.top_k}
        if self.threshold is not None:
            return {"threshold": self.threshold}
        return {"top_fraction": self.top_fraction if self.top_fraction is not None else PAPER_GOLDEN_SHARE}


def selection_cost(instance: dg.DagsterInstance, current: pd.DataFrame) -> SelectionCost:
    """STR: measured where the current shards' scoring runs and a `full` fine-tune both recorded their wall time,
    else the FLOP estimate (core.cost), per epoch, the same model scoring and training."""
    scored_tokens = int(current["anchor_tokens_scored"].sum() + current["prefix_tokens"].sum())
    pool_tokens = int((current["prefix_tokens"] - 1).sum())  # each demonstration is its example in full, sans BOS
    fallback = estimated(scored_tokens, pool_tokens)
    shards = sorted(current["shard"].unique())
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=one_shot_scores.key, asset_partitions=shards), limit=10 * len(shards) + 10
    ).records
    latest: dict[str, tuple[str, float]] = {}
    for record in records:  # newest first: keep each shard's latest run; a range run covers several shards once
        event = record.asset_materialization
        if event is not None and event.partition in shards and event.partition not in latest:
            wall = event.metadata.get("wall_s")
            latest[event.partition] = (record.run_id, float(wall.value) if wall is not None else float("nan"))
    tuned = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("finetuned_model"), asset_partitions=["full"]), limit=1
    ).records
    if len(latest) < len(shards) or not tuned or tuned[0].asset_materialization is None:
        return fallback
    scoring_s = sum(dict(latest.values()).values())
    tuning = tuned[0].asset_materialization.metadata.get("wall_s")
    if tuning is None or not scoring_s > 0:
        return fallback
    return measured(scoring_s, float(tuning.value))


@dg.asset(
    group_name="scoring",
    # Increments are read from the warehouse (their candidates join the pool); the dep draws that lineage.
    deps=[one_shot_scores, dg.AssetDep(INCREMENTS_TABLE)],
    dagster_type=GoldenSubsetType,
    code_version="golden-v2",
    # Rebuilt at NUGGETS_SELECTION_CRON after new scores: the definitions apply automation.selection_condition.
)
def golden_subset(
    context: dg.AssetExecutionContext,
    config: GoldenSelectionConfig,
    candidates: pd.DataFrame,
    anchor_set: pd.DataFrame,
    zero_shot_losses: pd.DataFrame,
    warehouse: WarehouseResource,
) -> dg.Output[pd.DataFrame]:
    """The candidates whose one-shot prefix helps the most anchors (exported as Alpaca JSON, with the ranked pool, by
    scored_pool_exports). Refuses scores that do not match the current model, template, separator and anchor set."""
    store = warehouse.warehouse()
    pool = current_pool(candidates, store, CandidatesSchema)
    with md.failure_on(StaleVersionError):
        version = current_version(zero_shot_losses, anchor_set)
    cover = current_coverage(store, pool, version, OneShotScoresSchema)
    partial = not cover.complete
    if partial and not config.allow_partial:
        # Refuse before anything is stored: a subset from stale scores must never reach training.
        raise dg.Failure(
            f"golden_subset refuses to select: {len(cover.to_rescore)} of {len(cover.shards)} shards have no "
            f"complete scores for the current {version} ({cover.summary()}). Fix: {cover.backfill_hint()}. "
            "Or set allow_partial: true to select from the current rows only.",
            metadata={**cover.metadata(), "backfill_partitions": ", ".join(cover.to_rescore)},
        )
    current = current_scores(store, pool, version, OneShotScoresSchema)
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
    refined = current["adaptive_rule"].dropna().unique() if "adaptive_rule" in current else []
    if len(refined) and set(refined) != {json.dumps(criterion, sort_keys=True)}:
        raise dg.Failure(
            f"scores were refined adaptively for {', '.join(refined)}, and candidates settled early are only known "
            f"to lie on their side of that cut: select with it, or re-run one_shot_scores with the scoring "
            f"resource's adaptive_* criterion set to {json.dumps(criterion)}"
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
    subset = version.stamp(subset[["id", "instruction", "input", "output", "golden_score"]].reset_index(drop=True))
    GoldenSubsetSchema.validate(subset)
    # No export here: scored_pool_exports writes the subset's Alpaca JSON with the rest of the selection's files,
    # all replaced together. A second copy written here was rewritten even when that export then failed.
    # How much of this ranking is signal, from the pair deltas already stored (no forward pass).
    pairs, left_out = current_pair_deltas(store, current)
    trust = readout(pair_matrix(pairs, anchor_set["id"]), SelectionRule.from_criterion(criterion))
    if left_out:
        context.log.warning(
            f"reliability: {left_out} candidates left out: no stored pair deltas (a scored pool imported without "
            "them, or keep_pair_deltas off), or deltas that do not add up to their current score"
        )
    context.log.info(f"ranking reliability: {trust.line}")
    cost = selection_cost(context.instance, current)
    context.log.info(cost.line())
    figures = trust.as_metadata()
    ranked = current.merge(pool[["id", "instruction", "output"]], left_on="candidate_id", right_on="id")
    ranked = ranked.sort_values("golden_score", ascending=False)
    plot = md.histogram_plot(
        current["golden_score"],
        store.plot_path("golden_scores"),
        "Golden scores",
        "fraction of anchors helped",
        bins=20,
    )
    return md.table_output(
        subset,
        {
            "criterion": json.dumps(criterion),
            "candidates_scored": len(current),
            # What scoring cost against exact scoring (every candidate on every anchor): decision and adaptive save.
            "anchor_passes": int(current["anchors_scored"].sum()),
            "anchor_passes_exact": int(current["n_anchors"].sum()),
            "passes_fraction": float(current["anchors_scored"].sum() / current["n_anchors"].sum()),
            "settled_early": int((current["anchors_scored"] < current["n_anchors"]).sum()),
            "selection_to_tuning_ratio": cost.ratio,
            "selection_to_tuning": cost.line(),
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
            # The plain-language line, and the figures (read back by the reliability check and the report).
            "reliability": trust.line,
            "reliability_figures": dg.MetadataValue.json(figures),
            "split_half_reliability": figures["reliability"] if figures["reliability"] is not None else float("nan"),
            "anchors_for_reliability_0_8": figures["anchors_for_reliability_0_8"] or dg.MetadataValue.null(),
            "uninformative_anchors": figures["uninformative_anchors"],
            "reliability_left_out": left_out,
            "top_examples": md.preview(ranked, ["golden_score", "instruction", "output"], rows=5),
            "bottom_examples": md.preview(ranked.iloc[::-1], ["golden_score", "instruction", "output"], rows=5),
        },
    )
