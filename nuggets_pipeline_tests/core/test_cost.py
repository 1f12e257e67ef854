import pytest

from nuggets_pipeline.core.cost import estimated, measured


def test_the_measured_ratio_is_scoring_over_the_full_fine_tune() -> None:
    cost = measured(2_364, 1_221)  # the committed study: one-shot scoring against the full-pool fine-tune
    assert cost.ratio == pytest.approx(1.936, abs=1e-3) and cost.basis == "measured"
    assert "costs more than fine-tuning" in cost.line()
    with pytest.raises(ValueError):
        measured(0, 10)


def test_the_estimate_is_forward_over_training_flops() -> None:
    # 16 anchors x ~86 tokens per candidate against ~112-token examples: 2 x 1,376 / (6 x 112) per epoch.
    cost = estimated(scored_tokens=600 * 1_376, pool_tokens=600 * 112)
    assert cost.ratio == pytest.approx(2 * 1_376 / (6 * 112)) and cost.basis == "estimated"
    assert estimated(600 * 1_376, 600 * 112, epochs=2).ratio == pytest.approx(cost.ratio / 2)
    # Weak-to-strong: scoring with a model 50x smaller divides the ratio by 50.
    small = estimated(600 * 1_376, 600 * 112, scoring_parameters=135_000_000, tuning_parameters=6_750_000_000)
    assert small.ratio == pytest.approx(cost.ratio / 50) and "0.02x" in small.note
    with pytest.raises(ValueError):
        estimated(10, 0)
