import gzip
import json
from pathlib import Path

import pandas as pd
import pytest

from nuggets_pipeline.core.data import PROMPT_COMPLETION, SourceError, example_id, ingest
from nuggets_pipeline.core.paths import ALPACA_CLEANED, shipped
from nuggets_pipeline.schemas import InstructionsSchema, QuarantineSchema

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
    assert len(result.instructions) + len(result.quarantined) == len(rows)
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
        ids = ids or result.instructions["id"].tolist()
        assert result.instructions["id"].tolist() == ids, name


def test_multi_file_sources_are_concatenated_and_cross_file_duplicates_quarantined(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(json.dumps([GOOD]))
    (tmp_path / "b.json").write_text(json.dumps([GOOD, {"instruction": "Other.", "output": "Yes."}]))
    result = ingest([tmp_path / "a.json", tmp_path / "b.json"])
    assert result.instructions["source"].tolist() == ["a.json", "b.json"]
    assert reasons(result) == ["duplicate"]


def test_field_mapping_prompt_completion_and_sharegpt(tmp_path: Path) -> None:
    (tmp_path / "pc.jsonl").write_text(json.dumps({"prompt": "Say hi.", "completion": "Hi."}) + "\n")
    result = ingest([tmp_path / "pc.jsonl"], PROMPT_COMPLETION)
    assert result.instructions.loc[0, ["instruction", "output"]].tolist() == ["Say hi.", "Hi."]
    sharegpt = [
        {"conversations": [{"from": "human", "value": "Q?"}, {"from": "gpt", "value": "A."}]},
        {"conversations": [{"from": "gpt", "value": "only assistant"}]},
    ]
    (tmp_path / "sg.json").write_text(json.dumps(sharegpt))
    result = ingest([tmp_path / "sg.json"])
    assert result.instructions.loc[0, ["instruction", "output"]].tolist() == ["Q?", "A."]
    assert reasons(result) == ["malformed_conversations"]


def test_truncated_json_array_keeps_good_rows_and_quarantines_the_rest(tmp_path: Path) -> None:
    text = json.dumps([GOOD, {"instruction": "Two.", "output": "2"}, {"instruction": "Three.", "output": "3"}])
    (tmp_path / "cut.json").write_text(text[: len(text) - 20])
    result = ingest([tmp_path / "cut.json"])
    assert len(result.instructions) == 2
    assert reasons(result) == ["malformed_json"]


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
    assert len(result.instructions) + len(result.quarantined) == 51_941
    InstructionsSchema.validate(result.instructions)
