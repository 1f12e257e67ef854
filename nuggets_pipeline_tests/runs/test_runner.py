"""The runner: stages run through the definitions' stage jobs, and the resume rule skips exactly what is done."""

import dataclasses
import json
from pathlib import Path

import dagster as dg
import pytest

from nuggets_pipeline.defs.definitions import default_resources
from nuggets_pipeline.runs import presets, runner


def pool_file(tmp_path: Path, rows: int = 20) -> Path:
    path = tmp_path / "pool.jsonl"
    lines = [{"instruction": f"Spell the number {i}.", "output": f"It is spelled {i}."} for i in range(rows)]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def resuming_plan(source: Path, anchors: int, ledger: Path) -> runner.RunPlan:
    """The tiny study preset with random anchors (no model to load) on a small file, resuming."""
    base = presets.preset("tiny")
    preset = dataclasses.replace(base, pool=None, anchors=presets.Anchors(method="random", n=anchors, seed=0))
    plan = runner.preset_plan(preset, default_resources(), launched_by="test", ledger=ledger)
    plan.run_config["ops"]["ingest_instructions"] = {"config": {"sources": [str(source)]}}
    return plan


def test_the_resume_rule_skips_a_stage_done_with_the_same_settings_and_reruns_a_changed_one(
    tmp_path: Path, isolated_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    instance = dg.DagsterInstance.ephemeral()
    ran: list[tuple[str, str | None]] = []
    execute = runner.run_unit

    def counted(stage: runner.Stage, unit: runner.Unit, *args: object, **kwargs: object) -> None:
        ran.append((stage.name, unit.partition))
        execute(stage, unit, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(runner, "run_unit", counted)
    source, ledger = pool_file(tmp_path), tmp_path / "timings.json"

    first = runner.run(resuming_plan(source, 3, ledger), instance, until="anchors")
    assert ran == [("ingest", None), ("anchors", None)]
    assert list(first) == ["ingest", "anchors"] and all(t["wall_s"] > 0 for t in first.values())
    capsys.readouterr()

    # The same settings: both stages are found materialised with their keys, nothing runs, the times are kept.
    ran.clear()
    second = runner.run(resuming_plan(source, 3, ledger), instance, until="anchors")
    assert ran == []
    assert capsys.readouterr().out.count(runner.SKIPPED) == 2
    assert {k: v["wall_s"] for k, v in second.items()} == {k: v["wall_s"] for k, v in first.items()}
    assert all(t["skipped_last_run"] for t in second.values())

    # Another anchor count re-runs the stage that reads it (and would run every later one), never ingest.
    third = runner.run(resuming_plan(source, 4, ledger), instance, until="anchors")
    assert ran == [("anchors", None)]
    assert third["ingest"]["skipped_last_run"] and not third["anchors"]["skipped_last_run"]
    assert third["anchors"]["key"] != first["anchors"]["key"]


def test_one_shot_runs_a_range_unless_the_plan_resumes_shard_by_shard(
    tmp_path: Path, isolated_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    instance = dg.DagsterInstance.ephemeral()
    plan = resuming_plan(pool_file(tmp_path), 3, tmp_path / "timings.json")
    runner.run(plan, instance, until="anchors")  # registers the tiny preset's 2 shards
    one_shot = next(stage for stage in runner.stages(plan) if stage.name == "one-shot")
    shards = runner.current_shards(instance)
    assert len(shards) == presets.preset("tiny").shards
    resumed = runner.units(one_shot, plan, instance, "key")
    assert [u.partition for u in resumed] == shards and len({u.key for u in resumed}) == len(shards)
    single = runner.units(one_shot, dataclasses.replace(plan, resume_from=None), instance, "key")
    assert [u.partition for u in single] == [None]
    assert single[0].tags["dagster/asset_partition_range_start"] == shards[0]
    assert single[0].tags["dagster/asset_partition_range_end"] == shards[-1]
    train = next(stage for stage in runner.stages(plan) if stage.name == "train")
    assert [u.partition for u in runner.units(train, plan, instance, "key")] == list(plan.variants)


def test_a_stage_the_plan_lacks_is_refused_before_anything_runs() -> None:
    plan = runner.preset_plan(presets.preset("demo"), default_resources())
    with pytest.raises(runner.RunRefused, match="--until 'selct' is no stage"):
        runner.check(plan, "selct")


def test_a_resource_setting_belongs_to_the_settings_of_exactly_the_stages_that_use_it() -> None:
    """The scoring mode is resource config, not op config: a study switched from exact to adaptive must re-score,
    and must not re-ingest."""
    from nuggets_pipeline.defs.definitions import defs

    plan = runner.preset_plan(presets.preset("study"), default_resources())
    used = {stage.name: runner._resources(stage, defs) for stage in runner.stages(plan, defs)}
    assert used["one-shot"]["scoring"]["config"]["mode"] == "adaptive"
    assert used["ingest"] == {} and "scoring" not in used["train"] and "scoring_model" in used["zero-shot"]


def test_a_ledger_kept_under_the_key_without_resource_config_still_counts_its_time(
    tmp_path: Path, isolated_home: Path
) -> None:
    """A study begun before resource config joined the settings key keeps the hours its ledger holds."""
    from nuggets_pipeline.defs.definitions import defs

    source, ledger = pool_file(tmp_path), tmp_path / "timings.json"
    plan = resuming_plan(source, 3, ledger)
    ingest = runner.stages(plan, defs)[0]
    old_key = runner._hash(
        [runner._hash(dict(plan.resume_from or {})), "ingest", list(ingest.spec.assets), ingest.run_config["ops"], {}]
    )
    ledger.write_text(json.dumps({"ingest": {"wall_s": 1000.0, "key": old_key, "units": 1, "ran_units": 1}}))
    found = runner.run(plan, dg.DagsterInstance.ephemeral(), until="ingest")
    assert found["ingest"]["wall_s"] > 1000.0 and found["ingest"]["key"] != old_key
