"""What the evaluation layer calls: grade MT-Bench answers, compare or rate AlpacaEval outputs; all cached."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from nuggets_pipeline.core.judging.backends import Judge
from nuggets_pipeline.core.judging.cache import JudgmentCache
from nuggets_pipeline.core.judging.parsing import read_raw, serialise
from nuggets_pipeline.core.judging.prompts import mt_bench_prompt, pair_prompt, pointwise_prompt
from nuggets_pipeline.core.judging.types import (
    BothOrders,
    JudgePrompt,
    Judgment,
    PairRequest,
    PointwiseRequest,
    RawOutput,
    SingleRequest,
)

log = logging.getLogger(__name__)


def judge_prompts(
    judge: Judge, prompts: Sequence[JudgePrompt], *, cache: JudgmentCache | None = None
) -> list[Judgment]:
    """One judgment per prompt, in order. Cached answers are reused; each new answer is stored as it arrives,
    so an interrupted run resumes where it stopped. Identical prompts are judged once."""
    store = cache if cache is not None else JudgmentCache()
    try:
        hashes = [p.prompt_hash for p in prompts]
        done = store.get_many(judge.cache_key, hashes)
        todo: dict[str, JudgePrompt] = {}
        for prompt, prompt_hash in zip(prompts, hashes, strict=True):
            if prompt_hash not in done:
                todo.setdefault(prompt_hash, prompt)
        log.info(
            "judge %s (%s, %s): %d prompts, %d cached, %d to judge",
            judge.name,
            judge.backend,
            judge.mode,
            len(prompts),
            len(done),
            len(todo),
        )
        # The local backend batches one prompt family at a time (shared verdict tokens).
        families: dict[tuple[str, str], list[JudgePrompt]] = {}
        for prompt in todo.values():
            families.setdefault((prompt.kind, prompt.verdict_prefix), []).append(prompt)
        for family in families.values():
            for index, raw in judge.run(family):
                judgment = _to_judgment(judge, family[index], raw)
                store.put_many(judge.cache_key, [judgment])
                done[judgment.prompt_hash] = judgment
        return [done[h] for h in hashes]
    finally:
        if cache is None:
            store.close()


def _to_judgment(judge: Judge, prompt: JudgePrompt, raw: RawOutput) -> Judgment:
    common = {
        "judge": judge.name,
        "backend": judge.backend,
        "mode": judge.mode,
        "prompt_hash": prompt.prompt_hash,
    }
    if raw.error is not None:
        return Judgment(**common, raw=None, value=None, parsed=False, error=raw.error)
    value, problem = read_raw(prompt.kind, raw)
    return Judgment(**common, raw=serialise(raw), value=value, parsed=value is not None, error=problem)


def grade_single(
    judge: Judge, requests: Sequence[SingleRequest], *, cache: JudgmentCache | None = None
) -> list[Judgment]:
    """MT-Bench single-answer grading: value = rating in [1, 10] (expected rating in probabilities mode)."""
    return judge_prompts(judge, [mt_bench_prompt(r, judge.mode) for r in requests], cache=cache)


def compare_pair(
    judge: Judge, requests: Sequence[PairRequest], *, cache: JudgmentCache | None = None
) -> list[Judgment]:
    """One order only: value = P(``output_a``, shown first, is better) in [0, 1]; 1, 0 or 0.5 from a
    parsed [[A]], [[B]] or [[C]]."""
    return judge_prompts(judge, [pair_prompt(r, judge.mode) for r in requests], cache=cache)


def compare_both_orders(
    judge: Judge, requests: Sequence[PairRequest], *, cache: JudgmentCache | None = None
) -> list[BothOrders]:
    """Each pair judged as shown and swapped; ``BothOrders.value`` = P(``output_a`` better), position bias
    averaged out."""
    shown = [pair_prompt(r, judge.mode) for r in requests]
    swapped = [pair_prompt(r.swapped(), judge.mode) for r in requests]
    judgments = judge_prompts(judge, shown + swapped, cache=cache)
    n = len(requests)
    return [BothOrders(forward, backward) for forward, backward in zip(judgments[:n], judgments[n:], strict=True)]


def rate_pointwise(
    judge: Judge, requests: Sequence[PointwiseRequest], *, cache: JudgmentCache | None = None
) -> list[Judgment]:
    """Rate each output alone on 1-10 (the route for weak judges)."""
    return judge_prompts(judge, [pointwise_prompt(r, judge.mode) for r in requests], cache=cache)
