"""Adaptive anchor allocation: score a candidate on more anchors only while its selection is still in doubt.

The rule, as pure functions of stored counts (no model, no storage: the live engine in ``core.adaptive_scoring``
and the replay below both call them, so they cannot disagree):

1. **Screening.** Anchors are first scored in one seeded random order (``anchor_order``). Every candidate gets its
   first ``first_anchors``; in every shard a seeded sample of ``calibration_share`` of the candidates
   (``calibration_members``, decided shard by shard, counted in the budget) gets all of them.
2. **The pool model** (``fit_pool_model``), fitted once from the whole pool's screening and then fixed: a Rasch
   (logistic) model p(win | c, a) = sigmoid(theta_c + b_a). The anchors' easiness b_a comes from the calibration
   sample (a joint MAP fit with weak priors); the prior of theta, N(mu, tau^2), is fitted by marginal likelihood on
   every candidate's screening counts (empirical Bayes). The rest of the anchors are put in a fixed refinement order:
   most informative first, an anchor's information being p (1 - p) at the ability of a candidate on the cut. Anchors
   nearly every candidate wins, or nearly none does, come last: their outcome is predictable and rarely decides.
3. **Refinement.** Each candidate's state is a prefix count: wins w on the first m anchors of ``model.order``. Its
   final exact golden score S = (w + W) / n is predicted with W, its wins on the n - m anchors left, a
   Poisson-binomial over them at its MAP ability (the Rasch model's raw score w is sufficient for theta, so the
   count is the whole state), plus the delta-method uncertainty of theta and of the b_a. The ``confidence``
   interval is the normal one, clipped to what is still possible, [w / n, (w + n - m) / n]; at confidence 1 it is
   exactly those bounds (decision mode's), so the rule is exact. In rounds of ``round_anchors`` a candidate gets
   more anchors only while its interval straddles the cut; the whole pool is re-evaluated each round, so a
   candidate settled early is re-opened if the cut moves into its interval.

The cut is the threshold when selecting by threshold (settled once ``lo > t`` or ``hi <= t``, the comparisons of
``select_golden``), and for top-k / top-fraction halfway between the pool's k-th and (k+1)-th predicted scores
(settled once ``lo > cut`` or ``hi < cut``; a candidate whose final score may equal the cut may tie, and ties are
broken by the mean delta, which only a full score knows). The reported score of a candidate is its predicted final
score (exactly w / n once fully scored); ``select`` applies the configured rule to it with ``select_golden``'s tie
rule, and once no candidate needs more, a candidate settled above is always in and one settled below always out.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np
import pandas as pd
from scipy import optimize, special, stats

from nuggets_pipeline.core.reliability import PairMatrix, SelectionRule, rank_order, select_mask

# Weak priors of the calibration fit, on the logit scale: they only keep an anchor every calibration candidate won
# (or lost) finite, and pin the scale's origin (theta and b are only defined up to a shift).
EASINESS_PRIOR_SD = 2.0
CALIBRATION_ABILITY_PRIOR_SD = 2.0
# The empirical-Bayes prior's spread is kept within these: a tiny or degenerate pool cannot collapse the prior to a
# point (every candidate predicted alike) or blow it up (no shrinkage at all).
PRIOR_SD_BOUNDS = (0.05, 5.0)
QUADRATURE_NODES = 41
NEWTON_STEPS = 30


@dataclass(frozen=True)
class AdaptiveConfig:
    """How the adaptive mode spends anchors; ``confidence`` = 1 is exact (decision-mode bounds)."""

    confidence: float = 0.95
    # 8, 5 and 4%: the best of the settings tried on synthetic pools (``benchmarks/selection.py --synthetic``), chosen
    # before the committed matrix was replayed with them.
    first_anchors: int = 8
    round_anchors: int = 5
    seed: int = 0
    calibration_share: float = 0.04

    def __post_init__(self) -> None:
        if not 0.0 < self.confidence <= 1.0:
            raise ValueError(f"confidence must be within (0, 1], got {self.confidence}")
        if self.first_anchors < 1 or self.round_anchors < 1:
            raise ValueError("first_anchors and round_anchors must be at least 1")
        if not 0.0 <= self.calibration_share <= 1.0:
            raise ValueError(f"calibration_share must be within [0, 1], got {self.calibration_share}")


PLAIN_RULE_ROUNDS = AdaptiveConfig(first_anchors=10, round_anchors=10)  # the baseline: rounds of 10


def anchor_order(anchor_ids: Iterable[str], seed: int) -> list[str]:
    """The seeded order in which anchors are screened; depends only on the set of ids and the seed."""
    ids = sorted(str(a) for a in anchor_ids)
    if len(set(ids)) != len(ids):
        raise ValueError("anchor ids must be unique")
    return [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]


def calibration_members(candidate_ids: Sequence[str], share: float, seed: int) -> np.ndarray:
    """Which candidates of one shard are screened on every anchor: the ceil(share x shard size) whose seeded hash of
    the id is smallest. Decided from the shard alone, so shards are screened independently and a new shard never
    changes an old one's sample."""
    ids = [str(c) for c in candidate_ids]
    members = np.zeros(len(ids), dtype=bool)
    count = min(len(ids), math.ceil(share * len(ids) - 1e-9))
    if count:
        keys = np.array([hashlib.sha256(f"{seed}:{c}".encode()).hexdigest() for c in ids])
        members[np.argsort(keys, kind="stable")[:count]] = True
    return members


@dataclass(frozen=True)
class AnchorModel:
    """The pool's Rasch model, fitted from its screening and fixed for the refinement."""

    order: tuple[str, ...]  # the scoring order: the screening anchors, then the refinement order
    easiness: np.ndarray  # b_a, by position in ``order``
    easiness_var: np.ndarray  # the variance of each b_a's estimate
    prior_mean: float  # of theta over the pool
    prior_sd: float

    @property
    def n(self) -> int:
        return len(self.order)


def _fit_easiness(calibration: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """b_a and its variance from the calibration candidates' full (candidates x anchors) wins: a joint MAP fit of
    the Rasch model (alternating Newton steps, each concave). No calibration candidate: every b_a is 0 with the
    prior's variance, so every anchor is alike and uncertain."""
    y = np.asarray(calibration, dtype=float)
    n = y.shape[1]
    if y.shape[0] == 0:
        return np.zeros(n), np.full(n, EASINESS_PRIOR_SD**2)
    # Start from the smoothed logit shares: already the right order, Newton only sharpens the scale.
    b = special.logit((y.sum(axis=0) + 0.5) / (len(y) + 1.0))
    theta = np.zeros(len(y))
    for _ in range(NEWTON_STEPS):
        p = special.expit(theta[:, None] + b[None, :])
        info = (p * (1 - p)).sum(axis=1) + CALIBRATION_ABILITY_PRIOR_SD**-2
        theta += np.clip(((y - p).sum(axis=1) - theta * CALIBRATION_ABILITY_PRIOR_SD**-2) / info, -2, 2)
        p = special.expit(theta[:, None] + b[None, :])
        info = (p * (1 - p)).sum(axis=0) + EASINESS_PRIOR_SD**-2
        b += np.clip(((y - p).sum(axis=0) - b * EASINESS_PRIOR_SD**-2) / info, -2, 2)
    p = special.expit(theta[:, None] + b[None, :])
    return b, 1.0 / ((p * (1 - p)).sum(axis=0) + EASINESS_PRIOR_SD**-2)


def _fit_prior(wins: np.ndarray, scored: np.ndarray, easiness: np.ndarray) -> tuple[float, float]:
    """The empirical-Bayes prior N(mu, tau^2) of theta: the marginal likelihood of every candidate's prefix counts
    (Gauss-Hermite quadrature over theta), maximised over (mu, log tau)."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(QUADRATURE_NODES)
    log_weights = np.log(weights / weights.sum())
    pairs, index = np.unique(np.stack([wins, scored], axis=1), axis=0, return_inverse=True)
    multiplicity = np.bincount(index.reshape(-1), minlength=len(pairs))

    def negative_log_likelihood(parameters: np.ndarray) -> float:
        mu, tau = parameters[0], math.exp(parameters[1])
        theta = mu + tau * nodes  # (nodes,)
        # Per node, the log-normaliser of each prefix: sum over its anchors of log(1 + exp(theta + b_a)).
        per_anchor = np.logaddexp(0.0, theta[:, None] + easiness[None, :])
        cumulative = np.concatenate([np.zeros((len(theta), 1)), np.cumsum(per_anchor, axis=1)], axis=1)
        log_joint = theta[:, None] * pairs[None, :, 0] - cumulative[:, pairs[:, 1]] + log_weights[:, None]
        return -float((special.logsumexp(log_joint, axis=0) * multiplicity).sum())

    low, high = (math.log(bound) for bound in PRIOR_SD_BOUNDS)
    found = optimize.minimize(
        negative_log_likelihood, np.array([0.0, 0.0]), method="L-BFGS-B", bounds=[(-10.0, 10.0), (low, high)]
    )
    return float(found.x[0]), float(math.exp(found.x[1]))


def _ability_at(score: float, easiness: np.ndarray) -> float:
    """The theta whose expected share of wins over all anchors is ``score`` (monotone: bisection)."""
    target = float(np.clip(score, 0.5 / len(easiness), 1 - 0.5 / len(easiness)))
    return float(optimize.brentq(lambda t: special.expit(t + easiness).mean() - target, -50.0, 50.0))


def fit_pool_model(
    screening_order: Sequence[str],
    calibration: np.ndarray,
    wins: np.ndarray | Sequence[int],
    scored: np.ndarray | Sequence[int],
    rule: SelectionRule,
    config: AdaptiveConfig,
) -> AnchorModel:
    """The pool model from the whole pool's screening: ``calibration`` holds the calibration candidates' wins on
    every anchor (columns in ``screening_order``), ``wins``/``scored`` every candidate's screening prefix counts of
    ``screening_order`` (the calibration candidates' included). The refinement order puts the anchors after the
    first ``first_anchors`` by their information at the ability of a candidate on the cut (ties: screening order)."""
    order = [str(a) for a in screening_order]
    first = min(config.first_anchors, len(order))
    easiness, easiness_var = _fit_easiness(calibration)
    w, m = np.asarray(wins, dtype=np.int64), np.asarray(scored, dtype=np.int64)
    mu, tau = _fit_prior(w, m, easiness) if len(w) else (0.0, 1.0)
    screened = AnchorModel(tuple(order), easiness, easiness_var, mu, tau)
    at = cut(PoolCounts(w, m, screened).predicted_mean, rule) if len(w) else None
    ability = mu if at is None else _ability_at(at, easiness)
    p = special.expit(ability + easiness[first:])
    rest = first + np.argsort(-(p * (1 - p)), kind="stable")
    positions = np.concatenate([np.arange(first), rest]).astype(np.int64)
    return AnchorModel(tuple(order[i] for i in positions), easiness[positions], easiness_var[positions], mu, tau)


@dataclass(frozen=True)
class PoolCounts:
    """Every candidate's state, a prefix count of ``model.order`` (wins on the first ``scored`` anchors), and
    what the model predicts from it."""

    wins: np.ndarray
    scored: np.ndarray
    model: AnchorModel

    def __post_init__(self) -> None:
        w, m = np.asarray(self.wins, dtype=np.int64), np.asarray(self.scored, dtype=np.int64)
        if w.shape != m.shape:
            raise ValueError("wins and scored must have one entry per candidate")
        if (w < 0).any() or (w > m).any() or (m > self.model.n).any():
            raise ValueError("need 0 <= wins <= scored <= n_anchors for every candidate")
        object.__setattr__(self, "wins", w)
        object.__setattr__(self, "scored", m)

    @property
    def n(self) -> int:
        return self.model.n

    @property
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """What the final score can still be: every remaining anchor lost, or every one won."""
        return self.wins / self.n, (self.wins + self.n - self.scored) / self.n

    @cached_property
    def _prediction(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and standard deviation of each final score, computed once per distinct (wins, scored)."""
        pairs, index = np.unique(np.stack([self.wins, self.scored], axis=1), axis=0, return_inverse=True)
        w, m = pairs[:, 0].astype(float), pairs[:, 1]
        b, precision = self.model.easiness, self.model.prior_sd**-2
        in_prefix = np.arange(self.n)[None, :] < m[:, None]
        theta = np.full(len(pairs), self.model.prior_mean)
        for _ in range(NEWTON_STEPS):  # the MAP of theta: concave, so Newton from the prior mean converges
            p = special.expit(theta[:, None] + b[None, :])
            gradient = w - (p * in_prefix).sum(axis=1) - (theta - self.model.prior_mean) * precision
            information = (p * (1 - p) * in_prefix).sum(axis=1) + precision
            theta += np.clip(gradient / information, -2, 2)
        p = special.expit(theta[:, None] + b[None, :])
        spread = p * (1 - p)
        information = (spread * in_prefix).sum(axis=1) + precision
        left = ~in_prefix
        mean = (w + (p * left).sum(axis=1)) / self.n
        variance = (
            (spread * left).sum(axis=1)  # the remaining anchors' own outcomes
            + (spread * left).sum(axis=1) ** 2 / information  # theta's uncertainty, by the delta method
            + (spread**2 * self.model.easiness_var[None, :] * left).sum(axis=1)  # the b_a's uncertainty
        )
        flat = index.reshape(-1)
        return mean[flat], np.sqrt(variance)[flat] / self.n

    @property
    def predicted_mean(self) -> np.ndarray:
        """The predicted final score; exactly w / n once fully scored (the division golden_score uses)."""
        low, high = self.bounds
        return np.where(self.scored == self.n, low, np.clip(self._prediction[0], low, high))

    def interval(self, confidence: float) -> tuple[np.ndarray, np.ndarray]:
        """Central ``confidence`` interval of each final score, within the bounds (the bounds at confidence 1)."""
        low, high = self.bounds
        if confidence >= 1.0:
            return low, high
        mean, sd = self._prediction
        z = stats.norm.ppf((1.0 + confidence) / 2)
        return np.clip(mean - z * sd, low, high), np.clip(mean + z * sd, low, high)


def cut(estimates: np.ndarray, rule: SelectionRule) -> float | None:
    """The threshold, or halfway between the k-th and (k+1)-th largest estimates; None when top-k keeps all or
    nothing (nothing to decide).

    Halfway, not at the k-th: when the best k tie (a cleanly separated pool), a cut at the k-th estimate would sit
    inside every one of their intervals and keep them all scoring to the end. Either way, once no interval contains
    it, exactly k estimates lie above it."""
    if rule.threshold is not None:
        return float(rule.threshold)
    k = rule.k(len(estimates))
    if k is None or k == 0 or k >= len(estimates):
        return None
    ranked = np.sort(np.asarray(estimates, dtype=float))[::-1]
    return float((ranked[k - 1] + ranked[k]) / 2)


def straddles(counts: PoolCounts, rule: SelectionRule, config: AdaptiveConfig) -> np.ndarray:
    """Whose interval still contains the cut (the cut from the whole pool's current predictions)."""
    low, high = counts.interval(config.confidence)
    at = cut(counts.predicted_mean, rule)
    if at is None:
        return np.zeros(len(low), dtype=bool)
    if rule.threshold is not None:
        return (low <= at) & (at < high)  # selected means S > t: hi == t is surely not selected
    return (low <= at) & (at <= high)  # S == cut ties with the cut: only the full mean delta breaks it


def needs_more(counts: PoolCounts, rule: SelectionRule, config: AdaptiveConfig) -> np.ndarray:
    """Which candidates get another round: straddling the cut with anchors left. Call it on the whole pool (every
    shard): the top-k cut is the pool's."""
    return straddles(counts, rule, config) & (counts.scored < counts.n)


def next_counts(counts: PoolCounts, rule: SelectionRule, config: AdaptiveConfig) -> np.ndarray:
    """How many anchors (a prefix of ``model.order``) each candidate should have after the next round."""
    more = needs_more(counts, rule, config)
    return np.where(more, np.minimum(counts.scored + config.round_anchors, counts.n), counts.scored)


def select(
    counts: PoolCounts,
    rule: SelectionRule,
    mean_delta: np.ndarray | Sequence[float] | None = None,
    candidate_ids: np.ndarray | Sequence[str] | None = None,
) -> np.ndarray:
    """The selection (a boolean mask) by exactly ``rule`` on the predicted scores: > threshold, or the k best,
    then mean delta over the scored anchors, then id (``select_golden``'s tie rule)."""
    n_candidates = len(counts.wins)
    ids = np.arange(n_candidates).astype(str) if candidate_ids is None else np.asarray(candidate_ids).astype(str)
    delta = np.zeros(n_candidates) if mean_delta is None else np.asarray(mean_delta, dtype=float)
    return select_mask(counts.predicted_mean, delta, ids, rule)


def allocation_status(counts: PoolCounts, rule: SelectionRule, config: AdaptiveConfig) -> pd.DataFrame:
    """Per candidate what the stored scores should say: anchors scored, estimate, interval, settled early."""
    low, high = counts.interval(config.confidence)
    more = needs_more(counts, rule, config)
    return pd.DataFrame(
        {
            "anchors_scored": counts.scored,
            "estimate": counts.predicted_mean,
            "ci_low": low,
            "ci_high": high,
            "needs_more": more,
            "settled_early": ~more & (counts.scored < counts.n),
        }
    )


@dataclass(frozen=True)
class ReplayResult:
    """The rule simulated on a full matrix: what it would have scored and selected."""

    anchors_scored: np.ndarray  # per candidate
    selected: np.ndarray  # boolean mask over the matrix rows
    selected_ids: list[str]
    settled_early: np.ndarray  # stopped before the last anchor
    rounds: int  # screening included; the most any shard took
    passes: int  # (candidate, anchor) pairs scored
    passes_exact: int
    model: AnchorModel | None = None

    @property
    def passes_fraction(self) -> float:
        return self.passes / self.passes_exact if self.passes_exact else 0.0


def _ordered_columns(columns: Sequence[str], order: Sequence[str]) -> np.ndarray:
    position = {a: i for i, a in enumerate(columns)}
    return np.array([position[a] for a in order], dtype=np.int64)


def _cumulative(values: np.ndarray) -> np.ndarray:
    """Column m: the sum over the first m columns."""
    return np.concatenate([np.zeros((len(values), 1)), np.cumsum(values, axis=1)], axis=1)


def replay(
    wins_matrix: np.ndarray,
    rule: SelectionRule,
    config: AdaptiveConfig,
    *,
    deltas: np.ndarray | None = None,
    candidate_ids: Sequence[str] | None = None,
    anchor_ids: Sequence[str] | None = None,
    shards: Sequence[str] | None = None,
) -> ReplayResult:
    """What the live engine does, on a full boolean (candidates x anchors) matrix: screen every shard
    (``calibration_members``), fit the pool model (``fit_pool_model``), then refine shard by shard, each against the
    others' screening counts (``core.adaptive_scoring.refine_shard``'s snapshot), revealing the next anchors of
    ``model.order`` to the candidates ``next_counts`` names until none needs more.

    ``deltas`` (same shape) give the mean-delta tie-break; ``anchor_ids`` the columns' ids (default: positions);
    ``shards`` each row's shard (default: one shard)."""
    matrix = np.asarray(wins_matrix, dtype=bool)
    n_candidates, n = matrix.shape
    columns = [str(a) for a in anchor_ids] if anchor_ids is not None else [f"{i:06d}" for i in range(n)]
    ids = np.array(candidate_ids, dtype=str) if candidate_ids is not None else np.arange(n_candidates).astype(str)
    shard_of = np.asarray([str(s) for s in shards]) if shards is not None else np.zeros(n_candidates).astype(str)
    screening_order = anchor_order(columns, config.seed)
    calibration = np.zeros(n_candidates, dtype=bool)
    for shard in np.unique(shard_of):
        own = shard_of == shard
        calibration[own] = calibration_members(ids[own], config.calibration_share, config.seed)
    screened = np.where(calibration, n, min(config.first_anchors, n)).astype(np.int64)
    in_screening_order = matrix[:, _ordered_columns(columns, screening_order)]
    screening_wins = _cumulative(in_screening_order)[np.arange(n_candidates), screened].astype(np.int64)
    model = fit_pool_model(screening_order, in_screening_order[calibration], screening_wins, screened, rule, config)
    in_model_order = _ordered_columns(columns, model.order)
    cumulative_wins = _cumulative(matrix[:, in_model_order]).astype(np.int64)
    rows = np.arange(n_candidates)
    final, rounds = screened.copy(), 0
    for shard in np.unique(shard_of):
        own = shard_of == shard
        scored, shard_rounds = screened.copy(), 0
        while True:
            target = next_counts(PoolCounts(cumulative_wins[rows, scored], scored, model), rule, config)
            step = np.where(own, target, scored)
            if (step == scored).all():
                break
            scored, shard_rounds = step, shard_rounds + 1
        final[own], rounds = scored[own], max(rounds, shard_rounds)
    ordered_deltas = (
        np.zeros((n_candidates, n)) if deltas is None else np.asarray(deltas, dtype=float)[:, in_model_order]
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_delta = _cumulative(ordered_deltas)[rows, final] / final
    chosen = select(PoolCounts(cumulative_wins[rows, final], final, model), rule, mean_delta, ids)
    return _result(final, chosen, ids, rounds + 1, n, model)


def _result(
    scored: np.ndarray, chosen: np.ndarray, ids: np.ndarray, rounds: int, n: int, model: AnchorModel | None = None
) -> ReplayResult:
    return ReplayResult(
        anchors_scored=scored,
        selected=chosen,
        selected_ids=[str(i) for i in ids[chosen]],
        settled_early=scored < n,
        rounds=rounds,
        passes=int(scored.sum()),
        passes_exact=len(scored) * n,
        model=model,
    )


def replay_matrix(matrix: PairMatrix, rule: SelectionRule, config: AdaptiveConfig) -> ReplayResult:
    """``replay`` on a complete pair matrix (one shard), with its deltas and ids."""
    return replay(
        matrix.wins,
        rule,
        config,
        deltas=matrix.deltas,
        candidate_ids=matrix.candidate_ids,
        anchor_ids=matrix.anchor_ids,
    )


def replay_plain_rule(matrix: PairMatrix, rule: SelectionRule, config: AdaptiveConfig) -> ReplayResult:
    """The issue's calibration baseline, replayed to be beaten on the same matrix (not a scoring mode): after the
    first anchors of the seeded order, rounds of ``round_anchors``; a normal-approximation interval of the final win
    rate, p ± z sqrt(p (1 - p) / m (n - m) / (n - 1)); a candidate settled for good once its interval clears the
    current cut (the threshold, or the k-th largest p); the selection by p, then mean delta, then id."""
    n_candidates, n = matrix.shape
    ids = np.asarray(matrix.candidate_ids).astype(str)
    columns = [str(a) for a in matrix.anchor_ids]
    in_order = _ordered_columns(columns, anchor_order(columns, config.seed))
    cumulative_wins = _cumulative(matrix.wins[:, in_order])
    ordered_deltas = np.asarray(matrix.deltas, dtype=float)[:, in_order]
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
        mean_delta = _cumulative(ordered_deltas)[rows, scored] / scored
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
    spent on average (rounded), over the same seeds; and for the plain baseline rule (``replay_plain_rule``, at its
    own rounds of 10, whatever ``config`` says)."""
    base = config or AdaptiveConfig()
    golden = matrix.golden_scores()
    exact = select_mask(golden, matrix.mean_delta(), matrix.candidate_ids, rule)
    n = matrix.shape[1]
    adaptive, fixed, plain = [], [], []

    def figures(
        rule_replay: Callable[[PairMatrix, SelectionRule, AdaptiveConfig], ReplayResult],
        confidence: float,
        rounds: AdaptiveConfig,
    ) -> dict[str, float]:
        runs = [rule_replay(matrix, rule, replace(rounds, confidence=confidence, seed=seed)) for seed in seeds]
        return {
            "confidence": confidence,
            "passes_fraction": round(float(np.mean([r.passes_fraction for r in runs])), 4),
            "agreement": round(float(np.mean([agreement(r.selected, exact) for r in runs])), 4),
            "agreement_min": round(float(np.min([agreement(r.selected, exact) for r in runs])), 4),
            "quality": round(float(np.mean([quality(r.selected, exact, golden) for r in runs])), 4),
            "rounds": round(float(np.mean([r.rounds for r in runs])), 1),
        }

    for confidence in confidences:
        adaptive.append(figures(replay_matrix, confidence, base))
        plain.append(figures(replay_plain_rule, confidence, PLAIN_RULE_ROUNDS))
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
    "AdaptiveConfig",
    "AnchorModel",
    "PoolCounts",
    "ReplayResult",
    "SelectionRule",
    "agreement",
    "allocation_status",
    "anchor_order",
    "calibration_members",
    "compare_with_exact",
    "cut",
    "fit_pool_model",
    "needs_more",
    "next_counts",
    "quality",
    "rank_order",
    "replay",
    "replay_matrix",
    "replay_plain_rule",
    "select",
    "straddles",
    "subsample_selection",
]
