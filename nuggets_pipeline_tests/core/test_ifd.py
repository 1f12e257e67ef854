"""IFD: the two passes against plain forwards, truncation, and the selection rule."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from nuggets_pipeline.core.ifd import IFDConfig, score_ifd, select_by_ifd
from nuggets_pipeline.core.modeling import encode
from nuggets_pipeline.core.templates import get_template

EXAMPLES = pd.DataFrame(
    {
        "id": ["a", "b", "c", "d"],
        "instruction": ["Say hello", "Add 2 and 3", "Name a colour", "Write a long sentence about the sea"],
        "input": ["", "", "warm", ""],
        "output": ["Hello there, friend!", "5", "Red is a warm colour.", "The sea rolls on " * 6],
    }
)


def plain_nll(loaded, prefix: list[int], response: list[int]) -> float:
    """Mean NLL per response token of BOS + prefix + response, one unpadded forward."""
    ids = torch.tensor([[loaded.bos_token_id, *prefix, *response]])
    with torch.no_grad():
        logprobs = torch.log_softmax(loaded.model(ids).logits.double(), -1)[0]
    start = len(prefix)  # position start + i predicts response[i] (BOS sits at 0)
    return -float(sum(logprobs[start + i, token] for i, token in enumerate(response))) / len(response)


@pytest.mark.parametrize("batch_tokens", [16, 4096])
def test_both_passes_match_plain_forwards_whatever_the_batching(tiny_model, batch_tokens: int) -> None:
    scores = score_ifd(tiny_model, EXAMPLES, IFDConfig(batch_tokens=batch_tokens))
    template = get_template("nuggets")
    assert scores["candidate_id"].tolist() == EXAMPLES["id"].tolist()
    for row, scored in zip(EXAMPLES.itertuples(), scores.itertuples(), strict=True):
        prompt = encode(tiny_model.tokenizer, template.prompt(row.instruction, row.input))
        response = encode(tiny_model.tokenizer, template.response(row.output))
        assert scored.conditioned_nll == pytest.approx(plain_nll(tiny_model, prompt, response), abs=1e-4)
        assert scored.direct_nll == pytest.approx(plain_nll(tiny_model, [], response), abs=1e-4)
        assert scored.ifd == pytest.approx(scored.conditioned_nll / scored.direct_nll, rel=1e-12)
        assert scored.response_tokens == len(response)


def test_truncation_scores_the_same_kept_response_in_both_passes(tiny_model) -> None:
    scores = score_ifd(tiny_model, EXAMPLES, IFDConfig(max_length=12))
    template = get_template("nuggets")
    long = scores.set_index("candidate_id").loc["d"]
    assert bool(long["truncated"]) and long["response_tokens"] + long["prompt_tokens"] == 11  # BOS takes one
    response = encode(tiny_model.tokenizer, template.response(EXAMPLES.loc[3, "output"]))[
        : int(long["response_tokens"])
    ]
    assert long["direct_nll"] == pytest.approx(plain_nll(tiny_model, [], response), abs=1e-4)


def test_selection_drops_ratios_at_or_above_one_and_ranks_the_rest_highest_first() -> None:
    scores = pd.DataFrame({"candidate_id": list("abcdef"), "ifd": [0.9, 1.0, 0.95, 1.3, 0.95, np.nan]})
    assert select_by_ifd(scores, top_k=3)["candidate_id"].tolist() == ["c", "e", "a"]  # ties by id
    # The fraction counts every scored row (6 * 0.5 = 3), however many the rule then drops.
    assert len(select_by_ifd(scores, top_fraction=0.5)) == 3
    # Fewer eligible rows than asked: never padded with dropped ones.
    assert select_by_ifd(scores, top_k=5)["candidate_id"].tolist() == ["c", "e", "a"]
    with pytest.raises(ValueError, match="exactly one"):
        select_by_ifd(scores)
    with pytest.raises(ValueError, match="top_fraction"):
        select_by_ifd(scores, top_fraction=0.0)
