"""Read instruction data from any common format, normalise it, and quarantine what is wrong with a reason.

Nothing is silently dropped: every input row ends up either in the normalised table or in the quarantine
table with its raw text, its origin and why it was rejected.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

INSTRUCTION_COLUMNS = ["id", "instruction", "input", "output", "source", "row_number"]
QUARANTINE_COLUMNS = ["source", "row_number", "reason", "raw"]
RAW_PREVIEW_CHARS = 4000


class SourceError(ValueError):
    """A whole source is unusable (missing, empty, wholly invalid, or unreachable)."""


@dataclass(frozen=True)
class FieldMap:
    """Which source fields hold the instruction, the optional input and the output.

    ``conversations`` names a ShareGPT-style list of turns ({"from": "human"|"gpt", "value": ...}); when a
    record has it, the first human turn is the instruction and the first assistant turn after it the output.
    """

    instruction: str = "instruction"
    input: str = "input"
    output: str = "output"
    conversations: str = "conversations"


PROMPT_COMPLETION = FieldMap(instruction="prompt", input="input", output="completion")


@dataclass(frozen=True)
class HubOptions:
    """Which part of a Hugging Face hub dataset to read: ``load_dataset(id, name, split=, revision=)``."""

    split: str = "train"
    name: str | None = None  # the dataset's configuration ("subset" on the hub page)
    revision: str | None = None  # a branch, tag or commit: pin it for a reproducible pool


def hub_offline() -> bool:
    """True when huggingface_hub or datasets was told not to use the network."""
    return any(
        os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


@dataclass
class RawRecord:
    source: str
    row_number: int
    value: Any
    raw: str
    error: str | None = None


@dataclass
class IngestResult:
    instructions: pd.DataFrame
    quarantined: pd.DataFrame
    reasons: Counter = field(default_factory=Counter)


def example_id(instruction: str, input_text: str, output: str) -> str:
    """Stable content hash: the same example has the same id in every run and every file."""
    payload = "\x1f".join((instruction, input_text, output)).encode("utf-8")
    return hashlib.sha256(payload).hexdigest()[:16]


def _open_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if path.suffix == ".gz" else data


def _format_of(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    if path.is_dir():
        return "hf_disk"
    ext = suffixes[-1] if suffixes else ""
    formats = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".csv": "csv"}
    if ext not in formats:
        raise SourceError(f"{path}: unknown file type {ext or '(none)'}; use .json, .jsonl(.gz), .parquet, .csv")
    return formats[ext]


def _preview(raw: str) -> str:
    return raw if len(raw) <= RAW_PREVIEW_CHARS else raw[:RAW_PREVIEW_CHARS] + f"... [{len(raw)} chars]"


def _read_jsonl(path: Path, data: bytes) -> Iterator[RawRecord]:
    for number, line in enumerate(data.splitlines()):
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as error:
            yield RawRecord(str(path), number, None, line.decode("utf-8", "replace"), f"undecodable_bytes: {error}")
            continue
        try:
            yield RawRecord(str(path), number, json.loads(text), text)
        except json.JSONDecodeError as error:
            yield RawRecord(str(path), number, None, text, f"malformed_json: {error.msg}")


def _read_json_array(path: Path, data: bytes) -> Iterator[RawRecord]:
    """Parse a JSON array element by element, so a truncated or partly corrupt file keeps its good rows."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        # Decode line by line instead so the bad bytes are confined to the rows that hold them.
        yield from _read_jsonl(path, data)
        return
    stripped = text.lstrip()
    if not stripped.startswith("["):
        if stripped.startswith("{") and "\n{" in stripped:
            yield from _read_jsonl(path, data)  # JSON Lines saved with a .json name
            return
        try:
            value = json.loads(text)
        except json.JSONDecodeError as error:
            raise SourceError(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from error
        for key in ("data", "rows", "examples", "instances"):
            if isinstance(value, dict) and isinstance(value.get(key), list):
                for number, item in enumerate(value[key]):
                    yield RawRecord(str(path), number, item, json.dumps(item, ensure_ascii=False))
                return
        raise SourceError(f"{path}: JSON top level must be an array of examples")
    decoder = json.JSONDecoder()
    position = text.index("[") + 1
    number = 0
    while True:
        while position < len(text) and text[position] in " \t\r\n,":
            position += 1
        if position >= len(text):
            yield RawRecord(str(path), number, None, "", "malformed_json: array is not closed (truncated file)")
            return
        if text[position] == "]":
            return
        try:
            value, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError as error:
            rest = text[position:]
            yield RawRecord(str(path), number, None, _preview(rest), f"malformed_json: {error.msg}; rest of file")
            return
        yield RawRecord(str(path), number, value, text[position:end])
        position = end
        number += 1


def _read_table(path: Path, kind: str) -> Iterator[RawRecord]:
    frame = pd.read_parquet(path) if kind == "parquet" else pd.read_csv(path, dtype=str, keep_default_na=False)
    for number, row in enumerate(frame.to_dict(orient="records")):
        yield RawRecord(str(path), number, row, json.dumps(row, ensure_ascii=False, default=str))


def _read_hf_disk(path: Path) -> Iterator[RawRecord]:
    import datasets

    saved = (path / "state.json").exists() or (path / "dataset_dict.json").exists()
    # A save_to_disk folder, or a dataset repository's layout (data files + README), which only load_dataset reads.
    loaded = datasets.load_from_disk(str(path)) if saved else datasets.load_dataset(str(path))
    splits = list(loaded.values()) if isinstance(loaded, datasets.DatasetDict) else [loaded]
    number = 0
    for split in splits:
        for row in split:
            yield RawRecord(str(path), number, row, json.dumps(row, ensure_ascii=False, default=str))
            number += 1


def _read_hub(dataset_id: str, hub: HubOptions) -> Iterator[RawRecord]:
    import datasets

    what = f"{dataset_id} (name={hub.name}, split={hub.split}, revision={hub.revision})"
    if hub_offline():
        # Fail at once: offline, load_dataset would walk the cache and retry before giving up.
        raise SourceError(
            f"{what}: not a local file or folder, and the Hugging Face hub is off (HF_HUB_OFFLINE / "
            "HF_DATASETS_OFFLINE is set). Download it where the network is allowed with "
            "datasets.load_dataset(...).save_to_disk(FOLDER) and pass FOLDER as the source."
        )
    try:
        loaded = datasets.load_dataset(dataset_id, hub.name, split=hub.split, revision=hub.revision)
    except Exception as error:
        raise SourceError(
            f"{what}: not a local file or folder, and loading it from the Hugging Face hub failed "
            f"(hub datasets need network access; offline, download it elsewhere and pass the saved folder): "
            f"{type(error).__name__}: {error}"
        ) from error
    for number, row in enumerate(loaded):
        yield RawRecord(f"hf://{dataset_id}", number, row, json.dumps(row, ensure_ascii=False, default=str))


def read_source(source: str | Path, hub: HubOptions = HubOptions()) -> Iterator[RawRecord]:
    """Yield raw records of one source: a file, a saved `datasets` folder, or a hub dataset id."""
    path = Path(source).expanduser()
    if not path.exists():
        looks_like_hub_id = isinstance(source, str) and source.count("/") == 1 and not source.startswith((".", "/"))
        if looks_like_hub_id and not Path(source).suffix:
            yield from _read_hub(source, hub)
            return
        raise SourceError(f"{path}: source file does not exist")
    kind = _format_of(path)
    if kind == "hf_disk":
        yield from _read_hf_disk(path)
        return
    if kind in ("parquet", "csv"):
        yield from _read_table(path, kind)
        return
    data = _open_bytes(path)
    if not data.strip():
        raise SourceError(f"{path}: source file is empty")
    yield from _read_jsonl(path, data) if kind == "jsonl" else _read_json_array(path, data)


def _from_conversations(turns: Any) -> tuple[Any, Any] | str:
    if not isinstance(turns, list):
        return "malformed_conversations: not a list of turns"
    human = next((i for i, t in enumerate(turns) if isinstance(t, dict) and t.get("from") in ("human", "user")), None)
    if human is None:
        return "malformed_conversations: no human turn"
    reply = next((t for t in turns[human + 1 :] if isinstance(t, dict) and t.get("from") in ("gpt", "assistant")), None)
    if reply is None:
        return "malformed_conversations: no assistant turn after the first human turn"
    return turns[human].get("value"), reply.get("value")


def _extract(value: Any, fields: FieldMap) -> tuple[str, str, str] | str:
    """The (instruction, input, output) of one record, or the reason it is rejected."""
    if not isinstance(value, dict):
        return f"not_an_object: got {type(value).__name__}"
    if fields.instruction not in value and fields.conversations in value:
        extracted = _from_conversations(value[fields.conversations])
        if isinstance(extracted, str):
            return extracted
        instruction, output = extracted
        input_text: Any = ""
    else:
        for name in (fields.instruction, fields.output):
            if name not in value:
                return f"missing_field: {name}"
        instruction, output = value[fields.instruction], value[fields.output]
        input_text = value.get(fields.input, "")
        if input_text is None:
            input_text = ""
    for name, text in (("instruction", instruction), ("input", input_text), ("output", output)):
        if not isinstance(text, str):
            return f"non_string_field: {name} is {type(text).__name__}"
    return instruction.strip(), input_text.strip(), output.strip()


def normalise(records: Iterable[RawRecord], fields: FieldMap = FieldMap(), max_chars: int = 16_384) -> IngestResult:
    """Turn raw records into the instructions table and the quarantine table."""
    rows: list[dict[str, Any]] = []
    bad: list[dict[str, Any]] = []
    seen: set[str] = set()
    reasons: Counter = Counter()

    def reject(record: RawRecord, reason: str) -> None:
        bad.append(
            {"source": record.source, "row_number": record.row_number, "reason": reason, "raw": _preview(record.raw)}
        )
        reasons[reason.split(":")[0]] += 1

    for record in records:
        if record.error:
            reject(record, record.error)
            continue
        extracted = _extract(record.value, fields)
        if isinstance(extracted, str):
            reject(record, extracted)
            continue
        instruction, input_text, output = extracted
        if not instruction:
            reject(record, "empty_instruction")
            continue
        if not output:
            reject(record, "empty_output")
            continue
        length = len(instruction) + len(input_text) + len(output)
        if length > max_chars:
            reject(record, f"too_long: {length} characters > max_chars {max_chars}")
            continue
        identifier = example_id(instruction, input_text, output)
        if identifier in seen:
            reject(record, f"duplicate: same content as id {identifier}")
            continue
        seen.add(identifier)
        rows.append(
            {
                "id": identifier,
                "instruction": instruction,
                "input": input_text,
                "output": output,
                "source": Path(record.source).name if "://" not in record.source else record.source,
                "row_number": record.row_number,
            }
        )
    instructions = pd.DataFrame(rows, columns=INSTRUCTION_COLUMNS).astype({"row_number": "int64"})
    quarantined = pd.DataFrame(bad, columns=QUARANTINE_COLUMNS).astype({"row_number": "int64"})
    return IngestResult(instructions=instructions, quarantined=quarantined, reasons=reasons)


def quarantine_known(result: IngestResult, known: np.ndarray) -> None:
    """Move valid rows already stored elsewhere (``known``: one flag per row) to quarantine as duplicates."""
    moved = result.instructions[known]
    extra = pd.DataFrame(
        {
            "source": moved["source"],
            "row_number": moved["row_number"],
            "reason": "duplicate: already ingested earlier",
            "raw": [
                json.dumps({"instruction": r.instruction, "input": r.input, "output": r.output}, ensure_ascii=False)
                for r in moved.itertuples()
            ],
        },
        columns=QUARANTINE_COLUMNS,
    )
    result.quarantined = pd.concat([result.quarantined, extra], ignore_index=True)
    result.instructions = result.instructions[~known].reset_index(drop=True)
    if len(moved):
        result.reasons["duplicate"] += len(moved)


def ingest(
    sources: list[str | Path],
    fields: FieldMap = FieldMap(),
    max_chars: int = 16_384,
    known_ids: set[str] | None = None,
    hub: HubOptions = HubOptions(),
) -> IngestResult:
    """Read and normalise several sources as one table (duplicates across files are quarantined too).

    ``known_ids`` are ids already stored elsewhere (for incremental ingestion): rows with them count as duplicates.
    """
    if not sources:
        raise SourceError("no source given")

    def all_records() -> Iterator[RawRecord]:
        for source in sources:
            count = 0
            for record in read_source(source, hub):
                count += 1
                yield record
            if count == 0:
                raise SourceError(f"{source}: source holds no rows")

    result = normalise(all_records(), fields, max_chars)
    if known_ids:
        quarantine_known(result, result.instructions["id"].isin(known_ids).to_numpy())
    if result.instructions.empty:
        top = ", ".join(f"{k}: {v}" for k, v in result.reasons.most_common(3))
        raise SourceError(f"{', '.join(map(str, sources))}: no valid rows (all quarantined; {top})")
    return result
