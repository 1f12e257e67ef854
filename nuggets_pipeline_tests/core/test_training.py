"""Supervised fine-tuning on TRL: data preparation, what TRL makes of it, the losses of the hand-written trainer it
replaced, real training steps on the tiny model, saving, resuming, the command line."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

from nuggets_pipeline.core.modeling import SMOLLM2, TINY_RANDOM_LLAMA, encode, load_model
from nuggets_pipeline.core.paths import REPO_ROOT
from nuggets_pipeline.core.sft_data import EmptyTrainingSetError, prepare_sft_dataset, random_subset
from nuggets_pipeline.core.templates import ALPACA
from nuggets_pipeline.core.training import (
    PROFILES,
    RECIPE_FIELDS,
    TrainingConfig,
    TrainingError,
    get_profile,
    latest_checkpoint,
    main,
    parse_arguments,
    sft_trainer,
    train_sft,
)

# The label TRL gives the positions outside the loss (the value torch's cross-entropy ignores).
IGNORE_INDEX = -100
REFERENCE = json.loads((Path(__file__).parent / "training_reference.json").read_text())


def examples(n: int, start: int = 0) -> pd.DataFrame:
    rows = [
        {
            "id": f"ex{i:03d}",
            "instruction": f"Name the number {i}.",
            "input": f"digits {i}" if i % 2 else "",
            "output": f"The number is {i}.",
        }
        for i in range(start, start + n)
    ]
    return pd.DataFrame(rows)


# A few optimizer steps on the tiny model: batches of 4, no warm-up, a learning rate that moves it quickly.
FAST: dict[str, Any] = {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 1, "learning_rate": 2e-3}


def fast(**fields: Any) -> TrainingConfig:
    return get_profile("cpu-demo", **{**FAST, **fields})


def trl_trainer(features_of: pd.DataFrame, tmp_path: Path, **fields: Any):
    """The SFTTrainer train_sft builds, on a fresh tiny model (TRL patches the model it is given)."""
    loaded = load_model(TINY_RANDOM_LLAMA)
    tokenizer = loaded.tokenizer
    tokenizer.padding_side = "right"
    data = prepare_sft_dataset(features_of, tokenizer, max_length=512)
    args = dataclasses.replace(fast(**fields), output_dir=str(tmp_path), max_length=None)
    return sft_trainer(loaded.model, tokenizer, data, args), data, loaded


# --- Data, and what TRL makes of it -------------------------------------------------------------------------
def test_examples_are_bos_prompt_response_eos_with_the_response_marked(tiny_model):
    tokenizer = tiny_model.tokenizer
    data = prepare_sft_dataset(examples(2), tokenizer, max_length=512)
    bos, eos = tiny_model.bos_token_id, tokenizer.eos_token_id
    for row, feature in zip(examples(2).itertuples(), data.features, strict=True):
        prompt = encode(tokenizer, ALPACA.prompt(row.instruction, row.input))
        response = encode(tokenizer, ALPACA.response(row.output))
        assert feature["input_ids"] == [bos, *prompt, *response, eos]
        assert feature["completion_mask"] == [0] * (1 + len(prompt)) + [1] * (len(response) + 1)
    assert data.target_tokens == sum(sum(f["completion_mask"]) for f in data.features)
    # One example without input and one with: both Alpaca templates are used.
    assert "### Input:" not in tokenizer.decode(data.features[0]["input_ids"])
    assert "### Input:\ndigits 1" in tokenizer.decode(data.features[1]["input_ids"])


def test_trl_puts_the_loss_on_the_response_and_pads_on_the_right(tmp_path):
    trainer, data, loaded = trl_trainer(pd.concat([examples(1), examples(1, start=101)]), tmp_path)
    eos = loaded.tokenizer.eos_token_id
    # completion_only_loss: TRL's labels are the ids on the response and its EOS, IGNORE_INDEX on BOS and the prompt.
    for prepared, feature in zip(trainer.train_dataset, data.features, strict=True):
        assert prepared["input_ids"] == feature["input_ids"]
        expected = [
            i if m else IGNORE_INDEX for i, m in zip(feature["input_ids"], feature["completion_mask"], strict=True)
        ]
        assert prepared["labels"] == expected and expected[-1] == eos

    short, long = sorted(trainer.train_dataset, key=lambda f: len(f["input_ids"]))
    assert len(short["input_ids"]) < len(long["input_ids"])
    batch = trainer.data_collator([dict(short), dict(long)])
    n = len(short["input_ids"])
    assert batch["input_ids"][0, :n].tolist() == short["input_ids"]
    assert batch["labels"][0, :n].tolist() == short["labels"]
    assert (batch["labels"][0, n:] == IGNORE_INDEX).all()
    assert (batch["attention_mask"][0, n:] == 0).all() and (batch["attention_mask"][0, :n] == 1).all()
    # The pad token is EOS here, yet the real EOS closing the response keeps its label.
    assert loaded.tokenizer.pad_token_id == eos and batch["labels"][0, n - 1].item() == eos


def test_padding_free_batch_gives_the_padded_batch_loss_and_gradients(tmp_path):
    mixed = pd.concat([examples(3), examples(1, start=60).assign(output="word " * 40)], ignore_index=True)
    padded_trainer, _, loaded = trl_trainer(mixed, tmp_path / "padded")
    flat_trainer, _, _ = trl_trainer(mixed, tmp_path / "flat", padding_free=True)
    features = [dict(f) for f in padded_trainer.train_dataset]
    lengths = [len(f["input_ids"]) for f in features]
    assert len(set(lengths)) > 1  # the padded batch really pads

    padded = padded_trainer.data_collator(features)
    flat = flat_trainer.data_collator(features)
    assert flat["input_ids"].shape == (1, sum(lengths)) and "attention_mask" not in flat
    assert flat["position_ids"][0].tolist() == [i for n in lengths for i in range(n)]
    # The same tokens carry a label either way: only padding is gone.
    assert int((flat["labels"] != IGNORE_INDEX).sum()) == int((padded["labels"] != IGNORE_INDEX).sum())

    model = loaded.model  # TRL's fused LM head, called as its compute_loss calls it
    model.zero_grad()
    padded_loss = -model(**padded, fused_lm_head=True).log_probs.sum()
    padded_loss.backward()
    padded_grad = model.model.embed_tokens.weight.grad.clone()
    model.zero_grad()
    flat_loss = -model(**flat, fused_lm_head=True).log_probs.sum()
    flat_loss.backward()
    # Attention stays inside each example (transformers reads the boundaries from the position ids with sdpa too):
    # with a leak across examples the loss would differ far beyond this.
    assert flat_loss.item() == pytest.approx(padded_loss.item(), rel=1e-6)
    assert torch.allclose(model.model.embed_tokens.weight.grad, padded_grad, atol=1e-5)


def test_overlong_examples_are_counted_and_truncated_or_skipped(tiny_model):
    tokenizer = tiny_model.tokenizer
    fits = examples(1)
    limit = len(prepare_sft_dataset(fits, tokenizer, max_length=512).features[0]["input_ids"])
    long_answer = examples(1, start=2).assign(output="word " * 200)
    long_prompt = examples(1, start=4).assign(instruction="word " * 200)
    pool = pd.concat([fits, long_answer, long_prompt], ignore_index=True)

    truncated = prepare_sft_dataset(pool, tokenizer, max_length=limit, overlong="truncate")
    assert (truncated.overlong, truncated.truncated) == (2, 1)
    assert [s.id for s in truncated.skipped] == ["ex004"] and "prompt too long" in truncated.skipped[0].reason
    cut = truncated.features[truncated.ids.index("ex002")]
    assert len(cut["input_ids"]) == limit and cut["completion_mask"][-1] == 1
    assert cut["input_ids"][-1] != tokenizer.eos_token_id  # the EOS went with the cut: no stop taught mid-answer

    skipped = prepare_sft_dataset(pool, tokenizer, max_length=limit, overlong="skip")
    assert (skipped.overlong, skipped.truncated, len(skipped)) == (2, 0, 1)
    assert sorted(s.id for s in skipped.skipped) == ["ex002", "ex004"]

    with pytest.raises(EmptyTrainingSetError, match="all 2 examples were skipped"):
        prepare_sft_dataset(pool.iloc[1:], tokenizer, max_length=limit, overlong="skip")


def test_random_subset_matches_size_and_is_deterministic():
    pool = examples(50)
    golden = examples(12)
    drawn = random_subset(pool, len(golden), seed=7)
    assert len(drawn) == len(golden)
    assert drawn["id"].is_unique and set(drawn["id"]) <= set(pool["id"])
    shuffled = pool.sample(frac=1.0, random_state=1)  # the same pool stored in another order
    again = random_subset(shuffled, len(golden), seed=7)
    assert drawn["id"].tolist() == again["id"].tolist()
    assert drawn["id"].tolist() != random_subset(pool, len(golden), seed=8)["id"].tolist()
    with pytest.raises(ValueError, match="pool of only 50"):
        random_subset(pool, 51, seed=0)


def test_profiles_are_sft_config_presets_with_overrides():
    paper = get_profile("paper")
    assert (paper.num_train_epochs, paper.learning_rate, paper.lr_scheduler_type) == (3, 2e-5, "cosine")
    assert paper.warmup_steps == 0.03
    assert (paper.weight_decay, paper.max_length, paper.bf16) == (0.0, 512, True)
    assert paper.global_batch_size(world_size=8) == 128
    demo = get_profile("cpu-demo", max_steps=3)
    assert demo.max_steps == 3 and demo.bf16 is False and demo.activation_checkpointing is False
    # Not TRL's defaults (bf16, gradient checkpointing, lr 2e-5, a log every 10 steps): the profile's.
    assert (demo.learning_rate, demo.logging_steps, demo.completion_only_loss) == (5e-5, 1, True)
    assert demo.data_seed == demo.seed == 42
    assert set(PROFILES) == {"paper", "cpu-demo"}
    # Every profile sets the same fields: the recipe a run records and resumes by.
    assert all(set(profile) == set(RECIPE_FIELDS) for profile in PROFILES.values())
    assert json.loads(json.dumps(paper.recipe()))["lr_scheduler_type"] == "cosine"
    with pytest.raises(ValueError, match="unknown training profile"):
        get_profile("nope")
    with pytest.raises(ValueError, match="unknown training option"):
        get_profile("paper", lr=1.0)
    with pytest.raises(ValueError, match="method='qlora'"):
        get_profile("cpu-demo", method="qlora")
    with pytest.raises(ValueError, match="completion_only_loss=None"):
        get_profile("cpu-demo", completion_only_loss=None)


def test_command_line_takes_sft_config_flags_over_the_profile(tmp_path):
    required = ["--base_model", TINY_RANDOM_LLAMA, "--examples", "golden.json"]
    script, config = parse_arguments([*required, "--profile", "paper", "--variant", "golden"])
    assert (script.profile, script.variant, script.exact_examples) == ("paper", "golden", False)
    assert config.recipe() == get_profile("paper").recipe()
    assert Path(config.output_dir).parts[-2:] == ("training", "golden")

    flags = ["--max_steps", "10", "--method", "lora", "--lora_target_modules", "q_proj", "v_proj"]
    flags += ["--padding-free", "true", "--output_dir", str(tmp_path / "run")]
    _, config = parse_arguments([*required, *flags])
    assert (config.max_steps, config.method, config.padding_free) == (10, "lora", True)
    assert config.lora_target_modules == ["q_proj", "v_proj"] and config.output_dir == str(tmp_path / "run")
    assert config.learning_rate == 5e-5  # cpu-demo's, the default profile

    # TRL's --config YAML sits between the profile and the flags.
    (tmp_path / "run.yaml").write_text("learning_rate: 1.0e-4\nmax_steps: 3\n")
    _, config = parse_arguments([*required, "--config", str(tmp_path / "run.yaml"), "--max_steps", "4"])
    assert (config.learning_rate, config.max_steps) == (1e-4, 4)
    with pytest.raises(SystemExit):
        parse_arguments([*required, "--profile", "nope"])
    with pytest.raises(SystemExit):
        parse_arguments([*required, "--no_such_setting", "1"])


def test_latest_checkpoint_passes_over_a_half_written_one(tmp_path):
    for step, complete in ((2, True), (4, True), (6, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if complete:
            (folder / "trainer_state.json").write_text("{}")
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-4"
    assert latest_checkpoint(tmp_path / "absent") is None


# --- Training -----------------------------------------------------------------------------------------------
# Measured: every step's loss within 1e-6 of the hand-written trainer's (one float32 ulp at ~10.4), in all three
# runs. The tolerance leaves room for the float32 summation order of TRL's fused LM head (the log-probabilities of
# the label positions in tiles, no full logits) and of another CPU's kernels, and stays far below what a change of
# recipe moves: the loss on the prompt too, a missing BOS or per-sequence instead of per-token averaging over the
# accumulated batch each change the first step's loss by more than 1e-2 on these examples.
REFERENCE_LOSS_TOLERANCE = 1e-4


@pytest.mark.parametrize("run", sorted(REFERENCE["runs"]))
def test_losses_match_the_hand_written_trainer_it_replaced(tmp_path, run):
    settings = REFERENCE["trl_settings"]
    config = get_profile("cpu-demo", **{**settings["base"], **settings["runs"][run]})
    result = train_sft(TINY_RANDOM_LLAMA, pd.DataFrame(REFERENCE["examples"]), tmp_path, config, "golden", "ref")
    before = REFERENCE["runs"][run]
    assert [s for s, _ in result.losses] == [s for s, _ in before["losses"]] == [1, 2, 3, 4]
    assert [v for _, v in result.losses] == pytest.approx(
        [v for _, v in before["losses"]], abs=REFERENCE_LOSS_TOLERANCE
    )
    counts = ("global_step", "examples_trained", "examples_seen", "train_tokens", "overlong", "truncated")
    assert {k: getattr(result, k) for k in counts} == {k: before[k] for k in counts}
    assert [dataclasses.asdict(s) for s in result.skipped] == before["skipped"]


def test_empty_subset_fails_clearly(tmp_path):
    with pytest.raises(EmptyTrainingSetError, match="training set is empty"):
        train_sft(TINY_RANDOM_LLAMA, examples(0), tmp_path / "run", fast(), "golden", "none")
    assert not (tmp_path / "run").exists()


def test_checkpoints_of_another_run_are_refused(tmp_path):
    checkpoint = tmp_path / "run" / "checkpoints" / "checkpoint-2"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": 2}))
    (checkpoint.parent / "run.json").write_text(json.dumps({"subset_hash": "another subset"}))
    with pytest.raises(TrainingError, match="checkpoints of a different run"):
        train_sft(TINY_RANDOM_LLAMA, examples(4), tmp_path / "run", fast(), "golden", "this subset")


@pytest.mark.slow
def test_training_lowers_loss_and_saves_a_reloadable_model(tmp_path):
    subset = pd.concat([examples(8), examples(1, start=50).assign(output="word " * 200)], ignore_index=True)
    lines: list[str] = []
    config = fast(num_train_epochs=3, max_length=96, save_steps=100)
    run = tmp_path / "run"
    result = train_sft(TINY_RANDOM_LLAMA, subset, run, config, "golden", "hash123", log=lines.append)

    steps = [step for step, _ in result.losses]
    assert steps == list(range(1, 10))  # 9 examples in batches of 4: 3 steps an epoch
    first, last = result.losses[0][1], result.losses[-1][1]
    assert last < first - 0.3
    assert (result.overlong, result.truncated, result.skipped) == (1, 1, [])
    assert result.examples_seen == 27 and result.train_tokens > 0 and result.resumed_from_step == 0
    assert any(line.startswith("step 9/9 loss") and "examples/s" in line for line in lines)

    folder = tmp_path / "run" / "model"
    assert result.output_path == folder
    assert {"model.safetensors", "config.json", "generation_config.json", "README.md"} <= {
        p.name for p in folder.iterdir()
    }
    card = (folder / "README.md").read_text()
    assert "hash123" in card and "`golden`" in card and "9 examples" in card and f"| 9 | {last:.4f} |" in card

    loaded = load_model(str(folder))
    tokenizer = loaded.tokenizer
    question = [{"role": "user", "content": "Name a colour.", "input": "warm"}]
    single = tokenizer.apply_chat_template(question, tokenize=False, add_generation_prompt=True)
    assert single == tokenizer.bos_token + ALPACA.prompt("Name a colour.", "warm")
    multi = tokenizer.apply_chat_template(
        [
            {"role": "user", "content": "Name a colour."},
            {"role": "assistant", "content": "Red."},
            {"role": "user", "content": "Another?"},
        ],
        tokenize=False,
    )
    first_turn = tokenizer.bos_token + ALPACA.prompt("Name a colour.") + "Red." + tokenizer.eos_token
    assert multi.startswith(first_turn)
    assert multi.endswith("\n\n### Instruction:\nAnother?\n\n### Response:")

    prompt = torch.tensor([encode(tokenizer, single)])
    with torch.no_grad():
        generated = loaded.model.generate(prompt, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] > prompt.shape[1]


def test_padding_free_training_follows_the_padded_run(tmp_path):
    subset = pd.concat([examples(6), examples(2, start=70).assign(output="word " * 30)], ignore_index=True)
    padded = train_sft(TINY_RANDOM_LLAMA, subset, tmp_path / "padded", fast(num_train_epochs=2), "golden", "h")
    flat_config = fast(num_train_epochs=2, padding_free=True)
    flat = train_sft(TINY_RANDOM_LLAMA, subset, tmp_path / "flat", flat_config, "golden", "h")
    assert [s for s, _ in flat.losses] == [s for s, _ in padded.losses] == [1, 2, 3, 4]
    assert [round(v, 3) for _, v in flat.losses] == [round(v, 3) for _, v in padded.losses]
    # The same examples and real tokens are counted, though each padding-free batch is a single row.
    assert (flat.examples_seen, flat.train_tokens) == (padded.examples_seen, padded.train_tokens)
    assert flat.examples_seen == 16


def test_cli_lora_run_saves_a_merged_plain_model(tmp_path, tiny_model):
    data_file = tmp_path / "golden.json"
    data_file.write_text(json.dumps(examples(6).drop(columns="id").to_dict(orient="records")))
    flags = ["--method", "lora", "--max_steps", "2", "--per_device_train_batch_size", "2"]
    flags += [
        "--gradient_accumulation_steps",
        "1",
        "--learning_rate",
        "1e-2",
        "--lora_target_modules",
        "q_proj",
        "v_proj",
    ]
    where = ["--base_model", TINY_RANDOM_LLAMA, "--examples", str(data_file), "--output_dir", str(tmp_path / "run")]
    assert main([*where, "--variant", "golden", *flags]) == 0
    assert '"method": "lora"' in (tmp_path / "run" / "model" / "README.md").read_text()
    folder = tmp_path / "run" / "model"
    assert not (folder / "adapter_config.json").exists()
    trained = load_model(str(folder)).model.state_dict()
    base = tiny_model.model.state_dict()
    name = "model.layers.0.self_attn.{}.weight"
    assert not torch.equal(trained[name.format("q_proj")], base[name.format("q_proj")])  # LoRA merged in
    assert torch.equal(trained[name.format("k_proj")], base[name.format("k_proj")])  # not a LoRA target


@pytest.mark.slow
def test_killed_run_resumes_from_its_last_checkpoint(tmp_path):
    run_dir, marker = tmp_path / "run", tmp_path / "checkpoint-saved"
    # The child blocks once its first checkpoint is on disk, so the SIGKILL lands mid-run every time.
    child = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from transformers import TrainerCallback
        from nuggets_pipeline_tests.core.test_training import kill_config, examples
        from nuggets_pipeline.core.training import train_sft

        class BlockAfterSave(TrainerCallback):
            def on_save(self, args, state, control, **kwargs):
                Path({str(marker)!r}).write_text(str(state.global_step))
                time.sleep(600)

        train_sft("{TINY_RANDOM_LLAMA}", examples(4), Path({str(run_dir)!r}), kill_config(), "golden", "h",
                  callbacks=[BlockAfterSave()])
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    child_log = tmp_path / "child.log"
    with child_log.open("w") as output:
        process = subprocess.Popen([sys.executable, "-c", child], env=env, stdout=output, stderr=output)
    try:
        while not marker.exists():
            if process.poll() is not None:
                pytest.fail(f"training child exited early ({process.returncode}):\n{child_log.read_text()}")
            time.sleep(0.1)
        process.send_signal(signal.SIGKILL)
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == -signal.SIGKILL
    assert marker.read_text() == "2" and not (run_dir / "model").exists()

    result = train_sft(TINY_RANDOM_LLAMA, examples(4), run_dir, kill_config(), "golden", "h")
    assert result.resumed_from_step == 2
    assert result.global_step == 4 and [s for s, _ in result.losses] == [1, 2, 3, 4]
    assert result.examples_seen == 4  # only the two steps after the checkpoint were trained again
    assert (run_dir / "model" / "model.safetensors").exists()


def kill_config() -> TrainingConfig:
    """4 examples in batches of 2 for 2 epochs: 4 steps, a checkpoint every 2."""
    return get_profile(
        "cpu-demo",
        num_train_epochs=2,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=1,
        save_steps=2,
        max_length=64,
    )


@pytest.mark.slow
def test_smollm2_short_run_reloads(tmp_path):
    config = get_profile("cpu-demo", max_steps=2, per_device_train_batch_size=2, gradient_accumulation_steps=1)
    result = train_sft(SMOLLM2, examples(4), tmp_path / "run", config, "golden", "h")
    assert result.global_step == 2 and all(torch.isfinite(torch.tensor(loss)) for _, loss in result.losses)
    loaded = load_model(str(result.output_path))
    assert loaded.tokenizer.bos_token_id == 1 and loaded.tokenizer.eos_token_id == 2


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["optimizer.pt", "model.safetensors", "trainer_state.json"])
def test_a_corrupt_checkpoint_is_set_aside_and_training_resumes_from_the_one_before(tmp_path, damage):
    run_dir = tmp_path / "run"
    train_sft(TINY_RANDOM_LLAMA, examples(4), run_dir, kill_config(), "golden", "h")
    newest = run_dir / "checkpoints" / "checkpoint-4"
    assert (newest / damage).exists() and (run_dir / "checkpoints" / "checkpoint-2").exists()
    content = (newest / damage).read_bytes()
    (newest / damage).write_bytes(content[: len(content) // 2])  # a disk that filled up mid-save

    lines: list[str] = []
    result = train_sft(TINY_RANDOM_LLAMA, examples(4), run_dir, kill_config(), "golden", "h", log=lines.append)
    assert result.resumed_from_step == 2 and result.global_step == 4
    assert any("checkpoint-4" in line and damage in line and "set aside" in line for line in lines)
    [kept] = (run_dir / "checkpoints").glob("corrupt-checkpoint-4.corrupt-*")
    assert (kept / damage).read_bytes() == content[: len(content) // 2]
