"""`nuggets plan`: what one-shot scoring of a pool will cost, measured on this machine before spending it.

It counts the work exactly (every anchor's tokens, run once per candidate, with the scoring engine's template and
tokenizer), measures the real scoring core on a small sample (a few candidates x a few anchors, on the model and
device given), and prints tokens to score, hours on this machine, shards, and the GPU-hours of the job at a GPU
throughput the user gives (a figure measured on the target GPU, e.g. a first shard's `tokens_per_s` metadata):

    tokens    = candidates x anchor tokens per candidate      (+ one demonstration prefix per candidate)
    hours     = tokens / measured anchor tokens/s / 3600
    GPU-hours = tokens / --gpu-tokens-per-s / 3600;  wall-clock = GPU-hours / --gpus (+ one model load per run)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from nuggets_pipeline.core.paths import ALPACA_CLEANED, KMEANS_100_ANCHORS, shipped

DEFAULT_SHARD_SIZE = 512
PREFIX_COUNT_SAMPLE = 2_000  # candidates whose demonstration prefix is tokenised (the rest extrapolated)
# A pilot this size gives a first reliability figure (a Spearman correlation over 30 candidates is rough, but it
# tells 0.3 from 0.8); the readout refuses fewer than core.reliability.MIN_CANDIDATES.
PILOT_CANDIDATES, PILOT_ANCHORS = 30, 16


@dataclass
class Plan:
    pool: str
    pool_rows: int
    anchors: str
    anchor_count: int
    candidates: int
    model: str
    dtype: str
    device: str
    threads: int
    anchor_tokens_per_candidate: int
    tokens_to_score: int
    prefix_tokens: int
    prefix_tokens_counted_on: int
    sample_candidates: int
    sample_anchors: int
    sample_anchor_tokens: int
    sample_seconds: float
    tokens_per_s_here: float
    hours_here: float
    shard_size: int
    shards: int
    gpu_tokens_per_s: float | None
    gpu_hours: float | None
    gpus: int
    wall_hours_on_gpus: float | None
    # The reliability readout of the measured sample (core.reliability), stepped up to the full anchor count.
    reliability: float | None = None
    anchors_for_reliability_0_8: int | None = None
    reliability_line: str = ""
    # Exact, adaptive and weak-to-strong side by side: tokens, hours here, GPU-hours, selection-to-tuning ratio.
    scoring_parameters: int = 0
    pool_tokens: int = 0  # the pool's examples in the scoring template: what a full fine-tune trains on per epoch
    strategies: list[dict[str, Any]] = field(default_factory=list)


def anchor_tokens_to_score(candidates: int, anchor_tokens_per_candidate: float) -> float:
    """One-shot scoring's work: every anchor's tokens, run once after each candidate's prefix (the prefix tokens,
    one demonstration per candidate, are counted apart)."""
    return candidates * anchor_tokens_per_candidate


def seconds_at(tokens: float, tokens_per_s: float) -> float:
    """Seconds for ``tokens`` at a measured rate; NaN where no rate was measured."""
    return tokens / tokens_per_s if tokens_per_s == tokens_per_s and tokens_per_s > 0 else float("nan")


def anchor_token_lengths(loaded: Any, anchors: pd.DataFrame, template_name: str, max_length: int | None) -> list[int]:
    """Tokens of each anchor (prompt + response) as the engine runs it after every candidate's prefix, with the
    same cut as ``ScoringConfig.max_length`` (BOS belongs to the prefix)."""
    from nuggets_pipeline.core.modeling import encode
    from nuggets_pipeline.core.templates import get_template

    template = get_template(template_name)
    lengths = []
    for row in anchors.itertuples():
        prompt = len(encode(loaded.tokenizer, template.prompt(row.instruction, row.input or "")))
        response = len(encode(loaded.tokenizer, template.response(row.output)))
        if max_length is not None:
            room = max_length - 1
            response = min(response, room - 1)
            prompt = min(prompt, room - response)
        lengths.append(prompt + response)
    return lengths


def load_pool(sources: list[str]) -> pd.DataFrame:
    from nuggets_pipeline.core.data import ingest

    result = ingest(sources)
    if result.instructions.empty:
        raise ValueError(f"no usable rows in {sources}: {dict(result.reasons)}")
    return result.instructions


def choose_anchors(pool: pd.DataFrame, anchors: str, seed: int) -> tuple[pd.DataFrame, str]:
    """An anchor file (the shipped paper KMeans-100 by default), or a count drawn at random from the pool."""
    from nuggets_pipeline.core.anchors import random_anchors
    from nuggets_pipeline.core.data import ingest

    if anchors.isdigit():
        return random_anchors(pool, int(anchors), seed).anchors, f"{anchors} drawn at random from the pool"
    path = Path(anchors)
    if not path.exists():
        raise ValueError(f"--anchors {anchors!r}: neither a count nor an existing file")
    frame = ingest([path]).instructions
    if frame.empty:
        raise ValueError(f"--anchors {anchors!r}: the file holds no usable example")
    return frame, f"file {path}"


def make_plan(
    sources: list[str],
    anchors: str,
    model: str,
    device: str = "auto",
    dtype: str = "auto",
    sample_candidates: int = 2,
    sample_anchors: int = 8,
    gpu_tokens_per_s: float | None = None,
    gpus: int = 1,
    shard_size: int = DEFAULT_SHARD_SIZE,
    candidates_limit: int | None = None,
    template: str = "nuggets",
    max_length: int | None = None,
    threads: int | None = None,
    seed: int = 0,
    trainee_parameters: int | None = None,
    trainee_epochs: float = 3.0,
) -> Plan:
    import torch

    from nuggets_pipeline.core.devices import claim
    from nuggets_pipeline.core.modeling import load_model
    from nuggets_pipeline.core.reliability import SelectionRule, pair_matrix, readout
    from nuggets_pipeline.core.scoring import ScoringConfig, demonstration_ids, score_one_shot, score_zero_shot
    from nuggets_pipeline.core.templates import get_template

    if threads is not None:
        torch.set_num_threads(threads)
    pool = load_pool(sources)
    anchor_frame, anchor_label = choose_anchors(pool, anchors, seed)
    candidates = pool[~pool["id"].isin(set(anchor_frame["id"]))]
    if candidates_limit is not None:
        candidates = candidates.head(candidates_limit)
    if candidates.empty:
        raise ValueError("no candidates left once the anchors are taken out of the pool")
    config = ScoringConfig(template=template, max_length=max_length)

    # Like a scoring step, the plan claims a device of its own where the machine has several (docs/gpus.md).
    with claim(device, label="nuggets plan") or nullcontext() as held:
        on = held.torch_device if held is not None else device
        loaded = load_model(model, dtype=dtype, device=on)
        lengths = anchor_token_lengths(loaded, anchor_frame, template, max_length)
        per_candidate = sum(lengths)
        counted = candidates.sample(n=min(PREFIX_COUNT_SAMPLE, len(candidates)), random_state=seed)
        counted_prefix = sum(1 + len(d) for d in demonstration_ids(loaded, counted, get_template(template), "\n\n"))
        prefix_tokens = round(counted_prefix * len(candidates) / len(counted))

        sample_a = anchor_frame.sample(n=min(sample_anchors, len(anchor_frame)), random_state=seed)
        sample_c = candidates.sample(n=min(sample_candidates, len(candidates)), random_state=seed)
        zero = score_zero_shot(loaded, sample_a, config)  # also warms the model up before the timed part
        tokens, seconds, pilot = 0, 0.0, []
        for chunk in score_one_shot(loaded, sample_a, zero, sample_c, config):
            tokens += chunk.anchor_tokens
            seconds += chunk.seconds
            pilot.append(chunk.pair_deltas)
        measured_on = held.name if held is not None else str(loaded.device)
        resolved_dtype = str(loaded.dtype).removeprefix("torch.")

    # The sample's pair deltas are a pilot matrix: how reliable a ranking on all the anchors would be, for free.
    trust = readout(
        pair_matrix(pd.concat(pilot, ignore_index=True), sample_a["id"]),
        SelectionRule(top_fraction=0.25),
        full_anchors=len(anchor_frame),
    )
    rate = tokens / seconds if seconds > 0 else float("nan")
    total = int(anchor_tokens_to_score(len(candidates), per_candidate))
    gpu_hours = total / gpu_tokens_per_s / 3600 if gpu_tokens_per_s else None
    scoring_parameters = int(loaded.model.num_parameters())
    pool_tokens = prefix_tokens - len(candidates)  # each demonstration without its BOS
    pilot_pairs = pd.concat(pilot, ignore_index=True)
    strategies = compare_strategies(
        total + prefix_tokens,
        pool_tokens,
        rate,
        gpu_tokens_per_s,
        scoring_parameters,
        trainee_parameters,
        trainee_epochs,
        adaptive_passes(pilot_pairs, sample_a["id"]),
    )
    return Plan(
        pool=", ".join(str(s) for s in sources),
        pool_rows=len(pool),
        anchors=anchor_label,
        anchor_count=len(anchor_frame),
        candidates=len(candidates),
        model=model,
        dtype=resolved_dtype,
        device=measured_on,
        threads=torch.get_num_threads(),
        anchor_tokens_per_candidate=per_candidate,
        tokens_to_score=total,
        prefix_tokens=prefix_tokens,
        prefix_tokens_counted_on=len(counted),
        sample_candidates=len(sample_c),
        sample_anchors=len(sample_a),
        sample_anchor_tokens=tokens,
        sample_seconds=seconds,
        tokens_per_s_here=rate,
        hours_here=seconds_at(total, rate) / 3600,
        shard_size=shard_size,
        shards=math.ceil(len(candidates) / shard_size),
        gpu_tokens_per_s=gpu_tokens_per_s,
        gpu_hours=gpu_hours,
        gpus=gpus,
        wall_hours_on_gpus=gpu_hours / gpus if gpu_hours is not None else None,
        reliability=trust.as_metadata()["reliability"],
        anchors_for_reliability_0_8=trust.anchors_for_reliability_0_8,
        reliability_line=trust.line,
        scoring_parameters=scoring_parameters,
        pool_tokens=pool_tokens,
        strategies=strategies,
    )


def adaptive_passes(pairs: pd.DataFrame, anchor_ids: pd.Series) -> tuple[float, str] | None:
    """The adaptive rule (default settings, top quarter) replayed on the pilot's matrix: its share of exact's
    anchor passes, and on what it was measured; None when the pilot is too small to say (fewer than 10 candidates
    or 10 anchors). A pilot has few anchors, so the share is a rough guide for a run on many more."""
    from nuggets_pipeline.core.adaptive import AdaptiveConfig, replay
    from nuggets_pipeline.core.reliability import SelectionRule, pair_matrix

    matrix = pair_matrix(pairs, anchor_ids)
    candidates, anchors = matrix.wins.shape
    if candidates < 10 or anchors < 10:
        return None
    config = AdaptiveConfig(first_anchors=max(1, anchors // 10), round_anchors=max(1, anchors // 10))
    fraction = replay(matrix.wins, SelectionRule(top_fraction=0.25), config, deltas=matrix.deltas).passes_fraction
    return fraction, f"replayed on the pilot's {candidates} x {anchors}"


def compare_strategies(
    exact_tokens: int,
    pool_tokens: int,
    rate_here: float,
    gpu_tokens_per_s: float | None,
    scoring_parameters: int,
    trainee_parameters: int | None,
    epochs: float,
    adaptive: tuple[float, str] | None,
) -> list[dict[str, Any]]:
    """Rows of the comparison: tokens scored, hours here, GPU-hours and the estimated selection-to-tuning ratio
    against fine-tuning the trainee on the whole pool for ``epochs`` (core.cost: forward over training FLOPs)."""
    from nuggets_pipeline.core.cost import estimated

    def row(name: str, tokens: float, basis: str, trainee: int | None) -> dict[str, Any]:
        cost = estimated(int(tokens), pool_tokens, epochs, scoring_parameters, trainee or scoring_parameters)
        return {
            "strategy": name,
            "tokens": int(tokens),
            "hours_here": seconds_at(tokens, rate_here) / 3600 if rate_here == rate_here and rate_here > 0 else None,
            "gpu_hours": tokens / gpu_tokens_per_s / 3600 if gpu_tokens_per_s else None,
            "selection_to_tuning_ratio": cost.ratio,
            "basis": basis,
        }

    rows = [row("exact", exact_tokens, "every anchor for every candidate", None)]
    if adaptive is not None:
        rows.append(
            row("adaptive", exact_tokens * adaptive[0], f"{adaptive[0]:.0%} of the passes, {adaptive[1]}", None)
        )
    else:
        rows.append({"strategy": "adaptive", "basis": "unknown until a pilot of 10+ candidates x 10+ anchors"})
    if trainee_parameters:
        rows.append(
            row(
                "weak-to-strong (exact)",
                exact_tokens,
                f"this model ({scoring_parameters / 1e9:.3g}B) scores for a {trainee_parameters / 1e9:.3g}B trainee",
                trainee_parameters,
            )
        )
    return rows


def format_plan(plan: Plan) -> str:
    def duration(hours: float) -> str:
        if hours * 3600 < 120:
            return f"{hours * 3600:.1f} s"
        if hours < 2:
            return f"{hours * 60:.1f} min"
        return f"{hours:,.1f} h" + (f" ({hours / 24:,.1f} days)" if hours >= 48 else "")

    lines = [
        f"pool            {plan.pool_rows:,} rows ({plan.pool})",
        f"anchors         {plan.anchor_count:,} ({plan.anchors})",
        f"candidates      {plan.candidates:,}",
        f"model           {plan.model}, {plan.dtype} on {plan.device}, {plan.threads} torch thread(s)",
        f"tokens to score {plan.tokens_to_score:,} anchor tokens = {plan.candidates:,} candidates x "
        f"{plan.anchor_tokens_per_candidate:,} per candidate (+ {plan.prefix_tokens:,} prefix tokens, counted on "
        f"{plan.prefix_tokens_counted_on:,} candidates)",
        f"measured        {plan.sample_candidates} candidates x {plan.sample_anchors} anchors: "
        f"{plan.sample_anchor_tokens:,} anchor tokens in {plan.sample_seconds:.1f} s = "
        f"{plan.tokens_per_s_here:,.1f} anchor tokens/s on this machine",
        f"this machine    {duration(plan.hours_here)} for the whole pool",
        f"shards          {plan.shards:,} of up to {plan.shard_size} candidates "
        f"(candidates config: shards: {plan.shards}, limit: null)",
    ]
    if plan.gpu_hours is not None:
        lines.append(
            f"GPU-hours       {plan.gpu_hours:,.3g} at {plan.gpu_tokens_per_s:,.0f} anchor tokens/s per GPU; "
            f"{duration(plan.wall_hours_on_gpus or 0.0)} wall-clock on {plan.gpus} GPU(s) "
            f"(dagster instance concurrency set model {plan.gpus}), plus a model load per run"
        )
    else:
        lines.append("GPU-hours       give --gpu-tokens-per-s (measure it: `nuggets plan --device cuda` on the GPU)")
    trainee = "the same model" if len(plan.strategies) < 3 else "the trainee"
    lines.append(f"strategies      (selection-to-tuning ratio: scoring FLOPs over fine-tuning {trainee} on the pool)")
    for row in plan.strategies:
        if "tokens" not in row:
            lines.append(f"  {row['strategy']:<24} {row['basis']}")
            continue
        here = duration(row["hours_here"]) if row["hours_here"] is not None else "?"
        gpu = f"{row['gpu_hours']:,.3g} GPU-h" if row["gpu_hours"] is not None else "GPU-h: give --gpu-tokens-per-s"
        lines.append(
            f"  {row['strategy']:<24} {row['tokens']:>15,} tokens  {here:>14} here  {gpu}  "
            f"STR {row['selection_to_tuning_ratio']:.3g}  ({row['basis']})"
        )
    lines.append(f"reliability     {plan.reliability_line}")
    if plan.reliability is None:
        pilot_tokens = PILOT_CANDIDATES * PILOT_ANCHORS * plan.anchor_tokens_per_candidate / plan.anchor_count
        lines.append(
            f"                to learn how many anchors this pool needs, measure a pilot: --sample-candidates "
            f"{PILOT_CANDIDATES} --sample-anchors {PILOT_ANCHORS} "
            f"(about {duration(pilot_tokens / plan.tokens_per_s_here / 3600)} here)"
        )
    return "\n".join(lines)


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "plan", help="tokens, hours and shards of scoring a pool, measured here; GPU-hours at a GPU throughput you give"
    )
    parser.add_argument(
        "--pool", action="append", help=f"pool file(s), repeatable (default: the shipped {ALPACA_CLEANED})"
    )
    parser.add_argument(
        "--anchors",
        default=None,
        help=f"an anchor file, or a count drawn at random from the pool (default: the shipped {KMEANS_100_ANCHORS})",
    )
    parser.add_argument("--model", default="smollm2-135m-instruct", help="scoring model: preset, HF id or local path")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--dtype", default="auto", help="float32, bfloat16, float16 or auto")
    # The numeric flags, one row each (flag, type, default, help), in the order `plan --help` lists them.
    numbers: tuple[tuple[str, type, int | float | None, str], ...] = (
        (
            "--sample-candidates",
            int,
            2,
            f"candidates scored to measure throughput; from 10 on, also the ranking's reliability (a pilot: "
            f"{PILOT_CANDIDATES} x {PILOT_ANCHORS} anchors tells how many anchors the pool needs)",
        ),
        ("--sample-anchors", int, 8, "anchors scored per sample candidate"),
        (
            "--gpu-tokens-per-s",
            float,
            None,
            "anchor tokens/s of one target GPU, measured (`make gpu-check`, or a first shard's tokens_per_s). The "
            "GPU-hours are only as good as this figure: the project has measured none yet, so any figure it states "
            "(the README's 26,000 tokens/s on an H100 and the GPU-hours from it) is assumed, not measured",
        ),
        ("--gpus", int, 1, "GPUs to spread the job over (wall-clock estimate)"),
        (
            "--trainee-parameters",
            float,
            None,
            "parameters of the model the selection is for, when larger than the scoring model (weak-to-strong; "
            "e.g. 6.7e9 for a 7B)",
        ),
        ("--trainee-epochs", float, 3.0, "epochs of that fine-tune (the paper's 3)"),
        ("--shard-size", int, DEFAULT_SHARD_SIZE, "candidates per shard"),
        ("--candidates", int, None, "plan for only this many candidates"),
        ("--max-length", int, None, "scoring max_length (default: no cut)"),
        ("--threads", int, None, "torch threads (default: torch's)"),
    )
    for flag, kind, default, text in numbers:
        parser.add_argument(flag, type=kind, default=default, help=text)
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")


def run(args: argparse.Namespace) -> int:
    for name in ("sample_candidates", "sample_anchors", "gpus", "shard_size"):
        if getattr(args, name) < 1:
            print(f"error: --{name.replace('_', '-')} must be at least 1", file=sys.stderr)
            return 2
    if args.gpu_tokens_per_s is not None and args.gpu_tokens_per_s <= 0:
        print("error: --gpu-tokens-per-s must be positive", file=sys.stderr)
        return 2
    started = time.perf_counter()
    try:
        plan = make_plan(
            sources=args.pool or [str(shipped(ALPACA_CLEANED))],
            anchors=args.anchors or str(shipped(KMEANS_100_ANCHORS)),
            model=args.model,
            device=args.device,
            dtype=args.dtype,
            sample_candidates=args.sample_candidates,
            sample_anchors=args.sample_anchors,
            gpu_tokens_per_s=args.gpu_tokens_per_s,
            gpus=args.gpus,
            shard_size=args.shard_size,
            candidates_limit=args.candidates,
            max_length=args.max_length,
            threads=args.threads,
            trainee_parameters=int(args.trainee_parameters) if args.trainee_parameters else None,
            trainee_epochs=args.trainee_epochs,
        )
    except (ValueError, OSError, RuntimeError) as error:  # bad files, counts, models and devices
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(asdict(plan), indent=2) if args.json else format_plan(plan))
    print(f"(planned in {time.perf_counter() - started:.0f} s)", file=sys.stderr)
    return 0
