"""The study command: its settings, its rendering, and the whole study end to end at tiny size (resumed, and
re-run from the scored pool it wrote)."""

import dataclasses
import json
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from nuggets_pipeline.cli import main
from nuggets_pipeline.core.paths import REPO_ROOT
from nuggets_pipeline.defs.definitions import default_resources, defs
from nuggets_pipeline.runs import presets, runner
from nuggets_pipeline.study.render import render_study_doc
from nuggets_pipeline.study.results import headline
from nuggets_pipeline.study.scored_pool import import_scored_pool, read_scored_pool
from nuggets_pipeline.study.sizing import estimate_seconds, settings_record

# Every comparison the issue names, among the tiny study's variants (core.statistics pins their order).
COMPARISONS = {
    "golden vs random",
    "golden vs random-1",
    "golden vs random (pooled random+random-1)",
    "golden vs longest",
    "golden vs length-matched",
    "golden vs ifd",
    "golden vs full",
    "golden vs bottom",
    "ifd vs random (pooled random+random-1)",
    "longest vs random (pooled random+random-1)",
    "random (pooled random+random-1) vs bottom",
    *(f"{v} vs base" for v in ("golden", "bottom", "random", "random-1", "longest", "length-matched", "ifd", "full")),
    "random vs random-1",
}


def test_the_second_study_meets_the_issue_and_says_how_many_sittings_it_takes() -> None:
    s = settings_record(presets.preset("study"))
    assert s["pool"] >= 600 and s["anchor_method"] == "file" and s["anchors"] is None  # the paper's 100 anchors
    assert s["scoring"]["mode"] == "adaptive" and s["num_train_epochs"] >= 2 and s["shards"] > 1
    assert set(s["variants"]) >= {"golden", "random", "random-1", "longest", "length-matched", "ifd", "full", "base"}
    assert s["likelihood_alpaca_eval_items"] == 300 and s["likelihood_sample_seed"] == 0  # fixed before the run
    assert s["likelihood_mt_bench_items"] is None and s["padding_free"]
    estimate = estimate_seconds(presets.preset("study"))
    assert list(estimate) == [
        "ingest",
        "anchors",
        "zero-shot",
        "one-shot",
        "select",
        "ifd",
        "train",
        "evaluate",
        "report",
    ]
    assert 2.0 < sum(estimate.values()) / 3600 < 5.0  # more than one sitting on 2 cores: resumable (docs/study.md)
    first = estimate_seconds(presets.preset("study-1"))
    assert "ifd" not in first and sum(first.values()) / 3600 < 3.0  # the first study: one sitting


def test_the_committed_results_record_the_settings_of_their_preset_row() -> None:
    """results.json keeps its schema: the preset table's row it names, written as the settings record it had."""
    from nuggets_pipeline.study.conduct import COMMITTED

    records = [REPO_ROOT / folder / "results.json" for folder, _ in COMMITTED.values()]
    assert records[1].exists()  # the first edition's record, kept as it ran
    for path in (p for p in records if p.exists()):
        committed = json.loads(path.read_text())
        row = presets.preset(committed["settings"]["size"])
        assert path.parent == REPO_ROOT / COMMITTED[row.name][0]  # each record in its own size's folder
        assert committed["settings"] == settings_record(row)
        assert committed["estimated_stage_s"] == {k: round(v) for k, v in estimate_seconds(row).items()}


@pytest.mark.parametrize("size", presets.STUDY_SIZES)
def test_every_study_stage_config_validates_against_the_definitions(size: str) -> None:
    plan = runner.preset_plan(presets.preset(size), default_resources())
    runner.check(plan, None)  # what the runner refuses before any stage, ops and pinned resources alike
    for stage in runner.stages(plan):
        result = dg.validate_run_config(defs.resolve_job_def(stage.spec.job_name), stage.run_config)
        assert result["ops"].keys() >= stage.run_config["ops"].keys()
        resources = result["resources"]  # only those the stage's assets use; the rest of the run config is inert
        for model in ("scoring_model", "training_model"):
            if model in resources:
                assert resources[model]["config"]["model"] == presets.preset(size).model
        if "judge" in resources:
            assert resources["judge"]["config"]["backend"] == "local"
    used = [
        dg.validate_run_config(defs.resolve_job_def(s.spec.job_name), s.run_config)["resources"]
        for s in runner.stages(plan)
    ]
    assert all(any(name in r for r in used) for name in ("scoring_model", "training_model", "judge"))


def test_the_doc_is_rendered_from_results_and_only_inside_its_blocks() -> None:
    results = {
        "settings": {"pool": 600},
        "stage_wall_s": {"train": {"wall_s": 3600.0}},
        "estimated_stage_s": {"train": 3667, "evaluate": 5231},
        "machine": {"cpu": "x"},
        "judge": {"near_chance": True, "agreement": 0.583},
        "variants": {"golden": {"examples": 150, "steps": 38, "final_loss": 1.5, "wall_s": 400.0}},
        "comparisons": [
            {
                "comparison": "golden vs random",
                "source": "alpaca_eval",
                "n": 805,
                "difference": 0.0123,
                "ci_low": 0.004,
                "ci_high": 0.02,
                "verdict": "ahead",
                "mt_bench_score_delta": 0.01,
                "alpaca_eval_win_rate_delta": None,
                "beyond_seed_spread": True,
            }
        ],
        "headline": "Golden is ahead.",
    }
    text = (
        "# Study\nkept\n<!-- study:headline -->\nSTALE\n<!-- /study:headline -->\n"
        "<!-- study:comparisons -->\n<!-- /study:comparisons -->\n<!-- study:objections -->\n<!-- /study:objections -->"
        "\nend\n"
    )
    rendered = render_study_doc(text, results)
    # The five objections, each answered from the results, or saying it was not measured.
    assert "1. **Noise**" in rendered and "5. **IFD**" in rendered
    assert "golden vs ifd: not measured" in rendered and "not measured." in rendered
    assert "<!-- study:headline -->\nGolden is ahead.\n<!-- /study:headline -->" in rendered
    row = "| golden vs random | alpaca_eval | 805 | +0.0123 | [+0.0040, +0.0200] | ahead | yes | +0.010 | – |"
    assert row in rendered
    assert "shown, not evidence" in rendered
    assert rendered.startswith("# Study\nkept\n") and rendered.endswith("end\n") and "STALE" not in rendered
    assert render_study_doc(rendered, results) == rendered  # idempotent
    with pytest.raises(ValueError, match="no closing"):
        render_study_doc("<!-- study:headline -->", results)


def test_the_shipped_doc_and_readme_have_the_blocks_the_renderer_fills() -> None:
    doc = (REPO_ROOT / "docs" / "study.md").read_text()
    for name in ("headline", "settings", "machine", "timings", "comparisons", "variants", "length"):
        assert f"<!-- study:{name} -->" in doc and f"<!-- /study:{name} -->" in doc
    assert "<!-- study:headline -->" in (REPO_ROOT / "README.md").read_text()


def _use_home(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    home.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("NUGGETS_HOME", str(home))
    monkeypatch.setenv("NUGGETS_DAGSTER_STORAGE", str(home / "dagster"))
    monkeypatch.setenv("DAGSTER_HOME", str(REPO_ROOT))


@pytest.mark.slow
def test_the_tiny_study_runs_end_to_end_resumes_and_reruns_from_its_scored_pool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _use_home(monkeypatch, tmp_path / "first")
    out = tmp_path / "out"
    doc = tmp_path / "study.md"
    doc.write_text((REPO_ROOT / "docs" / "study.md").read_text())
    assert main(["study", "--size", "tiny", "--out", str(out), "--render", str(doc)]) == 0
    first = capsys.readouterr().out
    assert "already materialised" not in first

    results = json.loads((out / "results.json").read_text())
    found = {c["comparison"] for c in results["comparisons"]}
    assert found == COMPARISONS
    for c in results["comparisons"]:
        assert c["ci_low"] <= c["difference"] <= c["ci_high"]
        assert c["verdict"] in ("ahead", "behind", "within noise")
        assert c["resamples"] == presets.preset("tiny").bootstrap_resamples
        assert c["seed_spread"] >= 0 and c["beyond_seed_spread"] in (True, False)
    assert {c["source"] for c in results["comparisons"]} == {"alpaca_eval", "mt_bench"}
    sizes = {v: results["variants"][v]["examples"] for v in ("golden", "bottom", "random", "random-1")}
    assert set(sizes.values()) == {6}  # a quarter of 24, the same for every control
    assert results["variants"]["full"]["examples"] == 24
    assert results["settings"] == settings_record(presets.preset("tiny"))
    scoring = results["scoring"]  # the mode, its passes, the ranking's reliability and the measured cost
    assert scoring["mode"] == "exact" and scoring["passes_fraction"] == 1.0 and scoring["dtype"] == "float32"
    assert scoring["reliability"] and scoring["selection_to_tuning_ratio"] > 0
    assert "(measured: scoring" in scoring["selection_to_tuning"]  # the full-pool fine-tune ran beside it
    assert all(results["stage_wall_s"][stage]["wall_s"] > 0 for stage in estimate_seconds(presets.preset("tiny")))
    assert (out / "differences.png").stat().st_size > 0
    answers = pd.read_parquet(out / "reference_likelihood.parquet")  # per answer, per variant
    assert set(answers["variant"]) == set(presets.preset("tiny").variants) and answers["item_id"].notna().all()
    table = pd.read_csv(out / "comparisons.csv")
    assert set(table["comparison"]) == COMPARISONS
    pool = pd.read_parquet(out / "scored_pool.parquet")
    assert len(pool) == 24 and pool["golden_score"].between(0, 1).all()
    lengths = results["scored_pool"]["response_chars_mean"]
    assert -1 <= results["scored_pool"]["spearman_golden_score_vs_response_chars"] <= 1
    assert set(lengths) == {"pool", "golden quarter", "bottom quarter"} and min(lengths.values()) > 0
    rendered = doc.read_text()
    assert results["headline"] in rendered and "| golden vs bottom |" in rendered

    # Re-running resumes: every stage is found materialised with the same settings, nothing runs again.
    assert main(["study", "--size", "tiny", "--out", str(out), "--render"]) == 0
    second = capsys.readouterr().out
    assert second.count("skipped: every unit materialised earlier") == 9  # ifd too: tiny trains its variant
    assert json.loads((out / "results.json").read_text())["comparisons"] == results["comparisons"]

    # --collect writes the same results from what the home holds, running no stage at all.
    assert main(["study", "--size", "tiny", "--out", str(tmp_path / "collected"), "--render", "--collect"]) == 0
    collected = capsys.readouterr().out
    assert "=== ingest" not in collected and "(collected from the home)" in collected
    written = json.loads((tmp_path / "collected" / "results.json").read_text())
    assert written["comparisons"] == results["comparisons"] and written["stage_wall_s"]["train"]["wall_s"] > 0

    # Fewer variants change only the report: nothing is scored, trained or evaluated again.
    original = presets.preset("tiny")
    fewer = dataclasses.replace(original, variants=("golden", "bottom", "random", "full"))
    monkeypatch.setitem(presets.PRESETS, "tiny", fewer)
    assert main(["study", "--size", "tiny", "--out", str(tmp_path / "fewer"), "--render"]) == 0
    third = capsys.readouterr().out
    assert third.count("skipped: every unit materialised earlier") == 7 and "=== report" in third
    narrowed = json.loads((tmp_path / "fewer" / "results.json").read_text())
    assert {c["comparison"] for c in narrowed["comparisons"]} == {
        "golden vs random",
        "golden vs full",
        "golden vs bottom",
        "random vs bottom",
    }
    assert all(c["seed_spread"] is None for c in narrowed["comparisons"])  # no second seed, no floor claimed
    monkeypatch.setitem(presets.PRESETS, "tiny", original)

    # A fresh home trains from the committed scored pool without scoring: same pool, same golden subset.
    _use_home(monkeypatch, tmp_path / "second")
    assert main(["study", "--size", "tiny", "--out", str(tmp_path / "none"), "--render", "--collect"]) == 2
    assert "holds no evaluation report" in capsys.readouterr().err
    args = [
        "study",
        "--size",
        "tiny",
        "--out",
        str(tmp_path / "out2"),
        "--scored-pool",
        str(out / "scored_pool.parquet"),
    ]
    assert main([*args, "--until", "select"]) == 0
    instance = dg.DagsterInstance.get()
    for shard in sorted(pool["shard"].unique()):
        record = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("one_shot_scores"), asset_partitions=[shard]), limit=1
        ).records[0]
        assert record.asset_materialization.metadata["anchor_passes"].value == 0  # nothing was scored
    first_golden = pd.read_parquet(tmp_path / "first" / "warehouse" / "golden_subset" / "all.parquet")
    second_golden = pd.read_parquet(tmp_path / "second" / "warehouse" / "golden_subset" / "all.parquet")
    pd.testing.assert_frame_equal(first_golden, second_golden)

    # A scored pool from another anchor set (or model) is refused with the reason, never silently used.
    other = pool.assign(anchor_set_hash="0" * 16)
    other.to_parquet(tmp_path / "other.parquet")
    with pytest.raises(ValueError, match="re-score instead"):
        import_scored_pool(tmp_path / "other.parquet")


def test_the_headline_does_not_credit_the_selection_with_a_gap_two_random_seeds_also_show() -> None:
    row = {
        "source": "alpaca_eval",
        "first": "golden",
        "second": "random (pooled random+random-1)",
        "difference": 0.01,
        "ci_low": 0.005,
        "ci_high": 0.015,
        "n": 805,
        "verdict": "ahead",
        "seed_spread": 0.02,
        "beyond_seed_spread": False,
    }
    text = headline([row], "SmolLM2")
    assert "higher than" in text and "+0.0100" in text and "[+0.0050, +0.0150]" in text
    assert "not clearly the selection's doing" in text
    assert "larger than the 0.0050" in headline([{**row, "seed_spread": 0.005, "beyond_seed_spread": True}], "m")
    assert "cannot be told apart" in headline([{**row, "verdict": "within noise", "ci_low": -0.001}], "m")
    # Length and IFD in the same sentence, each with its interval.
    rows = [
        row,
        {**row, "second": "length-matched", "verdict": "within noise", "difference": 0.001, "ci_low": -0.002},
        {**row, "second": "ifd", "verdict": "behind", "difference": -0.003, "ci_low": -0.005, "ci_high": -0.001},
    ]
    both = headline(rows, "m")
    assert "indistinguishable from a length-matched sample (+0.0010, [-0.0020, +0.0150])" in both
    assert "behind IFD's selection (-0.0030, [-0.0050, -0.0010])" in both and "longest" not in both


def _damaged_pool(kind: str) -> pd.DataFrame:
    pool = pd.read_parquet(REPO_ROOT / "docs" / "study-1" / "scored_pool.parquet").head(12)
    if kind == "conflicting duplicate":  # a forged row for a real candidate: a dict kept whichever came last
        forged = pool.iloc[[3, 8]].assign(golden_score=1.0, wins=pool["n_anchors"].iloc[0])
        return pd.concat([pool, forged], ignore_index=True)
    if kind == "nan score":
        return pool.assign(golden_score=pool["golden_score"].where(pool.index != 5))
    return pool


@pytest.mark.parametrize(
    ("kind", "message", "offending"),
    [
        ("conflicting duplicate", "2 candidate id(s) carry conflicting scores", [3, 8]),
        ("nan score", "1 row(s) have no valid golden score", [5]),
        ("truncated", "not a readable Parquet file", []),
    ],
)
def test_a_scored_pool_with_conflicting_nan_or_cut_rows_is_refused_naming_the_file_and_ids(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, message: str, offending: list[int]
) -> None:
    """Issue 23 item 3: conflicting duplicates replaced the real scores, NaN scores were stored as scored, and a
    truncated file failed with an Arrow error naming no file; each is refused before any checkpoint is written."""
    _use_home(monkeypatch, tmp_path / "home")
    path = tmp_path / "scored_pool.parquet"
    pool = _damaged_pool(kind)
    pool.to_parquet(path)
    if kind == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError) as error:
        import_scored_pool(path)
    text = str(error.value)
    assert text.startswith(f"scored pool {path}: ") and message in text
    assert all(str(pool["candidate_id"].iloc[i]) in text for i in offending)
    assert not (tmp_path / "home" / "checkpoints").exists()
    # Exact repeats of a row (a file concatenated twice) are the same scores: accepted, one row each.
    pool = _damaged_pool("clean")
    pd.concat([pool, pool]).to_parquet(path)
    assert read_scored_pool(path)["candidate_id"].tolist() == pool["candidate_id"].tolist()
