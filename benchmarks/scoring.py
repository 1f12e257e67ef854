"""Throughput and exactness of the scoring engine against a plain forward and a port of the paper's scorer.

    .venv/bin/python benchmarks/scoring.py --model smollm2-135m-instruct --candidates 2 --anchors 16

Candidates are a seeded sample of the shipped Alpaca pool, anchors the first N of the paper's KMeans-100 file.
Every figure counts the same numerator: anchor tokens (prompt + response) once per candidate. The engine and the
plain forwards run ``--repeats`` times, alternating, so both see the same load on a shared machine; their
figures are medians over those repeats, and ``engine_vs_raw_per_repeat`` gives each repeat's ratio (its spread is
the noise). ``raw_forward`` is random ids in unpadded rows of the anchors' mean length under the engine's budget;
``same_rows`` is the engine's own anchor rows in its own batches, without the demonstration, so
``same_rows_vs_raw`` is what these anchors' real lengths cost any forward (longer attention, padding, fewer
tokens per forward) and ``engine_vs_same_rows`` what the engine adds to a forward of its rows. ``peak_rss_mb`` is
the high-water mark before the reference port runs (its full-vocabulary logits need gigabytes). The last line
printed is one JSON object.

The reference is a straightforward port of the paper's one-shot scorer (pldlgb/nuggets instruction_main.py,
do_infer_probs): float32; the candidate's prefix cache expanded over a batch of anchor rows; each row is
BOS + anchor, right-padded (and cut) to 200 tokens like the paper's loader, so the anchor carries its own BOS
after the demonstration as with the paper's LLaMA tokenizer; logits and a full-vocabulary log-softmax for the
whole batch; a per-sample loop with .item(). ``reference_full`` is the same port padded to the longest anchor.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from transformers import DynamicCache

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from arguments import positive_int  # benchmarks/, beside this script

from nuggets_pipeline.core.data import ingest
from nuggets_pipeline.core.devices import cpu_name
from nuggets_pipeline.core.modeling import (
    PRESETS,
    SMOLLM2,
    LoadedModel,
    cpu_has_native_bfloat16,
    encode,
    load_model,
    resolve_device,
    resolve_dtype,
)
from nuggets_pipeline.core.paths import ALPACA_CLEANED, KMEANS_100_ANCHORS, shipped
from nuggets_pipeline.core.scoring import (
    DEFAULT_DTYPE,
    ScoringConfig,
    _plan_batches,
    _prepare_anchors,
    demonstration_ids,
    score_one_shot,
    score_zero_shot,
)
from nuggets_pipeline.core.selection import select_golden
from nuggets_pipeline.core.templates import get_template

PAPER_MAX_LEN = 200


def best_of(repeats: int, run: Callable[[], Any]) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - started)
    return best, result


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_examples(args: argparse.Namespace) -> tuple[pd.DataFrame, pd.DataFrame]:
    anchors = ingest([shipped(KMEANS_100_ANCHORS)]).instructions.head(args.anchors).reset_index(drop=True)
    pool = ingest([shipped(ALPACA_CLEANED)]).instructions
    candidates = pool.sample(n=args.candidates, random_state=args.seed).reset_index(drop=True)
    return anchors, candidates


def raw_forward(loaded: LoadedModel, tokens: int, mean_length: int, budget: int) -> tuple[Callable[[], None], int]:
    """A plain forward over ``tokens`` tokens in unpadded [rows, mean_length] batches under the same budget."""
    n_rows = max(1, round(tokens / mean_length))
    rows_per_batch = max(1, budget // mean_length)
    ids = torch.randint(100, loaded.tokenizer.vocab_size - 100, (n_rows, mean_length), device=loaded.device)

    @torch.inference_mode()
    def run() -> None:
        for start in range(0, n_rows, rows_per_batch):
            loaded.model(input_ids=ids[start : start + rows_per_batch], use_cache=False)

    return run, n_rows * mean_length


def same_rows_forward(
    loaded: LoadedModel, anchors: pd.DataFrame, config: ScoringConfig, n_candidates: int
) -> Callable[[], None]:
    """A plain forward (LM head included) of the engine's own rows without the demonstration prefix: each anchor
    once per candidate, sorted by length and cut into the engine's padded batches. Beside ``raw_forward`` it shows
    what the anchors' real lengths cost (padding, fewer tokens per forward, longer attention); beside the engine,
    what the prefix (its forward, its keys in every layer) and the float32 log-normaliser cost."""
    prepared = _prepare_anchors(loaded, anchors, config)
    rows = np.repeat(np.argsort(prepared.lengths, kind="stable"), n_candidates)
    ends = _plan_batches(prepared.lengths[rows], config.budget(loaded.device))
    batches = [torch.as_tensor(batch, device=loaded.device) for batch in np.split(rows, ends[:-1])]

    @torch.inference_mode()
    def run() -> None:
        for batch in batches:
            width = int(prepared.lengths[batch.cpu().numpy()].max())
            loaded.model(input_ids=prepared.tokens[batch, :width], use_cache=False)

    return run


def run_engine(
    loaded: LoadedModel,
    anchors: pd.DataFrame,
    candidates: pd.DataFrame,
    config: ScoringConfig,
    repeats: int,
    with_raw: bool = True,
) -> dict[str, Any]:
    """Engine throughput, and the plain forwards' over as many tokens, timed alternately so both see the same
    load on a shared machine; each figure is the median of its repeats."""
    budget = config.budget(loaded.device)
    zero_seconds, zero = best_of(1, lambda: score_zero_shot(loaded, anchors, config))
    anchor_lengths = zero["prompt_tokens"] + zero["response_tokens"]
    tokens = int(anchor_lengths.sum()) * len(candidates)
    raw, raw_tokens = raw_forward(loaded, tokens, round(anchor_lengths.mean()), budget)
    same_rows = same_rows_forward(loaded, anchors, config, len(candidates))
    engine_runs, raw_runs, same_rows_runs = [], [], []
    for _ in range(repeats):
        engine_seconds, chunks = best_of(1, lambda: list(score_one_shot(loaded, anchors, zero, candidates, config)))
        engine_runs.append(engine_seconds)
        if with_raw:
            raw_runs.append(best_of(1, raw)[0])
            same_rows_runs.append(best_of(1, same_rows)[0])
    # Medians: one slow repeat (another process on the machine) moves neither side's figure.
    seconds = float(np.median(engine_runs))
    raw_seconds = float(np.median(raw_runs)) if raw_runs else float("inf")
    same_rows_seconds = float(np.median(same_rows_runs)) if same_rows_runs else float("inf")
    engine_tokens = sum(c.anchor_tokens for c in chunks)
    return {
        "zero": zero,
        "scores": pd.concat([c.scores for c in chunks], ignore_index=True),
        "pairs": pd.concat([c.pair_deltas for c in chunks], ignore_index=True),
        "anchor_tokens": tokens,
        "mean_anchor_tokens": round(anchor_lengths.mean()),
        "passes": sum(c.anchor_passes for c in chunks),
        "passes_total": sum(c.anchor_passes_total for c in chunks),
        "tokens_per_s": engine_tokens / seconds,
        # Empty without the plain forwards (with_raw=False). Same numerator, so each ratio is a time ratio.
        "engine_vs_raw_per_repeat": [
            round((engine_tokens / e) / (raw_tokens / r), 3) for e, r in zip(engine_runs, raw_runs, strict=False)
        ],
        "engine_vs_same_rows_per_repeat": [
            round((engine_tokens / e) / (tokens / r), 3) for e, r in zip(engine_runs, same_rows_runs, strict=False)
        ],
        "raw_tokens_per_s": raw_tokens / raw_seconds,
        "same_rows_tokens_per_s": tokens / same_rows_seconds,
        "zero_shot_tokens_per_s": int(anchor_lengths.sum()) / zero_seconds,
    }


def anchor_token_ids(
    loaded: LoadedModel, anchors: pd.DataFrame, template_name: str
) -> list[tuple[list[int], list[int]]]:
    template = get_template(template_name)
    return [
        (
            encode(loaded.tokenizer, template.prompt(a.instruction, a.input)),
            encode(loaded.tokenizer, template.response(a.output)),
        )
        for a in anchors.itertuples()
    ]


@torch.inference_mode()
def concat_logprob(loaded: LoadedModel, context: list[int], response: list[int]) -> float:
    """log p(response | context) from one uncached forward of the concatenated ids, summed in float64."""
    ids = torch.tensor([context + response], device=loaded.device)
    logprobs = loaded.model(input_ids=ids).logits[0, len(context) - 1 : -1].double().log_softmax(-1)
    return float(logprobs.gather(1, ids[0, len(context) :, None]).sum())


def max_diff_vs_concat(
    loaded: LoadedModel, anchors: pd.DataFrame, candidates: pd.DataFrame, engine: dict[str, Any], limit: int
) -> float:
    bos = loaded.bos_token_id
    anchor_ids = anchor_token_ids(loaded, anchors, "nuggets")
    demos = demonstration_ids(loaded, candidates, get_template("nuggets"), "\n\n")
    one_shot = engine["pairs"].set_index(["candidate_id", "anchor_id"])["one_shot_logprob"]
    diffs = [
        abs(concat_logprob(loaded, [bos, *p], r) - z)
        for (p, r), z in zip(anchor_ids, engine["zero"]["logprob_sum"], strict=True)
    ]
    pairs = [(c, a) for c in range(len(candidates)) for a in range(len(anchors))][:limit]
    for c, a in pairs:
        prompt, response = anchor_ids[a]
        exact = concat_logprob(loaded, [bos, *demos[c], *prompt], response)
        diffs.append(abs(exact - one_shot[(candidates.id[c], anchors.id[a])]))
    return max(diffs)


@torch.inference_mode()
def reference_logprobs(
    loaded: LoadedModel, prefix: list[int] | None, rows: list[tuple[list[int], list[int]]], max_len: int, batch: int
) -> list[float]:
    """The paper's scorer: padded rows, full-vocabulary log-softmax, per-sample gather loop."""
    model, device, bos = loaded.model, loaded.device, loaded.bos_token_id
    past = None
    if prefix is not None:
        past = model(input_ids=torch.tensor([prefix], device=device), use_cache=True).past_key_values
        past = [(layer.keys, layer.values) for layer in past.layers]
    out = []
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        ids = torch.full((len(chunk), max_len), loaded.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros(len(chunk), max_len, dtype=torch.long)
        spans = []
        for i, (prompt, response) in enumerate(chunk):
            full = ([bos, *prompt, *response])[:max_len]
            ids[i, : len(full)] = torch.tensor(full)
            mask[i, : len(full)] = 1
            spans.append((min(1 + len(prompt), max_len), len(full)))
        ids, mask = ids.to(device), mask.to(device)
        kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
        if past is not None:
            n = len(chunk)
            kwargs["past_key_values"] = DynamicCache(
                ddp_cache_data=[(k.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1)) for k, v in past]
            )
            kwargs["attention_mask"] = torch.cat(
                [torch.ones(n, len(prefix), dtype=torch.long, device=device), mask], dim=1
            )
        logprobs = torch.log_softmax(model(**kwargs).logits, dim=-1)
        for row_ids, (begin, end), row_logprobs in zip(ids, spans, logprobs, strict=True):
            # A response cut away entirely scores 0, as the paper's empty slice sums to 0.
            picked = torch.gather(row_logprobs[begin - 1 : end - 1], -1, row_ids[begin:end].unsqueeze(1))
            out.append(torch.sum(picked).item())
    return out


def run_reference(
    loaded: LoadedModel, anchors: pd.DataFrame, candidates: pd.DataFrame, max_len: int, batch: int, repeats: int
) -> tuple[float, np.ndarray]:
    """Seconds for the one-shot pass over all candidates, and the one-shot-beats-zero-shot verdicts."""
    rows = anchor_token_ids(loaded, anchors, "nuggets")
    demos = demonstration_ids(loaded, candidates, get_template("nuggets"), "\n\n")
    zero = np.array(reference_logprobs(loaded, None, rows, max_len, batch))

    def one_shot() -> np.ndarray:
        return np.array([reference_logprobs(loaded, [loaded.bos_token_id, *d], rows, max_len, batch) for d in demos])

    seconds, logprobs = best_of(repeats, one_shot)
    return seconds, (logprobs > zero[None, :]).reshape(-1)


def wins_matrix(pairs: pd.DataFrame, candidates: pd.DataFrame, anchors: pd.DataFrame) -> np.ndarray:
    table = pairs.pivot(index="candidate_id", columns="anchor_id", values="delta")
    return (table.loc[candidates.id, anchors.id].to_numpy() > 0).reshape(-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=SMOLLM2, choices=PRESETS)
    parser.add_argument("--candidates", type=positive_int, default=2)
    parser.add_argument("--anchors", type=positive_int, default=16, help="first N of the 100 KMeans anchors")
    parser.add_argument(
        "--dtype",
        default=DEFAULT_DTYPE,
        choices=["auto", "float32", "bfloat16"],
        help="engine dtype measured besides float32 (auto: bfloat16 where the hardware has it natively, else float32)",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument(
        "--batch-tokens", type=positive_int, default=None, help="engine token budget (default: by device)"
    )
    parser.add_argument("--candidates-per-pass", type=positive_int, default=ScoringConfig.candidates_per_pass)
    parser.add_argument("--threshold", type=float, default=0.8, help="decision-mode threshold")
    parser.add_argument(
        "--reference-batch", type=positive_int, default=8, help="anchor rows per forward in the paper port"
    )
    parser.add_argument(
        "--concat-pairs", type=positive_int, default=32, help="one-shot pairs rechecked without a cache"
    )
    parser.add_argument("--repeats", type=positive_int, default=3, help="interleaved engine / plain-forward repeats")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]

    dtype = str(resolve_dtype(args.dtype, resolve_device(args.device))).removeprefix("torch.")
    anchors, candidates = load_examples(args)
    config = ScoringConfig(batch_tokens=args.batch_tokens, candidates_per_pass=args.candidates_per_pass)
    fp32 = load_model(args.model, dtype="float32", device=args.device)
    exact = run_engine(fp32, anchors, candidates, config, args.repeats)
    tokens = exact["anchor_tokens"]
    figures: dict[str, Any] = {
        "engine_tokens_per_s_fp32": exact["tokens_per_s"],
        "raw_forward_tokens_per_s_fp32": exact["raw_tokens_per_s"],
        "engine_vs_raw_fp32": exact["tokens_per_s"] / exact["raw_tokens_per_s"],
        "engine_vs_raw_per_repeat_fp32": exact["engine_vs_raw_per_repeat"],
        "engine_vs_same_rows_fp32": exact["tokens_per_s"] / exact["same_rows_tokens_per_s"],
        "same_rows_vs_raw_fp32": exact["same_rows_tokens_per_s"] / exact["raw_tokens_per_s"],
        "max_abs_logprob_diff_vs_concat": max_diff_vs_concat(fp32, anchors, candidates, exact, args.concat_pairs),
    }

    engine, loaded, agreement = exact, fp32, None
    if dtype != "float32":
        loaded = load_model(args.model, dtype=dtype, device=args.device)
        engine = run_engine(loaded, anchors, candidates, config, args.repeats)
        same = wins_matrix(engine["pairs"], candidates, anchors) == wins_matrix(exact["pairs"], candidates, anchors)
        agreement = float(same.mean())

    # The product's default dtype here ("auto": bfloat16 where native, else float32), whatever --dtype measured.
    default_dtype = str(resolve_dtype(DEFAULT_DTYPE, resolve_device(args.device))).removeprefix("torch.")
    default_run = {"float32": exact, dtype: engine}.get(default_dtype)
    if default_run is None:
        default_model = load_model(args.model, dtype=default_dtype, device=args.device)
        default_run = run_engine(default_model, anchors, candidates, config, args.repeats, with_raw=False)
        del default_model

    decision_config = ScoringConfig(
        batch_tokens=args.batch_tokens, candidates_per_pass=args.candidates_per_pass, decision_threshold=args.threshold
    )
    decided = run_engine(loaded, anchors, candidates, decision_config, 1, with_raw=False)
    same_selection = set(select_golden(decided["scores"], threshold=args.threshold).candidate_id) == set(
        select_golden(engine["scores"], threshold=args.threshold).candidate_id
    )
    engine_peak = peak_rss_mb()

    reference_seconds, reference_wins = run_reference(
        fp32, anchors, candidates, PAPER_MAX_LEN, args.reference_batch, args.repeats
    )
    longest = 1 + int(max(len(p) + len(r) for p, r in anchor_token_ids(fp32, anchors, "nuggets")))
    full_seconds, _ = run_reference(fp32, anchors, candidates, longest, args.reference_batch, args.repeats)
    reference, reference_full = tokens / reference_seconds, tokens / full_seconds
    exact_wins = wins_matrix(exact["pairs"], candidates, anchors)

    figures = {
        "model": args.model,
        "dtype": dtype,
        "device": args.device,
        "cpu": cpu_name(),
        "cpu_native_bfloat16": cpu_has_native_bfloat16(),
        "threads": torch.get_num_threads(),
        "candidates": len(candidates),
        "anchors": len(anchors),
        "anchor_tokens": tokens,
        "mean_anchor_tokens": exact["mean_anchor_tokens"],
        "batch_tokens": config.budget(resolve_device(args.device)),
        "candidates_per_pass": args.candidates_per_pass,
        "engine_tokens_per_s": engine["tokens_per_s"],
        "raw_forward_tokens_per_s": engine["raw_tokens_per_s"],
        "engine_vs_raw": engine["tokens_per_s"] / engine["raw_tokens_per_s"],
        "engine_vs_raw_per_repeat": engine["engine_vs_raw_per_repeat"],
        # A plain forward of the engine's own padded rows, without the prefix (same_rows_forward).
        "same_rows_forward_tokens_per_s": engine["same_rows_tokens_per_s"],
        "engine_vs_same_rows": engine["tokens_per_s"] / engine["same_rows_tokens_per_s"],
        "engine_vs_same_rows_per_repeat": engine["engine_vs_same_rows_per_repeat"],
        # The ceiling these anchors set for any scorer: a plain forward of their own rows against uniform rows.
        "same_rows_vs_raw": engine["same_rows_tokens_per_s"] / engine["raw_tokens_per_s"],
        **figures,
        "zero_shot_tokens_per_s": engine["zero_shot_tokens_per_s"],
        "reference_tokens_per_s": reference,
        "reference_full_tokens_per_s": reference_full,
        "speedup_vs_reference_full_fp32": exact["tokens_per_s"] / reference_full,
        "default_dtype": default_dtype,
        "speedup_default_vs_reference": default_run["tokens_per_s"] / reference,
        "reference_verdict_agreement": float((reference_wins == exact_wins).mean()),
        "verdict_agreement_bf16_vs_fp32": agreement,  # null unless --dtype bfloat16
        "decision_mode_threshold": args.threshold,
        "decision_mode_pass_fraction": decided["passes"] / decided["passes_total"],
        "decision_mode_same_selection": same_selection,
        "peak_rss_mb": engine_peak,
        "peak_rss_mb_with_reference": peak_rss_mb(),
        "load_average_start_end": [load_before, os.getloadavg()[0]],
    }
    print(json.dumps({k: round(v, 6) if isinstance(v, float) else v for k, v in figures.items()}))


if __name__ == "__main__":
    main()
