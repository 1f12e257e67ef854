"""`make study` (`nuggets study`): does the golden subset train a better model?

The study runs the project's own stages (the same graph and stage jobs as `make demo`, through the one runner,
on the instance `make ui` shows) with the settings of a study row of the preset table (``runs/presets.py``,
``study`` or the test size ``tiny``): a stable slice of the shipped Alpaca set as pool, KMeans anchors,
candidates scored shard by shard (the partitioned path), the variants golden / bottom / random / full (and a
second random seed where time allows) fine-tuned with identical hyper-parameters from the same base, the
judge-free reference log-likelihood over every AlpacaEval and MT-Bench reference answer, the judge numbers
beside it, and the report with its paired bootstrap comparisons (core.report).

Resumable by the runner's rule: a stage (or one partition of it) already materialised with the same settings
is skipped, and a changed setting re-runs that stage and the ones after it, never the ones before; nothing is
tuned on the evaluation set, because no setting reads it.

Across sittings and machines (``study.progress``): the pairs scored so far and the stage times are written to
``<out>/progress`` whenever the study stops (and by ``--save-progress``), and a later run on a fresh home adds
those pairs to its pair stores before scoring, so a committed sitting is never scored again. ``--collect``
writes the results up from what a home holds without running a stage (stages finished under older code).

Outputs (``--out``, docs/study for the real study): results.json (settings, machine, stage wall times,
per-variant figures, every comparison with its interval and verdict), comparisons.csv, differences.png, every
reference answer's log-likelihood under every variant (reference_likelihood.parquet) and the
scored pool (scored_pool.parquet), which ``--scored-pool FILE`` trains and evaluates from without re-scoring.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg

from nuggets_pipeline.core.paths import REPO_ROOT, nuggets_home
from nuggets_pipeline.runs import presets, runner
from nuggets_pipeline.study.progress import restore_ledger, save_progress, seed_pairs
from nuggets_pipeline.study.render import render_study_doc
from nuggets_pipeline.study.results import collect_results, report_file
from nuggets_pipeline.study.scored_pool import import_scored_pool
from nuggets_pipeline.study.sizing import estimate_seconds, settings_record

# The sizes whose record is committed: (results folder, pages whose study blocks it renders). The first edition
# keeps its own page and folder, so the second never overwrites it.
COMMITTED = {
    "study": ("docs/study", ("docs/study.md", "README.md")),
    "study-1": ("docs/study-1", ("docs/study-1.md",)),
}


def run(
    size: str,
    out: Path | None = None,
    scored_pool: Path | None = None,
    render: list[Path] | None = None,
    until: str | None = None,
    estimate: bool = False,
    save_only: bool = False,
    collect_only: bool = False,
) -> int:
    """The study of ``size``: print its settings and estimate, run its stages, write and render the results;
    ``save_only``: write the progress files from the home (``study.progress``) and stop; ``collect_only``: write
    and render the results from what the home holds (its report and ledger), running no stage."""
    preset = presets.preset(size)
    committed = COMMITTED.get(size)
    out = out or (REPO_ROOT / committed[0] if committed else nuggets_home() / "study" / size)
    progress, ledger = out / "progress", nuggets_home() / "study" / size / "timings.json"
    if save_only:
        print(f"=== progress: {save_progress(progress, ledger)}")
        return 0
    if render is None:
        render = [REPO_ROOT / page for page in committed[1]] if committed else []
    expected = estimate_seconds(preset)
    settings = json.dumps(settings_record(preset), indent=1)
    print("=== study settings (fixed before anything runs)\n" + settings, flush=True)
    print(
        "=== estimated wall time on 2 cores (throughputs of benchmarks/RESULTS.md): "
        + ", ".join(f"{k} {v:,.0f}s" for k, v in expected.items())
        + f"; total {sum(expected.values()) / 3600:.2f} h",
        flush=True,
    )
    if estimate:
        return 0
    command = f"python -m nuggets_pipeline.cli study --size {size}" + (
        f" --scored-pool {scored_pool}" if scored_pool else ""
    )
    if collect_only:
        # The home's stages finished under other code (or the report code changed): its report and ledger are
        # what the study measured, and nothing needs to run again to write them up.
        runner.use_project_instance()
        if not report_file().exists():
            print(f"nuggets study: {nuggets_home()} holds no evaluation report; run the study first", file=sys.stderr)
            return 2
        restore_ledger(progress, ledger)
        timings = json.loads(ledger.read_text()) if ledger.exists() else {}
        return write_results(
            preset, dg.DagsterInstance.get(), timings, out, command, scored_pool, render, "collected from the home"
        )
    if scored_pool is not None and preset.scoring.get("mode", "exact") != "exact":
        # An adaptive pool has no score on every anchor to import; its pairs are what a sitting commits.
        print(
            f"nuggets study: --scored-pool imports exact scores, and the {size} study scores in "
            f"{preset.scoring['mode']} mode; it resumes from {progress / 'pairs.parquet'} instead (run without "
            "--scored-pool)",
            file=sys.stderr,
        )
        return 2

    from nuggets_pipeline.core.incoming import file_digest
    from nuggets_pipeline.defs.definitions import default_resources

    runner.use_project_instance()
    instance = dg.DagsterInstance.get()
    identities: dict[str, dict[str, str]] = {}
    before: dict[str, Callable[[], None]] = {}
    if scored_pool is not None:
        # The committed pool replaces scoring: its rows become the shards' checkpoints just before one-shot runs,
        # and its hash joins that stage's settings, so another file re-runs one-shot and every stage after it.
        pool_file = scored_pool
        identities["one-shot"] = {"scored_pool": file_digest(pool_file)[:16]}
        before["one-shot"] = lambda: import_scored_pool(pool_file)
    else:
        # The pairs earlier sittings committed: scored once, never again (a fresh machine resumes from them).
        before["one-shot"] = lambda: print(f"=== committed progress: {seed_pairs(progress)}", flush=True)
    if restore_ledger(progress, ledger):
        print(f"=== stage times so far: {progress / 'timings.json'}", flush=True)
    plan = runner.preset_plan(
        preset,
        default_resources(),
        launched_by=f"study-{size}",
        identities=identities,
        before=before,
        ledger=ledger,
    )
    try:
        timings = runner.run(plan, instance, until=until)
    except runner.RunRefused as error:
        print(f"nuggets study: {error}", file=sys.stderr)
        return 2
    finally:
        # Finished, stopped or failed: what it has done so far, in files a sitting commits.
        print(f"=== progress: {save_progress(progress, ledger)}", flush=True)
    if until is not None:
        return 0
    ran_any = not all(timing.get("skipped_last_run") for timing in timings.values())
    how = "ran" if ran_any else "nothing left to run"
    return write_results(preset, instance, timings, out, command, scored_pool, render, how)


def write_results(
    preset: presets.Preset,
    instance: dg.DagsterInstance,
    timings: dict[str, dict[str, Any]],
    out: Path,
    command: str,
    scored_pool: Path | None,
    render: list[Path],
    how: str,
) -> int:
    """results.json and its files under ``out``, the study blocks of the ``render`` pages, the headline printed."""
    results = collect_results(preset, instance, timings, out, command, scored_pool)
    for path in render:
        if path.exists():
            path.write_text(render_study_doc(path.read_text(), results))
    print(f"\n=== results ({how}): {out / 'results.json'}")
    print(results["headline"])
    for comparison in results["comparisons"]:
        print("  " + comparison["sentence"])
    return 0


__all__ = ["run"]
