"""After a run with the tiny model, every export exists, is listed in its asset's metadata and reads back with the
official readers: FastChat's show_result, alpaca_eval's loader and metrics, `datasets`."""

import argparse
import contextlib
import io
import json
from pathlib import Path

import dagster as dg
import datasets
import pytest

from nuggets_pipeline.core.data import ingest
from nuggets_pipeline.core.paths import shipped
from nuggets_pipeline_tests.defs.assets.test_evaluation_assets import SMALL
from nuggets_pipeline_tests.materialize import ASSETS, score, select, tiny_resources


def materialize(instance: dg.DagsterInstance, selection: list[str], partition: str | None = None, **ops: dict):
    config = {k: v for k, v in SMALL.items() if k in selection} | ops
    result = dg.materialize(
        ASSETS,
        selection=selection,
        instance=instance,
        resources=tiny_resources(),
        partition_key=partition,
        run_config={"ops": config},
    )
    assert result.success
    return result


def metadata_of(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    return next(
        e.materialization.metadata
        for e in result.get_asset_materialization_events()
        if e.materialization.asset_key.to_user_string() == asset
    )


def exported(result: dg.ExecuteInProcessResult, asset: str) -> dict[str, Path]:
    metadata = metadata_of(result, asset)
    return {k.removeprefix("export_"): Path(v.value) for k, v in metadata.items() if k.startswith("export_")}


@pytest.mark.slow
def test_every_export_is_listed_and_read_back(prepared: dg.DagsterInstance, isolated_home: Path) -> None:
    for shard in prepared.get_dynamic_partitions("candidate_shards"):
        assert score(prepared, shard).success
    assert select(prepared, threshold=None, top_k=4).success
    pool_run = materialize(
        prepared, ["scored_pool_exports"], scored_pool_exports={"config": {"thresholds": [0.0, 0.5]}}
    )
    files = exported(pool_run, "scored_pool_exports")
    assert {"scored_pool_jsonl", "scored_pool_parquet", "scored_pool_dataset", "scored_pool_hub"} <= set(files)
    assert {"golden_subset_alpaca", "alpaca_golden_0.json", "alpaca_golden_0.5.json"} <= set(files)
    assert all(p.is_relative_to(isolated_home / "exports") and p.exists() for p in files.values())
    pool = datasets.load_from_disk(str(files["scored_pool_dataset"]))
    ids = list(pool["id"])
    assert ids == pool_run.output_for_node("scored_pool_exports")["id"].tolist()
    assert sum(pool["selected"]) == 4
    assert list(datasets.load_dataset(str(files["scored_pool_hub"]), split="train")["id"]) == ids
    fed = ingest([files["scored_pool_dataset"]])
    assert fed.instructions["id"].tolist() == ids
    assert len(json.loads(files["golden_subset_alpaca"].read_text())) == 4

    for variant in ("golden", "random"):
        runs = materialize(prepared, ["finetuned_model", "mt_bench_results", "alpaca_eval_results"], variant)
        mt_files, ae_files = exported(runs, "mt_bench_results"), exported(runs, "alpaca_eval_results")
        assert mt_files["model_answer"].name == f"nuggets-{variant}.jsonl"
        from alpaca_eval.metrics import get_winrate
        from alpaca_eval.utils import load_or_convert_to_dataframe

        annotations = load_or_convert_to_dataframe(ae_files["annotations"])
        outputs = load_or_convert_to_dataframe(ae_files["model_outputs"])
        assert list(outputs.columns) == ["instruction", "output", "generator", "dataset"]
        assert set(outputs["generator"]) == {f"nuggets-{variant}"} and len(outputs) == 3
        stored = runs.output_for_node("alpaca_eval_results")
        metadata = metadata_of(runs, "alpaca_eval_results")
        assert get_winrate(annotations)["win_rate"] == pytest.approx(metadata["win_rate"].value, abs=1e-9)
        assert metadata["lc_glm"].value == "length_controlled_minimal"
        assert len(stored) == 3

    # A FastChat answer file of another model (FastChat's GPT-4 reference answers cover questions 101-130, the
    # demo's first two are 81 and 82: give that model answers to them) graded beside ours.
    other = isolated_home / "other-model.jsonl"
    other.write_text(
        "".join(
            json.dumps({"question_id": q, "model_id": "other-model", "choices": [{"index": 0, "turns": ["A.", "B."]}]})
            + "\n"
            for q in (81, 82)
        )
    )
    materialize(prepared, ["judge_calibration"])
    report = materialize(
        prepared,
        ["evaluation_report"],
        evaluation_report={"config": {"mt_bench_answer_files": [str(other)]}},
    )
    table = report.output_for_node("evaluation_report")
    assert {"golden", "random", "other-model"} <= set(table.columns)
    judgments = exported(report, "evaluation_report")
    (combined,) = judgments.values()
    from fastchat.llm_judge.show_result import display_result_single

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        display_result_single(argparse.Namespace(input_file=str(combined), bench_name="mt_bench", model_list=None))
    average = printed.getvalue().split("Average")[1]
    assert all(name in average for name in ("nuggets-golden", "nuggets-random", "other-model"))
    answers = combined.parent.parent / "model_answer"
    assert sorted(p.name for p in answers.iterdir()) == [
        "nuggets-golden.jsonl",
        "nuggets-random.jsonl",
        "other-model.jsonl",
    ]
    assert (answers.parent / "question.jsonl").read_text() == shipped("mt_bench/question.jsonl").read_text()


def test_a_selection_whose_export_fails_leaves_every_exported_file_as_it_was(
    prepared: dg.DagsterInstance, isolated_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 23 item 6: golden_subset rewrote exports/golden_subset.json before scored_pool_exports failed (an
    export folder that is not writable), so two golden_subset.json files disagreed. Now there is one, written
    with the rest of the selection's files, all replaced together."""
    from nuggets_pipeline.core import exports

    for shard in prepared.get_dynamic_partitions("candidate_shards"):
        assert score(prepared, shard).success
    out = isolated_home / "exports"
    out.mkdir()
    (out / "golden_subset.json").write_text("[]")  # left by an older version: the duplicate goes
    selection = ["golden_subset", "scored_pool_exports"]
    materialize(prepared, selection, golden_subset={"config": {"threshold": None, "top_k": 4}})
    assert [p.relative_to(out) for p in out.rglob("golden_subset.json")] == [Path("golden/golden_subset.json")]
    before = {str(p): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def not_writable(pool: object, target: Path) -> None:
        raise PermissionError(13, "Permission denied", str(target))

    monkeypatch.setattr(exports, "_hub_folder", not_writable)
    failed = dg.materialize(
        ASSETS,
        selection=selection,
        instance=prepared,
        resources=tiny_resources(),
        run_config={"ops": {"golden_subset": {"config": {"threshold": None, "top_k": 2}}}},
        raise_on_error=False,
    )
    assert not failed.success and len(failed.output_for_node("golden_subset")) == 2
    assert {str(p): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert len(json.loads((out / "golden" / "golden_subset.json").read_text())) == 4  # the last export's, whole
