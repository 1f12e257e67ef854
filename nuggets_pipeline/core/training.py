"""Supervised fine-tuning on a subset of instruction data: Stanford Alpaca's recipe on TRL's ``SFTTrainer``.

``train_sft`` trains one variant (the golden subset, a random control, ...) and writes a plain Hugging Face
model folder. ``python -m nuggets_pipeline.core.training`` is the one training entry point: run by hand, under
``accelerate launch`` or ``torchrun`` for several processes (docs/training.md, deploy/accelerate/), and launched that
way by the ``finetuned_model`` asset, whose rank 0 then reports through Dagster Pipes.

The settings are a ``TrainingConfig``: TRL's ``SFTConfig`` plus the project's over-long policy and LoRA fields. A
profile (``PROFILES``) is a preset of those fields; any field can be overridden (``get_profile("paper",
max_steps=10)``, ``--max_steps 10``).

Layout of ``output_dir``::

    checkpoints/  Trainer checkpoints (weights, optimizer, scheduler, RNG) and run.json; a re-run resumes
    model/        the result: safetensors, tokenizer with an Alpaca chat template, generation config,
                  README.md (the model card)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import enum
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import pandas as pd
import torch
from accelerate import PartialState
from transformers import PrinterCallback, TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from trl import SFTConfig, SFTTrainer, TrlParser

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
)

Log = Callable[[str], None]

METHODS = ("full", "lora")
RUN_FILE = "run.json"
# What accelerate launch / torchrun start, once per process.
ENTRY_MODULE = "nuggets_pipeline.core.training"
# dagster_pipes.DAGSTER_PIPES_CONTEXT_ENV_VAR, spelled out so that dagster_pipes is imported only under Pipes.
PIPES_CONTEXT_ENV = "DAGSTER_PIPES_CONTEXT"


class TrainingError(RuntimeError):
    """Training cannot start or finish as asked; the message says what to do."""


@dataclass
class TrainingConfig(SFTConfig):
    """TRL's ``SFTConfig`` plus what the project adds: the over-long policy and LoRA. Build one with
    ``get_profile`` (a bare ``TrainingConfig()`` has TRL's defaults, which are not a profile: bf16, gradient
    checkpointing, a learning rate of 2e-5).

    ``bf16`` trains with bf16 autocast over float32 master weights (as Alpaca's ``--bf16 True`` does), so the saved
    weights are float32 either way. ``max_length`` is applied by ``prepare_sft_dataset`` (``overlong``), which
    counts what it cuts or skips; TRL then trains on rows that already fit. The global batch is
    per_device_train_batch_size x gradient_accumulation_steps x the number of processes.
    """

    overlong: str = field(
        default="truncate",
        metadata={
            "help": "an example longer than max_length: truncate its response or skip it (both counted)",
            "choices": list(OVERLONG_POLICIES),
        },
    )
    method: str = field(
        default="full",
        metadata={"help": "full fine-tune, or LoRA through PEFT (merged into the saved model)", "choices": METHODS},
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha"})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout"})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        metadata={"help": "modules LoRA adapts (space-separated names)"},
    )

    def __post_init__(self) -> None:
        checks = {
            "method": (self.method in METHODS, f"one of {METHODS}"),
            "overlong": (self.overlong in OVERLONG_POLICIES, f"one of {OVERLONG_POLICIES}"),
            "max_length": (self.max_length is None or self.max_length >= 2, "None or >= 2"),
            # None lets TRL guess from a "prompt" column, which a tokenised dataset does not have: it would train on
            # the prompt too without saying so.
            "completion_only_loss": (isinstance(self.completion_only_loss, bool), "true or false"),
            "lora_r": (self.lora_r >= 1, ">= 1"),
            "lora_dropout": (0 <= self.lora_dropout < 1, "in [0, 1)"),
        }
        wrong = [f"{name}={getattr(self, name)!r} (must be {rule})" for name, (ok, rule) in checks.items() if not ok]
        if wrong:
            raise ValueError("invalid training configuration: " + "; ".join(wrong))
        if self.data_seed is None:
            self.data_seed = self.seed  # the sampler's order follows the run's seed, as Alpaca's does
        if self.bf16 and torch.accelerator.current_accelerator() is None:
            # TrainingArguments refuses bf16 without a GPU unless told the run is on the CPU (bf16 CPU autocast).
            self.use_cpu = True
        super().__post_init__()

    def global_batch_size(self, world_size: int = 1) -> int:
        return self.per_device_train_batch_size * self.gradient_accumulation_steps * world_size

    def recipe(self) -> dict[str, Any]:
        """The profile fields' values, JSON-ready: what run.json, the model card and the run's summary record."""
        return {name: _json_value(getattr(self, name)) for name in RECIPE_FIELDS}

    def lora_config(self) -> Any:
        """PEFT's LoraConfig for SFTTrainer's ``peft_config`` (None for a full fine-tune)."""
        if self.method != "lora":
            return None
        from peft import LoraConfig

        return LoraConfig(
            r=self.lora_r,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            target_modules=list(self.lora_target_modules),
            task_type="CAUSAL_LM",
        )


def _json_value(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple | list):
        return list(value)
    return value


# --- Profiles: SFTConfig presets ----------------------------------------------------------------------------
# Every profile sets the same fields, the run's recipe (recorded in run.json, the model card and the summary; a
# checkpoint resumes only the recipe that wrote it). Everything else keeps TrainingConfig's default.
_CPU_DEMO: dict[str, Any] = {
    # SmolLM2-135M on 64 Alpaca examples: 8 optimizer steps of 8 examples, one epoch (docs/training.md).
    "num_train_epochs": 1.0,
    "max_steps": -1,  # a positive value stops after that many optimizer steps, epochs done or not
    "learning_rate": 5e-5,
    "lr_scheduler_type": "cosine",
    # A float below 1 is a ratio of the total steps, rounded up: any ratio > 0 spends a whole step at lr 0.
    "warmup_steps": 0.0,
    "weight_decay": 0.0,
    "optim": "adamw_torch",
    "max_grad_norm": 1.0,
    "per_device_train_batch_size": 4,
    "gradient_accumulation_steps": 2,
    "max_length": 256,
    "overlong": "truncate",
    # The loss on the response and its EOS only (the prompt-completion examples' completion_mask).
    "completion_only_loss": True,
    # Examples end to end in one row instead of padded (TRL's collator): the same loss, no compute on padding.
    "padding_free": False,
    "seed": 42,
    "bf16": False,
    "activation_checkpointing": False,
    "method": "full",
    "lora_r": 16,
    "lora_alpha": 32,
    "lora_dropout": 0.05,
    "lora_target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "save_steps": 5,
    # Checkpoints kept on disk; older ones are deleted once a newer one is complete.
    "save_total_limit": 2,
    "logging_steps": 1,
}
PROFILES: dict[str, dict[str, Any]] = {
    "cpu-demo": _CPU_DEMO,
    # Alpaca's LLaMA-7B setting, the one NUGGETS fine-tunes with: global batch 128 = 4 x 4 x 8 GPUs.
    "paper": {
        **_CPU_DEMO,
        "num_train_epochs": 3.0,
        "learning_rate": 2e-5,
        "warmup_steps": 0.03,
        "gradient_accumulation_steps": 4,
        "max_length": 512,
        "bf16": True,
        "save_steps": 100,
    },
}
RECIPE_FIELDS: tuple[str, ...] = tuple(_CPU_DEMO)
# How every run is driven, whatever the profile: not part of the recipe. The progress lines are _Progress's, not
# tqdm's; the data is small and already tokenised, so no worker processes.
RUN_DEFAULTS: dict[str, Any] = {
    "save_strategy": "steps",
    "logging_strategy": "steps",
    "report_to": "none",
    "disable_tqdm": True,
    "dataloader_num_workers": 0,
    "dataloader_pin_memory": torch.cuda.is_available(),
}


def profile_settings(name: str, **overrides: Any) -> dict[str, Any]:
    """A profile's TrainingConfig arguments with some replaced, checked by name (nothing is built)."""
    try:
        profile = PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown training profile {name!r}; choose one of {sorted(PROFILES)}") from None
    known = {f.name for f in dataclasses.fields(TrainingConfig) if f.init}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown training option(s) {unknown}; TrainingConfig (SFTConfig) has no such field")
    return {**RUN_DEFAULTS, **profile, **overrides}


def get_profile(name: str, **overrides: Any) -> TrainingConfig:
    """A named profile with some fields replaced, e.g. ``get_profile("paper", max_steps=10)``."""
    return TrainingConfig(**profile_settings(name, **overrides))


@dataclass
class TrainingResult:
    """What one ``train_sft`` call did. Throughput figures cover this call only (after a resume, the rest)."""

    output_path: Path
    base_model: str
    variant: str
    subset_hash: str
    # TrainingConfig.recipe(): the profile fields' values this run trained with.
    settings: dict[str, Any]
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
    def global_batch_size(self) -> int:
        return (
            self.settings["per_device_train_batch_size"]
            * self.settings["gradient_accumulation_steps"]
            * (self.world_size)
        )

    @property
    def tokens_per_second(self) -> float:
        return self.train_tokens / self.train_seconds if self.train_seconds > 0 else 0.0

    @property
    def examples_per_second(self) -> float:
        return self.examples_seen / self.train_seconds if self.train_seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (for run metadata and the launched run's Pipes message)."""
        summary = dataclasses.asdict(self)
        summary["output_path"] = str(self.output_path)
        summary["final_loss"] = self.final_loss
        summary["tokens_per_second"] = self.tokens_per_second
        summary["examples_per_second"] = self.examples_per_second
        return summary


# --- Trainer plumbing ---------------------------------------------------------------------------------------
@dataclass
class _Throughput:
    """Examples and real (non-padding) tokens this process trained on, counted as each training batch enters the
    model (a forward pre-hook): the batches skipped on resume or fetched ahead by the data loader never count."""

    examples: int = 0
    tokens: int = 0
    started: float = field(default_factory=time.monotonic)

    def count(self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if not module.training or not torch.is_grad_enabled():
            return
        input_ids = kwargs["input_ids"]
        attention_mask = kwargs.get("attention_mask")
        if attention_mask is not None:
            self.examples += int(input_ids.shape[0])
            self.tokens += int(attention_mask.sum())
        else:  # padding-free: one row of examples end to end, each starting at position 0
            self.examples += int((kwargs["position_ids"] == 0).sum())
            self.tokens += int(input_ids.numel())


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


@contextlib.contextmanager
def _no_dataset_progress_bars() -> Iterator[None]:
    """TRL prepares the (already tokenised) dataset with a few ``map`` calls, each with a progress bar: noise in
    the step's logs for a few hundred rows."""
    were_off = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not were_off:
            datasets.enable_progress_bars()


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
        "config": config.recipe(),
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


def _save_final_model(trainer: SFTTrainer, config: TrainingConfig, staging: Path) -> None:
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


def sft_trainer(
    model: torch.nn.Module,
    tokenizer: Any,
    data: SFTDataset,
    args: TrainingConfig,
    peft_config: Any = None,
    callbacks: Sequence[TrainerCallback] = (),
) -> SFTTrainer:
    """TRL's SFTTrainer on the prepared examples. It seeds the RNGs with ``args.seed`` before PEFT initialises
    LoRA's adapters (``peft_config``), turns the completion masks into labels (``completion_only_loss``) and collates
    (padded on the right with the pad token, labels -100 there; or ``padding_free``)."""
    with _no_dataset_progress_bars():
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=datasets.Dataset.from_list(data.features),
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=list(callbacks),
        )
    trainer.remove_callback(PrinterCallback)  # it prints raw log dicts; _Progress prints readable lines
    return trainer


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
    # TRL trains on rows already cut to config.max_length (and counted); with padding_free it refuses a max_length,
    # so it gets none: nothing is left for it to cut.
    args = dataclasses.replace(config, output_dir=str(checkpoints), max_length=None)
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

    # float32 master weights whatever config.bf16; the Trainer moves the model to the accelerator.
    model = load_model(base_model, dtype="float32", device="cpu").model
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id

    throughput = _Throughput()
    progress = _Progress(throughput, emit, state.num_processes)
    trainer = sft_trainer(model, tokenizer, data, args, config.lora_config(), [progress, *callbacks])
    # On the outermost module: DDP and FSDP call it; PEFT's inner models are entered without hooks.
    trainer.model.register_forward_pre_hook(throughput.count, with_kwargs=True)
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
        settings=config.recipe(),
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
    settings = result.settings
    method = "full fine-tune" if settings["method"] == "full" else f"LoRA r={settings['lora_r']}, merged"
    final_loss = "n/a" if result.final_loss is None else f"{result.final_loss:.4f}"
    loss_on = "the response only" if settings["completion_only_loss"] else "prompt and response"
    facts = [
        ("base model", f"`{result.base_model}`"),
        ("variant", f"`{result.variant}`"),
        ("subset hash", f"`{result.subset_hash}`"),
        ("subset size", f"{result.examples_in_subset} examples ({result.examples_trained} trained on)"),
        ("tokens per epoch", f"{data.tokens} ({data.target_tokens} in responses)"),
        (
            f"over max_length {settings['max_length']}",
            f"{result.overlong} ({result.truncated} responses truncated, {len(result.skipped)} skipped)",
        ),
        ("method", method),
        (
            "optimizer steps",
            f"{result.global_step} (global batch {result.global_batch_size}, {result.world_size} process(es))",
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
tags: [nuggets, alpaca, instruction-tuning, trl, sft]
---

# {result.variant}: {result.base_model} fine-tuned on a NUGGETS subset

Supervised fine-tuning with Stanford Alpaca's recipe (Alpaca prompt, response + EOS, loss on {loss_on}) on TRL's
`SFTTrainer`, by the nuggets-pipeline.

| | |
|---|---|
{table}

The tokenizer carries the Alpaca prompt as its chat template (a user message's `content` is the instruction,
an optional `input` key the Alpaca input), so `tokenizer.apply_chat_template(messages,
add_generation_prompt=True)` renders exactly what the model was trained to continue.

## Configuration

The training profile's fields (TRL `SFTConfig` names):

```json
{json.dumps(settings, indent=2)}
```

## Skipped examples

{skipped}

## Training loss

| step | loss |
|---|---|
{losses}
"""


# --- Command line: the one training entry point -------------------------------------------------------------
@dataclass
class TrainingScriptArguments:
    """What to train and on what; how is TrainingConfig's (every SFTConfig field is a flag too)."""

    base_model: str = field(metadata={"help": "preset name, Hugging Face id or local folder"})
    examples: str = field(
        metadata={"help": "instruction data: .json/.jsonl(.gz)/.parquet/.csv with instruction, input, output"}
    )
    profile: str = field(
        default="cpu-demo",
        metadata={"help": "training profile: its fields are the other flags' defaults", "choices": list(PROFILES)},
    )
    variant: str = field(default="custom", metadata={"help": "name for the model card (golden, random...)"})
    subset_hash: str | None = field(
        default=None, metadata={"help": "recorded subset identity (default: a hash of the example ids)"}
    )
    random_subset: int | None = field(default=None, metadata={"help": "train on N examples drawn at random"})
    subset_seed: int = field(default=0, metadata={"help": "seed of --random_subset"})
    exact_examples: bool = field(
        default=False,
        metadata={
            "help": "--examples is a Parquet frame (id, instruction, input, output) trained on exactly as given, "
            "without ingestion's normalisation: how finetuned_model hands its selected variant to a launched run"
        },
    )


def build_parser() -> TrlParser:
    return TrlParser(
        (TrainingScriptArguments, TrainingConfig),
        prog=f"python -m {ENTRY_MODULE}",
        description="Fine-tune a causal LM on Alpaca-format instruction data (Stanford Alpaca's SFT recipe on TRL's "
        "SFTTrainer). Run it under `accelerate launch` or `torchrun` for several processes. Flags take TRL's SFTConfig "
        "names; --profile sets their defaults, --config FILE.yaml (TRL's) overrides those, and flags override both. "
        "Without --output_dir the run goes to $NUGGETS_HOME/training/VARIANT.",
    )


def parse_arguments(argv: Sequence[str] | None = None) -> tuple[TrainingScriptArguments, TrainingConfig]:
    argv = list(sys.argv[1:] if argv is None else argv)
    # The profile and the variant decide the other flags' defaults, so they are read first.
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--profile", default="cpu-demo")
    first.add_argument("--variant", default="custom")
    chosen, _ = first.parse_known_args(argv)
    parser = build_parser()
    if chosen.profile in PROFILES:  # an unknown one is refused below, with the choices
        defaults = profile_settings(chosen.profile, output_dir=str(nuggets_home() / "training" / chosen.variant))
        parser.set_defaults_with_config(**defaults)
    try:
        script, config = parser.parse_args_and_config(argv)
    except ValueError as error:  # an unknown flag, or a value TrainingConfig refuses: usage and exit 2
        parser.error(str(error))
    return script, config


def train_from_arguments(script: TrainingScriptArguments, config: TrainingConfig, log: Log | None = None):
    """Read the examples the command line names and train on them (``train_sft``)."""
    if script.exact_examples:
        examples = pd.read_parquet(script.examples)
    else:
        from nuggets_pipeline.core.data import ingest

        loaded = ingest([script.examples])
        examples = loaded.instructions
        if loaded.reasons:
            print(f"[train] left out of {script.examples}: {dict(loaded.reasons)}", file=sys.stderr)
    if script.random_subset is not None:
        examples = random_subset(examples, script.random_subset, script.subset_seed)
    return train_sft(
        base_model=script.base_model,
        examples=examples,
        output_dir=Path(config.output_dir),
        config=config,
        variant=script.variant,
        subset_hash=script.subset_hash or ids_hash(examples["id"]),
        log=log,
    )


def summary_of(result: TrainingResult) -> dict[str, Any]:
    """The JSON summary printed (or sent through Pipes): ``TrainingResult.to_dict`` made JSON-safe."""
    return json.loads(json.dumps(result.to_dict(), default=str))


def main(argv: Sequence[str] | None = None) -> int:
    """Train once per process. Under Dagster Pipes (launched by finetuned_model) rank 0 sends every progress line
    as a log event and the summary as a custom message; the other ranks train and stay quiet. Otherwise the main
    process prints the summary as JSON (the last thing on stdout)."""
    script, config = parse_arguments(argv)
    # The launcher sets RANK for every process it starts; only the main one opens the Pipes channel (several
    # writers would interleave their messages and each close it).
    main_process = os.environ.get("RANK", "0") == "0"
    if main_process and PIPES_CONTEXT_ENV in os.environ:
        from dagster_pipes import open_dagster_pipes

        with open_dagster_pipes() as pipes:
            # An error propagates: Pipes reports it to the Dagster run before the process exits.
            result = train_from_arguments(script, config, log=pipes.log.info)
            pipes.report_custom_message(summary_of(result))
        return 0
    try:
        result = train_from_arguments(script, config)
    except (ValueError, TrainingError) as error:  # data, configuration and subset errors are ValueErrors
        print(f"error: {error}", file=sys.stderr)
        return 2
    if PartialState().is_main_process:
        print(json.dumps(summary_of(result), indent=2), flush=True)
    return 0


__all__ = [
    "ENTRY_MODULE",
    "PROFILES",
    "EmptyTrainingSetError",
    "TrainingConfig",
    "TrainingDataError",
    "TrainingError",
    "TrainingResult",
    "get_profile",
    "latest_checkpoint",
    "main",
    "profile_settings",
    "random_subset",
    "train_sft",
]

if __name__ == "__main__":
    raise SystemExit(main())
