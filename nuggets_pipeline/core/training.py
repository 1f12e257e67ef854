"""Supervised fine-tuning on a subset of instruction data: Stanford Alpaca's recipe on the HF Trainer.

``train_sft`` trains one variant (the golden subset, a random control, ...) and writes a plain Hugging Face
model folder; ``python -m nuggets_pipeline.core.training`` does the same from an Alpaca-format file and is
what multi-GPU launchers run (see docs/training.md and deploy/accelerate/).

Layout of ``output_dir``::

    checkpoints/  Trainer checkpoints (weights, optimizer, scheduler, RNG) and run.json; a re-run resumes
    model/        the result: safetensors, tokenizer with an Alpaca chat template, generation config,
                  README.md (the model card)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from accelerate import PartialState
from datasets import Dataset
from transformers import (
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

from nuggets_pipeline.core.checkpoints import set_aside, trainer_checkpoint_problem
from nuggets_pipeline.core.ids import ids_hash
from nuggets_pipeline.core.modeling import load_model, load_tokenizer
from nuggets_pipeline.core.paths import nuggets_home
from nuggets_pipeline.core.sft_data import (
    OVERLONG_POLICIES,
    EmptyTrainingSetError,
    SFTDataset,
    SkippedExample,
    TrainingDataError,
    alpaca_chat_template,
    prepare_sft_dataset,
    random_subset,
    sft_collator,
)

Log = Callable[[str], None]

METHODS = ("full", "lora")
TRAINING_DTYPES = ("float32", "bfloat16")
RUN_FILE = "run.json"


class TrainingError(RuntimeError):
    """Training cannot start or finish as asked; the message says what to do."""


@dataclass(frozen=True)
class TrainingConfig:
    """Hyper-parameters of one fine-tuning run. The defaults are the ``cpu-demo`` profile.

    ``dtype`` is the compute precision: "bfloat16" trains with bf16 autocast over float32 master weights (as
    Alpaca's ``--bf16 True`` does), so the saved weights are float32 either way. The global batch is
    per_device_batch_size x gradient_accumulation_steps x the number of processes.
    """

    epochs: float = 1.0
    learning_rate: float = 5e-5
    lr_scheduler: str = "cosine"
    # Warm-up steps are rounded up: any ratio > 0 spends a whole step at lr 0 in a run of a few steps.
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    per_device_batch_size: int = 4
    gradient_accumulation_steps: int = 2
    max_length: int = 256
    # What to do with an example longer than max_length: "truncate" its response or "skip" it (both counted).
    overlong: str = "truncate"
    seed: int = 42
    dtype: str = "float32"
    gradient_checkpointing: bool = False
    # Examples end to end in one row instead of padded (same loss, no compute spent on padding; sft_collator).
    padding_free: bool = False
    method: str = "full"
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    save_steps: int = 5
    # Checkpoints kept on disk; older ones are deleted once a newer one is complete.
    save_total_limit: int = 2
    # Stops after this many optimizer steps even if the epochs are not done (None: train all epochs).
    max_steps: int | None = None
    logging_steps: int = 1

    def __post_init__(self) -> None:
        checks = {
            "method": (self.method in METHODS, f"one of {METHODS}"),
            "dtype": (self.dtype in TRAINING_DTYPES, f"one of {TRAINING_DTYPES}"),
            "overlong": (self.overlong in OVERLONG_POLICIES, f"one of {OVERLONG_POLICIES}"),
            "epochs": (self.epochs > 0, "> 0"),
            "learning_rate": (self.learning_rate > 0, "> 0"),
            "warmup_ratio": (0 <= self.warmup_ratio < 1, "in [0, 1)"),
            "per_device_batch_size": (self.per_device_batch_size >= 1, ">= 1"),
            "gradient_accumulation_steps": (self.gradient_accumulation_steps >= 1, ">= 1"),
            "max_length": (self.max_length >= 2, ">= 2"),
            "save_steps": (self.save_steps >= 1, ">= 1"),
            "max_steps": (self.max_steps is None or self.max_steps >= 1, "None or >= 1"),
            "logging_steps": (self.logging_steps >= 1, ">= 1"),
        }
        wrong = [f"{name}={getattr(self, name)!r} (must be {rule})" for name, (ok, rule) in checks.items() if not ok]
        if wrong:
            raise ValueError("invalid training configuration: " + "; ".join(wrong))

    def global_batch_size(self, world_size: int = 1) -> int:
        return self.per_device_batch_size * self.gradient_accumulation_steps * world_size


PROFILES: dict[str, TrainingConfig] = {
    # SmolLM2-135M on 64 Alpaca examples: 8 optimizer steps of 8 examples, one epoch (docs/training.md).
    "cpu-demo": TrainingConfig(),
    # Alpaca's LLaMA-7B setting, the one NUGGETS fine-tunes with: global batch 128 = 4 x 4 x 8 GPUs.
    "paper": TrainingConfig(
        epochs=3,
        learning_rate=2e-5,
        lr_scheduler="cosine",
        warmup_ratio=0.03,
        weight_decay=0.0,
        per_device_batch_size=4,
        gradient_accumulation_steps=4,
        max_length=512,
        dtype="bfloat16",
        save_steps=100,
    ),
}


def get_profile(name: str, **overrides: Any) -> TrainingConfig:
    """A named profile with some fields replaced, e.g. ``get_profile("paper", max_steps=10)``."""
    try:
        profile = PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown training profile {name!r}; choose one of {sorted(PROFILES)}") from None
    known = {f.name for f in dataclasses.fields(TrainingConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown training option(s) {unknown}; known: {sorted(known)}")
    return dataclasses.replace(profile, **overrides)


@dataclass
class TrainingResult:
    """What one ``train_sft`` call did. Throughput figures cover this call only (after a resume, the rest)."""

    output_path: Path
    base_model: str
    variant: str
    subset_hash: str
    config: TrainingConfig
    # (optimizer step, training loss) as logged, from the first step of the run (earlier calls included).
    losses: list[tuple[int, float]]
    global_step: int
    examples_in_subset: int
    examples_trained: int
    # Examples and non-padding tokens processed in this call, summed over processes.
    examples_seen: int
    train_tokens: int
    wall_seconds: float
    train_seconds: float
    resumed_from_step: int
    overlong: int
    truncated: int
    skipped: list[SkippedExample] = field(default_factory=list)
    world_size: int = 1

    @property
    def final_loss(self) -> float | None:
        return self.losses[-1][1] if self.losses else None

    @property
    def tokens_per_second(self) -> float:
        return self.train_tokens / self.train_seconds if self.train_seconds > 0 else 0.0

    @property
    def examples_per_second(self) -> float:
        return self.examples_seen / self.train_seconds if self.train_seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (for run metadata)."""
        summary = dataclasses.asdict(self)
        summary["output_path"] = str(self.output_path)
        summary["final_loss"] = self.final_loss
        summary["tokens_per_second"] = self.tokens_per_second
        summary["examples_per_second"] = self.examples_per_second
        return summary


# --- Trainer plumbing ---------------------------------------------------------------------------------------
@dataclass
class _Throughput:
    examples: int = 0
    tokens: int = 0
    started: float = field(default_factory=time.monotonic)


class _SFTTrainer(Trainer):
    """The stock Trainer, counting the examples and real (non-padding) tokens it trains on."""

    def __init__(self, *args: Any, throughput: _Throughput, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.throughput = throughput

    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], *args: Any, **kwargs: Any):
        padding_free = "attention_mask" not in inputs  # one row of examples end to end, each from position 0
        if model.training:
            if padding_free:
                self.throughput.examples += int((inputs["position_ids"] == 0).sum())
                self.throughput.tokens += int(inputs["input_ids"].numel())
            else:
                self.throughput.examples += int(inputs["input_ids"].shape[0])
                self.throughput.tokens += int(inputs["attention_mask"].sum())
        if padding_free:
            # transformers reads example boundaries from position ids only without a KV cache; with one it would
            # let every token attend to the examples before it in the row.
            inputs = {**inputs, "use_cache": False}
        return super().compute_loss(model, inputs, *args, **kwargs)


class _Progress(TrainerCallback):
    """One line per logged step (step, loss, lr, throughput) to the terminal and the caller's log.

    ``emit`` is silent on all but the main process."""

    def __init__(self, throughput: _Throughput, emit: Log, world_size: int) -> None:
        self.throughput = throughput
        self.emit = emit
        # Data-parallel processes train equal numbers of batches, so this process's count x world size.
        self.world_size = world_size

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any):
        self.throughput.started = time.monotonic()
        self.emit(f"training for {state.max_steps} optimizer steps (from step {state.global_step})")

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, logs=None, **_: Any):
        if not logs or "loss" not in logs:
            return
        elapsed = max(time.monotonic() - self.throughput.started, 1e-9)
        examples = self.throughput.examples * self.world_size / elapsed
        tokens = self.throughput.tokens * self.world_size / elapsed
        self.emit(
            f"step {state.global_step}/{state.max_steps} loss {logs['loss']:.4f} "
            f"lr {logs.get('learning_rate', 0.0):.2e} {examples:.2f} examples/s {tokens:.0f} tokens/s"
        )

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any):
        self.emit(f"saved checkpoint-{state.global_step}")


def _emitter(log: Log | None, quiet: bool = False) -> Log:
    """Progress goes to stderr and to ``log``; other ranks than the main one stay quiet."""

    def emit(message: str) -> None:
        if quiet:
            return
        print(f"[train] {message}", file=sys.stderr, flush=True)
        if log is not None:
            log(message)

    return emit


def latest_checkpoint(checkpoints: Path) -> Path | None:
    """The newest complete Trainer checkpoint. The Trainer writes trainer_state.json last, so a folder without
    it was cut off mid-save (a kill) and is passed over."""
    if not checkpoints.is_dir():
        return None
    complete = [
        (int(path.name.removeprefix("checkpoint-")), path)
        for path in checkpoints.glob("checkpoint-*")
        if path.name.removeprefix("checkpoint-").isdigit() and (path / "trainer_state.json").is_file()
    ]
    return max(complete)[1] if complete else None


def set_aside_unusable_checkpoints(checkpoints: Path, emit: Log) -> None:
    """Newest first, rename a checkpoint that cannot be resumed from (corrupt state, torn weights or optimizer)
    to ``corrupt-checkpoint-N...`` until one can: the run resumes from that one instead of failing for good."""
    while (newest := latest_checkpoint(checkpoints)) is not None:
        problem = trainer_checkpoint_problem(newest)
        if problem is None:
            return
        set_aside(newest, problem, emit, prefix="corrupt-")


def _run_identity(
    base_model: str, variant: str, subset: str, config: TrainingConfig, data: SFTDataset
) -> dict[str, Any]:
    return {
        "base_model": base_model,
        "variant": variant,
        "subset_hash": subset,
        "example_ids_sha256": ids_hash(data.ids, ordered=True),
        "config": dataclasses.asdict(config),
    }


def _claim_checkpoints(checkpoints: Path, identity: dict) -> None:
    """Checkpoints resume only the run that wrote them; anything else fails loudly instead of mixing runs."""
    checkpoints.mkdir(parents=True, exist_ok=True)
    run_file = checkpoints / RUN_FILE
    current = json.loads(json.dumps(identity))  # tuples become lists, as they come back from the file
    previous = json.loads(run_file.read_text()) if run_file.exists() else None
    if previous is not None and previous != current and latest_checkpoint(checkpoints) is not None:
        changed = sorted(k for k in current if previous.get(k) != current[k])
        raise TrainingError(
            f"{checkpoints} holds checkpoints of a different run (differs in {changed}); "
            "delete that folder or choose another output_dir"
        )
    run_file.write_text(json.dumps(current, indent=2))


def _wrap_lora(model: torch.nn.Module, config: TrainingConfig) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.lora_target_modules),
        task_type="CAUSAL_LM",
    )
    if config.gradient_checkpointing:
        # Frozen embeddings give checkpointed blocks inputs without grad; LoRA's grads would then be lost.
        model.enable_input_require_grads()
    return get_peft_model(model, lora)


def _training_arguments(config: TrainingConfig, checkpoints: Path) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(checkpoints),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps if config.max_steps is not None else -1,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler,
        # A float below 1 is a ratio of the total steps.
        warmup_steps=float(config.warmup_ratio),
        weight_decay=config.weight_decay,
        per_device_train_batch_size=config.per_device_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        bf16=config.dtype == "bfloat16",
        activation_checkpointing=config.gradient_checkpointing,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        logging_strategy="steps",
        logging_steps=config.logging_steps,
        seed=config.seed,
        data_seed=config.seed,
        report_to="none",
        disable_tqdm=True,
        # The dataset holds exactly the model's inputs; no column guessing (it misreads PEFT signatures).
        remove_unused_columns=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
    )


def _save_final_model(trainer: _SFTTrainer, config: TrainingConfig, staging: Path) -> None:
    """Write a plain Hugging Face model folder: LoRA merged, tokenizer and generation config beside."""
    if config.method == "lora":
        if trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled:
            raise TrainingError("LoRA runs on one process or with plain data parallelism, not FSDP/DeepSpeed")
        if trainer.is_world_process_zero():
            merged = trainer.accelerator.unwrap_model(trainer.model).merge_and_unload()
            merged.save_pretrained(staging, safe_serialization=True)
            trainer.processing_class.save_pretrained(staging)
    else:
        if trainer.is_fsdp_enabled:
            # Checkpoints may be sharded (cheaper to write); the model folder needs one whole state dict.
            trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
        # save_model gathers FSDP/DeepSpeed shards; every process must call it.
        trainer.save_model(str(staging))
    if trainer.is_world_process_zero():
        # Trainer.save_model leaves its pickled arguments; the model folder holds only standard files.
        (staging / "training_args.bin").unlink(missing_ok=True)


# --- Public entry point -------------------------------------------------------------------------------------
def train_sft(
    base_model: str,
    examples: pd.DataFrame,
    output_dir: Path,
    config: TrainingConfig,
    variant: str,
    subset_hash: str,
    log: Log | None = None,
    callbacks: Sequence[TrainerCallback] = (),
) -> TrainingResult:
    """Fine-tune ``base_model`` on ``examples`` (id, instruction, input, output); save to output_dir/model.

    Re-running with the same arguments after an interruption resumes from the newest complete checkpoint
    under output_dir/checkpoints. ``log`` receives one line per logged step (the Dagster layer passes
    ``context.log.info``); ``callbacks`` are extra Trainer callbacks.
    """
    started = time.monotonic()
    output_dir = Path(output_dir)
    tokenizer = load_tokenizer(base_model)
    tokenizer.padding_side = "right"
    tokenizer.chat_template = alpaca_chat_template()
    data = prepare_sft_dataset(examples, tokenizer, config.max_length, config.overlong)

    checkpoints = output_dir / "checkpoints"
    args = _training_arguments(config, checkpoints)
    # TrainingArguments sets up the process group (one process, or the launcher's); ask it, not the env.
    state = args.distributed_state or PartialState()
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and state.num_processes != launched:
        # Every process would think it is the only one: train alone, then race to write the same model folder.
        raise TrainingError(
            f"started as one of WORLD_SIZE={launched} processes but no process group was set up; on a machine "
            "without CUDA set ACCELERATE_USE_CPU=true so the processes join a gloo group (finetuned_model does)"
        )
    emit = _emitter(log, quiet=not state.is_main_process)
    emit(
        f"{variant}: {len(data)} of {len(examples)} examples, {data.tokens} tokens ({data.target_tokens} in "
        f"responses); over max_length {config.max_length}: {data.overlong} ({data.truncated} truncated, "
        f"{len(data.skipped)} skipped); global batch {config.global_batch_size(state.num_processes)}"
    )
    if state.is_main_process:
        _claim_checkpoints(checkpoints, _run_identity(base_model, variant, subset_hash, config, data))
        set_aside_unusable_checkpoints(checkpoints, emit)
    state.wait_for_everyone()
    resume = latest_checkpoint(checkpoints)
    resumed_from_step = 0
    if resume:
        resumed_from_step = int(json.loads((resume / "trainer_state.json").read_text())["global_step"])
        emit(f"resuming from {resume.name}")

    # float32 master weights whatever config.dtype; the Trainer moves the model to the accelerator.
    model = load_model(base_model, dtype="float32", device="cpu").model
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    if config.method == "lora":
        model = _wrap_lora(model, config)

    throughput = _Throughput()
    trainer = _SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(data.features),
        data_collator=sft_collator(tokenizer, padding_free=config.padding_free),
        processing_class=tokenizer,
        callbacks=[_Progress(throughput, emit, state.num_processes), *callbacks],
        throughput=throughput,
    )
    trainer.remove_callback(PrinterCallback)  # it prints raw log dicts; _Progress prints readable lines
    train_started = time.monotonic()
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    train_seconds = time.monotonic() - train_started

    counts = torch.tensor([throughput.examples, throughput.tokens], device=trainer.accelerator.device)
    if state.num_processes > 1:
        counts = trainer.accelerator.reduce(counts, reduction="sum")
    examples_seen, train_tokens = (int(c) for c in counts.tolist())

    model_dir = output_dir / "model"
    staging = output_dir / ".model-staging"
    if state.is_main_process and staging.exists():
        shutil.rmtree(staging)
    state.wait_for_everyone()
    _save_final_model(trainer, config, staging)

    result = TrainingResult(
        output_path=model_dir,
        base_model=base_model,
        variant=variant,
        subset_hash=subset_hash,
        config=config,
        losses=[(int(e["step"]), float(e["loss"])) for e in trainer.state.log_history if "loss" in e],
        global_step=trainer.state.global_step,
        examples_in_subset=len(examples),
        examples_trained=len(data),
        examples_seen=examples_seen,
        train_tokens=train_tokens,
        wall_seconds=time.monotonic() - started,
        train_seconds=train_seconds,
        resumed_from_step=resumed_from_step,
        overlong=data.overlong,
        truncated=data.truncated,
        skipped=data.skipped,
        world_size=state.num_processes,
    )
    if state.is_main_process:
        (staging / "README.md").write_text(model_card(result, data))
        # Swap in the finished folder whole, so model/ is never a half-written mix of two runs.
        if model_dir.exists():
            shutil.rmtree(model_dir)
        staging.rename(model_dir)
        emit(
            f"{variant}: done in {result.wall_seconds:.1f} s, final loss {result.final_loss}, "
            f"{result.examples_per_second:.2f} examples/s, {result.tokens_per_second:.0f} tokens/s; "
            f"saved {model_dir}"
        )
    state.wait_for_everyone()
    return result


def model_card(result: TrainingResult, data: SFTDataset) -> str:
    """README.md of the saved model: what it was trained from, on what, how, and how the loss went."""
    config = result.config
    method = "full fine-tune" if config.method == "full" else f"LoRA r={config.lora_r}, merged"
    final_loss = "n/a" if result.final_loss is None else f"{result.final_loss:.4f}"
    facts = [
        ("base model", f"`{result.base_model}`"),
        ("variant", f"`{result.variant}`"),
        ("subset hash", f"`{result.subset_hash}`"),
        ("subset size", f"{result.examples_in_subset} examples ({result.examples_trained} trained on)"),
        ("tokens per epoch", f"{data.tokens} ({data.target_tokens} in responses, which carry the loss)"),
        (
            f"over max_length {config.max_length}",
            f"{result.overlong} ({result.truncated} responses truncated, {len(result.skipped)} skipped)",
        ),
        ("method", method),
        (
            "optimizer steps",
            f"{result.global_step} (global batch {config.global_batch_size(result.world_size)}, "
            f"{result.world_size} process(es))",
        ),
        ("final training loss", final_loss),
        ("resumed from step", str(result.resumed_from_step)),
        (
            "last run",
            f"{result.examples_seen} examples, {result.train_tokens} tokens in {result.train_seconds:.1f} s "
            f"({result.examples_per_second:.2f} examples/s, {result.tokens_per_second:.0f} tokens/s)",
        ),
    ]
    table = "\n".join(f"| {name} | {value} |" for name, value in facts)
    skipped = "\n".join(f"- `{s.id}`: {s.reason}" for s in result.skipped) or "None."
    losses = "\n".join(f"| {step} | {loss:.4f} |" for step, loss in result.losses)
    return f"""---
base_model: {result.base_model}
library_name: transformers
pipeline_tag: text-generation
tags: [nuggets, alpaca, instruction-tuning]
---

# {result.variant}: {result.base_model} fine-tuned on a NUGGETS subset

Supervised fine-tuning with Stanford Alpaca's recipe (Alpaca prompt, response + EOS, loss on the response
only) by the nuggets-pipeline.

| | |
|---|---|
{table}

The tokenizer carries the Alpaca prompt as its chat template (a user message's `content` is the instruction,
an optional `input` key the Alpaca input), so `tokenizer.apply_chat_template(messages,
add_generation_prompt=True)` renders exactly what the model was trained to continue.

## Configuration

```json
{json.dumps(dataclasses.asdict(config), indent=2)}
```

## Skipped examples

{skipped}

## Training loss

| step | loss |
|---|---|
{losses}
"""


# --- Command line -------------------------------------------------------------------------------------------
def _parse_value(name: str, text: str) -> Any:
    """A --set value converted to the type of TrainingConfig.<name>."""
    hint = typing.get_type_hints(TrainingConfig)[name]
    optional = isinstance(hint, types.UnionType) and type(None) in hint.__args__
    if optional and text.lower() in ("none", "null", ""):
        return None
    base = next(a for a in hint.__args__ if a is not type(None)) if optional else hint
    if base is bool:
        if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"{name} takes true or false, got {text!r}")
        return text.lower() in ("true", "1", "yes")
    if typing.get_origin(base) is tuple:
        return tuple(part.strip() for part in text.split(",") if part.strip())
    return base(text)


def _parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    known = {f.name for f in dataclasses.fields(TrainingConfig)}
    overrides: dict[str, Any] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or name not in known:
            raise ValueError(f"--set takes NAME=VALUE with NAME one of {sorted(known)}; got {pair!r}")
        overrides[name] = _parse_value(name, text)
    return overrides


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m nuggets_pipeline.core.training",
        description="Fine-tune a causal LM on Alpaca-format instruction data (Stanford Alpaca's SFT recipe). "
        "Run it under `accelerate launch` for several GPUs.",
    )
    parser.add_argument("--base-model", required=True, help="preset name, Hugging Face id or local folder")
    parser.add_argument(
        "--examples",
        required=True,
        type=Path,
        help="instruction data: .json/.jsonl(.gz)/.parquet/.csv with instruction, input, output",
    )
    parser.add_argument(
        "--output",
        type=Path,
        help="output folder for checkpoints/ and model/ (default: $NUGGETS_HOME/training/VARIANT)",
    )
    parser.add_argument("--profile", default="cpu-demo", choices=sorted(PROFILES))
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override one configuration field, e.g. --set max_steps=10 --set method=lora (repeatable)",
    )
    parser.add_argument("--variant", default="custom", help="name for the model card (golden, random...)")
    parser.add_argument("--subset-hash", help="recorded subset identity (default: a hash of the example ids)")
    parser.add_argument("--random-subset", type=int, metavar="N", help="train on N examples drawn at random")
    parser.add_argument("--subset-seed", type=int, default=0, help="seed of --random-subset")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from nuggets_pipeline.core.data import ingest

    args = build_parser().parse_args(argv)
    try:
        config = get_profile(args.profile, **_parse_overrides(args.overrides))
        loaded = ingest([args.examples])
        examples = loaded.instructions
        if loaded.reasons:
            print(f"[train] left out of {args.examples}: {dict(loaded.reasons)}", file=sys.stderr)
        if args.random_subset is not None:
            examples = random_subset(examples, args.random_subset, args.subset_seed)
        result = train_sft(
            base_model=args.base_model,
            examples=examples,
            output_dir=args.output or nuggets_home() / "training" / args.variant,
            config=config,
            variant=args.variant,
            subset_hash=args.subset_hash or ids_hash(examples["id"]),
        )
    except (ValueError, TrainingError) as error:  # data, configuration and subset errors are ValueErrors
        print(f"error: {error}", file=sys.stderr)
        return 2
    if PartialState().is_main_process:
        print(json.dumps(result.to_dict(), indent=2, default=str))
    return 0


__all__ = [
    "PROFILES",
    "EmptyTrainingSetError",
    "TrainingConfig",
    "TrainingDataError",
    "TrainingError",
    "TrainingResult",
    "get_profile",
    "latest_checkpoint",
    "main",
    "random_subset",
    "train_sft",
]

if __name__ == "__main__":
    raise SystemExit(main())
