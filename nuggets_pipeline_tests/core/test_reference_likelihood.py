"""The judge-free signal: reference answers' mean per-token log-likelihood under the model (Alpaca format)."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from nuggets_pipeline.core.modeling import LoadedModel, encode
from nuggets_pipeline.core.reference_likelihood import reference_frame, score_references, summarize_scores
from nuggets_pipeline.core.templates import ALPACA


def test_reference_frames() -> None:
    alpaca = reference_frame("alpaca_eval")
    assert len(alpaca) == 805
    assert list(alpaca.columns) == ["id", "instruction", "input", "output"]
    assert alpaca["id"].is_unique
    mt = reference_frame("mt_bench")
    assert len(mt) == 30
    assert mt["id"].str.startswith("mt_bench:").all()
    assert len(reference_frame("mt_bench", limit=4)) == 4
    assert len(reference_frame("alpaca_eval", limit=2)) == 2
    with pytest.raises(ValueError, match="unknown reference source"):
        reference_frame("vicuna")


def test_a_seeded_alpaca_eval_sample_draws_from_every_source_dataset_in_set_order() -> None:
    first = reference_frame("alpaca_eval", limit=200)
    sample = reference_frame("alpaca_eval", limit=200, sample_seed=0)
    assert len(sample) == 200 and sample["id"].is_unique
    assert list(sample["id"]) == list(reference_frame("alpaca_eval", limit=200, sample_seed=0)["id"])  # fixed
    assert list(sample["id"]) != list(reference_frame("alpaca_eval", limit=200, sample_seed=1)["id"])
    positions = sample["id"].str.removeprefix("alpaca_eval:").astype(int)
    assert positions.is_monotonic_increasing and positions.max() > 700  # reaches the last datasets
    assert first["id"].str.removeprefix("alpaca_eval:").astype(int).max() == 199  # first N: the first datasets only


def _independent_mean_logprob(loaded: LoadedModel, instruction: str, output: str) -> float:
    prompt = [loaded.bos_token_id, *encode(loaded.tokenizer, ALPACA.prompt(instruction))]
    response = encode(loaded.tokenizer, output)
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = loaded.model(ids).logits[0].float()
    logprobs = torch.log_softmax(logits[len(prompt) - 1 : -1], dim=-1)
    return float(logprobs.gather(1, torch.tensor(response)[:, None]).mean())


def test_signal_on_the_tiny_model_is_deterministic_and_correct(tiny_model: LoadedModel) -> None:
    scores, summary = score_references(tiny_model, "mt_bench", limit=3)
    again, _ = score_references(tiny_model, "mt_bench", limit=3)
    pd.testing.assert_frame_equal(scores, again)
    frame = reference_frame("mt_bench", limit=3)
    assert scores["anchor_id"].tolist() == frame["id"].tolist()
    for (_, row), mean in zip(frame.iterrows(), scores["logprob_mean"], strict=True):
        assert mean == pytest.approx(_independent_mean_logprob(tiny_model, row["instruction"], row["output"]), abs=1e-4)
    assert summary.n_items == 3
    assert summary.mean_logprob == pytest.approx(scores["logprob_mean"].mean())
    assert summary.token_mean_logprob == pytest.approx(scores["logprob_sum"].sum() / scores["response_tokens"].sum())
    assert summary.mean_logprob < 0 and math.isfinite(summary.standard_error)
    assert summary.reference == "gpt-4"


def test_summary_of_fixed_scores() -> None:
    scores = pd.DataFrame(
        {
            "anchor_id": ["a", "b"],
            "logprob_sum": [-10.0, -30.0],
            "logprob_mean": [-1.0, -3.0],
            "response_tokens": [10, 10],
            "prompt_tokens": [5, 5],
            "tokens_cut": [0, 4],
            "truncated": [False, True],
        }
    )
    summary = summarize_scores(scores, "alpaca_eval")
    assert (summary.mean_logprob, summary.token_mean_logprob) == (-2.0, -2.0)
    assert summary.standard_error == pytest.approx(1.0)
    assert (summary.n_tokens, summary.n_truncated, summary.reference) == (20, 1, "gpt4_1106_preview")


@pytest.mark.slow
def test_a_trained_model_finds_references_far_more_likely_than_a_random_one(
    smollm2: LoadedModel, tiny_model: LoadedModel
) -> None:
    _, trained = score_references(smollm2, "alpaca_eval", limit=3)
    _, random = score_references(tiny_model, "alpaca_eval", limit=3)
    # A random model sits near -log(vocabulary) = -10.8 nats/token; SmolLM2 predicts GPT-4's text far better.
    assert random.mean_logprob < -9
    assert trained.mean_logprob > random.mean_logprob + 5
    print(
        f"reference log-likelihood, AlpacaEval x3: SmolLM2 {trained.mean_logprob:.4f}, "
        f"tiny random {random.mean_logprob:.4f} nats/token"
    )
