"""Stage 4: fine-tune the training model on each variant: golden subset, a same-size random control, or all."""

import hashlib
from pathlib import Path

import dagster as dg
import pandas as pd
from pydantic import Field

from nuggets_pipeline import metadata as md
from nuggets_pipeline.assets.scoring import current_provenance
from nuggets_pipeline.core.sft_data import random_subset
from nuggets_pipeline.core.training import PROFILES, TrainingError, get_profile, train_sft
from nuggets_pipeline.partitions import training_variants
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
    random_seed: int = Field(default=0, description="seed of the random control sample")
    full_limit: int | None = Field(default=None, gt=0, description="cap the `full` variant (None: whole pool)")

    def training_config(self):  # type: ignore[no-untyped-def]
        overrides = {
            k: v
            for k, v in self.model_dump().items()
            if k not in ("profile", "random_seed", "full_limit") and v is not None
        }
        return get_profile(self.profile, **overrides)


def variant_examples(
    variant: str, golden: pd.DataFrame, pool: pd.DataFrame, config: TrainingAssetConfig
) -> pd.DataFrame:
    columns = ["id", "instruction", "input", "output"]
    if variant == "golden":
        return golden[columns]
    if golden.empty and variant == "random":
        raise dg.Failure(
            "the golden subset is empty, so there is no size for the random control to match: "
            "lower the selection threshold or score more candidates"
        )
    if variant == "random":
        return random_subset(pool[columns], len(golden), config.random_seed)
    full = pool[columns].sort_values("id")
    return full.head(config.full_limit) if config.full_limit else full


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
) -> dg.MaterializeResult:
    variant = context.partition_key
    if variant in ("golden", "random"):  # `random` takes its size from the golden subset
        check_subset_provenance(golden_subset, zero_shot_losses, anchor_set)
    examples = variant_examples(variant, golden_subset, candidates, config)
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
