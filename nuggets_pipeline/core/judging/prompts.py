"""Judge prompts: FastChat's MT-Bench single-answer templates (shipped) and this project's own
AlpacaEval-style pairwise and pointwise prompts.

Each builder renders for a mode. ``generate`` asks for an explanation then a bracketed verdict, exactly as
the templates say. ``probabilities`` appends a closing cue asking for the bare verdict (so an API model's
first token is the verdict) and sets ``verdict_prefix`` (e.g. "Rating: [[") for backends that prefill the
assistant turn.
"""

from __future__ import annotations

import json
from functools import cache

from nuggets_pipeline.core.judging.types import (
    JudgePrompt,
    Mode,
    PairRequest,
    PointwiseRequest,
    SingleRequest,
)
from nuggets_pipeline.core.paths import shipped

MT_BENCH_JUDGE_PROMPTS = "mt_bench/judge_prompts.jsonl"

RATING_CUE = "Do not write an explanation. Reply with your rating only, as a number from 1 to 10."
RATING_PREFIX = "Rating: [["
PAIR_CUE = "Do not write an explanation. Reply with the letter of the better response only: A or B."
PAIR_PREFIX = "Verdict: [["

# AlpacaEval-style prompts, worded for this project (AlpacaEval's own prompt text is not copied).
PAIR_SYSTEM = (
    "You compare two responses to the same instruction and decide which one a careful, knowledgeable reader "
    "would prefer."
)
PAIR_TEMPLATE = (
    "Decide which of the two responses below carries out the instruction better. Consider how helpful, "
    "correct, complete and clear each one is for this particular instruction. Neither the order in which the "
    "responses appear nor their length should sway you.\n\n"
    "## Instruction\n{instruction}\n\n## Response A\n{output_a}\n\n## Response B\n{output_b}"
)
PAIR_GENERATE_CUE = (
    'First explain your reasoning in a few sentences. Then give your verdict on its own line: "[[A]]" if '
    'Response A is better, "[[B]]" if Response B is better, or "[[C]]" if they are equally good.'
)
POINTWISE_SYSTEM = "You assess how well a response carries out an instruction."
POINTWISE_TEMPLATE = (
    "Rate how well the response below carries out the instruction, on a scale from 1 (useless, wrong or "
    "off-topic) to 10 (excellent: helpful, correct, complete and clear).\n\n"
    "## Instruction\n{instruction}\n\n## Response\n{output}"
)
POINTWISE_GENERATE_CUE = (
    'First explain your assessment briefly. Then give the rating on its own line in the form "Rating: [[5]]".'
)


@cache
def fastchat_templates() -> dict[str, dict[str, str]]:
    """FastChat's judge prompts by name (single-v1, single-math-v1, the multi-turn variants, pair-*)."""
    path = shipped(MT_BENCH_JUDGE_PROMPTS)
    with path.open(encoding="utf-8") as lines:
        return {row["name"]: row for row in map(json.loads, lines)}


def _finish(kind: str, system: str | None, user: str, mode: Mode, template: str) -> JudgePrompt:
    if mode == "generate":
        return JudgePrompt(kind=kind, system=system, user=user, template=template)
    if mode == "probabilities":
        cue, prefix = (RATING_CUE, RATING_PREFIX) if kind == "rating" else (PAIR_CUE, PAIR_PREFIX)
        return JudgePrompt(kind=kind, system=system, user=f"{user}\n\n{cue}", verdict_prefix=prefix, template=template)
    raise ValueError(f"unknown judge mode {mode!r}; use 'generate' or 'probabilities'")


def mt_bench_prompt(request: SingleRequest, mode: Mode) -> JudgePrompt:
    """FastChat's single-answer grading prompt, filled the way FastChat's ``run_judge_single`` fills it."""
    name = "single-math-v1" if request.references is not None else "single-v1"
    if request.turn == 2:
        name += "-multi-turn"
    row = fastchat_templates()[name]
    fields: dict[str, str] = {}
    if request.references is not None:
        fields["ref_answer_1"] = request.references[0]
        if request.turn == 2:
            fields["ref_answer_2"] = request.references[1]
    if request.turn == 2:
        user = row["prompt_template"].format(
            question_1=request.questions[0],
            question_2=request.questions[1],
            answer_1=request.answers[0],
            answer_2=request.answers[1],
            **fields,
        )
    else:
        user = row["prompt_template"].format(question=request.questions[0], answer=request.answers[0], **fields)
    return _finish("rating", row["system_prompt"], user, mode, name)


def pair_prompt(request: PairRequest, mode: Mode) -> JudgePrompt:
    """Pairwise prompt: ``output_a`` shown as Response A, ``output_b`` as Response B."""
    user = PAIR_TEMPLATE.format(instruction=request.instruction, output_a=request.output_a, output_b=request.output_b)
    if mode == "generate":
        user = f"{user}\n\n{PAIR_GENERATE_CUE}"
    return _finish("pair", PAIR_SYSTEM, user, mode, "nuggets-pair-v1")


def pointwise_prompt(request: PointwiseRequest, mode: Mode) -> JudgePrompt:
    """Rate one output for one instruction on 1-10."""
    user = POINTWISE_TEMPLATE.format(instruction=request.instruction, output=request.output)
    if mode == "generate":
        user = f"{user}\n\n{POINTWISE_GENERATE_CUE}"
    return _finish("rating", POINTWISE_SYSTEM, user, mode, "nuggets-pointwise-v1")
