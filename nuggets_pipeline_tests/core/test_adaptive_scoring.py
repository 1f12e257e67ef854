"""The adaptive mode's shard scoring with the tiny model: screening, refinement rounds against the pool's
screening snapshot, agreement with the replay on the exact matrix, and a kill in the middle of refinement."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import nuggets_pipeline.core.adaptive_scoring as adaptive_scoring
from nuggets_pipeline.core.adaptive import AdaptiveConfig, calibration_members, replay
from nuggets_pipeline.core.adaptive_scoring import ScreeningIncompleteError, ShardInputs, refine_shard, screen_shard
from nuggets_pipeline.core.data import example_id
from nuggets_pipeline.core.ids import ids_hash
from nuggets_pipeline.core.modeling import LoadedModel
from nuggets_pipeline.core.reliability import SelectionRule
from nuggets_pipeline.core.scoring import ScoringConfig, score_one_shot, score_zero_shot
from nuggets_pipeline.core.selection import select_golden
from nuggets_pipeline.core.shard_scoring import StaleZeroShotError
from nuggets_pipeline.core.storage import Warehouse

TOPICS = ["rivers", "stars", "bread", "chess", "rain", "trains", "owls", "glass", "salt", "bees", "maps", "ice"]
RULE = SelectionRule(top_fraction=0.3)
ADAPTIVE = AdaptiveConfig(confidence=0.8, first_anchors=3, round_anchors=3, seed=0)
CONFIG = ScoringConfig(candidates_per_chunk=2)
FINGERPRINT = "test-fingerprint"


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def examples(kind: str, n: int) -> pd.DataFrame:
    rows = [
        (f"{kind} {i}: say something about {TOPICS[i % 12]}.", "", f"{TOPICS[i % 12]} {'!' * (i % 4)} ok")
        for i in range(n)
    ]
    return pd.DataFrame([{"id": example_id(*r), "instruction": r[0], "input": r[1], "output": r[2]} for r in rows])


@pytest.fixture(scope="module")
def setting(tiny_model: LoadedModel) -> dict[str, object]:
    anchors, candidates = examples("Anchor", 12), examples("Candidate", 10)
    candidates["shard"] = ["base-000"] * 5 + ["base-001"] * 5
    zero = score_zero_shot(tiny_model, anchors, CONFIG).assign(
        model_fingerprint=FINGERPRINT, anchor_set_hash=ids_hash(anchors["id"])
    )
    exact = pd.concat([c.pair_deltas for c in score_one_shot(tiny_model, anchors, zero, candidates, CONFIG)])
    return {"anchors": anchors, "candidates": candidates, "zero": zero, "exact": exact}


def run_all(
    loaded: LoadedModel, setting: dict[str, object], warehouse: Warehouse, config: ScoringConfig = CONFIG
) -> pd.DataFrame:
    anchors, candidates, zero = setting["anchors"], setting["candidates"], setting["zero"]
    kwargs = {"fingerprint": FINGERPRINT, "warehouse": warehouse, "log": lambda _: None}
    shards = dict(tuple(candidates.groupby("shard")))
    inputs = {s: ShardInputs(loaded, anchors, zero, rows, config) for s, rows in shards.items()}
    screening = pd.concat([screen_shard(shard, ADAPTIVE, shard=s, **kwargs) for s, shard in inputs.items()])
    results = [refine_shard(shard, ADAPTIVE, RULE, screening, shard=s, **kwargs) for s, shard in inputs.items()]
    return pd.concat([r.scores for r in results], ignore_index=True)


def test_refinement_gives_the_anchors_the_replay_gives_on_the_exact_matrix(
    tiny_model: LoadedModel, setting: dict[str, object], tmp_path: Path
) -> None:
    scores = run_all(tiny_model, setting, Warehouse(tmp_path / "home" / "warehouse")).set_index("candidate_id")
    candidates, anchors, exact = setting["candidates"], setting["anchors"], setting["exact"]
    deltas = exact.pivot(index="candidate_id", columns="anchor_id", values="delta")
    deltas = deltas.loc[candidates["id"], anchors["id"]].to_numpy()
    replayed = replay(
        deltas > 0,
        RULE,
        ADAPTIVE,
        deltas=deltas,
        candidate_ids=candidates["id"],
        anchor_ids=anchors["id"],
        shards=candidates["shard"],
    )
    got = scores.loc[candidates["id"], "anchors_scored"].to_numpy()
    assert got.tolist() == replayed.anchors_scored.tolist()
    assert (got >= ADAPTIVE.first_anchors).all() and got.sum() < deltas.size  # something was saved
    assert replayed.rounds > 1  # screening and at least one refinement round: the rounds were compared too
    # select_golden on the stored scores picks what the replay picks: the same predicted scores and tie rule.
    chosen = select_golden(scores.reset_index(), top_fraction=RULE.top_fraction)["candidate_id"]
    assert sorted(chosen) == sorted(replayed.selected_ids)
    # Each shard's calibration sample (one of five here) is scored on every anchor and reported exactly.
    members = candidates.groupby("shard")["id"].transform(lambda ids: calibration_members(ids.tolist(), 0.05, 0))
    calibrated = scores.loc[candidates["id"][members.astype(bool)]]
    assert len(calibrated) == 2 and (calibrated["anchors_scored"] == len(anchors)).all()
    full = scores["anchors_scored"] == len(anchors)
    assert (scores.loc[full, "verdict"] == "exact").all() and (scores.loc[~full, "verdict"] == "adaptive").all()
    assert np.allclose(scores.loc[full, "golden_score"], scores.loc[full, "wins"] / len(anchors))
    assert (scores["estimate_low"] <= scores["golden_score"]).all() and (
        scores["golden_score"] <= scores["estimate_high"]
    ).all()


def test_a_refinement_killed_mid_round_resumes_to_the_same_scores(
    tiny_model: LoadedModel, setting: dict[str, object], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    one_each = ScoringConfig(candidates_per_chunk=1)  # one checkpoint file per candidate: a round can be cut
    uninterrupted = run_all(tiny_model, setting, Warehouse(tmp_path / "first" / "warehouse"), one_each)
    real, calls, stored = adaptive_scoring.score_one_shot, {"n": 0}, []

    def dies_in_refinement(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        for index, chunk in enumerate(real(*args, **kwargs)):
            if calls["n"] > 2 and index == 1:  # two screening calls, then the first round: die after one candidate
                raise KeyboardInterrupt("killed")
            stored.append(chunk)
            yield chunk

    monkeypatch.setattr(adaptive_scoring, "score_one_shot", dies_in_refinement)
    warehouse = Warehouse(tmp_path / "second" / "warehouse")
    with pytest.raises(KeyboardInterrupt):
        run_all(tiny_model, setting, warehouse, one_each)
    assert calls["n"] == 3 and len(stored) == 10 + 1  # 10 screened candidates, then 1 of the round's
    plans = list((warehouse.home / "checkpoints").rglob("plan-*.parquet"))
    assert plans, "the killed round had written its plan"
    monkeypatch.setattr(adaptive_scoring, "score_one_shot", real)
    resumed = run_all(tiny_model, setting, warehouse, one_each)
    columns = ["candidate_id", "anchors_scored", "wins", "verdict"]
    pd.testing.assert_frame_equal(resumed[columns], uninterrupted[columns])
    assert np.allclose(resumed["golden_score"], uninterrupted["golden_score"])


def test_refinement_refuses_a_pool_not_screened_or_stale_zero_shot(
    tiny_model: LoadedModel, setting: dict[str, object], tmp_path: Path
) -> None:
    anchors, candidates, zero = setting["anchors"], setting["candidates"], setting["zero"]
    warehouse = Warehouse(tmp_path / "home" / "warehouse")
    kwargs = {"shard": "base-000", "fingerprint": FINGERPRINT, "warehouse": warehouse, "log": lambda _: None}
    first = candidates[candidates["shard"] == "base-000"]
    screening = screen_shard(ShardInputs(tiny_model, anchors, zero, first, CONFIG), ADAPTIVE, **kwargs)
    second = candidates[candidates["shard"] == "base-001"].assign(shard="base-000")
    with pytest.raises(ScreeningIncompleteError, match="no screening row"):
        refine_shard(ShardInputs(tiny_model, anchors, zero, second, CONFIG), ADAPTIVE, RULE, screening, **kwargs)
    other_order = AdaptiveConfig(confidence=0.8, first_anchors=3, round_anchors=3, seed=1)
    with pytest.raises(ScreeningIncompleteError, match="anchor order"):
        refine_shard(ShardInputs(tiny_model, anchors, zero, first, CONFIG), other_order, RULE, screening, **kwargs)
    with pytest.raises(StaleZeroShotError):
        refine_shard(
            ShardInputs(tiny_model, anchors, zero.assign(model_fingerprint="other"), first, CONFIG),
            ADAPTIVE,
            RULE,
            screening,
            **kwargs,
        )
