"""The study's settings as results.json records them, and its time estimate (the arithmetic of docs/study.md).

The settings are the study rows of the preset table (``runs/presets.py``: ``study`` and its test size ``tiny``);
``settings_record`` writes them as the flat record results.json and docs/study.md show. The estimate is
``nuggets plan``'s cost model (``runs/plan.py``: tokens to score, seconds at a measured rate) on the throughputs
measured on the project's 2-core machine; they are estimates until the run measures each stage.
"""

from __future__ import annotations

from typing import Any

from nuggets_pipeline.defs.jobs import STAGES
from nuggets_pipeline.runs.plan import anchor_tokens_to_score, seconds_at
from nuggets_pipeline.runs.presets import Preset

# Rates on the project's 2-core machine, float32, 2 threads, chosen from the demo and benchmark figures in
# benchmarks/RESULTS.md (re-measure there first, then update these):
THROUGHPUT = {
    "scoring_anchor_tokens_per_s": 300.0,  # one-shot engine: near the demo's best, below the quiet benchmark
    # One-shot engine in bfloat16 on a CPU that computes it natively (Xeon with AMX): the selection matrix's
    # longest sitting (benchmarks/selection/manifest.json, 488 candidates x 100 anchors, 880; a later one 1,349).
    "scoring_anchor_tokens_per_s_bfloat16": 880.0,
    # Anchor passes of the adaptive mode over exact scoring's, top quarter (benchmarks/RESULTS.md, the replay on
    # the selection matrix at the study's confidence, 0.95: 42.1%); an estimate until the live run measures it.
    "adaptive_passes_fraction": 0.42,
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
    # The paper's 100 KMeans anchors, every one after a candidate's prefix: the selection matrix's 9,117,304 anchor
    # tokens over 488 candidates.
    "paper_anchors_per_candidate": 18_683.0,
}
ALPACA_EVAL_SIZE = 805

# The training fields results.json records, in its order (each a finetuned_model config field the study sets).
TRAINING_FIELDS = (
    "num_train_epochs",
    "learning_rate",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "max_length",
    "padding_free",
    "save_steps",
)


def settings_record(preset: Preset) -> dict[str, Any]:
    """Every setting of a study size, fixed before anything runs (printed, and written to results.json)."""
    if preset.model is None or preset.pool is None or (preset.anchors.n is None and preset.anchors.method != "file"):
        raise ValueError(f"preset {preset.name!r} is no study size: it pins no model, pool or anchor count")
    training, evaluation = preset.training.overrides, preset.evaluation
    second_edition = {
        # Recorded where they differ from the first study's fixed choices (KMeans anchors, exact float32 scoring).
        "anchor_method": preset.anchors.method,
        "scoring_dtype": preset.scoring_dtype,
        "scoring": dict(preset.scoring),
        "likelihood_sample_seed": evaluation.likelihood_sample_seed,
    }
    first_edition = {
        "anchor_method": "kmeans",
        "scoring_dtype": "float32",
        "scoring": {},
        "likelihood_sample_seed": None,
    }
    return {
        "size": preset.name,
        "model": preset.model,  # scoring, training and judge model (one base for every variant)
        "pool": preset.pool,  # candidates: a stable slice of the shipped Alpaca set, anchors removed
        "shards": preset.shards,
        "anchors": preset.anchors.n,  # KMeans k; None: every anchor of the file
        "kmeans_pool": preset.anchors.kmeans_pool,
        "embed_max_tokens": preset.anchors.embed_max_tokens,
        "anchor_seed": preset.anchors.seed,
        "top_fraction": preset.selection.top_fraction,
        "variants": list(preset.variants),
        "random_seed": training["random_seed"],
        "training_profile": preset.training.profile,
        **{name: training[name] for name in TRAINING_FIELDS},
        "likelihood_alpaca_eval_items": evaluation.likelihood_alpaca_eval_items,  # None: all 805
        "likelihood_mt_bench_items": evaluation.likelihood_mt_bench_items,  # None: every shipped reference
        "mt_bench_questions": evaluation.mt_bench_questions,
        "alpaca_eval_instructions": evaluation.alpaca_eval_instructions,
        "max_new_tokens": evaluation.max_new_tokens,
        "calibration_pairs": evaluation.calibration_pairs,
        "bootstrap_resamples": preset.bootstrap_resamples,
        "bootstrap_seed": preset.bootstrap_seed,
        **{k: v for k, v in second_edition.items() if v != first_edition[k]},
    }


def estimate_seconds(preset: Preset) -> dict[str, float]:
    """Expected wall seconds per stage on 2 cores, from the measured throughputs above."""
    t, k = THROUGHPUT, TOKENS
    s = settings_record(preset)
    quarter = int(s["pool"] * s["top_fraction"])
    trained = sum({"full": s["pool"], "base": 0}.get(v, quarter) for v in s["variants"])
    alpaca_eval = s["likelihood_alpaca_eval_items"]
    references = k["alpaca_eval_references"] * (1.0 if alpaca_eval is None else alpaca_eval / ALPACA_EVAL_SIZE) + (
        k["mt_bench_references"] if s["likelihood_mt_bench_items"] is None else 0
    )
    from_file = preset.anchors.method == "file"
    per_candidate = k["paper_anchors_per_candidate"] if from_file else s["anchors"] * k["anchor"]
    if preset.scoring.get("mode") == "adaptive":
        per_candidate *= t["adaptive_passes_fraction"]
    rate = t[
        "scoring_anchor_tokens_per_s" if preset.scoring_dtype == "float32" else "scoring_anchor_tokens_per_s_bfloat16"
    ]
    seconds = {
        "ingest": 3.0,
        "anchors": 25.0
        if from_file
        else 25.0 + s["kmeans_pool"] * t["embed_s_per_text_128"] * s["embed_max_tokens"] / 128,
        "zero-shot": 2.0,
        "one-shot": seconds_at(anchor_tokens_to_score(s["pool"], per_candidate), rate),
        "select": 2.0,
        # Two passes over every pool example (conditioned and direct), at the reference engine's rate.
        "ifd": seconds_at(2 * s["pool"] * k["pool_example"], t["reference_tokens_per_s"]),
        "train": seconds_at(trained * s["num_train_epochs"] * k["pool_example"], t["training_tokens_per_s"]),
        "evaluate": len(s["variants"])
        * (seconds_at(references, t["reference_tokens_per_s"]) + t["judge_s_per_variant"]),
        "report": 20.0,
    }
    # The stages the runner runs for these variants, in its order (the `ifd` stage only where `ifd` is trained).
    return {spec.name: seconds[spec.name] for spec in STAGES if spec.needed(preset.variants)}


__all__ = ["THROUGHPUT", "TOKENS", "estimate_seconds", "settings_record"]
