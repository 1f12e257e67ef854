"""The whole evaluation path end to end, with the tiny model as both the fine-tuned candidate and the judge."""

from pathlib import Path

import dagster as dg
import pytest

from nuggets_pipeline.assets.evaluation import AlpacaEvalConfig, CalibrationConfig, LikelihoodConfig, MTBenchConfig
from nuggets_pipeline.core.storage import Warehouse
from nuggets_pipeline_tests.materialize import ASSETS, score, select, tiny_resources

SMALL = {
    "finetuned_model": {
        "config": {"max_steps": 1, "per_device_batch_size": 2, "gradient_accumulation_steps": 1, "max_length": 64}
    },
    "mt_bench_results": {"config": {"questions": 2, "max_new_tokens": 6}},
    "alpaca_eval_results": {"config": {"instructions": 3, "max_new_tokens": 6}},
    "reference_likelihood": {"config": {"alpaca_eval_items": 3, "mt_bench_items": 2}},
    "judge_calibration": {"config": {"n": 4}},
}


def run(instance: dg.DagsterInstance, selection: list[str], partition: str | None = None):
    return dg.materialize(
        ASSETS,
        selection=selection,
        instance=instance,
        resources=tiny_resources(),
        partition_key=partition,
        run_config={"ops": {k: v for k, v in SMALL.items() if k in selection}},
    )


@pytest.mark.slow
def test_evaluation_report_compares_golden_and_random(prepared: dg.DagsterInstance, isolated_home: Path) -> None:
    for shard in prepared.get_dynamic_partitions("candidate_shards"):
        assert score(prepared, shard).success
    assert select(prepared, threshold=None, top_k=4).success
    for variant in ("golden", "random"):
        assert run(
            prepared, ["finetuned_model", "mt_bench_results", "alpaca_eval_results", "reference_likelihood"], variant
        ).success
    assert run(prepared, ["judge_calibration"]).success
    result = run(prepared, ["evaluation_report"])
    assert result.success
    report = result.output_for_node("evaluation_report")
    assert {"golden", "random"} <= set(report.columns)
    meta = result.get_asset_materialization_events()[0].materialization.metadata
    assert "tiny-random-llama" in meta["report"].value

    warehouse = Warehouse(isolated_home / "warehouse")
    answers = warehouse.query("select variant, count(*) n from nuggets.mt_bench_results group by 1 order by 1")
    assert answers.to_dict("list") == {"variant": ["golden", "random"], "n": [4, 4]}  # 2 questions x 2 turns
    judged = warehouse.query("select count(*) n from nuggets.alpaca_eval_results")
    assert judged["n"].iloc[0] == 6

    first = warehouse.query("select * from nuggets.alpaca_eval_results where variant = 'golden' order by index")
    cached = run(prepared, ["alpaca_eval_results"], "golden")
    assert cached.success  # a re-run answers every judgment from the cache
    rows = cached.output_for_node("alpaca_eval_results").sort_values("index")
    assert not first["cached"].any() and rows["cached"].all()
    assert rows["preference"].tolist() == first["preference"].tolist()


def test_paper_profile_evaluates_the_full_sets_and_set_fields_override_it() -> None:
    paper = {"profile": "paper"}
    assert MTBenchConfig().settings() == (4, 128)  # cpu-demo: a slice that finishes on 2 cores
    assert MTBenchConfig(**paper).settings() == (None, 1024)  # all 80 questions, FastChat's length
    assert MTBenchConfig(**paper, questions=10).settings() == (10, 1024)
    assert AlpacaEvalConfig(**paper).settings() == (None, 2048)  # all 805 instructions
    assert AlpacaEvalConfig(max_new_tokens=64).settings() == (16, 64)
    assert LikelihoodConfig(**paper).items() == {"alpaca_eval": None, "mt_bench": None}
    assert CalibrationConfig(**paper).pairs() == 100 and CalibrationConfig(n=8).pairs() == 8
    job = dg.Definitions(assets=ASSETS, resources=tiny_resources()).get_implicit_global_asset_job_def()
    with pytest.raises(dg.DagsterInvalidConfigError, match="profile"):
        dg.validate_run_config(job, {"ops": {"mt_bench_results": {"config": {"profile": "full"}}}})
