"""The (candidate, anchor) matrix behind selection: score it exactly once, then read and replay it.

    .venv/bin/python benchmarks/selection.py score            # resumable: re-run to continue
    .venv/bin/python benchmarks/selection.py --pairs FILE     # readout + adaptive replay on any pair table

``score`` scores the study's pool (the first ``--pool`` candidates by content id of the shipped Alpaca set, the
same slice ``candidates(limit=...)`` takes) against the paper's 100 KMeans anchors (data/nuggets) with the real
engine (``core.scoring``), exactly: every candidate on every anchor. Candidates are scored in a seeded random
order, ``--chunk`` at a time, each chunk one Parquet file under ``--out`` (atomic write), so a killed run loses at
most one chunk, a fresh clone with the committed chunks resumes where they stop, and a matrix cut short is still
a random sample of the pool. ``manifest.json`` beside the chunks records the model, dtype, fingerprint, anchor set
hash, CPU and torch threads of every sitting; a sitting whose model, dtype or anchors differ is refused.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nuggets_pipeline.core.anchors import candidate_pool, file_anchors
from nuggets_pipeline.core.data import ingest
from nuggets_pipeline.core.ids import ids_hash
from nuggets_pipeline.core.modeling import SMOLLM2, load_model
from nuggets_pipeline.core.paths import ALPACA_CLEANED, KMEANS_100_ANCHORS, shipped
from nuggets_pipeline.core.scoring import ScoringConfig, score_one_shot, score_zero_shot
from nuggets_pipeline.core.storage import write_parquet_atomic

MATRIX_DIR = Path(__file__).resolve().parent / "selection"
PAIRS_FILE = "pairs.parquet"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def study_pool(pool_size: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The paper's 100 KMeans anchors and the study's pool: the first ``pool_size`` by id, anchors removed."""
    anchors = file_anchors(ingest([shipped(KMEANS_100_ANCHORS)]).instructions).anchors
    instructions = ingest([shipped(ALPACA_CLEANED)]).instructions
    pool = candidate_pool(instructions, anchors, "base", 1, pool_size)
    return anchors, pool


def chunk_files(out: Path) -> list[Path]:
    return sorted(out.glob("chunk-*.parquet"))


def read_manifest(out: Path) -> dict[str, Any]:
    path = out / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else {}


def write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    temporary = out / ".manifest.json.tmp"
    temporary.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(temporary, out / "manifest.json")


def score(args: argparse.Namespace) -> int:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    anchors, pool = study_pool(args.pool)
    loaded = load_model(args.model, dtype=args.dtype)
    identity = {
        "model": args.model,
        "dtype": str(loaded.dtype).removeprefix("torch."),
        "model_fingerprint": loaded.fingerprint,
        "anchor_set_hash": ids_hash(anchors["id"]),
        "pool": args.pool,
        "pool_ids_hash": ids_hash(pool["id"]),
        "order_seed": args.seed,
        "template": "nuggets",
        "separator": "\n\n",
        "max_length": None,
    }
    manifest = read_manifest(out)
    fixed = {k: v for k, v in identity.items() if k != "model_fingerprint"}
    if manifest and {k: manifest["identity"].get(k) for k in fixed} != fixed:
        differ = sorted(k for k in fixed if manifest["identity"].get(k) != fixed[k])
        print(f"{out}: this matrix was scored with other settings ({differ}); use another --out", file=sys.stderr)
        return 2
    manifest.setdefault("identity", identity)
    manifest["identity"]["model_fingerprint"] = loaded.fingerprint
    config = ScoringConfig(candidates_per_chunk=args.chunk)
    zero_path = out / "zero_shot.parquet"
    if not zero_path.exists():
        write_parquet_atomic(score_zero_shot(loaded, anchors, config), zero_path)
    zero = pd.read_parquet(zero_path)
    order = pool.sample(frac=1.0, random_state=args.seed).reset_index(drop=True)
    files = chunk_files(out)
    done = (
        set(pd.concat([pd.read_parquet(f, columns=["candidate_id"]) for f in files])["candidate_id"])
        if files
        else set()
    )
    todo = order[~order["id"].isin(done)]
    if args.limit is not None:
        todo = todo.head(args.limit)
    sitting: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "candidates": 0,
        "anchor_tokens": 0,
        "prefix_tokens": 0,
        "seconds": 0.0,
    }
    manifest.setdefault("sittings", []).append(sitting)
    print(f"{len(done)} of {len(order)} candidates scored; {len(todo)} to score now in chunks of {args.chunk}")
    index = len(files)
    for chunk in score_one_shot(loaded, anchors, zero, todo, config):
        write_parquet_atomic(chunk.pair_deltas, out / f"chunk-{index:04d}.parquet")
        index += 1
        sitting["candidates"] += len(chunk.scores)
        sitting["anchor_tokens"] += chunk.anchor_tokens
        sitting["prefix_tokens"] += chunk.prefix_tokens
        sitting["seconds"] = round(sitting["seconds"] + chunk.seconds, 1)
        write_manifest(out, manifest)
        total = len(done) + sitting["candidates"]
        rate = sitting["anchor_tokens"] / sitting["seconds"]
        left = (len(order) - total) * 100 * zero[["prompt_tokens", "response_tokens"]].sum(axis=1).mean() / rate
        print(f"{total}/{len(order)} candidates, {chunk.tokens_per_s:.0f} anchor tokens/s, ~{left / 3600:.1f} h left")
        sys.stdout.flush()
    files = chunk_files(out)
    pairs = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    if pairs["candidate_id"].nunique() == len(order):
        write_parquet_atomic(pairs.sort_values(["candidate_id", "anchor_id"]).reset_index(drop=True), out / PAIRS_FILE)
        print(f"complete: {out / PAIRS_FILE} holds {len(pairs)} pairs")
    write_manifest(out, manifest)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    scoring = sub.add_parser("score", help="score the study pool exactly against the 100 KMeans anchors")
    scoring.add_argument("--model", default=SMOLLM2)
    scoring.add_argument("--dtype", default="auto", help="auto: bfloat16 where the CPU computes it natively")
    scoring.add_argument("--pool", type=int, default=600)
    scoring.add_argument("--chunk", type=int, default=8, help="candidates per checkpoint file")
    scoring.add_argument("--seed", type=int, default=0, help="order in which candidates are scored")
    scoring.add_argument("--limit", type=int, default=None, help="score at most this many candidates now")
    scoring.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    scoring.add_argument("--out", type=Path, default=MATRIX_DIR)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "score":
        return score(args)
    build_parser().print_help()
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
