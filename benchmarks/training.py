"""Fine-tuning throughput with padded and with padding-free batches, on the same examples and steps.

    .venv/bin/python benchmarks/training.py --model smollm2-135m-instruct --examples 48 --steps 6

The examples are a seeded sample of the shipped Alpaca pool; each run trains the same ``--steps`` optimizer steps
of the ``cpu-demo`` profile (batch 4 x 2 accumulation, 256 tokens) from the same base, once with padded batches
(Alpaca's collator) and once padding-free, alternating ``--repeats`` times so both see the same load on a shared
machine. Figures: real (non-padding) tokens per second of training and the per-step losses of each run, which
must agree (the two batchings compute the same loss). Checkpoints are not written (save_steps > steps), so the
rate is the steady training rate. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from arguments import positive_int  # benchmarks/, beside this script

from nuggets_pipeline.core.data import ingest
from nuggets_pipeline.core.paths import ALPACA_CLEANED, shipped
from nuggets_pipeline.core.training import get_profile, train_sft


def run(model: str, examples: int, steps: int, repeats: int, seed: int) -> dict[str, Any]:
    pool = ingest([shipped(ALPACA_CLEANED)]).instructions
    subset = pool.sample(n=examples, random_state=seed).reset_index(drop=True)
    base = get_profile("cpu-demo", max_steps=steps, save_steps=steps + 1, logging_steps=1)
    figures: dict[str, list[float]] = {"padded": [], "padding_free": []}
    losses: dict[str, list[float]] = {}
    for _ in range(repeats):
        for name in figures:
            config = dataclasses.replace(base, padding_free=name == "padding_free")
            with tempfile.TemporaryDirectory() as folder:
                result = train_sft(model, subset, Path(folder), config, name, "benchmark")
            figures[name].append(result.tokens_per_second)
            losses[name] = [round(loss, 4) for _, loss in result.losses]
            print(f"{name}: {result.tokens_per_second:.1f} tokens/s, losses {losses[name]}", flush=True)
    best = {name: max(rates) for name, rates in figures.items()}
    return {
        "model": model,
        "examples": examples,
        "steps": steps,
        "repeats": repeats,
        "tokens_per_s_best": best,
        "tokens_per_s_all": figures,
        "speedup": best["padding_free"] / best["padded"],
        "losses": losses,
        "max_loss_gap": max(abs(a - b) for a, b in zip(losses["padded"], losses["padding_free"], strict=True)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--examples", type=positive_int, default=48)
    parser.add_argument("--steps", type=positive_int, default=6)
    parser.add_argument("--repeats", type=positive_int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(json.dumps(run(args.model, args.examples, args.steps, args.repeats, args.seed)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
