"""Paired bootstrap comparisons on synthetic per-answer scores whose answer is known."""

import numpy as np
import pandas as pd
import pytest

from nuggets_pipeline.core.statistics import (
    ComparisonSpec,
    bootstrap_mean_interval,
    compare_variants,
    paired_difference,
    standard_comparisons,
    verdict,
)


def scores(values, ids=None) -> pd.Series:
    ids = ids if ids is not None else [f"a{i}" for i in range(len(values))]
    return pd.Series(np.asarray(values, dtype=float), index=ids)


def test_a_constant_difference_has_a_zero_width_interval_at_that_value() -> None:
    base = np.linspace(-3, -1, 50)
    result = paired_difference(
        {"golden": scores(base + 0.02), "random": scores(base)}, ComparisonSpec(("golden",), ("random",)), "x"
    )
    assert result.difference == pytest.approx(0.02)
    assert result.ci_low == pytest.approx(0.02) and result.ci_high == pytest.approx(0.02)
    assert result.verdict == "ahead"
    assert result.n == 50


def test_the_interval_matches_the_normal_approximation_of_the_mean() -> None:
    rng = np.random.default_rng(1)
    differences = rng.normal(0.1, 1.0, size=800)
    low, high = bootstrap_mean_interval(differences, resamples=10_000, seed=3)
    half_width = 1.96 * differences.std(ddof=1) / np.sqrt(len(differences))
    assert low == pytest.approx(differences.mean() - half_width, abs=0.01)
    assert high == pytest.approx(differences.mean() + half_width, abs=0.01)


def test_the_interval_is_reproducible_with_its_seed_and_varies_without_it() -> None:
    differences = np.random.default_rng(0).normal(0, 1, size=100)
    assert bootstrap_mean_interval(differences, seed=5) == bootstrap_mean_interval(differences, seed=5)
    assert bootstrap_mean_interval(differences, seed=5) != bootstrap_mean_interval(differences, seed=6)


def test_pairing_removes_the_shared_per_answer_spread() -> None:
    # Answers differ hugely in difficulty (spread 2 nats) but golden is better on each by 0.01 ± 0.002: an unpaired
    # comparison could never see it, the paired one must.
    rng = np.random.default_rng(2)
    difficulty = rng.normal(-2, 2, size=300)
    golden = scores(difficulty + 0.01 + rng.normal(0, 0.002, size=300))
    worse = paired_difference(
        {"golden": golden, "random": scores(difficulty)}, ComparisonSpec(("golden",), ("random",)), "x"
    )
    assert worse.verdict == "ahead"
    behind = paired_difference(
        {"golden": golden, "random": scores(difficulty)}, ComparisonSpec(("random",), ("golden",)), "x"
    )
    assert behind.verdict == "behind"
    assert behind.ci_high < 0


def test_pure_noise_is_within_noise() -> None:
    rng = np.random.default_rng(4)
    base = rng.normal(-2, 1, size=400)
    result = paired_difference(
        {"a": scores(base + rng.normal(0, 0.05, 400)), "b": scores(base + rng.normal(0, 0.05, 400))},
        ComparisonSpec(("a",), ("b",)),
        "x",
    )
    assert result.ci_low < 0 < result.ci_high
    assert result.verdict == "within noise"
    assert "within noise" in result.sentence()


def test_a_pooled_side_is_the_mean_of_its_variants_per_answer() -> None:
    per_item = {"golden": scores([1.0, 1.0]), "random": scores([0.0, 0.2]), "random-1": scores([0.4, 0.6])}
    result = paired_difference(per_item, ComparisonSpec(("golden",), ("random", "random-1")), "x", resamples=10)
    assert result.difference == pytest.approx(1.0 - 0.3)
    assert result.second == "random (pooled random+random-1)"
    assert result.second_variants == ("random", "random-1")


def test_only_shared_answers_are_compared_and_none_shared_is_an_error() -> None:
    result = paired_difference(
        {"a": scores([1.0, 2.0, 3.0], ["x", "y", "z"]), "b": scores([0.0, 0.0], ["y", "z"])},
        ComparisonSpec(("a",), ("b",)),
        "s",
        resamples=10,
    )
    assert result.n == 2 and result.difference == pytest.approx(2.5)
    with pytest.raises(ValueError, match="share no scored answer"):
        paired_difference({"a": scores([1.0], ["x"]), "b": scores([1.0], ["y"])}, ComparisonSpec(("a",), ("b",)), "s")


def test_the_study_comparisons_cover_every_pair_the_issue_asks_for() -> None:
    labels = [s.label for s in standard_comparisons(["golden", "random", "random-1", "bottom", "full"])]
    assert labels == [
        "golden vs random",
        "golden vs random-1",
        "golden vs random (pooled random+random-1)",
        "golden vs full",
        "golden vs bottom",
        "random (pooled random+random-1) vs bottom",
        "random vs random-1",
    ]
    assert [s.label for s in standard_comparisons(["golden", "random"])] == ["golden vs random"]


def test_the_second_study_sets_golden_against_length_ifd_and_the_base_model() -> None:
    variants = ["golden", "random", "random-1", "full", "longest", "length-matched", "ifd", "base"]
    labels = [s.label for s in standard_comparisons(variants)]
    pooled = "random (pooled random+random-1)"
    assert labels == [
        "golden vs random",
        "golden vs random-1",
        f"golden vs {pooled}",
        "golden vs longest",
        "golden vs length-matched",
        "golden vs ifd",
        "golden vs full",
        f"ifd vs {pooled}",
        f"longest vs {pooled}",
        *[f"{v} vs base" for v in variants if v != "base"],
        "random vs random-1",
    ]
    # Without the random controls or the base model, only what can be compared is.
    assert [s.label for s in standard_comparisons(["golden", "ifd"])] == ["golden vs ifd"]


def test_compare_variants_skips_comparisons_a_source_cannot_make() -> None:
    per_item = {
        "alpaca_eval": {"golden": scores([1.0, 2.0]), "random": scores([0.5, 1.5]), "full": scores([1.0, 2.0])},
        "mt_bench": {"golden": scores([1.0, 2.0]), "random": scores([1.0, 2.5])},
    }
    found = [(d.source, d.first, d.second) for d in compare_variants(per_item, resamples=50)]
    assert found == [
        ("alpaca_eval", "golden", "random"),
        ("alpaca_eval", "golden", "full"),
        ("mt_bench", "golden", "random"),
    ]


@pytest.mark.parametrize(
    ("low", "high", "expected"),
    [(0.001, 0.2, "ahead"), (-0.2, -0.001, "behind"), (-0.1, 0.1, "within noise"), (0.0, 0.1, "within noise")],
)
def test_verdict_needs_the_whole_interval_on_one_side_of_zero(low: float, high: float, expected: str) -> None:
    assert verdict(low, high) == expected


def test_bad_input_is_refused_with_a_reason() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_mean_interval(np.array([]))
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_mean_interval(np.array([1.0, np.nan]))
