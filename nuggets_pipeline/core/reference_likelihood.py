"""The judge-free signal: how likely a model finds strong reference answers it never trained on.

For each instruction the scoring engine's zero-shot function gives log p(reference answer | BOS + Alpaca
prompt), the format the variants were fine-tuned in; the signal is the mean over answers of the per-token
mean log-probability (nats/token, higher is better), with its standard error. No judge, no sampling: the same
model and data give the same number.

Sources
- ``alpaca_eval``: GPT-4 Turbo's (gpt4_1106_preview) outputs for the AlpacaEval instructions.
- ``mt_bench``: GPT-4's reference answers to the first turn of the 30 math, reasoning and coding questions.
  The second turn is left out: it continues a conversation, which a single Alpaca prompt cannot show.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from nuggets_pipeline.core.alpaca_eval import load_instructions
from nuggets_pipeline.core.modeling import LoadedModel
from nuggets_pipeline.core.mt_bench import load_questions
from nuggets_pipeline.core.scoring import ScoringConfig, score_zero_shot

SOURCES = {"alpaca_eval": "gpt4_1106_preview", "mt_bench": "gpt-4"}


@dataclass(frozen=True)
class LikelihoodSummary:
    source: str
    reference: str
    n_items: int
    # Mean over answers of each answer's mean per-token log-probability, and its standard error.
    mean_logprob: float
    standard_error: float
    # All answers' tokens pooled: total log-probability / total tokens (long answers weigh more).
    token_mean_logprob: float
    n_tokens: int
    n_truncated: int
    # (answer id, mean per-token log-probability): variants score the same answers, so their difference can be
    # judged answer by answer (a paired standard error, far tighter than two independent ones).
    per_item: tuple[tuple[str, float], ...] = ()

    def as_dict(self) -> dict[str, object]:
        return {k: v for k, v in asdict(self).items() if k != "per_item"}


def reference_frame(source: str, limit: int | None = None, sample_seed: int | None = None) -> pd.DataFrame:
    """The reference answers of ``source`` as scoring input (id, instruction, input, output): the first
    ``limit``, or with ``sample_seed`` a seeded random ``limit`` of them in set order. AlpacaEval's set is ordered
    by its source datasets (helpful_base, koala, oasst, selfinstruct, vicuna), so its first N are one or two of
    them; a seeded sample draws from all five."""
    if source == "alpaca_eval":
        instructions = load_instructions("alpaca_eval_2")
        if limit is not None:
            if limit < 1:
                raise ValueError(f"limit must be a positive number of answers, got {limit}")
            if sample_seed is None:
                instructions = instructions.head(limit)
            else:
                picks = np.random.default_rng(sample_seed).permutation(len(instructions))[:limit]
                instructions = instructions.iloc[np.sort(picks)].reset_index(drop=True)
        return pd.DataFrame(
            {
                "id": [f"alpaca_eval:{i}" for i in instructions["index"]],
                "instruction": instructions["instruction"],
                "input": "",
                "output": instructions["reference_output"],
            }
        )
    if source == "mt_bench":
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be a positive number of answers, got {limit}")
        with_reference = [q for q in load_questions() if q.references is not None][:limit]
        return pd.DataFrame(
            {
                "id": [f"mt_bench:{q.question_id}" for q in with_reference],
                "instruction": [q.turns[0] for q in with_reference],
                "input": "",
                "output": [q.references[0] for q in with_reference],
            }
        )
    raise ValueError(f"unknown reference source {source!r}; choose one of {sorted(SOURCES)}")


def score_references(
    loaded: LoadedModel,
    source: str,
    *,
    limit: int | None = None,
    sample_seed: int | None = None,
    max_length: int | None = None,
    batch_tokens: int | None = None,
) -> tuple[pd.DataFrame, LikelihoodSummary]:
    """Per-answer zero-shot scores (the scoring engine's columns, ``anchor_id`` = our id) and their summary;
    ``batch_tokens`` None batches as the scoring engine does on the model's device."""
    frame = reference_frame(source, limit, sample_seed)
    # The Alpaca template: the variants were fine-tuned on Alpaca-formatted prompts.
    config = ScoringConfig(template="alpaca", max_length=max_length, batch_tokens=batch_tokens)
    scores = score_zero_shot(loaded, frame, config)
    return scores, summarize_scores(scores, source)


def paired_standard_error(first: LikelihoodSummary, second: LikelihoodSummary) -> float:
    """Standard error of the mean per-answer difference over the answers both scored (NaN if fewer than two)."""
    shared = pd.concat([pd.Series(dict(first.per_item)), pd.Series(dict(second.per_item))], axis=1).dropna()
    if len(shared) < 2:
        return math.nan
    return float((shared[0] - shared[1]).sem())


def summarize_scores(scores: pd.DataFrame, source: str) -> LikelihoodSummary:
    if scores.empty:
        raise ValueError("no reference scores to summarise")
    per_answer = scores["logprob_mean"].astype(float)
    tokens = int(scores["response_tokens"].sum())
    return LikelihoodSummary(
        source=source,
        reference=SOURCES[source],
        n_items=len(scores),
        mean_logprob=float(per_answer.mean()),
        standard_error=float(per_answer.sem()) if len(scores) > 1 else math.nan,
        token_mean_logprob=float(scores["logprob_sum"].sum() / tokens),
        n_tokens=tokens,
        n_truncated=int(scores["truncated"].sum()),
        per_item=tuple(zip(scores["anchor_id"].astype(str), per_answer.tolist(), strict=True)),
    )


__all__ = [
    "SOURCES",
    "LikelihoodSummary",
    "paired_standard_error",
    "reference_frame",
    "score_references",
    "summarize_scores",
]
