"""Models load from safetensors only and never run code shipped with them; the UI binds to localhost."""

import json
import os
from pathlib import Path

import dagster as dg
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from nuggets_pipeline.core.modeling import ModelLoadError, load_model, load_tokenizer
from nuggets_pipeline.core.paths import REPO_ROOT


def tiny_checkpoint(folder: Path, safe: bool) -> Path:
    config = LlamaConfig(
        vocab_size=49152, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    model = LlamaForCausalLM(config)
    if safe:
        model.save_pretrained(folder)
    else:  # the pickle format a downloaded checkpoint may still come in (unpickling can run arbitrary code)
        config.save_pretrained(folder)
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    load_tokenizer("tiny-random-llama").save_pretrained(folder)  # the folder loads on its own
    return folder


def test_pickle_weights_are_refused_and_safetensors_load(tmp_path: Path) -> None:
    pickled = tiny_checkpoint(tmp_path / "pickled", safe=False)
    assert (pickled / "pytorch_model.bin").exists() and not (pickled / "model.safetensors").exists()
    with pytest.raises(ModelLoadError, match="safetensors"):
        load_model(str(pickled))
    safe = tiny_checkpoint(tmp_path / "safe", safe=True)
    assert load_model(str(safe)).model.config.hidden_size == 16


def test_code_shipped_with_a_model_is_never_run(tmp_path: Path) -> None:
    folder = tiny_checkpoint(tmp_path / "remote", safe=True)
    marker = tmp_path / "code-ran"
    (folder / "configuration_evil.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
        "from transformers import LlamaConfig\nclass EvilConfig(LlamaConfig):\n    model_type = 'evil'\n"
    )
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_evil.EvilConfig"}
    (folder / "config.json").write_text(json.dumps(config))
    try:
        load_model(str(folder))
    except Exception as error:  # refusing is fine; what matters is that the file never ran
        assert "trust_remote_code" in str(error) or isinstance(error, ModelLoadError)
    assert not marker.exists()


def test_the_ui_binds_to_localhost() -> None:
    ui = next(line for line in (REPO_ROOT / "Makefile").read_text().splitlines() if "dagster dev" in line)
    assert "-h 127.0.0.1" in ui


FAKE_SECRETS = [
    "sk-proj-nuggetsFAKEkey0123456789abcdefABCDEF",
    "hf_nuggetsFAKEtoken0123456789abcdefXYZ",
]


def test_links_to_secrets_and_system_files_are_refused_and_copied_nowhere(
    prepared: dg.DagsterInstance, tmp_path: Path, isolated_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A link dropped into the incoming folder (or named as a source) to an environment file or /etc/passwd is
    never read: no run is requested for it, a run forced onto it fails naming the link, and not one line of the
    target reaches the warehouse, the quarantine tables, the run database or the event log."""
    from nuggets_pipeline_tests.defs.operations.test_incoming import execute, tick
    from nuggets_pipeline_tests.materialize import ASSETS, tiny_resources

    monkeypatch.setenv("NUGGETS_INCOMING_SETTLE_S", "0")
    outside = tmp_path / "outside"  # stands for /proc/<pid>/environ: secrets, one per line, as JSON would not be
    outside.mkdir()
    environ = outside / "environ"
    environ.write_text("".join(f"TOKEN_{i}={s}\n" for i, s in enumerate(FAKE_SECRETS)))
    passwd = Path("/etc/passwd")
    passwd_lines = [line for line in passwd.read_text().splitlines() if line.strip()]
    incoming = isolated_home / "incoming"
    incoming.mkdir()
    (incoming / "env.jsonl").symlink_to(environ)
    (incoming / "users.jsonl").symlink_to(passwd)
    os.mkfifo(incoming / "pipe.jsonl")  # hashing a FIFO would block the sensor for ever

    requests, _ = tick(prepared, None)
    for request in requests:  # today's code requests runs for the links; the fix requests none
        execute(prepared, request)
    assert requests == []
    for link in ("env.jsonl", "users.jsonl"):
        batch = "inc00000000"
        prepared.add_dynamic_partitions("incoming_files", [batch])
        forced = dg.materialize(
            ASSETS,
            selection=["candidate_increments", "quarantined_increments"],
            instance=prepared,
            resources=tiny_resources(),
            partition_key=batch,
            run_config={"ops": {"ingest_increment_file": {"config": {"path": str(incoming / link)}}}},
            raise_on_error=False,
        )
        assert not forced.success
        [event] = forced.get_step_failure_events()
        assert "symbolic link" in event.step_failure_data.error.message
        assert str(incoming / link) in event.step_failure_data.error.message
    as_source = dg.materialize(
        ASSETS,
        selection=["instructions", "quarantined_instructions"],
        instance=prepared,
        resources=tiny_resources(),
        run_config={"ops": {"ingest_instructions": {"config": {"sources": [str(incoming / "env.jsonl")]}}}},
        raise_on_error=False,
    )
    assert not as_source.success

    leaked = [*(s.encode() for s in FAKE_SECRETS), *(line.encode() for line in passwd_lines if len(line) > 12)]
    checked = 0
    for path in tmp_path.rglob("*"):
        if path.is_file() and not path.is_symlink() and outside not in path.parents:
            content = path.read_bytes()
            checked += 1
            assert not [s for s in leaked if s in content], path
    assert checked > 5  # the warehouse, the run database and the event log were there to be searched


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_every_writer_gives_its_files_the_warehouse_mode(tmp_path: Path, umask: int) -> None:
    """One rule for every file written: 0666 less the umask (0644 by default, 0600 under umask 077)."""
    import pandas as pd

    from nuggets_pipeline.core.storage import Warehouse, write_parquet_atomic, write_text_atomic
    from nuggets_pipeline.defs import metadata as md

    store = Warehouse(tmp_path / "warehouse")
    previous = os.umask(umask)
    try:
        written = [
            store.write("instructions", pd.DataFrame({"id": ["a"]})),
            write_parquet_atomic(pd.DataFrame({"id": ["b"]}), tmp_path / "checkpoint.parquet"),
            write_text_atomic(store.evaluation_report_path, "# report\n"),
        ]
        md.histogram_plot([0.1, 0.5], store.plot_path("golden_scores"), "Golden scores", "fraction", bins=2)
        written.append(store.plot_path("golden_scores"))
    finally:
        os.umask(previous)
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in written}
    assert set(modes.values()) == {oct(0o666 & ~umask)}, modes


@pytest.mark.slow
def test_every_file_scoring_selection_and_export_write_has_the_mode_of_warehouse_files(
    tmp_path: Path, isolated_home: Path, instance: dg.DagsterInstance
) -> None:
    """Measured after `make demo`: exported files were 0600 while warehouse files were 0644 under the same umask
    (two atomic Parquet writers besides the warehouse's, without its mode fix). Now every file of the home that
    scoring, the selection and the exports write has the warehouse files' mode."""
    from nuggets_pipeline_tests.materialize import ASSETS, prepare, score, select, tiny_resources

    previous = os.umask(0o022)
    try:
        prepare(instance, tmp_path / "pool.json")
        assert score(instance, "base-000", "base-001").success
        assert select(instance, top_fraction=0.5).success
        exported = dg.materialize(
            ASSETS, selection=["scored_pool_exports"], instance=instance, resources=tiny_resources()
        )
        assert exported.success
    finally:
        os.umask(previous)
    files = {str(p.relative_to(isolated_home)): p.stat().st_mode & 0o777 for p in isolated_home.rglob("*")}
    files = {name: mode for name, mode in files.items() if (isolated_home / name).is_file()}
    warehouse_mode = files["warehouse/instructions/all.parquet"]
    assert warehouse_mode == 0o644
    for expected in ("warehouse/one_shot_scores/", "checkpoints/", "exports/golden/", "plots/golden_scores.png"):
        assert any(name.startswith(expected) for name in files), f"nothing under {expected} was written"
    assert {name: oct(mode) for name, mode in files.items() if mode != warehouse_mode} == {}


def test_credentials_in_the_judge_url_are_refused_before_a_request_and_never_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``NUGGETS_JUDGE_BASE_URL=http://user:secret@host/v1`` used to reach every retry warning in clear, and httpx
    sent the userinfo as a Basic header an echoing endpoint stored in the ``error`` column. Now the judge resource
    refuses it when the judge is built, before a request, saying where the key goes."""
    from nuggets_pipeline.defs.resources import JudgeResource
    from nuggets_pipeline_tests.core.test_judges import HeaderEchoServer

    server = HeaderEchoServer(503)  # would echo every header it gets, Authorization included
    host = server.base_url.removeprefix("http://")
    secret = "s3cret-pass-" + "Q7w8E9r0" * 3
    try:
        with caplog.at_level("DEBUG"), pytest.raises(ValueError, match="carries credentials") as refused:
            JudgeResource(backend="openai", model="judge-model", base_url=f"http://user:{secret}@{host}").build()
    finally:
        server.close()
    assert server.requests == 0
    assert "NUGGETS_JUDGE_API_KEY" in str(refused.value)
    for text in (str(refused.value), caplog.text):
        assert secret[:8] not in text and secret[-8:] not in text
