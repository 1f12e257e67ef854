"""`make study` (`python -m nuggets_pipeline.cli study`): does the golden subset train a better model?

The study runs the project's own Dagster assets (the same graph as `make demo`, through `dg.materialize` on the
instance `make ui` shows) with settings fixed up front in ``SIZES``: a stable slice of the shipped Alpaca set as
pool, KMeans anchors, candidates scored shard by shard (the partitioned path), the variants golden / bottom /
random / full (and a second random seed where time allows) fine-tuned with identical hyper-parameters from the
same base, the judge-free reference log-likelihood over every AlpacaEval and MT-Bench reference answer, the
judge numbers beside it, and the report with paired bootstrap comparisons (core.statistics).

Resumable: every unit of work (a stage, or one partition of it) is tagged with a key that hashes the settings
it reads and those of every stage before it. A unit whose assets' latest materialisations all carry its key is
skipped; anything else runs (and a killed scoring shard or training run resumes from its own checkpoints).
Change one setting and that stage and everything after it run again, never the stages before it; nothing is
tuned on the evaluation set, because no setting reads it.

Outputs (``--out``, docs/study for the real study): results.json (settings, machine, stage wall times,
per-variant figures, every comparison with its interval and verdict), comparisons.csv, differences.png and the
scored pool (scored_pool.parquet). ``--scored-pool FILE`` trains and evaluates from a committed scored pool
without re-scoring: its rows are placed as the scoring checkpoints of each shard, so `one_shot_scores` is still
materialised by the asset, finding every candidate already scored.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd

from nuggets_pipeline.core.paths import REPO_ROOT, nuggets_home
from nuggets_pipeline.core.settings import get_settings

STUDY_TAG = "nuggets/study_key"
SIZE_CHOICES = ("study", "tiny")


@dataclass(frozen=True)
class StudySettings:
    """Every setting of one study size, fixed before anything runs (printed and written to results.json)."""

    size: str
    model: str  # scoring, training and judge model (one base for every variant)
    pool: int  # candidates: a stable slice (first N by content id) of the shipped Alpaca set, anchors removed
    shards: int  # scoring partitions (one run each)
    anchors: int  # KMeans k
    kmeans_pool: int  # rows of the Alpaca set embedded for KMeans (seeded sample)
    embed_max_tokens: int
    anchor_seed: int
    top_fraction: float  # golden = top quarter by golden score; bottom = the lowest quarter, same size
    variants: tuple[str, ...]
    random_seed: int  # seed of `random`; `random-N` uses random_seed + N
    training_profile: str
    epochs: float
    learning_rate: float
    per_device_batch_size: int
    gradient_accumulation_steps: int
    max_length: int
    padding_free: bool  # examples end to end instead of padded: the same loss, ~1/3 less compute on Alpaca
    save_steps: int  # optimizer steps between resumable training checkpoints (no effect on the result)
    likelihood_alpaca_eval_items: int | None  # None: all 805 AlpacaEval reference answers
    likelihood_mt_bench_items: int | None  # None: every shipped MT-Bench reference answer
    mt_bench_questions: int
    alpaca_eval_instructions: int
    max_new_tokens: int
    calibration_pairs: int
    bootstrap_resamples: int
    bootstrap_seed: int

    def as_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


VARIANTS = ("golden", "bottom", "random", "random-1", "full")

SIZES: dict[str, StudySettings] = {
    # Sized in docs/study.md (and `estimate_seconds` below) from the 2-core throughputs in benchmarks/RESULTS.md.
    # 16 anchors: the floor; each anchor costs a forward pass per candidate, so 16 instead of the paper's
    # 100 buys 6x the candidates for the same scoring time, and a 600-candidate pool is the floor too.
    # Training: the project's cpu-demo profile (learning rate 5e-5, cosine, batch 4 x 2) with 2 epochs and 256
    # tokens (98% of the pool's examples fit), chosen before any evaluation ran.
    "study": StudySettings(
        size="study",
        model="smollm2-135m-instruct",
        pool=600,
        shards=6,
        anchors=16,
        kmeans_pool=800,
        embed_max_tokens=128,
        anchor_seed=0,
        top_fraction=0.25,
        # A second random seed (random-1, the noise floor of the training sample) does not fit the 3 hours on
        # 2 cores beside the four the issue requires: add it here to run it (~35 min more, nothing re-scored).
        variants=("golden", "bottom", "random", "full"),
        random_seed=0,
        training_profile="cpu-demo",
        epochs=2.0,
        learning_rate=5e-5,
        per_device_batch_size=4,
        gradient_accumulation_steps=2,
        max_length=256,
        padding_free=True,
        save_steps=20,
        likelihood_alpaca_eval_items=None,
        likelihood_mt_bench_items=None,
        mt_bench_questions=2,
        alpaca_eval_instructions=8,
        max_new_tokens=96,
        calibration_pairs=12,
        bootstrap_resamples=10_000,
        bootstrap_seed=0,
    ),
    # The same path at a size the tiny random model runs in a minute or two (the end-to-end test).
    "tiny": StudySettings(
        size="tiny",
        model="tiny-random-llama",
        pool=24,
        shards=2,
        anchors=4,
        kmeans_pool=40,
        embed_max_tokens=32,
        anchor_seed=0,
        top_fraction=0.25,
        variants=VARIANTS,
        random_seed=0,
        training_profile="cpu-demo",
        epochs=2.0,
        learning_rate=5e-5,
        per_device_batch_size=2,
        gradient_accumulation_steps=1,
        max_length=128,
        padding_free=True,
        save_steps=20,
        likelihood_alpaca_eval_items=8,
        likelihood_mt_bench_items=4,
        mt_bench_questions=1,
        alpaca_eval_instructions=2,
        max_new_tokens=8,
        calibration_pairs=4,
        bootstrap_resamples=1_000,
        bootstrap_seed=0,
    ),
}


# ---------------------------------------------------------------------------------------------------------------
# Sizing: the arithmetic of docs/study.md, from the measured throughputs (estimates until the run).

# Rates on the project's 2-core machine, float32, 2 threads, chosen from the demo and benchmark figures in
# benchmarks/RESULTS.md (re-measure there first, then update these):
THROUGHPUT = {
    "scoring_anchor_tokens_per_s": 300.0,  # one-shot engine: near the demo's best, below the quiet benchmark
    "training_tokens_per_s": 72.0,  # cpu-demo training: the demo's range
    "reference_tokens_per_s": 440.0,  # zero-shot engine on long answers: between the engine and the raw forward
    "embed_s_per_text_128": 0.147,  # KMeans embedding, texts of <= 128 tokens (demo)
    "judge_s_per_variant": 66.0,  # demo: 2 MT-Bench questions + 8 AlpacaEval instructions, 96 new tokens
}
# Token counts measured with SmolLM2's tokenizer on the shipped data (see docs/study.md):
TOKENS = {
    "alpaca_eval_references": 422_602,  # all 805 gpt4_1106_preview answers, Alpaca template
    "mt_bench_references": 8_699,  # the 30 GPT-4 reference answers (first turn)
    "pool_example": 110.0,  # mean tokens of a pool example in the Alpaca template (first 1,000 by id)
    "anchor": 70.0,  # mean anchor tokens (nuggets template); the demo's KMeans anchors measured 56, the pool 84
}


def estimate_seconds(settings: StudySettings) -> dict[str, float]:
    """Expected wall seconds per stage on 2 cores, from the measured throughputs above."""
    t, k = THROUGHPUT, TOKENS
    quarter = int(settings.pool * settings.top_fraction)
    trained = sum(settings.pool if v == "full" else quarter for v in settings.variants)
    references = (k["alpaca_eval_references"] if settings.likelihood_alpaca_eval_items is None else 0) + (
        k["mt_bench_references"] if settings.likelihood_mt_bench_items is None else 0
    )
    return {
        "ingest": 3.0,
        "anchors": 25.0 + settings.kmeans_pool * t["embed_s_per_text_128"] * settings.embed_max_tokens / 128,
        "zero-shot": 2.0,
        "one-shot": settings.pool * settings.anchors * k["anchor"] / t["scoring_anchor_tokens_per_s"],
        "select": 2.0,
        "train": trained * settings.epochs * k["pool_example"] / t["training_tokens_per_s"],
        "evaluate": len(settings.variants) * (references / t["reference_tokens_per_s"] + t["judge_s_per_variant"]),
        "report": 20.0,
    }


# ---------------------------------------------------------------------------------------------------------------
# Stages: units of (selection, partition, config), each skipped when already materialised with the same key.


@dataclass
class Unit:
    selection: list[str]
    partition: str | None
    ops_config: dict[str, Any]
    key: str = ""


@dataclass
class StudyStage:
    name: str
    selection: list[str]
    ops_config: dict[str, Any]
    # The partitions to run, decided when the stage starts (the shards exist only once `candidates` ran).
    partitions: Callable[[], list[str | None]] = lambda: [None]
    # Extra identity of the stage's inputs (e.g. the hash of an imported scored pool).
    identity: dict[str, Any] = dataclasses.field(default_factory=dict)
    before: Callable[[], None] | None = None


def _hash(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def study_stages(settings: StudySettings, scored_pool: Path | None = None) -> list[StudyStage]:
    s = settings
    training = {
        "profile": s.training_profile,
        "epochs": s.epochs,
        "learning_rate": s.learning_rate,
        "per_device_batch_size": s.per_device_batch_size,
        "gradient_accumulation_steps": s.gradient_accumulation_steps,
        "max_length": s.max_length,
        "padding_free": s.padding_free,
        "save_steps": s.save_steps,
        "random_seed": s.random_seed,
    }
    likelihood: dict[str, int] = {}
    if s.likelihood_alpaca_eval_items is not None:
        likelihood["alpaca_eval_items"] = s.likelihood_alpaca_eval_items
    if s.likelihood_mt_bench_items is not None:
        likelihood["mt_bench_items"] = s.likelihood_mt_bench_items
    one_shot = StudyStage("one-shot", ["one_shot_scores"], {}, partitions=lambda: list(base_shards()))
    if scored_pool is not None:
        from nuggets_pipeline.core.incoming import file_digest

        one_shot.identity = {"scored_pool": file_digest(scored_pool)[:16]}
        one_shot.before = lambda: seed_scoring_checkpoints(scored_pool)
    return [
        StudyStage("ingest", ["instructions", "quarantined_instructions"], {}),
        StudyStage(
            "anchors",
            ["anchor_set", "candidates"],
            {
                "anchor_set": {
                    "config": {
                        "method": "kmeans",
                        "n": s.anchors,
                        "seed": s.anchor_seed,
                        "kmeans_pool_size": s.kmeans_pool,
                        "embed_max_tokens": s.embed_max_tokens,
                    }
                },
                "candidates": {"config": {"shards": s.shards, "limit": s.pool}},
            },
        ),
        StudyStage("zero-shot", ["zero_shot_losses"], {}),
        one_shot,
        StudyStage(
            "select",
            ["golden_subset"],
            {"golden_subset": {"config": {"threshold": None, "top_fraction": s.top_fraction}}},
        ),
        StudyStage(
            "train",
            ["finetuned_model"],
            {"finetuned_model": {"config": training}},
            partitions=lambda: list(s.variants),
        ),
        StudyStage(
            "evaluate",
            ["mt_bench_results", "alpaca_eval_results", "reference_likelihood"],
            {
                "mt_bench_results": {"config": {"questions": s.mt_bench_questions, "max_new_tokens": s.max_new_tokens}},
                "alpaca_eval_results": {
                    "config": {"instructions": s.alpaca_eval_instructions, "max_new_tokens": s.max_new_tokens}
                },
                "reference_likelihood": {"config": {"profile": "paper", **likelihood}},
            },
            partitions=lambda: list(s.variants),
        ),
        StudyStage(
            "report",
            ["judge_calibration", "evaluation_report"],
            {"judge_calibration": {"config": {"n": s.calibration_pairs}}},
            identity={"variants": list(s.variants)},
        ),
    ]


def base_shards() -> list[str]:
    """The shards of the study's pool, read from the materialised `candidates` table."""
    from nuggets_pipeline.core.storage import Warehouse

    candidates = Warehouse(nuggets_home() / "warehouse").read("candidates")
    return sorted(candidates["shard"].unique())


def latest_study_key(instance: dg.DagsterInstance, asset: str, partition: str | None) -> str | None:
    """The study key of the run that last materialised ``asset`` (that partition), or None."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition] if partition else None),
        limit=1,
    ).records
    if not records:
        return None
    run = instance.get_run_by_id(records[0].run_id)
    return run.tags.get(STUDY_TAG) if run else None


def is_done(instance: dg.DagsterInstance, unit: Unit) -> bool:
    return all(latest_study_key(instance, asset, unit.partition) == unit.key for asset in unit.selection)


def run_unit(unit: Unit, instance: dg.DagsterInstance, resources: dict[str, Any], size: str) -> None:
    from nuggets_pipeline.defs.definitions import defs

    dg.materialize(
        [*defs.assets, *defs.asset_checks],  # type: ignore[list-item]
        selection=unit.selection,
        instance=instance,
        resources=resources,
        run_config={"ops": unit.ops_config, "loggers": {"console": {"config": {"log_level": "INFO"}}}},
        partition_key=unit.partition,
        tags={"nuggets/launched_by": f"study-{size}", STUDY_TAG: unit.key},
    )


def study_resources(settings: StudySettings) -> dict[str, Any]:
    """The definitions' resources with the study's model pinned for scoring, training and judging; float32 on
    CPU unless NUGGETS_DEVICE says otherwise, so the same seeds give the same figures."""
    from nuggets_pipeline.defs.definitions import default_resources
    from nuggets_pipeline.defs.resources import JudgeResource, ModelResource

    environment = get_settings()
    resources = default_resources(environment)
    device = environment.device or "cpu"
    threads = environment.threads
    for name in ("scoring_model", "training_model"):
        resources[name] = ModelResource(model=settings.model, dtype="float32", device=device, threads=threads)
    resources["judge"] = JudgeResource(model=settings.model, device=device)
    return resources


# ---------------------------------------------------------------------------------------------------------------
# The scored pool: written after scoring, and re-imported (as scoring checkpoints) to skip scoring.

SCORED_POOL_COLUMNS = [
    "candidate_id",
    "shard",
    "golden_score",
    "wins",
    "anchors_scored",
    "n_anchors",
    "verdict",
    "mean_delta",
    "median_delta",
    "prefix_tokens",
    "truncated_pairs",
    "prefix_tokens_cut",
    "anchor_tokens_scored",
    "model_fingerprint",
    "anchor_set_hash",
]


def scored_pool_frame() -> pd.DataFrame:
    """The study pool's one_shot_scores rows (the study's shards only), sorted by candidate id."""
    from nuggets_pipeline.core.storage import Warehouse

    warehouse = Warehouse(nuggets_home() / "warehouse")
    scores = warehouse.read("one_shot_scores", partitions=base_shards())
    pool_ids = set(warehouse.read("candidates")["id"])
    scores = scores[scores["candidate_id"].isin(pool_ids)]
    return scores[SCORED_POOL_COLUMNS].sort_values("candidate_id").reset_index(drop=True)


def _first(ids: pd.Series, count: int = 5) -> str:
    unique = list(dict.fromkeys(ids.astype(str)))
    return ", ".join(unique[:count]) + (f" and {len(unique) - count} more" if len(unique) > count else "")


def read_scored_pool(path: Path) -> pd.DataFrame:
    """A scored pool file, refused (naming the file and the first offending ids) unless every candidate has one
    row with a real score: its rows become scoring checkpoints, which scoring then trusts without re-scoring.

    Exact repeats of a row are dropped (a concatenated file); the same candidate with two different scores is
    refused (a dict would keep the last, so a forged row would replace the real one and be selected). The study
    scores every candidate exactly (no decision threshold), so a golden score must be a number in [0, 1] equal to
    wins / n_anchors over all anchors: a NaN would be stored as scored."""
    try:
        pool = pd.read_parquet(path)
    except Exception as error:  # Arrow's errors (ArrowInvalid, OSError ...) name neither the file nor the cause
        raise ValueError(
            f"scored pool {path}: not a readable Parquet file ({type(error).__name__}: {str(error)[:200]}); "
            "copy it again (a truncated download?) or re-score (run without --scored-pool)"
        ) from None
    missing = [c for c in SCORED_POOL_COLUMNS if c not in pool.columns]
    if missing:
        raise ValueError(f"scored pool {path}: missing column(s) {missing}")
    pool = pool.drop_duplicates(SCORED_POOL_COLUMNS).reset_index(drop=True)
    repeated = pool.loc[pool["candidate_id"].duplicated(keep=False), "candidate_id"]
    if len(repeated):
        raise ValueError(
            f"scored pool {path}: {repeated.nunique()} candidate id(s) carry conflicting scores, first "
            f"{_first(repeated)}: refused (which row is real cannot be told); re-export the pool or re-score"
        )
    score = pd.to_numeric(pool["golden_score"], errors="coerce")
    expected = pool["wins"] / pool["n_anchors"].where(pool["n_anchors"] > 0)
    bad = (
        score.isna()
        | ~score.between(0.0, 1.0)
        | (pool["anchors_scored"] != pool["n_anchors"])
        | ((score - expected).abs() > 1e-9)
    )
    if bad.any():
        raise ValueError(
            f"scored pool {path}: {int(bad.sum())} row(s) have no valid golden score (NaN, outside [0, 1], not "
            f"wins / n_anchors, or not every anchor scored), first {_first(pool.loc[bad, 'candidate_id'])}: "
            "refused, they would be stored as scored; re-export the pool or re-score"
        )
    return pool


def seed_scoring_checkpoints(path: Path) -> None:
    """Place a committed scored pool as each shard's scoring checkpoint, after checking it was scored with this
    model, template and anchor set against this very pool."""
    from nuggets_pipeline.core.scoring import SCORE_COLUMNS
    from nuggets_pipeline.core.shard_scoring import checkpoint_folder, chunk_path
    from nuggets_pipeline.core.storage import Warehouse, write_parquet_atomic

    pool = read_scored_pool(path)
    warehouse = Warehouse(nuggets_home() / "warehouse")
    zero_shot = warehouse.read("zero_shot_losses")
    expected = (str(zero_shot["model_fingerprint"].iloc[0]), str(zero_shot["anchor_set_hash"].iloc[0]))
    found = set(zip(pool["model_fingerprint"].astype(str), pool["anchor_set_hash"].astype(str), strict=True))
    if found != {expected}:
        raise ValueError(
            f"scored pool {path} was scored with (model fingerprint, anchor set) {sorted(found)}, but this home's "
            f"zero_shot_losses are {expected}: re-score instead (run without --scored-pool)"
        )
    candidates = warehouse.read("candidates")
    wanted = dict(zip(candidates["id"], candidates["shard"], strict=True))
    have = dict(zip(pool["candidate_id"], pool["shard"], strict=True))
    if have != wanted:
        raise ValueError(
            f"scored pool {path} covers {len(have)} candidates, this home's pool has {len(wanted)} "
            f"({len(set(have) ^ set(wanted))} differ, or their shards do): same study settings are required"
        )
    for shard, rows in pool.groupby("shard"):
        # One chunk of scores per shard (no deltas): scoring resumes from it and has nothing left to score.
        folder = checkpoint_folder(warehouse, str(shard), *expected)
        write_parquet_atomic(rows[SCORE_COLUMNS].reset_index(drop=True), chunk_path(folder, "scores", 0))


# ---------------------------------------------------------------------------------------------------------------
# Results


def machine() -> dict[str, Any]:
    import torch

    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }


def variant_figures(instance: dg.DagsterInstance, variants: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Training figures per variant from its latest finetuned_model materialisation."""
    out: dict[str, dict[str, Any]] = {}
    for variant in variants:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("finetuned_model"), asset_partitions=[variant]), limit=1
        ).records
        if not records:
            continue
        metadata = records[0].asset_materialization.metadata  # type: ignore[union-attr]
        out[variant] = {
            k: metadata[k].value
            for k in (
                "examples",
                "subset_hash",
                "steps",
                "examples_seen",
                "train_tokens",
                "final_loss",
                "wall_s",
                "tokens_per_s",
            )
            if k in metadata
        }
    return out


def length_check(pool: pd.DataFrame, quarter: int) -> dict[str, Any]:
    """How golden score goes with response length over the scored pool: a reference-likelihood gain could come from
    training on longer answers rather than better ones, so the report shows the length of what each quarter holds."""
    from nuggets_pipeline.core.storage import Warehouse

    texts = Warehouse(nuggets_home() / "warehouse").read("candidates").set_index("id")["output"]
    chars = pool["candidate_id"].map(texts.str.len()).astype(float)
    ranked = pool.assign(chars=chars).sort_values(["golden_score", "mean_delta"], ascending=False)
    return {
        "spearman_golden_score_vs_response_chars": float(ranked["golden_score"].corr(ranked["chars"], "spearman")),
        "response_chars_mean": {
            "pool": float(ranked["chars"].mean()),
            "golden quarter": float(ranked["chars"].head(quarter).mean()),
            "bottom quarter": float(ranked["chars"].tail(quarter).mean()),
        },
    }


def headline(comparisons: Sequence[dict[str, Any]], model: str) -> str:
    """One sentence: golden against the (pooled) random controls on the AlpacaEval reference likelihood."""
    candidates = [c for c in comparisons if c["source"] == "alpaca_eval" and c["first"] == "golden"]
    pooled = [c for c in candidates if str(c["second"]).startswith("random (pooled")]
    single = [c for c in candidates if c["second"] == "random"]
    chosen = (pooled or single or [None])[0]
    if chosen is None:
        return "No golden-vs-random comparison was measured."
    words = {
        "ahead": "scores GPT-4's AlpacaEval reference answers higher than",
        "behind": "scores GPT-4's AlpacaEval reference answers lower than",
        "within noise": "cannot be told apart from",
    }[chosen["verdict"]]
    spread = chosen.get("seed_spread")
    caveat = ""
    if spread is not None and chosen["verdict"] != "within noise":
        caveat = (
            f"; larger than the {spread:.4f} between two random seeds"
            if chosen["beyond_seed_spread"]
            else f", but no larger than the {spread:.4f} between two random seeds, so not clearly the selection's doing"
        )
    return (
        f"Fine-tuned on the golden quarter, {model} {words} the same model fine-tuned on {chosen['second']}: "
        f"{chosen['difference']:+.4f} nats/token, 95% interval [{chosen['ci_low']:+.4f}, {chosen['ci_high']:+.4f}] "
        f"over {chosen['n']} reference answers{caveat}."
    )


def difference_plot(comparisons: pd.DataFrame, path: Path) -> None:
    """Each comparison's paired difference with its interval, one panel per likelihood source."""
    from nuggets_pipeline.defs import metadata as md

    plt = md.pyplot()
    sources = sorted(comparisons["source"].unique())
    figure, axes = plt.subplots(1, len(sources), figsize=(6 * len(sources), 0.5 * len(comparisons) + 2), squeeze=False)
    colours = {"ahead": "#2e7d32", "behind": "#c62828", "within noise": "#757575"}
    for axis, source in zip(axes[0], sources, strict=True):
        rows = comparisons[comparisons["source"] == source].iloc[::-1]
        y = range(len(rows))
        for i, row in zip(y, rows.itertuples(), strict=True):
            axis.errorbar(
                row.difference,
                i,
                xerr=[[row.difference - row.ci_low], [row.ci_high - row.difference]],
                fmt="o",
                color=colours[row.verdict],
                capsize=4,
            )
        axis.axvline(0, color="black", linewidth=0.8)
        axis.set_yticks(list(y), [f"{r.first} − {r.second}" for r in rows.itertuples()], fontsize=8)
        axis.set_xlabel("paired difference (nats/token), 95% interval")
        axis.set_title(f"{source} ({int(rows['n'].iloc[0])} answers)")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def collect_results(
    settings: StudySettings,
    instance: dg.DagsterInstance,
    timings: dict[str, dict[str, Any]],
    out: Path,
    command: str,
    scored_pool: Path | None,
) -> dict[str, Any]:
    """results.json, comparisons.csv, differences.png and scored_pool.parquet under ``out``."""
    report = json.loads((nuggets_home() / "exports" / "evaluation_report.json").read_text())
    # The report asset uses the default resamples; the study re-derives them with its own fixed settings from the
    # same per-answer scores, so its intervals are reproducible to the stated precision.
    comparisons = study_comparisons(settings, report)
    out.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(comparisons)
    frame.to_csv(out / "comparisons.csv", index=False, float_format="%.6f")
    difference_plot(frame, out / "differences.png")
    pool = scored_pool_frame()
    if scored_pool is None:
        pool.to_parquet(out / "scored_pool.parquet", index=False)
    golden = pool.sort_values("golden_score", ascending=False)
    quarter = int(len(pool) * settings.top_fraction)
    results = {
        "question": "Does fine-tuning on the golden subset (top quarter by NUGGETS golden score) train a better "
        "model than a same-size random sample, the bottom quarter, or the whole pool?",
        "command": command,
        "settings": settings.as_dict(),
        "estimated_stage_s": {k: round(v) for k, v in estimate_seconds(settings).items()},
        "machine": machine(),
        "stage_wall_s": timings,
        "scored_pool": {
            "file": "scored_pool.parquet" if scored_pool is None else str(scored_pool),
            "candidates": len(pool),
            "golden_size": quarter,
            "golden_score_mean": float(pool["golden_score"].mean()),
            "golden_min_score": float(golden["golden_score"].iloc[quarter - 1]) if quarter else None,
            "bottom_max_score": float(golden["golden_score"].iloc[-quarter]) if quarter else None,
            **(length_check(pool, quarter) if quarter else {}),
        },
        "variants": {
            v: {**variant_figures(instance, [v]).get(v, {}), **likelihood_means(report, v)} for v in settings.variants
        },
        "judge": report["judge"],
        "comparisons": comparisons,
        "headline": headline(comparisons, settings.model),
    }
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    return results


def likelihood_means(report: dict[str, Any], variant: str) -> dict[str, Any]:
    out = {}
    for row in report["metrics"]:
        label = str(row["metric"])
        if row["kind"] == "judge-free" and variant in row:
            out[f"likelihood {label}"] = row[variant]
        elif row["headline"] and row["kind"] == "judge" and variant in row:
            out[label] = row[variant]
    return out


def study_comparisons(settings: StudySettings, report: dict[str, Any]) -> list[dict[str, Any]]:
    """The comparisons with the study's resamples and seed, and the judge deltas from the report beside them."""
    from nuggets_pipeline.core.statistics import compare_variants

    per_item = per_answer_scores(settings.variants)
    found = compare_variants(per_item, resamples=settings.bootstrap_resamples, seed=settings.bootstrap_seed)
    judge = {row["comparison"] + "|" + row["source"]: row for row in report["comparisons"]}
    rows = []
    for d in found:
        row = d.as_dict()
        row["comparison"] = f"{d.first} vs {d.second}"
        beside = judge.get(row["comparison"] + "|" + d.source, {})
        row["mt_bench_score_delta"] = beside.get("mt_bench_score_delta")
        row["alpaca_eval_win_rate_delta"] = beside.get("alpaca_eval_win_rate_delta")
        row["judge_counted"] = not report["judge"].get("near_chance", True)
        row["sentence"] = d.sentence()
        rows.append(row)
    # The bootstrap covers the choice of answers, not the choice of training examples: the gap between two random
    # seeds is that second noise, so a difference smaller than it is not read as an effect of the selection.
    for row in rows:
        floor = [
            r["difference"]
            for r in rows
            if r["source"] == row["source"] and r["first"] == "random" and str(r["second"]).startswith("random-")
        ]
        row["seed_spread"] = abs(floor[0]) if floor else None
        row["beyond_seed_spread"] = None if not floor else abs(row["difference"]) > abs(floor[0])
    return rows


def per_answer_scores(variants: Sequence[str]) -> dict[str, dict[str, pd.Series]]:
    """reference_likelihood rows per source and variant, indexed by answer id (the warehouse table)."""
    from nuggets_pipeline.core.storage import Warehouse

    rows = Warehouse(nuggets_home() / "warehouse").read("reference_likelihood", partitions=list(variants))
    out: dict[str, dict[str, pd.Series]] = {}
    for (source, variant), group in rows.groupby(["source", "variant"]):
        out.setdefault(str(source), {})[str(variant)] = group.set_index("anchor_id")["logprob_mean"].astype(float)
    return out


# ---------------------------------------------------------------------------------------------------------------
# docs/study.md and the README's headline: rendered from results.json, never typed by hand.


def _block(name: str) -> tuple[str, str]:
    return f"<!-- study:{name} -->", f"<!-- /study:{name} -->"


def render_blocks(results: dict[str, Any]) -> dict[str, str]:
    s = results["settings"]
    timings = results["stage_wall_s"]
    estimated = results["estimated_stage_s"]
    lines = ["| stage | measured (s) | estimated (s) |", "|---|---:|---:|"]
    for stage, est in estimated.items():
        measured = timings.get(stage, {}).get("wall_s")
        lines.append(f"| {stage} | {'–' if measured is None else f'{measured:,.0f}'} | {est:,} |")
    total = sum(t.get("wall_s", 0.0) for t in timings.values())
    lines.append(f"| **total** | **{total:,.0f}** ({total / 3600:.2f} h) | {sum(estimated.values()):,} |")
    comparison = [
        "| comparison | source | answers | difference (nats/token) | 95% interval | verdict | beyond seed spread | "
        "MT-Bench Δ | AlpacaEval win-rate Δ |",
        "|---|---|---:|---:|---|---|---|---:|---:|",
    ]
    for c in results["comparisons"]:
        mt, ae = c.get("mt_bench_score_delta"), c.get("alpaca_eval_win_rate_delta")
        comparison.append(
            f"| {c['comparison']} | {c['source']} | {c['n']} | {c['difference']:+.4f} | "
            f"[{c['ci_low']:+.4f}, {c['ci_high']:+.4f}] | {c['verdict']} | {_yes_no(c.get('beyond_seed_spread'))} | "
            f"{'–' if mt is None else f'{mt:+.3f}'} | {'–' if ae is None else f'{ae:+.2f}'} |"
        )
    judge = results["judge"]
    if judge.get("near_chance", True):
        comparison.append(
            "\nThe judge columns come from the SmolLM2 judge, which calibration put at chance "
            f"(agreement with GPT-4 {judge.get('agreement') or float('nan'):.1%}): shown, not evidence."
        )
    variants = [
        "| variant | examples | tokens / example | steps | final loss | train wall (s) | tokens/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for v, f in results["variants"].items():
        loss, seen, rate = f.get("final_loss"), f.get("examples_seen"), f.get("tokens_per_s")
        per_example = f"{f['train_tokens'] / seen:.0f}" if seen and f.get("train_tokens") else "–"
        variants.append(
            f"| {v} | {f.get('examples', '–')} | {per_example} | {f.get('steps', '–')} | "
            f"{'–' if loss is None else f'{loss:.4f}'} | {f.get('wall_s', 0):,.0f} | "
            f"{'–' if rate is None else f'{rate:.0f}'} |"
        )
    pool = results.get("scored_pool", {})
    length = "_Not measured._"
    if "spearman_golden_score_vs_response_chars" in pool:
        means = pool["response_chars_mean"]
        length = (
            f"Across the {pool['candidates']} scored candidates, golden score and response length (characters) have "
            f"a Spearman correlation of {pool['spearman_golden_score_vs_response_chars']:+.2f}; mean response "
            f"length: golden quarter {means['golden quarter']:,.0f}, bottom quarter {means['bottom quarter']:,.0f}, "
            f"whole pool {means['pool']:,.0f} characters."
        )
    settings = "```json\n" + json.dumps(s, indent=1) + "\n```"
    machine_line = ", ".join(f"{k} {v}" for k, v in results["machine"].items())
    return {
        "headline": results["headline"],
        "settings": settings,
        "machine": machine_line,
        "timings": "\n".join(lines),
        "comparisons": "\n".join(comparison),
        "variants": "\n".join(variants),
        "length": length,
    }


def _yes_no(value: bool | None) -> str:
    return "–" if value is None else ("yes" if value else "no")


def render_study_doc(text: str, results: dict[str, Any]) -> str:
    """Replace every ``<!-- study:NAME -->…<!-- /study:NAME -->`` block of ``text`` with the figure from
    ``results``; a block the text lacks is left out, a text without blocks is returned unchanged."""
    for name, body in render_blocks(results).items():
        start, end = _block(name)
        while start in text:
            head, rest = text.split(start, 1)
            if end not in rest:
                raise ValueError(f"block {start} has no closing {end}")
            _, tail = rest.split(end, 1)
            text = f"{head}{start}\n{body}\n{end}{tail}"
            break
    return text


# ---------------------------------------------------------------------------------------------------------------
# The command


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("study", help="the golden-vs-random study (docs/study.md); resumable")
    configure_parser(parser)


def configure_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--size", choices=SIZE_CHOICES, default="study", help="study (hours) or tiny (a minute)")
    parser.add_argument("--out", type=Path, default=None, help="results folder (study: docs/study)")
    parser.add_argument(
        "--scored-pool", type=Path, default=None, help="train and evaluate from this scored pool, without scoring"
    )
    parser.add_argument(
        "--render",
        type=Path,
        nargs="*",
        default=None,
        help="Markdown files whose study blocks to fill (study: docs/study.md and README.md)",
    )
    parser.add_argument("--until", default=None, help="stop after this stage")
    parser.add_argument("--estimate", action="store_true", help="print the settings and estimated times, then stop")
    return parser


def run(args: argparse.Namespace) -> int:
    settings = SIZES[args.size]
    default_out = REPO_ROOT / "docs" / "study" if args.size == "study" else nuggets_home() / "study" / args.size
    out = args.out or default_out
    render = (
        args.render
        if args.render is not None
        else ([REPO_ROOT / "docs" / "study.md", REPO_ROOT / "README.md"] if args.size == "study" else [])
    )
    estimate = estimate_seconds(settings)
    print("=== study settings (fixed before anything runs)\n" + json.dumps(settings.as_dict(), indent=1), flush=True)
    print(
        "=== estimated wall time on 2 cores (throughputs of benchmarks/RESULTS.md): "
        + ", ".join(f"{k} {v:,.0f}s" for k, v in estimate.items())
        + f"; total {sum(estimate.values()) / 3600:.2f} h",
        flush=True,
    )
    if args.estimate:
        return 0

    os.environ.setdefault("DAGSTER_HOME", str(REPO_ROOT))
    os.environ.setdefault("NUGGETS_DAGSTER_STORAGE", str(nuggets_home() / "dagster"))
    instance = dg.DagsterInstance.get()
    resources = study_resources(settings)
    ledger_path = nuggets_home() / "study" / args.size / "timings.json"
    ledger: dict[str, dict[str, Any]] = json.loads(ledger_path.read_text()) if ledger_path.exists() else {}
    # The chain starts from what every stage reads (the model, in float32); each stage adds the settings it
    # passes on, so a change re-runs that stage and the ones after it, never the ones before (new variants
    # train and evaluate without re-scoring the pool).
    chain = _hash({"model": settings.model, "dtype": "float32"})
    ran_any = False
    for stage in study_stages(settings, args.scored_pool):
        chain = _hash([chain, stage.name, stage.selection, stage.ops_config, stage.identity])
        started = time.perf_counter()
        units = [Unit(stage.selection, p, stage.ops_config, _hash([chain, p])) for p in stage.partitions()]
        todo = [u for u in units if not is_done(instance, u)]
        print(
            f"\n=== {stage.name}: {', '.join(stage.selection)}"
            + (f" ({len(units) - len(todo)} of {len(units)} already materialised)" if len(todo) < len(units) else ""),
            flush=True,
        )
        if todo and stage.before is not None:
            stage.before()
        for unit in todo:
            run_unit(unit, instance, resources, args.size)
        wall = time.perf_counter() - started
        previous = ledger.get(stage.name, {})
        if todo:
            # A resumed stage adds to the time it had already spent; a fresh one starts from zero.
            spent = previous.get("wall_s", 0.0) if previous.get("key") == chain else 0.0
            ledger[stage.name] = {"wall_s": spent + wall, "key": chain, "units": len(units), "ran_units": len(todo)}
            ran_any = True
        else:
            print("    skipped: every unit materialised earlier with the same settings", flush=True)
            ledger.setdefault(stage.name, {"wall_s": None, "key": chain, "units": len(units), "ran_units": 0})
        ledger[stage.name]["skipped_last_run"] = not todo
        ledger_path.parent.mkdir(parents=True, exist_ok=True)
        ledger_path.write_text(json.dumps(ledger, indent=1))
        if stage.name == args.until:
            return 0
    command = f"python -m nuggets_pipeline.cli study --size {args.size}" + (
        f" --scored-pool {args.scored_pool}" if args.scored_pool else ""
    )
    results = collect_results(settings, instance, ledger, out, command, args.scored_pool)
    for path in render:
        if path.exists():
            path.write_text(render_study_doc(path.read_text(), results))
    print(f"\n=== results ({'ran' if ran_any else 'nothing left to run'}): {out / 'results.json'}")
    print(results["headline"])
    for c in results["comparisons"]:
        print("  " + c["sentence"])
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = configure_parser(argparse.ArgumentParser(prog="nuggets study", description=__doc__))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
