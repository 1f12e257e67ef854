"""The selection's defaults, as a person uses them: in Chromium, the golden_subset asset page, Materialize with
the defaults the UI shows (no launchpad edits), and the run succeeds (the tiny model is chosen by environment).

Needs Debian's Chromium and skips without it, like test_ui.py, whose helpers start and stop `dagster dev`.
"""

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest

from nuggets_pipeline.core.paths import REPO_ROOT
from nuggets_pipeline_tests.defs.operations.test_ui import (
    ARTIFACTS,
    BACKFILL,
    BACKFILL_STATUS,
    CHROMIUM_ARGS,
    TERMINAL,
    chromium,
    dagster_dev,
    finished,
    free_port,
    graphql,
    launch,
    location_loaded,
    wait_for,
)
from nuggets_pipeline_tests.materialize import example

RUNS = "{ runsOrError(limit: 50) { ... on Runs { results { runId status } } } }"
LATEST = """{ assetOrError(assetKey: {path: ["golden_subset"]}) { ... on Asset {
    assetMaterializations(limit: 1) { runId metadataEntries { label ... on TextMetadataEntry { text } } } } } }"""


def all_runs(url: str) -> dict[str, str]:
    return {r["runId"]: r["status"] for r in graphql(url, RUNS)["runsOrError"]["results"]}


@pytest.mark.browser
def test_materialize_golden_subset_from_its_page_with_the_defaults(tmp_path: Path, isolated_home: Path) -> None:
    from playwright.sync_api import sync_playwright

    browser_path = chromium()
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    shutil.copy(REPO_ROOT / "dagster.yaml", dagster_home / "dagster.yaml")
    pool = tmp_path / "pool.json"
    pool.write_text(json.dumps([example(i) for i in range(16)]))
    env = {
        **os.environ,
        "DAGSTER_HOME": str(dagster_home),
        "NUGGETS_HOME": str(isolated_home),
        "NUGGETS_DAGSTER_STORAGE": str(dagster_home / "storage"),
        "NUGGETS_SCORING_MODEL": "tiny-random-llama",
        "NUGGETS_TRAINING_MODEL": "tiny-random-llama",
        "NUGGETS_EXECUTOR": "in_process",
        "OMP_NUM_THREADS": "1",
        "NUGGETS_SHARDS_PER_RUN": "2",  # both shards in one backfill run: one model load
    }
    log = tmp_path / "dagster-dev.log"
    ARTIFACTS.mkdir(exist_ok=True)
    with dagster_dev(env, free_port(), log) as url, sync_playwright() as playwright:
        wait_for("the webserver", lambda: httpx.get(f"{url}/server_info", timeout=5).status_code == 200, log)
        wait_for("the code location", lambda: location_loaded(url), log)
        # Scores to select from: a 16-row pool (the defaults' upstream is the whole Alpaca pool, too big here).
        prepare = launch(
            url,
            ["instructions", "quarantined_instructions", "anchor_set", "candidates", "zero_shot_losses"],
            {
                "ops": {
                    "ingest_instructions": {"config": {"sources": [str(pool)]}},
                    "anchor_set": {"config": {"method": "random", "n": 4}},
                    "candidates": {"config": {"shards": 2}},
                }
            },
        )
        assert finished(url, prepare, log) == "SUCCESS"
        backfill = graphql(
            url,
            BACKFILL,
            params={"assetSelection": [{"path": ["one_shot_scores"]}], "partitionNames": ["base-000", "base-001"]},
        )["launchPartitionBackfill"]
        assert backfill["__typename"] == "LaunchBackfillSuccess", backfill

        def backfill_done() -> dict[str, Any] | None:
            found = graphql(url, BACKFILL_STATUS, id=backfill["backfillId"])["partitionBackfillOrError"]
            return found if found["status"] not in ("REQUESTED", "CANCELING", "FAILING") else None

        assert wait_for("the backfill", backfill_done, log)["status"] in ("COMPLETED", "COMPLETED_SUCCESS")

        browser = playwright.chromium.launch(executable_path=browser_path, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.set_default_timeout(60_000)
        page.goto(f"{url}/assets/golden_subset", wait_until="networkidle")
        with contextlib.suppress(Exception):
            page.get_by_role("button", name="Skip").click(timeout=5000)  # the first visit's newsletter dialog
        before = set(all_runs(url))
        # The split button's main half (its icon is part of the accessible name, so match the visible text).
        page.get_by_role("button").filter(has_text="Materialize").first.click()
        # The UI asks first because `candidate_increments` (no incoming file yet) was never materialised; a
        # person confirms, as the selection reads whatever increments exist.
        confirm = page.get_by_role("button", name="Confirm")
        with contextlib.suppress(Exception):
            confirm.click(timeout=15_000)

        def new_run() -> str | None:
            runs = {k: v for k, v in all_runs(url).items() if k not in before}
            return next((k for k, v in runs.items() if v in TERMINAL), None)

        run_id = wait_for("the run launched from the asset page", new_run, log)
        page.screenshot(path=str(ARTIFACTS / "ui-golden-subset-defaults.png"))
        browser.close()
        assert all_runs(url)[run_id] == "SUCCESS", log.read_text()[-4000:]
        latest = graphql(url, LATEST)["assetOrError"]["assetMaterializations"][0]
        entries = {e["label"]: e.get("text") for e in latest["metadataEntries"]}
        assert latest["runId"] == run_id and entries["criterion"] == '{"top_fraction": 0.1447}'
