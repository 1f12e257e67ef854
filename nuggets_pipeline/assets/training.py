"""Stage 4: fine-tune the training model on each variant: the golden subset, same-size bottom and random controls,
or the whole pool."""

import hashlib
from pathlib import Path

import dagster as dg
import pandas as pd
from pydantic import Field

from nuggets_pipeline import metadata as md
from nuggets_pipeline.assets.scoring import scored_shards
from nuggets_pipeline.core.selection import select_bottom
from nuggets_pipeline.core.sft_data import random_subset
from nuggets_pipeline.core.training import PROFILES, TrainingError, get_profile, train_sft
from nuggets_pipeline.partitions import random_seed_offset, training_variants
from nuggets_pipeline.resources import ModelResource, WarehouseResource


def subset_hash(frame: pd.DataFrame) -> str:
    return hashlib.sha256("\n".join(sorted(frame["id"])).encode()).hexdigest()[:16]


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
    random_seed: int = Field(default=0, description="seed of `random`; `random-N` draws with seed + N")
    full_limit: int | None = Field(default=None, gt=0, description="cap the `full` variant (None: whole pool)")

    def training_config(self):  # type: ignore[no-untyped-def]
        overrides = {
            k: v
            for k, v in self.model_dump().items()
            if k not in ("profile", "random_seed", "full_limit") and v is not None
        }
        return get_profile(self.profile, **overrides)


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
    training_model: ModelResource,
    warehouse: WarehouseResource,
) -> dg.MaterializeResult:
    variant = context.partition_key
    scored = scored_shards(warehouse.warehouse()) if variant == "bottom" else None
    examples = variant_examples(variant, golden_subset, candidates, config, scored)
    if examples.empty:
        raise dg.Failure(
            f"variant {variant!r} has no examples to train on (the golden subset is empty): "
            "lower the selection threshold or score more candidates"
        )
    digest = subset_hash(examples)
    output = finetuned_dir(warehouse.root(), variant)
    context.log.info(f"fine-tuning {training_model.model} on {len(examples)} examples ({variant}, subset {digest})")
    try:
        result = train_sft(
            training_model.model, examples, output, config.training_config(), variant, digest, log=context.log.info
        )
    except TrainingError as error:
        raise dg.Failure(str(error)) from error
    losses = pd.DataFrame(result.losses, columns=["step", "loss"])
    return dg.MaterializeResult(
        metadata={
            "checkpoint": dg.MetadataValue.path(str(result.output_path)),
            "base_model": training_model.model,
            "variant": variant,
            "subset_hash": digest,
            "examples": len(examples),
            "examples_seen": result.examples_seen,
            "train_tokens": result.train_tokens,
            "final_loss": result.final_loss if result.final_loss is not None else float("nan"),
            "steps": result.global_step,
            "resumed_from_step": result.resumed_from_step,
            "overlong_examples": result.overlong,
            "wall_s": result.wall_seconds,
            "tokens_per_s": result.tokens_per_second,
            "examples_per_s": result.examples_per_second,
            "loss_curve": loss_plot(losses, warehouse.root() / "plots" / f"loss_{variant}.png"),
            "losses": md.table(losses),
        },
        data_version=dg.DataVersion(digest),
    )


def loss_plot(losses: pd.DataFrame, path: Path) -> dg.MetadataValue:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3))
    axis.plot(losses["step"], losses["loss"], marker="o", color="#4f6bed")
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("training loss")
    axis.set_title(path.stem)
    value = md.save_plot(figure, path)
    plt.close(figure)
    return value
