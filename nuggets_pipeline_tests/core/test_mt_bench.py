"""MT-Bench: questions and references, FastChat's per-category temperatures, turn-2 conversations built from
the model's own turn-1 answers, grading requests, and aggregation that counts failed parses."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from nuggets_pipeline.core import mt_bench
from nuggets_pipeline.core.generation import assistant, user
from nuggets_pipeline.core.modeling import LoadedModel
from nuggets_pipeline.core.mt_bench import (
    CATEGORY_TEMPERATURE,
    ROW_COLUMNS,
    Answer,
    answers_frame,
    conversation,
    generate_answers,
    grading_requests,
    load_questions,
    summarize,
)

CATEGORIES = ("writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities")


def one_per_category() -> list[mt_bench.Question]:
    questions = load_questions()
    return [next(q for q in questions if q.category == c) for c in CATEGORIES]


def test_questions_and_references() -> None:
    questions = load_questions()
    assert len(questions) == 80
    assert [q.question_id for q in questions] == list(range(81, 161))
    assert all(len(q.turns) == 2 for q in questions)
    assert pd.Series([q.category for q in questions]).value_counts().to_dict() == {c: 10 for c in CATEGORIES}
    with_reference = {q.category for q in questions if q.references is not None}
    assert with_reference == {"math", "reasoning", "coding"}
    assert all(len(q.references) == 2 for q in questions if q.references is not None)
    assert [q.question_id for q in load_questions(limit=3)] == [81, 82, 83]
    with pytest.raises(ValueError, match="limit"):
        load_questions(limit=0)


def test_fastchat_temperatures_per_category() -> None:
    expected = {
        "writing": 0.7,
        "roleplay": 0.7,
        "stem": 0.1,
        "humanities": 0.1,
        "extraction": 0.0,
        "math": 0.0,
        "coding": 0.0,
        "reasoning": 0.0,
    }
    assert expected == CATEGORY_TEMPERATURE
    for question in one_per_category():
        assert question.temperature == expected[question.category]


def test_turn_two_conversation_contains_turn_one_and_the_models_answer() -> None:
    question = load_questions(limit=1)[0]
    assert conversation(question, [], 1) == [user(question.turns[0])]
    assert conversation(question, ["my first answer"], 2) == [
        user(question.turns[0]),
        assistant("my first answer"),
        user(question.turns[1]),
    ]
    with pytest.raises(ValueError, match="earlier answer"):
        conversation(question, [], 2)


@pytest.mark.slow
def test_generation_runs_turn_by_turn_with_category_temperatures(
    tiny_model: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    questions = one_per_category()
    calls: list[dict] = []
    real_generate = mt_bench.generate

    def recording_generate(loaded, conversations, **kwargs):
        generations = real_generate(loaded, conversations, **kwargs)
        calls.append(
            {
                "conversations": conversations,
                "temperature": kwargs["temperature"],
                "texts": [g.text for g in generations],
            }
        )
        return generations

    monkeypatch.setattr(mt_bench, "generate", recording_generate)
    progress: list[tuple[int, int]] = []
    answers = generate_answers(
        tiny_model, questions, max_new_tokens=3, batch_size=8, progress=lambda *p: progress.append(p)
    )

    assert len(calls) == 2  # one batched call per turn
    temperatures = [CATEGORY_TEMPERATURE[c] for c in CATEGORIES]
    assert calls[0]["temperature"] == calls[1]["temperature"] == temperatures
    assert [a.temperature for a in answers] == temperatures
    # Turn 2 sees turn 1's question and the model's own turn-1 answer.
    for question, turn_one, turn_two, first_answer in zip(
        questions, calls[0]["conversations"], calls[1]["conversations"], calls[0]["texts"], strict=True
    ):
        assert turn_one == [user(question.turns[0])]
        assert turn_two == [user(question.turns[0]), assistant(first_answer), user(question.turns[1])]
    assert [a.turns for a in answers] == [(a, b) for a, b in zip(calls[0]["texts"], calls[1]["texts"], strict=True)]
    assert all(len(a.completion_tokens) == 2 and max(a.completion_tokens) <= 3 for a in answers)
    assert progress[-1] == (16, 16)


def _answers(questions: list[mt_bench.Question]) -> list[Answer]:
    return [
        Answer(
            q.question_id,
            q.category,
            q.temperature,
            (f"a1 {q.question_id}", f"a2 {q.question_id}"),
            (3, 4),
            (True, False),
        )
        for q in questions
    ]


def test_grading_requests_use_references_and_multi_turn() -> None:
    questions = one_per_category()
    requests = grading_requests(questions, _answers(questions))
    assert len(requests) == 16
    assert [r.turn for r in requests] == [1, 2] * 8
    for question, turn_one, turn_two in zip(questions, requests[::2], requests[1::2], strict=True):
        assert turn_one.questions == turn_two.questions == question.turns
        assert turn_two.answers == (f"a1 {question.question_id}", f"a2 {question.question_id}")
        if question.category in ("math", "reasoning", "coding"):
            assert turn_one.references == question.references
        else:
            assert turn_one.references is None
    with pytest.raises(ValueError, match="no complete answer"):
        grading_requests(questions, _answers(questions)[:-1])


def _rows(scores: list[tuple[int, str, int, float | None, bool]]) -> pd.DataFrame:
    rows = [
        {
            "question_id": qid,
            "category": category,
            "turn": turn,
            "score": math.nan if score is None else score,
            "parsed": score is not None,
            "failed": failed,
            "judge": "tiny",
        }
        for qid, category, turn, score, failed in scores
    ]
    return pd.DataFrame(rows).reindex(columns=ROW_COLUMNS)


def test_aggregation_excludes_and_counts_failed_parses() -> None:
    rows = _rows(
        [
            (81, "writing", 1, 8.0, False),
            (81, "writing", 2, None, False),  # judge answered, no rating readable
            (101, "reasoning", 1, 3.0, False),
            (101, "reasoning", 2, 4.5, False),
            (121, "coding", 1, None, True),  # request failed
            (121, "coding", 2, 2.25, False),
        ]
    )
    summary = summarize(rows)
    assert summary.score == pytest.approx((8 + 3 + 4.5 + 2.25) / 4)
    assert summary.turn_1 == pytest.approx((8 + 3) / 2)
    assert summary.turn_2 == pytest.approx((4.5 + 2.25) / 2)
    assert summary.per_category == pytest.approx({"coding": 2.25, "reasoning": 3.75, "writing": 8.0})
    assert (summary.n_questions, summary.n_graded, summary.n_unparseable, summary.n_failed) == (3, 4, 1, 1)
    assert summary.standard_error == pytest.approx(pd.Series([8, 3, 4.5, 2.25]).sem())
    assert summary.judge == "tiny"


def test_aggregation_refuses_mixed_judges_and_empty_rows() -> None:
    rows = _rows([(81, "writing", 1, 8.0, False), (81, "writing", 2, 7.0, False)])
    rows.loc[1, "judge"] = "other"
    with pytest.raises(ValueError, match="more than one judge"):
        summarize(rows)
    with pytest.raises(ValueError, match="no MT-Bench rows"):
        summarize(rows.iloc[:0])


def answers_from_frame(frame: pd.DataFrame) -> list[Answer]:
    """The inverse of ``answers_frame`` (what a stored frame would be read back as)."""
    answers = []
    for question_id, group in frame.sort_values(["question_id", "turn"]).groupby("question_id", sort=False):
        answers.append(
            Answer(
                question_id=int(question_id),
                category=str(group["category"].iloc[0]),
                temperature=float(group["temperature"].iloc[0]),
                turns=tuple(group["answer"]),
                completion_tokens=tuple(int(n) for n in group["completion_tokens"]),
                finished=tuple(bool(f) for f in group["finished"]),
            )
        )
    return answers


def test_answers_round_trip_through_a_frame() -> None:
    answers = _answers(one_per_category())
    frame = answers_frame(answers)
    assert len(frame) == 16
    assert sorted(answers_from_frame(frame), key=lambda a: a.question_id) == sorted(
        answers, key=lambda a: a.question_id
    )
