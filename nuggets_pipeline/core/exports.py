"""Results in the formats the ecosystem's own tools read, each file written atomically.

- MT-Bench as FastChat's ``llm_judge`` lays it out under ``data/mt_bench/``: ``model_answer/<model_id>.jsonl``
  (what ``gen_model_answer.py`` writes) and ``model_judgment/<judge>_single.jsonl`` (what ``gen_judgment.py``
  writes and ``show_result.py`` reads), with the questions and GPT-4 references beside them so FastChat's
  ``gen_judgment.py`` can re-judge our answers with GPT-4 from the same folder.
- AlpacaEval as alpaca_eval reads it: ``model_outputs.json`` (instruction, output, generator, dataset) for
  ``alpaca_eval --model_outputs`` and ``annotations.json`` in its annotation format.
- The scored pool for trainers: JSONL, Parquet and a Hugging Face ``datasets`` folder ranked by golden score, and
  Alpaca JSON (instruction, input, output: what the paper's training code loads) for the selected subset and,
  when asked, per threshold like the paper's released ``alpaca_gpt4_0.85.json``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from nuggets_pipeline.core.judging.prompts import mt_bench_prompt
from nuggets_pipeline.core.judging.types import SingleRequest
from nuggets_pipeline.core.mt_bench import QUESTIONS, REFERENCE_ANSWERS, Answer, Question, load_questions
from nuggets_pipeline.core.paths import shipped
from nuggets_pipeline.core.storage import staging_folder, write_parquet_atomic, write_text_atomic

FASTCHAT_BENCH = Path("fastchat") / "data" / "mt_bench"
ALPACA_EVAL_DIR = Path("alpaca_eval")
GOLDEN_DIR = Path("golden")
POOL_COLUMNS = ["id", "instruction", "input", "output", "golden_score", "wins", "anchors_scored", "selected"]
ALPACA_FIELDS = ["instruction", "input", "output"]
JUDGE_PROMPTS = "mt_bench/judge_prompts.jsonl"


class ExportFormatError(ValueError):
    """A file in an ecosystem format does not follow it (names the file, the line and the field)."""


# --- atomic writes: the warehouse's writer (core.storage), so exports get the same modes as every other file --


def write_jsonl_atomic(path: Path, records: Iterable[dict[str, Any]]) -> Path:
    return write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def write_json_atomic(path: Path, value: Any) -> Path:
    return write_text_atomic(path, json.dumps(value, ensure_ascii=False, indent=2) + "\n")


def replace_folder_atomic(path: Path, build: Callable[[Path], None]) -> Path:
    """Build a folder under a temporary name beside ``path``, then swap it in: a reader never sees a half-built
    folder (at worst, for an instant, none at all while the old one is moved aside)."""
    staging = staging_folder(path)
    try:
        build(staging)
        old = path.with_name(f".{path.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        moved = path.exists()
        if moved:
            os.replace(path, old)
        try:
            os.replace(staging, path)
        except BaseException:
            if moved:  # put the old folder back: a failed export leaves the previous one in place
                os.replace(old, path)
            raise
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return path


def safe_name(name: str) -> str:
    """A model or judge name usable as a file name (FastChat names files after them)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")
    if not cleaned:
        raise ValueError(f"cannot make a file name from {name!r}")
    return cleaned


def model_id(variant: str) -> str:
    """The name our fine-tuned variants carry in FastChat's and alpaca_eval's files."""
    return f"nuggets-{variant}"


# --- MT-Bench (FastChat llm_judge) -------------------------------------------------------------------------


def _questions_from_rows(rows: pd.DataFrame) -> list[tuple[Question, tuple[str, ...]]]:
    """(question, the model's answers) per question id, rebuilt from the stored per-turn rows."""
    out = []
    for question_id, group in rows.sort_values(["question_id", "turn"]).groupby("question_id", sort=True):
        references = tuple(group["reference"]) if group["reference"].notna().all() else None
        question = Question(int(question_id), str(group["category"].iloc[0]), tuple(group["question"]), references)
        out.append((question, tuple(str(a) for a in group["answer"])))
    return out


def answer_id(model: str, question_id: int, turns: Sequence[str]) -> str:
    """Stable where FastChat draws a random shortuuid: the same answers export to the same file."""
    payload = "\x1f".join([model, str(question_id), *turns]).encode()
    return hashlib.sha256(payload).hexdigest()[:22]


def fastchat_answers(rows: pd.DataFrame, model: str, tstamp: float | None = None) -> list[dict[str, Any]]:
    """One FastChat ``model_answer`` record per question, from ``mt_bench_results`` rows."""
    stamp = time.time() if tstamp is None else tstamp
    return [
        {
            "question_id": question.question_id,
            "answer_id": answer_id(model, question.question_id, answers),
            "model_id": model,
            "choices": [{"index": 0, "turns": list(answers)}],
            "tstamp": stamp,
        }
        for question, answers in _questions_from_rows(rows)
    ]


def fastchat_judgments(rows: pd.DataFrame, model: str, tstamp: float | None = None) -> list[dict[str, Any]]:
    """One FastChat single-grading record per (question, turn): the prompt the judge saw, its text, the score
    (-1 where no rating could be read, FastChat's convention, which ``show_result`` filters out)."""
    stamp = time.time() if tstamp is None else tstamp
    by_id = {q.question_id: (q, a) for q, a in _questions_from_rows(rows)}
    records = []
    for row in rows.sort_values(["question_id", "turn"]).to_dict("records"):
        question, answers = by_id[int(row["question_id"])]
        request = SingleRequest(
            questions=question.turns, answers=answers, turn=int(row["turn"]), references=question.references
        )
        prompt = mt_bench_prompt(request, row.get("mode") or "generate")
        score = row["score"]
        records.append(
            {
                "question_id": question.question_id,
                "model": model,
                "judge": [str(row["judge"]), prompt.template],
                "user_prompt": prompt.user,
                "judgment": "" if row.get("raw") is None else str(row["raw"]),
                "score": -1 if score is None or math.isnan(score) else float(score),
                "turn": int(row["turn"]),
                "tstamp": stamp,
            }
        )
    return records


def export_mt_bench(rows: pd.DataFrame, variant: str, exports: Path) -> dict[str, Path]:
    """Write one variant's answers and grades in FastChat's layout under ``exports/fastchat/data/mt_bench``, with
    the questions and GPT-4 reference answers that FastChat's own ``gen_judgment.py`` needs beside them."""
    bench = exports / FASTCHAT_BENCH
    model = model_id(variant)
    judges = rows["judge"].dropna().unique()
    if len(judges) != 1:
        raise ValueError(f"MT-Bench rows of {variant} come from {len(judges)} judges, expected one")
    written = {
        # gen_judgment.py's default --judge-file is data/judge_prompts.jsonl, beside data/mt_bench/.
        "judge_prompts": write_text_atomic(
            bench.parent / "judge_prompts.jsonl", shipped(JUDGE_PROMPTS).read_text(encoding="utf-8")
        ),
        "question": write_text_atomic(bench / "question.jsonl", shipped(QUESTIONS).read_text(encoding="utf-8")),
        "reference_answer": write_text_atomic(
            bench / "reference_answer" / "gpt-4.jsonl", shipped(REFERENCE_ANSWERS).read_text(encoding="utf-8")
        ),
        "model_answer": write_jsonl_atomic(bench / "model_answer" / f"{model}.jsonl", fastchat_answers(rows, model)),
        # Per variant (the partitions run apart); evaluation_report joins them into <judge>_single.jsonl.
        "model_judgment": write_jsonl_atomic(
            judgment_part_path(exports, str(judges[0]), model), fastchat_judgments(rows, model)
        ),
    }
    return written


def judgment_part_path(exports: Path, judge: str, model: str) -> Path:
    return exports / FASTCHAT_BENCH / "model_judgment" / "by_model" / f"{safe_name(judge)}_single.{model}.jsonl"


def judgment_path(exports: Path, judge: str) -> Path:
    return exports / FASTCHAT_BENCH / "model_judgment" / f"{safe_name(judge)}_single.jsonl"


def combine_judgments(exports: Path, judge: str, models: Sequence[str]) -> Path:
    """One ``<judge>_single.jsonl`` with every listed model's grades: the file ``show_result`` reads."""
    lines = []
    for model in models:
        part = judgment_part_path(exports, judge, model)
        if part.exists():
            lines += [line for line in part.read_text(encoding="utf-8").splitlines() if line.strip()]
    return write_text_atomic(judgment_path(exports, judge), "".join(line + "\n" for line in lines))


def read_fastchat_answers(path: str | Path) -> tuple[str, list[Answer]]:
    """A FastChat ``model_answer/<model>.jsonl`` (ours or one FastChat published): the model's name and its
    answers, ready to be graded by our judge. Temperatures come from FastChat's per-category table; token
    counts are not in the format (0)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ExportFormatError(f"{path}: FastChat answer file does not exist")
    questions = {q.question_id: q for q in load_questions()}
    names: set[str] = set()
    answers: dict[int, Answer] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ExportFormatError(f"{where}: not JSON ({error.msg})") from error
        for name in ("question_id", "choices"):
            if name not in record:
                raise ExportFormatError(f"{where}: missing field {name!r}")
        question = questions.get(record["question_id"])
        if question is None:
            raise ExportFormatError(f"{where}: question_id {record['question_id']!r} is not an MT-Bench question")
        choices = record["choices"]
        turns = (
            choices[0].get("turns") if isinstance(choices, list) and choices and isinstance(choices[0], dict) else None
        )
        if not isinstance(turns, list) or not all(isinstance(t, str) for t in turns):
            raise ExportFormatError(f"{where}: choices[0].turns must be a list of strings")
        if len(turns) != len(question.turns):
            raise ExportFormatError(
                f"{where}: {len(turns)} turns answered, question {question.question_id} has {len(question.turns)}"
            )
        names.add(str(record.get("model_id") or path.stem))
        answers[question.question_id] = Answer(
            question.question_id,
            question.category,
            question.temperature,
            tuple(turns),
            (0,) * len(turns),
            (True,) * len(turns),
        )
    if not answers:
        raise ExportFormatError(f"{path}: no answers")
    if len(names) != 1:
        raise ExportFormatError(f"{path}: answers of more than one model_id {sorted(names)}")
    return names.pop(), [answers[k] for k in sorted(answers)]


# --- AlpacaEval --------------------------------------------------------------------------------------------


def alpaca_eval_outputs(annotations: pd.DataFrame) -> list[dict[str, Any]]:
    """alpaca_eval's ``model_outputs.json`` records, in the evaluation set's order."""
    ordered = annotations.sort_values("index")
    return [
        {
            "instruction": r["instruction"],
            "output": r["output_2"],
            "generator": r["generator_2"],
            "dataset": r["dataset"],
        }
        for r in ordered.to_dict("records")
    ]


def alpaca_eval_annotations(annotations: pd.DataFrame) -> list[dict[str, Any]]:
    """alpaca_eval's ``annotations.json`` records (output_1: the reference, output_2: the model; preference 1-2,
    None where the judge gave no verdict), plus our judge's bookkeeping fields, which alpaca_eval ignores."""
    ordered = annotations.sort_values("index")
    records = []
    for r in ordered.to_dict("records"):
        preference = r["preference"]
        records.append(
            {
                "instruction": r["instruction"],
                "output_1": r["output_1"],
                "generator_1": r["generator_1"],
                "dataset": r["dataset"],
                "output_2": r["output_2"],
                "generator_2": r["generator_2"],
                "annotator": r["judge"],
                "preference": None if preference is None or math.isnan(preference) else float(preference),
                "index": int(r["index"]),
                # Ours only (absent from annotations made elsewhere): how the verdict was asked for.
                **{k: r[k] for k in ("protocol", "model_first") if k in r},
            }
        )
    return records


def export_alpaca_eval(annotations: pd.DataFrame, exports: Path) -> dict[str, Path]:
    """``alpaca_eval/<generator>/model_outputs.json`` and ``.../<judge>/annotations.json``: the layout of
    alpaca_eval's own ``results/`` folder."""
    generators = annotations["generator_2"].dropna().unique()
    judges = annotations["judge"].dropna().unique()
    if len(generators) != 1 or len(judges) != 1:
        raise ValueError("AlpacaEval exports take the annotations of one generator by one judge")
    folder = exports / ALPACA_EVAL_DIR / safe_name(str(generators[0]))
    return {
        "model_outputs": write_json_atomic(folder / "model_outputs.json", alpaca_eval_outputs(annotations)),
        "annotations": write_json_atomic(
            folder / safe_name(str(judges[0])) / "annotations.json", alpaca_eval_annotations(annotations)
        ),
    }


# --- the scored pool ---------------------------------------------------------------------------------------


def ranked_pool(candidates: pd.DataFrame, scores: pd.DataFrame, selected_ids: Iterable[str]) -> pd.DataFrame:
    """Every scored candidate with its text and score, best first (golden score, then mean log-prob gain, then
    id: the order top-k selection uses; rows settled early in decision mode have no score and come last)."""
    merged = candidates[["id", "instruction", "input", "output"]].merge(
        scores[["candidate_id", "golden_score", "wins", "anchors_scored", "mean_delta"]],
        left_on="id",
        right_on="candidate_id",
        validate="one_to_one",
    )
    merged = merged.sort_values(
        ["golden_score", "mean_delta", "id"], ascending=[False, False, True], na_position="last"
    )
    merged["selected"] = merged["id"].isin(set(selected_ids))
    pool = merged[POOL_COLUMNS].reset_index(drop=True)
    return pool.astype({"wins": "int64", "anchors_scored": "int64", "golden_score": "float64", "selected": "bool"})


def alpaca_records(frame: pd.DataFrame) -> list[dict[str, str]]:
    return frame[ALPACA_FIELDS].to_dict(orient="records")


def threshold_file_name(prefix: str, threshold: float) -> str:
    return f"{prefix}_{threshold:g}.json"


def export_scored_pool(
    pool: pd.DataFrame,
    exports: Path,
    *,
    threshold_subsets: dict[float, pd.DataFrame] | None = None,
    prefix: str = "alpaca_golden",
) -> dict[str, Path]:
    """Write the ranked pool (JSONL, Parquet, ``datasets`` folder), the selected subset as Alpaca JSON and one
    Alpaca JSON per threshold in ``threshold_subsets``, all in ``exports/golden/``.

    The folder is built beside the old one and swapped in whole (``replace_folder_atomic``): the files of one
    selection are replaced together or not at all, so a failure half-way (a full disk, a folder that is not
    writable) never leaves a new golden_subset.json beside an old scored pool. Files put there by hand go too."""
    import datasets

    folder = exports / GOLDEN_DIR
    names: dict[str, str] = {
        "scored_pool_jsonl": "scored_pool.jsonl",
        "scored_pool_parquet": "scored_pool.parquet",
        "scored_pool_dataset": "scored_pool_dataset",
        "scored_pool_hub": "scored_pool_hub",
        "golden_subset_alpaca": "golden_subset.json",
    }
    subsets = sorted((threshold_subsets or {}).items())
    names |= {threshold_file_name(prefix, t): threshold_file_name(prefix, t) for t, _ in subsets}
    dataset = datasets.Dataset.from_pandas(pool, preserve_index=False)

    def build(staging: Path) -> None:
        records = (
            {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
            for r in pool.to_dict("records")
        )
        write_jsonl_atomic(staging / names["scored_pool_jsonl"], records)
        write_parquet_atomic(pool, staging / names["scored_pool_parquet"])
        dataset.save_to_disk(str(staging / names["scored_pool_dataset"]))
        _hub_folder(pool, staging / names["scored_pool_hub"])
        write_json_atomic(staging / names["golden_subset_alpaca"], alpaca_records(pool[pool["selected"]]))
        for threshold, subset in subsets:
            write_json_atomic(staging / threshold_file_name(prefix, threshold), alpaca_records(subset))

    replace_folder_atomic(folder, build)
    return {key: folder / name for key, name in names.items()}


def _hub_folder(pool: pd.DataFrame, folder: Path) -> None:
    """The layout of a dataset repository on the hub (``load_dataset(folder)`` reads it; ``save_to_disk``
    folders it refuses), ready for ``huggingface-cli upload``.

    The data file is named after its content: ``datasets`` caches a local folder under a key that can miss a
    re-export (measured with datasets' YAML ``configs`` card: a re-exported folder loaded the previous rows), and a
    new file name is a new key.
    """
    (folder / "data").mkdir(parents=True)
    digest = hashlib.sha256(pd.util.hash_pandas_object(pool, index=False).to_numpy().tobytes()).hexdigest()[:12]
    pool.to_parquet(folder / "data" / f"train-{digest}.parquet", index=False)
    (folder / "README.md").write_text(
        "# NUGGETS scored pool\n\nEvery scored candidate ranked by golden score (the fraction of anchors whose "
        "log-likelihood its one-shot prefix raises); `selected` marks the golden subset. "
        "`datasets.load_dataset(THIS_FOLDER, split='train')` reads it.\n",
        encoding="utf-8",
    )


__all__ = [
    "POOL_COLUMNS",
    "ExportFormatError",
    "alpaca_eval_annotations",
    "alpaca_eval_outputs",
    "combine_judgments",
    "export_alpaca_eval",
    "export_mt_bench",
    "export_scored_pool",
    "fastchat_answers",
    "fastchat_judgments",
    "judgment_path",
    "model_id",
    "ranked_pool",
    "read_fastchat_answers",
    "replace_folder_atomic",
    "safe_name",
    "write_json_atomic",
    "write_jsonl_atomic",
    "write_text_atomic",
]
