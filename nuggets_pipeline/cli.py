"""`nuggets` (`python -m nuggets_pipeline.cli`): the ways in.

- ``demo``: the whole graph on the embedded default, stage by stage (the ``demo`` preset);
- ``run``: the same stages on your data with your models, configured by flags (``nuggets_pipeline.runs.flags``);
- ``study``: the golden-vs-random study (docs/study.md), resumable (``nuggets_pipeline.study``);
- ``plan``: what scoring a pool will cost, measured here (``nuggets_pipeline.runs.plan``).

This module only parses: the defaults are the preset table's (``nuggets_pipeline.runs.presets``), and every
command that runs stages goes through the one runner (``nuggets_pipeline.runs.runner``), whose jobs are the
stage jobs the UI lists, on the instance `make ui` shows.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from nuggets_pipeline.runs import flags, plan, presets
from nuggets_pipeline.runs.presets import Evaluation, Preset, Selection, Training

DEMO = presets.preset("demo")


def add_demo_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    d, e = DEMO, DEMO.evaluation
    demo = sub.add_parser("demo", help=f"run the whole graph on the embedded default: {DEMO.summary}")
    # Every flag but --until is a number that starts at the demo preset's value: one row each (flag, type, default,
    # help), in the order `demo --help` lists them.
    numbers: tuple[tuple[str, type, int | float | None, str], ...] = (
        ("--candidates", int, d.pool, "candidates to score (0: the whole pool)"),
        ("--anchors", int, d.anchors.n, "KMeans anchors"),
        ("--kmeans-pool", int, d.anchors.kmeans_pool, "pool rows embedded for KMeans"),
        ("--embed-max-tokens", int, d.anchors.embed_max_tokens, "tokens of each pool text embedded for KMeans"),
        ("--shards", int, d.shards, "candidate shards"),
        ("--threshold", float, None, "select golden_score > threshold instead"),
        ("--top-fraction", float, d.selection.top_fraction, "select the best fraction of candidates"),
        ("--train-steps", int, d.training.overrides["max_steps"], "optimizer steps per variant (batch 4 x 2)"),
        ("--mt-bench-questions", int, e.mt_bench_questions, "MT-Bench questions (of 80)"),
        ("--alpaca-eval-instructions", int, e.alpaca_eval_instructions, "AlpacaEval instructions (of 805)"),
        ("--max-new-tokens", int, e.max_new_tokens, "generation length for both benchmarks"),
        (
            "--likelihood-items",
            int,
            e.likelihood_alpaca_eval_items,
            "reference answers per source for the judge-free signal",
        ),
        ("--calibration-pairs", int, e.calibration_pairs, "GPT-4-decided pairs to calibrate the judge"),
    )
    for flag, kind, default, text in numbers:
        demo.add_argument(flag, type=kind, default=default, help=text)
    demo.add_argument("--until", default=None, help="stop after this stage")


def demo_preset(args: argparse.Namespace) -> Preset:
    """The demo preset with what the flags changed."""
    if args.threshold is not None:
        selection = Selection(threshold=args.threshold, top_fraction=None)
    else:
        selection = Selection(top_fraction=args.top_fraction)
    return dataclasses.replace(
        DEMO,
        pool=args.candidates or None,
        shards=args.shards,
        anchors=dataclasses.replace(
            DEMO.anchors, n=args.anchors, kmeans_pool=args.kmeans_pool, embed_max_tokens=args.embed_max_tokens
        ),
        selection=selection,
        training=Training(DEMO.training.profile, {**DEMO.training.overrides, "max_steps": args.train_steps}),
        evaluation=Evaluation(
            mt_bench_questions=args.mt_bench_questions,
            alpaca_eval_instructions=args.alpaca_eval_instructions,
            max_new_tokens=args.max_new_tokens,
            likelihood_alpaca_eval_items=args.likelihood_items,
            likelihood_mt_bench_items=args.likelihood_items,
            calibration_pairs=args.calibration_pairs,
        ),
    )


def add_run_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    run = sub.add_parser(
        "run",
        help="your data and your models: the same stages, configured by flags (see `run --help`)",
        description=flags.RUN_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    flags.add_run_arguments(run)


def add_study_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    study = sub.add_parser("study", help="the golden-vs-random study (docs/study.md); resumable")
    study.add_argument("--size", choices=presets.STUDY_SIZES, default="study", help="study (hours) or tiny (a minute)")
    study.add_argument("--out", type=Path, default=None, help="results folder (study: docs/study)")
    study.add_argument(
        "--scored-pool", type=Path, default=None, help="train and evaluate from this scored pool, without scoring"
    )
    study.add_argument(
        "--render",
        type=Path,
        nargs="*",
        default=None,
        help="Markdown files whose study blocks to fill (study: docs/study.md and README.md)",
    )
    study.add_argument("--until", default=None, help="stop after this stage")
    study.add_argument("--estimate", action="store_true", help="print the settings and estimated times, then stop")
    study.add_argument(
        "--save-progress",
        action="store_true",
        help="write the pairs scored so far and the stage times to <out>/progress (for a commit), then stop; "
        "safe while a study runs",
    )
    study.add_argument(
        "--collect",
        action="store_true",
        help="write results.json and render the pages from what the home holds (its report and stage times), "
        "running no stage: after a study finished under other code, or to re-render",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nuggets", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    plan.add_parser(sub)
    add_demo_parser(sub)
    add_run_parser(sub)
    add_study_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "plan":
        return plan.run(args)
    if args.command == "study":
        from nuggets_pipeline.study import conduct

        return conduct.run(
            args.size,
            args.out,
            args.scored_pool,
            args.render,
            args.until,
            args.estimate,
            args.save_progress,
            args.collect,
        )

    from nuggets_pipeline.defs.definitions import default_resources
    from nuggets_pipeline.runs import runner

    runner.use_project_instance()
    resources = default_resources()
    if args.command == "demo":
        return runner.run_and_summarise(runner.preset_plan(demo_preset(args), resources), "demo", args.until)
    try:
        config = flags.run_config(args, resources)
    except flags.RunConfigError as error:
        print(f"nuggets run: {error}", file=sys.stderr)
        return 2
    run_plan = runner.RunPlan(launched_by="run", run_config=config, variants=flags.run_preset(args).variants)
    if args.print_config:
        try:
            runner.check(run_plan, None)
        except runner.RunRefused as error:
            print(f"nuggets run: {error}", file=sys.stderr)
            return 2
        import yaml

        print(yaml.safe_dump(config, sort_keys=False), end="")
        return 0
    return runner.run_and_summarise(run_plan, "run", args.until)


if __name__ == "__main__":
    sys.exit(main())
