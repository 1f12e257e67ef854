"""`python -m nuggets_pipeline.cli demo`: run the whole graph on the embedded default, stage by stage;
`... run`: the same stages on your data with your models (see `nuggets_pipeline.runs.flags`).

Runs go through the same Dagster instance as `make ui` (DAGSTER_HOME = the repository, storage under the home),
so every materialisation of the demo is visible in the UI afterwards.
"""

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import dagster as dg

from nuggets_pipeline.core.paths import REPO_ROOT, nuggets_home
from nuggets_pipeline.defs import metadata as md
from nuggets_pipeline.runs import flags, plan

VARIANTS = ("golden", "random")


@dataclass
class Stage:
    name: str
    selection: list[str]
    ops_config: dict[str, Any] = field(default_factory=dict)
    partitions: Callable[[dg.DagsterInstance], list[str]] | None = None
    single_run_range: bool = False
    # Launchpad `resources` section (run: the models the flags chose); empty: the definitions' resources.
    resources_config: dict[str, Any] = field(default_factory=dict)
    launched_by: str = "demo"


def demo_stages(args: argparse.Namespace) -> list[Stage]:
    from nuggets_pipeline.defs.partitions import CANDIDATE_SHARDS

    return [
        Stage("ingest", ["instructions", "quarantined_instructions"]),
        Stage(
            "anchors",
            ["anchor_set", "candidates"],
            {
                "anchor_set": {
                    "config": {
                        "method": "kmeans",
                        "n": args.anchors,
                        "kmeans_pool_size": args.kmeans_pool,
                        "embed_max_tokens": args.embed_max_tokens,
                    }
                },
                "candidates": {"config": {"shards": args.shards, "limit": args.candidates}},
            },
        ),
        Stage("zero-shot", ["zero_shot_losses"]),
        Stage(
            "one-shot",
            # Screening first, every shard, in the same run: adaptive mode refines against it; elsewhere a no-op.
            ["one_shot_screening", "one_shot_scores"],
            partitions=lambda instance: sorted(instance.get_dynamic_partitions(CANDIDATE_SHARDS)),
            single_run_range=True,
        ),
        Stage("select", ["golden_subset", "scored_pool_exports"], {"golden_subset": {"config": selection(args)}}),
        Stage(
            "train",
            ["finetuned_model"],
            {"finetuned_model": {"config": {"profile": "cpu-demo", "max_steps": args.train_steps, "max_length": 192}}},
            partitions=lambda _: list(VARIANTS),
        ),
        Stage(
            "evaluate",
            ["mt_bench_results", "alpaca_eval_results", "reference_likelihood"],
            {
                "mt_bench_results": {
                    "config": {"questions": args.mt_bench_questions, "max_new_tokens": args.max_new_tokens}
                },
                "alpaca_eval_results": {
                    "config": {"instructions": args.alpaca_eval_instructions, "max_new_tokens": args.max_new_tokens}
                },
                "reference_likelihood": {
                    "config": {"alpaca_eval_items": args.likelihood_items, "mt_bench_items": args.likelihood_items}
                },
            },
            partitions=lambda _: list(VARIANTS),
        ),
        Stage(
            "report",
            ["judge_calibration", "evaluation_report"],
            {"judge_calibration": {"config": {"n": args.calibration_pairs}}},
        ),
    ]


def run_stages(args: argparse.Namespace, bound: dict[str, Any]) -> list[Stage]:
    """The demo's stages with the run config `nuggets run`'s flags map to (`flags.run_config`)."""
    config = flags.run_config(args, bound)
    stages = []
    for stage in demo_stages(build_parser().parse_args(["demo"])):
        ops = {"ingest_instructions" if name == "instructions" else name for name in stage.selection}
        part = flags.for_selection(config, ops)
        resources = part.get("resources", {})
        stages.append(replace(stage, ops_config=part["ops"], resources_config=resources, launched_by="run"))
    return stages


def selection(args: argparse.Namespace) -> dict[str, float | None]:
    """The demo keeps the best quarter: SmolLM2 with 8 anchors rarely gets a candidate above the paper's 0.8
    (benchmarks/RESULTS.md, the demo), which would leave nothing to train on. `--threshold 0.8` gives the
    paper's rule."""
    if args.threshold is not None:
        return {"threshold": args.threshold}
    return {"threshold": None, "top_fraction": args.top_fraction}


def run_stage(stage: Stage, instance: dg.DagsterInstance, resources: dict[str, Any]) -> float:
    from nuggets_pipeline.defs.definitions import defs

    started = time.perf_counter()
    print(f"\n=== {stage.name}: {', '.join(stage.selection)}", flush=True)
    run_config = {"ops": stage.ops_config, "loggers": {"console": {"config": {"log_level": "INFO"}}}}
    if stage.resources_config:
        run_config["resources"] = stage.resources_config
    assets = [*defs.assets, *defs.asset_checks]  # type: ignore[list-item]
    partitions = stage.partitions(instance) if stage.partitions else [None]
    tags: dict[str, str] = {"nuggets/launched_by": stage.launched_by}
    if stage.single_run_range and len(partitions) > 1:
        # One run scores every shard on this machine (a single-run backfill); a cluster fans them out instead.
        tags |= {
            "dagster/asset_partition_range_start": partitions[0],
            "dagster/asset_partition_range_end": partitions[-1],
        }
        partitions = [None]
    for key in partitions:
        dg.materialize(
            assets,
            selection=stage.selection,
            instance=instance,
            resources=resources,
            run_config=run_config,
            partition_key=key,
            tags=tags,
        )
    return time.perf_counter() - started


def summary(timings: dict[str, float], instance: dg.DagsterInstance | None = None) -> str:
    from nuggets_pipeline.core.storage import Warehouse

    warehouse = Warehouse(nuggets_home() / "warehouse")
    lines = ["", "=== summary"]

    def count(table: str, where: str = "") -> int:
        return int(warehouse.query(f"select count(*) n from nuggets.{table} {where}")["n"].iloc[0])

    tables = set(warehouse.query("select table_name from information_schema.tables")["table_name"])
    for label, table in [
        ("rows ingested", "instructions"),
        ("rows quarantined", "quarantined_instructions"),
        ("anchors chosen", "anchor_set"),
        ("candidates", "candidates"),
        ("candidates scored", "one_shot_scores"),
        ("golden subset", "golden_subset"),
    ]:
        if table in tables:
            lines.append(f"{label:>20}: {count(table):,}")
        if table == "golden_subset" and instance is not None:
            # Beside the subset: how far its ranking is signal rather than the luck of the anchor draw.
            reliability = md.latest_value(instance, "golden_subset", "reliability")
            if reliability:
                lines.append(f"{'reliability':>20}: {reliability}")
            cost = md.latest_value(instance, "golden_subset", "selection_to_tuning")
            if cost:
                lines.append(f"{'selection cost':>20}: {cost}")
    if "quarantined_instructions" in tables:
        reasons = warehouse.query(
            "select split_part(reason, ':', 1) reason, count(*) n "
            "from nuggets.quarantined_instructions group by 1 order by 2 desc"
        )
        for row in reasons.itertuples():
            lines.append(f"{'':>20}  {row.reason}: {row.n}")
    report = nuggets_home() / "exports" / "evaluation_report.md"
    if report.exists():
        lines += ["", report.read_text(), ""]
    lines.append(f"{'stage timings':>20}: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()))
    lines.append(f"{'outputs':>20}: {nuggets_home()} (warehouse/*.parquet, DuckDB catalog warehouse/warehouse.duckdb)")
    lines.append(f"{'exports':>20}: {nuggets_home() / 'exports'} (FastChat, alpaca_eval, datasets; see README)")
    lines.append(f"{'browse':>20}: make ui  (Dagster UI on http://127.0.0.1:3000)")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nuggets", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    plan.add_parser(sub)
    demo = sub.add_parser("demo", help="run the whole graph on the embedded default (SmolLM2, small slice)")
    demo.add_argument("--candidates", type=int, default=96, help="candidates to score")
    demo.add_argument("--anchors", type=int, default=8, help="KMeans anchors")
    demo.add_argument("--kmeans-pool", type=int, default=300, help="pool rows embedded for KMeans")
    demo.add_argument("--embed-max-tokens", type=int, default=128, help="tokens of each pool text embedded for KMeans")
    demo.add_argument("--shards", type=int, default=4, help="candidate shards")
    demo.add_argument("--threshold", type=float, default=None, help="select golden_score > threshold instead")
    demo.add_argument("--top-fraction", type=float, default=0.25, help="select the best fraction of candidates")
    demo.add_argument("--train-steps", type=int, default=4, help="optimizer steps per variant (batch 4 x 2)")
    demo.add_argument("--mt-bench-questions", type=int, default=2, help="MT-Bench questions (of 80)")
    demo.add_argument("--alpaca-eval-instructions", type=int, default=8, help="AlpacaEval instructions (of 805)")
    demo.add_argument("--max-new-tokens", type=int, default=96, help="generation length for both benchmarks")
    demo.add_argument(
        "--likelihood-items", type=int, default=16, help="reference answers per source for the judge-free signal"
    )
    demo.add_argument("--calibration-pairs", type=int, default=12, help="GPT-4-decided pairs to calibrate the judge")
    demo.add_argument("--until", default=None, help="stop after this stage")
    run = sub.add_parser(
        "run",
        help="your data and your models: the same stages, configured by flags (see `run --help`)",
        description=flags.RUN_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    flags.add_run_arguments(run)
    from nuggets_pipeline.study import experiment as study

    study.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "study":
        from nuggets_pipeline.study import experiment as study

        return study.run(args)

    os.environ.setdefault("DAGSTER_HOME", str(REPO_ROOT))
    os.environ.setdefault("NUGGETS_DAGSTER_STORAGE", str(nuggets_home() / "dagster"))
    if args.command == "plan":
        return plan.run(args)
    from nuggets_pipeline.defs.definitions import default_resources

    resources = default_resources()
    if args.command == "run":
        from nuggets_pipeline.defs.definitions import defs

        config = flags.run_config(args, resources)
        try:
            flags.validate_run_config(config, list(defs.assets or []), resources)
        except flags.RunConfigError as error:
            print(f"nuggets run: {error}", file=sys.stderr)
            return 2
        if args.print_config:
            import yaml

            print(yaml.safe_dump(config, sort_keys=False), end="")
            return 0
    instance = dg.DagsterInstance.get()
    stages = run_stages(args, resources) if args.command == "run" else demo_stages(args)
    if args.until is not None and args.until not in {stage.name for stage in stages}:
        print(
            f"nuggets {args.command}: --until {args.until!r} is no stage; use one of "
            f"{[stage.name for stage in stages]}",
            file=sys.stderr,
        )
        return 2
    timings: dict[str, float] = {}
    for stage in stages:
        timings[stage.name] = run_stage(stage, instance, resources)
        if stage.name == args.until:
            break
    print(summary(timings, instance), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
