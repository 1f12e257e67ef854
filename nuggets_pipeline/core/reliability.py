"""How much of a golden-score ranking is signal: a readout from the (candidate, anchor) deltas already scored.

A golden score is the share of n anchors a candidate's one-shot prefix helps: n coin flips whose bias is the
candidate's quality. Whether those flips rank candidates reliably is measured here without any extra forward pass:

- split-half reliability: the anchors are cut into two disjoint random halves (seeded, repeated); the Spearman
  correlation of the two half golden scores, averaged over the splits, is the reliability of a score on n/2
  anchors, and the Spearman–Brown formula steps it up to the full count (``spearman_brown``);
- the overlap of the selected set when selection is repeated on two disjoint halves (beside its chance level);
- per-anchor discrimination: the share of candidates that win each anchor; an anchor nearly every candidate wins
  (> 90%) or nearly none does (< 10%) hardly tells candidates apart, and the readout names it;
- the anchor count that would reach a reliability of 0.8 (Spearman–Brown prophecy, ``anchors_for``);
- the binomial noise of a score at the current count beside the observed spread of the scores.

Only candidates scored on every anchor are used (decision-mode and adaptive rows stop early, and a matrix with holes
has no halves to compare); the readout says how many were left out. Plain numpy/scipy/pandas: no Dagster.

``SelectionRule`` and ``rank_order`` (the selection rules of ``core.selection`` on arrays) live here because both
this readout and ``core.adaptive`` select on matrices.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

RELIABLE = 0.8  # the usual bar for a measurement to rank individuals; the anchor count is reported for it
WARN_BELOW = 0.7  # the asset check warns below this (checks.py)
MOSTLY_NOISE_BELOW = 0.5  # below this, more than half of the ranking's variance is the draw of anchors
UNINFORMATIVE_HIGH, UNINFORMATIVE_LOW = 0.9, 0.1  # anchor win shares that barely tell candidates apart
MIN_CANDIDATES = 10  # fewer complete candidates give a correlation too noisy to report
MIN_ANCHORS = 4  # two per half at least
DEFAULT_SPLITS = 100


@dataclass(frozen=True)
class SelectionRule:
    """One of ``core.selection.select_golden``'s criteria: a threshold, a top-k or a top fraction."""

    threshold: float | None = None
    top_k: int | None = None
    top_fraction: float | None = None

    def __post_init__(self) -> None:
        given = [n for n in ("threshold", "top_k", "top_fraction") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of threshold, top_k, top_fraction (got {given or 'none'})")
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be within [0, 1], got {self.threshold}")
        if self.top_k is not None and (isinstance(self.top_k, bool) or self.top_k < 0):
            raise ValueError(f"top_k must be a non-negative integer, got {self.top_k!r}")
        if self.top_fraction is not None and not 0.0 < self.top_fraction <= 1.0:
            raise ValueError(f"top_fraction must be within (0, 1], got {self.top_fraction}")

    @classmethod
    def from_criterion(cls, criterion: Mapping[str, float | int]) -> SelectionRule:
        """From ``GoldenSelectionConfig.criterion()``'s dict (one key)."""
        return cls(**{str(k): v for k, v in criterion.items()})  # type: ignore[arg-type]

    def k(self, n_candidates: int) -> int | None:
        """How many are selected out of ``n_candidates`` (None for a threshold: it depends on the scores)."""
        if self.top_k is not None:
            return min(int(self.top_k), n_candidates)
        if self.top_fraction is not None:
            # The same epsilon as select_golden: 0.29 * 100 stays 29.
            return math.floor(self.top_fraction * n_candidates + 1e-9)
        return None

    def describe(self) -> str:
        if self.threshold is not None:
            return f"golden score > {self.threshold:g}"
        if self.top_k is not None:
            return f"top {self.top_k}"
        return f"top {self.top_fraction:.0%}" if self.top_fraction is not None else ""


def rank_order(score: np.ndarray, mean_delta: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Indices best first, with ``select_golden``'s ranking: score, then mean delta (both descending), then id."""
    # np.lexsort sorts by the last key first; negating puts high first and keeps NaN last, as pandas does.
    # Integer ids are taken as ranks of the real ids (a caller's precomputed order: string sorts are slow).
    keys = np.asarray(ids)
    keys = keys if np.issubdtype(keys.dtype, np.integer) else keys.astype(str)
    return np.lexsort((keys, -np.asarray(mean_delta, float), -np.asarray(score, float)))


def select_mask(score: np.ndarray, mean_delta: np.ndarray, ids: np.ndarray, rule: SelectionRule) -> np.ndarray:
    """Boolean mask of what ``select_golden`` keeps from exact scores laid out as arrays."""
    score = np.asarray(score, dtype=float)
    if rule.threshold is not None:
        return score > rule.threshold
    chosen = np.zeros(len(score), dtype=bool)
    chosen[rank_order(score, mean_delta, ids)[: rule.k(len(score))]] = True
    return chosen


@dataclass(frozen=True)
class PairMatrix:
    """The complete candidates' (candidate x anchor) wins and deltas; rows by candidate id, columns by anchor id."""

    candidate_ids: np.ndarray
    anchor_ids: np.ndarray
    deltas: np.ndarray  # float, candidates x anchors
    incomplete: int = 0  # candidates of the pair table left out because some anchor was not scored for them

    @property
    def wins(self) -> np.ndarray:
        return self.deltas > 0  # the engine's rule: one_shot > zero_shot

    @property
    def shape(self) -> tuple[int, int]:
        return self.deltas.shape  # type: ignore[return-value]

    def golden_scores(self) -> np.ndarray:
        return self.wins.mean(axis=1)

    def mean_delta(self) -> np.ndarray:
        return self.deltas.mean(axis=1)


def pair_matrix(pairs: pd.DataFrame, anchor_ids: Sequence[str] | None = None) -> PairMatrix:
    """The complete candidates of a pair table (columns candidate_id, anchor_id, delta) as a matrix.

    ``anchor_ids``: the full anchor set (default: every anchor the table names). A (candidate, anchor) pair stored
    twice keeps its last row, as the shard scoring does.
    """
    missing = {"candidate_id", "anchor_id", "delta"} - set(pairs.columns)
    if missing:
        raise ValueError(f"a pair table needs the columns candidate_id, anchor_id, delta; missing {sorted(missing)}")
    frame = pairs[["candidate_id", "anchor_id", "delta"]].astype({"candidate_id": str, "anchor_id": str})
    frame = frame.drop_duplicates(["candidate_id", "anchor_id"], keep="last")
    anchors = sorted(set(frame["anchor_id"])) if anchor_ids is None else [str(a) for a in anchor_ids]
    if frame.empty:  # nothing stored (scoring kept no deltas): a matrix with no candidate
        return PairMatrix(np.array([], dtype=str), np.array(anchors, dtype=str), np.zeros((0, len(anchors))))
    wide = frame.pivot(index="candidate_id", columns="anchor_id", values="delta").reindex(columns=anchors)
    wide = wide.sort_index()
    complete = wide.notna().all(axis=1).to_numpy()
    return PairMatrix(
        candidate_ids=wide.index.to_numpy()[complete].astype(str),
        anchor_ids=np.array(anchors, dtype=str),
        deltas=wide.to_numpy(dtype=float)[complete],
        incomplete=int((~complete).sum()),
    )


def spearman_brown(reliability: float, factor: float) -> float:
    """The reliability of a test ``factor`` times as long: k r / (1 + (k - 1) r)."""
    return factor * reliability / (1 + (factor - 1) * reliability)


def anchors_for(reliability: float, anchors: int, target: float = RELIABLE) -> int | None:
    """The anchor count at which a score of reliability ``reliability`` on ``anchors`` anchors reaches ``target``
    (the Spearman–Brown formula solved for its length factor); None when there is no signal to step up."""
    if not reliability > 0 or not 0 < target < 1:
        return None
    if reliability >= 1:
        return 1
    factor = target * (1 - reliability) / (reliability * (1 - target))
    return max(1, math.ceil(anchors * factor - 1e-9))


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a constant half (every candidate ties) has no correlation: NaN
        return float(stats.spearmanr(a, b).statistic)


def _overlap(first: np.ndarray, second: np.ndarray) -> tuple[float, float]:
    """|A ∩ B| over the mean size (|A ∩ B| / k for top-k), and what independent picks of those sizes would give."""
    size = (first.sum() + second.sum()) / 2
    if size == 0:
        return math.nan, math.nan
    return float((first & second).sum() / size), float(first.sum() * second.sum() / len(first) / size)


@dataclass(frozen=True)
class ReliabilityReadout:
    """What the readout found; ``line`` is the plain-language verdict, ``as_metadata()`` the figures."""

    verdict: str  # "reliable", "partly anchor noise", "mostly anchor noise" or "cannot say"
    line: str
    candidates: int  # complete candidates the figures come from
    candidates_incomplete: int
    anchors_measured: int  # anchors in the matrix
    anchors: int  # the count the reliability is stepped up to (the full anchor set)
    splits: int
    seed: int
    criterion: str
    half_correlation: float  # mean Spearman correlation of the two half scores (each on anchors_measured // 2)
    reliability: float  # stepped up to ``anchors``
    selection_overlap: float  # of the selected sets on two disjoint halves
    selection_overlap_chance: float
    anchors_for_reliability_0_8: int | None
    mean_score: float
    observed_sd: float
    binomial_sd: float  # the coin-flip noise of one score at anchors_measured
    noise_share: float  # binomial variance over observed variance (capped at 1)
    uninformative_anchors: list[str] = field(default_factory=list)
    anchor_win_share: pd.DataFrame = field(default_factory=pd.DataFrame)  # anchor_id, win_share, informative

    def as_metadata(self) -> dict[str, Any]:
        """Plain JSON-ready values (NaN as None) for Dagster metadata, reports and the benchmark's JSON line."""

        def plain(value: Any) -> Any:
            if isinstance(value, float | np.floating):
                return None if math.isnan(value) else round(float(value), 4)
            if isinstance(value, np.integer):
                return int(value)
            return value

        keys = [
            "verdict", "line", "reliability", "half_correlation", "anchors", "anchors_measured", "candidates",
            "candidates_incomplete", "splits", "seed", "criterion", "selection_overlap", "selection_overlap_chance",
            "anchors_for_reliability_0_8", "mean_score", "observed_sd", "binomial_sd", "noise_share",
        ]  # fmt: skip
        figures = {key: plain(getattr(self, key)) for key in keys}
        figures["uninformative_anchors"] = len(self.uninformative_anchors)
        figures["uninformative_anchor_ids"] = ", ".join(self.uninformative_anchors)
        return figures


def _cannot_say(matrix: PairMatrix, anchors: int, reason: str, criterion: str, splits: int, seed: int):
    left_out = f" ({matrix.incomplete} candidates without every anchor left out)" if matrix.incomplete else ""
    nan = math.nan
    return ReliabilityReadout(
        verdict="cannot say",
        line=f"cannot say: {reason}{left_out}",
        candidates=matrix.shape[0],
        candidates_incomplete=matrix.incomplete,
        anchors_measured=matrix.shape[1],
        anchors=anchors,
        splits=0,
        seed=seed,
        criterion=criterion,
        half_correlation=nan,
        reliability=nan,
        selection_overlap=nan,
        selection_overlap_chance=nan,
        anchors_for_reliability_0_8=None,
        mean_score=nan,
        observed_sd=nan,
        binomial_sd=nan,
        noise_share=nan,
    )


def readout(
    matrix: PairMatrix | pd.DataFrame,
    rule: SelectionRule | None = None,
    *,
    full_anchors: int | None = None,
    splits: int = DEFAULT_SPLITS,
    seed: int = 0,
) -> ReliabilityReadout:
    """The reliability readout of a pair table or matrix, for selection by ``rule`` (default: the top quarter).

    ``full_anchors``: the anchor count to step the reliability up to when the matrix holds only some anchors (a
    pilot); default the matrix's own count.
    """
    if isinstance(matrix, pd.DataFrame):
        matrix = pair_matrix(matrix)
    rule = rule or SelectionRule(top_fraction=0.25)
    n_candidates, n = matrix.shape
    anchors = full_anchors or n
    criterion = rule.describe()
    if n_candidates < MIN_CANDIDATES:
        reason = f"only {n_candidates} candidates were scored on every anchor (at least {MIN_CANDIDATES} needed)"
        return _cannot_say(matrix, anchors, reason, criterion, splits, seed)
    if n < MIN_ANCHORS:
        reason = f"only {n} anchors were scored (at least {MIN_ANCHORS} needed for two halves)"
        return _cannot_say(matrix, anchors, reason, criterion, splits, seed)

    wins, deltas = matrix.wins, matrix.deltas
    ids = np.argsort(np.argsort(matrix.candidate_ids.astype(str)))  # id order as integers: same ties, faster sorts
    half = n // 2  # an odd count leaves one anchor out of each split, so both halves have the same length
    rng = np.random.default_rng(seed)
    correlations, overlaps, chances = [], [], []
    for _ in range(splits):
        permuted = rng.permutation(n)
        sides = (permuted[:half], permuted[half : 2 * half])
        scores = [wins[:, side].mean(axis=1) for side in sides]
        correlations.append(_spearman(*scores))
        chosen = [
            select_mask(s, deltas[:, side].mean(axis=1), ids, rule) for s, side in zip(scores, sides, strict=True)
        ]
        overlap, chance = _overlap(*chosen)
        overlaps.append(overlap)
        chances.append(chance)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # all-NaN (no ranking on any split) stays NaN
        half_r = float(np.nanmean(correlations))
        overlap, chance = float(np.nanmean(overlaps)), float(np.nanmean(chances))
    # A non-positive half correlation means no measurable signal: more anchors of this kind cannot rescue it.
    reliability = spearman_brown(max(half_r, 0.0), anchors / half) if not math.isnan(half_r) else math.nan
    needed = anchors_for(reliability, anchors) if not math.isnan(reliability) else None

    share = wins.mean(axis=0)
    informative = (share <= UNINFORMATIVE_HIGH) & (share >= UNINFORMATIVE_LOW)
    table = pd.DataFrame({"anchor_id": matrix.anchor_ids, "win_share": share, "informative": informative})
    uninformative = [str(a) for a in matrix.anchor_ids[~informative]]

    golden = wins.mean(axis=1)
    observed_sd = float(golden.std(ddof=1))
    # p(1 - p) / (n - 1) is unbiased for the variance p(1 - p) / n of a score that is n coin flips of bias p;
    # averaged over candidates it is the noise part of the observed variance.
    binomial_sd = math.sqrt(float(np.mean(golden * (1 - golden))) / (n - 1))
    noise_share = min(1.0, binomial_sd**2 / observed_sd**2) if observed_sd > 0 else 1.0

    left_out = (
        f"; {matrix.incomplete} candidates without every anchor left out: adaptive and decision scoring give "
        "every anchor only to the candidates nearest the cut, whose close scores are the hardest to order, so "
        "this likely understates the whole pool's reliability"
        if matrix.incomplete
        else ""
    )
    measured = "" if anchors == n else f", measured on {n}"
    if math.isnan(reliability):
        verdict = "cannot say"
        head = "cannot say: every candidate ties on the anchor halves, so there is no ranking to measure"
    elif reliability >= RELIABLE:
        verdict, head = "reliable", "reliable"
    else:
        verdict = "mostly anchor noise" if reliability < MOSTLY_NOISE_BELOW else "partly anchor noise"
        more = f"about {needed} for {RELIABLE:g}" if needed else "no signal to step up: these anchors do not rank"
        head = f"{verdict}: add anchors ({more})"
    line = (
        f"{head} — split-half reliability {reliability:.2f} at {anchors} anchors{measured} "
        f"({n_candidates} candidates{left_out}); the {criterion} picked on two disjoint halves of {half} anchors "
        f"overlap {overlap:.2f} (chance {chance:.2f}); score spread {observed_sd:.3f} against {binomial_sd:.3f} "
        f"coin-flip noise at {n} anchors; {len(uninformative)} of {n} anchors are won by more than "
        f"{UNINFORMATIVE_HIGH:.0%} or fewer than {UNINFORMATIVE_LOW:.0%} of candidates"
    )
    return ReliabilityReadout(
        verdict=verdict,
        line=line,
        candidates=n_candidates,
        candidates_incomplete=matrix.incomplete,
        anchors_measured=n,
        anchors=anchors,
        splits=splits,
        seed=seed,
        criterion=criterion,
        half_correlation=half_r,
        reliability=reliability,
        selection_overlap=overlap,
        selection_overlap_chance=chance,
        anchors_for_reliability_0_8=needed,
        mean_score=float(golden.mean()),
        observed_sd=observed_sd,
        binomial_sd=binomial_sd,
        noise_share=noise_share,
        uninformative_anchors=uninformative,
        anchor_win_share=table,
    )


def render_markdown(figures: Mapping[str, Any]) -> list[str]:
    """The readout (``as_metadata()``'s dict) as Markdown lines for a report."""
    if not figures:
        return []
    lines = ["## How much to trust the ranking", "", f"**{figures.get('line', '')}**", ""]
    if figures.get("verdict") != "cannot say":
        lines += [
            "| figure | value |",
            "|---|---|",
            f"| split-half reliability (stepped up to {figures.get('anchors')} anchors) | "
            f"{figures.get('reliability')} |",
            f"| anchors for a reliability of {RELIABLE:g} | {figures.get('anchors_for_reliability_0_8') or '–'} |",
            f"| overlap of the {figures.get('criterion')} on two disjoint anchor halves | "
            f"{figures.get('selection_overlap')} (chance {figures.get('selection_overlap_chance')}) |",
            f"| observed score sd / coin-flip noise sd | {figures.get('observed_sd')} / {figures.get('binomial_sd')} |",
            f"| uninformative anchors (won by >{UNINFORMATIVE_HIGH:.0%} or <{UNINFORMATIVE_LOW:.0%}) | "
            f"{figures.get('uninformative_anchors')} of {figures.get('anchors_measured')} |",
            f"| candidates measured (left out: not scored on every anchor) | {figures.get('candidates')} "
            f"({figures.get('candidates_incomplete')}) |",
            "",
            "A reliability of 1 means a second, disjoint set of anchors would rank the candidates the same way; "
            "0 means the ranking is the luck of the anchor draw.",
            "",
        ]
    return lines


__all__ = [
    "MIN_ANCHORS",
    "MIN_CANDIDATES",
    "RELIABLE",
    "WARN_BELOW",
    "PairMatrix",
    "ReliabilityReadout",
    "SelectionRule",
    "anchors_for",
    "pair_matrix",
    "rank_order",
    "readout",
    "render_markdown",
    "select_mask",
    "spearman_brown",
]
