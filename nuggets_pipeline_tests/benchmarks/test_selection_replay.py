"""`benchmarks/selection.py --pairs FILE`: the readout and the replay of any stored pair table, one JSON line last."""

import json
from pathlib import Path

import numpy as np
import pandas as pd

from nuggets_pipeline_tests.benchmarks.scripts import run_benchmark


def test_the_replay_of_a_pair_table_ends_with_one_json_line(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n_candidates, n = 80, 24
    deltas = rng.normal(0, 1, n_candidates)[:, None] + rng.normal(size=(n_candidates, n))
    pairs = pd.DataFrame(
        {
            "candidate_id": np.repeat([f"c{i:03d}" for i in range(n_candidates)], n),
            "anchor_id": np.tile([f"a{j:02d}" for j in range(n)], n_candidates),
            "one_shot_logprob": 0.0,
            "delta": deltas.reshape(-1),
        }
    ).iloc[1:]  # the first candidate lacks one anchor: left out and counted
    folder = tmp_path / "matrix"
    folder.mkdir()
    pairs.to_parquet(folder / "chunk-0000.parquet")
    pd.DataFrame({"anchor_id": ["a00"], "logprob_sum": [0.0]}).to_parquet(folder / "zero_shot.parquet")  # skipped
    done = run_benchmark(
        "selection.py",
        "--pairs",
        str(folder),
        "--confidences",
        "0.9",
        "1.0",
        "--seeds",
        "0",
        "1",
        "--first-anchors",
        "6",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert (summary["candidates"], summary["candidates_incomplete"], summary["anchors"]) == (79, 1, 24)
    assert 0 < summary["reliability"] <= 1 and summary["anchors_for_reliability_0_8"] >= 1
    adaptive, fixed = summary["adaptive_top_quarter"], summary["fixed_subsample"]
    assert [a["confidence"] for a in adaptive] == [0.9, 1.0]
    assert adaptive[1]["agreement"] == 1.0 and adaptive[1]["quality"] == 1.0  # confidence 1 is exact
    assert all(0 < a["passes_fraction"] <= 1 for a in adaptive)
    assert [f["anchors"] for f in fixed] == [round(a["passes_fraction"] * 24) for a in adaptive]
    assert "split-half reliability" in done.stdout.splitlines()[0]

    single = tmp_path / "pairs.parquet"
    pairs.drop(columns="delta").to_parquet(single)
    refused = run_benchmark("selection.py", "--pairs", str(single))
    assert refused.returncode == 2 and "missing ['delta']" in refused.stderr
