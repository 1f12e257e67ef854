"""Adaptive anchor allocation: the interval, the rule's guarantee, and replay against exact selection."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from nuggets_pipeline.core.adaptive import (
    AdaptiveConfig,
    SelectionRule,
    agreement,
    allocation_status,
    anchor_order,
    compare_with_exact,
    cut,
    estimate,
    interval,
    needs_more,
    next_counts,
    quality,
    replay,
    replay_plain_rule,
    select,
    subsample_selection,
)
from nuggets_pipeline.core.reliability import PairMatrix
from nuggets_pipeline.core.selection import select_golden

RULES = [SelectionRule(top_fraction=0.25), SelectionRule(top_k=7), SelectionRule(threshold=0.6)]


def exact_scores(deltas: np.ndarray, ids: np.ndarray) -> pd.DataFrame:
    n = deltas.shape[1]
    wins = (deltas > 0).sum(axis=1)
    return pd.DataFrame(
        {
            "candidate_id": ids,
            "golden_score": wins / n,
            "wins": wins,
            "anchors_scored": n,
            "n_anchors": n,
            "verdict": "exact",
            "mean_delta": deltas.mean(axis=1),
        }
    )


def criterion(rule: SelectionRule) -> dict[str, float | int]:
    return {k: v for k, v in vars(rule).items() if v is not None}


def test_anchor_order_is_seeded_and_independent_of_input_order() -> None:
    ids = [f"a{i}" for i in range(30)]
    assert anchor_order(ids, 3) == anchor_order(list(reversed(ids)), 3)
    assert sorted(anchor_order(ids, 3)) == sorted(ids)
    assert anchor_order(ids, 3) != anchor_order(ids, 4)
    with pytest.raises(ValueError, match="unique"):
        anchor_order(["a", "a"], 0)


def test_the_interval_is_the_beta_binomial_predictive_of_the_final_score() -> None:
    rng = np.random.default_rng(0)
    n = 100
    scored = rng.integers(0, n + 1, 200)
    wins = rng.binomial(scored, rng.random(200))
    low, high = interval(wins, scored, n, 0.9)
    r = n - scored
    expected_low = np.clip(stats.betabinom.ppf(0.05, r, 0.5 + wins, 0.5 + scored - wins), 0, r)
    expected_high = np.clip(stats.betabinom.ppf(0.95, r, 0.5 + wins, 0.5 + scored - wins), 0, r)
    np.testing.assert_allclose(low, (wins + expected_low) / n)
    np.testing.assert_allclose(high, (wins + expected_high) / n)
    # Finite population: fully scored is exact, and fewer anchors left give a narrower interval at the same rate.
    full_low, full_high = interval([37], [100], 100, 0.99)
    assert full_low[0] == full_high[0] == 37 / 100
    widths = [np.subtract(*interval([m // 2], [m], 100, 0.9)[::-1])[0] for m in (20, 50, 80, 95)]
    assert widths == sorted(widths, reverse=True) and widths[-1] < widths[0] / 3
    # Confidence 1 gives decision mode's bounds: every remaining anchor lost, or every one won.
    low, high = interval(wins, scored, n, 1.0)
    np.testing.assert_array_equal(low, wins / n)
    np.testing.assert_array_equal(high, (wins + r) / n)
    value = estimate(wins, scored, n, 0.3)
    assert ((value >= interval(wins, scored, n, 0.3)[0]) & (value <= interval(wins, scored, n, 0.3)[1])).all()
    with pytest.raises(ValueError):
        interval([5], [4], 10, 0.9)


@pytest.mark.parametrize("rule", RULES, ids=str)
@pytest.mark.parametrize("confidence", [0.6, 0.95, 1.0])
def test_the_rule_never_drops_a_candidate_whose_interval_straddles_the_cut(
    rule: SelectionRule, confidence: float
) -> None:
    rng = np.random.default_rng(1)
    config = AdaptiveConfig(confidence=confidence, first_anchors=10, round_anchors=10)
    n = 40
    for _ in range(20):
        scored = rng.integers(10, n + 1, 60)
        wins = rng.binomial(scored, rng.random(60))
        low, high = interval(wins, scored, n, confidence)
        values = estimate(wins, scored, n, confidence)
        # The cut computed here, independently: the threshold, or halfway between the k-th and (k+1)-th estimate.
        if rule.threshold is not None:
            at = rule.threshold
            straddling = (low <= at) & (at < high)
        else:
            k = rule.k(60)
            ranked = np.sort(values)[::-1]
            at = (ranked[k - 1] + ranked[k]) / 2
            straddling = (low <= at) & (at <= high)
        assert cut(values, rule) == pytest.approx(at)
        more = needs_more(wins, scored, n, rule, config)
        np.testing.assert_array_equal(more, straddling & (scored < n))
        status = allocation_status(wins, scored, n, rule, config)
        np.testing.assert_array_equal(status["settled_early"], ~more & (scored < n))


def test_unscreened_candidates_get_the_first_anchors_and_rounds_are_capped() -> None:
    config = AdaptiveConfig(confidence=0.9, first_anchors=10, round_anchors=10)
    rule = SelectionRule(top_fraction=0.5)
    wins, scored = np.array([0, 2, 5, 9, 18, 0]), np.array([0, 4, 10, 10, 20, 10])
    target = next_counts(wins, scored, 25, rule, config)
    assert target[0] == 10 and target[1] == 10  # screening first
    more = needs_more(wins, scored, 25, rule, config)
    np.testing.assert_array_equal(target[2:], np.where(more[2:], np.minimum(scored[2:] + 10, 25), scored[2:]))
    assert (target <= 25).all()
    assert cut(np.array([0.1, 0.2]), SelectionRule(top_k=2)) is None  # all kept: nothing to decide
    assert cut(np.array([0.1, 0.2]), SelectionRule(top_k=0)) is None


def test_a_threshold_at_confidence_one_is_decision_mode() -> None:
    config = AdaptiveConfig(confidence=1.0)
    wins, scored = np.array([9, 8, 2, 1, 5]), np.array([10, 12, 12, 19, 20])
    n, t = 20, 0.4
    more = needs_more(wins, scored, n, SelectionRule(threshold=t), config)
    decided = (wins / n > t) | ((wins + n - scored) / n <= t)
    np.testing.assert_array_equal(more, ~decided)


@pytest.mark.parametrize("rule", RULES, ids=str)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_replay_at_confidence_one_is_exact_selection(rule: SelectionRule, seed: int) -> None:
    rng = np.random.default_rng(seed)
    ability = rng.normal(0, 1, 48)
    deltas = ability[:, None] + rng.normal(0, 1.5, (48, 20))  # 20 anchors: many ties in golden score
    ids = np.array([f"c{i:03d}" for i in rng.permutation(48)])
    config = AdaptiveConfig(confidence=1.0, first_anchors=4, round_anchors=3, seed=seed)
    result = replay(deltas > 0, rule, config, deltas=deltas, candidate_ids=ids)
    expected = select_golden(exact_scores(deltas, ids), **criterion(rule))["candidate_id"]
    assert sorted(result.selected_ids) == sorted(expected)
    assert result.passes < result.passes_exact and result.settled_early.any()  # it saved something
    assert result.passes == int(result.anchors_scored.sum())
    np.testing.assert_array_equal(result.settled_early, result.anchors_scored < 20)


def test_replay_settles_a_clearly_separated_pool_after_screening() -> None:
    deltas = np.where(np.arange(40)[:, None] < 10, 1.0, -1.0) * np.ones((40, 100))
    result = replay(deltas > 0, SelectionRule(top_fraction=0.25), AdaptiveConfig(0.95, 10, 10), deltas=deltas)
    assert result.rounds == 1 and result.passes_fraction == pytest.approx(0.1)
    assert result.selected[:10].all() and not result.selected[10:].any()


def test_select_applies_the_rule_to_estimates_with_select_goldens_ties() -> None:
    config = AdaptiveConfig(confidence=1.0)
    wins, scored = np.array([5, 5, 5, 1]), np.array([10, 10, 10, 10])
    chosen = select(wins, scored, 10, SelectionRule(top_k=2), config, [0.1, 0.3, 0.3, 0.9], ["c", "b", "a", "d"])
    np.testing.assert_array_equal(chosen, [False, True, True, False])  # mean delta, then id
    assert select(wins, scored, 10, SelectionRule(threshold=0.5), config).sum() == 0  # 0.5 is not > 0.5


def test_agreement_quality_and_the_fixed_subsample() -> None:
    golden = np.array([0.9, 0.8, 0.5, 0.4, 0.1, 0.3])
    exact = np.array([True, True, False, False, False, False])
    assert agreement(exact, exact) == 1.0 and quality(exact, exact, golden) == 1.0
    other = np.array([True, False, True, False, False, False])
    assert agreement(other, exact) == 0.5
    assert quality(other, exact, golden) == pytest.approx((0.7 - 0.5) / (0.85 - 0.5))
    rng = np.random.default_rng(3)
    deltas = rng.normal(0, 1, 80)[:, None] + rng.normal(size=(80, 30))
    m = PairMatrix(np.array([f"c{i}" for i in range(80)]), np.array([f"a{j}" for j in range(30)]), deltas)
    rule = SelectionRule(top_fraction=0.25)
    full = subsample_selection(m, rule, 30, 0)
    assert full.sum() == 20 and agreement(full, full) == 1.0
    figures = compare_with_exact(m, rule, [0.8, 1.0], AdaptiveConfig(first_anchors=5, round_anchors=5), seeds=(0, 1))
    exact_entry = figures["adaptive"][1]
    assert exact_entry["confidence"] == 1.0 and exact_entry["agreement"] == 1.0 and exact_entry["quality"] == 1.0
    assert 0 < figures["adaptive"][0]["passes_fraction"] <= exact_entry["passes_fraction"] <= 1
    for adaptive, fixed in zip(figures["adaptive"], figures["fixed_subsample"], strict=True):
        assert fixed["anchors"] == round(adaptive["passes_fraction"] * 30)
        assert fixed["passes_fraction"] == pytest.approx(fixed["anchors"] / 30)
    assert [entry["confidence"] for entry in figures["plain_rule"]] == [0.8, 1.0]


def test_the_plain_baseline_rule_settles_for_good_and_is_exhaustive_at_confidence_one() -> None:
    rng = np.random.default_rng(4)
    deltas = rng.normal(0, 1, 60)[:, None] + rng.normal(size=(60, 30))
    rule = SelectionRule(top_fraction=0.25)
    full = replay_plain_rule(deltas > 0, rule, AdaptiveConfig(1.0, 10, 10), deltas=deltas)
    assert full.passes == full.passes_exact  # an infinite z never clears the cut: everyone gets every anchor
    expected = select_golden(exact_scores(deltas, np.arange(60).astype(str)), top_fraction=0.25)["candidate_id"]
    assert sorted(full.selected_ids) == sorted(expected)
    cheap = replay_plain_rule(deltas > 0, rule, AdaptiveConfig(0.5, 10, 10), deltas=deltas)
    assert cheap.passes < full.passes and cheap.selected.sum() == 15
    # All losses give p (1 - p) = 0: the normal interval has no width and settles at once. The best ten tie at
    # the cut (the k-th p), so unlike the adaptive rule's halfway cut, they are scored to the last anchor.
    separated = np.where(np.arange(40)[:, None] < 10, 1.0, -1.0) * np.ones((40, 100))
    settled = replay_plain_rule(separated > 0, rule, AdaptiveConfig(0.99, 10, 10))
    assert (settled.anchors_scored[10:] == 10).all() and (settled.anchors_scored[:10] == 100).all()
    assert settled.selected[:10].all() and not settled.selected[10:].any()
