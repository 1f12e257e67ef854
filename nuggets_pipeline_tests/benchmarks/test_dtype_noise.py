"""`benchmarks/dtype_noise.py` on the tiny model: every figure it prints, in one JSON line last."""

import json

from nuggets_pipeline_tests.benchmarks.scripts import run_benchmark


def test_a_smoke_run_reports_the_bfloat16_noise_of_every_pair() -> None:
    done = run_benchmark("dtype_noise.py", "--model", "tiny-random-llama", "--candidates", "2", "--anchors", "3")
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["pairs"] == 6 and summary["float32_mean_abs_delta"] > 0
    for run in ("default batching", "other batching", "between_bfloat16_batchings"):
        figures = summary[run]
        assert figures["sd"] >= 0 and figures["max_abs"] >= 0 and 0 <= figures["win_flips"] <= 6, run
    assert 0 <= summary["float32_share_within_bfloat16_sd"] <= 1
