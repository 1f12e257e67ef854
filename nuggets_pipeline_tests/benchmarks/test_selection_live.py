"""`benchmarks/selection.py --live HOME`: a home's live adaptive scoring beside the replay of the same rule on an
exact matrix of the same pool. In float32 on the tiny model every shared pair's win agrees, so the replay must
reproduce the engine exactly: the same anchors per candidate and the same selection."""

import json
from pathlib import Path

import dagster as dg
import pytest

from nuggets_pipeline.core.storage import Warehouse
from nuggets_pipeline_tests.benchmarks.scripts import run_benchmark
from nuggets_pipeline_tests.defs.assets import test_adaptive_assets as adaptive
from nuggets_pipeline_tests.materialize import ASSETS, tiny_resources


@pytest.mark.slow
def test_the_live_adaptive_scoring_is_what_the_replay_of_its_rule_selects(
    tmp_path: Path, isolated_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The live run: screening, refinement and the selection, in the adaptive test's settings.
    live = dg.DagsterInstance.ephemeral()
    adaptive.prepare(live, tmp_path)
    assert adaptive.materialize(live, ["one_shot_screening"]).success
    assert adaptive.materialize(live, ["one_shot_scores"]).success
    assert adaptive.materialize(live, ["golden_subset"], top_fraction=0.25).success

    # The exact matrix of the same pool and anchors, in a home of its own: every candidate on every anchor.
    exact_home = tmp_path / "exact"
    exact_home.mkdir()
    monkeypatch.setenv("NUGGETS_HOME", str(exact_home))
    exact = dg.DagsterInstance.ephemeral()
    monkeypatch.setattr(adaptive, "resources", tiny_resources)  # the default scoring resource: exact mode
    adaptive.prepare(exact, tmp_path)
    scored = dg.materialize(
        ASSETS, selection=["one_shot_scores"], instance=exact, resources=tiny_resources(), tags=adaptive.RANGE
    )
    assert scored.success
    matrix = Warehouse(exact_home / "warehouse").table_dir("one_shot_pair_deltas")

    done = run_benchmark("selection.py", "--live", str(isolated_home), "--matrix", str(matrix), "--round-anchors", "2")
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["candidates"] == 15 and figures["anchors"] == 9 and figures["selection"] == "top 25%"
    assert figures["shared_pairs"] > 0 and figures["win_flips"] == 0
    assert figures["max_abs_delta_difference"] < 1e-3  # the cached engine's exactness in float32
    assert figures["same_anchor_count"] == 1.0
    assert figures["live_passes_fraction"] == figures["replay_passes_fraction"] < 1
    assert figures["live_vs_replay_agreement"] == 1.0 and figures["selected_live"] == figures["selected_replay"] == 3
    assert 0 < figures["live_vs_exact_agreement"] <= 1
    # The replay with the engine's own noise: float32's is ~1e-5 nats, so it selects what the replay does.
    assert figures["engine_noise_sd"] < 1e-3 and 0 < figures["noisy_replay_vs_exact_agreement"] <= 1

    # A home without adaptive scores says so instead of comparing.
    refused = run_benchmark("selection.py", "--live", str(exact_home), "--matrix", str(matrix))
    assert refused.returncode == 2 and "adaptive" in refused.stderr
