"""Adaptive one-shot scoring of a shard, crash-safe: screening, then refinement rounds (the adaptive mode).

- **Screening** (``screen_shard``): every candidate of the shard gets the first ``first_anchors`` anchors of the
  seeded order (``core.adaptive.anchor_order``), and the shard's calibration sample
  (``core.adaptive.calibration_members``) every anchor; the calibration rows carry their wins anchor by anchor. The
  pool's screening rows, every shard's, are what the pool model (``core.adaptive.fit_pool_model``: anchor
  easiness, the prior of ability, the refinement order) and the cut are computed from, so every shard is screened
  before any is refined.
- **Refinement** (``refine_shard``): rounds of ``round_anchors`` more anchors of the model's order for the
  candidates whose interval still straddles the cut (``core.adaptive.next_counts``). The cut is computed over the
  whole pool: this shard's current counts and every other shard's *screening* counts. That snapshot is fixed, so a
  shard's result never depends on which shards were refined before it (a backfill may run them in any order, or at
  once), and the replay (``core.adaptive.replay`` with the shards) reproduces it from a full matrix.

Crash safety: every pair scored goes to the shard's pair store (one Parquet file per chunk, atomic, read back by
``checkpoints.read_chunk_checkpoints``, so a corrupt file is set aside and its pairs re-scored). Before a round
scores anything its plan (each candidate's target anchor count) is written, in a folder named by everything the
rounds depend on (the rule, the settings and the pool's screening snapshot); a killed round is finished from its
plan on resume, and each candidate's state is its scored prefix capped at the current plan, so a resumed refinement
takes exactly the rounds an uninterrupted one would. The store is keyed by the scoring version (fingerprint and
anchor-set hash) and holds plain pair deltas, so screening, refinement, another confidence or another rule all
reuse the pairs already scored.

Plain Python over ``scoring.score_one_shot`` and ``storage.Warehouse``: no Dagster.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NotRequired, TypedDict, Unpack

import numpy as np
import pandas as pd

from nuggets_pipeline.core.adaptive import (
    AdaptiveConfig,
    AnchorModel,
    PoolCounts,
    anchor_order,
    calibration_members,
    fit_pool_model,
    next_counts,
)
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
    "calibration",  # scored on every anchor at screening: the sample the anchors' easiness is fitted on
    "calibration_share",
    "anchor_wins",  # calibration rows: "0"/"1" per anchor of the screening order; "" for the others
]
ADAPTIVE_COLUMNS = ["estimate_low", "estimate_high", "settled_early", "adaptive_rule", "adaptive_confidence"]
Log = Callable[[str], None]


class ShardRun(TypedDict):
    """Where a shard's adaptive scoring runs and reports: the keyword arguments screening and refinement share."""

    shard: str
    fingerprint: str
    warehouse: Warehouse
    log: Log
    warn: NotRequired[Log | None]


@dataclass(frozen=True, eq=False)
class ShardInputs:
    """What a shard's adaptive scoring scores with, in screening and refinement alike: the model, the anchors and
    their zero-shot rows, the shard's candidates and the scoring settings."""

    loaded: LoadedModel
    anchor_set: pd.DataFrame
    zero_shot: pd.DataFrame
    candidates: pd.DataFrame
    config: ScoringConfig


class ScreeningIncompleteError(ValueError):
    """Refinement needs every shard of the pool screened with this scoring version and order."""


@dataclass
class AdaptiveResult:
    """A shard's refined scores (one row per candidate) and what it cost."""

    scores: pd.DataFrame
    pair_deltas: pd.DataFrame
    rounds: int  # refinement rounds taken (a resumed run counts those before the kill too)
    anchor_passes: int  # (candidate, anchor) pairs the scores count
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


def stored_pairs(warehouse: Warehouse, shard: str, fingerprint: str, anchors_hash: str) -> pd.DataFrame:
    """Every pair the shard's store holds for this scoring version (``PAIR_COLUMNS``), in no particular order."""
    return _PairStore(pair_store(warehouse, shard, fingerprint, anchors_hash), lambda _: None).pairs[PAIR_COLUMNS]


def seed_pair_store(
    warehouse: Warehouse, shard: str, fingerprint: str, anchors_hash: str, pairs: pd.DataFrame, log: Log
) -> int:
    """Add ``pairs`` scored elsewhere with the same scoring version to the shard's store, as one more chunk, so
    screening and refinement score only what neither holds; returns how many pairs were new here. The caller
    vouches for the version (a pair's delta is then the same computation, whoever ran it)."""
    store = _PairStore(pair_store(warehouse, shard, fingerprint, anchors_hash), log)
    have = set(zip(store.pairs["candidate_id"].astype(str), store.pairs["anchor_id"].astype(str), strict=True))
    keys = zip(pairs["candidate_id"].astype(str), pairs["anchor_id"].astype(str), strict=True)
    new = pairs[[key not in have for key in keys]].drop_duplicates(["candidate_id", "anchor_id"])
    if len(new):
        store.append(new[PAIR_COLUMNS].reset_index(drop=True))
    return len(new)


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


@dataclass
class _Shard:
    """What screening and refinement both open first: the checked scoring version, the order, the pair store."""

    anchors_hash: str
    order: list[str]  # the screening order (anchor_order)
    store: _PairStore


def _open_shard(anchor_set: pd.DataFrame, zero_shot: pd.DataFrame, adaptive: AdaptiveConfig, run: ShardRun) -> _Shard:
    anchors_hash = ids_hash(anchor_set["id"])
    stale = zero_shot[
        (zero_shot["model_fingerprint"] != run["fingerprint"]) | (zero_shot["anchor_set_hash"] != anchors_hash)
    ]
    if len(stale):
        raise StaleZeroShotError(run["fingerprint"], anchors_hash)
    folder = pair_store(run["warehouse"], run["shard"], run["fingerprint"], anchors_hash)
    store = _PairStore(folder, run.get("warn") or run["log"])
    return _Shard(anchors_hash, anchor_order(anchor_set["id"], adaptive.seed), store)


def _delta_table(pairs: pd.DataFrame, ids: Sequence[str], order: Sequence[str]) -> np.ndarray:
    """(candidates x anchors of ``order``) deltas, NaN where a pair is not scored."""
    table = np.full((len(ids), len(order)), np.nan)
    if len(pairs):
        rows = pd.Index(ids).get_indexer(pairs["candidate_id"].astype(str))
        columns = pd.Index([str(a) for a in order]).get_indexer(pairs["anchor_id"].astype(str))
        keep = (rows >= 0) & (columns >= 0)
        table[rows[keep], columns[keep]] = pairs["delta"].to_numpy(dtype=float)[keep]
    return table


def prefix_counts(
    pairs: pd.DataFrame,
    candidate_ids: Sequence[str],
    order: Sequence[str],
    limit: np.ndarray | Sequence[int] | None = None,
) -> pd.DataFrame:
    """Per candidate: how long a prefix of ``order`` is scored (at most ``limit``, when given, per candidate), its
    wins and mean delta over that prefix.

    Only the unbroken prefix counts: a pair scored out of order (a round cut short) waits for the ones before it,
    and so does one past the limit (scored for another rule or setting): the state is what the rounds planned.
    """
    ids = [str(c) for c in candidate_ids]
    table = _delta_table(pairs, ids, order)
    present = ~np.isnan(table)
    scored = np.where(present.all(axis=1), len(order), np.argmin(present, axis=1))
    if limit is not None:
        scored = np.minimum(scored, np.asarray(limit, dtype=np.int64))
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
    inputs: ShardInputs, targets: pd.Series, order: Sequence[str], store: _PairStore
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
    todo = inputs.candidates[inputs.candidates["id"].astype(str).isin(wanted)]
    pairs = tokens = 0
    seconds = 0.0
    for chunk in score_one_shot(
        inputs.loaded, inputs.anchor_set, inputs.zero_shot, todo, inputs.config, anchors_for=wanted
    ):
        store.append(chunk.pair_deltas)  # one atomic file per chunk: a kill loses at most this chunk
        pairs += len(chunk.pair_deltas)
        tokens += chunk.anchor_tokens
        seconds += chunk.seconds
    return pairs, tokens, seconds


def screen_shard(inputs: ShardInputs, adaptive: AdaptiveConfig, **run: Unpack[ShardRun]) -> pd.DataFrame:
    """Score the first ``first_anchors`` anchors of the order for every candidate, and every anchor for the
    shard's calibration sample; return the screening rows."""
    opened = _open_shard(inputs.anchor_set, inputs.zero_shot, adaptive, run)
    order, n = opened.order, len(opened.order)
    ids = inputs.candidates["id"].astype(str).tolist()
    calibration = calibration_members(ids, adaptive.calibration_share, adaptive.seed)
    first = min(adaptive.first_anchors, n)
    targets = pd.Series(np.where(calibration, n, first), index=ids)
    done = _score_to_targets(inputs, targets, order, opened.store)
    rate = f", {done[1] / done[2]:.0f} anchor tokens/s" if done[2] else ""
    run["log"](
        f"{run['shard']}: screened {len(ids)} candidates on {first} anchors, {int(calibration.sum())} of them on all "
        f"{n} (calibration; {done[0]} pairs scored now{rate})"
    )
    counts = prefix_counts(opened.store.pairs, ids, order, limit=targets.to_numpy())
    wins = _delta_table(opened.store.pairs, ids, order) > 0
    bits = [
        "".join("1" if won else "0" for won in row) if member else ""
        for row, member in zip(wins, calibration, strict=True)
    ]
    return counts.assign(
        shard=run["shard"],
        n_anchors=n,
        model_fingerprint=run["fingerprint"],
        anchor_set_hash=opened.anchors_hash,
        order_seed=adaptive.seed,
        first_anchors=first,
        calibration=calibration,
        calibration_share=adaptive.calibration_share,
        anchor_wins=bits,
    )[SCREENING_COLUMNS]


def _pool_state(screening: pd.DataFrame, adaptive: AdaptiveConfig, fingerprint: str, anchors_hash: str) -> pd.DataFrame:
    """The pool's screening snapshot (by candidate id, sorted), refused unless every row is of this scoring version,
    order, size and calibration sample."""
    present = {"calibration", "calibration_share", "anchor_wins"} <= set(screening.columns)
    wrong = (
        screening[
            (screening["model_fingerprint"] != fingerprint)
            | (screening["anchor_set_hash"] != anchors_hash)
            | (screening["order_seed"] != adaptive.seed)
            | (screening["first_anchors"] != np.minimum(adaptive.first_anchors, screening["n_anchors"]))
            | (screening["anchors_scored"] < screening["first_anchors"])
            | (screening["calibration_share"] != adaptive.calibration_share)
            | (screening["calibration"] & (screening["anchors_scored"] < screening["n_anchors"]))
        ]
        if present
        else screening
    )
    if len(wrong):
        shards = sorted(wrong["shard"].astype(str).unique())
        raise ScreeningIncompleteError(
            f"one_shot_screening of shard(s) {', '.join(shards)} was taken with another scoring version, anchor "
            f"order, first_anchors or calibration sample: materialise one_shot_screening for them again"
        )
    state = screening.drop_duplicates("candidate_id", keep="last")
    return state.assign(candidate_id=state["candidate_id"].astype(str)).set_index("candidate_id").sort_index()


def pool_model(
    screening: pd.DataFrame, order: Sequence[str], rule: SelectionRule, adaptive: AdaptiveConfig
) -> AnchorModel:
    """The pool model from a checked screening snapshot (``_pool_state``): the same ``fit_pool_model`` call as the
    replay's, on the same rows (calibration rows by candidate id)."""
    calibration = screening[screening["calibration"].astype(bool)]
    wins = np.array([[bit == "1" for bit in row] for row in calibration["anchor_wins"]], dtype=bool)
    wins = wins.reshape(len(calibration), len(order))
    return fit_pool_model(order, wins, screening["wins"], screening["anchors_scored"], rule, adaptive)


def _refinement_key(screening: pd.DataFrame, rule: SelectionRule, adaptive: AdaptiveConfig) -> str:
    """Names everything the rounds depend on, so a plan is resumed only by the refinement that wrote it."""
    snapshot = ids_hash(
        f"{c}:{w}:{m}:{b}"
        for c, w, m, b in zip(
            screening.index, screening["wins"], screening["anchors_scored"], screening["anchor_wins"], strict=True
        )
    )
    settings = json.dumps([vars(rule), vars(adaptive), snapshot], sort_keys=True)
    return ids_hash([settings])


def _scores_frame(
    loaded: LoadedModel,
    candidates: pd.DataFrame,
    zero_shot: pd.DataFrame,
    pairs: pd.DataFrame,
    counts: pd.DataFrame,
    model: AnchorModel,
    config: ScoringConfig,
    adaptive: AdaptiveConfig,
    rule: SelectionRule,
) -> pd.DataFrame:
    """The shard's rows in one_shot_scores' layout: the predicted final score as golden score (exactly wins / n once
    every anchor is scored), its interval, and the pair bookkeeping exact scoring reports (``pairs``: the counted
    prefixes' pairs)."""
    n = model.n
    w, m = counts["wins"].to_numpy(), counts["anchors_scored"].to_numpy()
    predicted = PoolCounts(w, m, model)
    low, high = predicted.interval(adaptive.confidence)
    demos = demonstration_ids(loaded, candidates, get_template(config.template), config.separator)
    demo_len = pd.Series([len(d) for d in demos], index=candidates["id"].astype(str))
    zero = zero_shot.set_index("anchor_id")
    anchor_len = (zero["prompt_tokens"] + zero["response_tokens"]).astype(np.int64)
    scored = pairs.copy()
    scored["demo"] = scored["candidate_id"].map(demo_len)
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
        golden_score=predicted.predicted_mean,  # what the cut and select_golden compare
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


def _counted_pairs(pairs: pd.DataFrame, counts: pd.DataFrame, order: Sequence[str]) -> pd.DataFrame:
    """The pairs inside each candidate's counted prefix of ``order``: what its score is made of."""
    rank = pd.Series(np.arange(len(order)), index=[str(a) for a in order])
    prefix = counts.set_index("candidate_id")["anchors_scored"]
    named = pairs.assign(candidate_id=pairs["candidate_id"].astype(str), anchor_id=pairs["anchor_id"].astype(str))
    return named[named["anchor_id"].map(rank) < named["candidate_id"].map(prefix)].reset_index(drop=True)


def refine_shard(
    inputs: ShardInputs,
    adaptive: AdaptiveConfig,
    rule: SelectionRule,
    screening: pd.DataFrame,
    **run: Unpack[ShardRun],
) -> AdaptiveResult:
    """Refine the shard round by round against the pool's ``screening`` snapshot (every shard's screening rows);
    resumes a killed run from its pair store and round plans. Writes the shard's pairs to PAIR_DELTAS_TABLE."""
    opened = _open_shard(inputs.anchor_set, inputs.zero_shot, adaptive, run)
    shard, ids = run["shard"], inputs.candidates["id"].astype(str).tolist()
    state = _pool_state(screening, adaptive, run["fingerprint"], opened.anchors_hash)
    missing = sorted(set(ids) - set(state.index))
    if missing:
        raise ScreeningIncompleteError(
            f"{len(missing)} candidates of shard {shard} have no screening row (e.g. {missing[:3]}): materialise "
            "one_shot_screening for every shard of the pool before one_shot_scores"
        )
    model = pool_model(state, opened.order, rule, adaptive)
    order, store = list(model.order), opened.store
    plan_folder = store.folder / f"refine-{_refinement_key(state, rule, adaptive)}"
    plans = sorted(plan_folder.glob("plan-*.parquet")) if plan_folder.is_dir() else []
    rounds, passes, tokens, seconds = len(plans), 0, 0, 0.0
    started = time.perf_counter()
    # The current targets: the killed round's plan on resume, else the screening's counts.
    plan = pd.read_parquet(plans[-1]).set_index("candidate_id")["target"] if plans else state["anchors_scored"].loc[ids]
    while True:
        done = _score_to_targets(inputs, plan, order, store)
        passes, tokens, seconds = passes + done[0], tokens + done[1], seconds + done[2]
        counts = prefix_counts(store.pairs, ids, order, limit=plan.loc[ids].to_numpy())
        pool = state[["wins", "anchors_scored"]].copy()
        pool.loc[ids, ["wins", "anchors_scored"]] = counts[["wins", "anchors_scored"]].to_numpy()
        target = next_counts(
            PoolCounts(pool["wins"].to_numpy(), pool["anchors_scored"].to_numpy(), model), rule, adaptive
        )
        own = pd.Series(target, index=pool.index).loc[ids]
        if (own.to_numpy() <= counts["anchors_scored"].to_numpy()).all():
            break
        plan = own.rename("target").rename_axis("candidate_id")
        write_parquet_atomic(plan.reset_index(), plan_folder / f"plan-{rounds:05d}.parquet")
        rounds += 1
        more = int((own.to_numpy() > counts["anchors_scored"].to_numpy()).sum())
        run["log"](f"{shard}: round {rounds}: {more} candidates get more anchors")
    pairs = _counted_pairs(store.pairs[store.pairs["candidate_id"].astype(str).isin(set(ids))], counts, order)
    scores = _scores_frame(
        inputs.loaded, inputs.candidates, inputs.zero_shot, pairs, counts, model, inputs.config, adaptive, rule
    )
    scores.insert(1, "shard", shard)
    scores["model_fingerprint"] = run["fingerprint"]
    scores["anchor_set_hash"] = opened.anchors_hash
    scores["decision_threshold"] = float("nan")
    pairs = pairs.assign(shard=shard)
    if len(pairs):
        run["warehouse"].write(PAIR_DELTAS_TABLE, pairs, shard)
    return AdaptiveResult(
        scores=scores,
        pair_deltas=pairs,
        rounds=rounds,
        anchor_passes=int(counts["anchors_scored"].sum()),
        anchor_passes_exact=len(ids) * model.n,
        passes_this_run=passes,
        anchor_tokens=tokens,
        seconds=seconds or time.perf_counter() - started,
    )


__all__ = [
    "ADAPTIVE_COLUMNS",
    "PAIR_STORE",
    "SCREENING_COLUMNS",
    "SCREENING_TABLE",
    "AdaptiveResult",
    "ScreeningIncompleteError",
    "ShardInputs",
    "ShardRun",
    "pair_store",
    "pool_model",
    "prefix_counts",
    "refine_shard",
    "screen_shard",
    "seed_pair_store",
    "stored_pairs",
]
