"""The reliability readout: known answers on matrices whose reliability is known by construction."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nuggets_pipeline.core.reliability import (
    PairMatrix,
    SelectionRule,
    anchors_for,
    pair_matrix,
    rank_order,
    readout,
    render_markdown,
    spearman_brown,
)
from nuggets_pipeline.core.selection import select_golden


def matrix(deltas: np.ndarray) -> PairMatrix:
    n_candidates, n = deltas.shape
    return PairMatrix(
        candidate_ids=np.array([f"c{i:04d}" for i in range(n_candidates)]),
        anchor_ids=np.array([f"a{j:03d}" for j in range(n)]),
        deltas=deltas.astype(float),
    )


def as_pairs(m: PairMatrix) -> pd.DataFrame:
    n_candidates, n = m.shape
    return pd.DataFrame(
        {
            "candidate_id": np.repeat(m.candidate_ids, n),
            "anchor_id": np.tile(m.anchor_ids, n_candidates),
            "delta": m.deltas.reshape(-1),
        }
    )


def test_spearman_brown_arithmetic() -> None:
    # The halves: 0.69 on 50 anchors steps up to 0.82 on 100.
    assert spearman_brown(0.69, 2) == pytest.approx(2 * 0.69 / 1.69)
    assert round(spearman_brown(0.69, 2), 2) == 0.82
    assert spearman_brown(0.5, 1) == 0.5 and spearman_brown(0.0, 10) == 0.0
    # 0.5 on 16 anchors: a factor of 0.8 * 0.5 / (0.5 * 0.2) = 4, so 64 anchors.
    assert anchors_for(0.5, 16) == 64
    for reliability, anchors in ((0.3, 16), (0.62, 100), (0.79, 37), (0.9, 100)):
        needed = anchors_for(reliability, anchors)
        assert needed is not None
        assert spearman_brown(reliability, needed / anchors) >= 0.8 - 1e-12
        assert needed == 1 or spearman_brown(reliability, (needed - 1) / anchors) < 0.8
    assert anchors_for(0.0, 16) is None and anchors_for(-0.2, 16) is None


def test_a_perfectly_reliable_matrix_reads_reliable() -> None:
    # A Guttman matrix: candidate i beats anchor a iff its ability exceeds the anchor's difficulty, and the delta
    # is the difference, so any half of the anchors ranks the candidates the same way (ties broken by delta too).
    ability = np.linspace(0, 1, 40)
    difficulty = np.tile(np.linspace(0.01, 0.99, 30), 4)  # every level four times: every half covers most levels
    found = readout(matrix(ability[:, None] - difficulty[None, :]), SelectionRule(top_fraction=0.25), splits=30)
    assert found.verdict == "reliable" and found.line.startswith("reliable")
    assert found.half_correlation > 0.99 and found.reliability > 0.99
    assert found.selection_overlap == 1.0 and found.selection_overlap_chance == pytest.approx(0.25)
    assert found.candidates == 40 and found.anchors == 120 and found.candidates_incomplete == 0
    assert found.noise_share < 0.1


def test_a_pure_noise_matrix_reads_mostly_anchor_noise() -> None:
    rng = np.random.default_rng(0)
    deltas = rng.normal(size=(300, 60))  # every candidate wins each anchor with probability 1/2: no signal
    found = readout(matrix(deltas), SelectionRule(top_fraction=0.25), splits=40)
    assert found.verdict == "mostly anchor noise"
    assert found.line.startswith("mostly anchor noise: add anchors")
    assert found.reliability < 0.3
    assert abs(found.selection_overlap - 0.25) < 0.08  # chance
    assert found.noise_share > 0.8  # the spread of the scores is the coin flips'
    assert found.binomial_sd == pytest.approx(found.observed_sd, rel=0.2)


def test_partly_reliable_names_the_anchor_count_for_0_8() -> None:
    rng = np.random.default_rng(1)
    ability = rng.normal(0, 0.5, 400)
    deltas = ability[:, None] + rng.normal(size=(400, 16))
    found = readout(matrix(deltas), splits=40)
    assert found.verdict in {"partly anchor noise", "mostly anchor noise"}
    needed = found.anchors_for_reliability_0_8
    assert needed == anchors_for(found.reliability, 16) and needed > 16
    assert f"about {needed} for 0.8" in found.line
    # The step-up is the Spearman–Brown formula from a half (8 anchors) to the whole (16).
    assert found.reliability == pytest.approx(spearman_brown(found.half_correlation, 2))


def test_a_pilot_steps_up_to_the_full_anchor_count() -> None:
    rng = np.random.default_rng(2)
    deltas = rng.normal(0, 0.6, 200)[:, None] + rng.normal(size=(200, 12))
    pilot = readout(matrix(deltas), full_anchors=100, splits=20)
    assert pilot.anchors == 100 and pilot.anchors_measured == 12
    assert pilot.reliability == pytest.approx(spearman_brown(pilot.half_correlation, 100 / 6))
    assert "at 100 anchors, measured on 12" in pilot.line


def test_uninformative_anchors_are_named() -> None:
    rng = np.random.default_rng(3)
    deltas = rng.normal(size=(50, 8))
    deltas[:, 0] = 1.0  # every candidate wins
    deltas[:, 1] = -1.0  # none does
    deltas[:3, 2], deltas[3:, 2] = 1.0, -1.0  # 6% win
    found = readout(matrix(deltas), splits=10)
    assert found.uninformative_anchors == ["a000", "a001", "a002"]
    shares = found.anchor_win_share.set_index("anchor_id")["win_share"]
    assert shares["a000"] == 1.0 and shares["a001"] == 0.0 and shares["a002"] == pytest.approx(0.06)
    assert "3 of 8 anchors are won by more than 90% or fewer than 10%" in found.line


def test_incomplete_candidates_are_left_out_and_counted() -> None:
    rng = np.random.default_rng(4)
    pairs = as_pairs(matrix(rng.normal(size=(30, 10))))
    dropped = pairs[~((pairs["candidate_id"] == "c0003") & (pairs["anchor_id"] == "a005"))]  # decision mode
    doubled = pd.concat([dropped, dropped.head(5)])  # a redone chunk: the last row of a pair counts
    found = pair_matrix(doubled)
    assert found.shape == (29, 10) and found.incomplete == 1 and "c0003" not in set(found.candidate_ids)
    result = readout(doubled, splits=5)
    assert result.candidates == 29 and result.candidates_incomplete == 1
    assert "1 candidates without every anchor left out" in result.line
    with pytest.raises(ValueError, match="candidate_id, anchor_id, delta"):
        pair_matrix(pairs.drop(columns="delta"))


def test_too_little_data_cannot_say() -> None:
    few = readout(matrix(np.random.default_rng(5).normal(size=(5, 20))))
    assert few.verdict == "cannot say" and "only 5 candidates" in few.line
    narrow = readout(matrix(np.random.default_rng(5).normal(size=(50, 3))))
    assert narrow.verdict == "cannot say" and "only 3 anchors" in narrow.line
    assert narrow.as_metadata()["reliability"] is None


def test_metadata_is_plain_json_and_renders() -> None:
    found = readout(matrix(np.random.default_rng(6).normal(size=(40, 20))), splits=5)
    figures = found.as_metadata()
    json.dumps(figures, allow_nan=False)
    assert figures["line"] == found.line and figures["candidates"] == 40
    assert set(figures) >= {"reliability", "anchors_for_reliability_0_8", "binomial_sd", "observed_sd", "verdict"}
    text = "\n".join(render_markdown(figures))
    assert "How much to trust the ranking" in text and found.line in text
    assert render_markdown({}) == []


def test_rank_order_is_select_golden_ranking() -> None:
    rng = np.random.default_rng(7)
    wins = rng.integers(0, 6, 60)  # many ties in score, some in mean delta too
    mean_delta = rng.choice([0.0, 0.5, 1.0], 60)
    ids = np.array([f"x{i:03d}" for i in rng.permutation(60)])
    scores = pd.DataFrame({"candidate_id": ids, "golden_score": wins / 5, "mean_delta": mean_delta, "verdict": "exact"})
    expected = select_golden(scores, top_k=60)["candidate_id"].tolist()
    assert ids[rank_order(wins / 5, mean_delta, ids)].tolist() == expected
    ranks = np.argsort(np.argsort(ids))  # integer ids are taken as the ranks of the real ones
    assert ids[rank_order(wins / 5, mean_delta, ranks)].tolist() == expected


def test_stored_pair_deltas_that_do_not_add_up_to_the_score_are_left_out(tmp_path: Path) -> None:
    from nuggets_pipeline.core.score_tables import current_pair_deltas
    from nuggets_pipeline.core.shard_scoring import PAIR_DELTAS_TABLE
    from nuggets_pipeline.core.storage import Warehouse

    warehouse = Warehouse(tmp_path / "warehouse")
    deltas = np.array([[1.0, -1.0, 2.0], [-1.0, -2.0, 3.0], [1.0, 1.0, 1.0]])
    pairs = as_pairs(matrix(deltas)).assign(shard="s0")
    warehouse.write(PAIR_DELTAS_TABLE, pairs, "s0")
    current = pd.DataFrame(
        {
            "candidate_id": ["c0000", "c0001", "c0002", "c0009"],
            "shard": "s0",
            "wins": [2, 1, 2, 1],  # c0002 won all three in the stored deltas: an older version's file
            "anchors_scored": [3, 3, 3, 3],  # c0009 has no stored deltas at all
        }
    )
    kept, left_out = current_pair_deltas(warehouse, current)
    assert left_out == 2 and sorted(set(kept["candidate_id"])) == ["c0000", "c0001"] and len(kept) == 6
    empty, missing = current_pair_deltas(warehouse, current.assign(shard="s1"))
    assert empty.empty and missing == 4
    assert pair_matrix(empty, ["a000", "a001"]).shape == (0, 2)
    assert readout(pair_matrix(empty, ["a000", "a001"])).verdict == "cannot say"
