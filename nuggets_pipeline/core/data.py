"""Read instruction data from any common format, normalise it, and quarantine what is wrong with a reason.

Nothing is silently dropped: every input row ends up either in the normalised table or in the quarantine
table with its raw text, its origin and why it was rejected.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import re
import stat
import zlib
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
# Never read from these, whatever a path or a link says: they hold process environments, kernel state, devices.
SYSTEM_ROOTS = (Path("/proc"), Path("/sys"), Path("/dev"))
TRUNCATED_GZIP = "truncated_gzip: the compressed file ends mid-stream; rows after the cut are lost; re-copy the file"
UTF8_BOM = b"\xef\xbb\xbf"
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


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
    layout: str = ""  # how a table was read (a CSV's delimiter), quoted when a configured field is missing


@dataclass
class IngestResult:
    instructions: pd.DataFrame
    quarantined: pd.DataFrame
    reasons: Counter = field(default_factory=Counter)


def example_id(instruction: str, input_text: str, output: str) -> str:
    """Stable content hash: the same example has the same id in every run and every file."""
    payload = "\x1f".join((instruction, input_text, output)).encode("utf-8")
    return hashlib.sha256(payload).hexdigest()[:16]


def check_path(path: Path, allow_symlinks: bool = False) -> None:
    """Refuse a path that is not a plain data file or folder, before a single byte of it is read.

    A symbolic link (to a process's environment under /proc, to the password file...), a device, a FIFO or a
    socket is refused by default: data files are copied into place, not linked. So is anything under /proc, /sys
    or /dev, however it is reached. The message names the path and never quotes the content.
    """
    if path.is_symlink() and not allow_symlinks:
        raise SourceError(
            f"{path}: refused, it is a symbolic link; copy the data file itself there (links are not followed, "
            "so a link to a secret such as a process environment is never read)"
        )
    resolved = path.resolve()
    if any(resolved == root or root in resolved.parents for root in SYSTEM_ROOTS):
        raise SourceError(f"{path}: refused, it lies under /{resolved.parts[1]} (system state, not data)")
    mode = resolved.stat().st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise SourceError(f"{path}: refused, not a regular file (a device, FIFO or socket); copy the data into a file")


def _open_bytes(path: Path) -> tuple[bytes, str | None]:
    """The file's bytes (decompressed for .gz) and, for a gzip cut short, why: the bytes before the cut are kept."""
    data = path.read_bytes()
    problem = None
    if path.suffix == ".gz":
        parts: list[bytes] = []
        rest = data
        try:
            while rest:  # a gzip file may hold several members (files joined with cat)
                decompressor = zlib.decompressobj(wbits=31)  # 31: gzip header and trailer
                parts.append(decompressor.decompress(rest) + decompressor.flush())
                if not decompressor.eof:
                    problem = TRUNCATED_GZIP
                    break
                rest = decompressor.unused_data
        except zlib.error as error:
            if not parts:
                raise SourceError(
                    f"{path}: not a valid gzip file ({error}); re-copy it or save it uncompressed"
                ) from None
            problem = f"corrupt_gzip: {error}; rows after the damage are lost; re-copy the file"
        data = b"".join(parts)
    return _to_utf8(path, data), problem


def _to_utf8(path: Path, data: bytes) -> bytes:
    """Drop a UTF-8 byte-order mark; re-encode a UTF-16 file (recognised by its mark) as UTF-8."""
    if data.startswith(UTF8_BOM):
        return data[len(UTF8_BOM) :]
    if data.startswith(UTF16_BOMS):
        try:
            return data.decode("utf-16").encode("utf-8")
        except UnicodeDecodeError as error:
            raise SourceError(f"{path}: starts like UTF-16 but does not decode ({error}); save it as UTF-8") from None
    return data


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


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply", text, 0) from None
    except json.JSONDecodeError:
        raise
    except ValueError as error:  # an integer of more than 4,300 digits, say
        raise json.JSONDecodeError(f"unreadable value ({error})", text, 0) from None


def _read_jsonl(path: Path, data: bytes, problem: str | None = None) -> Iterator[RawRecord]:
    lines = data.splitlines()
    cut = problem is not None and bool(data) and not data.endswith((b"\n", b"\r"))
    for number, line in enumerate(lines):
        if cut and number == len(lines) - 1:
            # The last line of a cut gzip stops mid-row, even where what is left happens to parse.
            yield RawRecord(str(path), number, None, line.decode("utf-8", "replace"), str(problem))
            return
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as error:
            yield RawRecord(str(path), number, None, line.decode("utf-8", "replace"), f"undecodable_bytes: {error}")
            continue
        try:
            yield RawRecord(str(path), number, _loads(text), text)
        except json.JSONDecodeError as error:
            yield RawRecord(str(path), number, None, text, f"malformed_json: {error.msg}")
    if problem is not None:
        # Cut exactly at a line end: no row shows the cut, so one row records it.
        yield RawRecord(str(path), len(lines), None, "", problem)


_OBJECT_START = re.compile(r"[,\[]\s*(?=\{)")
# What surrogateescape decodes a byte that is not UTF-8 to (U+DC80-U+DCFF); valid UTF-8 never decodes to these.
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")


def _readable(text: str) -> str:
    """Text decoded with surrogateescape as storable text: each undecodable byte becomes U+FFFD."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _undecodable(escaped: str, where: str) -> str:
    """The quarantine reason of a record holding a byte that is not UTF-8 (``escaped``: its surrogateescape)."""
    byte = ord(escaped) - 0xDC00
    return f"undecodable_bytes: byte 0x{byte:02x} at {where} is not UTF-8 (Latin-1 or cp1252?); save the file as UTF-8"


def _element_end(text: str, start: int) -> int | None:
    """End of the bracket-balanced value starting at ``start`` (strings and escapes respected), else None."""
    depth, in_string, escaped = 0, False, False
    for index in range(start, len(text)):
        char = text[index]
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
            if depth <= 0:
                return index + 1
        elif depth == 0 and char in ",\n":
            return index  # a bare scalar (``nul``, ``1e``) ends at the next separator
    return None


def _resync(text: str, start: int, decoder: json.JSONDecoder) -> int | None:
    """The start of the next element that parses and is followed by ``,`` or ``]``, after a broken one."""
    for match in _OBJECT_START.finditer(text, start):
        candidate = match.end()
        try:
            _, end = decoder.raw_decode(text, candidate)
        except (ValueError, RecursionError):
            continue
        rest = text[end:].lstrip()
        if rest[:1] in (",", "]"):
            return candidate
    return None


def _read_json_array(path: Path, data: bytes, problem: str | None = None) -> Iterator[RawRecord]:
    """Parse JSON arrays element by element, so a truncated or partly corrupt file keeps its good rows.

    Every element becomes one record: a broken element is one quarantine row and reading goes on with the next;
    arrays (or objects) after the first closing ``]`` (files joined with ``cat``) are read as more rows.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        # Not line by line: a pretty-printed array spreads each record over many lines, so the line reader would
        # turn 20 records into 100 junk rows. Each undecodable byte becomes a lone surrogate (surrogateescape)
        # that no valid UTF-8 text holds, and only the elements holding one are quarantined (``_escaped``).
        text = data.decode("utf-8", "surrogateescape")
    stripped = text.lstrip()
    if not stripped.startswith("["):
        if stripped.startswith("{") and "\n{" in stripped:
            yield from _read_jsonl(path, data, problem)  # JSON Lines saved with a .json name
            return
        try:
            value = _loads(text)
        except json.JSONDecodeError as error:
            raise SourceError(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from error
        for key in ("data", "rows", "examples", "instances"):
            if isinstance(value, dict) and isinstance(value.get(key), list):
                for number, item in enumerate(value[key]):
                    raw = json.dumps(item, ensure_ascii=False)
                    if found := _ESCAPED_BYTE.search(raw):
                        reason = _undecodable(found.group(), f"{key}[{number}]")
                        yield RawRecord(str(path), number, None, _readable(raw), reason)
                    else:
                        yield RawRecord(str(path), number, item, raw)
                return
        raise SourceError(f"{path}: JSON top level must be an array of examples")
    decoder = json.JSONDecoder()
    source = str(path)
    position = text.index("[") + 1
    number = 0
    depth = 1  # inside an array: 1; between top-level values (after a closing ``]``): 0
    while True:
        while position < len(text) and text[position] in " \t\r\n,":
            position += 1
        if position >= len(text):
            if depth:
                reason = problem or "malformed_json: array is not closed (truncated file)"
                yield RawRecord(source, number, None, "", reason)
            return
        if depth and text[position] == "]":
            depth, position = 0, position + 1
            continue
        if not depth and text[position] == "[":
            depth, position = 1, position + 1  # another array after the first one
            continue
        try:
            value, end = decoder.raw_decode(text, position)
        except (ValueError, RecursionError) as error:  # ValueError: JSONDecodeError, or a 5,000-digit integer
            message = error.msg if isinstance(error, json.JSONDecodeError) else "nested too deeply"
            if not isinstance(error, (json.JSONDecodeError, RecursionError)):
                message = f"unreadable value ({error})"
            end = _element_end(text, position)
            valid_end = end is not None and (not depth or text[end:].lstrip()[:1] in (",", "]"))
            if not valid_end:
                resumed = _resync(text, position + 1, decoder)
                end = resumed - 1 if resumed is not None else None  # resumed - 1: the separator before it
            if end is None:
                rest = _readable(text[position:])
                yield RawRecord(source, number, None, _preview(rest), f"malformed_json: {message}; rest of file")
                return
            raw = _readable(text[position:end].rstrip().rstrip(",").rstrip())
            yield RawRecord(source, number, None, _preview(raw), f"malformed_json: {message}")
            position, number = max(end, position + 1), number + 1
            continue
        element = text[position:end]
        if found := _ESCAPED_BYTE.search(element):
            # It parsed, but a text in it holds bytes that are not UTF-8: the record cannot be read as written.
            line = text.count("\n", 0, position + found.start()) + 1
            reason = _undecodable(found.group(), f"line {line}")
            yield RawRecord(source, number, None, _preview(_readable(element)), reason)
            position, number = end, number + 1
            continue
        # After the closing ``]`` (depth 0) an object is one more row, like an element of a further array.
        yield RawRecord(source, number, value, element)
        position = end
        number += 1


def _read_table(path: Path, kind: str) -> Iterator[RawRecord]:
    layout = ""
    if kind == "parquet":
        try:
            frame = pd.read_parquet(path)
        except Exception as error:  # pyarrow raises ArrowInvalid, OSError...: all mean the same to the user
            raise SourceError(
                f"{path}: not a readable Parquet file ({type(error).__name__}: {str(error)[:200]}); "
                "re-export it, or give it the extension of its real format"
            ) from None
    else:
        data, problem = _open_bytes(path)
        if problem is not None:
            raise SourceError(f"{path}: {problem}")
        delimiter = _csv_delimiter(data)
        layout = f"read as CSV with delimiter {delimiter!r}"
        try:
            frame = pd.read_csv(io.BytesIO(data), sep=delimiter, dtype=str, keep_default_na=False, encoding="utf-8")
        except pd.errors.EmptyDataError:
            raise SourceError(f"{path}: source file is empty") from None
        except pd.errors.ParserError as error:
            raise SourceError(
                f"{path}: not a readable CSV file ({error}); look for an unbalanced quote or a row with "
                "extra fields near that row, or save it as JSON Lines"
            ) from None
        except UnicodeDecodeError as error:
            raise SourceError(f"{path}: CSV is not UTF-8 ({error}); save it as UTF-8") from None
    for number, row in enumerate(frame.to_dict(orient="records")):
        yield RawRecord(str(path), number, row, json.dumps(row, ensure_ascii=False, default=str), layout=layout)


CSV_DELIMITERS = (",", ";", "\t", "|")


def _csv_delimiter(data: bytes) -> str:
    """The delimiter that splits the header line into the most fields (a comma on a tie): a semicolon CSV, as a
    spreadsheet in a comma-decimal locale saves it, read with commas is one column and every row is quarantined.

    Only the header is looked at: field names hold no delimiters, where texts below may hold any of them."""
    header = data.split(b"\n", 1)[0].decode("utf-8", "replace").rstrip("\r")
    counts = {d: len(next(csv.reader([header], delimiter=d), [])) for d in CSV_DELIMITERS}
    return max(CSV_DELIMITERS, key=lambda d: (counts[d], -CSV_DELIMITERS.index(d)))


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


def read_source(
    source: str | Path, hub: HubOptions = HubOptions(), allow_symlinks: bool = False
) -> Iterator[RawRecord]:
    """Yield raw records of one source: a file, a saved `datasets` folder, or a hub dataset id.

    Records carry the absolute path of their file, so two ``data.jsonl`` in different folders stay apart.
    """
    path = Path(os.path.abspath(Path(source).expanduser()))
    if not path.exists() and not path.is_symlink():
        looks_like_hub_id = isinstance(source, str) and source.count("/") == 1 and not source.startswith((".", "/"))
        if looks_like_hub_id and not Path(source).suffix:
            yield from _read_hub(source, hub)
            return
        raise SourceError(f"{path}: source file does not exist")
    check_path(path, allow_symlinks)
    kind = _format_of(path)
    if kind == "hf_disk":
        yield from _read_hf_disk(path)
        return
    if kind in ("parquet", "csv"):
        yield from _read_table(path, kind)
        return
    data, problem = _open_bytes(path)
    if not data.strip() and problem is None:
        raise SourceError(f"{path}: source file is empty")
    reader = _read_jsonl if kind == "jsonl" else _read_json_array
    yield from reader(path, data, problem)


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


def _missing(name: str, role: str, value: dict[str, Any], layout: str) -> str:
    """Why a record lacks a field: the field asked for (by the field map), and the fields the record has, so a
    misspelt field map or a misread table shows in the reason itself."""
    found = [str(k) for k in value]
    listed = ", ".join(repr(k) for k in found[:12]) + (f" and {len(found) - 12} more" if len(found) > 12 else "")
    described = f"configured {role} field {name!r}" if name != role else f"the {role} field"
    return (
        f"missing_field: {name} ({described}; fields found: {listed or 'none'}"
        f"{'; ' + layout if layout else ''}; set {role}_field to the one that holds it)"
    )


def _extract(value: Any, fields: FieldMap, layout: str = "") -> tuple[str, str, str] | str:
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
        for name, role in ((fields.instruction, "instruction"), (fields.output, "output")):
            if name not in value:
                return _missing(name, role, value, layout)
        instruction, output = value[fields.instruction], value[fields.output]
        input_text = value.get(fields.input, "")
        if input_text is None:
            input_text = ""
    for name, text in (("instruction", instruction), ("input", input_text), ("output", output)):
        if not isinstance(text, str):
            return f"non_string_field: {name} is {type(text).__name__}"
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as error:  # a lone surrogate (JSON "\ud800"): no file or tokenizer can hold it
            return f"invalid_unicode: {name} holds {error.reason} at character {error.start}"
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
        extracted = _extract(record.value, fields, record.layout)
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
                "source": record.source,  # the full path: two data.jsonl in two folders stay apart
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
    allow_symlinks: bool = False,
) -> IngestResult:
    """Read and normalise several sources as one table (duplicates across files are quarantined too).

    ``known_ids`` are ids already stored elsewhere (for incremental ingestion): rows with them count as duplicates.
    ``allow_symlinks``: follow a source that is a symbolic link (refused by default; see ``check_path``).
    """
    if not sources:
        raise SourceError("no source given")

    def all_records() -> Iterator[RawRecord]:
        for source in sources:
            count = 0
            for record in read_source(source, hub, allow_symlinks=allow_symlinks):
                count += 1
                yield record
            if count == 0:
                raise SourceError(f"{source}: source holds no rows")

    result = normalise(all_records(), fields, max_chars)
    if known_ids:
        quarantine_known(result, result.instructions["id"].isin(known_ids).to_numpy())
    if result.instructions.empty:
        top = ", ".join(f"{k}: {v} row{'s' * (v != 1)}" for k, v in result.reasons.most_common(3))
        # The counts alone ("missing_field: 10 rows") do not say which field or why: quote the first reason whole.
        first = result.quarantined["reason"].iloc[0] if len(result.quarantined) else "none"
        raise SourceError(f"{', '.join(map(str, sources))}: no valid rows (all quarantined; {top}); first row: {first}")
    return result
