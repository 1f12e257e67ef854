"""Stage 2: the anchor set and the candidate pool that later stages score, split into shards."""

from pathlib import Path
from typing import Literal

import dagster as dg
import pandas as pd
from pydantic import Field

from nuggets_pipeline.core.anchors import (
    candidate_pool,
    file_anchors,
    kmeans_anchors,
    random_anchors,
)
from nuggets_pipeline.core.data import ingest
from nuggets_pipeline.core.embedding import embed_texts
from nuggets_pipeline.core.ids import ids_hash
from nuggets_pipeline.core.paths import KMEANS_100_ANCHORS, data_dir
from nuggets_pipeline.core.templates import get_template
from nuggets_pipeline.defs import metadata as md
from nuggets_pipeline.defs.execution import model_step
from nuggets_pipeline.defs.partitions import CANDIDATE_SHARDS
from nuggets_pipeline.defs.resources import ModelResource
from nuggets_pipeline.defs.schemas import AnchorSetSchema, AnchorSetType, CandidatesSchema, CandidatesType

BASE_BATCH = "base"


DEFAULT_ANCHORS = 16


class AnchorConfig(dg.Config):
    method: Literal["random", "kmeans", "file"] = Field(default="kmeans")
    n: int | None = Field(
        default=None,
        gt=0,
        description="anchors to choose (k for KMeans); default 16, or every row of the file for method=file",
    )
    seed: int = 0
    file: str = Field(default=KMEANS_100_ANCHORS, description="JSON/JSONL of examples, for method=file")
    kmeans_pool_size: int = Field(
        default=800, ge=0, description="embed a seeded sample of this many pool rows for KMeans (0 = all)"
    )
    embed_max_tokens: int = Field(default=256, gt=0, description="tokens of each text used for its embedding")


@model_step(  # KMeans embeds the pool with the scoring model
    group_name="anchors",
    dagster_type=AnchorSetType,
    code_version="anchors-v1",
)
def anchor_set(
    context: dg.AssetExecutionContext, config: AnchorConfig, instructions: pd.DataFrame, scoring_model: ModelResource
) -> dg.Output[pd.DataFrame]:
    """A small, diverse set of examples whose log-probs measure each candidate's one-shot effect."""
    extra: dict[str, dg.RawMetadataValue] = {}
    n = config.n or DEFAULT_ANCHORS  # for random and KMeans; method=file takes every row unless n is set
    if config.method == "random":
        choice = random_anchors(instructions, n, config.seed)
    elif config.method == "file":
        path = Path(config.file).expanduser()
        path = path if path.exists() else data_dir() / config.file
        loaded = ingest([path])
        if len(loaded.quarantined):
            context.log.warning(
                f"anchor file {path}: {len(loaded.quarantined)} rows quarantined {dict(loaded.reasons)}"
            )
        try:
            choice = file_anchors(loaded.instructions, config.n, config.seed)
        except ValueError as error:
            raise dg.Failure(f"anchor file {path}: {error}") from None
        extra["anchor_file"] = str(path)
    else:
        pool = instructions
        if 0 < config.kmeans_pool_size < len(pool):
            pool = pool.sample(n=config.kmeans_pool_size, random_state=config.seed)
        loaded_model = scoring_model.load()
        template = get_template(scoring_model.template)
        texts = [template.full(r.instruction, r.input, r.output) for r in pool.itertuples()]
        context.log.info(f"embedding {len(texts)} examples with {loaded_model.name} for KMeans (k={n})")
        report = md.progress_logger(context.log.info, "embedded {done}/{total}", parts=10)
        embeddings = embed_texts(loaded_model, texts, max_tokens=config.embed_max_tokens, progress=report)
        choice = kmeans_anchors(pool.reset_index(drop=True), embeddings, n, config.seed)
        extra["embedding_model"] = loaded_model.name
        extra["embedding_model_fingerprint"] = loaded_model.fingerprint
        extra["kmeans_pool_size"] = len(pool)
        extra["cluster_sizes"] = md.table(
            pd.DataFrame({"cluster": range(len(choice.cluster_sizes)), "size": choice.cluster_sizes})
        )
    anchors = choice.anchors
    AnchorSetSchema.validate(anchors)
    return md.table_output(
        anchors,
        {
            "method": choice.method,
            "anchor_set_hash": ids_hash(anchors["id"]),
            "preview": md.preview(anchors, ["id", "cluster", "cluster_size", "instruction", "output"], rows=10),
            "response_chars_mean": float(anchors["output"].str.len().mean()),
            **extra,
        },
        data_version=dg.DataVersion(ids_hash(anchors["id"])),
    )


class CandidatesConfig(dg.Config):
    shards: int = Field(default=4, gt=0, le=999, description="shards for the base pool (fixed once chosen)")
    limit: int | None = Field(
        default=None,
        ge=1,
        description="score only a stable pseudo-random slice of this many (None, the default: the whole pool, so the "
        "`full` training variant is the whole scored pool)",
    )


@dg.asset(
    group_name="anchors",
    dagster_type=CandidatesType,
    code_version="candidates-v1",
)
def candidates(
    context: dg.AssetExecutionContext, config: CandidatesConfig, instructions: pd.DataFrame, anchor_set: pd.DataFrame
) -> dg.Output[pd.DataFrame]:
    """The pool minus the anchors, each candidate assigned to a stable shard (a scoring partition)."""
    pool = candidate_pool(instructions, anchor_set, BASE_BATCH, config.shards, config.limit)
    CandidatesSchema.validate(pool)
    shards = sorted(pool["shard"].unique())
    known = set(context.instance.get_dynamic_partitions(CANDIDATE_SHARDS))
    new = [s for s in shards if s not in known]
    if new:
        context.instance.add_dynamic_partitions(CANDIDATE_SHARDS, new)
    sizes = pool.groupby("shard").size().rename("candidates").reset_index()
    context.log.info(f"{len(pool)} candidates in {len(shards)} shards ({len(new)} new shard partitions)")
    return md.table_output(
        pool,
        {
            "anchors_removed": int(instructions["id"].isin(set(anchor_set["id"])).sum()),
            "shards": md.table(sizes),
            "preview": md.preview(pool, ["id", "shard", "instruction"]),
        },
        data_version=dg.DataVersion(str(pd.util.hash_pandas_object(pool[["id", "shard"]], index=False).sum())),
    )
