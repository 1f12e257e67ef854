"""The study across sittings: the progress a sitting commits (scored pairs, stage times) lets a fresh machine
resume without scoring again, and pairs of another scoring version are refused."""

import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest

from nuggets_pipeline.cli import main
from nuggets_pipeline.core.adaptive_scoring import PAIR_STORE
from nuggets_pipeline.core.storage import Warehouse
from nuggets_pipeline.runs import presets
from nuggets_pipeline.study.progress import LEDGER_FILE, PAIRS_FILE, seed_pairs
from nuggets_pipeline_tests.study.test_study import _use_home

# The tiny study in the adaptive mode the real study uses, with rounds small enough for its 4 anchors.
ADAPTIVE = {"mode": "adaptive", "adaptive_top_fraction": 0.25, "adaptive_first_anchors": 2, "adaptive_round_anchors": 1}


def scores(home: Path) -> pd.DataFrame:
    frame = Warehouse(home / "warehouse").read("one_shot_scores")
    columns = ["candidate_id", "golden_score", "wins", "anchors_scored", "settled_early"]
    return frame[columns].sort_values("candidate_id", ignore_index=True)


def chunk_files(home: Path) -> list[Path]:
    return sorted((Warehouse(home / "warehouse").home / "checkpoints" / PAIR_STORE).rglob("pairs-*.parquet"))


@pytest.mark.slow
def test_a_fresh_home_resumes_the_scoring_from_the_committed_pairs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    tiny = presets.preset("tiny")
    monkeypatch.setitem(presets.PRESETS, "tiny", dataclasses.replace(tiny, scoring=ADAPTIVE))
    out = tmp_path / "out"
    args = ["study", "--size", "tiny", "--out", str(out), "--until", "one-shot"]

    _use_home(monkeypatch, tmp_path / "first")
    assert main(args) == 0
    first = scores(tmp_path / "first")
    assert (first["anchors_scored"] < 4).any()  # adaptive: some candidates settled before every anchor
    pairs = pd.read_parquet(out / "progress" / PAIRS_FILE)
    assert len(pairs) == first["anchors_scored"].sum() and pairs["delta"].notna().all()
    times = json.loads((out / "progress" / LEDGER_FILE).read_text())
    assert times["one-shot"]["finished"] and times["one-shot"]["wall_s"] > 0
    capsys.readouterr()

    # A fresh machine: a new home, only the committed files. Nothing is scored again, the scores are the same.
    _use_home(monkeypatch, tmp_path / "second")
    assert main(args) == 0
    said = capsys.readouterr().out
    assert f"{len(pairs):,} committed pairs added to the pair stores" in said
    assert len(chunk_files(tmp_path / "second")) == tiny.shards  # the one seeded chunk per shard, nothing scored
    pd.testing.assert_frame_equal(scores(tmp_path / "second"), first)
    resumed = json.loads((out / "progress" / LEDGER_FILE).read_text())
    assert resumed["one-shot"]["wall_s"] >= times["one-shot"]["wall_s"]  # the earlier sitting's time is kept

    # Pairs of another scoring version are another computation: left alone, with the reason.
    forged = pairs.assign(model_fingerprint="another-model")
    forged.to_parquet(out / "progress" / PAIRS_FILE)
    said = seed_pairs(out / "progress")
    assert "not used, scoring starts from nothing" in said and "another-model" in said
