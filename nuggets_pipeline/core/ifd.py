"""Instruction-following difficulty (IFD): the cheap selector users pick instead of NUGGETS.

Cherry LLM (Li et al., arXiv 2308.12032) scores an example by how much its instruction helps a model predict its
response, and Superfiltering (arXiv 2402.00530) showed a small scoring model ranks examples nearly as a large one
does:

    IFD = L(response | prompt) / L(response)

with L the mean negative log-likelihood per response token. Two forward passes per example, against NUGGETS' one per
(example, anchor) pair. A ratio near 1 means the instruction barely helps: the example is "hard to follow" and ranks
high; a ratio at or above 1 means the instruction does not help at all, which Cherry LLM reads as a misaligned pair
and drops before ranking (``max_ifd``).

The conditioned pass is the scoring engine's zero-shot function (BOS + prompt + response, the same template,
tokenisation and truncation as every other score); the direct pass is BOS + the same kept response tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from nuggets_pipeline.core.modeling import LoadedModel, encode
from nuggets_pipeline.core.scoring import ScoringConfig, score_zero_shot
from nuggets_pipeline.core.scoring import _response_logprobs as response_logprobs
from nuggets_pipeline.core.selection import fraction_count
from nuggets_pipeline.core.templates import get_template

IFD_COLUMNS = [
    "candidate_id",
    "conditioned_nll",
    "direct_nll",
    "ifd",
    "response_tokens",
    "prompt_tokens",
    "truncated",
]


@dataclass(frozen=True)
class IFDConfig:
    template: str = "nuggets"
    max_length: int | None = None
    # Rows x padded length per forward of the direct pass; None: the scoring engine's budget for the device.
    batch_tokens: int | None = None

    def scoring(self) -> ScoringConfig:
        return ScoringConfig(template=self.template, max_length=self.max_length, batch_tokens=self.batch_tokens)


@torch.inference_mode()
def direct_logprobs(loaded: LoadedModel, responses: list[list[int]], budget: int) -> np.ndarray:
    """Summed log p(response | BOS) per response: plain padded forwards, longest first so batches pad little."""
    model, device = loaded.model, loaded.device
    lengths = np.array([len(r) + 1 for r in responses], dtype=np.int64)  # BOS first
    if (lengths < 2).any():
        raise ValueError("a response with no tokens has no likelihood")
    order = np.argsort(-lengths, kind="stable")
    sums = np.full(len(responses), np.nan)
    start = 0
    while start < len(order):
        width = int(lengths[order[start]])
        rows = max(1, budget // width)
        batch = order[start : start + rows]
        ids = torch.zeros(len(batch), width, dtype=torch.long, device=device)
        valid = torch.zeros(len(batch), width, dtype=torch.long, device=device)
        for i, row in enumerate(batch):
            ids[i, : lengths[row]] = torch.tensor([loaded.bos_token_id, *responses[row]], device=device)
            valid[i, : lengths[row]] = 1
        hidden = model.base_model(input_ids=ids, attention_mask=valid).last_hidden_state
        # Position i predicts token i + 1: every position but the last valid one predicts a response token.
        scored = valid.bool() & (torch.arange(width, device=device)[None, :] < (valid.sum(1, keepdim=True) - 1))
        targets = ids.roll(-1, dims=1)[scored]
        row_of = torch.arange(len(batch), device=device)[:, None].expand(len(batch), width)[scored]
        logprobs = response_logprobs(model, hidden[scored], targets)
        totals = torch.zeros(len(batch), dtype=torch.float64, device=device).index_add_(0, row_of, logprobs.double())
        sums[batch] = totals.cpu().numpy()
        start += len(batch)
    return sums


def score_ifd(loaded: LoadedModel, examples: pd.DataFrame, config: IFDConfig | None = None) -> pd.DataFrame:
    """IFD of every example (columns ``IFD_COLUMNS``, in the input's order)."""
    config = config or IFDConfig()
    if examples.empty:
        return pd.DataFrame(columns=IFD_COLUMNS)
    scoring = config.scoring()
    conditioned = score_zero_shot(loaded, examples, scoring)
    template = get_template(config.template)
    # The direct pass scores exactly the response tokens the conditioned pass kept (truncation keeps a prefix).
    responses = [
        encode(loaded.tokenizer, template.response(str(output)))[: int(kept)]
        for output, kept in zip(examples["output"].fillna(""), conditioned["response_tokens"], strict=True)
    ]
    direct = direct_logprobs(loaded, responses, scoring.budget(loaded.device))
    tokens = conditioned["response_tokens"].to_numpy(dtype=np.float64)
    conditioned_nll = -conditioned["logprob_sum"].to_numpy() / tokens
    direct_nll = -direct / tokens
    return pd.DataFrame(
        {
            "candidate_id": conditioned["anchor_id"].astype(str).to_numpy(),
            "conditioned_nll": conditioned_nll,
            "direct_nll": direct_nll,
            "ifd": conditioned_nll / direct_nll,
            "response_tokens": conditioned["response_tokens"].to_numpy(),
            "prompt_tokens": conditioned["prompt_tokens"].to_numpy(),
            "truncated": conditioned["truncated"].to_numpy(),
        },
        columns=IFD_COLUMNS,
    )


def select_by_ifd(
    scores: pd.DataFrame, *, top_k: int | None = None, top_fraction: float | None = None, max_ifd: float = 1.0
) -> pd.DataFrame:
    """The highest-IFD rows below ``max_ifd`` (ties by id): ``top_k`` of them, or the best ``top_fraction`` of all
    scored rows (the fraction counts every row, so an IFD subset and a golden subset of one pool are the same size
    whenever enough rows lie below ``max_ifd``; fewer is never padded with rows the rule drops)."""
    if (top_k is None) == (top_fraction is None):
        raise ValueError("give exactly one of top_k and top_fraction")
    if top_fraction is not None and not 0.0 < top_fraction <= 1.0:
        raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be positive, got {top_k}")
    k = top_k if top_k is not None else fraction_count(top_fraction, len(scores))  # type: ignore[arg-type]
    eligible = scores[np.isfinite(scores["ifd"]) & (scores["ifd"] < max_ifd)]
    ranked = eligible.sort_values(["ifd", "candidate_id"], ascending=[False, True])
    return ranked.head(k)


__all__ = ["IFD_COLUMNS", "IFDConfig", "direct_logprobs", "score_ifd", "select_by_ifd"]
