"""Golden-subset selection from score tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nuggets_pipeline.core.selection import select_golden, select_length_matched, select_longest, threshold_table


def scores(golden: list[float], n_anchors: int = 10, mean_delta: list[float] | None = None) -> pd.DataFrame:
    wins = [round(g * n_anchors) for g in golden]
    return pd.DataFrame(
        {
            "candidate_id": [f"c{i}" for i in range(len(golden))],
            "golden_score": [w / n_anchors for w in wins],
            "wins": wins,
            "anchors_scored": n_anchors,
            "n_anchors": n_anchors,
            "verdict": "exact",
            "mean_delta": mean_delta if mean_delta is not None else [0.0] * len(golden),
        }
    )


def decided(rows: list[tuple[int, int, str]], n_anchors: int = 10) -> pd.DataFrame:
    """Rows of (wins, anchors_scored, verdict) as decision mode leaves them."""
    wins, scored, verdict = zip(*rows, strict=True)
    exact = np.array(scored) == n_anchors
    return pd.DataFrame(
        {
            "candidate_id": [f"d{i}" for i in range(len(rows))],
            "golden_score": np.where(exact, np.array(wins) / n_anchors, np.nan),
            "wins": wins,
            "anchors_scored": scored,
            "n_anchors": n_anchors,
            "verdict": verdict,
            "mean_delta": 0.0,
        }
    )


def test_threshold_is_strictly_greater() -> None:
    table = scores([0.9, 0.8, 0.7, 1.0, 0.81], n_anchors=100)
    assert select_golden(table, threshold=0.8)["candidate_id"].tolist() == ["c0", "c3", "c4"]
    assert select_golden(table, threshold=0.0)["candidate_id"].tolist() == ["c0", "c1", "c2", "c3", "c4"]
    assert select_golden(table, threshold=1.0).empty


def test_threshold_strictness_survives_floating_point() -> None:
    # 7 / 10 and 0.7 are the same double; 0.7 * 10 is not 7, which is why nothing multiplies the threshold.
    table = scores([0.7, 0.8], n_anchors=10)
    assert select_golden(table, threshold=0.7)["candidate_id"].tolist() == ["c1"]


def test_top_k_ranks_by_score_then_mean_delta() -> None:
    table = scores([0.5, 0.9, 0.5, 0.7], mean_delta=[0.1, -1.0, 0.3, 0.0])
    assert select_golden(table, top_k=3)["candidate_id"].tolist() == ["c1", "c3", "c2"]
    assert select_golden(table, top_k=0).empty
    assert len(select_golden(table, top_k=10)) == 4


def test_top_fraction_takes_the_floor() -> None:
    table = scores(list(np.linspace(0, 1, 100)), n_anchors=100)
    assert len(select_golden(table, top_fraction=0.29)) == 29
    assert len(select_golden(table, top_fraction=0.005)) == 0
    assert len(select_golden(table, top_fraction=1.0)) == 100
    best = select_golden(table, top_fraction=0.1)
    assert best["golden_score"].min() >= table["golden_score"].nlargest(10).min()


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"threshold": 0.5, "top_k": 3},
        {"top_k": 2, "top_fraction": 0.1},
        {"threshold": 1.5},
        {"threshold": float("nan")},
        {"top_k": -1},
        {"top_k": 2.5},
        {"top_k": True},
        {"top_fraction": 0.0},
        {"top_fraction": 1.2},
    ],
)
def test_bad_arguments_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        select_golden(scores([0.5, 0.9]), **kwargs)


def test_decision_mode_rows_are_selected_by_verdict() -> None:
    # At t = 0.8 with 10 anchors: accept once wins > 8, reject once wins + unscored <= 8.
    table = decided([(9, 9, "accept"), (2, 4, "reject"), (8, 10, "exact"), (9, 10, "exact")])
    assert select_golden(table, threshold=0.8)["candidate_id"].tolist() == ["d0", "d3"]
    # Bounds still settle other thresholds when they can: 9 wins beat 0.85; at most 8 of 10 fail it.
    assert select_golden(table, threshold=0.85)["candidate_id"].tolist() == ["d0", "d3"]
    with pytest.raises(ValueError, match="decision mode"):
        select_golden(table, threshold=0.5)  # the rejected row ends between 2 and 8 wins: undecided
    with pytest.raises(ValueError, match="decision-mode rows have none"):
        select_golden(table, top_k=1)


def test_threshold_table_has_the_papers_shape() -> None:
    table = threshold_table(scores([0.55, 0.65, 0.75, 0.82, 0.88, 0.95, 0.95, 0.3], n_anchors=100))
    assert table["threshold"].tolist() == [0.5, 0.6, 0.7, 0.8, 0.85, 0.9]
    assert table["subset_size"].tolist() == [7, 6, 5, 4, 3, 2]
    assert table["fraction"].tolist() == pytest.approx([7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8])


def pool_of_lengths(lengths: list[int]) -> pd.DataFrame:
    return pd.DataFrame({"id": [f"id{i:03d}" for i in range(len(lengths))], "output": ["x" * n for n in lengths]})


def test_longest_takes_the_longest_responses_ties_by_id() -> None:
    pool = pool_of_lengths([5, 40, 40, 3, 12])
    assert select_longest(pool, 3)["id"].tolist() == ["id001", "id002", "id004"]
    with pytest.raises(ValueError, match="within"):
        select_longest(pool, 6)


def test_length_matched_sample_follows_the_reference_lengths_and_its_seed() -> None:
    rng = np.random.default_rng(3)
    pool = pool_of_lengths(rng.integers(1, 2000, size=400).tolist())
    reference = select_longest(pool, 60)  # all in the top strata: the sample must come from there too
    first = select_length_matched(pool, reference, seed=1)
    assert len(first) == 60 and first["id"].is_unique
    assert first["output"].str.len().min() >= np.quantile(pool["output"].str.len(), 0.8)
    again, other = select_length_matched(pool, reference, seed=1), select_length_matched(pool, reference, seed=2)
    assert first["id"].tolist() == again["id"].tolist() and first["id"].tolist() != other["id"].tolist()
    # A random reference gives a sample of the same per-decile counts.
    random_reference = pool.sample(80, random_state=0)
    strata = pd.qcut(pool["output"].str.len().rank(method="first"), q=10, labels=False)
    of = dict(zip(pool["id"], strata, strict=True))
    matched = select_length_matched(pool, random_reference, seed=0)
    assert sorted(of[i] for i in matched["id"]) == sorted(of[i] for i in random_reference["id"])


def test_length_matched_refuses_a_reference_outside_the_pool() -> None:
    pool = pool_of_lengths([1, 2, 3])
    with pytest.raises(ValueError, match="not in the pool"):
        select_length_matched(pool, pool_of_lengths([1, 2, 3, 4]), seed=0)
