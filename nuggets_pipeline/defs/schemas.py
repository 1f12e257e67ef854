"""Pandera schemas of every table the pipeline stores (assets use them as Dagster types), and the field map that
reads a source file's rows into the instructions table."""

from __future__ import annotations

import warnings

import dagster as dg
import pandera.pandas as pa
from dagster_pandera import pandera_schema_to_dagster_type
from pandera.typing import Series
from pydantic import Field

from nuggets_pipeline.core.data import FieldMap

ID_PATTERN = r"^[0-9a-f]{16}$"


class FieldMapConfig(dg.Config):
    """Which source fields hold an example (``core.data.FieldMap``) and the longest example kept: shared by the
    base pool's ingestion and every incoming batch, so both read a file the same way."""

    instruction_field: str = "instruction"
    input_field: str = "input"
    output_field: str = "output"
    conversations_field: str = Field(default="conversations", description="ShareGPT-style turns, if present")
    max_chars: int = Field(default=16_384, gt=0, description="longer examples are quarantined, never cut")

    def field_map(self) -> FieldMap:
        return FieldMap(self.instruction_field, self.input_field, self.output_field, self.conversations_field)


class InstructionsSchema(pa.DataFrameModel):
    """The normalised instruction pool: one row per unique example."""

    id: Series[str] = pa.Field(str_matches=ID_PATTERN, unique=True, description="content hash of the example")
    instruction: Series[str] = pa.Field(str_length={"min_value": 1}, description="whitespace-stripped")
    input: Series[str] = pa.Field(description="optional context; empty string when absent")
    output: Series[str] = pa.Field(str_length={"min_value": 1}, description="the response")
    source: Series[str] = pa.Field(description="file (or hub id) the row came from")
    row_number: Series[int] = pa.Field(ge=0, description="row index inside its source")

    class Config:
        strict = True
        coerce = False


class QuarantineSchema(pa.DataFrameModel):
    """Rows that were not ingested, with the reason and the raw text."""

    source: Series[str]
    row_number: Series[int] = pa.Field(ge=0)
    reason: Series[str] = pa.Field(str_length={"min_value": 1})
    raw: Series[str]

    class Config:
        strict = True


class AnchorSetSchema(pa.DataFrameModel):
    id: Series[str] = pa.Field(str_matches=ID_PATTERN, unique=True)
    instruction: Series[str] = pa.Field(str_length={"min_value": 1})
    input: Series[str]
    output: Series[str] = pa.Field(str_length={"min_value": 1})
    source: Series[str]
    cluster: Series[int] = pa.Field(ge=-1, description="KMeans cluster, -1 for random or file anchors")
    cluster_size: Series[int] = pa.Field(ge=0)

    class Config:
        strict = True


class CandidatesSchema(InstructionsSchema):
    shard: Series[str] = pa.Field(str_matches=r"^[a-z0-9]+-\d{3}$", description="scoring partition")


class ZeroShotSchema(pa.DataFrameModel):
    anchor_id: Series[str] = pa.Field(str_matches=ID_PATTERN, unique=True)
    logprob_sum: Series[float] = pa.Field(le=0)
    logprob_mean: Series[float] = pa.Field(le=0)
    response_tokens: Series[int] = pa.Field(ge=1)
    prompt_tokens: Series[int] = pa.Field(ge=1)
    truncated: Series[bool]
    model_fingerprint: Series[str]
    anchor_set_hash: Series[str]


class OneShotScoresSchema(pa.DataFrameModel):
    candidate_id: Series[str] = pa.Field(str_matches=ID_PATTERN, unique=True)
    shard: Series[str]
    golden_score: Series[float] = pa.Field(
        ge=0, le=1, nullable=True, description="NaN when decision mode settled early; adaptive: the estimate"
    )
    wins: Series[int] = pa.Field(ge=0)
    anchors_scored: Series[int] = pa.Field(ge=0)
    n_anchors: Series[int] = pa.Field(ge=1)
    verdict: Series[str] = pa.Field(
        isin=["exact", "accept", "reject", "adaptive"],
        description="exact: every anchor; accept/reject: decision mode stopped; adaptive: refinement settled it early",
    )
    mean_delta: Series[float] = pa.Field(nullable=True)
    median_delta: Series[float] = pa.Field(nullable=True)
    model_fingerprint: Series[str]
    anchor_set_hash: Series[str]

    @pa.dataframe_check
    def wins_within_anchors(cls, frame):
        return frame["wins"] <= frame["anchors_scored"]


class GoldenSubsetSchema(pa.DataFrameModel):
    id: Series[str] = pa.Field(str_matches=ID_PATTERN, unique=True)
    instruction: Series[str] = pa.Field(str_length={"min_value": 1})
    input: Series[str]
    output: Series[str] = pa.Field(str_length={"min_value": 1})
    golden_score: Series[float] = pa.Field(ge=0, le=1, nullable=True)
    # Provenance, on every row so the subset carries it wherever it is read: what the scores were computed with.
    scores_fingerprint: Series[str] = pa.Field(description="scoring fingerprint of the scores it was selected from")
    anchor_set_hash: Series[str] = pa.Field(description="anchor set those scores were computed against")


class IFDScoresSchema(pa.DataFrameModel):
    """Instruction-following difficulty of every candidate (core.ifd): the cheap selector beside NUGGETS."""

    candidate_id: Series[str] = pa.Field(str_matches=ID_PATTERN, unique=True)
    conditioned_nll: Series[float] = pa.Field(ge=0, description="mean NLL per response token given the prompt")
    direct_nll: Series[float] = pa.Field(ge=0, description="mean NLL per response token, BOS alone before it")
    ifd: Series[float] = pa.Field(ge=0, description="conditioned / direct; >= 1: the prompt does not help")
    response_tokens: Series[int] = pa.Field(ge=1)
    prompt_tokens: Series[int] = pa.Field(ge=1)
    truncated: Series[bool]
    model_fingerprint: Series[str] = pa.Field(description="scoring fingerprint the IFD was computed with")


class IFDSubsetSchema(pa.DataFrameModel):
    """The IFD selection: the highest-IFD candidates below the cap, ranked."""

    id: Series[str] = pa.Field(str_matches=ID_PATTERN, unique=True)
    instruction: Series[str] = pa.Field(str_length={"min_value": 1})
    input: Series[str]
    output: Series[str] = pa.Field(str_length={"min_value": 1})
    ifd: Series[float] = pa.Field(ge=0)
    ifd_rank: Series[int] = pa.Field(ge=1)
    model_fingerprint: Series[str]


# What the warehouse checks a stored table against when it is read back (core.storage.Warehouse.read_file).
TABLE_SCHEMAS: dict[str, type[pa.DataFrameModel]] = {
    "instructions": InstructionsSchema,
    "quarantined_instructions": QuarantineSchema,
    "anchor_set": AnchorSetSchema,
    "candidates": CandidatesSchema,
    "candidate_increments": CandidatesSchema,
    "quarantined_increments": QuarantineSchema,
    "zero_shot_losses": ZeroShotSchema,
    "one_shot_scores": OneShotScoresSchema,
    "golden_subset": GoldenSubsetSchema,
    "ifd_scores": IFDScoresSchema,
    "ifd_subset": IFDSubsetSchema,
}

# dagster-pandera marks the converter beta; the types it builds are what the UI shows as columns and checks.
warnings.filterwarnings("ignore", category=dg.BetaWarning, module=__name__)
InstructionsType = pandera_schema_to_dagster_type(InstructionsSchema)
QuarantineType = pandera_schema_to_dagster_type(QuarantineSchema)
AnchorSetType = pandera_schema_to_dagster_type(AnchorSetSchema)
CandidatesType = pandera_schema_to_dagster_type(CandidatesSchema)
GoldenSubsetType = pandera_schema_to_dagster_type(GoldenSubsetSchema)
IFDScoresType = pandera_schema_to_dagster_type(IFDScoresSchema)
IFDSubsetType = pandera_schema_to_dagster_type(IFDSubsetSchema)
