"""The stages `nuggets demo`, `nuggets run` and `nuggets study` run, one asset job each, listed in the UI.

A stage is a fixed group of assets materialised together, in this order: `ingest` ... `report`; `ifd` runs only
for a plan that trains the `ifd` variant. Each is an asset job of the code location (``stage_ingest``,
``stage_anchors``, ...), so a stage can be launched from the UI's launchpad with the same run config the commands
print (`nuggets run --print-config`), and the commands run exactly these jobs (``nuggets_pipeline.runs.runner``).
A job selects its assets with their asset checks, so the checks of a stage's assets run with it. Partitioned
stages take their partitions from their assets: `one-shot` candidate shards, `train` and `evaluate` training
variants.
"""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg

JOB_PREFIX = "stage_"


@dataclass(frozen=True)
class StageSpec:
    """One stage: the name the commands use (``--until one-shot``) and the assets its job materialises."""

    name: str
    assets: tuple[str, ...]
    description: str
    # A stage only some variants need: the commands run it only when the plan trains one of these (empty: always).
    only_for: tuple[str, ...] = ()
    # Assets that must be materialised for every partition before the next group starts for any (empty: the
    # stage's assets together). One-shot: adaptive refinement reads the screening of every shard.
    phases: tuple[tuple[str, ...], ...] = ()

    def needed(self, variants: tuple[str, ...]) -> bool:
        return not self.only_for or bool(set(self.only_for) & set(variants))

    @property
    def job_name(self) -> str:
        return JOB_PREFIX + self.name.replace("-", "_")


STAGES: tuple[StageSpec, ...] = (
    StageSpec("ingest", ("instructions", "quarantined_instructions"), "Read the sources; quarantine bad rows."),
    StageSpec("anchors", ("anchor_set", "candidates"), "Choose the anchors; shard the rest of the pool as candidates."),
    StageSpec("zero-shot", ("zero_shot_losses",), "Each anchor's loss without a demonstration."),
    StageSpec(
        "one-shot",
        # Screening first, in the same run: adaptive mode refines against every shard's screening; elsewhere a
        # no-op.
        ("one_shot_screening", "one_shot_scores"),
        "Score candidate shards (one partition per shard; a single-run range scores several on one model load).",
        phases=(("one_shot_screening",), ("one_shot_scores",)),
    ),
    StageSpec(
        "select",
        ("golden_subset", "scored_pool_exports"),
        "Select the golden subset by golden score; export the scored pool.",
    ),
    StageSpec(
        "ifd",
        ("ifd_scores", "ifd_subset"),
        "Score every candidate's IFD and select by it (the cheap selector beside NUGGETS).",
        only_for=("ifd",),
    ),
    StageSpec("train", ("finetuned_model",), "Fine-tune one training variant (partition) from the base model."),
    StageSpec(
        "evaluate",
        ("mt_bench_results", "alpaca_eval_results", "reference_likelihood"),
        "Evaluate one variant: MT-Bench and AlpacaEval with the judge, the judge-free reference likelihood.",
    ),
    StageSpec(
        "report", ("judge_calibration", "evaluation_report"), "Calibrate the judge; compare the variants side by side."
    ),
)
STAGE_NAMES: tuple[str, ...] = tuple(stage.name for stage in STAGES)


def stage(name: str) -> StageSpec:
    """The stage called ``name``; KeyError naming the stages otherwise."""
    for spec in STAGES:
        if spec.name == name:
            return spec
    raise KeyError(f"{name!r} is no stage; the stages are {list(STAGE_NAMES)}")


def stage_job(spec: StageSpec) -> dg.UnresolvedAssetJobDefinition:
    """The stage's asset job: its assets and their checks (``AssetSelection.assets`` selects both)."""
    return dg.define_asset_job(
        spec.job_name,
        selection=dg.AssetSelection.assets(*spec.assets),
        description=f"Stage `{spec.name}` of `nuggets demo` / `run` / `study`: {spec.description}",
        tags={"nuggets/stage": spec.name},
    )


STAGE_JOBS: list[dg.UnresolvedAssetJobDefinition] = [stage_job(spec) for spec in STAGES]

__all__ = ["JOB_PREFIX", "STAGES", "STAGE_JOBS", "STAGE_NAMES", "StageSpec", "stage", "stage_job"]
