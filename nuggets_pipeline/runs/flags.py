"""`nuggets run`: your data and your model in one command, as the run config the launchpad takes.

The command line builds exactly the run config a user would paste into the Dagster launchpad (``ops`` for the
assets' config, ``resources`` for the models) and launches the same assets with it: there is no second code
path. ``nuggets run ... --print-config`` prints that config as YAML instead of running, ready for the UI.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nuggets_pipeline.core.adaptive import AdaptiveConfig
from nuggets_pipeline.defs.partitions import TRAINING_VARIANTS
from nuggets_pipeline.runs import presets
from nuggets_pipeline.runs.presets import Anchors, Preset, Selection, Training, in_stage_order

# The defaults of every flag that has one: `nuggets run` starts from this row of the preset table.
RUN = presets.preset("run")

RUN_DESCRIPTION = """\
Run the whole graph on your data with your models, stage by stage, in the same Dagster instance as the UI.

Every flag maps onto the run config the launchpad takes (print it with --print-config), so a run started here
and one started from the UI with that config are the same run.

examples:
  # your JSONL, scored by SmolLM2, fine-tuning a local checkpoint, keeping golden_score > 0.8 (the paper)
  nuggets run --source my_data.jsonl --training-model ./my-llama --threshold 0.8

  # a prompt/completion file, the paper's 100 KMeans anchors, the 10% best, paper-size evaluation
  nuggets run --source data.parquet --instruction-field prompt --output-field completion \\
      --anchor-method file --top-fraction 0.1 --eval-profile paper

  # a hub dataset (online), pinned to a revision, a non-default split and configuration
  nuggets run --source someone/dataset --hub-split train_sft --hub-name en --hub-revision 1a2b3c

  # the launchpad's YAML for the same run, without running it
  nuggets run --source my_data.jsonl --top-k 500 --print-config
"""


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The `run` flags, grouped as the README's configuration section is."""
    data = parser.add_argument_group("data (asset `instructions`)")
    data.add_argument(
        "--source",
        action="append",
        dest="sources",
        metavar="PATH_OR_HUB_ID",
        help="a JSON, JSONL(.gz), Parquet or CSV file, a saved `datasets` folder, or a hub id; repeat for several "
        "(default: the shipped cleaned Alpaca)",
    )
    data.add_argument("--instruction-field", default=None, help="field holding the instruction (default instruction)")
    data.add_argument("--input-field", default=None, help="field holding the optional input (default input)")
    data.add_argument("--output-field", default=None, help="field holding the response (default output)")
    data.add_argument("--conversations-field", default=None, help="ShareGPT-style turns (default conversations)")
    data.add_argument("--max-chars", type=int, default=None, help="longer examples are quarantined (default 16384)")
    data.add_argument("--hub-split", default=None, help="hub datasets: split (default train)")
    data.add_argument("--hub-name", default=None, help="hub datasets: configuration / subset name")
    data.add_argument("--hub-revision", default=None, help="hub datasets: branch, tag or commit")

    models = parser.add_argument_group("models (resources; each a preset, a Hugging Face id or a local folder)")
    models.add_argument("--scoring-model", default=None, help="model that scores candidates (default smollm2)")
    models.add_argument("--scoring-dtype", default=None, help="float32, bfloat16, float16 or auto")
    models.add_argument("--training-model", default=None, help="model that is fine-tuned (default smollm2)")
    models.add_argument("--judge-model", default=None, help="local judge model, or the served model name")
    models.add_argument("--judge-backend", choices=["local", "openai"], default=None, help="judge backend")
    models.add_argument(
        "--judge-timeout-s", type=float, default=None, help="openai judge: seconds a try waits on the server (60)"
    )
    models.add_argument(
        "--judge-max-retries", type=int, default=None, help="openai judge: retries after a timeout, 429 or 5xx (3)"
    )
    models.add_argument(
        "--judge-max-failed-fraction",
        type=float,
        default=None,
        help="evaluation fails when more than this share of judgments failed (0.5; all failed: always)",
    )
    models.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto, for every model")

    scoring = parser.add_argument_group("scoring (resource `scoring`); the adaptive cut follows the selection flags")
    scoring.add_argument(
        "--scoring-mode",
        choices=["exact", "decision", "adaptive"],
        default=None,
        help="exact (default): every anchor; decision: stop at a certain verdict for --threshold; adaptive: screen "
        "every candidate, then more anchors only where the selection is still in doubt",
    )
    adaptive = AdaptiveConfig()  # the defaults the help states are the core's, which the scoring resource takes
    scoring.add_argument(
        "--adaptive-confidence",
        type=float,
        default=None,
        help=f"adaptive: interval confidence ({adaptive.confidence})",
    )
    scoring.add_argument(
        "--adaptive-first-anchors",
        type=int,
        default=None,
        help=f"adaptive: screening anchors ({adaptive.first_anchors})",
    )
    scoring.add_argument(
        "--adaptive-round-anchors",
        type=int,
        default=None,
        help=f"adaptive: anchors per round ({adaptive.round_anchors})",
    )

    anchors = parser.add_argument_group("anchors (asset `anchor_set`) and candidates")
    anchors.add_argument("--anchor-method", choices=["random", "kmeans", "file"], default=RUN.anchors.method)
    anchors.add_argument(
        "--anchors",
        type=int,
        default=None,
        help=f"anchors to choose (k for KMeans; default {RUN.anchors.n}); with --anchor-method file, a seeded sample "
        "of that many (default: the whole file)",
    )
    anchors.add_argument("--anchor-file", default=None, help="JSON/JSONL of anchors for --anchor-method file")
    anchors.add_argument(
        "--kmeans-pool", type=int, default=RUN.anchors.kmeans_pool, help="pool rows embedded for KMeans (0: all)"
    )
    anchors.add_argument(
        "--embed-max-tokens", type=int, default=RUN.anchors.embed_max_tokens, help="tokens of each text embedded"
    )
    anchors.add_argument("--candidates", type=int, default=RUN.pool, help="candidates to score (0: the whole pool)")
    anchors.add_argument("--shards", type=int, default=RUN.shards, help="candidate shards (scoring partitions)")

    select = parser.add_argument_group(
        f"selection (asset `golden_subset`); default: --top-fraction {RUN.selection.top_fraction}"
    )
    criterion = select.add_mutually_exclusive_group()
    criterion.add_argument("--threshold", type=float, default=None, help="keep golden_score > T (the paper: 0.8)")
    criterion.add_argument("--top-k", type=int, default=None, help="keep the K best")
    criterion.add_argument("--top-fraction", type=float, default=None, help="keep this fraction of the best")
    select.add_argument(
        "--selector",
        choices=SELECTORS,
        action="append",
        default=None,
        help="selectors to train and compare: nuggets (the golden subset, always) and ifd (instruction-following "
        "difficulty, its own stage and the `ifd` variant at the golden subset's size); repeat to add",
    )
    select.add_argument(
        "--variants",
        default=None,
        metavar="V,V",
        help=f"training variants, comma-separated, of {', '.join(TRAINING_VARIANTS)} (default "
        f"{','.join(RUN.variants)}); --selector ifd adds ifd",
    )
    select.add_argument(
        "--export-thresholds",
        type=float,
        nargs="*",
        default=[],
        metavar="T",
        help="also write exports/golden/alpaca_golden_<T>.json per threshold (like the paper's alpaca_gpt4_0.85.json)",
    )

    profiles = parser.add_argument_group("profiles (training and evaluation sizes)")
    profiles.add_argument(
        "--train-profile", default=RUN.training.profile, help="training profile: cpu-demo, paper, ..."
    )
    profiles.add_argument("--train-steps", type=int, default=None, help="stop training after this many steps")
    profiles.add_argument(
        "--eval-profile", choices=["cpu-demo", "paper"], default=RUN.evaluation.profile, help="benchmark sizes"
    )
    profiles.add_argument(
        "--mt-bench-answers",
        action="append",
        default=[],
        metavar="FILE",
        help="FastChat model_answer/<model>.jsonl of another model to grade and show beside yours; repeatable",
    )

    control = parser.add_argument_group("control")
    control.add_argument("--until", default=None, help="stop after this stage (ingest, anchors, ..., report)")
    control.add_argument("--print-config", action="store_true", help="print the launchpad YAML and exit")


def _absolute(value: str | None) -> str | None:
    """A local file or folder as an absolute path, so the config means the same from the UI's working directory;
    anything else (a preset, a hub id) unchanged."""
    if value is None:
        return None
    path = Path(value).expanduser()
    return str(path.resolve()) if path.exists() else value


def _set(target: dict[str, Any], **values: Any) -> dict[str, Any]:
    """Only the flags the user gave: unset ones keep the asset's (or resource's) own default."""
    target.update({k: v for k, v in values.items() if v is not None})
    return target


SELECTORS = ("nuggets", "ifd")


def run_variants(args: argparse.Namespace, default: tuple[str, ...]) -> tuple[str, ...]:
    """The variants to train: ``--variants`` (or the preset's), plus `ifd` for ``--selector ifd``; unknown names
    are refused before anything runs."""
    variants = [v.strip() for v in args.variants.split(",") if v.strip()] if args.variants else list(default)
    if "ifd" in (args.selector or []) and "ifd" not in variants:
        variants.append("ifd")
    unknown = sorted(set(variants) - set(TRAINING_VARIANTS))
    if unknown or not variants:
        raise RunConfigError(f"--variants: unknown {unknown or 'none given'}; use some of {list(TRAINING_VARIANTS)}")
    return tuple(dict.fromkeys(variants))


def run_preset(args: argparse.Namespace, base: Preset = RUN) -> Preset:
    """The preset the flags make of ``base``: what they set replaces the table's value."""
    # anchor_set honours n for a file too: unless asked, a file gives all its rows (the paper's 100), not 8.
    if args.anchors is not None:
        n: int | None = args.anchors
    else:
        n = None if args.anchor_method == "file" else base.anchors.n
    if args.threshold is not None:
        selection = Selection(threshold=args.threshold, top_fraction=None)
    elif args.top_k is not None:
        selection = Selection(top_k=args.top_k, top_fraction=None)
    else:
        # `is not None`, never `or`: a value the user gave (0 included) is validated, not replaced.
        top_fraction = args.top_fraction if args.top_fraction is not None else base.selection.top_fraction
        selection = Selection(top_fraction=top_fraction)
    overrides = dict(base.training.overrides) | _set({}, max_steps=args.train_steps)
    return dataclasses.replace(
        base,
        variants=run_variants(args, base.variants),
        pool=args.candidates or None,
        shards=args.shards,
        anchors=Anchors(
            method=args.anchor_method,
            n=n,
            file=_absolute(args.anchor_file),
            seed=base.anchors.seed,
            kmeans_pool=args.kmeans_pool,
            embed_max_tokens=args.embed_max_tokens,
        ),
        selection=selection,
        training=Training(args.train_profile, overrides),
        evaluation=dataclasses.replace(base.evaluation, profile=args.eval_profile),
    )


def ops_config(args: argparse.Namespace) -> dict[str, Any]:
    """The `ops` section of the run config: the preset's (``presets.ops_config``) with what only `run` sets, the
    data, the export thresholds and other models' answers, beside it."""
    ops = presets.ops_config(run_preset(args))
    ingest = _set(
        {},
        sources=[_absolute(s) for s in args.sources] if args.sources else None,
        instruction_field=args.instruction_field,
        input_field=args.input_field,
        output_field=args.output_field,
        conversations_field=args.conversations_field,
        max_chars=args.max_chars,
        hub_split=args.hub_split,
        hub_name=args.hub_name,
        hub_revision=args.hub_revision,
    )
    ops["ingest_instructions"] = {"config": ingest}
    ops["scored_pool_exports"] = {"config": {"thresholds": list(args.export_thresholds)}}
    report = ops.setdefault("evaluation_report", {"config": {}})["config"]
    report["mt_bench_answer_files"] = [_absolute(f) for f in args.mt_bench_answers]
    return in_stage_order(ops)


def _config_value(value: Any) -> Any:
    """A bound field as run config: a field bound to ``dg.EnvVar`` (definitions.py) stays read from its variable."""
    name = getattr(value, "env_var_name", None)  # dg.EnvVar is a str holding the variable's name
    return {"env": name} if isinstance(name, str) else value


def scoring_changes(args: argparse.Namespace) -> dict[str, Any]:
    """The scoring resource's fields the flags set. Decision and adaptive modes decide against the selection's own
    criterion, so it is passed on from --threshold / --top-k / --top-fraction: the two can never disagree."""
    changes = _set(
        {},
        mode=args.scoring_mode,
        adaptive_confidence=args.adaptive_confidence,
        adaptive_first_anchors=args.adaptive_first_anchors,
        adaptive_round_anchors=args.adaptive_round_anchors,
    )
    if args.scoring_mode == "decision":
        changes["decision_threshold"] = args.threshold  # None is refused: decision mode needs --threshold
    elif args.scoring_mode == "adaptive":
        criterion = ops_config(args)["golden_subset"]["config"]
        key = next(k for k in ("threshold", "top_k", "top_fraction") if criterion.get(k) is not None)
        changes[f"adaptive_{key}"] = criterion[key]
    return changes


def resources_config(args: argparse.Namespace, bound: dict[str, Any]) -> dict[str, Any]:
    """The `resources` section: for each model resource a flag changes, ALL its fields.

    Dagster resets every field a run config leaves out to the class default, not to the value bound in
    `definitions.py` (measured: overriding only `model` turned device "auto" into "cpu"); so each resource named
    here carries its bound values with the flags' changes on top.
    """
    changes: dict[str, dict[str, Any]] = {
        "scoring_model": _set({}, model=_absolute(args.scoring_model), dtype=args.scoring_dtype, device=args.device),
        "training_model": _set({}, model=_absolute(args.training_model), device=args.device),
        "scoring": scoring_changes(args),
        "judge": _set(
            {},
            model=_absolute(args.judge_model),
            backend=args.judge_backend,
            device=args.device,
            timeout_s=args.judge_timeout_s,
            max_retries=args.judge_max_retries,
            max_failed_fraction=args.judge_max_failed_fraction,
        ),
    }
    return resource_overrides(changes, bound)


def resource_overrides(changes: dict[str, dict[str, Any]], bound: dict[str, Any]) -> dict[str, Any]:
    """The `resources` section for ``changes`` (resource name -> fields to set): each resource changed carries
    every bound field with the changes on top; a resource without a change is left out."""
    out = {}
    for name, change in changes.items():
        if not change:
            continue
        resource = bound[name]
        fields = {field: _config_value(getattr(resource, field)) for field in type(resource).model_fields}
        out[name] = {"config": fields | change}
    return out


def pinned_model_resources(
    model: str,
    device: str,
    bound: dict[str, Any],
    scoring_dtype: str = "float32",
    scoring: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The `resources` section that pins one model for scoring, training and judging (a preset's ``model``): in
    float32 (scoring in ``scoring_dtype``), with the in-process judge, so the same seeds give the same figures
    whatever the environment set; ``scoring`` sets fields of the `scoring` resource (e.g. the adaptive mode)."""
    pinned = {"model": model, "dtype": "float32", "device": device}
    return resource_overrides(
        {
            "scoring_model": {**pinned, "dtype": scoring_dtype},
            "training_model": pinned,
            "judge": {"model": model, "backend": "local", "device": device},
            "scoring": dict(scoring or {}),
        },
        bound,
    )


def run_config(args: argparse.Namespace, bound: dict[str, Any]) -> dict[str, Any]:
    """The whole run config, as the launchpad takes it."""
    config: dict[str, Any] = {"ops": ops_config(args)}
    if resources := resources_config(args, bound):
        config["resources"] = resources
    return config


class RunConfigError(ValueError):
    """The run config holds values its assets or resources refuse; the message lists every one."""


def _config_classes(assets: Sequence[Any]) -> dict[str, type]:
    """Each asset op's ``config`` class (a ``dg.Config``), read from its compute function's signature."""
    import dagster as dg

    found: dict[str, type] = {}
    for asset in assets:
        if not isinstance(asset, dg.AssetsDefinition):
            continue
        parameter = inspect.signature(asset.op.compute_fn.decorated_fn).parameters.get("config")
        if parameter is not None and isinstance(parameter.annotation, type):
            found[asset.op.name] = parameter.annotation
    return found


def validate_run_config(config: dict[str, Any], assets: Sequence[Any], bound: dict[str, Any]) -> None:
    """Build every op config and resource the run config names, as Dagster would at each step, so a value out
    of range is refused before the first stage runs (not after hours of scoring); every problem is listed."""
    import dagster as dg
    from pydantic import ValidationError

    classes = _config_classes(assets)
    problems: list[str] = []

    def attempt(where: str, build: Any) -> None:
        try:
            build()
        except (ValidationError, ValueError, TypeError) as error:
            details = error.errors() if isinstance(error, ValidationError) else [{"loc": (), "msg": str(error)}]
            for detail in details:
                field = ".".join(str(part) for part in detail["loc"])
                problems.append(f"{where}{'.' + field if field else ''}: {detail['msg']}")

    for op, section in config.get("ops", {}).items():
        if op not in classes:
            problems.append(f"ops.{op}: no asset of this code location takes config under that name")
            continue
        attempt(f"ops.{op}.config", lambda op=op, section=section: classes[op](**section.get("config", {})))
    for name, section in config.get("resources", {}).items():
        fields = {
            k: dg.EnvVar(v["env"]) if isinstance(v, dict) and set(v) == {"env"} else v
            for k, v in section.get("config", {}).items()
        }
        attempt(f"resources.{name}.config", lambda name=name, fields=fields: type(bound[name])(**fields))
    if problems:
        raise RunConfigError("the run config is refused before any stage runs:\n  " + "\n  ".join(problems))


__all__ = [
    "RUN_DESCRIPTION",
    "RunConfigError",
    "add_run_arguments",
    "ops_config",
    "pinned_model_resources",
    "resource_overrides",
    "resources_config",
    "run_config",
    "run_preset",
    "validate_run_config",
]
