"""Adaptive one-shot scoring of a shard, crash-safe: screening, then refinement rounds (the adaptive mode).

- **Screening** (``screen_shard``): every candidate of the shard gets the first ``first_anchors`` anchors of the
  seeded order (``core.adaptive.anchor_order``). The pool's screening counts, every shard's, are what refinement
  estimates the cut from, so every shard is screened before any is refined.
- **Refinement** (``refine_shard``): rounds of ``round_anchors`` more anchors for the candidates whose interval
  still straddles the cut (``core.adaptive.next_counts``). The cut is computed over the whole pool: this shard's
  current counts and every other shard's *screening* counts. That snapshot is fixed, so a shard's result never
  depends on which shards were refined before it (a backfill may run them in any order, or at once), and the
  replay (``replay_sharded``) reproduces it from a full matrix.

Crash safety: every pair scored goes to the shard's pair store (one Parquet file per chunk, atomic, read back by
``checkpoints.read_chunk_checkpoints``, so a corrupt file is set aside and its pairs re-scored). Before a round
scores anything its plan (each candidate's target anchor count) is written; a killed round is finished from its
plan on resume, so a resumed refinement takes exactly the rounds an uninterrupted one would. The store is keyed
by the scoring version (fingerprint and anchor-set hash) and holds plain pair deltas, so screening, refinement,
another confidence or another rule all reuse the pairs already scored.

Plain Python over ``scoring.score_one_shot`` and ``storage.Warehouse``: no Dagster.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from nuggets_pipeline.core.adaptive import AdaptiveConfig, anchor_order, estimate, interval, next_counts
from nuggets_pipeline.core.checkpoints import read_chunk_checkpoints
from nuggets_pipeline.core.ids import ids_hash
from nuggets_pipeline.core.modeling import LoadedModel
from nuggets_pipeline.core.reliability import SelectionRule
from nuggets_pipeline.core.scoring import PAIR_COLUMNS, SCORE_COLUMNS, ScoringConfig, demonstration_ids, score_one_shot
from nuggets_pipeline.core.shard_scoring import PAIR_DELTAS_TABLE, StaleZeroShotError
from nuggets_pipeline.core.storage import Warehouse, write_parquet_atomic
from nuggets_pipeline.core.templates import get_template

PAIR_STORE = "one_shot_pairs"  # checkpoint folder of the scored pairs, per shard and scoring version
SCREENING_TABLE = "one_shot_screening"
SCREENING_COLUMNS = [
    "candidate_id",
    "shard",
    "wins",
    "anchors_scored",
    "n_anchors",
    "mean_delta",
    "model_fingerprint",
    "anchor_set_hash",
    "order_seed",
    "first_anchors",
]
ADAPTIVE_COLUMNS = ["estimate_low", "estimate_high", "settled_early", "adaptive_rule", "adaptive_confidence"]
Log = Callable[[str], None]


class ScreeningIncompleteError(ValueError):
    """Refinement needs every shard of the pool screened with this scoring version and order."""


@dataclass
class AdaptiveResult:
    """A shard's refined scores (one row per candidate) and what it cost."""

    scores: pd.DataFrame
    pair_deltas: pd.DataFrame
    rounds: int  # refinement rounds taken (a resumed run counts those before the kill too)
    anchor_passes: int  # (candidate, anchor) pairs the shard holds now
    anchor_passes_exact: int
    passes_this_run: int
    anchor_tokens: int
    seconds: float

    @property
    def passes_fraction(self) -> float:
        return self.anchor_passes / self.anchor_passes_exact if self.anchor_passes_exact else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.anchor_tokens / self.seconds if self.seconds else 0.0


def pair_store(warehouse: Warehouse, shard: str, fingerprint: str, anchors_hash: str) -> Path:
    return warehouse.checkpoint_dir(PAIR_STORE, shard, f"{fingerprint}-{anchors_hash}")


def _check_zero_shot(zero_shot: pd.DataFrame, fingerprint: str, anchors_hash: str) -> None:
    stale = zero_shot[(zero_shot["model_fingerprint"] != fingerprint) | (zero_shot["anchor_set_hash"] != anchors_hash)]
    if len(stale):
        raise StaleZeroShotError(fingerprint, anchors_hash)


class _PairStore:
    """The shard's scored pairs on disk: read once, then appended to chunk by chunk."""

    def __init__(self, folder: Path, warn: Log) -> None:
        self.folder = folder
        chunks, self.next_index = read_chunk_checkpoints(folder, ("pairs",), ("candidate_id", "anchor_id"), warn)
        frames = [chunk["pairs"] for chunk in chunks.values()]
        self.pairs = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=PAIR_COLUMNS)
        self.pairs = self.pairs.drop_duplicates(["candidate_id", "anchor_id"], keep="last")

    def append(self, frame: pd.DataFrame) -> None:
        write_parquet_atomic(frame, self.folder / f"pairs-{self.next_index:05d}.parquet")
        self.next_index += 1
        frames = [self.pairs, frame] if len(self.pairs) else [frame]
        self.pairs = pd.concat(frames, ignore_index=True).drop_duplicates(["candidate_id", "anchor_id"], keep="last")

    def plans(self) -> list[Path]:
        return sorted(self.folder.glob("plan-*.parquet")) if self.folder.is_dir() else []


def prefix_counts(pairs: pd.DataFrame, candidate_ids: Sequence[str], order: Sequence[str]) -> pd.DataFrame:
    """Per candidate: how long a prefix of ``order`` is scored, its wins and mean delta over that prefix.

    Only the unbroken prefix counts: a pair scored out of order (a round cut short) waits for the ones before it.
    """
    ids = [str(c) for c in candidate_ids]
    table = np.full((len(ids), len(order)), np.nan)
    if len(pairs):
        rows = pd.Index(ids).get_indexer(pairs["candidate_id"].astype(str))
        columns = pd.Index([str(a) for a in order]).get_indexer(pairs["anchor_id"].astype(str))
        keep = (rows >= 0) & (columns >= 0)
        table[rows[keep], columns[keep]] = pairs["delta"].to_numpy(dtype=float)[keep]
    present = ~np.isnan(table)
    scored = np.where(present.all(axis=1), len(order), np.argmin(present, axis=1))
    in_prefix = np.arange(len(order))[None, :] < scored[:, None]
    deltas = np.where(in_prefix, table, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(scored > 0, deltas.sum(axis=1) / scored, np.nan)
    return pd.DataFrame(
        {
            "candidate_id": ids,
            "anchors_scored": scored.astype(np.int64),
            "wins": ((table > 0) & in_prefix).sum(axis=1).astype(np.int64),
            "mean_delta": mean,
        }
    )


def _score_to_targets(
    loaded: LoadedModel,
    anchor_set: pd.DataFrame,
    zero_shot: pd.DataFrame,
    candidates: pd.DataFrame,
    targets: pd.Series,
    order: Sequence[str],
    config: ScoringConfig,
    store: _PairStore,
) -> tuple[int, int, float]:
    """Score what each candidate lacks of its first ``targets[id]`` anchors; returns (pairs, tokens, seconds)."""
    have = set(zip(store.pairs["candidate_id"].astype(str), store.pairs["anchor_id"].astype(str), strict=True))
    wanted = {}
    for candidate, target in targets.items():
        missing = [a for a in order[: int(target)] if (str(candidate), a) not in have]
        if missing:
            wanted[str(candidate)] = missing
    if not wanted:
        return 0, 0, 0.0
    todo = candidates[candidates["id"].astype(str).isin(wanted)]
    pairs = tokens = 0
    seconds = 0.0
    for chunk in score_one_shot(loaded, anchor_set, zero_shot, todo, config, anchors_for=wanted):
        store.append(chunk.pair_deltas)  # one atomic file per chunk: a kill loses at most this chunk
        pairs += len(chunk.pair_deltas)
        tokens += chunk.anchor_tokens
        seconds += chunk.seconds
    return pairs, tokens, seconds


def screen_shard(
    loaded: LoadedModel,
    anchor_set: pd.DataFrame,
    zero_shot: pd.DataFrame,
    candidates: pd.DataFrame,
    config: ScoringConfig,
    adaptive: AdaptiveConfig,
    *,
    shard: str,
    fingerprint: str,
    warehouse: Warehouse,
    log: Log,
    warn: Log | None = None,
) -> pd.DataFrame:
    """Score the first ``first_anchors`` anchors of the order for every candidate; return the screening counts."""
    anchors_hash = ids_hash(anchor_set["id"])
    _check_zero_shot(zero_shot, fingerprint, anchors_hash)
    order = anchor_order(anchor_set["id"], adaptive.seed)
    store = _PairStore(pair_store(warehouse, shard, fingerprint, anchors_hash), warn or log)
    first = min(adaptive.first_anchors, len(order))
    targets = pd.Series(first, index=candidates["id"].astype(str))
    pairs, tokens, seconds = _score_to_targets(loaded, anchor_set, zero_shot, candidates, targets, order, config, store)
    rate = f", {tokens / seconds:.0f} anchor tokens/s" if seconds else ""
    log(f"{shard}: screened {len(candidates)} candidates on {first} anchors ({pairs} pairs scored now{rate})")
    counts = prefix_counts(store.pairs, candidates["id"], order[:first])
    return counts.assign(
        shard=shard,
        n_anchors=len(order),
        model_fingerprint=fingerprint,
        anchor_set_hash=anchors_hash,
        order_seed=adaptive.seed,
        first_anchors=first,
    )[SCREENING_COLUMNS]


def _pool_state(screening: pd.DataFrame, adaptive: AdaptiveConfig, fingerprint: str, anchors_hash: str) -> pd.DataFrame:
    """The pool's screening snapshot, refused unless every row is of this scoring version, order and size."""
    wrong = screening[
        (screening["model_fingerprint"] != fingerprint)
        | (screening["anchor_set_hash"] != anchors_hash)
        | (screening["order_seed"] != adaptive.seed)
        | (screening["first_anchors"] < adaptive.first_anchors)
        | (screening["anchors_scored"] < screening["first_anchors"])
    ]
    if len(wrong):
        shards = sorted(wrong["shard"].astype(str).unique())
        raise ScreeningIncompleteError(
            f"one_shot_screening of shard(s) {', '.join(shards)} was taken with another scoring version, anchor "
            f"order or first_anchors: materialise one_shot_screening for them again"
        )
    return screening.drop_duplicates("candidate_id", keep="last").set_index("candidate_id")


def _scores_frame(
    loaded: LoadedModel,
    candidates: pd.DataFrame,
    zero_shot: pd.DataFrame,
    pairs: pd.DataFrame,
    counts: pd.DataFrame,
    order: Sequence[str],
    config: ScoringConfig,
    adaptive: AdaptiveConfig,
    rule: SelectionRule,
) -> pd.DataFrame:
    """The shard's rows in one_shot_scores' layout: the estimate as golden score (exactly wins / n once every anchor
    is scored), its interval, and the pair bookkeeping exact scoring reports."""
    n = len(order)
    w, m = counts["wins"].to_numpy(), counts["anchors_scored"].to_numpy()
    low, high = interval(w, m, n, adaptive.confidence)
    demos = demonstration_ids(loaded, candidates, get_template(config.template), config.separator)
    demo_len = pd.Series([len(d) for d in demos], index=candidates["id"].astype(str))
    zero = zero_shot.set_index("anchor_id")
    anchor_len = (zero["prompt_tokens"] + zero["response_tokens"]).astype(np.int64)
    # Only each candidate's scored prefix of the order counts (pairs past it, from a run with other settings, wait).
    rank = pd.Series(np.arange(n), index=[str(a) for a in order])
    prefix = counts.set_index("candidate_id")["anchors_scored"]
    scored = pairs.assign(candidate_id=pairs["candidate_id"].astype(str), anchor_id=pairs["anchor_id"].astype(str))
    scored = scored[scored["anchor_id"].map(rank) < scored["candidate_id"].map(prefix)].copy()
    scored["demo"] = scored["candidate_id"].astype(str).map(demo_len)
    scored["anchor_tokens"] = scored["anchor_id"].map(anchor_len)
    scored["cut"] = (
        0
        if config.max_length is None
        else np.maximum(0, 1 + scored["demo"] + scored["anchor_tokens"] - config.max_length)
    )
    scored["cut"] = np.minimum(scored["cut"], scored["demo"])
    per = scored.groupby("candidate_id").agg(
        median_delta=("delta", "median"),
        truncated_pairs=("cut", lambda c: int((c > 0).sum())),
        prefix_tokens_cut=("cut", "sum"),
        anchor_tokens_scored=("anchor_tokens", "sum"),
    )
    frame = counts.set_index("candidate_id").join(per)
    frame = frame.assign(
        golden_score=estimate(w, m, n, adaptive.confidence),  # what the cut and select_golden compare
        n_anchors=n,
        verdict=np.where(m == n, "exact", "adaptive"),
        prefix_tokens=1 + demo_len.reindex(frame.index).to_numpy(),
        estimate_low=low,
        estimate_high=high,
        settled_early=m < n,
        adaptive_rule=json.dumps({k: v for k, v in vars(rule).items() if v is not None}, sort_keys=True),
        adaptive_confidence=adaptive.confidence,
    ).reset_index()
    for column in ("truncated_pairs", "prefix_tokens_cut", "anchor_tokens_scored"):
        frame[column] = frame[column].fillna(0).astype(np.int64)
    return frame[[*SCORE_COLUMNS, *ADAPTIVE_COLUMNS]]


def refine_shard(
    loaded: LoadedModel,
    anchor_set: pd.DataFrame,
    zero_shot: pd.DataFrame,
    candidates: pd.DataFrame,
    config: ScoringConfig,
    adaptive: AdaptiveConfig,
    rule: SelectionRule,
    screening: pd.DataFrame,
    *,
    shard: str,
    fingerprint: str,
    warehouse: Warehouse,
    log: Log,
    warn: Log | None = None,
) -> AdaptiveResult:
    """Refine ``shard`` round by round against the pool's ``screening`` snapshot (every shard's screening rows);
    resumes a killed run from its pair store and round plans. Writes the shard's pairs to PAIR_DELTAS_TABLE."""
    anchors_hash = ids_hash(anchor_set["id"])
    _check_zero_shot(zero_shot, fingerprint, anchors_hash)
    order = anchor_order(anchor_set["id"], adaptive.seed)
    n = len(order)
    ids = candidates["id"].astype(str)
    state = _pool_state(screening, adaptive, fingerprint, anchors_hash)
    missing = sorted(set(ids) - set(state.index))
    if missing:
        raise ScreeningIncompleteError(
            f"{len(missing)} candidates of shard {shard} have no screening row (e.g. {missing[:3]}): materialise "
            "one_shot_screening for every shard of the pool before one_shot_scores"
        )
    store = _PairStore(pair_store(warehouse, shard, fingerprint, anchors_hash), warn or log)
    plans = store.plans()
    rounds, passes, tokens, seconds = len(plans), 0, 0, 0.0
    started = time.perf_counter()
    plan = pd.read_parquet(plans[-1]).set_index("candidate_id")["target"] if plans else None
    while True:
        if plan is not None:  # finish the current round first (a resumed run's killed round included)
            done = _score_to_targets(loaded, anchor_set, zero_shot, candidates, plan, order, config, store)
            passes, tokens, seconds = passes + done[0], tokens + done[1], seconds + done[2]
        counts = prefix_counts(store.pairs, ids, order).set_index("candidate_id")
        pool = state[["wins", "anchors_scored"]].copy()
        pool.loc[counts.index, ["wins", "anchors_scored"]] = counts[["wins", "anchors_scored"]].to_numpy()
        target = next_counts(pool["wins"], pool["anchors_scored"], n, rule, adaptive)
        own = pd.Series(target, index=pool.index).loc[counts.index]
        if (own.to_numpy() <= counts["anchors_scored"].to_numpy()).all():
            break
        plan = own.rename("target")
        write_parquet_atomic(plan.reset_index(), store.folder / f"plan-{rounds:05d}.parquet")
        rounds += 1
        log(f"{shard}: round {rounds}: {int((own > counts['anchors_scored']).sum())} candidates get more anchors")
    counts = prefix_counts(store.pairs, ids, order)
    in_shard = store.pairs[store.pairs["candidate_id"].astype(str).isin(set(ids))]
    scores = _scores_frame(loaded, candidates, zero_shot, in_shard, counts, order, config, adaptive, rule)
    scores.insert(1, "shard", shard)
    scores["model_fingerprint"] = fingerprint
    scores["anchor_set_hash"] = anchors_hash
    scores["decision_threshold"] = float("nan")
    pairs = in_shard.assign(shard=shard)
    if len(pairs):
        warehouse.write(PAIR_DELTAS_TABLE, pairs, shard)
    return AdaptiveResult(
        scores=scores,
        pair_deltas=pairs,
        rounds=rounds,
        anchor_passes=int(counts["anchors_scored"].sum()),
        anchor_passes_exact=len(ids) * n,
        passes_this_run=passes,
        anchor_tokens=tokens,
        seconds=seconds or time.perf_counter() - started,
    )


def replay_sharded(
    wins_matrix: np.ndarray,
    shards: Sequence[str],
    rule: SelectionRule,
    adaptive: AdaptiveConfig,
    anchor_ids: Sequence[str],
) -> np.ndarray:
    """The anchors each candidate gets when ``refine_shard`` runs shard by shard on a full boolean matrix (rows:
    candidates, columns: ``anchor_ids``): what the live engine does, for the benchmark to replay."""
    matrix = np.asarray(wins_matrix, dtype=bool)
    n = matrix.shape[1]
    position = {str(a): i for i, a in enumerate(anchor_ids)}
    columns = [position[a] for a in anchor_order(anchor_ids, adaptive.seed)]
    cumulative = np.concatenate([np.zeros((len(matrix), 1)), np.cumsum(matrix[:, columns], axis=1)], axis=1)
    cumulative = cumulative.astype(np.int64)
    rows = np.arange(len(matrix))
    first = min(adaptive.first_anchors, n)
    screened = np.full(len(matrix), first)
    final = screened.copy()
    shard_of = np.asarray([str(s) for s in shards])
    for shard in np.unique(shard_of):
        own = shard_of == shard
        scored = screened.copy()
        while True:
            target = next_counts(cumulative[rows, scored], scored, n, rule, adaptive)
            step = np.where(own, np.maximum(target, scored), scored)
            if (step == scored).all():
                break
            scored = step
        final[own] = scored[own]
    return final


__all__ = [
    "ADAPTIVE_COLUMNS",
    "PAIR_STORE",
    "SCREENING_COLUMNS",
    "SCREENING_TABLE",
    "AdaptiveResult",
    "ScreeningIncompleteError",
    "pair_store",
    "prefix_counts",
    "refine_shard",
    "replay_sharded",
    "screen_shard",
]
