"""The commands' stages ask for assets and configuration the definitions really have, through the stage jobs
the definitions register."""

import dagster as dg
import pytest

from nuggets_pipeline.cli import build_parser, demo_preset
from nuggets_pipeline.defs.definitions import default_resources, defs
from nuggets_pipeline.defs.jobs import STAGE_NAMES, STAGES
from nuggets_pipeline.runs import runner


def demo_stages(argv: list[str]) -> list[runner.Stage]:
    return runner.stages(runner.preset_plan(demo_preset(build_parser().parse_args(argv)), default_resources()))


def test_every_stage_is_a_job_of_the_definitions_with_its_assets_and_their_checks() -> None:
    assert STAGE_NAMES == ("ingest", "anchors", "zero-shot", "one-shot", "select", "ifd", "train", "evaluate", "report")
    checked = {key.asset_key.to_user_string() for key in defs.resolve_asset_graph().asset_check_keys}
    for spec in STAGES:
        job = defs.resolve_job_def(spec.job_name)  # registered: the UI lists it
        layer = job.asset_layer
        assert {key.to_user_string() for key in layer.selected_asset_keys} == set(spec.assets)
        checks = {key.asset_key.to_user_string() for key in layer.asset_graph.asset_check_keys}
        assert checks == checked & set(spec.assets)  # the checks of the stage's assets run with it
    assert defs.resolve_job_def("stage_one_shot").partitions_def.name == "candidate_shards"
    assert {"score_shards", "ingest_increments"} <= {job.name for job in defs.resolve_all_job_defs()}


@pytest.mark.parametrize("argv", [["demo"], ["demo", "--threshold", "0.8", "--candidates", "12", "--anchors", "3"]])
def test_every_demo_stage_config_validates(argv: list[str]) -> None:
    stages = demo_stages(argv)
    assert [s.name for s in stages] == [n for n in STAGE_NAMES if n != "ifd"]  # no ifd variant: no ifd stage
    for stage in stages:
        result = dg.validate_run_config(defs.resolve_job_def(stage.spec.job_name), stage.run_config)
        assert result["ops"].keys() >= stage.run_config["ops"].keys()
    by_name = {s.name: s.run_config["ops"] for s in stages}
    if "--threshold" in argv:
        assert by_name["select"]["golden_subset"]["config"] == {"threshold": 0.8}
        assert by_name["anchors"]["anchor_set"]["config"]["n"] == 3
        assert by_name["anchors"]["candidates"]["config"] == {"shards": 4, "limit": 12}
    else:  # the demo's defaults, read from the preset table
        assert by_name["select"]["golden_subset"]["config"] == {"threshold": None, "top_fraction": 0.25}
        assert by_name["train"]["finetuned_model"]["config"] == {
            "profile": "cpu-demo",
            "max_steps": 4,
            "max_length": 192,
        }
        assert by_name["report"]["evaluation_report"]["config"]["variants"] == ["golden", "random"]


def test_a_misspelt_field_is_refused() -> None:
    stage = next(s for s in demo_stages(["demo"]) if s.name == "anchors")
    stage.run_config["ops"]["anchor_set"]["config"]["kmeans_pool"] = 10
    with pytest.raises(dg.DagsterInvalidConfigError, match="kmeans_pool"):
        dg.validate_run_config(defs.resolve_job_def(stage.spec.job_name), stage.run_config)


# --- `nuggets run`: flags mapped onto the launchpad's run config ------------------------------------------

RUN_ARGV = [
    "run",
    "--source",
    "user.jsonl",
    "--instruction-field",
    "prompt",
    "--output-field",
    "completion",
    "--hub-split",
    "test",
    "--scoring-model",
    "tiny-random-llama",
    "--training-model",
    "some-org/some-model",
    "--anchor-method",
    "random",
    "--anchors",
    "3",
    "--top-k",
    "5",
    "--export-thresholds",
    "0.8",
    "0.85",
    "--train-profile",
    "paper",
    "--eval-profile",
    "paper",
]


def test_run_flags_map_onto_the_run_config_the_launchpad_takes() -> None:
    from nuggets_pipeline.runs.flags import run_config

    bound = default_resources()
    config = run_config(build_parser().parse_args(RUN_ARGV), bound)
    ops = config["ops"]
    assert ops["ingest_instructions"]["config"] == {
        "sources": ["user.jsonl"],
        "instruction_field": "prompt",
        "output_field": "completion",
        "hub_split": "test",
    }
    assert ops["anchor_set"]["config"]["method"] == "random" and ops["anchor_set"]["config"]["n"] == 3
    assert ops["golden_subset"]["config"] == {"threshold": None, "top_k": 5}
    assert ops["scored_pool_exports"]["config"] == {"thresholds": [0.8, 0.85]}
    assert ops["finetuned_model"]["config"]["profile"] == "paper"
    assert ops["mt_bench_results"]["config"] == {"profile": "paper"}
    # A resource a flag touches carries all its bound fields: Dagster would reset the rest to class defaults.
    scoring = config["resources"]["scoring_model"]["config"]
    assert scoring["model"] == "tiny-random-llama"
    assert scoring["device"] == bound["scoring_model"].device and scoring["dtype"] == bound["scoring_model"].dtype
    assert config["resources"]["training_model"]["config"]["model"] == "some-org/some-model"
    assert "judge" not in config["resources"]  # untouched: the definitions' judge
    # The whole config validates against the full asset job, as the launchpad would check it.
    job = dg.Definitions(
        assets=list(defs.assets), asset_checks=list(defs.asset_checks), resources=bound
    ).get_implicit_global_asset_job_def()
    assert dg.validate_run_config(job, config)["resources"]["scoring_model"]["config"] == scoring


def test_judge_flags_set_timeout_retries_and_failure_share_on_the_judge_resource() -> None:
    """Before: no such flags; the judge waited 120 s per try, 6 tries, and evaluation never failed on judgments."""
    from nuggets_pipeline.runs.flags import run_config

    bound = default_resources()
    flags = ["--judge-timeout-s", "5", "--judge-max-retries", "1", "--judge-max-failed-fraction", "0.2"]
    config = run_config(build_parser().parse_args(["run", "--source", "user.jsonl", *flags]), bound)
    judge = config["resources"]["judge"]["config"]
    assert (judge["timeout_s"], judge["max_retries"], judge["max_failed_fraction"]) == (5.0, 1, 0.2)
    assert judge["model"] == bound["judge"].model  # the rest as bound
    job = dg.Definitions(
        assets=list(defs.assets), asset_checks=list(defs.asset_checks), resources=bound
    ).get_implicit_global_asset_job_def()
    assert dg.validate_run_config(job, config)["resources"]["judge"]["config"]["timeout_s"] == 5.0


def test_an_anchor_file_keeps_all_its_rows_unless_anchors_is_given() -> None:
    from nuggets_pipeline.runs.flags import run_config

    def anchors(*flags: str) -> dict:
        argv = ["run", "--source", "user.jsonl", *flags]
        return run_config(build_parser().parse_args(argv), default_resources())["ops"]["anchor_set"]["config"]

    assert "n" not in anchors("--anchor-method", "file")  # the paper's 100, not the KMeans default of 8
    assert anchors("--anchor-method", "file", "--anchors", "20")["n"] == 20
    assert anchors("--anchor-method", "kmeans")["n"] == 8


def test_every_run_stage_config_validates() -> None:
    from nuggets_pipeline.runs.flags import run_config

    config = run_config(build_parser().parse_args(RUN_ARGV), default_resources())
    stages = runner.stages(runner.RunPlan(launched_by="run", run_config=config, variants=("golden", "random")))
    assert [s.name for s in stages] == [n for n in STAGE_NAMES if n != "ifd"]  # no ifd variant: no ifd stage
    for stage in stages:
        dg.validate_run_config(defs.resolve_job_def(stage.spec.job_name), stage.run_config)
        assert stage.run_config["resources"] == config["resources"]
    select = next(s for s in stages if s.name == "select")
    assert select.spec.assets == ("golden_subset", "scored_pool_exports")
    assert select.run_config["ops"]["golden_subset"]["config"] == {"threshold": None, "top_k": 5}
    ingest = next(s for s in stages if s.name == "ingest")
    assert set(ingest.run_config["ops"]) == {"ingest_instructions"}  # the op of the instructions multi-asset


def test_run_help_reads_like_the_readme(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--help"])
    text = capsys.readouterr().out
    for heading in ("data (asset `instructions`)", "models (resources", "anchors", "selection", "profiles"):
        assert heading in text
    assert "nuggets run --source my_data.jsonl" in text and "--print-config" in text
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--threshold", "0.8", "--top-k", "3"])  # one criterion only


def test_print_config_is_the_launchpad_yaml(capsys: pytest.CaptureFixture[str], tmp_path) -> None:  # type: ignore[no-untyped-def]
    import yaml

    from nuggets_pipeline.cli import main
    from nuggets_pipeline.runs.flags import run_config

    source = tmp_path / "mine.jsonl"
    source.write_text('{"instruction": "a", "output": "b"}\n')
    argv = ["run", "--source", str(source), "--training-model", str(tmp_path), "--print-config"]
    assert main(argv) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed == run_config(build_parser().parse_args(argv), default_resources())
    # Local paths become absolute: the same YAML means the same files from the UI's working directory.
    assert printed["ops"]["ingest_instructions"]["config"]["sources"] == [str(source.resolve())]
    assert printed["resources"]["training_model"]["config"]["model"] == str(tmp_path.resolve())


@pytest.mark.slow
def test_run_scores_your_file_with_your_model(  # type: ignore[no-untyped-def]
    tmp_path, monkeypatch: pytest.MonkeyPatch, isolated_home, capsys: pytest.CaptureFixture[str]
) -> None:
    """`nuggets run` on a user's prompt/completion JSONL with the tiny model, through selection and export."""
    import json

    from nuggets_pipeline.cli import main
    from nuggets_pipeline.core.storage import Warehouse

    rows = [{"prompt": f"Count to {i}.", "completion": " ".join(map(str, range(1, i + 2)))} for i in range(14)]
    source = tmp_path / "mine.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    monkeypatch.setenv("NUGGETS_DAGSTER_STORAGE", str(tmp_path / "dagster_home"))
    (tmp_path / "dagster_home").mkdir()
    tiny = "tiny-random-llama"
    argv = ["run", "--source", str(source), "--instruction-field", "prompt", "--output-field", "completion"]
    argv += ["--scoring-model", tiny, "--training-model", tiny, "--judge-model", tiny, "--anchor-method", "random"]
    argv += ["--anchors", "3", "--candidates", "0", "--shards", "2", "--top-k", "4", "--export-thresholds", "0.5"]
    assert main([*argv, "--until", "select"]) == 0
    # The summary gives the ranking's reliability line beside the golden subset (3 anchors: too few to say).
    assert f"{'reliability':>20}: cannot say: only 3 anchors were scored" in capsys.readouterr().out
    warehouse = Warehouse(isolated_home / "warehouse")
    assert warehouse.query("select count(*) n from nuggets.instructions")["n"].iloc[0] == 14
    assert warehouse.query("select count(*) n from nuggets.golden_subset")["n"].iloc[0] == 4
    exported = json.loads((isolated_home / "exports" / "golden" / "golden_subset.json").read_text())
    assert len(exported) == 4 and {r["instruction"] for r in exported} <= {r["prompt"] for r in rows}
    assert (isolated_home / "exports" / "golden" / "alpaca_golden_0.5.json").exists()


@pytest.mark.parametrize(
    ("flags", "refused"),
    [
        (["--top-fraction", "0"], "ops.golden_subset.config.top_fraction: Input should be greater than 0"),
        (["--top-fraction", "1.5"], "ops.golden_subset.config.top_fraction: Input should be less than or equal to 1"),
        (["--threshold", "1.0"], "threshold 1.0 can never select anything"),
        (["--top-k", "0"], "ops.golden_subset.config.top_k: Input should be greater than 0"),
        (["--shards", "0"], "ops.candidates.config.shards: Input should be greater than 0"),
        (["--judge-max-retries", "-1"], "resources.judge.config.max_retries"),
        (["--until", "selct"], "--until 'selct' is no stage"),
    ],
)
def test_a_run_config_out_of_range_is_refused_before_any_stage_runs(
    flags: list[str], refused: str, tmp_path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    from nuggets_pipeline.cli import main

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    monkeypatch.setenv("NUGGETS_DAGSTER_STORAGE", str(tmp_path / "storage"))
    # No model may be loaded and nothing ingested: a refusal comes before the first stage.
    monkeypatch.setattr("nuggets_pipeline.runs.runner.run_unit", lambda *a, **k: pytest.fail("a stage ran"))
    assert main(["run", "--scoring-model", "tiny-random-llama", *flags]) == 2
    assert refused in capsys.readouterr().err


def test_a_criterion_the_user_gave_is_never_replaced(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from nuggets_pipeline.runs.flags import ops_config

    chosen = ops_config(build_parser().parse_args(["run", "--top-fraction", "0"]))["golden_subset"]["config"]
    assert chosen == {"threshold": None, "top_fraction": 0.0}  # handed on to be refused, not turned into 0.25
    assert ops_config(build_parser().parse_args(["run"]))["golden_subset"]["config"]["top_fraction"] == 0.25


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--scoring-mode", "adaptive"], {"mode": "adaptive", "adaptive_top_fraction": 0.25}),
        (["--scoring-mode", "adaptive", "--top-k", "7"], {"mode": "adaptive", "adaptive_top_k": 7}),
        (
            ["--scoring-mode", "adaptive", "--threshold", "0.6", "--adaptive-confidence", "0.9"],
            {"mode": "adaptive", "adaptive_threshold": 0.6, "adaptive_confidence": 0.9},
        ),
        (["--scoring-mode", "decision", "--threshold", "0.8"], {"mode": "decision", "decision_threshold": 0.8}),
    ],
)
def test_the_scoring_mode_decides_against_the_selections_own_criterion(flags: list[str], expected: dict) -> None:
    from nuggets_pipeline.runs.flags import run_config

    config = run_config(build_parser().parse_args(["run", *flags]), default_resources())
    scoring = config["resources"]["scoring"]["config"]
    assert {k: scoring[k] for k in expected} == expected


def test_decision_mode_without_a_threshold_is_refused_before_any_stage_runs(
    tmp_path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    from nuggets_pipeline.cli import main

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    monkeypatch.setattr("nuggets_pipeline.runs.runner.run_unit", lambda *a, **k: pytest.fail("a stage ran"))
    assert main(["run", "--scoring-mode", "decision"]) == 2
    assert "scoring.mode decision needs scoring.decision_threshold" in capsys.readouterr().err


def test_the_ifd_selector_adds_its_stage_and_variant_at_golden_s_size() -> None:
    from nuggets_pipeline.runs.flags import RunConfigError, run_config, run_preset

    args = build_parser().parse_args([*RUN_ARGV, "--selector", "ifd", "--variants", "golden,random,base"])
    assert run_preset(args).variants == ("golden", "random", "base", "ifd")
    config = run_config(args, default_resources())
    stages = runner.stages(runner.RunPlan(launched_by="run", run_config=config, variants=run_preset(args).variants))
    assert [s.name for s in stages] == list(STAGE_NAMES)  # the ifd stage too
    ifd = next(s for s in stages if s.name == "ifd")
    dg.validate_run_config(defs.resolve_job_def(ifd.spec.job_name), ifd.run_config)
    golden, by_ifd = config["ops"]["golden_subset"]["config"], config["ops"]["ifd_subset"]["config"]
    assert [golden.get(k) for k in ("top_k", "top_fraction")] == [by_ifd.get(k) for k in ("top_k", "top_fraction")]
    report = config["ops"]["evaluation_report"]["config"]["variants"]
    assert report == ["golden", "random", "base", "ifd"]
    with pytest.raises(RunConfigError, match="unknown \\['bogus'\\]"):
        run_preset(build_parser().parse_args([*RUN_ARGV, "--variants", "golden,bogus"]))
