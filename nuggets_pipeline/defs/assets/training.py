"""Stage 4: fine-tune the training model on each variant: the golden subset; same-size bottom and random controls
and the cheap baselines (longest responses, a length-matched sample, the top by IFD); the whole pool; and `base`,
the untouched model, recorded without training so that it is evaluated like the others."""

import sys
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
import torch
from dagster._core.errors import DagsterPipesExecutionError  # not exported at the top level in 1.13
from pydantic import Field, ValidationInfo, field_validator

from nuggets_pipeline.core.devices import DeviceUnavailableError, available_devices
from nuggets_pipeline.core.devices import claim as claim_devices
from nuggets_pipeline.core.ids import ids_hash
from nuggets_pipeline.core.ifd import select_by_ifd
from nuggets_pipeline.core.paths import REPO_ROOT
from nuggets_pipeline.core.selection import select_bottom, select_length_matched, select_longest
from nuggets_pipeline.core.settings import require_one_of
from nuggets_pipeline.core.sft_data import random_subset
from nuggets_pipeline.core.storage import Warehouse, write_parquet_atomic
from nuggets_pipeline.core.training import (
    ENTRY_MODULE,
    PROFILES,
    TrainingConfig,
    TrainingError,
    get_profile,
    profile_settings,
    train_sft,
)
from nuggets_pipeline.core.versions import (
    ScoringVersion,
    StaleVersionError,
    current_pool,
    current_scores,
    current_version,
)
from nuggets_pipeline.defs import metadata as md
from nuggets_pipeline.defs.execution import model_step
from nuggets_pipeline.defs.partitions import UNTRAINED, random_seed_offset, training_variants
from nuggets_pipeline.defs.resources import ModelResource, WarehouseResource
from nuggets_pipeline.defs.schemas import CandidatesSchema, IFDScoresSchema, OneShotScoresSchema

IFD_SCORES_TABLE = "ifd_scores"  # by key: an asset module never imports another
# Added to random_seed for the length-matched sample: a seed stream no random-N control uses.
LENGTH_MATCHED_SEED = 1_000

# The fields of TrainingAssetConfig that are not training settings; every other one overrides the profile's field
# of the same name (core.training.TrainingConfig: TRL's SFTConfig names).
NOT_TRAINING_SETTINGS = frozenset(
    {"profile", "random_seed", "full_limit", "max_ifd", "launcher", "num_processes", "accelerate_config"}
)


class TrainingAssetConfig(dg.Config):
    """A training profile (an SFTConfig preset of core.training.PROFILES) and the fields set on top of it; a field
    left None keeps the profile's value."""

    profile: str = Field(default="cpu-demo", description=f"training profile: {', '.join(sorted(PROFILES))}")
    num_train_epochs: float | None = Field(default=None, gt=0, description="override the profile's epochs")
    learning_rate: float | None = Field(default=None, gt=0)
    max_steps: int | None = Field(default=None, gt=0, description="stop after this many optimizer steps")
    max_length: int | None = Field(default=None, gt=1)
    per_device_train_batch_size: int | None = Field(default=None, gt=0)
    gradient_accumulation_steps: int | None = Field(default=None, gt=0)
    method: str | None = Field(default=None, description="full or lora")
    bf16: bool | None = Field(default=None, description="bf16 autocast over float32 master weights (else float32)")
    padding_free: bool | None = Field(
        default=None, description="examples end to end in one row instead of padded: same loss, less compute"
    )
    save_steps: int | None = Field(default=None, gt=0, description="optimizer steps between resumable checkpoints")
    random_seed: int = Field(default=0, description="seed of `random`; `random-N` draws with seed + N")
    max_ifd: float = Field(
        default=1.0,
        gt=0,
        description="ifd variant: drop IFD at or above this (1: the prompt does not help; Cherry LLM)",
    )
    full_limit: int | None = Field(default=None, gt=0, description="cap the `full` variant (None: whole pool)")
    launcher: str | None = Field(
        default=None,
        description="single (train in this step's process), accelerate or torchrun (several processes, started and "
        "watched through Dagster Pipes). None: accelerate for the paper profile, single otherwise",
    )
    num_processes: int | None = Field(
        default=None, gt=0, description="processes of a launched run (None: one per GPU, else the accelerate config's)"
    )
    accelerate_config: str = Field(
        default="deploy/accelerate/fsdp_8gpu.yaml", description="accelerate launcher: config file (repository-relative)"
    )

    @field_validator("launcher", "profile")
    @classmethod
    def _known_choice(cls, value: str | None, info: ValidationInfo) -> str | None:
        choices = {"launcher": LAUNCHERS, "profile": sorted(PROFILES)}
        # launcher None: chosen from the profile (resolved_launcher).
        return None if value is None else require_one_of(str(info.field_name), value, choices[str(info.field_name)])

    def overrides(self) -> dict[str, Any]:
        """The training settings this config sets, by TrainingConfig (SFTConfig) name."""
        return {k: v for k, v in self.model_dump().items() if k not in NOT_TRAINING_SETTINGS and v is not None}

    def training_config(self) -> TrainingConfig:
        return get_profile(self.profile, **self.overrides())

    def training_flags(self) -> list[str]:
        """The same settings as command-line flags of the training entry point (a launched run parses them)."""
        flags = ["--profile", self.profile]
        for name, value in self.overrides().items():
            flags += [f"--{name}", str(value).lower() if isinstance(value, bool) else str(value)]
        return flags

    def resolved_launcher(self) -> str:
        if self.launcher is not None:
            return self.launcher
        return "accelerate" if self.profile == "paper" else "single"


LAUNCHERS = ("single", "accelerate", "torchrun")


def variant_examples(
    variant: str,
    golden: pd.DataFrame,
    pool: pd.DataFrame,
    config: TrainingAssetConfig,
    scored: pd.DataFrame | None = None,
    ifd: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """The examples of one variant. Every variant but full has the golden subset's size; ``pool`` is the pool
    golden was selected from (``core.versions.current_pool``: the base candidates and every incoming batch), so
    every control and baseline is drawn from it too; ``scored`` (its current scores) is for `bottom` only, ``ifd``
    (the pool's current IFD scores) for `ifd` only."""
    columns = ["id", "instruction", "input", "output"]
    if variant == "golden":
        return golden[columns]
    seed_offset = random_seed_offset(variant)
    if golden.empty and variant != "full":
        raise dg.Failure(
            f"the golden subset is empty, so there is no size for the {variant!r} control to match: "
            "lower the selection threshold or score more candidates"
        )
    if seed_offset is not None:
        return random_subset(pool[columns], len(golden), config.random_seed + seed_offset)
    if variant == "bottom":
        return bottom_examples(len(golden), pool[columns], scored)
    if variant == "longest":
        return select_longest(pool[columns], len(golden))
    if variant == "length-matched":
        # Its own seed stream, so it never coincides with a random control drawn with the same seed.
        return select_length_matched(pool[columns], golden[columns], seed=config.random_seed + LENGTH_MATCHED_SEED)
    if variant == "ifd":
        return ifd_examples(len(golden), pool[columns], ifd, config.max_ifd)
    full = pool[columns].sort_values("id")
    return full.head(config.full_limit) if config.full_limit else full


def bottom_examples(size: int, pool: pd.DataFrame, scored: pd.DataFrame | None) -> pd.DataFrame:
    """The ``size`` lowest-scored candidates of the pool (the mirror image of a top-k golden subset)."""
    if scored is None or scored.empty:
        raise dg.Failure("the bottom variant needs one_shot_scores: score the candidate shards first")
    scored = scored[scored["candidate_id"].isin(set(pool["id"]))]
    fingerprints = scored[["model_fingerprint", "anchor_set_hash"]].drop_duplicates()
    if len(fingerprints) > 1 or scored["candidate_id"].duplicated().any():
        raise dg.Failure(
            "one_shot_scores mixes scoring models or anchor sets for this pool: re-score every shard before "
            "training the bottom variant"
        )
    try:
        chosen = select_bottom(scored, size)
    except ValueError as error:
        raise dg.Failure(f"cannot build the bottom variant: {error}") from error
    return pool.set_index("id").loc[chosen["candidate_id"]].reset_index()


def ifd_examples(size: int, pool: pd.DataFrame, ifd: pd.DataFrame | None, max_ifd: float) -> pd.DataFrame:
    """The ``size`` highest-IFD candidates of the pool below ``max_ifd`` (``core.ifd.select_by_ifd``)."""
    if ifd is None or ifd.empty:
        raise dg.Failure("the ifd variant needs ifd_scores: materialise ifd_scores (stage `ifd`) first")
    missing = set(pool["id"]) - set(ifd["candidate_id"])
    if missing:
        raise dg.Failure(
            f"ifd_scores lacks {len(missing)} candidates of the pool (e.g. {sorted(missing)[:3]}): new data arrived "
            "after it was computed; materialise ifd_scores again"
        )
    chosen = select_by_ifd(ifd[ifd["candidate_id"].isin(pool["id"])], top_k=size, max_ifd=max_ifd)
    if len(chosen) < size:
        raise dg.Failure(
            f"only {len(chosen)} candidates have an IFD below {max_ifd}, fewer than the golden subset's {size}: the "
            "ifd variant would not be the same size as the others (raise max_ifd to rank them all)"
        )
    return pool.set_index("id").loc[chosen["candidate_id"]].reset_index()


def current_ifd(store: Warehouse, version: ScoringVersion) -> pd.DataFrame:
    """The stored IFD scores, refused when they were computed with another scoring model, template or cap."""
    ifd = store.read(IFD_SCORES_TABLE, schema=IFDScoresSchema, allow_missing=True)
    stale = sorted(set(ifd["model_fingerprint"]) - {version.fingerprint})
    if stale:
        raise dg.Failure(
            f"ifd_scores was computed with scoring fingerprint {stale}, the current one is {version.fingerprint}: "
            "materialise ifd_scores again"
        )
    return ifd


def training_examples(
    variant: str,
    golden_subset: pd.DataFrame,
    candidates: pd.DataFrame,
    anchor_set: pd.DataFrame,
    zero_shot_losses: pd.DataFrame,
    store: Warehouse,
    config: TrainingAssetConfig,
) -> pd.DataFrame:
    """A variant's examples, from the pool golden was selected from (``core.versions.current_pool``: the base
    candidates and every incoming batch that joined them), so the controls see the data golden saw."""
    pool = current_pool(candidates, store, CandidatesSchema)
    scored = None
    if variant != "full":  # every other variant is sized by (or is) the golden subset: it must be current
        with md.failure_on(StaleVersionError):
            version = current_version(zero_shot_losses, anchor_set)
            version.check_subset(golden_subset)
        if variant == "bottom":  # the lowest-scored candidates, read only from current scores of current shards
            scored = current_scores(store, pool, version, OneShotScoresSchema)
        if variant == "ifd":
            return variant_examples(variant, golden_subset, pool, config, ifd=current_ifd(store, version))
    return variant_examples(variant, golden_subset, pool, config, scored)


@model_step(
    group_name="training",
    partitions_def=training_variants,
    # Read from the warehouse by the `ifd` variant only (the IFD stage runs only when a plan trains it).
    deps=[dg.AssetDep(IFD_SCORES_TABLE)],
    code_version="sft-trl-v1",
)
def finetuned_model(
    context: dg.AssetExecutionContext,
    config: TrainingAssetConfig,
    golden_subset: pd.DataFrame,
    candidates: pd.DataFrame,
    anchor_set: pd.DataFrame,
    zero_shot_losses: pd.DataFrame,
    training_model: ModelResource,
    warehouse: WarehouseResource,
    pipes_subprocess_client: dg.PipesSubprocessClient,
) -> dg.MaterializeResult:
    """A Hugging Face checkpoint fine-tuned (Alpaca template, loss on the response) on one variant."""
    variant = context.partition_key
    if variant == UNTRAINED:
        return untrained(context, training_model)
    store = warehouse.warehouse()
    examples = training_examples(variant, golden_subset, candidates, anchor_set, zero_shot_losses, store, config)
    if examples.empty:
        raise dg.Failure(
            f"variant {variant!r} has no examples to train on (the golden subset is empty): "
            "lower the selection threshold or score more candidates"
        )
    digest = ids_hash(examples["id"])
    output = store.finetuned_dir(variant)
    launcher = config.resolved_launcher()
    context.log.info(
        f"fine-tuning {training_model.model} on {len(examples)} examples ({variant}, subset {digest}), "
        f"launcher {launcher}"
    )
    if launcher == "single":
        device = training_model.device_used()  # claims a GPU of its own where the machine has several
        try:
            result = train_sft(
                training_model.model, examples, output, config.training_config(), variant, digest, log=context.log.info
            )
        except TrainingError as error:
            raise dg.Failure(str(error)) from error
        summary = result.to_dict()
    else:
        summary, device = launch_training(
            context, config, launcher, training_model, examples, output, variant, digest, pipes_subprocess_client
        )
    losses = pd.DataFrame([tuple(pair) for pair in summary["losses"]], columns=["step", "loss"])
    final_loss = summary["final_loss"]
    return dg.MaterializeResult(
        metadata={
            "checkpoint": dg.MetadataValue.path(str(summary["output_path"])),
            "base_model": training_model.model,
            "variant": variant,
            "subset_hash": digest,
            "launcher": launcher,
            "processes": int(summary["world_size"]),
            "device": device,
            "examples": len(examples),
            "examples_seen": int(summary["examples_seen"]),
            "train_tokens": int(summary["train_tokens"]),
            "first_loss": float(losses["loss"].iloc[0]) if len(losses) else float("nan"),
            "final_loss": float(final_loss) if final_loss is not None else float("nan"),
            "steps": int(summary["global_step"]),
            "resumed_from_step": int(summary["resumed_from_step"]),
            "overlong_examples": int(summary["overlong"]),
            "wall_s": float(summary["wall_seconds"]),
            "tokens_per_s": float(summary["tokens_per_second"]),
            "examples_per_s": float(summary["examples_per_second"]),
            "loss_curve": loss_plot(losses, store.plot_path(f"loss_{variant}")),
            "losses": md.table(losses),
        },
        data_version=dg.DataVersion(digest),
    )


def untrained(context: dg.AssetExecutionContext, training_model: ModelResource) -> dg.MaterializeResult:
    """Variant `base`: no training; the evaluation assets load the training model itself. Recorded like a
    fine-tune so the graph, the resume rule and the report treat it as any other variant."""
    context.log.info(f"variant base: {training_model.model} untouched, nothing to train")
    return dg.MaterializeResult(
        metadata={"base_model": training_model.model, "variant": UNTRAINED, "trained": False, "examples": 0},
        data_version=dg.DataVersion(f"untrained-{training_model.model}"),
    )


def launch_command(config: TrainingAssetConfig, launcher: str, processes: int | None, script: list[str]) -> list[str]:
    """The launcher's command line; both start the training entry point (python -m nuggets_pipeline.core.training)
    once per process."""
    if launcher == "accelerate":
        path = Path(config.accelerate_config)
        path = path if path.is_absolute() else REPO_ROOT / path
        if not path.is_file():
            raise dg.Failure(f"accelerate_config {config.accelerate_config!r}: no such file ({path})")
        count = ["--num_processes", str(processes)] if processes else []
        # Read from the settings, not a built TrainingConfig: building one sets up accelerate's state (and a CUDA
        # context) in this process, whose GPUs belong to the launched run.
        bf16 = profile_settings(config.profile, **config.overrides())["bf16"]
        precision = ["--mixed_precision", "bf16" if bf16 else "no"]
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(path), *count, *precision]
        return [*launch, "-m", ENTRY_MODULE, *script]
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes or 1}"]
    return [*launch, "-m", ENTRY_MODULE, *script]


def launch_training(
    context: dg.AssetExecutionContext,
    config: TrainingAssetConfig,
    launcher: str,
    training_model: ModelResource,
    examples: pd.DataFrame,
    output: Path,
    variant: str,
    digest: str,
    client: dg.PipesSubprocessClient,
) -> tuple[dict[str, Any], str]:
    """Multi-process training through Dagster Pipes: its progress lines are this run's log events, its stdout and
    stderr this step's compute logs, and its summary (losses, throughput, checkpoint) comes back as a message."""
    output.mkdir(parents=True, exist_ok=True)
    frame = write_parquet_atomic(examples.reset_index(drop=True), output / "examples.parquet")
    # The exact frame selected here (--exact_examples: not re-ingested) and the same profile and overrides as the
    # single-process path, so both train on the same data with the same settings.
    script = ["--base_model", training_model.model, "--examples", str(frame), "--exact_examples", "true"]
    script += ["--output_dir", str(output), "--variant", variant, "--subset_hash", digest, *config.training_flags()]
    processes = config.num_processes
    gpus = available_devices()
    if processes is None and gpus:
        processes = len(gpus)
    environment: dict[str, str] = {}
    if not torch.cuda.is_available():
        # Without it accelerate (and the Trainer) set up no process group on a CPU machine: every process would
        # train alone. With it they form a gloo group (DDP: FSDP sharding is not applied on CPU).
        environment["ACCELERATE_USE_CPU"] = "true"
    try:
        # The GPUs of a launched run are claimed like a scoring step's, all at once, and only they are visible to it.
        devices = claim_devices(
            training_model.device, count=processes or 1, label=f"finetuned_model {variant}", log=context.log.info
        )
    except DeviceUnavailableError as error:
        raise dg.Failure(str(error)) from error
    device = devices.name if devices is not None else f"cpu x{processes or 'config'}"
    command = launch_command(config, launcher, processes, script)
    context.log.info(f"launching {launcher} on {device}: {' '.join(command)}")
    try:
        if devices is not None:
            environment |= devices.child_environment()
        invocation = client.run(context=context, command=command, env=environment)
    except DagsterPipesExecutionError as error:
        raise dg.Failure(f"the {launcher} training run failed: {error}; its stderr is in this step's logs") from error
    finally:
        if devices is not None:
            devices.release()
    summaries = [m for m in invocation.get_custom_messages() if isinstance(m, dict) and "losses" in m]
    if not summaries:
        raise dg.Failure(f"the {launcher} training run ended without reporting a result")
    return summaries[-1], device


def loss_plot(losses: pd.DataFrame, path: Path) -> dg.MetadataValue:
    figure, axis = md.pyplot().subplots(figsize=(6, 3))
    axis.plot(losses["step"], losses["loss"], marker="o", color="#4f6bed")
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("training loss")
    axis.set_title(path.stem)
    return md.save_plot(figure, path)
