"""MT-Bench (FastChat ``llm_judge``): 80 two-turn questions, answered turn by turn, each turn graded 1-10.

Follows FastChat's ``gen_model_answer.py`` (per-category temperatures, turn 2 sees the model's own turn-1
answer), ``gen_judgment.py`` single-answer grading (GPT-4 reference answers for math, reasoning and coding)
and ``show_result.py`` (scores are plain means of the ratings; a rating that could not be read is dropped,
never imputed, and counted here).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import pandas as pd

from nuggets_pipeline.core.generation import Message, ProgressCallback, assistant, generate, user
from nuggets_pipeline.core.judging import Judge, JudgmentCache, SingleRequest, grade_single
from nuggets_pipeline.core.modeling import LoadedModel
from nuggets_pipeline.core.paths import shipped

QUESTIONS = "mt_bench/question.jsonl"
REFERENCE_ANSWERS = "mt_bench/reference_answer/gpt-4.jsonl"

# FastChat fastchat/llm_judge/common.py ``temperature_config``.
CATEGORY_TEMPERATURE = {
    "writing": 0.7,
    "roleplay": 0.7,
    "extraction": 0.0,
    "math": 0.0,
    "coding": 0.0,
    "reasoning": 0.0,
    "stem": 0.1,
    "humanities": 0.1,
}
# FastChat ``NEED_REF_CATS``: graded against GPT-4's reference answer with the math judge prompt.
REFERENCE_CATEGORIES = ("math", "reasoning", "coding")
# FastChat's gen_model_answer default.
DEFAULT_MAX_NEW_TOKENS = 1024

ROW_COLUMNS = [
    "question_id",
    "category",
    "turn",
    "question",
    "answer",
    "temperature",
    "completion_tokens",
    "finished",
    "reference",
    "score",
    "parsed",
    "failed",
    "judge",
    "mode",
    "prompt_hash",
    "cached",
    "error",
    "raw",
]


@dataclass(frozen=True)
class Question:
    question_id: int
    category: str
    turns: tuple[str, ...]
    # GPT-4's answers to each turn, for the categories graded against a reference.
    references: tuple[str, ...] | None = None

    @property
    def temperature(self) -> float:
        # FastChat falls back to 0.7 for categories it has no entry for.
        return CATEGORY_TEMPERATURE.get(self.category, 0.7)


@dataclass(frozen=True)
class Answer:
    question_id: int
    category: str
    temperature: float
    turns: tuple[str, ...]
    completion_tokens: tuple[int, ...]
    finished: tuple[bool, ...]


def load_questions(limit: int | None = None) -> list[Question]:
    """The shipped questions in file order (ids 81-160), the first ``limit`` if given, with references."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of questions, got {limit}")
    with shipped(REFERENCE_ANSWERS).open(encoding="utf-8") as lines:
        references = {row["question_id"]: tuple(row["choices"][0]["turns"]) for row in map(json.loads, lines)}
    with shipped(QUESTIONS).open(encoding="utf-8") as lines:
        rows = [json.loads(line) for line in lines if line.strip()]
    questions = []
    for row in rows[:limit]:
        category = row["category"]
        reference = references.get(row["question_id"]) if category in REFERENCE_CATEGORIES else None
        if category in REFERENCE_CATEGORIES and reference is None:
            raise ValueError(f"MT-Bench question {row['question_id']} ({category}) has no reference answer")
        questions.append(Question(row["question_id"], category, tuple(row["turns"]), reference))
    return questions


def conversation(question: Question, answers: Sequence[str], turn: int) -> list[Message]:
    """What the model sees for ``turn`` (1-based): every earlier question with its own earlier answer."""
    if not 1 <= turn <= len(question.turns) or len(answers) < turn - 1:
        raise ValueError(f"turn {turn} of question {question.question_id} needs {turn - 1} earlier answer(s)")
    messages: list[Message] = []
    for earlier in range(turn - 1):
        messages += [user(question.turns[earlier]), assistant(answers[earlier])]
    return [*messages, user(question.turns[turn - 1])]


def generate_answers(
    loaded: LoadedModel,
    questions: Sequence[Question],
    *,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    batch_size: int = 8,
    seed: int = 0,
    progress: ProgressCallback | None = None,
) -> list[Answer]:
    """Answer all questions one turn at a time: every turn-1 answer is generated (batched across questions)
    before turn 2, whose prompt contains turn 1's question and the model's own answer."""
    n_turns = max((len(q.turns) for q in questions), default=0)
    texts: list[list[str]] = [[] for _ in questions]
    tokens: list[list[int]] = [[] for _ in questions]
    finished: list[list[bool]] = [[] for _ in questions]
    for turn in range(1, n_turns + 1):
        active = [i for i, q in enumerate(questions) if len(q.turns) >= turn]

        def turn_progress(done: int, total: int, turn: int = turn) -> None:
            if progress is not None:
                progress((turn - 1) * len(questions) + done, n_turns * len(questions))

        generations = generate(
            loaded,
            [conversation(questions[i], texts[i], turn) for i in active],
            temperature=[questions[i].temperature for i in active],
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            seed=seed + turn,
            progress=turn_progress,
            description=f"MT-Bench turn {turn}",
        )
        for i, generation in zip(active, generations, strict=True):
            texts[i].append(generation.text)
            tokens[i].append(generation.completion_tokens)
            finished[i].append(generation.finished)
    return [
        Answer(q.question_id, q.category, q.temperature, tuple(t), tuple(n), tuple(f))
        for q, t, n, f in zip(questions, texts, tokens, finished, strict=True)
    ]


GradedItem = tuple[Question, Answer, int]


def _graded_items(questions: Sequence[Question], answers: Sequence[Answer]) -> list[GradedItem]:
    by_id = {a.question_id: a for a in answers}
    items = []
    for question in questions:
        answer = by_id.get(question.question_id)
        if answer is None or len(answer.turns) != len(question.turns):
            raise ValueError(f"question {question.question_id} has no complete answer to grade")
        items += [(question, answer, turn) for turn in range(1, len(question.turns) + 1)]
    return items


def grading_requests(questions: Sequence[Question], answers: Sequence[Answer]) -> list[SingleRequest]:
    """One single-answer grading request per question and turn, in (question, turn) order. Turn 2 is graded
    with the multi-turn prompt (the whole conversation shown); reference categories get GPT-4's answers."""
    return [
        SingleRequest(questions=q.turns, answers=a.turns, turn=turn, references=q.references)
        for q, a, turn in _graded_items(questions, answers)
    ]


def grade_answers(
    judge: Judge,
    questions: Sequence[Question],
    answers: Sequence[Answer],
    *,
    cache: JudgmentCache | None = None,
) -> pd.DataFrame:
    """Per-question, per-turn rows (``ROW_COLUMNS``) for storage: the answer, its rating and the judgment's
    bookkeeping. ``score`` is NaN where the judge gave no readable rating."""
    items = _graded_items(questions, answers)
    judgments = grade_single(judge, grading_requests(questions, answers), cache=cache)
    rows = [
        {
            "question_id": question.question_id,
            "category": question.category,
            "turn": turn,
            "question": question.turns[turn - 1],
            "answer": answer.turns[turn - 1],
            "temperature": answer.temperature,
            "completion_tokens": answer.completion_tokens[turn - 1],
            "finished": answer.finished[turn - 1],
            "reference": question.references[turn - 1] if question.references else None,
            "score": math.nan if judgment.value is None else float(judgment.value),
            "parsed": judgment.parsed,
            "failed": judgment.failed,
            "judge": judgment.judge,
            "mode": judgment.mode,
            "prompt_hash": judgment.prompt_hash,
            "cached": judgment.cached,
            "error": judgment.error,
            "raw": judgment.raw,
        }
        for (question, answer, turn), judgment in zip(items, judgments, strict=True)
    ]
    return pd.DataFrame(rows, columns=ROW_COLUMNS)


@dataclass(frozen=True)
class MTBenchSummary:
    """Mean ratings (1-10) as FastChat's show_result computes them, plus what was left out and why."""

    judge: str
    score: float
    turn_1: float
    turn_2: float
    # Standard error of ``score``: sem of the graded ratings (turns of one question are not independent,
    # so this is a lower bound).
    standard_error: float = math.nan
    per_category: dict[str, float] = field(default_factory=dict)
    n_questions: int = 0
    n_graded: int = 0
    # The judge answered but no rating could be read / the request itself failed. Excluded from the means.
    n_unparseable: int = 0
    n_failed: int = 0

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def summarize(rows: pd.DataFrame) -> MTBenchSummary:
    """Score = mean rating over every graded (question, turn); turn and category means likewise."""
    if rows.empty:
        raise ValueError("no MT-Bench rows to summarise")
    graded = rows[rows["score"].notna()]
    failed = rows["failed"].astype(bool)
    judges = rows["judge"].dropna().unique()
    if len(judges) != 1:
        raise ValueError(f"MT-Bench rows from more than one judge cannot be averaged: {list(judges)}")

    def mean(frame: pd.DataFrame) -> float:
        return float(frame["score"].mean()) if len(frame) else math.nan

    return MTBenchSummary(
        judge=str(judges[0]),
        score=mean(graded),
        turn_1=mean(graded[graded["turn"] == 1]),
        turn_2=mean(graded[graded["turn"] == 2]),
        standard_error=float(graded["score"].sem()) if len(graded) > 1 else math.nan,
        per_category={str(c): mean(g) for c, g in graded.groupby("category", sort=True)},
        n_questions=int(rows["question_id"].nunique()),
        n_graded=len(graded),
        n_unparseable=int((rows["score"].isna() & ~failed).sum()),
        n_failed=int(failed.sum()),
    )


def evaluate(
    loaded: LoadedModel,
    judge: Judge,
    *,
    limit: int | None = None,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    batch_size: int = 8,
    seed: int = 0,
    cache: JudgmentCache | None = None,
    progress: ProgressCallback | None = None,
) -> tuple[pd.DataFrame, MTBenchSummary]:
    """The whole benchmark for one model: answer the first ``limit`` questions, grade, summarise."""
    questions = load_questions(limit)
    answers = generate_answers(
        loaded, questions, max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed, progress=progress
    )
    rows = grade_answers(judge, questions, answers, cache=cache)
    return rows, summarize(rows)


def answers_frame(answers: Sequence[Answer]) -> pd.DataFrame:
    """Generated answers, one row per (question, turn), before any judging (for storage and inspection)."""
    return pd.DataFrame(
        [
            {
                "question_id": a.question_id,
                "category": a.category,
                "turn": turn,
                "answer": text,
                "temperature": a.temperature,
                "completion_tokens": a.completion_tokens[turn - 1],
                "finished": a.finished[turn - 1],
            }
            for a in answers
            for turn, text in enumerate(a.turns, start=1)
        ]
    )


__all__ = [
    "CATEGORY_TEMPERATURE",
    "REFERENCE_CATEGORIES",
    "ROW_COLUMNS",
    "Answer",
    "MTBenchSummary",
    "Question",
    "answers_frame",
    "conversation",
    "evaluate",
    "generate_answers",
    "grade_answers",
    "grading_requests",
    "load_questions",
    "summarize",
]
