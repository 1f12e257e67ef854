"""Stage 4: fine-tune the training model on each variant: the golden subset, same-size bottom and random controls,
or the whole pool."""

import sys
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
import torch
from dagster._core.errors import DagsterPipesExecutionError  # not exported at the top level in 1.13
from pydantic import Field, field_validator

from nuggets_pipeline.core.devices import DeviceUnavailableError, available_devices
from nuggets_pipeline.core.devices import claim as claim_devices
from nuggets_pipeline.core.ids import ids_hash
from nuggets_pipeline.core.incoming import with_increments
from nuggets_pipeline.core.paths import REPO_ROOT
from nuggets_pipeline.core.score_tables import current_scores
from nuggets_pipeline.core.selection import select_bottom
from nuggets_pipeline.core.sft_data import random_subset
from nuggets_pipeline.core.training import PROFILES, TrainingError, get_profile, train_sft
from nuggets_pipeline.core.training_launch import LAUNCH_MODULE, config_to_json
from nuggets_pipeline.defs import metadata as md
from nuggets_pipeline.defs.assets.scoring import current_provenance
from nuggets_pipeline.defs.partitions import random_seed_offset, training_variants
from nuggets_pipeline.defs.resources import ModelResource, WarehouseResource
from nuggets_pipeline.defs.schemas import CandidatesSchema, OneShotScoresSchema


def finetuned_dir(home: Path, variant: str) -> Path:
    """Where a variant's run lives; its loadable Hugging Face model is the `model` folder inside."""
    return home / "finetuned" / variant


class TrainingAssetConfig(dg.Config):
    profile: str = Field(default="cpu-demo", description=f"named profile: {', '.join(sorted(PROFILES))}")
    epochs: float | None = Field(default=None, gt=0, description="override the profile's epochs")
    learning_rate: float | None = Field(default=None, gt=0)
    max_steps: int | None = Field(default=None, gt=0, description="stop after this many optimizer steps")
    max_length: int | None = Field(default=None, gt=1)
    per_device_batch_size: int | None = Field(default=None, gt=0)
    gradient_accumulation_steps: int | None = Field(default=None, gt=0)
    method: str | None = Field(default=None, description="full or lora")
    dtype: str | None = Field(default=None, description="float32 or bfloat16")
    padding_free: bool | None = Field(
        default=None, description="examples end to end in one row instead of padded: same loss, less compute"
    )
    save_steps: int | None = Field(default=None, gt=0, description="optimizer steps between resumable checkpoints")
    random_seed: int = Field(default=0, description="seed of `random`; `random-N` draws with seed + N")
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

    @field_validator("launcher")
    @classmethod
    def _known_launcher(cls, value: str | None) -> str | None:
        if value is not None and value not in LAUNCHERS:
            raise ValueError(f"launcher must be one of {list(LAUNCHERS)}, got {value!r}")
        return value

    def training_config(self):  # type: ignore[no-untyped-def]
        not_training = {"profile", "random_seed", "full_limit", "launcher", "num_processes", "accelerate_config"}
        overrides = {k: v for k, v in self.model_dump().items() if k not in not_training and v is not None}
        return get_profile(self.profile, **overrides)

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
) -> pd.DataFrame:
    """The examples of one variant. golden, bottom and every random control have the golden subset's size;
    ``scored`` (the one_shot_scores rows) is needed for `bottom` only."""
    columns = ["id", "instruction", "input", "output"]
    if variant == "golden":
        return golden[columns]
    seed_offset = random_seed_offset(variant)
    if golden.empty and (variant == "bottom" or seed_offset is not None):
        raise dg.Failure(
            f"the golden subset is empty, so there is no size for the {variant!r} control to match: "
            "lower the selection threshold or score more candidates"
        )
    if seed_offset is not None:
        return random_subset(pool[columns], len(golden), config.random_seed + seed_offset)
    if variant == "bottom":
        return bottom_examples(len(golden), pool[columns], scored)
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


def check_subset_provenance(subset: pd.DataFrame, zero_shot_losses: pd.DataFrame, anchor_set: pd.DataFrame) -> None:
    """Refuse a golden subset selected from scores of another model, template, separator or anchor set."""
    fingerprint, anchors = current_provenance(zero_shot_losses, anchor_set)
    if not {"scores_fingerprint", "anchor_set_hash"} <= set(subset.columns):
        raise dg.Failure("the stored golden_subset carries no provenance (an older build): materialise golden_subset")
    found = sorted(set(zip(subset["scores_fingerprint"], subset["anchor_set_hash"], strict=True)))
    if found != [(fingerprint, anchors)] and len(subset):
        raise dg.Failure(
            f"the stored golden_subset was selected from stale scores (fingerprint, anchor set) {found}; the current "
            f"ones are ({fingerprint}, {anchors}). Re-score one_shot_scores and materialise golden_subset first.",
            metadata={"subset_provenance": str(found), "scoring_fingerprint": fingerprint, "anchor_set_hash": anchors},
        )


@dg.asset(
    group_name="training",
    partitions_def=training_variants,
    pool="model",
    code_version="sft-v1",
    description="A Hugging Face checkpoint fine-tuned (Alpaca template, loss on the response) on one variant.",
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
    variant = context.partition_key
    scored = None
    if variant != "full":  # every other variant is sized by (or is) the golden subset: it must be current
        check_subset_provenance(golden_subset, zero_shot_losses, anchor_set)
    if variant == "bottom":  # the lowest-scored candidates, read only from current scores of current shards
        store = warehouse.warehouse()
        fingerprint, anchors = current_provenance(zero_shot_losses, anchor_set)
        scored = current_scores(
            store, with_increments(candidates, store, CandidatesSchema), fingerprint, anchors, OneShotScoresSchema
        )
    examples = variant_examples(variant, golden_subset, candidates, config, scored)
    if examples.empty:
        raise dg.Failure(
            f"variant {variant!r} has no examples to train on (the golden subset is empty): "
            "lower the selection threshold or score more candidates"
        )
    digest = ids_hash(examples["id"])
    output = finetuned_dir(warehouse.root(), variant)
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
            "loss_curve": loss_plot(losses, warehouse.root() / "plots" / f"loss_{variant}.png"),
            "losses": md.table(losses),
        },
        data_version=dg.DataVersion(digest),
    )


def launch_command(config: TrainingAssetConfig, launcher: str, processes: int | None, script: list[str]) -> list[str]:
    """The launcher's command line; the launched module is the same for both (nuggets_pipeline.core.training_launch)."""
    if launcher == "accelerate":
        path = Path(config.accelerate_config)
        path = path if path.is_absolute() else REPO_ROOT / path
        if not path.is_file():
            raise dg.Failure(f"accelerate_config {config.accelerate_config!r}: no such file ({path})")
        count = ["--num_processes", str(processes)] if processes else []
        precision = ["--mixed_precision", "bf16" if config.training_config().dtype == "bfloat16" else "no"]
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(path), *count, *precision]
        return [*launch, "-m", LAUNCH_MODULE, *script]
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes or 1}"]
    return [*launch, "-m", LAUNCH_MODULE, *script]


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
    frame = output / "examples.parquet"
    examples.reset_index(drop=True).to_parquet(frame)
    script = ["--base-model", training_model.model, "--examples", str(frame), "--output", str(output)]
    script += ["--variant", variant, "--subset-hash", digest, "--config-json", config_to_json(config.training_config())]
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
