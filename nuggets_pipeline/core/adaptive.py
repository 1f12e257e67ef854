"""Adaptive anchor allocation: score a candidate on more anchors only while its selection is still in doubt.

The rule, as a pure function of the pool's current counts (no model, no storage: the live engine and the replay
below both call it, so they cannot disagree):

1. Anchors are scored in one seeded random order (``anchor_order``), the same for every candidate: after m
   anchors, every candidate has seen the same m, so the pool's estimates are compared on the same anchors.
2. Every candidate first gets ``first_anchors`` anchors (screening: a pass over every shard).
3. Then, in rounds of ``round_anchors``, a candidate gets more only while its interval still straddles the cut
   (``needs_more``); the rule is re-evaluated on the whole pool each round, so a candidate settled early is
   re-opened if the cut moves into its interval.

The interval is for the candidate's *final exact* golden score S = (w + W) / n, where w is its wins on the m anchors
scored and W its wins on the r = n - m anchors left. Under a Beta(1/2, 1/2) (Jeffreys) prior on its win rate, W
is beta-binomial(r, 1/2 + w, 1/2 + m - w): the finite-population correction is built in (the interval shrinks to
the exact score as r goes to 0), and at ``confidence`` = 1 the interval is [w / n, (w + r) / n], decision mode's
bounds, so the rule is exact. The interval is central (``(1 - confidence) / 2`` in each tail).

The cut is the threshold when selecting by threshold (settled once ``lo > t`` or ``hi <= t``, the comparisons of
``select_golden``), and for top-k / top-fraction halfway between the pool's k-th and (k+1)-th largest current
estimates (settled once ``lo > cut`` or ``hi < cut``; a candidate whose final score may equal the cut may tie, and
ties are broken by the mean delta over all anchors, which only a full score knows). The estimate is the
posterior mean of S, clipped into the interval so that "settled above" always means "ranked above". When no
candidate needs more, ``select`` reproduces ``select_golden``'s choice at confidence 1 (tested), and is the
configured rule at any confidence.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from nuggets_pipeline.core.reliability import PairMatrix, SelectionRule, rank_order, select_mask

PRIOR = (0.5, 0.5)  # Jeffreys: the least informative Beta prior that is invariant to reparametrisation


@dataclass(frozen=True)
class AdaptiveConfig:
    """How the adaptive mode spends anchors; ``confidence`` = 1 is exact (decision-mode bounds)."""

    confidence: float = 0.95
    first_anchors: int = 10
    round_anchors: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.confidence <= 1.0:
            raise ValueError(f"confidence must be within (0, 1], got {self.confidence}")
        if self.first_anchors < 1 or self.round_anchors < 1:
            raise ValueError("first_anchors and round_anchors must be at least 1")


def anchor_order(anchor_ids: Iterable[str], seed: int) -> list[str]:
    """The seeded order in which anchors are scored; depends only on the set of ids and the seed."""
    ids = sorted(str(a) for a in anchor_ids)
    if len(set(ids)) != len(ids):
        raise ValueError("anchor ids must be unique")
    return [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]


def _counts(
    wins: np.ndarray | Sequence[int], scored: np.ndarray | Sequence[int], n_anchors: int | np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    w = np.asarray(wins, dtype=np.int64)
    m = np.asarray(scored, dtype=np.int64)
    n = np.broadcast_to(np.asarray(n_anchors, dtype=np.int64), w.shape)
    if w.shape != m.shape:
        raise ValueError("wins and scored must have one entry per candidate")
    if (w < 0).any() or (w > m).any() or (m > n).any():
        raise ValueError("need 0 <= wins <= scored <= n_anchors for every candidate")
    return w, m, n


def _quantiles(r: np.ndarray, a: np.ndarray, b: np.ndarray, levels: tuple[float, float]) -> list[np.ndarray]:
    """Beta-binomial quantiles (the smallest k with cdf(k) >= level, scipy's ppf), from one pmf table per call:
    ``betabinom.ppf`` searches candidate by candidate and is ~100x slower on a pool."""
    if r.size == 0:
        return [np.zeros_like(r) for _ in levels]
    k = np.arange(int(r.max()) + 1)
    cdf = np.cumsum(stats.betabinom.pmf(k[None, :], r[:, None], a[:, None], b[:, None]), axis=1)
    # The relative slack absorbs the summation's rounding, so a level met exactly is met.
    return [np.minimum((cdf < level * (1 - 1e-12)).sum(axis=1), r) for level in levels]


def interval(
    wins: np.ndarray | Sequence[int], scored: np.ndarray | Sequence[int], n_anchors: int | np.ndarray, confidence: float
) -> tuple[np.ndarray, np.ndarray]:
    """Central ``confidence`` interval of each candidate's final exact golden score (see the module text)."""
    w, m, n = _counts(wins, scored, n_anchors)
    r = n - m
    a, b = PRIOR[0] + w, PRIOR[1] + m - w
    tail = (1.0 - confidence) / 2
    if tail > 0:
        low, high = _quantiles(r, a, b, (tail, 1.0 - tail))
    else:  # confidence 1: every remaining anchor lost, or every one won (decision mode's bounds)
        low, high = np.zeros_like(r), r
    # w / n exactly when r = 0, the division golden_score uses, so a full score compares like select_golden's.
    return (w + low) / n, (w + high) / n


def estimate(
    wins: np.ndarray | Sequence[int], scored: np.ndarray | Sequence[int], n_anchors: int | np.ndarray, confidence: float
) -> np.ndarray:
    """The posterior mean of each final exact score, clipped into its interval (exactly w / n once fully scored)."""
    w, m, n = _counts(wins, scored, n_anchors)
    r = n - m
    mean = (w + r * (PRIOR[0] + w) / (PRIOR[0] + PRIOR[1] + m)) / n
    low, high = interval(w, m, n, confidence)
    return np.where(r == 0, w / n, np.clip(mean, low, high))


def cut(estimates: np.ndarray, rule: SelectionRule) -> float | None:
    """The threshold, or halfway between the k-th and (k+1)-th largest estimates; None when top-k keeps all or
    nothing (nothing to decide).

    Halfway, not at the k-th: when the best k tie (a cleanly separated pool, or the few distinct values of a score
    on 10 anchors), a cut at the k-th estimate would sit inside every one of their intervals and keep them all
    scoring to the end. Either way, once no interval contains it, exactly k estimates lie above it."""
    if rule.threshold is not None:
        return float(rule.threshold)
    k = rule.k(len(estimates))
    if k is None or k == 0 or k >= len(estimates):
        return None
    ranked = np.sort(np.asarray(estimates, dtype=float))[::-1]
    return float((ranked[k - 1] + ranked[k]) / 2)


def straddles(
    wins: np.ndarray | Sequence[int],
    scored: np.ndarray | Sequence[int],
    n_anchors: int | np.ndarray,
    rule: SelectionRule,
    config: AdaptiveConfig,
) -> np.ndarray:
    """Whose interval still contains the cut (the cut from the whole pool's current estimates)."""
    w, m, n = _counts(wins, scored, n_anchors)
    low, high = interval(w, m, n, config.confidence)
    screened = m >= np.minimum(config.first_anchors, n)
    # The cut comes from the screened candidates (all of them, once screening is done).
    pool = screened if screened.any() else np.ones_like(screened)
    at = cut(estimate(w[pool], m[pool], n[pool], config.confidence), _rule_for(rule, len(w), int(pool.sum())))
    if at is None:
        return np.zeros(len(w), dtype=bool)
    if rule.threshold is not None:
        return (low <= at) & (at < high)  # selected means S > t: hi == t is surely not selected
    return (low <= at) & (at <= high)  # S == cut ties with the cut: only the full mean delta breaks it


def _rule_for(rule: SelectionRule, n_candidates: int, n_pool: int) -> SelectionRule:
    """The rule on the subset the cut is estimated from: top-k keeps its share of the pool."""
    if rule.top_k is None or n_pool == n_candidates:
        return rule
    return SelectionRule(top_fraction=min(1.0, rule.top_k / n_candidates)) if n_candidates else rule


def needs_more(
    wins: np.ndarray | Sequence[int],
    scored: np.ndarray | Sequence[int],
    n_anchors: int | np.ndarray,
    rule: SelectionRule,
    config: AdaptiveConfig,
) -> np.ndarray:
    """Which candidates get another round: not yet screened, or straddling the cut with anchors left.

    Call it on the whole pool (every shard): the top-k cut is the pool's. A candidate with all anchors scored never
    needs more; one whose interval contains the cut always does (the rule's guarantee).
    """
    w, m, n = _counts(wins, scored, n_anchors)
    unscreened = m < np.minimum(config.first_anchors, n)
    return unscreened | (straddles(w, m, n, rule, config) & (m < n))


def next_counts(
    wins: np.ndarray | Sequence[int],
    scored: np.ndarray | Sequence[int],
    n_anchors: int | np.ndarray,
    rule: SelectionRule,
    config: AdaptiveConfig,
) -> np.ndarray:
    """How many anchors (a prefix of ``anchor_order``) each candidate should have after the next round."""
    w, m, n = _counts(wins, scored, n_anchors)
    more = needs_more(w, m, n, rule, config)
    first = np.minimum(config.first_anchors, n)
    target = np.where(m < first, first, np.minimum(m + config.round_anchors, n))
    return np.where(more, np.maximum(target, m), m)


def select(
    wins: np.ndarray | Sequence[int],
    scored: np.ndarray | Sequence[int],
    n_anchors: int | np.ndarray,
    rule: SelectionRule,
    config: AdaptiveConfig,
    mean_delta: np.ndarray | Sequence[float] | None = None,
    candidate_ids: np.ndarray | Sequence[str] | None = None,
) -> np.ndarray:
    """The selection (a boolean mask) by exactly ``rule`` on the current estimates: estimate > threshold, or the
    k best by estimate, then mean delta over the scored anchors, then id (``select_golden``'s tie rule). Once no
    candidate needs more, a settled-above candidate is always in and a settled-below one always out."""
    w, m, n = _counts(wins, scored, n_anchors)
    values = estimate(w, m, n, config.confidence)
    ids = np.arange(len(w)).astype(str) if candidate_ids is None else np.asarray(candidate_ids).astype(str)
    delta = np.zeros(len(w)) if mean_delta is None else np.asarray(mean_delta, dtype=float)
    return select_mask(values, delta, ids, rule)


def allocation_status(
    wins: np.ndarray | Sequence[int],
    scored: np.ndarray | Sequence[int],
    n_anchors: int | np.ndarray,
    rule: SelectionRule,
    config: AdaptiveConfig,
) -> pd.DataFrame:
    """Per candidate what the stored scores should say: anchors scored, estimate, interval, settled early."""
    w, m, n = _counts(wins, scored, n_anchors)
    low, high = interval(w, m, n, config.confidence)
    more = needs_more(w, m, n, rule, config)
    return pd.DataFrame(
        {
            "anchors_scored": m,
            "estimate": estimate(w, m, n, config.confidence),
            "ci_low": low,
            "ci_high": high,
            "needs_more": more,
            "settled_early": ~more & (m < n),
        }
    )


@dataclass(frozen=True)
class ReplayResult:
    """The rule simulated on a full matrix: what it would have scored and selected."""

    anchors_scored: np.ndarray  # per candidate
    selected: np.ndarray  # boolean mask over the matrix rows
    selected_ids: list[str]
    settled_early: np.ndarray  # stopped before the last anchor
    rounds: int  # screening included
    passes: int  # (candidate, anchor) pairs scored
    passes_exact: int

    @property
    def passes_fraction(self) -> float:
        return self.passes / self.passes_exact if self.passes_exact else 0.0


def replay(
    wins_matrix: np.ndarray,
    rule: SelectionRule,
    config: AdaptiveConfig,
    *,
    deltas: np.ndarray | None = None,
    candidate_ids: Sequence[str] | None = None,
    anchor_ids: Sequence[str] | None = None,
) -> ReplayResult:
    """Run the rule on a full boolean (candidates x anchors) matrix: each round reveals the next anchors of
    ``anchor_order(anchor_ids, config.seed)`` to the candidates ``next_counts`` names, until none needs more.

    ``deltas`` (same shape) give the mean-delta tie-break; ``anchor_ids`` the columns' ids (default: positions).
    """
    cumulative_wins, cumulative_deltas, ids = _revealed(wins_matrix, deltas, candidate_ids, anchor_ids, config.seed)
    n_candidates, n = cumulative_wins.shape[0], cumulative_wins.shape[1] - 1
    rows = np.arange(n_candidates)
    scored = np.zeros(n_candidates, dtype=np.int64)
    rounds = 0
    while True:
        target = next_counts(cumulative_wins[rows, scored], scored, n, rule, config)
        if (target == scored).all():
            break
        scored, rounds = target, rounds + 1
    wins = cumulative_wins[rows, scored]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_delta = cumulative_deltas[rows, scored] / scored
    return _result(scored, select(wins, scored, n, rule, config, mean_delta, ids), ids, rounds, n)


def _revealed(
    wins_matrix: np.ndarray,
    deltas: np.ndarray | None,
    candidate_ids: Sequence[str] | None,
    anchor_ids: Sequence[str] | None,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Wins and delta sums over the first m anchors of the seeded order (column m), and the candidate ids."""
    wins_matrix = np.asarray(wins_matrix, dtype=bool)
    n_candidates, n = wins_matrix.shape
    columns = [str(a) for a in anchor_ids] if anchor_ids is not None else [f"{i:06d}" for i in range(n)]
    position = {a: i for i, a in enumerate(columns)}
    order = np.array([position[a] for a in anchor_order(columns, seed)], dtype=np.int64)
    zero = np.zeros((n_candidates, 1))
    cumulative_wins = np.concatenate([zero, np.cumsum(wins_matrix[:, order], axis=1)], axis=1).astype(np.int64)
    ordered_deltas = np.zeros((n_candidates, n)) if deltas is None else np.asarray(deltas, dtype=float)[:, order]
    cumulative_deltas = np.concatenate([zero, np.cumsum(ordered_deltas, axis=1)], axis=1)
    ids = np.array(candidate_ids, dtype=str) if candidate_ids is not None else np.arange(n_candidates).astype(str)
    return cumulative_wins, cumulative_deltas, ids


def _result(scored: np.ndarray, chosen: np.ndarray, ids: np.ndarray, rounds: int, n: int) -> ReplayResult:
    return ReplayResult(
        anchors_scored=scored,
        selected=chosen,
        selected_ids=[str(i) for i in ids[chosen]],
        settled_early=scored < n,
        rounds=rounds,
        passes=int(scored.sum()),
        passes_exact=len(scored) * n,
    )


def replay_plain_rule(
    wins_matrix: np.ndarray,
    rule: SelectionRule,
    config: AdaptiveConfig,
    *,
    deltas: np.ndarray | None = None,
    candidate_ids: Sequence[str] | None = None,
    anchor_ids: Sequence[str] | None = None,
) -> ReplayResult:
    """The issue's calibration baseline, replayed to be beaten on the same matrix (not a scoring mode): after the
    first anchors, rounds of ``round_anchors``; a normal-approximation interval of the final win rate,
    p ± z sqrt(p (1 - p) / m (n - m) / (n - 1)); a candidate settled for good once its interval clears the
    current cut (the threshold, or the k-th largest p); the selection by p, then mean delta, then id."""
    cumulative_wins, cumulative_deltas, ids = _revealed(wins_matrix, deltas, candidate_ids, anchor_ids, config.seed)
    n_candidates, n = cumulative_wins.shape[0], cumulative_wins.shape[1] - 1
    rows = np.arange(n_candidates)
    z = stats.norm.ppf((1 + config.confidence) / 2)
    scored = np.full(n_candidates, min(config.first_anchors, n), dtype=np.int64)
    settled = np.zeros(n_candidates, dtype=bool)
    rounds = 1
    with np.errstate(invalid="ignore", divide="ignore"):
        while True:
            p = cumulative_wins[rows, scored] / scored
            half = z * np.sqrt(p * (1 - p) / scored * (n - scored) / max(n - 1, 1))
            if rule.threshold is not None:
                at = rule.threshold
                clear = (p - half > at) | (p + half <= at)
            else:
                k = rule.k(n_candidates) or 0
                at = np.sort(p)[::-1][k - 1] if 0 < k < n_candidates else None
                clear = np.ones(n_candidates, dtype=bool) if at is None else (p - half > at) | (p + half < at)
            settled |= clear | (scored == n)
            if settled.all():
                break
            scored = np.where(settled, scored, np.minimum(scored + config.round_anchors, n))
            rounds += 1
        mean_delta = cumulative_deltas[rows, scored] / scored
    chosen = select_mask(cumulative_wins[rows, scored] / scored, mean_delta, ids, rule)
    return _result(scored, chosen, ids, rounds, n)


def agreement(selected: np.ndarray, exact: np.ndarray) -> float:
    """|selected ∩ exact| / |exact|: the share of exact scoring's choice that was kept."""
    return float((selected & exact).sum() / exact.sum()) if exact.sum() else float("nan")


def quality(selected: np.ndarray, exact: np.ndarray, golden: np.ndarray) -> float:
    """(mean exact score of the selection - pool mean) / (mean exact score of exact's selection - pool mean)."""
    if not selected.any() or not exact.any():
        return float("nan")
    gain = golden[exact].mean() - golden.mean()
    return float((golden[selected].mean() - golden.mean()) / gain) if gain else float("nan")


def subsample_selection(matrix: PairMatrix, rule: SelectionRule, anchors: int, seed: int) -> np.ndarray:
    """The naive saving: select by ``rule`` on a seeded random subset of ``anchors`` anchors (the first of
    ``anchor_order``), with the same tie rule."""
    order = anchor_order(matrix.anchor_ids, seed)[:anchors]
    columns = np.isin(matrix.anchor_ids, order)
    wins, deltas = matrix.wins[:, columns], matrix.deltas[:, columns]
    return select_mask(wins.mean(axis=1), deltas.mean(axis=1), matrix.candidate_ids, rule)


def compare_with_exact(
    matrix: PairMatrix,
    rule: SelectionRule,
    confidences: Sequence[float],
    config: AdaptiveConfig | None = None,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
) -> dict[str, list[dict[str, float]]]:
    """The benchmark's figures: per confidence, the replay's anchor passes (over exact's), agreement and quality,
    averaged over anchor-order ``seeds``; the same figures for random subsets of as many anchors as the replay
    spent on average (rounded), over the same seeds; and for the plain baseline rule (``replay_plain_rule``)."""
    base = config or AdaptiveConfig()
    golden = matrix.golden_scores()
    exact = select_mask(golden, matrix.mean_delta(), matrix.candidate_ids, rule)
    n = matrix.shape[1]
    adaptive, fixed, plain = [], [], []

    def figures(rule_replay: Callable[..., ReplayResult], confidence: float) -> dict[str, float]:
        runs = [
            rule_replay(
                matrix.wins,
                rule,
                AdaptiveConfig(confidence, base.first_anchors, base.round_anchors, seed),
                deltas=matrix.deltas,
                candidate_ids=matrix.candidate_ids,
                anchor_ids=matrix.anchor_ids,
            )
            for seed in seeds
        ]
        return {
            "confidence": confidence,
            "passes_fraction": round(float(np.mean([r.passes_fraction for r in runs])), 4),
            "agreement": round(float(np.mean([agreement(r.selected, exact) for r in runs])), 4),
            "agreement_min": round(float(np.min([agreement(r.selected, exact) for r in runs])), 4),
            "quality": round(float(np.mean([quality(r.selected, exact, golden) for r in runs])), 4),
            "rounds": round(float(np.mean([r.rounds for r in runs])), 1),
        }

    for confidence in confidences:
        adaptive.append(figures(replay, confidence))
        plain.append(figures(replay_plain_rule, confidence))
        fraction = adaptive[-1]["passes_fraction"]
        m = max(1, min(n, round(fraction * n)))
        subsets = [subsample_selection(matrix, rule, m, seed) for seed in seeds]
        fixed.append(
            {
                "anchors": m,
                "passes_fraction": round(m / n, 4),
                "agreement": round(float(np.mean([agreement(s, exact) for s in subsets])), 4),
                "quality": round(float(np.mean([quality(s, exact, golden) for s in subsets])), 4),
            }
        )
    return {"adaptive": adaptive, "fixed_subsample": fixed, "plain_rule": plain}


__all__ = [
    "PRIOR",
    "AdaptiveConfig",
    "ReplayResult",
    "SelectionRule",
    "agreement",
    "allocation_status",
    "anchor_order",
    "compare_with_exact",
    "cut",
    "estimate",
    "interval",
    "needs_more",
    "next_counts",
    "quality",
    "rank_order",
    "replay",
    "replay_plain_rule",
    "select",
    "straddles",
    "subsample_selection",
]
