"""The (candidate, anchor) matrix behind selection: score it exactly once, then read and replay it.

    .venv/bin/python benchmarks/selection.py score            # resumable: re-run to continue
    .venv/bin/python benchmarks/selection.py --pairs FILE     # readout + adaptive replay on any pair table
    .venv/bin/python benchmarks/selection.py --synthetic      # the replay on generated pools (defaults chosen here)
    .venv/bin/python benchmarks/selection.py --live HOME      # a home's live adaptive scoring beside its replay

``score`` scores the study's pool (the first ``--pool`` candidates by content id of the shipped Alpaca set, the
same slice ``candidates(limit=...)`` takes) against the paper's 100 KMeans anchors (data/nuggets) with the real
engine (``core.scoring``), exactly: every candidate on every anchor. Candidates are scored in a seeded random
order, ``--chunk`` at a time, each chunk one Parquet file under ``--out`` (atomic write), so a killed run loses at
most one chunk, a fresh clone with the committed chunks resumes where they stop, and a matrix cut short is still
a random sample of the pool. ``manifest.json`` beside the chunks records the model, dtype, fingerprint, anchor set
hash, CPU and torch threads of every sitting; a sitting whose model, dtype or anchors differ is refused.

``--synthetic`` replays the same comparison on pools generated here (``synthetic_pairs``: abilities, anchor easiness
with a share of nearly-always-won-or-lost anchors, a second latent dimension and pair noise the adaptive rule's
Rasch model does not know). The adaptive defaults were chosen on these, never on a scored matrix.

``--live HOME`` sets the live adaptive scoring of a home (the study's: ``NUGGETS_HOME=.nuggets_study``) beside the
replay of the same rule, settings and shards on the committed exact matrix: the pairs both scored (do their wins
agree?), the anchors each candidate got, the passes spent and the selections (live against replay, each against
exact scoring's). Replay and engine share ``core.adaptive``, so where every shared pair's win agrees they must
select the same candidates; a bfloat16 delta within rounding of zero may flip a win between two runs, and each such
flip is counted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nuggets_pipeline.core.adaptive import AdaptiveConfig, agreement, compare_with_exact, quality, replay
from nuggets_pipeline.core.anchors import candidate_pool, file_anchors
from nuggets_pipeline.core.data import ingest
from nuggets_pipeline.core.devices import cpu_name
from nuggets_pipeline.core.ids import ids_hash
from nuggets_pipeline.core.modeling import SMOLLM2, load_model
from nuggets_pipeline.core.paths import ALPACA_CLEANED, KMEANS_100_ANCHORS, shipped
from nuggets_pipeline.core.reliability import SelectionRule, pair_matrix, readout, select_mask
from nuggets_pipeline.core.scoring import ScoringConfig, score_one_shot, score_zero_shot
from nuggets_pipeline.core.storage import write_parquet_atomic

MATRIX_DIR = Path(__file__).resolve().parent / "selection"
PAIRS_FILE = "pairs.parquet"


def git_commit() -> str:
    """The commit the sitting ran (the engine's numerics may change between sittings: bfloat16 rounding)."""
    import subprocess

    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=MATRIX_DIR.parent
    )
    return done.stdout.strip() or "unknown"


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
        "commit": git_commit(),
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


PAIR_COLUMNS = ["candidate_id", "anchor_id", "delta"]
NOISE_REPEATS = 3  # noise draws of the live comparison's noisy replay
# Generated pools for choosing the adaptive defaults: a base pool, a tightly clustered one, and one far from the
# Rasch model (strong second dimension and pair noise).
SYNTHETIC_POOLS = {
    "base": {},
    "clustered": {"ability_sd": 0.35},
    "off_model": {"interaction_sd": 1.4, "second_sd": 0.7},
}


def synthetic_pairs(
    seed: int,
    candidates: int = 600,
    anchors: int = 100,
    ability_sd: float = 0.6,
    extreme_share: float = 0.4,
    interaction_sd: float = 0.8,
    second_sd: float = 0.4,
) -> pd.DataFrame:
    """A pair table drawn from a model richer than the adaptive rule's: delta = ability + easiness + a second
    latent dimension (candidate x anchor loadings) + pair noise + logistic noise; ``extreme_share`` of the anchors
    are nearly always won or lost (|easiness| about 3.2), as on the real matrices."""
    rng = np.random.default_rng(seed)
    ability = rng.normal(0, ability_sd, candidates)
    extreme = rng.random(anchors) < extreme_share
    easiness = np.where(
        extreme, rng.choice([-1, 1], anchors) * rng.normal(3.2, 0.6, anchors), rng.normal(0, 1.0, anchors)
    )
    second = np.outer(rng.normal(0, second_sd, candidates), rng.normal(0, 1, anchors))
    deltas = ability[:, None] + easiness[None, :] + second + rng.normal(0, interaction_sd, (candidates, anchors))
    deltas += rng.logistic(size=(candidates, anchors))
    return pd.DataFrame(
        {
            "candidate_id": np.repeat([f"c{i:04d}" for i in range(candidates)], anchors),
            "anchor_id": np.tile([f"a{j:03d}" for j in range(anchors)], candidates),
            "delta": deltas.reshape(-1),
        }
    )


def replay_synthetic(args: argparse.Namespace) -> int:
    """The adaptive comparison on each generated pool (one JSON line each), for the settings given."""
    rule = SelectionRule(top_fraction=args.top_fraction)
    config = AdaptiveConfig(
        first_anchors=args.first_anchors, round_anchors=args.round_anchors, calibration_share=args.calibration_share
    )
    for index, (name, shape) in enumerate(SYNTHETIC_POOLS.items()):
        matrix = pair_matrix(synthetic_pairs(100 + index, **shape))
        figures = compare_with_exact(matrix, rule, args.confidences, config, seeds=args.seeds)
        print(json.dumps({"pool": name, **vars(config), "seeds": list(args.seeds), **figures}, allow_nan=False))
    return 0


CONFIDENCES = (0.5, 0.8, 0.9, 0.95, 0.99, 1.0)


def read_pairs(path: Path) -> pd.DataFrame:
    """A pair table: one Parquet or CSV file, or a folder of Parquet files (the chunks of a matrix being scored,
    a warehouse's one_shot_pair_deltas); files of a folder without the pair columns (zero_shot.parquet) are
    skipped."""
    if path.is_dir():
        files = [f for f in sorted(path.glob("*.parquet")) if set(PAIR_COLUMNS) <= set(pq.read_schema(f).names)]
        if not files:
            raise ValueError(f"{path}: no Parquet file with the columns {', '.join(PAIR_COLUMNS)}")
        return pd.concat([pd.read_parquet(f, columns=PAIR_COLUMNS) for f in files], ignore_index=True)
    frame = pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)
    if missing := set(PAIR_COLUMNS) - set(frame.columns):
        raise ValueError(f"{path}: a pair table needs the columns {', '.join(PAIR_COLUMNS)}; missing {sorted(missing)}")
    return frame[PAIR_COLUMNS]


def replay_pairs(args: argparse.Namespace) -> int:
    """The reliability readout and the adaptive replay of a stored pair table; the last line is one JSON object."""
    try:
        pairs = read_pairs(args.pairs)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    matrix = pair_matrix(pairs)
    rule = SelectionRule(top_fraction=args.top_fraction)
    found = readout(matrix, rule, seed=args.seeds[0])
    print(found.line)
    candidates, anchors = matrix.shape
    if candidates < 2 * len(args.seeds) or not rule.k(candidates):
        print(f"error: {candidates} complete candidates are too few to replay a selection", file=sys.stderr)
        return 2
    config = AdaptiveConfig(
        first_anchors=args.first_anchors, round_anchors=args.round_anchors, calibration_share=args.calibration_share
    )
    started = time.perf_counter()
    figures = compare_with_exact(matrix, rule, args.confidences, config, seeds=args.seeds)
    print(
        f"replay of the {rule.describe()} on {candidates} candidates x {anchors} anchors, first {config.first_anchors} "
        f"anchors ({config.calibration_share:.0%} calibration sample on all) then rounds of {config.round_anchors}, "
        f"means over anchor orders {list(args.seeds)} ({time.perf_counter() - started:.0f} s):"
    )
    print(
        "  confidence  passes  agreement  quality  rounds  |  random subset: anchors  agreement  quality  |  "
        "plain rule: passes  agreement  quality"
    )
    rows = zip(figures["adaptive"], figures["fixed_subsample"], figures["plain_rule"], strict=True)
    for adaptive, fixed, plain in rows:
        print(
            f"  {adaptive['confidence']:>10}  {adaptive['passes_fraction']:>6.1%}  {adaptive['agreement']:>9.3f}  "
            f"{adaptive['quality']:>7.3f}  {adaptive['rounds']:>6}  |  {fixed['anchors']:>22}  "
            f"{fixed['agreement']:>9.3f}  {fixed['quality']:>7.3f}  |  {plain['passes_fraction']:>18.1%}  "
            f"{plain['agreement']:>9.3f}  {plain['quality']:>7.3f}"
        )
    figures_readout = found.as_metadata()
    summary = {
        "pairs": str(args.pairs),
        "candidates": candidates,
        "candidates_incomplete": matrix.incomplete,
        "anchors": anchors,
        "selection": rule.describe(),
        "reliability": figures_readout["reliability"],
        "half_correlation": figures_readout["half_correlation"],
        "anchors_for_reliability_0_8": figures_readout["anchors_for_reliability_0_8"],
        "selection_overlap_halves": figures_readout["selection_overlap"],
        "uninformative_anchors": figures_readout["uninformative_anchors"],
        "observed_sd": figures_readout["observed_sd"],
        "binomial_sd": figures_readout["binomial_sd"],
        "verdict": figures_readout["verdict"],
        "first_anchors": config.first_anchors,
        "round_anchors": config.round_anchors,
        "calibration_share": config.calibration_share,
        "seeds": list(args.seeds),
        "adaptive_top_quarter" if args.top_fraction == 0.25 else "adaptive": figures["adaptive"],
        "fixed_subsample": figures["fixed_subsample"],
        # The calibration baseline (rounds of 10, normal interval with FPC, settled for good), same matrix.
        "plain_rule": figures["plain_rule"],
    }
    print(json.dumps(summary, allow_nan=False))
    return 0


def compare_live(args: argparse.Namespace) -> int:
    """A home's live adaptive scoring beside the replay of its rule on the exact matrix; ends with one JSON line."""
    from nuggets_pipeline.core.storage import Warehouse

    store = Warehouse(args.live / "warehouse")
    try:
        scores = store.read("one_shot_scores")
        screening = store.read("one_shot_screening")
        live_pairs = store.read("one_shot_pair_deltas")
        selected_ids = set(store.read("golden_subset")["id"].astype(str))
        matrix = pair_matrix(read_pairs(args.matrix))
    except (OSError, ValueError) as error:
        print(f"error: {error}; score the home in adaptive mode through golden_subset first", file=sys.stderr)
        return 2
    if scores.empty or "adaptive_rule" not in scores or scores["adaptive_rule"].isna().all():
        print(f"error: {args.live} holds no adaptive one_shot_scores", file=sys.stderr)
        return 2
    rule = SelectionRule(**json.loads(scores["adaptive_rule"].iloc[0]))
    config = AdaptiveConfig(
        confidence=float(scores["adaptive_confidence"].iloc[0]),
        first_anchors=int(screening["first_anchors"].iloc[0]),
        round_anchors=args.round_anchors,  # not stored with the scores: the run's setting, by default the core's
        seed=int(screening["order_seed"].iloc[0]),
        calibration_share=float(screening["calibration_share"].iloc[0]),
    )
    ids = matrix.candidate_ids
    live = scores.drop_duplicates("candidate_id", keep="last").set_index(scores["candidate_id"].astype(str))
    if set(live.index) != set(ids):
        print(
            f"error: the home scored {len(live)} candidates, the matrix holds {len(ids)} complete ones "
            f"({len(set(live.index) ^ set(ids))} differ): not the same pool",
            file=sys.stderr,
        )
        return 2
    live = live.reindex(ids)
    shards = live["shard"].astype(str).tolist()
    replayed = replay(
        matrix.wins,
        rule,
        config,
        deltas=matrix.deltas,
        candidate_ids=ids,
        anchor_ids=matrix.anchor_ids,
        shards=shards,
    )
    golden = matrix.golden_scores()
    exact = select_mask(golden, matrix.mean_delta(), ids, rule)
    live_selected = np.isin(ids, sorted(selected_ids))
    exact_pairs = pd.DataFrame(
        {
            "candidate_id": np.repeat(ids, matrix.shape[1]),
            "anchor_id": np.tile(matrix.anchor_ids, matrix.shape[0]),
            "exact_delta": matrix.deltas.ravel(),
        }
    )
    shared = live_pairs.astype({"candidate_id": str, "anchor_id": str}).merge(
        exact_pairs, on=["candidate_id", "anchor_id"]
    )
    flips = int(((shared["delta"] > 0) != (shared["exact_delta"] > 0)).sum())
    # Two runs of a low-precision engine differ by the rounding of each: their deltas' difference has sd
    # sqrt(2) times one run's noise. Replaying on the matrix with that much noise added to every delta says
    # whether the engine's noise explains the live run's departure from the replay, or something else does.
    noise_sd = float((shared["delta"] - shared["exact_delta"]).std() / np.sqrt(2)) if len(shared) > 1 else 0.0
    noisy = []
    for seed in range(NOISE_REPEATS if noise_sd > 0 else 0):
        deltas = matrix.deltas + np.random.default_rng(seed).normal(0.0, noise_sd, matrix.shape)
        again = replay(
            deltas > 0,
            rule,
            config,
            deltas=deltas,
            candidate_ids=ids,
            anchor_ids=matrix.anchor_ids,
            shards=shards,
        )
        noisy.append((agreement(again.selected, exact), quality(again.selected, exact, golden)))
    live_scored = live["anchors_scored"].to_numpy(dtype=np.int64)
    passes_exact = matrix.shape[0] * matrix.shape[1]
    summary = {
        "home": str(args.live),
        "candidates": matrix.shape[0],
        "anchors": matrix.shape[1],
        "selection": rule.describe(),
        "confidence": config.confidence,
        "first_anchors": config.first_anchors,
        "round_anchors": config.round_anchors,
        "calibration_share": config.calibration_share,
        "shared_pairs": len(shared),
        "win_flips": flips,
        "max_abs_delta_difference": round(float((shared["delta"] - shared["exact_delta"]).abs().max()), 5)
        if len(shared)
        else None,
        "live_passes_fraction": round(float(live_scored.sum() / passes_exact), 4),
        "replay_passes_fraction": round(replayed.passes_fraction, 4),
        "same_anchor_count": round(float(np.mean(live_scored == replayed.anchors_scored)), 4),
        "selected_live": int(live_selected.sum()),
        "selected_replay": int(replayed.selected.sum()),
        "live_vs_replay_agreement": round(agreement(live_selected, replayed.selected), 4),
        "live_vs_exact_agreement": round(agreement(live_selected, exact), 4),
        "replay_vs_exact_agreement": round(agreement(replayed.selected, exact), 4),
        "live_quality": round(quality(live_selected, exact, golden), 4),
        "replay_quality": round(quality(replayed.selected, exact, golden), 4),
        "engine_noise_sd": round(noise_sd, 4),
        "noisy_replay_vs_exact_agreement": round(float(np.mean([a for a, _ in noisy])), 4) if noisy else None,
        "noisy_replay_quality": round(float(np.mean([q for _, q in noisy])), 4) if noisy else None,
    }
    print(
        f"live adaptive scoring of {args.live} beside its replay on {args.matrix} ({rule.describe()}, confidence "
        f"{config.confidence}, first {config.first_anchors} anchors then rounds of {config.round_anchors}):\n"
        f"  pairs scored by both: {len(shared):,}, wins that differ: {flips} "
        f"(largest delta difference {summary['max_abs_delta_difference']} nats)\n"
        f"  anchor passes: live {summary['live_passes_fraction']:.1%}, replay {summary['replay_passes_fraction']:.1%} "
        f"of exact; same anchor count for {summary['same_anchor_count']:.1%} of candidates\n"
        f"  selections: live vs replay {summary['live_vs_replay_agreement']:.3f}; against exact: live "
        f"{summary['live_vs_exact_agreement']:.3f} (quality {summary['live_quality']:.3f}), replay "
        f"{summary['replay_vs_exact_agreement']:.3f} (quality {summary['replay_quality']:.3f})"
    )
    if noisy:
        print(
            f"  the replay with the engine's noise (sd {noise_sd:.3f} nats on every delta, {NOISE_REPEATS} draws): "
            f"against exact {summary['noisy_replay_vs_exact_agreement']:.3f} "
            f"(quality {summary['noisy_replay_quality']:.3f}), beside the live run's "
            f"{summary['live_vs_exact_agreement']:.3f}"
        )
    print(json.dumps(summary, allow_nan=False))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--pairs", type=Path, default=None, help="replay mode: a pair table (file or folder of Parquet files)"
    )
    parser.add_argument(
        "--synthetic", action="store_true", help="replay mode on generated pools (synthetic_pairs) instead of a table"
    )
    parser.add_argument(
        "--live", type=Path, default=None, help="a home (NUGGETS_HOME): its live adaptive scoring beside the replay"
    )
    parser.add_argument(
        "--matrix", type=Path, default=MATRIX_DIR, help="live mode: the exact pair table the replay runs on"
    )
    parser.add_argument("--top-fraction", type=float, default=0.25, help="replay mode: the selection replayed")
    parser.add_argument("--confidences", type=float, nargs="+", default=list(CONFIDENCES))
    parser.add_argument("--first-anchors", type=int, default=AdaptiveConfig.first_anchors)
    parser.add_argument("--round-anchors", type=int, default=AdaptiveConfig.round_anchors)
    parser.add_argument("--calibration-share", type=float, default=AdaptiveConfig.calibration_share)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="anchor orders averaged over")
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
    if args.pairs is not None:
        return replay_pairs(args)
    if args.synthetic:
        return replay_synthetic(args)
    if args.live is not None:
        return compare_live(args)
    if args.command == "score":
        return score(args)

    build_parser().print_help()
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
