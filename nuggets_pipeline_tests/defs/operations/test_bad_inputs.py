"""Every bad input of the operations table (docs/operations.md): each gets a clear error or a quarantine row,
and none changes data already stored."""

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from nuggets_pipeline.core.incoming import batch_key, file_digest
from nuggets_pipeline.defs.partitions import CANDIDATE_SHARDS, INCOMING_FILES
from nuggets_pipeline.defs.resources import ModelResource, ScoringResource
from nuggets_pipeline_tests.accounting import assert_rows_accounted
from nuggets_pipeline_tests.materialize import ASSETS, example, prepare, tiny_resources

INCREMENT = ["candidate_increments", "quarantined_increments"]


class Store:
    def __init__(self, root: Path, instance: dg.DagsterInstance) -> None:
        self.root, self.home, self.instance = root, root / "home", instance

    def stored(self) -> dict[str, bytes]:
        """Every Parquet file in the warehouse and every checkpoint, by path."""
        files = [*(self.home / "warehouse").rglob("*.parquet"), *(self.home / "checkpoints").rglob("*.parquet")]
        return {str(p.relative_to(self.home)): p.read_bytes() for p in files}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    root = tmp_path_factory.mktemp("bad_inputs")
    (root / "home").mkdir()
    (root / "dagster").mkdir()
    overrides = {"telemetry": {"enabled": False}}
    with dg.DagsterInstance.local_temp(tempdir=str(root / "dagster"), overrides=overrides) as instance:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("NUGGETS_HOME", str(root / "home"))
            prepare(instance, root / "pool.json", rows=10, shards=1)
        yield Store(root, instance)


@pytest.fixture(autouse=True)
def untouched(store: Store, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Whatever a test feeds in, every file stored before it is byte for byte the same afterwards."""
    monkeypatch.setenv("NUGGETS_HOME", str(store.home))
    before = store.stored()
    yield
    after = store.stored()
    assert {k: v for k, v in after.items() if k in before} == before


def ingest_file(store: Store, path: Path, **config: Any) -> dg.ExecuteInProcessResult:
    batch = batch_key(file_digest(path))
    store.instance.add_dynamic_partitions(INCOMING_FILES, [batch])
    return dg.materialize(
        ASSETS,
        selection=INCREMENT,
        instance=store.instance,
        resources=tiny_resources(),
        partition_key=batch,
        run_config={"ops": {"ingest_increment_file": {"config": {"path": str(path), **config}}}},
        raise_on_error=False,
    )


def outputs(result: dg.ExecuteInProcessResult, rows_in: int) -> tuple[int, list[str]]:
    """New candidates and quarantine reasons; every one of the ``rows_in`` input rows is in exactly one of them."""
    assert result.success
    candidates = result.output_for_node("ingest_increment_file", "candidate_increments")
    quarantined = result.output_for_node("ingest_increment_file", "quarantined_increments")
    assert_rows_accounted(candidates, quarantined, rows_in)
    return len(candidates), sorted(r.split(":")[0] for r in quarantined["reason"])


def failure(result: dg.ExecuteInProcessResult) -> str:
    assert not result.success
    [event] = result.get_step_failure_events()
    error, messages = event.step_failure_data.error, []
    while error is not None:  # Dagster's wrapper first, then the cause the user sees in the UI
        messages.append(error.message)
        error = error.cause
    return "\n".join(messages)


def path_with(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def lines(*rows: object) -> str:
    return "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n"


def good(topic: str) -> list[dict[str, str]]:
    """Three valid rows, different in every case: a row seen in an earlier case would count as a duplicate."""
    return [example(i, topic) for i in range(3)]


CASES = {
    "malformed_lines": (lines(*good("planet"), "{broken", "[1, 2"), 3, ["malformed_json", "malformed_json"]),
    "truncated_array": (json.dumps(good("river"))[:-40], 2, ["malformed_json"]),
    "wrong_field_names": (
        lines({"prompt": "Say hi.", "completion": "Hi."}, {"prompt": "Say bye.", "completion": "Bye."}),
        0,
        ["missing_field", "missing_field"],
    ),
    "empty_texts": (
        lines(*good("tree"), {"instruction": "", "output": "x"}, {"instruction": "Answer.", "output": "   "}),
        3,
        ["empty_instruction", "empty_output"],
    ),
    "huge_text": (lines(*good("cloud"), {"instruction": "Summarise.", "output": "word " * 5000}), 3, ["too_long"]),
    "repeats_stored_rows": (lines(*(example(i) for i in range(10))), 0, ["duplicate"] * 10),
    "two_arrays": (json.dumps(good("lake")[:1]) + "\n" + json.dumps(good("lake")[1:]), 3, []),
    "trailing_data": (
        json.dumps(good("hill")[:2]) + "\n" + json.dumps(good("hill")[2]) + "\ntrailing junk",
        3,
        ["malformed_json"],
    ),
    "bad_element": (
        "["
        + ", ".join(
            [*map(json.dumps, good("road")[:2]), '{"instruction": "x", "output": }', json.dumps(good("road")[2])]
        )
        + "]",
        3,
        ["malformed_json"],
    ),
    "byte_order_mark": ("\ufeff" + lines(*good("field")), 3, []),
}
JSON_CASES = {"truncated_array": 3, "two_arrays": 3, "trailing_data": 4, "bad_element": 4}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_rows_are_quarantined_with_their_reason(store: Store, tmp_path: Path, case: str) -> None:
    text, new, reasons = CASES[case]
    path = tmp_path / ("batch.json" if case in JSON_CASES else "batch.jsonl")
    path.write_text(text)
    result = ingest_file(store, path)
    rows_in = JSON_CASES.get(case, len(text.splitlines()))
    assert outputs(result, rows_in) == (new, reasons)
    if case == "huge_text":
        raw = result.output_for_node("ingest_increment_file", "quarantined_increments")["raw"].iloc[0]
        assert len(raw) < 4100 and raw.endswith("chars]")  # the raw preview is clipped, the row is not cut


def test_non_utf8_bytes_quarantine_only_their_line(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    latin1 = '{"instruction": "Caf\xe9?", "output": "Oui."}\n'.encode("latin-1")
    path.write_bytes(lines(*good("stone")).encode() + latin1)
    assert outputs(ingest_file(store, path), 4) == (3, ["undecodable_bytes"])


def test_one_latin1_byte_in_a_pretty_printed_array_quarantines_only_its_record(store: Store, tmp_path: Path) -> None:
    """Issue 23 item 4: the whole array was read line by line instead: 0 ingested, a junk row per line."""
    path = tmp_path / "alpaca.json"
    records = [example(i, "harbour") for i in range(20)]
    records[4] = {**records[4], "output": "Voil\xe0."}
    path.write_bytes(json.dumps(records, indent=4, ensure_ascii=False).encode("latin-1"))
    result = ingest_file(store, path)
    assert outputs(result, 20) == (19, ["undecodable_bytes"])
    quarantined = result.output_for_node("ingest_increment_file", "quarantined_increments")
    assert quarantined["row_number"].tolist() == [4] and "byte 0xe0" in quarantined["reason"].iloc[0]


def test_a_semicolon_csv_is_read_and_a_missing_configured_field_is_named(store: Store, tmp_path: Path) -> None:
    """Issue 23 item 10: a semicolon CSV quarantined every row as "missing_field"; the reason never named the
    configured field nor the fields the file has."""
    sheet = tmp_path / "sheet.csv"
    sheet.write_text("instruction;output\n" + "".join(f"Spell {i} in Latin, please.;Numerus {i}.\n" for i in range(5)))
    assert outputs(ingest_file(store, sheet), 5) == (5, [])
    path = path_with(tmp_path / "qa.jsonl", lines({"question": "Say hi.", "reply": "Hi."}))
    result = ingest_file(store, path, instruction_field="prompt", output_field="reply")
    assert outputs(result, 1) == (0, ["missing_field"])
    reason = result.output_for_node("ingest_increment_file", "quarantined_increments")["reason"].iloc[0]
    assert reason.startswith("missing_field: prompt (configured instruction field 'prompt'; fields found: 'question'")


def test_a_truncated_gzip_keeps_its_rows_before_the_cut(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "cut.jsonl.gz"
    data = gzip.compress(lines(*(example(i, "meadow") for i in range(60))).encode())
    path.write_bytes(data[: len(data) // 2])
    result = ingest_file(store, path)
    quarantined = result.output_for_node("ingest_increment_file", "quarantined_increments")
    kept = len(result.output_for_node("ingest_increment_file", "candidate_increments"))
    assert 0 < kept < 60 and outputs(result, kept + 1) == (kept, ["truncated_gzip"])
    assert "re-copy the file" in quarantined["reason"].iloc[0]


def test_wrong_field_names_are_fixed_by_config_not_code(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "prompts.jsonl"
    rows = [{"prompt": f"Say {word}.", "completion": f"{word.title()}."} for word in ("yes", "no", "maybe")]
    assert outputs(
        ingest_file(store, path_with(path, lines(*rows)), instruction_field="prompt", output_field="completion"), 3
    ) == (3, [])


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.jsonl", b"", "source file is empty"),
        ("notes.txt", b"instruction: hi", "unknown file type .txt"),
        ("broken.json", b'{"instruction": "x"', "not valid JSON"),
        ("quote.csv", b'instruction,output\n"Say hi.,Hi.\n', "look for an unbalanced quote"),
        ("fake.parquet", b'{"instruction": "x", "output": "y"}', "not a readable Parquet file"),
        ("junk.jsonl.gz", b"not gzip", "not a valid gzip file"),
    ],
)
def test_an_unreadable_file_fails_its_run_with_the_reason(
    store: Store, tmp_path: Path, name: str, content: bytes, message: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    assert message in failure(ingest_file(store, path))
    assert not (store.home / "warehouse" / "candidate_increments" / f"{batch_key(file_digest(path))}.parquet").exists()


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (ModelResource(model="/no/such/model"), "cannot load model '/no/such/model'"),
        (ModelResource(model="tiny-random-llama", device="cuda"), "CUDA is not available"),
    ],
)
def test_a_model_that_cannot_load_fails_before_any_score_is_written(
    store: Store, model: ModelResource, message: str
) -> None:
    resources = {**tiny_resources(), "scoring_model": model}
    result = dg.materialize(
        ASSETS, selection=["zero_shot_losses"], instance=store.instance, resources=resources, raise_on_error=False
    )
    assert message in failure(result)


def test_bad_config_values_are_refused_before_the_run(store: Store) -> None:
    with pytest.raises(Exception, match="greater than 0"):
        ScoringResource(checkpoint_every=0)
    with pytest.raises(ValueError, match="dtype must be one of"):
        ModelResource(model="tiny-random-llama", dtype="float8")
    # A value of the right type outside its range passes Dagster's schema and fails the step, before any output.
    out_of_range = dg.materialize(
        ASSETS,
        selection=["candidates"],
        instance=store.instance,
        resources=tiny_resources(),
        run_config={"ops": {"candidates": {"config": {"shards": 1000}}}},
        raise_on_error=False,
    )
    assert "Input should be less than or equal to 999" in failure(out_of_range)
    store.instance.add_dynamic_partitions(INCOMING_FILES, ["inc00000000"])
    with pytest.raises(dg.DagsterInvalidConfigError, match="shard_size"):
        dg.materialize(
            ASSETS,
            selection=INCREMENT,
            instance=store.instance,
            resources=tiny_resources(),
            partition_key="inc00000000",
            run_config={"ops": {"ingest_increment_file": {"config": {"shard_size": "many"}}}},
        )


def test_a_missing_shard_gets_a_clear_error(store: Store) -> None:
    score = {"assets": ASSETS, "selection": ["one_shot_scores"], "instance": store.instance}
    with pytest.raises(Exception, match="base-999"):
        dg.materialize(**score, resources=tiny_resources(), partition_key="base-999")
    store.instance.add_dynamic_partitions(CANDIDATE_SHARDS, ["base-777"])  # registered, but nothing in it
    result = dg.materialize(**score, resources=tiny_resources(), partition_key="base-777", raise_on_error=False)
    assert "shard base-777 has no candidates" in failure(result)
