"""Stage 1: the raw instruction pool and the rows that could not be used."""

import json
from pathlib import Path

import dagster as dg
import pandas as pd
from pydantic import Field

from nuggets_pipeline.core.data import HubOptions, ingest
from nuggets_pipeline.core.incoming import file_digest
from nuggets_pipeline.core.paths import ALPACA_CLEANED, data_dir
from nuggets_pipeline.defs import metadata as md
from nuggets_pipeline.defs.schemas import (
    FieldMapConfig,
    InstructionsSchema,
    InstructionsType,
    QuarantineSchema,
    QuarantineType,
)


class IngestConfig(FieldMapConfig):
    sources: list[str] = Field(
        default=[ALPACA_CLEANED],
        description="files (JSON, JSONL(.gz), Parquet, CSV), saved `datasets` folders or hub ids; relative "
        "paths are looked up in the working directory, then in the shipped data/ folder",
    )
    hub_split: str = Field(default="train", description="hub datasets: the split to read")
    hub_name: str | None = Field(default=None, description="hub datasets: the configuration (subset) name")
    hub_revision: str | None = Field(default=None, description="hub datasets: branch, tag or commit to pin")
    allow_symlinks: bool = Field(
        default=False,
        description="read a source that is a symbolic link (refused by default: a link may point at secrets); "
        "devices, FIFOs and /proc, /sys, /dev stay refused",
    )

    def resolved_sources(self) -> list[str]:
        resolved = []
        for source in self.sources:
            path = Path(source).expanduser()
            if not path.exists() and (data_dir() / source).exists():
                path = data_dir() / source
            resolved.append(str(path) if path.exists() else source)
        return resolved

    def hub_options(self) -> HubOptions:
        return HubOptions(self.hub_split, self.hub_name, self.hub_revision)


def source_files(sources: list[str]) -> dict[str, dict[str, object]]:
    """Local file sources (hub ids and folders are left out) with what identifies their content as read."""
    found: dict[str, dict[str, object]] = {}
    for source in sources:
        path = Path(source)
        if path.is_file():
            stat = path.stat()
            found[str(path.resolve())] = {
                "size": stat.st_size,
                "mtime_ns": stat.st_mtime_ns,
                "sha256": file_digest(path),
            }
    return found


@dg.multi_asset(
    outs={
        "instructions": dg.AssetOut(dagster_type=InstructionsType, description="normalised, de-duplicated pool"),
        "quarantined_instructions": dg.AssetOut(
            dagster_type=QuarantineType, description="rejected rows with their raw text, origin and reason"
        ),
    },
    group_name="ingestion",
    code_version="ingest-v1",
)
def ingest_instructions(context: dg.AssetExecutionContext, config: IngestConfig):
    sources = config.resolved_sources()
    result = ingest(
        sources, config.field_map(), config.max_chars, hub=config.hub_options(), allow_symlinks=config.allow_symlinks
    )
    instructions, quarantined = result.instructions, result.quarantined
    InstructionsSchema.validate(instructions)
    QuarantineSchema.validate(quarantined)
    lengths = instructions["instruction"].str.len() + instructions["input"].str.len() + instructions["output"].str.len()
    reasons = pd.DataFrame(sorted(result.reasons.items()), columns=["reason", "rows"])
    context.log.info(f"ingested {len(instructions)} rows, quarantined {len(quarantined)} from {sources}")
    yield md.table_output(
        instructions,
        {
            "quarantined": len(quarantined),
            "sources": ", ".join(sources),
            # What the re-scoring schedule re-reads: each local file with its size, mtime and content hash.
            "source_files": json.dumps(source_files(sources)),
            "preview": md.preview(instructions, ["id", "instruction", "input", "output"]),
            "length_histogram_chars": md.histogram_md(lengths, bins=12, label="characters"),
            "with_input_fraction": float((instructions["input"] != "").mean()),
        },
        output_name="instructions",
    )
    yield md.table_output(
        quarantined,
        {
            "by_reason": md.table(reasons),
            "preview": md.preview(quarantined, ["source", "row_number", "reason", "raw"]),
        },
        output_name="quarantined_instructions",
    )
