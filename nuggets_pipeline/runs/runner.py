"""One runner for `nuggets demo`, `nuggets run` and `nuggets study`: the stages in order, each through its job.

A run is a :class:`RunPlan`: the launchpad run config (``ops`` for the assets, ``resources`` for the models), the
variants to train and compare, and whether to resume. Every stage executes its asset job of ``defs/jobs.py``
(``stage_ingest`` ... ``stage_report``) from the definitions, on the instance `make ui` shows, with the part of the
run config its assets take:

- an unpartitioned stage: one run;
- ``one-shot``: one run over every current shard (a single-run backfill range, one model load), or, when the plan
  resumes, one run per shard (so a finished shard is never scored again);
- ``train`` and ``evaluate``: one run per variant.

The resume rule (plans made from a preset with ``resume``): every run is tagged with a settings key that hashes
what the plan starts from, the stage's name, assets, config and the config of the resources they use, its
partition, and the key of the stage before.
A unit (a stage, or one partition of it) whose assets' latest materialisations all come from a run with its key
is skipped; anything else runs (a killed scoring shard or training run resumes from its own checkpoints). A
changed setting re-runs that stage and every stage after it, never the ones before.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dagster as dg

from nuggets_pipeline.core.devices import cpu_name
from nuggets_pipeline.core.paths import REPO_ROOT, nuggets_home
from nuggets_pipeline.defs.jobs import STAGES, StageSpec
from nuggets_pipeline.runs import flags, presets
from nuggets_pipeline.runs.presets import Preset

if TYPE_CHECKING:
    from nuggets_pipeline.core.storage import Warehouse

SETTINGS_KEY_TAG = "nuggets/settings_key"
LAUNCHED_BY_TAG = "nuggets/launched_by"
LOGGING = {"console": {"config": {"log_level": "INFO"}}}
SKIPPED = "    skipped: every unit materialised earlier with the same settings"


class RunRefused(ValueError):
    """The plan cannot start: its run config is refused, or ``--until`` names no stage. Nothing has run."""


@dataclass(frozen=True)
class RunPlan:
    launched_by: str  # the run tag that tells the UI which command started a run
    run_config: dict[str, Any]  # the whole launchpad run config
    variants: tuple[str, ...]  # partitions of the train and evaluate stages
    # What every stage reads (the seed of the settings keys); None: every stage runs, nothing is skipped.
    resume_from: Mapping[str, Any] | None = None
    # Per stage: more of what it reads than its config says (e.g. the hash of an imported scored pool).
    identities: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # Per stage: called once before the stage's first run, only when something of the stage runs.
    before: Mapping[str, Callable[[], None]] = field(default_factory=dict)
    # Resuming plans: the stage timings kept across runs (a resumed stage adds to the time it had spent).
    ledger: Path | None = None


@dataclass(frozen=True)
class Stage:
    spec: StageSpec
    run_config: dict[str, Any]  # the part of the plan's run config the stage's assets take

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass(frozen=True)
class Unit:
    """One run of a stage's job: a partition (or a range, in ``tags``, or none) and its settings key."""

    partition: str | None
    key: str
    tags: dict[str, str]


def use_project_instance() -> None:
    """Runs go through the same Dagster instance as `make ui` (DAGSTER_HOME = the repository, storage under the
    home), so every materialisation is visible in the UI afterwards; the environment may point elsewhere."""
    os.environ.setdefault("DAGSTER_HOME", str(REPO_ROOT))
    os.environ.setdefault("NUGGETS_DAGSTER_STORAGE", str(nuggets_home() / "dagster"))


def preset_plan(
    preset: Preset,
    bound: Mapping[str, Any],
    *,
    launched_by: str | None = None,
    identities: Mapping[str, Mapping[str, Any]] | None = None,
    before: Mapping[str, Callable[[], None]] | None = None,
    ledger: Path | None = None,
) -> RunPlan:
    """The plan of a preset: its ops config and, where it pins a model, the resources that pin it."""
    from nuggets_pipeline.core.settings import get_settings

    config: dict[str, Any] = {"ops": presets.ops_config(preset)}
    if preset.model is not None:
        # float32 on the CPU unless NUGGETS_DEVICE says otherwise, so the same seeds give the same figures.
        device = get_settings().device or "cpu"
        config["resources"] = flags.pinned_model_resources(
            preset.model, device, dict(bound), preset.scoring_dtype, dict(preset.scoring)
        )
    return RunPlan(
        launched_by=launched_by or preset.name,
        run_config=config,
        variants=preset.variants,
        resume_from={"model": preset.model, "dtype": "float32", "scoring_dtype": preset.scoring_dtype}
        if preset.resume
        else None,
        identities=identities or {},
        before=before or {},
        ledger=ledger,
    )


def _ops(defs: dg.Definitions, assets: tuple[str, ...]) -> set[str]:
    """The ops of a stage's (or a phase's) assets: the names its run config is keyed by."""
    return {defs.resolve_assets_def(asset).op.name for asset in assets}


def for_stage(config: Mapping[str, Any], ops: set[str]) -> dict[str, Any]:
    """The part of the run config a stage's assets take (Dagster refuses config for ops not in the run)."""
    part: dict[str, Any] = {"ops": {k: v for k, v in config.get("ops", {}).items() if k in ops}}
    if "resources" in config:
        part["resources"] = config["resources"]
    return part


def stages(plan: RunPlan, defs: dg.Definitions | None = None) -> list[Stage]:
    """Every stage the plan needs, in order, with its part of the run config."""
    defs = defs or _definitions()
    return [
        Stage(spec, for_stage(plan.run_config, _ops(defs, spec.assets)))
        for spec in STAGES
        if spec.needed(plan.variants)
    ]


def _resources(stage: Stage, defs: dg.Definitions) -> dict[str, Any]:
    """The run config of the resources the stage's assets use (e.g. the scoring mode): a part of its settings as
    much as its op config, so changing it re-runs the stage."""
    used = set().union(*(defs.resolve_assets_def(asset).required_resource_keys for asset in stage.spec.assets))
    return {k: v for k, v in stage.run_config.get("resources", {}).items() if k in used}


def _definitions() -> dg.Definitions:
    from nuggets_pipeline.defs.definitions import defs

    return defs


def _hash(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _warehouse() -> Warehouse:
    from nuggets_pipeline.core.storage import Warehouse

    return Warehouse(nuggets_home() / "warehouse")


def current_shards(instance: dg.DagsterInstance) -> list[str]:
    """The candidate shards to score: every registered shard of the current base pool (a shard left over from an
    earlier `shards` setting holds no candidate and is not scored) and every shard of an incoming batch."""
    from nuggets_pipeline.core.incoming import BATCH_PREFIX
    from nuggets_pipeline.defs.partitions import CANDIDATE_SHARDS

    base = set(_warehouse().query("select distinct shard from nuggets.candidates")["shard"])
    registered = instance.get_dynamic_partitions(CANDIDATE_SHARDS)
    return [s for s in registered if s in base or s.startswith(BATCH_PREFIX)]


def units(
    stage: Stage, plan: RunPlan, instance: dg.DagsterInstance, key: str, defs: dg.Definitions | None = None
) -> list[Unit]:
    """The runs of a stage, decided when it starts (the shards exist only once `candidates` ran)."""
    from nuggets_pipeline.defs.partitions import CANDIDATE_SHARDS

    defs = defs or _definitions()

    def unit(partition: str | None, **tags: str) -> Unit:
        unit_key = _hash([key, partition])
        return Unit(partition, unit_key, {LAUNCHED_BY_TAG: plan.launched_by, SETTINGS_KEY_TAG: unit_key, **tags})

    partitions_def = defs.resolve_job_def(stage.spec.job_name).partitions_def
    if partitions_def is None:
        return [unit(None)]
    if isinstance(partitions_def, dg.DynamicPartitionsDefinition) and partitions_def.name == CANDIDATE_SHARDS:
        keys = current_shards(instance)
        registered = instance.get_dynamic_partitions(CANDIDATE_SHARDS)
        start = registered.index(keys[0]) if keys else 0
        # A range covers every registered shard between its ends: only a contiguous run of them is one range.
        contiguous = registered[start : start + len(keys)] == keys
        if plan.resume_from is None and len(keys) > 1 and contiguous:
            # One run scores every shard on this machine (a single-run backfill); a cluster fans them out instead.
            return [
                unit(
                    None,
                    **{"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]},
                )
            ]
    else:
        keys = list(plan.variants)
    return [unit(p) for p in keys]


def latest_settings_key(instance: dg.DagsterInstance, asset: str, partition: str | None) -> str | None:
    """The settings key of the run that last materialised ``asset`` (that partition), or None."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition] if partition else None),
        limit=1,
    ).records
    if not records:
        return None
    run = instance.get_run_by_id(records[0].run_id)
    return run.tags.get(SETTINGS_KEY_TAG) if run else None


def is_done(instance: dg.DagsterInstance, stage: Stage, unit: Unit) -> bool:
    """The resume rule: every asset of the stage was last materialised (that partition) with the unit's key."""
    return all(latest_settings_key(instance, asset, unit.partition) == unit.key for asset in stage.spec.assets)


def run_unit(
    stage: Stage,
    unit: Unit,
    instance: dg.DagsterInstance,
    defs: dg.Definitions | None = None,
    assets: tuple[str, ...] | None = None,
) -> None:
    """Execute the stage's job for one unit, in this process, on ``instance``; ``assets``: only those of the
    stage's assets (one phase), with their checks."""
    defs = defs or _definitions()
    job = defs.resolve_job_def(stage.spec.job_name)
    # A phase takes its own ops' config only: Dagster refuses config for ops not in the run.
    config = stage.run_config if assets is None else for_stage(stage.run_config, _ops(defs, assets))
    job.execute_in_process(
        run_config={**config, "loggers": LOGGING},
        instance=instance,
        partition_key=unit.partition,
        tags=unit.tags,
        asset_selection=None if assets is None else [dg.AssetKey(asset) for asset in assets],
    )


def run_units(
    stage: Stage,
    todo: list[Unit],
    instance: dg.DagsterInstance,
    defs: dg.Definitions,
    after_each: Callable[[], None] = lambda: None,
) -> None:
    """Run the units of a stage: together, or phase by phase across every unit where the stage has phases and
    runs one partition per unit (a single range run already materialises each phase for all its partitions
    before the next); ``after_each`` is called after every run (the ledger keeps the time spent so far)."""
    if not stage.spec.phases or len(todo) < 2:
        for unit in todo:
            run_unit(stage, unit, instance, defs)
            after_each()
        return
    for phase in stage.spec.phases:
        for unit in todo:
            run_unit(stage, unit, instance, defs, assets=phase)
            after_each()


def check(plan: RunPlan, until: str | None, defs: dg.Definitions | None = None) -> None:
    """Refuse a plan before any stage runs: every op config and resource its run config names is built as
    Dagster would at each step, and ``until`` must be a stage."""
    defs = defs or _definitions()
    try:
        flags.validate_run_config(plan.run_config, list(defs.assets or []), dict(defs.resources))
    except flags.RunConfigError as error:
        raise RunRefused(str(error)) from None
    names = [spec.name for spec in STAGES]
    if until is not None and until not in names:
        raise RunRefused(f"--until {until!r} is no stage; use one of {names}")


def _keep_time(
    plan: RunPlan,
    ledger: dict[str, dict[str, Any]],
    stage: str,
    key: str,
    units: int,
    ran_units: int,
    started: float,
    spent: float,
    finished: bool,
) -> None:
    """The ledger after every run of a stage (``finished`` once it ends), so a sitting stopped mid-stage keeps the
    time it spent: a resumed stage adds to it."""
    if ran_units:
        wall: float | None = spent + time.perf_counter() - started
        ledger[stage] = {"wall_s": wall, "key": key, "units": units, "ran_units": ran_units}
    else:
        ledger.setdefault(stage, {"wall_s": None, "key": key, "units": units, "ran_units": 0})
    ledger[stage]["skipped_last_run"] = not ran_units
    ledger[stage]["finished"] = finished
    if ran_units:  # where the time was spent (a study's sittings may run on different CPUs)
        ledger[stage]["cpu"] = cpu_name()
    if plan.ledger is not None:
        plan.ledger.parent.mkdir(parents=True, exist_ok=True)
        plan.ledger.write_text(json.dumps(ledger, indent=1))


def run(
    plan: RunPlan, instance: dg.DagsterInstance, *, until: str | None = None, defs: dg.Definitions | None = None
) -> dict[str, dict[str, Any]]:
    """Run the plan's stages in order (through ``until``), skipping what the resume rule finds done; the wall time
    per stage (``wall_s``, with ``key``, ``units``, ``ran_units``, ``skipped_last_run``)."""
    defs = defs or _definitions()
    check(plan, until, defs)
    ledger: dict[str, dict[str, Any]] = {}
    if plan.ledger is not None and plan.ledger.exists():
        ledger = json.loads(plan.ledger.read_text())
    resume = plan.resume_from is not None
    chain = _hash(dict(plan.resume_from or {}))
    # The key as it was before resource config joined it (2026-12-03): a ledger kept under it still counts as the
    # same settings' time, so a study begun under the old rule keeps the hours it spent (times only, never the
    # skipping, which the resource config must decide).
    legacy_chain = chain
    for stage in stages(plan, defs):
        identity = dict(plan.identities.get(stage.name, {}))
        key = _hash(
            [chain, stage.name, list(stage.spec.assets), stage.run_config["ops"], _resources(stage, defs), identity]
        )
        if not stage.spec.only_for:
            # A stage only some variants need stays out of the chain: dropping those variants must not re-run the
            # stages after it. (The `ifd` stage's settings are the scoring model, already in the chain's root, and
            # ifd_subset's size, which no training variant reads.)
            chain = key
        legacy = _hash([legacy_chain, stage.name, list(stage.spec.assets), stage.run_config["ops"], identity])
        if not stage.spec.only_for:
            legacy_chain = legacy
        started = time.perf_counter()
        found = units(stage, plan, instance, key, defs)
        todo = [unit for unit in found if not (resume and is_done(instance, stage, unit))]
        done = len(found) - len(todo)
        print(
            f"\n=== {stage.name}: {', '.join(stage.spec.assets)}"
            + (f" ({done} of {len(found)} already materialised)" if done else ""),
            flush=True,
        )
        if todo and stage.name in plan.before:
            plan.before[stage.name]()
        previous = ledger.get(stage.name, {})
        # A resumed stage adds to the time it had already spent; a fresh one starts from zero.
        spent = (previous.get("wall_s") or 0.0) if resume and previous.get("key") in (key, legacy) else 0.0

        kept = functools.partial(_keep_time, plan, ledger, stage.name, key, len(found), len(todo), started, spent)
        run_units(stage, todo, instance, defs, after_each=functools.partial(kept, finished=False))
        if not todo:
            print(SKIPPED, flush=True)
        kept(finished=True)
        if stage.name == until:
            break
    return ledger


def summary(timings: Mapping[str, Mapping[str, Any]], instance: dg.DagsterInstance | None = None) -> str:
    """What the run left in the warehouse, the report, the stage timings and where to look next."""
    from nuggets_pipeline.defs import metadata as md

    warehouse = _warehouse()
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
    walls = ", ".join(f"{name} {t['wall_s']:.0f}s" for name, t in timings.items() if t.get("wall_s") is not None)
    lines.append(f"{'stage timings':>20}: " + walls)
    lines.append(f"{'outputs':>20}: {nuggets_home()} (warehouse/*.parquet, DuckDB catalog warehouse/warehouse.duckdb)")
    lines.append(f"{'exports':>20}: {nuggets_home() / 'exports'} (FastChat, alpaca_eval, datasets; see README)")
    lines.append(f"{'browse':>20}: make ui  (Dagster UI on http://127.0.0.1:3000)")
    return "\n".join(lines)


def run_and_summarise(plan: RunPlan, command: str, until: str | None) -> int:
    """`nuggets demo` / `nuggets run`: the plan, then the summary; 2 (and why, on stderr) when it is refused."""
    use_project_instance()
    instance = dg.DagsterInstance.get()
    try:
        timings = run(plan, instance, until=until)
    except RunRefused as error:
        print(f"nuggets {command}: {error}", file=sys.stderr)
        return 2
    print(summary(timings, instance), flush=True)
    return 0


__all__ = [
    "LAUNCHED_BY_TAG",
    "SETTINGS_KEY_TAG",
    "RunPlan",
    "RunRefused",
    "Stage",
    "Unit",
    "check",
    "current_shards",
    "for_stage",
    "is_done",
    "latest_settings_key",
    "preset_plan",
    "run",
    "run_and_summarise",
    "run_unit",
    "stages",
    "summary",
    "units",
    "use_project_instance",
]
