"""The UI as a person uses it: `dagster dev` on 127.0.0.1, the asset graph in Chromium, the scoring stages
launched (one run, then a backfill that fans out a run per shard, then the selection), and a screenshot.

Needs Debian's Chromium (`chromium` on the PATH) and skips without it: `make test` installs no system package,
.ci/run installs it for CI. The screenshot is written to test-artifacts/ (git-ignored).
"""

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from nuggets_pipeline.core.paths import REPO_ROOT
from nuggets_pipeline.core.storage import Warehouse
from nuggets_pipeline.defs.definitions import defs
from nuggets_pipeline_tests.materialize import example

HOW_TO_ENABLE = "Chromium is not installed: `apt-get install chromium` (as root) enables the browser tests"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = REPO_ROOT / "test-artifacts"
HANG_GUARD_S = 420  # only stops a hung wait; nothing asserts on how long anything took
LOCATION = "nuggets_pipeline"
TERMINAL = {"SUCCESS", "FAILURE", "CANCELED"}


def chromium() -> str:
    """Debian's Chromium, which Playwright drives (it never downloads a browser of its own), or skip the test."""
    found = shutil.which("chromium")
    if found is None:
        pytest.skip(HOW_TO_ENABLE)
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def dagster_dev(env: dict[str, str], port: int, log: Path) -> Iterator[str]:
    """`dagster dev` in its own process group, which is killed as a whole afterwards: backgrounded, dagster dev
    ignores SIGTERM, and its code server, daemon and run workers must not outlive the test."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(REPO_ROOT / ".venv/bin/dagster"), "dev", "-h", "127.0.0.1", "-p", str(port), "-w", "workspace.yaml"],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)  # the grace period
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def graphql(url: str, query: str, **variables: Any) -> dict[str, Any]:
    response = httpx.post(f"{url}/graphql", json={"query": query, "variables": variables}, timeout=60)
    response.raise_for_status()
    body = response.json()
    assert "errors" not in body, body["errors"]
    return body["data"]


def wait_for(what: str, check, log: Path):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + HANG_GUARD_S
    while True:
        with contextlib.suppress(httpx.HTTPError):
            found = check()
            if found:
                return found
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}; dagster dev log:\n{log.read_text()[-4000:]}")
        time.sleep(1)


WORKSPACE = """{ workspaceOrError { ... on Workspace { locationEntries { name
    locationOrLoadError { __typename ... on PythonError { message } } } } } }"""
LAUNCH = """mutation($params: ExecutionParams!) { launchPipelineExecution(executionParams: $params) {
    __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } } ... on InvalidSubsetError { message } } }"""
RUN = "query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }"
BACKFILL = """mutation($params: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $params) {
    __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } } }"""
BACKFILL_STATUS = """query($id: String!) { partitionBackfillOrError(backfillId: $id) { ... on PartitionBackfill {
    status runs { runId status tags { key value } } } } }"""


def location_loaded(url: str) -> bool:
    entries = graphql(url, WORKSPACE)["workspaceOrError"]["locationEntries"]
    loaded = [e for e in entries if e["name"] == LOCATION]
    if loaded and loaded[0]["locationOrLoadError"]["__typename"] == "PythonError":
        pytest.fail(loaded[0]["locationOrLoadError"]["message"])
    return bool(loaded) and loaded[0]["locationOrLoadError"]["__typename"] == "RepositoryLocation"


def launch(url: str, assets: list[str], run_config: dict[str, Any]) -> str:
    params = {
        "selector": {
            "repositoryLocationName": LOCATION,
            "repositoryName": "__repository__",
            "pipelineName": "__ASSET_JOB",
            "assetSelection": [{"path": [name]} for name in assets],
        },
        "runConfigData": run_config,
    }
    result = graphql(url, LAUNCH, params=params)["launchPipelineExecution"]
    assert result["__typename"] == "LaunchRunSuccess", result
    return result["run"]["runId"]


def finished(url: str, run_id: str, log: Path) -> str:
    def status() -> str | None:
        found = graphql(url, RUN, id=run_id)["runOrError"]["status"]
        return found if found in TERMINAL else None

    return wait_for(f"run {run_id}", status, log)


def show_every_asset(page, url: str) -> list[str]:  # type: ignore[no-untyped-def]
    """Open the global lineage with every group expanded; return the asset names the graph does not show."""
    page.goto(f"{url}/asset-groups", wait_until="networkidle")
    skip = page.get_by_role("button", name="Skip")  # the first visit's newsletter dialog
    with contextlib.suppress(Exception):
        skip.click(timeout=5000)
    page.get_by_role("button", name="settings", exact=True).click()
    page.get_by_role("menuitem", name="Expand all groups").click()
    page.keyboard.press("Escape")
    names = sorted(key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys())
    # Any node drawn says the graph has rendered; which ones fit on screen depends on the layout.
    any_node = re.compile("^(" + "|".join(map(re.escape, names)) + ")$")
    try:
        page.get_by_text(any_node).first.wait_for(timeout=60_000)
    except Exception:
        page.screenshot(path=str(ARTIFACTS / "ui-asset-graph-failed.png"))  # what the page showed instead
        raise
    off_screen = [name for name in names if page.get_by_text(name, exact=True).count() == 0]
    # The expanded graph outgrows the viewport (the UI draws only what is on screen): look those up with the
    # lineage sidebar's "Jump to" search, as a person would.
    jump = page.get_by_placeholder(re.compile("Jump to"))
    hidden = []
    for name in off_screen:
        jump.fill(name)
        try:
            page.get_by_text(name, exact=True).first.wait_for(timeout=15_000)
        except Exception:
            hidden.append(name)
    jump.fill("")
    return hidden


@pytest.mark.browser
def test_the_ui_shows_the_graph_and_runs_the_scoring_stages(tmp_path: Path, isolated_home: Path) -> None:
    from playwright.sync_api import sync_playwright

    browser_path = chromium()
    dagster_home, home = tmp_path / "dagster_home", isolated_home
    dagster_home.mkdir()
    shutil.copy(REPO_ROOT / "dagster.yaml", dagster_home / "dagster.yaml")
    pool = tmp_path / "pool.json"
    pool.write_text(json.dumps([example(i) for i in range(16)]))
    env = {
        **os.environ,
        "DAGSTER_HOME": str(dagster_home),
        "NUGGETS_HOME": str(home),
        "NUGGETS_DAGSTER_STORAGE": str(dagster_home / "storage"),
        "NUGGETS_SCORING_MODEL": "tiny-random-llama",
        "NUGGETS_TRAINING_MODEL": "tiny-random-llama",
        # Small runs: one process per run instead of one per step, one torch thread on a shared machine.
        "NUGGETS_EXECUTOR": "in_process",
        "OMP_NUM_THREADS": "1",
        "NUGGETS_SHARDS_PER_RUN": "1",
    }
    log = tmp_path / "dagster-dev.log"
    ARTIFACTS.mkdir(exist_ok=True)
    with dagster_dev(env, free_port(), log) as url, sync_playwright() as playwright:
        wait_for("the webserver", lambda: httpx.get(f"{url}/server_info", timeout=5).status_code == 200, log)
        wait_for("the code location", lambda: location_loaded(url), log)

        # 1. Ingest, anchors, candidates in two shards, zero-shot: one run.
        prepare = launch(
            url,
            ["instructions", "quarantined_instructions", "anchor_set", "candidates", "zero_shot_losses"],
            {
                "ops": {
                    "ingest_instructions": {"config": {"sources": [str(pool)]}},
                    "anchor_set": {"config": {"method": "random", "n": 4}},
                    "candidates": {"config": {"shards": 2, "limit": None}},
                }
            },
        )
        assert finished(url, prepare, log) == "SUCCESS"

        # 2. One-shot scores: a backfill over both shards, fanned out into one run per shard by its policy.
        backfill = graphql(
            url,
            BACKFILL,
            params={"assetSelection": [{"path": ["one_shot_scores"]}], "partitionNames": ["base-000", "base-001"]},
        )["launchPartitionBackfill"]
        assert backfill["__typename"] == "LaunchBackfillSuccess", backfill

        def backfill_done() -> dict[str, Any] | None:
            found = graphql(url, BACKFILL_STATUS, id=backfill["backfillId"])["partitionBackfillOrError"]
            return found if found["status"] not in ("REQUESTED", "CANCELING", "FAILING") else None

        done = wait_for("the backfill", backfill_done, log)
        assert done["status"] in ("COMPLETED", "COMPLETED_SUCCESS"), done
        ranges = sorted(
            tuple(t["value"] for t in run["tags"] if t["key"].startswith("dagster/asset_partition_range_"))
            for run in done["runs"]
        )
        assert ranges == [("base-000", "base-000"), ("base-001", "base-001")]  # one shard per run
        assert {r["status"] for r in done["runs"]} == {"SUCCESS"}

        # 3. The selection, with its blocking coverage check.
        select = launch(url, ["golden_subset"], {"ops": {"golden_subset": {"config": {"threshold": 0.5}}}})
        assert finished(url, select, log) == "SUCCESS"

        warehouse = Warehouse(home / "warehouse")
        counts = warehouse.query(
            "select (select count(*) from nuggets.candidates) c, (select count(*) from nuggets.one_shot_scores) s"
        )
        assert counts.loc[0, "c"] == counts.loc[0, "s"] == 12

        browser = playwright.chromium.launch(executable_path=browser_path, args=CHROMIUM_ARGS)
        # Large enough that the whole graph fits at a zoom where nodes show their full names.
        page = browser.new_page(viewport={"width": 4200, "height": 2800})
        page.set_default_timeout(60_000)
        hidden = show_every_asset(page, url)
        page.screenshot(path=str(ARTIFACTS / "ui-asset-graph.png"))
        assert hidden == []
        page.wait_for_load_state("networkidle")  # the status badges of the last run
        page.screenshot(path=str(ARTIFACTS / "ui-asset-graph.png"))
        browser.close()
    assert (ARTIFACTS / "ui-asset-graph.png").stat().st_size > 10_000


def test_browser_tests_skip_with_how_to_enable_them_where_chromium_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no chromium
    with pytest.raises(pytest.skip.Exception, match=r"apt-get install chromium"):
        chromium()
