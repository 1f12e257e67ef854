"""How far a bfloat16 pair delta is from float32's, and how often the win it decides flips.

    .venv/bin/python benchmarks/dtype_noise.py --candidates 4
    .venv/bin/python benchmarks/dtype_noise.py --model tiny-random-llama --candidates 2 --anchors 3  # a smoke run

Candidates are a seeded sample of the study's pool (`benchmarks/selection.py`'s: the shipped Alpaca set without
the paper's 100 KMeans anchors), scored on every one of those anchors by the engine, once in float32 and twice in
bfloat16 with two batchings (the default, and one candidate per pass under half the token budget), each with its
own zero-shot pass. Figures per bfloat16 run, over every (candidate, anchor) pair: the standard deviation and
the largest absolute difference of its deltas from float32's, and the wins (delta > 0) that differ; and the same
between the two bfloat16 batchings, which is what two sittings of one study (or a live run and a stored matrix)
see. The float32 run's share of pairs whose |delta| is under the bfloat16 noise says how many wins a bfloat16
run can decide only by chance. Wall times are printed, not compared (the dtype's speed is in benchmarks/
scoring.py). The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from arguments import positive_int
from selection import study_pool  # the study's pool and anchors, one definition

from nuggets_pipeline.core.devices import cpu_name
from nuggets_pipeline.core.modeling import load_model
from nuggets_pipeline.core.scoring import ScoringConfig, score_one_shot, score_zero_shot


def pair_deltas(
    model: str, dtype: str, anchors: pd.DataFrame, candidates: pd.DataFrame, config: ScoringConfig
) -> tuple[pd.Series, float]:
    """Every (candidate, anchor) delta of ``candidates`` in ``dtype``, indexed by the pair, and the seconds taken."""
    loaded = load_model(model, dtype=dtype)
    started = time.perf_counter()
    zero = score_zero_shot(loaded, anchors, config)
    chunks = [chunk.pair_deltas for chunk in score_one_shot(loaded, anchors, zero, candidates, config)]
    deltas = pd.concat(chunks).set_index(["candidate_id", "anchor_id"])["delta"].sort_index()
    return deltas, time.perf_counter() - started


def differences(deltas: pd.Series, reference: pd.Series) -> dict[str, Any]:
    gap = deltas - reference
    return {
        "sd": round(float(gap.std()), 4),
        "max_abs": round(float(gap.abs().max()), 4),
        "win_flips": int(((deltas > 0) != (reference > 0)).sum()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--candidates", type=positive_int, default=4)
    parser.add_argument(
        "--anchors", type=positive_int, default=None, help="first N of the study's 100 anchors (default all)"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=positive_int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    anchors, pool = study_pool(600)
    anchors = anchors.head(args.anchors) if args.anchors is not None else anchors
    candidates = pool.sample(n=args.candidates, random_state=args.seed)
    default = ScoringConfig()
    budget = default.batch_tokens or 512
    other = ScoringConfig(candidates_per_pass=1, batch_tokens=max(64, budget // 2))
    reference, f32_s = pair_deltas(args.model, "float32", anchors, candidates, default)
    runs = {
        "default batching": pair_deltas(args.model, "bfloat16", anchors, candidates, default),
        "other batching": pair_deltas(args.model, "bfloat16", anchors, candidates, other),
    }
    summary: dict[str, Any] = {
        "cpu": cpu_name(),
        "torch_threads": torch.get_num_threads(),
        "pairs": len(reference),
        "float32_mean_abs_delta": round(float(reference.abs().mean()), 4),
        "float32_s": round(f32_s, 1),
    }
    print(f"{len(reference)} pairs ({args.candidates} candidates x {len(anchors)} anchors), {summary['cpu']}")
    print(f"float32: mean |delta| {summary['float32_mean_abs_delta']} nats, {f32_s:.0f} s")
    for name, (deltas, seconds) in runs.items():
        versus = differences(deltas, reference)
        summary[name] = {**versus, "seconds": round(seconds, 1)}
        print(
            f"bfloat16, {name}: vs float32 sd {versus['sd']} nats, max {versus['max_abs']}, "
            f"{versus['win_flips']} wins differ; {seconds:.0f} s"
        )
    between = differences(runs["default batching"][0], runs["other batching"][0])
    noise = summary["default batching"]["sd"]
    summary["between_bfloat16_batchings"] = between
    summary["float32_share_within_bfloat16_sd"] = round(float((reference.abs() < noise).mean()), 4)
    print(
        f"bfloat16 against bfloat16 (two batchings): sd {between['sd']} nats, max {between['max_abs']}, "
        f"{between['win_flips']} wins differ; {summary['float32_share_within_bfloat16_sd']:.1%} of float32's "
        f"pairs have |delta| under the bfloat16 sd"
    )
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
