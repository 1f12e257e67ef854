"""Models load from safetensors only and never run code shipped with them; the UI binds to localhost."""

import json
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from nuggets_pipeline.core.modeling import ModelLoadError, copy_tokenizer_files, load_model
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
    copy_tokenizer_files("tiny-random-llama", folder)
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
