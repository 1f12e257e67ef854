"""Pick the golden subset from one-shot scores: by threshold, top-k or top fraction."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

PAPER_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9)


# The paper kept 7,525 of 52,002 Alpaca examples (golden score > 0.8): a 14.47% share. The default selects that
# share, so a pipeline run with no edits always has something to train on (a small scoring model such as SmolLM2
# rarely scores a candidate above 0.8; see README, "Stale scores" and "Selection defaults").
PAPER_GOLDEN_SHARE = round(7_525 / 52_002, 4)


def _above(scores: pd.DataFrame, threshold: float) -> np.ndarray:
    """golden_score > threshold per row, also for rows that decision mode stopped early.

    An early-stopped row only bounds its final score: at least wins / n, at most (wins + unscored) / n. Both
    bounds use the same division as the exact score, so a row decided at threshold t is decided the same way here.
    """
    # Adaptive rows carry an estimate as golden score, clipped into the interval refinement settled them by.
    exact = np.isin(scores["verdict"].to_numpy(), ("exact", "adaptive"))
    wins = scores["wins"].to_numpy(dtype=np.float64)
    n = scores["n_anchors"].to_numpy(dtype=np.float64)
    unscored = n - scores["anchors_scored"].to_numpy(dtype=np.float64)
    surely_above = ~exact & (wins / n > threshold)
    surely_not = ~exact & ((wins + unscored) / n <= threshold)
    undecided = ~exact & ~surely_above & ~surely_not
    if undecided.any():
        raise ValueError(
            f"{int(undecided.sum())} candidates were scored in decision mode at another threshold and cannot be "
            f"placed against {threshold}; rescore them exactly or at this threshold"
        )
    return (exact & (scores["golden_score"].to_numpy() > threshold)) | surely_above


def _ranked(scores: pd.DataFrame) -> pd.DataFrame:
    if scores["verdict"].isin(("accept", "reject")).any():
        raise ValueError("top-k and top-fraction selection need scores; decision-mode rows have none")
    # Ties in golden score (common: it is a count over ~100 anchors) fall back to the mean log-prob gain.
    return scores.sort_values(["golden_score", "mean_delta", "candidate_id"], ascending=[False, False, True])


def select_golden(
    scores: pd.DataFrame,
    threshold: float | None = None,
    top_k: int | None = None,
    top_fraction: float | None = None,
) -> pd.DataFrame:
    """The selected rows of ``scores``: exactly one of

    - ``threshold``: golden_score strictly greater than it (rows in input order),
    - ``top_k``: the k best (ranked by golden score, then mean delta, then id),
    - ``top_fraction``: the best floor(fraction * n) rows, ranked the same way.
    """
    given = [
        name
        for name, value in (("threshold", threshold), ("top_k", top_k), ("top_fraction", top_fraction))
        if value is not None
    ]
    if len(given) != 1:
        raise ValueError(f"give exactly one of threshold, top_k, top_fraction (got {given or 'none'})")
    if threshold is not None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be within [0, 1], got {threshold}")
        return scores[_above(scores, threshold)]
    if top_k is not None:
        if isinstance(top_k, bool) or not isinstance(top_k, int | np.integer) or top_k < 0:
            raise ValueError(f"top_k must be a non-negative integer, got {top_k!r}")
        return _ranked(scores).head(int(top_k))
    if top_fraction is None or not 0.0 < top_fraction <= 1.0:
        raise ValueError(f"top_fraction must be within (0, 1], got {top_fraction}")
    return _ranked(scores).head(fraction_count(top_fraction, len(scores)))


def fraction_count(fraction: float, n: int) -> int:
    """How many of ``n`` rows the best ``fraction`` holds: floor, where the epsilon keeps 0.29 * 100
    (28.999999999999996 in floating point) at 29."""
    return math.floor(fraction * n + 1e-9)


def response_lengths(pool: pd.DataFrame) -> pd.Series:
    """Response length in characters, the measure of the length baselines: it needs no tokenizer, so the
    baselines do not change with the scoring model."""
    return pool["output"].fillna("").astype(str).str.len()


def select_longest(pool: pd.DataFrame, k: int) -> pd.DataFrame:
    """The ``k`` examples with the longest responses, ties by id: the "long is more" baseline (Zhao et al.,
    arXiv 2402.04833, whose 1,000 longest responses beat LIMA and AlpaGasus)."""
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 0 <= k <= len(pool):
        raise ValueError(f"k must be an integer within [0, {len(pool)}], got {k!r}")
    ranked = pool.assign(_length=response_lengths(pool)).sort_values(["_length", "id"], ascending=[False, True])
    return ranked.drop(columns="_length").head(int(k))


def select_length_matched(pool: pd.DataFrame, reference: pd.DataFrame, seed: int, bins: int = 10) -> pd.DataFrame:
    """A seeded random sample of ``pool`` with the response-length distribution of ``reference`` (a subset of
    it): the pool's length quantiles cut it into ``bins`` strata, and each stratum gives as many random examples
    as the reference has in it. Set beside ``reference``, it isolates what a selector adds beyond length. Like the
    random control it draws from the whole pool, so it may share examples with ``reference``."""
    if bins < 1:
        raise ValueError(f"bins must be positive, got {bins}")
    missing = set(reference["id"]) - set(pool["id"])
    if missing:
        raise ValueError(f"{len(missing)} reference examples are not in the pool, e.g. {sorted(missing)[:3]}")
    lengths = response_lengths(pool)
    # Ranks first, so ties in length cannot make two quantile edges equal (qcut would refuse them).
    strata = pd.qcut(lengths.rank(method="first"), q=min(bins, len(pool)), labels=False)
    stratum_of = dict(zip(pool["id"], strata, strict=True))
    wanted = pd.Series([stratum_of[i] for i in reference["id"]]).value_counts()
    rng = np.random.default_rng(seed)
    chosen: list[pd.DataFrame] = []
    for stratum, count in sorted(wanted.items()):
        members = pool[strata.to_numpy() == stratum].sort_values("id")
        picks = rng.choice(len(members), size=int(count), replace=False)
        chosen.append(members.iloc[np.sort(picks)])
    return pd.concat(chosen) if chosen else pool.head(0)


def select_bottom(scores: pd.DataFrame, k: int) -> pd.DataFrame:
    """The k worst rows by the same ranking as ``top_k`` (the mirror image of the golden subset)."""
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 0:
        raise ValueError(f"k must be a non-negative integer, got {k!r}")
    if k > len(scores):
        raise ValueError(f"cannot take the bottom {k} of only {len(scores)} scored candidates")
    return _ranked(scores).tail(int(k)).iloc[::-1] if k else scores.head(0)


def threshold_table(scores: pd.DataFrame, thresholds: tuple[float, ...] = PAPER_THRESHOLDS) -> pd.DataFrame:
    """Golden subset size per threshold, the form of the paper's Table 3."""
    sizes = [len(select_golden(scores, threshold=t)) for t in thresholds]
    return pd.DataFrame(
        {
            "threshold": list(thresholds),
            "subset_size": sizes,
            "fraction": [size / len(scores) if len(scores) else float("nan") for size in sizes],
        }
    )


__all__ = [
    "PAPER_GOLDEN_SHARE",
    "PAPER_THRESHOLDS",
    "fraction_count",
    "response_lengths",
    "select_bottom",
    "select_golden",
    "select_length_matched",
    "select_longest",
    "threshold_table",
]
