"""`benchmarks/scoring.py` (`make bench`) on the tiny model: it runs end to end, its engine is exact against
concatenated forwards, every ratio it prints is there, and a count that would measure nothing is refused."""

import argparse
import importlib.util
import json

import pytest

from nuggets_pipeline.core.paths import REPO_ROOT
from nuggets_pipeline_tests.benchmarks.scripts import run_benchmark


def test_a_smoke_run_reports_every_ratio_and_an_exact_engine() -> None:
    done = run_benchmark(
        "scoring.py", "--model", "tiny-random-llama", "--candidates", "2", "--anchors", "3", "--repeats", "2"
    )
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["anchors"] == 3 and figures["candidates"] == 2 and figures["cpu"]
    assert figures["max_abs_logprob_diff_vs_concat"] <= 1e-3
    for ratio in ("engine_vs_raw", "engine_vs_same_rows", "same_rows_vs_raw", "engine_vs_raw_fp32"):
        assert figures[ratio] > 0, ratio
    # Each ratio's repeats are printed, one per repeat, for both baselines.
    assert len(figures["engine_vs_raw_per_repeat"]) == len(figures["engine_vs_same_rows_per_repeat"]) == 2
    assert figures["decision_mode_same_selection"] is True
    assert 0 < figures["decision_mode_pass_fraction"] <= 1


def test_counts_that_would_measure_nothing_are_refused_up_front() -> None:
    spec = importlib.util.spec_from_file_location("benchmark_arguments", REPO_ROOT / "benchmarks" / "arguments.py")
    assert spec is not None and spec.loader is not None
    arguments = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(arguments)
    positive_int = arguments.positive_int
    assert positive_int("3") == 3
    for text, message in (("0", "must be at least 1, got 0"), ("-2", "got -2"), ("two", "a whole number")):
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            positive_int(text)
    # And the script uses it: one run, refused before any model loads (each run pays the torch import).
    done = run_benchmark("scoring.py", "--anchors", "0")
    assert done.returncode == 2 and "argument --anchors: must be at least 1, got 0" in done.stderr
