import gzip
import json
from pathlib import Path

import pandas as pd
import pytest

from nuggets_pipeline.core.data import FieldMap, SourceError, example_id, ingest
from nuggets_pipeline.core.paths import ALPACA_CLEANED, shipped
from nuggets_pipeline.defs.schemas import InstructionsSchema, QuarantineSchema
from nuggets_pipeline_tests.accounting import assert_rows_accounted

GOOD = {"instruction": "Name a colour.", "input": "", "output": "Blue."}


def write_jsonl(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def reasons(result) -> list[str]:
    return [r.split(":")[0] for r in result.quarantined["reason"]]


def test_every_bad_row_kind_is_quarantined_with_its_raw_text(tmp_path: Path) -> None:
    rows = [
        json.dumps(GOOD).encode(),
        b'{"instruction": "broken", ',  # malformed line
        json.dumps({"instruction": "no output"}).encode(),
        json.dumps({"instruction": 3, "output": "x"}).encode(),
        json.dumps({"instruction": "   ", "output": "x"}).encode(),
        json.dumps({"instruction": "x", "output": "\n\t"}).encode(),
        json.dumps(GOOD).encode(),  # exact duplicate
        json.dumps({"instruction": "long", "output": "y" * 500}).encode(),
        b'{"instruction": "bad bytes \xff\xfe", "output": "x"}',
        b"[1, 2]",
    ]
    result = ingest([write_jsonl(tmp_path / "mixed.jsonl", rows)], max_chars=200)
    assert len(result.instructions) == 1
    assert reasons(result) == [
        "malformed_json",
        "missing_field",
        "non_string_field",
        "empty_instruction",
        "empty_output",
        "duplicate",
        "too_long",
        "undecodable_bytes",
        "not_an_object",
    ]
    assert_rows_accounted(result.instructions, result.quarantined, len(rows))
    assert result.quarantined.loc[0, "raw"] == '{"instruction": "broken", '
    assert (result.quarantined["source"] == str(tmp_path / "mixed.jsonl")).all()
    assert result.quarantined["row_number"].tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    QuarantineSchema.validate(result.quarantined)
    InstructionsSchema.validate(result.instructions)


def test_whitespace_is_stripped_and_id_is_a_stable_content_hash(tmp_path: Path) -> None:
    padded = {"instruction": "  Name a colour.\n", "input": " ", "output": "Blue. "}
    first = ingest([write_jsonl(tmp_path / "a.jsonl", [json.dumps(padded).encode()])])
    (tmp_path / "b.json").write_text(json.dumps([GOOD]))
    second = ingest([tmp_path / "b.json"])
    assert_rows_accounted(first.instructions, first.quarantined, 1)
    assert_rows_accounted(second.instructions, second.quarantined, 1)
    assert first.instructions.loc[0, "instruction"] == "Name a colour."
    assert first.instructions.loc[0, "input"] == ""
    assert (
        first.instructions.loc[0, "id"] == second.instructions.loc[0, "id"] == example_id("Name a colour.", "", "Blue.")
    )


def test_formats_json_jsonl_gz_parquet_csv_and_hf_folder_give_the_same_rows(tmp_path: Path) -> None:
    records = [GOOD, {"instruction": "Add.", "input": "1 and 2", "output": "3"}]
    (tmp_path / "x.json").write_text(json.dumps(records))
    (tmp_path / "x.jsonl.gz").write_bytes(gzip.compress("\n".join(map(json.dumps, records)).encode()))
    pd.DataFrame(records).to_parquet(tmp_path / "x.parquet")
    pd.DataFrame(records).to_csv(tmp_path / "x.csv", index=False)
    import datasets

    datasets.Dataset.from_list(records).save_to_disk(str(tmp_path / "hf"))
    ids = None
    for name in ("x.json", "x.jsonl.gz", "x.parquet", "x.csv", "hf"):
        result = ingest([tmp_path / name])
        assert result.quarantined.empty, name
        assert_rows_accounted(result.instructions, result.quarantined, len(records))
        ids = ids or result.instructions["id"].tolist()
        assert result.instructions["id"].tolist() == ids, name


def test_multi_file_sources_are_concatenated_and_cross_file_duplicates_quarantined(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(json.dumps([GOOD]))
    (tmp_path / "b.json").write_text(json.dumps([GOOD, {"instruction": "Other.", "output": "Yes."}]))
    result = ingest([tmp_path / "a.json", tmp_path / "b.json"])
    assert result.instructions["source"].tolist() == [str(tmp_path / "a.json"), str(tmp_path / "b.json")]
    assert reasons(result) == ["duplicate"]
    assert_rows_accounted(result.instructions, result.quarantined, 3)


def test_two_files_with_one_name_in_two_folders_are_told_apart_and_ids_stay_content_hashes(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "data.jsonl").write_text(json.dumps(GOOD) + "\n")
    (tmp_path / "b" / "data.jsonl").write_text(json.dumps({"instruction": "Other.", "output": "Yes."}) + "\n")
    result = ingest([tmp_path / "a" / "data.jsonl", tmp_path / "b" / "data.jsonl"])
    assert result.instructions["source"].nunique() == 2
    assert result.instructions["source"].tolist()[0] == str(tmp_path / "a" / "data.jsonl")
    assert result.instructions["id"].tolist()[0] == example_id("Name a colour.", "", "Blue.")
    assert_rows_accounted(result.instructions, result.quarantined, 2)


def test_field_mapping_prompt_completion_and_sharegpt(tmp_path: Path) -> None:
    (tmp_path / "pc.jsonl").write_text(json.dumps({"prompt": "Say hi.", "completion": "Hi."}) + "\n")
    result = ingest([tmp_path / "pc.jsonl"], FieldMap(instruction="prompt", input="input", output="completion"))
    assert result.instructions.loc[0, ["instruction", "output"]].tolist() == ["Say hi.", "Hi."]
    assert_rows_accounted(result.instructions, result.quarantined, 1)
    sharegpt = [
        {"conversations": [{"from": "human", "value": "Q?"}, {"from": "gpt", "value": "A."}]},
        {"conversations": [{"from": "gpt", "value": "only assistant"}]},
    ]
    (tmp_path / "sg.json").write_text(json.dumps(sharegpt))
    result = ingest([tmp_path / "sg.json"])
    assert result.instructions.loc[0, ["instruction", "output"]].tolist() == ["Q?", "A."]
    assert reasons(result) == ["malformed_conversations"]
    assert_rows_accounted(result.instructions, result.quarantined, 2)


def test_truncated_json_array_keeps_good_rows_and_quarantines_the_rest(tmp_path: Path) -> None:
    text = json.dumps([GOOD, {"instruction": "Two.", "output": "2"}, {"instruction": "Three.", "output": "3"}])
    (tmp_path / "cut.json").write_text(text[: len(text) - 20])
    result = ingest([tmp_path / "cut.json"])
    assert len(result.instructions) == 2
    assert reasons(result) == ["malformed_json"]
    assert_rows_accounted(result.instructions, result.quarantined, 3)


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "does not exist"), (b"", "empty"), (b"\n".join([b"{bad", b"{worse"]), "no valid rows")],
)
def test_missing_empty_or_wholly_invalid_sources_fail_with_one_clear_message(
    tmp_path: Path, content: bytes | None, message: str
) -> None:
    path = tmp_path / "source.jsonl"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(SourceError, match=message) as error:
        ingest([path])
    assert str(path) in str(error.value)


def test_hub_ids_fail_clearly_when_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(SourceError, match="hub"):
        ingest(["someone/some-dataset"])


def test_shipped_alpaca_ingests_in_full() -> None:
    result = ingest([shipped(ALPACA_CLEANED)])
    assert_rows_accounted(result.instructions, result.quarantined, 51_941)
    InstructionsSchema.validate(result.instructions)


def example(i: int) -> dict[str, str]:
    return {"instruction": f"Say the number {i}.", "input": "", "output": f"{i}."}


def test_a_second_array_in_one_file_is_read_too(tmp_path: Path) -> None:
    path = tmp_path / "joined.json"
    path.write_text(json.dumps([example(0)]) + json.dumps([example(1), example(2)]))  # `cat a.json b.json`
    result = ingest([path])
    assert len(result.instructions) == 3
    assert_rows_accounted(result.instructions, result.quarantined, 3)


def test_data_after_the_closing_bracket_is_read_or_quarantined_never_dropped(tmp_path: Path) -> None:
    path = tmp_path / "trailing.json"
    path.write_text(json.dumps([example(0)]) + "\n" + json.dumps(example(1)) + "\nnot json at all\n")
    result = ingest([path])
    assert len(result.instructions) == 2
    assert reasons(result) == ["malformed_json"]
    assert result.quarantined.loc[0, "raw"] == "not json at all"
    assert_rows_accounted(result.instructions, result.quarantined, 3)


@pytest.mark.parametrize(
    "broken",
    [
        '{"instruction": "bad", "output": }',  # a missing value: brackets still balance
        '{"instruction": "bad, "output": "x"}',  # an unbalanced quote
        '{"instruction": "bad", "output": "x"',  # a missing closing brace
    ],
)
def test_one_bad_element_in_a_long_array_costs_that_element_only(tmp_path: Path, broken: str) -> None:
    elements = [json.dumps(example(i)) for i in range(200)]
    elements[100] = broken
    path = tmp_path / "long.json"
    path.write_text("[\n" + ",\n".join(elements) + "\n]")
    result = ingest([path])
    assert len(result.instructions) == 199
    assert result.quarantined["row_number"].tolist() == [100]
    assert result.quarantined.loc[0, "raw"] == broken
    assert result.instructions["row_number"].tolist() == [*range(100), *range(101, 200)]
    assert_rows_accounted(result.instructions, result.quarantined, 200)


@pytest.mark.parametrize("name", ["bom.jsonl", "bom.json", "bom.csv"])
def test_a_utf8_byte_order_mark_is_accepted(tmp_path: Path, name: str) -> None:
    records = [example(i) for i in range(3)]
    if name.endswith(".jsonl"):
        text = "\n".join(map(json.dumps, records))
    elif name.endswith(".json"):
        text = json.dumps(records)
    else:
        text = pd.DataFrame(records).to_csv(index=False)
    (tmp_path / name).write_bytes(b"\xef\xbb\xbf" + text.encode())
    result = ingest([tmp_path / name])
    assert result.quarantined.empty and len(result.instructions) == 3
    assert_rows_accounted(result.instructions, result.quarantined, 3)


def test_a_utf16_csv_with_its_byte_order_mark_is_read(tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    path.write_bytes(pd.DataFrame([example(i) for i in range(3)]).to_csv(index=False).encode("utf-16"))
    result = ingest([path])
    assert len(result.instructions) == 3
    assert_rows_accounted(result.instructions, result.quarantined, 3)


@pytest.mark.parametrize("cut_at_line_end", [False, True])
def test_a_truncated_gzip_keeps_the_rows_before_the_cut_and_records_the_cut(
    tmp_path: Path, cut_at_line_end: bool
) -> None:
    text = "\n".join(json.dumps(example(i)) for i in range(100)) + "\n"
    if cut_at_line_end:  # a stream cut exactly after a row: every row that is there parses
        compressor = __import__("zlib").compressobj(wbits=31)
        data = compressor.compress(text[: text.index("\n", len(text) // 2) + 1].encode())
        data += compressor.flush(__import__("zlib").Z_SYNC_FLUSH)
    else:
        data = gzip.compress(text.encode())
        data = data[: len(data) // 2]
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(data)
    result = ingest([path])
    kept = len(result.instructions)
    assert 10 < kept < 100
    assert result.instructions["row_number"].tolist() == list(range(kept))
    assert reasons(result) == ["truncated_gzip"]
    assert "re-copy" in result.quarantined.loc[0, "reason"]
    assert_rows_accounted(result.instructions, result.quarantined, kept + 1)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("quote.csv", b'instruction,output\n"Say hi.,Hi.\nSay bye.,Bye.\n', "unbalanced quote"),
        ("fake.parquet", b'{"instruction": "not parquet"}', "not a readable Parquet file"),
        ("latin1.csv", "instruction,output\nCaf\xe9?,Oui.\n".encode("latin-1"), "save it as UTF-8"),
        ("junk.jsonl.gz", b"this is not gzip", "not a valid gzip file"),
    ],
)
def test_unreadable_tables_fail_naming_the_file_and_what_to_do(
    tmp_path: Path, name: str, content: bytes, message: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(SourceError, match=message) as error:
        ingest([path])
    assert str(path) in str(error.value)


def test_deeply_nested_json_is_quarantined_not_a_crash(tmp_path: Path) -> None:
    (tmp_path / "deep.jsonl").write_text(json.dumps(example(0)) + "\n" + "[" * 100_000 + "\n")
    (tmp_path / "deep.json").write_text(f"[{json.dumps(example(1))}, {'[' * 100_000}{']' * 100_000}]")
    for name in ("deep.jsonl", "deep.json"):
        result = ingest([tmp_path / name])
        assert reasons(result) == ["malformed_json"] and "nested too deeply" in result.quarantined.loc[0, "reason"]
        assert_rows_accounted(result.instructions, result.quarantined, 2)


SECRETS = "OPENAI_API_KEY=sk-proj-nuggetsFAKE0123456789abcdef\nHF_TOKEN=hf_nuggetsFAKEsecret0123456789\n"


@pytest.mark.parametrize("target", ["secrets", "/etc/passwd"])
def test_a_symlink_is_refused_without_reading_it(tmp_path: Path, target: str) -> None:
    real = tmp_path / "environ"
    real.write_text(SECRETS)
    link = tmp_path / "data.jsonl"
    link.symlink_to(real if target == "secrets" else Path(target))
    with pytest.raises(SourceError, match="symbolic link") as error:
        ingest([link])
    assert str(link) in str(error.value) and "sk-" not in str(error.value) and "root:" not in str(error.value)


def test_devices_fifos_and_system_folders_are_refused(tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)  # reading it would block the run for ever
    with pytest.raises(SourceError, match="not a regular file"):
        ingest([fifo])
    with pytest.raises(SourceError, match="/proc"):
        ingest(["/proc/self/environ"])
    with pytest.raises(SourceError, match="/dev"):
        ingest(["/dev/zero"])


def test_rows_python_cannot_hold_as_text_are_quarantined_not_a_crash(tmp_path: Path) -> None:
    """A lone surrogate cannot be encoded (hashing or storing it crashed the run); a 5,000-digit integer is past
    Python's int parsing limit (json raised a ValueError that failed the run)."""
    good = json.dumps(example(0))
    (tmp_path / "odd.jsonl").write_text(
        "\n".join([good, '{"instruction": "bad \\ud800", "output": "x"}', '{"n": ' + "9" * 5000 + "}"]) + "\n"
    )
    (tmp_path / "odd.json").write_text(f'[{json.dumps(example(1))}, {{"n": {"9" * 5000}}}, {json.dumps(example(2))}]')
    result = ingest([tmp_path / "odd.jsonl", tmp_path / "odd.json"])
    assert [r.split(":")[0] for r in result.quarantined["reason"]] == [
        "invalid_unicode",
        "malformed_json",
        "malformed_json",
    ]
    assert len(result.instructions) == 3
    assert_rows_accounted(result.instructions, result.quarantined, 6)
    result.quarantined.to_parquet(tmp_path / "q.parquet")  # what is kept can be stored


def test_a_linked_source_is_read_only_when_links_are_allowed_explicitly(tmp_path: Path) -> None:
    real = tmp_path / "real.jsonl"
    real.write_text(json.dumps(example(0)) + "\n")
    (tmp_path / "link.jsonl").symlink_to(real)
    result = ingest([tmp_path / "link.jsonl"], allow_symlinks=True)
    assert_rows_accounted(result.instructions, result.quarantined, 1)
    (tmp_path / "env.jsonl").symlink_to("/proc/self/environ")
    with pytest.raises(SourceError, match="/proc"):  # system paths stay refused, link or not
        ingest([tmp_path / "env.jsonl"], allow_symlinks=True)


@pytest.mark.parametrize("layout", ["array", "data_key"])
def test_one_latin1_byte_in_a_pretty_printed_array_costs_that_record_only(tmp_path: Path, layout: str) -> None:
    """Issue 23 item 4: the array reader fell back to the line reader on a UnicodeDecodeError, so 20 records of
    an Alpaca-style (indented) array gave 0 ingested and a quarantine row per line."""
    records = [example(i) for i in range(20)]
    records[7] = {**records[7], "instruction": "Caf\xe9 au lait: describe it."}
    value = records if layout == "array" else {"data": records}
    path = tmp_path / "alpaca.json"
    path.write_bytes(json.dumps(value, indent=2, ensure_ascii=False).encode("latin-1"))
    result = ingest([path])
    assert len(result.instructions) == 19 and 7 not in result.instructions["row_number"].tolist()
    assert result.quarantined["row_number"].tolist() == [7]
    reason = result.quarantined.loc[0, "reason"]
    assert reason.startswith("undecodable_bytes: byte 0xe9") and "save the file as UTF-8" in reason
    assert "Caf\ufffd au lait" in result.quarantined.loc[0, "raw"]  # the bad byte shown, storable as text
    assert_rows_accounted(result.instructions, result.quarantined, 20)
    QuarantineSchema.validate(result.quarantined)
    result.quarantined.to_parquet(tmp_path / "q.parquet")  # no lone surrogate reaches a stored file


@pytest.mark.parametrize("delimiter", [";", "\t", "|"])
def test_a_csv_with_another_delimiter_is_read_by_its_header(tmp_path: Path, delimiter: str) -> None:
    """Issue 23 item 10: a semicolon CSV (a spreadsheet's export in a comma-decimal locale) failed with
    "missing_field: 10" and no word about the delimiter. Texts holding commas stay whole."""
    path = tmp_path / "sheet.csv"
    rows = [f"Say {i}, please.{delimiter}{delimiter}It is {i}, then." for i in range(10)]
    path.write_text(delimiter.join(["instruction", "input", "output"]) + "\n" + "\n".join(rows) + "\n")
    result = ingest([path])
    assert result.instructions["instruction"].tolist() == [f"Say {i}, please." for i in range(10)]
    assert result.instructions["output"].iloc[3] == "It is 3, then."
    assert_rows_accounted(result.instructions, result.quarantined, 10)


def test_a_missing_field_names_the_field_asked_for_the_fields_found_and_how_a_csv_was_read(tmp_path: Path) -> None:
    """Issue 23 item 10: "missing_field" alone did not say which configured field, or what the file holds."""
    jsonl = write_jsonl(tmp_path / "qa.jsonl", [json.dumps({"question": "Q?", "answer": "A."}).encode()])
    with pytest.raises(SourceError) as error:
        ingest([jsonl], FieldMap(instruction="prompt", output="answer"))
    message = str(error.value)
    assert "missing_field: 1 row" in message
    assert "missing_field: prompt (configured instruction field 'prompt'; fields found: 'question', 'answer'" in message
    assert "set instruction_field" in message
    # A CSV whose delimiter is none of those tried: the reason quotes the header found and the delimiter used.
    sheet = tmp_path / "colon.csv"
    sheet.write_text("instruction:output\nSay hi.:Hi.\n")
    with pytest.raises(SourceError, match="fields found: 'instruction:output'; read as CSV with delimiter ','"):
        ingest([sheet])
