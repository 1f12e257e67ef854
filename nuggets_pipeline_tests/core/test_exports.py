"""Exports in the ecosystem's formats, read back with the official readers: FastChat's show_result for MT-Bench
grades, alpaca_eval's loader and metrics for AlpacaEval, `datasets` for the scored pool; and hub options."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
from pathlib import Path

import datasets
import pandas as pd
import pytest

from nuggets_pipeline.core import alpaca_eval, exports, mt_bench
from nuggets_pipeline.core.data import HubOptions, SourceError, ingest
from nuggets_pipeline.core.paths import shipped

ANNOTATIONS = "alpaca_eval/results/alpaca-7b/alpaca_eval_gpt4/annotations.json"


def mt_rows() -> pd.DataFrame:
    """Stored mt_bench_results rows for question 81 (writing) and 111 (math: graded against references)."""
    questions = {q.question_id: q for q in mt_bench.load_questions()}
    rows = []
    scores = {(81, 1): 7.0, (81, 2): 5.0, (111, 1): 3.0, (111, 2): math.nan}
    for (qid, turn), score in scores.items():
        q = questions[qid]
        rows.append(
            {
                "question_id": qid,
                "category": q.category,
                "turn": turn,
                "question": q.turns[turn - 1],
                "answer": f"answer {qid}.{turn}",
                "temperature": q.temperature,
                "completion_tokens": 3,
                "finished": True,
                "reference": q.references[turn - 1] if q.references else None,
                "score": score,
                "parsed": not math.isnan(score),
                "failed": False,
                "judge": "tiny/judge",
                "mode": "generate",
                "prompt_hash": "x",
                "cached": False,
                "error": None,
                "raw": f"Rating: [[{score}]]",
            }
        )
    return pd.DataFrame(rows)


def show_result(path: Path) -> str:
    """FastChat's own show_result.display_result_single on our file."""
    from fastchat.llm_judge.show_result import display_result_single

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        display_result_single(argparse.Namespace(input_file=str(path), bench_name="mt_bench", model_list=None))
    return out.getvalue()


def test_mt_bench_exports_are_read_by_fastchat_show_result(tmp_path: Path) -> None:
    rows = mt_rows()
    written = exports.export_mt_bench(rows, "golden", tmp_path)
    bench = tmp_path / "fastchat" / "data" / "mt_bench"
    assert written["model_answer"] == bench / "model_answer" / "nuggets-golden.jsonl"
    combined = exports.combine_judgments(tmp_path, "tiny/judge", ["nuggets-golden"])
    assert combined == bench / "model_judgment" / "tiny_judge_single.jsonl"
    printed = show_result(combined)
    # show_result drops score -1 (the unreadable rating) and averages the rest: (7 + 5 + 3) / 3 = 5.
    summary = mt_bench.summarize(rows)
    assert summary.score == 5.0
    average = printed.split("Average")[1]
    assert "nuggets-golden" in average and "5.0" in average
    records = [json.loads(line) for line in combined.read_text().splitlines()]
    assert {tuple(r["judge"]) for r in records} == {
        ("tiny/judge", "single-v1"),
        ("tiny/judge", "single-v1-multi-turn"),
        ("tiny/judge", "single-math-v1"),
        ("tiny/judge", "single-math-v1-multi-turn"),
    }
    assert [r["score"] for r in records] == [7.0, 5.0, 3.0, -1]
    math_turn_2 = records[3]["user_prompt"]
    assert "answer 111.2" in math_turn_2 and "Reference" in math_turn_2
    # The questions and GPT-4 references sit beside the answers, as FastChat's gen_judgment expects.
    assert (bench / "question.jsonl").read_text() == shipped(mt_bench.QUESTIONS).read_text()
    assert (bench / "reference_answer" / "gpt-4.jsonl").exists()
    assert (bench.parent / "judge_prompts.jsonl").read_text() == shipped("mt_bench/judge_prompts.jsonl").read_text()


def test_mt_bench_answers_follow_fastchat_schema_and_read_back(tmp_path: Path) -> None:
    """fastchat.llm_judge.common (its load_model_answers) imports anthropic, which is not installed: the answer
    file is checked against the schema that function reads (question_id, model_id, choices[0].turns)."""
    written = exports.export_mt_bench(mt_rows(), "random", tmp_path)
    records = [json.loads(line) for line in written["model_answer"].read_text().splitlines()]
    assert [set(r) for r in records] == [{"question_id", "answer_id", "model_id", "choices", "tstamp"}] * 2
    assert records[0]["choices"] == [{"index": 0, "turns": ["answer 81.1", "answer 81.2"]}]
    name, answers = exports.read_fastchat_answers(written["model_answer"])
    assert name == "nuggets-random"
    assert [a.turns for a in answers] == [("answer 81.1", "answer 81.2"), ("answer 111.1", "answer 111.2")]


def test_fastchat_published_answers_are_read() -> None:
    """FastChat's own GPT-4 answer file (the shipped reference answers are one) reads as model gpt-4."""
    name, answers = exports.read_fastchat_answers(shipped(mt_bench.REFERENCE_ANSWERS))
    assert name == "gpt-4" and len(answers) == 30
    assert {a.category for a in answers} == {"math", "reasoning", "coding"}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"question_id": 81}', "missing field 'choices'"),
        ('{"question_id": 81, "choices": [{"index": 0, "turns": ["one"]}]}', "1 turns answered"),
        ('{"question_id": 7, "choices": [{"index": 0, "turns": ["a", "b"]}]}', "not an MT-Bench question"),
        ("{not json", "not JSON"),
    ],
)
def test_bad_fastchat_answer_files_name_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "other.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(exports.ExportFormatError, match=message) as error:
        exports.read_fastchat_answers(path)
    assert f"{path}, line 1" in str(error.value)


def test_alpaca_eval_exports_are_read_by_alpaca_eval(tmp_path: Path) -> None:
    """The shipped alpaca-7b annotations, exported and loaded back with alpaca_eval's loader: its get_winrate
    gives the leaderboard's 26.46, and model_outputs.json is alpaca_eval's own file for alpaca-7b."""
    from alpaca_eval.metrics import get_winrate
    from alpaca_eval.utils import load_or_convert_to_dataframe

    frame = pd.DataFrame(json.loads(shipped(ANNOTATIONS).read_text()))
    frame = frame.assign(index=range(len(frame)), judge=frame["annotator"])
    written = exports.export_alpaca_eval(frame, tmp_path)
    assert written["model_outputs"] == tmp_path / "alpaca_eval" / "alpaca-7b" / "model_outputs.json"
    assert written["annotations"] == tmp_path / "alpaca_eval" / "alpaca-7b" / "alpaca_eval_gpt4" / "annotations.json"
    loaded = load_or_convert_to_dataframe(written["annotations"])
    assert get_winrate(loaded)["win_rate"] == pytest.approx(26.459627329192543, abs=1e-9)
    assert alpaca_eval.summarize(loaded).win_rate == pytest.approx(26.459627329192543, abs=1e-9)
    outputs = load_or_convert_to_dataframe(written["model_outputs"])
    official = pd.read_json(shipped("alpaca_eval/results/alpaca-7b/model_outputs.json"))
    assert list(outputs.columns) == ["instruction", "output", "generator", "dataset"]
    pd.testing.assert_frame_equal(outputs, official[["instruction", "output", "generator", "dataset"]])


def scored(n: int = 6) -> tuple[pd.DataFrame, pd.DataFrame]:
    rows = [{"instruction": f"Say {i}.", "input": "" if i % 2 else f"ctx {i}", "output": f"{i}."} for i in range(n)]
    from nuggets_pipeline.core.data import example_id

    candidates = pd.DataFrame(rows).assign(id=[example_id(r["instruction"], r["input"], r["output"]) for r in rows])
    scores = pd.DataFrame(
        {
            "candidate_id": candidates["id"],
            "golden_score": [0.5, 0.9, 0.1, 0.9, 0.86, 0.3][:n],
            "wins": [5, 9, 1, 9, 8, 3][:n],
            "anchors_scored": [10] * n,
            "mean_delta": [0.0, 0.2, -0.1, 0.3, 0.1, 0.0][:n],
        }
    )
    return candidates, scores


def test_scored_pool_loads_in_datasets_and_round_trips_as_a_source(tmp_path: Path) -> None:
    candidates, scores = scored()
    pool = exports.ranked_pool(candidates, scores, selected_ids=candidates["id"].iloc[[1, 3]])
    # Ranked by golden score, ties broken by the mean log-prob gain.
    assert pool["golden_score"].tolist() == [0.9, 0.9, 0.86, 0.5, 0.3, 0.1]
    assert pool["id"].iloc[0] == candidates["id"].iloc[3]
    subsets = {0.85: pool[pool["golden_score"] > 0.85]}
    written = exports.export_scored_pool(pool, tmp_path, threshold_subsets=subsets)
    folder = tmp_path / "golden"

    from_disk = datasets.load_from_disk(str(folder / "scored_pool_dataset"))
    assert from_disk.column_names == exports.POOL_COLUMNS
    assert from_disk["id"] == pool["id"].tolist()
    via_load_dataset = datasets.load_dataset(str(folder / "scored_pool_hub"), split="train")
    assert via_load_dataset["id"] == pool["id"].tolist()
    parquet = datasets.load_dataset("parquet", data_files=str(folder / "scored_pool.parquet"), split="train")
    assert parquet["golden_score"] == pool["golden_score"].tolist()
    jsonl = datasets.load_dataset("json", data_files=str(folder / "scored_pool.jsonl"), split="train")
    assert jsonl["wins"] == pool["wins"].tolist()

    alpaca = json.loads(written["golden_subset_alpaca"].read_text())
    assert alpaca == pool[pool["selected"]][["instruction", "input", "output"]].to_dict("records")
    assert [set(r) for r in alpaca] == [{"instruction", "input", "output"}] * 2
    per_threshold = json.loads((folder / "alpaca_golden_0.85.json").read_text())
    assert len(per_threshold) == 3

    # The exported folder (and the JSONL, and the Alpaca JSON) fed back as sources keep their ids.
    for source, expected in [
        (folder / "scored_pool_dataset", pool["id"]),
        (folder / "scored_pool_hub", pool["id"]),
        (folder / "scored_pool.jsonl", pool["id"]),
        (folder / "golden_subset.json", pool[pool["selected"]]["id"]),
    ]:
        assert ingest([source]).instructions["id"].tolist() == expected.tolist()


def test_folder_export_replaces_the_old_folder_whole(tmp_path: Path) -> None:
    target = tmp_path / "exports" / "out"
    exports.replace_folder_atomic(target, lambda p: (p / "a").write_text("1"))
    with pytest.raises(RuntimeError):

        def broken(p: Path) -> None:
            (p / "b").write_text("half")
            raise RuntimeError("killed")

        exports.replace_folder_atomic(target, broken)
    assert [p.name for p in target.parent.iterdir()] == ["out"]  # no staging folder left behind
    assert [p.name for p in target.iterdir()] == ["a"]  # the old folder is untouched
    exports.replace_folder_atomic(target, lambda p: (p / "c").write_text("2"))
    assert [p.name for p in target.iterdir()] == ["c"]


def test_hub_options_reach_load_dataset(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}

    def fake_load_dataset(path, name=None, *, split, revision):  # type: ignore[no-untyped-def]
        seen.update(path=path, name=name, split=split, revision=revision)
        return [{"instruction": "Hi", "output": "Hello"}]

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    result = ingest(["someone/data"], hub=HubOptions(split="test", name="en", revision="abc123"))
    assert seen == {"path": "someone/data", "name": "en", "split": "test", "revision": "abc123"}
    assert result.instructions["source"].tolist() == ["hf://someone/data"]


def test_hub_ids_fail_at_once_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    def never(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("offline, the hub must not be asked")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets, "load_dataset", never)
    with pytest.raises(SourceError, match=r"someone/data \(name=en, split=test.*HF_HUB_OFFLINE.*save_to_disk"):
        ingest(["someone/data"], hub=HubOptions(split="test", name="en"))


def every_export(exports_dir: Path) -> None:
    """Every export function the assets call, into one folder."""
    candidates, scores = scored()
    pool = exports.ranked_pool(candidates, scores, selected_ids=candidates["id"].iloc[[1, 3]])
    exports.export_scored_pool(pool, exports_dir, threshold_subsets={0.5: pool[pool["golden_score"] > 0.5]})
    exports.export_mt_bench(mt_rows(), "golden", exports_dir)
    exports.combine_judgments(exports_dir, "tiny/judge", ["nuggets-golden"])
    frame = pd.DataFrame(json.loads(shipped(ANNOTATIONS).read_text())).head(5)
    exports.export_alpaca_eval(frame.assign(index=range(len(frame)), judge=frame["annotator"]), exports_dir)


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_every_file_and_folder_an_export_writes_gets_the_mode_less_the_umask(tmp_path: Path, umask: int) -> None:
    """Issue 23 item 6: exported files were 0600 (mkstemp) and exported dataset folders 0700 (mkdtemp) under
    umask 0022, against the rule every warehouse file follows: 0666 (folders 0777) less the umask."""
    import os

    previous = os.umask(umask)
    try:
        every_export(tmp_path / "exports")
        exports.export_scored_pool(exports.ranked_pool(*scored(), selected_ids=[]), tmp_path / "exports")  # again
    finally:
        os.umask(previous)
    written = list((tmp_path / "exports").rglob("*"))
    files = {str(p): oct(p.stat().st_mode & 0o777) for p in written if p.is_file()}
    folders = {str(p): oct(p.stat().st_mode & 0o777) for p in written if p.is_dir()}
    assert len(files) > 15 and any(name.endswith(".arrow") for name in files)  # the datasets folder is in
    assert set(files.values()) == {oct(0o666 & ~umask)}, files
    assert set(folders.values()) == {oct(0o777 & ~umask)}, folders
    assert not [p for p in written if p.name.startswith(".")]  # no staging file or folder left


def test_a_failed_export_leaves_every_file_of_the_previous_selection_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 23 item 6: files written before the failing one were already replaced, so golden_subset.json and
    the scored pool could come from two selections. Now the selection's folder is replaced whole, or not at all."""
    candidates, scores = scored()
    first = exports.ranked_pool(candidates, scores, selected_ids=candidates["id"].iloc[[1, 3]])
    out = tmp_path / "exports"
    exports.export_scored_pool(first, out, threshold_subsets={0.5: first.head(2)})
    folder = out / "golden"
    before = {str(p): p.read_bytes() for p in folder.rglob("*") if p.is_file()}

    def not_writable(pool: pd.DataFrame, target: Path) -> None:
        raise PermissionError(13, "Permission denied", str(target))

    monkeypatch.setattr(exports, "_hub_folder", not_writable)  # fails after the JSONL, Parquet and dataset
    second = exports.ranked_pool(candidates, scores, selected_ids=candidates["id"].iloc[[0]])
    with pytest.raises(PermissionError):
        exports.export_scored_pool(second, out, threshold_subsets={0.8: second.head(1)})
    assert {str(p): p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
    assert [p.name for p in out.iterdir()] == ["golden"]  # no staging folder left beside it

    monkeypatch.undo()
    written = exports.export_scored_pool(second, out)
    assert len(json.loads(written["golden_subset_alpaca"].read_text())) == 1
    assert not (folder / "alpaca_golden_0.5.json").exists()  # of the previous selection: replaced with the rest
