"""The study's results: each variant's figures, the report's paired comparisons, the scored pool's length check,
the headline; all written under the results folder (results.json, comparisons.csv, differences.png,
scored_pool.parquet).

The comparisons are the evaluation report's (``core.report``: ``likelihood_comparisons``), which the report stage
computed over the study's variants with its resamples and seed (the ``evaluation_report`` config the study
preset gives): the study adds to each its sentence and the spread between two random seeds, never a second
bootstrap.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd

from nuggets_pipeline.core.paths import REPO_ROOT
from nuggets_pipeline.core.storage import write_parquet_atomic
from nuggets_pipeline.runs.presets import Preset
from nuggets_pipeline.study.render import difference_plot
from nuggets_pipeline.study.scored_pool import scored_pool_frame, warehouse
from nuggets_pipeline.study.sizing import estimate_seconds, settings_record


def machine() -> dict[str, Any]:
    import torch

    from nuggets_pipeline.core.devices import cpu_name

    return {
        "cpu": cpu_name(),
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


def scoring_figures(
    preset: Preset, instance: dg.DagsterInstance, timings: dict[str, dict[str, Any]], full: dict[str, Any]
) -> dict[str, Any]:
    """How the pool was scored and what that cost: the mode and its anchor passes, the reliability readout of the
    golden subset, and the selection-to-tuning ratio (STR), measured where the full-pool fine-tune ran (scoring
    wall time over its wall time), else the selection's own estimate from forward-pass FLOPs."""
    import torch

    from nuggets_pipeline.core.modeling import resolve_dtype
    from nuggets_pipeline.defs.metadata import latest_value

    def selection(key: str) -> Any:
        return latest_value(instance, "golden_subset", key)

    scoring_s = sum((timings.get(stage, {}).get("wall_s") or 0.0) for stage in ("zero-shot", "one-shot"))
    full_s = full.get("wall_s")
    measured = bool(scoring_s and full_s)
    return {
        "mode": str(preset.scoring.get("mode", "exact")),
        "settings": dict(preset.scoring),
        "dtype": str(resolve_dtype(preset.scoring_dtype, torch.device("cpu"))).removeprefix("torch."),
        "anchor_passes": selection("anchor_passes"),
        "anchor_passes_exact": selection("anchor_passes_exact"),
        "passes_fraction": selection("passes_fraction"),
        "settled_early": selection("settled_early"),
        "reliability": selection("reliability"),
        "reliability_figures": selection("reliability_figures"),
        "scoring_wall_s": scoring_s or None,
        "full_finetune_wall_s": full_s,
        "selection_to_tuning_ratio": scoring_s / full_s if measured else selection("selection_to_tuning_ratio"),
        "selection_to_tuning": (
            f"selection-to-tuning ratio {scoring_s / full_s:.2f} (measured: scoring {scoring_s:,.0f} s over the "
            f"full-pool fine-tune's {full_s:,.0f} s); "
            + (
                "selection costs more than fine-tuning on the whole pool"
                if scoring_s > full_s
                else "selection is cheaper"
            )
            if measured
            else selection("selection_to_tuning")
        ),
    }


EXACT_MATRIX = REPO_ROOT / "benchmarks" / "selection" / "pairs.parquet"  # the selection benchmark's, same pool


def exact_matrix_readout(preset: Preset, pool_ids: set[str], path: Path = EXACT_MATRIX) -> dict[str, Any] | None:
    """The reliability readout on the exact matrix of the same pool (every candidate on every anchor), where one
    is committed: adaptive scoring leaves most candidates without every anchor, and the readout of the live
    scores covers only the complete ones (the calibration sample and the candidates refined to the end)."""
    from nuggets_pipeline.core.reliability import SelectionRule, pair_matrix, readout

    if not path.exists():
        return None
    matrix = pair_matrix(pd.read_parquet(path, columns=["candidate_id", "anchor_id", "delta"]))
    if set(matrix.candidate_ids.astype(str)) != pool_ids:
        return None  # another pool: its readout says nothing about this one
    figures = readout(matrix, SelectionRule(top_fraction=preset.selection.top_fraction)).as_metadata()
    return {"file": str(path.relative_to(REPO_ROOT)), **figures}


def length_check(pool: pd.DataFrame, quarter: int) -> dict[str, Any]:
    """How golden score goes with response length over the scored pool: a reference-likelihood gain could come from
    training on longer answers rather than better ones, so the report shows the length of what each quarter holds."""
    texts = warehouse().read("candidates").set_index("id")["output"]
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
    sentence = (
        f"Fine-tuned on the golden quarter, {model} {words} the same model fine-tuned on {chosen['second']}: "
        f"{chosen['difference']:+.4f} nats/token, 95% interval [{chosen['ci_low']:+.4f}, {chosen['ci_high']:+.4f}] "
        f"over {chosen['n']} reference answers{caveat}"
    )
    # The cheap alternatives a user would pick instead, in the same breath (where the study measured them).
    others = {c["second"]: c for c in candidates}
    short = {"ahead": "ahead of", "behind": "behind", "within noise": "indistinguishable from"}
    against = [
        f"{short[others[name]['verdict']]} {label} ({others[name]['difference']:+.4f}, "
        f"[{others[name]['ci_low']:+.4f}, {others[name]['ci_high']:+.4f}])"
        for name, label in (
            ("length-matched", "a length-matched sample"),
            ("longest", "the longest answers"),
            ("ifd", "IFD's selection"),
        )
        if name in others
    ]
    return sentence + ("; it is " + ", ".join(against) if against else "") + "."


def _difference(row: dict[str, Any]) -> Any:
    """A comparison row of the report as the ``core.statistics.PairedDifference`` it was made from."""
    from nuggets_pipeline.core.statistics import PairedDifference

    values = {f.name: row[f.name] for f in dataclasses.fields(PairedDifference)}
    values["first_variants"], values["second_variants"] = tuple(row["first_variants"]), tuple(row["second_variants"])
    return PairedDifference(**values)


def study_comparisons(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The report's comparisons (evaluation_report.json), each with its sentence and the seed spread beside it."""
    rows = [{**row, "sentence": _difference(row).sentence()} for row in report["comparisons"]]
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


ANSWER_COLUMNS = ["variant", "source", "anchor_id", "logprob_sum", "logprob_mean", "response_tokens", "truncated"]


def report_file() -> Path:
    """The home's evaluation report figures (JSON beside the report's Markdown, where the storage owner puts it)."""
    return warehouse().evaluation_report_path.with_suffix(".json")


def collect_results(
    preset: Preset,
    instance: dg.DagsterInstance,
    timings: dict[str, dict[str, Any]],
    out: Path,
    command: str,
    scored_pool: Path | None,
) -> dict[str, Any]:
    """results.json, comparisons.csv, differences.png, reference_likelihood.parquet (per answer) and
    scored_pool.parquet under ``out``."""
    report = json.loads(report_file().read_text())
    comparisons = study_comparisons(report)
    out.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(comparisons)
    frame.to_csv(out / "comparisons.csv", index=False, float_format="%.6f")
    difference_plot(frame, out / "differences.png")
    # Every reference answer's log-likelihood under every variant (a few thousand rows): the comparisons can be
    # recomputed, or tested another way, without training anything again.
    answers = warehouse().read("reference_likelihood")[ANSWER_COLUMNS].rename(columns={"anchor_id": "item_id"})
    write_parquet_atomic(answers, out / "reference_likelihood.parquet")
    pool = scored_pool_frame()
    if scored_pool is None:
        pool.to_parquet(out / "scored_pool.parquet", index=False)
    golden = pool.sort_values("golden_score", ascending=False)
    variants = {
        v: {**variant_figures(instance, [v]).get(v, {}), **likelihood_means(report, v)} for v in preset.variants
    }
    quarter = int(len(pool) * (preset.selection.top_fraction or 0.0))
    results = {
        "question": "Does fine-tuning on the golden subset (top quarter by NUGGETS golden score) train a better "
        "model than a same-size random sample, the bottom quarter, or the whole pool?",
        "command": command,
        "settings": settings_record(preset),
        "estimated_stage_s": {k: round(v) for k, v in estimate_seconds(preset).items()},
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
        "variants": variants,
        "scoring": {
            **scoring_figures(preset, instance, timings, variants.get("full", {})),
            "exact_matrix_readout": exact_matrix_readout(preset, set(pool["candidate_id"].astype(str))),
        },
        "judge": report["judge"],
        "comparisons": comparisons,
        "headline": headline(comparisons, str(preset.model)),
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


__all__ = [
    "collect_results",
    "headline",
    "length_check",
    "likelihood_means",
    "machine",
    "study_comparisons",
    "variant_figures",
]
