"""GPU figures, measured: exactness, engine speed, the paper-scale job and training steps on one CUDA GPU.

    python benchmarks/gpu_check.py --out DIR            # on a CUDA machine: at most ~8 minutes
    python benchmarks/gpu_check.py --out DIR --dry-run  # anywhere: tiny shapes on the CPU, under a minute
    make gpu-check                                      # the same, OUT=DIR, DRY_RUN=1 for the dry run

Built for a bare GPU machine: it needs only torch, transformers, peft, pandas and pyarrow (no Dagster, no
pydantic-settings, no network, no model weights). Models are random-initialised LLaMA-architecture models of
SmolLM2-135M's shape, a 1B shape and LLaMA-7B's shape (weights do not change speed); the tokenizer is a word-level
one built in-process, so a text of N words is N tokens, and anchor and demonstration lengths are the SmolLM2 token
lengths of the shipped KMeans-100 anchors and of 256 Alpaca candidates (benchmarks/gpu_check_lengths.json).

Writes DIR/gpu_check.json and DIR/gpu_check.md and prints the JSON last. Every section is timed against the wall
budget (--budget-s) and skipped, saying so, when too little time is left, so the command always ends in time.
Sections:
- environment: GPU, memory, torch / CUDA / transformers versions;
- exactness: the cached one-shot engine against plain concatenated forwards (max |log-prob difference|) in float32
  and bfloat16, and zero-shot and one-shot sequences both starting with exactly one BOS;
- engine / plain forward throughput in bfloat16 at the SmolLM2-135M and LLaMA-7B shapes, at the default CUDA batch
  budget and a sweep of budgets;
- the paper-scale job: 52,002 candidates x the 100 shipped anchors' tokens at the measured 7B-shape rate, exact
  and at the adaptive mode's measured pass fraction (benchmarks/selection/replay.json) where it exists;
- training steps: a 1B shape fully fine-tuned and the 7B shape with LoRA (PEFT), bfloat16: tokens/s, peak memory;
- a device claim round-trip: two processes, one GPU (core/devices.py's lock).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nuggets_pipeline.core.modeling import LoadedModel  # noqa: E402  (after the path set-up, on a bare machine)
from nuggets_pipeline.core.scoring import (  # noqa: E402
    CUDA_BATCH_TOKENS,
    ScoringConfig,
    demonstration_ids,
    score_one_shot,
    score_zero_shot,
)
from nuggets_pipeline.core.templates import get_template  # noqa: E402

LENGTHS = Path(__file__).resolve().parent / "gpu_check_lengths.json"
REPLAY = Path(__file__).resolve().parent / "selection" / "replay.json"
PAPER_CANDIDATES = 52_002

# name: (hidden, intermediate, layers, heads, kv heads, vocab, tied embeddings)
SHAPES: dict[str, tuple[int, int, int, int, int, int, bool]] = {
    "smollm2-135m": (576, 1536, 30, 9, 3, 49_152, True),
    "llama-1b": (2048, 8192, 16, 32, 8, 128_256, True),
    "llama-7b": (4096, 11008, 32, 32, 32, 32_000, False),
    "tiny": (64, 128, 2, 4, 2, 512, True),
}
SPECIAL = ["<pad>", "<s>", "</s>", "<unk>"]


def word_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """A word-level tokenizer: a text of N space-separated words from its vocabulary is exactly N tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {token: i for i, token in enumerate(SPECIAL)}
    vocab.update({f"w{i}": i for i in range(len(SPECIAL), vocab_size)})
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def random_llama(shape: str, dtype: torch.dtype, device: torch.device, seed: int = 0) -> LlamaForCausalLM:
    """A random-initialised LLaMA of the named shape, built straight on the device in ``dtype``."""
    hidden, intermediate, layers, heads, kv_heads, vocab, tied = SHAPES[shape]
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=8192,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=tied,
        attn_implementation="sdpa",
    )
    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device:
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    return model.eval()


def loaded_model(shape: str, dtype: torch.dtype, device: torch.device) -> LoadedModel:
    model = random_llama(shape, dtype, device)
    tokenizer = word_tokenizer(SHAPES[shape][5])
    return LoadedModel(
        name=f"random-{shape}",
        model=model,
        tokenizer=tokenizer,
        device=device,
        dtype=dtype,
        fingerprint=f"random-{shape}-{dtype}",
    )


def words(rng: np.random.Generator, n: int, vocab: int) -> str:
    return " ".join(f"w{i}" for i in rng.integers(len(SPECIAL), vocab, size=max(1, n)))


def examples(
    lengths: dict[str, Any], anchors: int, candidates: int, vocab: int, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Anchors and candidates whose token lengths are the shipped anchors' and Alpaca candidates' (the template's
    own words add a few tokens, the same for every example)."""
    rng = np.random.default_rng(seed)
    prompt, response = lengths["anchor_prompt_tokens"], lengths["anchor_response_tokens"]
    picked = rng.choice(len(prompt), size=anchors, replace=anchors > len(prompt))
    anchor_frame = pd.DataFrame(
        {
            "id": [f"a{i}" for i in range(anchors)],
            "instruction": [words(rng, prompt[j] - 3, vocab) for j in picked],
            "input": "",
            "output": [words(rng, response[j], vocab) for j in picked],
        }
    )
    demos = rng.choice(lengths["demonstration_tokens"], size=candidates)
    half = [max(1, int(d) // 2 - 2) for d in demos]
    candidate_frame = pd.DataFrame(
        {
            "id": [f"c{i}" for i in range(candidates)],
            "instruction": [words(rng, h, vocab) for h in half],
            "input": "",
            "output": [words(rng, int(d) - h - 4, vocab) for d, h in zip(demos, half, strict=True)],
        }
    )
    return anchor_frame, candidate_frame


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, run: Callable[[], Any]) -> tuple[float, Any]:
    synchronize(device)
    started = time.perf_counter()
    result = run()
    synchronize(device)
    return time.perf_counter() - started, result


def peak_memory_gb(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


# ---------------------------------------------------------------------------------------------------------------
# Sections


def environment(device: torch.device) -> dict[str, Any]:
    found: dict[str, Any] = {
        "device": str(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
    }
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        found |= {
            "gpu": properties.name,
            "gpu_memory_gb": round(properties.total_memory / 2**30, 1),
            "bf16_supported": torch.cuda.is_bf16_supported(),
        }
    return found


@torch.inference_mode()
def concatenated_logprob(loaded: LoadedModel, context: list[int], response: list[int]) -> float:
    """log p(response | context) from one plain forward over the concatenated ids (no cache, no mask)."""
    ids = torch.tensor([context + response], device=loaded.device)
    logits = loaded.model(input_ids=ids, use_cache=False).logits[0, len(context) - 1 : -1].float()
    return float(torch.log_softmax(logits, -1).gather(1, ids[0, len(context) :, None]).sum())


def exactness(shape: str, device: torch.device, lengths: dict[str, Any]) -> dict[str, Any]:
    """Engine vs plain concatenated forwards on every (candidate, anchor) pair of a small sample, per dtype."""
    template = get_template("nuggets")
    found: dict[str, Any] = {"shape": shape}
    for dtype in (torch.float32, torch.bfloat16):
        loaded = loaded_model(shape, dtype, device)
        anchors, candidates = examples(lengths, anchors=6, candidates=3, vocab=SHAPES[shape][5], seed=1)
        config = ScoringConfig()
        zero = score_zero_shot(loaded, anchors, config)
        pairs = pd.concat([c.pair_deltas for c in score_one_shot(loaded, anchors, zero, candidates, config)])
        bos = loaded.bos_token_id
        demos = demonstration_ids(loaded, candidates, template, config.separator)
        tokenizer = loaded.tokenizer
        zero_diff, one_diff, starts = 0.0, 0.0, set()
        for anchor in anchors.itertuples():
            prompt = tokenizer(template.prompt(anchor.instruction), add_special_tokens=False)["input_ids"]
            response = tokenizer(template.response(anchor.output), add_special_tokens=False)["input_ids"]
            plain_zero = concatenated_logprob(loaded, [bos, *prompt], response)
            engine_zero = float(zero.set_index("anchor_id").loc[anchor.id, "logprob_sum"])
            zero_diff = max(zero_diff, abs(plain_zero - engine_zero))
            for candidate, demo in zip(candidates["id"], demos, strict=True):
                context = [bos, *demo, *prompt]
                starts.add((context[0], context[1:].count(bos)))
                row = pairs[(pairs["candidate_id"] == candidate) & (pairs["anchor_id"] == anchor.id)]
                one_diff = max(
                    one_diff,
                    abs(concatenated_logprob(loaded, context, response) - float(row["one_shot_logprob"].iloc[0])),
                )
        name = str(dtype).removeprefix("torch.")
        found[name] = {"zero_shot_max_abs_diff": zero_diff, "one_shot_max_abs_diff": one_diff, "pairs": len(pairs)}
        found["bos"] = {"zero_and_one_shot_start_with_bos_once": starts == {(bos, 0)}}
        del loaded
    found["float32_within_1e-3"] = (
        max(found["float32"]["zero_shot_max_abs_diff"], found["float32"]["one_shot_max_abs_diff"]) <= 1e-3
    )
    return found


def plain_forward(loaded: LoadedModel, tokens: int, mean_length: int, budget: int) -> Callable[[], None]:
    """A plain forward over ``tokens`` tokens in unpadded [rows, mean_length] batches under the same budget
    (benchmarks/scoring.py's baseline: the whole model, full-vocabulary logits included)."""
    n_rows = max(1, round(tokens / mean_length))
    rows_per_batch = max(1, budget // mean_length)
    ids = torch.randint(len(SPECIAL), loaded.tokenizer.vocab_size, (n_rows, mean_length), device=loaded.device)

    @torch.inference_mode()
    def run() -> None:
        for start in range(0, n_rows, rows_per_batch):
            loaded.model(input_ids=ids[start : start + rows_per_batch], use_cache=False)

    return run


def throughput(
    shape: str, device: torch.device, lengths: dict[str, Any], candidates: int, budgets: list[int], deadline: float
) -> dict[str, Any]:
    """Engine and plain-forward anchor tokens/s in bfloat16 at each budget (the engine's and the plain forward's
    runs alternate; each keeps its best of two)."""
    dtype = torch.bfloat16 if device.type == "cuda" or shape == "tiny" else torch.float32
    reset_peak(device)
    loaded = loaded_model(shape, dtype, device)
    anchors, pool = examples(lengths, anchors=100, candidates=candidates, vocab=SHAPES[shape][5], seed=2)
    found: dict[str, Any] = {
        "shape": shape,
        "dtype": str(dtype).removeprefix("torch."),
        "candidates": candidates,
        "anchors": 100,
        "budgets": {},
    }
    for budget in budgets:
        if time.monotonic() > deadline:
            found["budgets"][str(budget)] = "skipped: out of time"
            continue
        config = ScoringConfig(batch_tokens=budget, candidates_per_chunk=candidates)
        zero = score_zero_shot(loaded, anchors, config)
        anchor_lengths = zero["prompt_tokens"] + zero["response_tokens"]
        tokens = int(anchor_lengths.sum()) * candidates
        plain = plain_forward(loaded, tokens, round(anchor_lengths.mean()), budget)
        engine_s = plain_s = float("inf")

        def engine(zero: pd.DataFrame = zero, config: ScoringConfig = config) -> list[Any]:
            return list(score_one_shot(loaded, anchors, zero, pool, config))

        for _ in range(2):  # the first pass warms kernels and the allocator up
            engine_s = min(engine_s, timed(device, engine)[0])
            plain_s = min(plain_s, timed(device, plain)[0])
        found["budgets"][str(budget)] = {
            "anchor_tokens": tokens,
            "engine_tokens_per_s": round(tokens / engine_s),
            "plain_forward_tokens_per_s": round(tokens / plain_s),
            "engine_over_plain": round(plain_s / engine_s, 3),
        }
    measured = {b: v for b, v in found["budgets"].items() if isinstance(v, dict)}
    if measured:
        best = max(measured, key=lambda b: measured[b]["engine_tokens_per_s"])
        found["fastest_budget"] = int(best)
        found["engine_tokens_per_s"] = measured[best]["engine_tokens_per_s"]
    found["peak_memory_gb"] = peak_memory_gb(device)
    return found


def paper_scale(lengths: dict[str, Any], seven_b: dict[str, Any]) -> dict[str, Any]:
    """The paper's job (52,002 candidates x the 100 shipped anchors) at the measured 7B-shape engine rate."""
    tokens = PAPER_CANDIDATES * int(lengths["anchor_tokens_per_candidate"])
    found: dict[str, Any] = {"candidates": PAPER_CANDIDATES, "anchors": 100, "anchor_tokens": tokens}
    rate = seven_b.get("engine_tokens_per_s")
    if not rate:
        return found | {"gpu_hours_exact": None, "note": "no 7B-shape rate measured"}
    found |= {
        "tokens_per_s": rate,
        "measured_on": seven_b.get("shape"),
        "gpu_hours_exact": round(tokens / rate / 3600, 2),
    }
    if REPLAY.exists():
        replay = json.loads(REPLAY.read_text())
        fraction = replay.get("recommended", {}).get("passes_fraction")
        if fraction:
            found |= {
                "adaptive_passes_fraction": fraction,
                "gpu_hours_adaptive": round(tokens * fraction / rate / 3600, 2),
            }
    return found


def training_step(shape: str, device: torch.device, lora: bool, batch: int, length: int, steps: int) -> dict[str, Any]:
    """Full fine-tuning (AdamW) or LoRA (PEFT, r=16 on the attention projections) steps in bfloat16."""
    reset_peak(device)
    model = random_llama(shape, torch.bfloat16, device).train()
    if lora:
        from peft import LoraConfig, get_peft_model

        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
        model = get_peft_model(
            model, LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
        )
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5, fused=device.type == "cuda")
    ids = torch.randint(len(SPECIAL), SHAPES[shape][5], (batch, length), device=device)

    def step() -> float:
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    step()  # warm-up: kernels, allocator, optimizer state
    seconds, _ = timed(device, lambda: [step() for _ in range(steps)])
    found = {
        "shape": shape,
        "method": "lora r=16 (q,k,v,o), gradient checkpointing" if lora else "full fine-tune, AdamW",
        "dtype": "bfloat16",
        "trainable_parameters": sum(p.numel() for p in trainable),
        "batch": [batch, length],
        "steps_timed": steps,
        "tokens_per_s": round(batch * length * steps / seconds),
        "peak_memory_gb": peak_memory_gb(device),
    }
    return found


CLAIM_WORKER = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, sys.argv[1])
    from pathlib import Path
    from nuggets_pipeline.core.devices import claim, cuda_devices
    started = time.monotonic()
    held = claim("cuda", devices=cuda_devices()[:1], timeout_s=60, home=Path(sys.argv[2]), label=sys.argv[3])
    print(f"{sys.argv[3]} got {held.names} after {time.monotonic() - started:.2f}s", flush=True)
    time.sleep(float(sys.argv[4]))
    held.release()
    """
)


def claim_round_trip(device: torch.device, hold_s: float = 3.0) -> dict[str, Any]:
    """Two processes ask for the one GPU: the second waits until the first lets go, then gets it."""
    if device.type != "cuda":
        return {"skipped": "no CUDA device"}
    with tempfile.TemporaryDirectory() as home:
        first = subprocess.Popen(
            [sys.executable, "-c", CLAIM_WORKER, str(ROOT), home, "first", str(hold_s)],
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(1.0)
        second = subprocess.run(
            [sys.executable, "-c", CLAIM_WORKER, str(ROOT), home, "second", "0"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        out_first = first.communicate(timeout=120)[0]
    waited = float(second.stdout.rsplit("after ", 1)[-1].rstrip("s\n")) if "after" in second.stdout else None
    return {
        "first": out_first.strip(),
        "second": second.stdout.strip() or second.stderr[-300:],
        "second_waited_s": waited,
        "ok": waited is not None and waited >= hold_s - 1.5,
    }


# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Plan:
    exact_shape: str
    speed_shapes: list[tuple[str, int]]  # (shape, candidates)
    budgets: list[int]
    train: list[tuple[str, bool, int, int, int]]  # (shape, lora, batch, length, steps)


def plan_for(dry_run: bool) -> Plan:
    if dry_run:
        return Plan("tiny", [("tiny", 2)], [512], [("tiny", False, 2, 64, 2), ("tiny", True, 2, 64, 2)])
    return Plan(
        "smollm2-135m",
        [("smollm2-135m", 64), ("llama-7b", 16)],
        [CUDA_BATCH_TOKENS, 4096, 65_536],
        [("llama-1b", False, 8, 1024, 5), ("llama-7b", True, 4, 1024, 3)],
    )


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [
        f"# GPU check ({'dry run, CPU' if report['dry_run'] else env.get('gpu', env['device'])}), {report['date']}",
        "",
        f"torch {env['torch']}, CUDA {env['cuda']}, transformers {env['transformers']}; wall {report['wall_s']} s",
        "",
        "| figure | value |",
        "|---|---|",
    ]
    exact = report.get("exactness", {})
    for dtype in ("float32", "bfloat16"):
        if dtype in exact:
            lines.append(
                f"| engine vs plain forward, {dtype}, max abs log-prob diff (zero / one-shot) | "
                f"{exact[dtype]['zero_shot_max_abs_diff']:.2e} / {exact[dtype]['one_shot_max_abs_diff']:.2e} |"
            )
    for speed in report.get("throughput", []):
        for budget, figures in speed.get("budgets", {}).items():
            if isinstance(figures, dict):
                lines.append(
                    f"| {speed['shape']} {speed['dtype']} engine, budget {budget} | "
                    f"{figures['engine_tokens_per_s']:,} anchor tokens/s = {figures['engine_over_plain']} "
                    f"of a plain forward ({figures['plain_forward_tokens_per_s']:,}) |"
                )
    paper = report.get("paper_scale", {})
    if paper.get("gpu_hours_exact") is not None:
        lines.append(
            f"| paper-scale job ({paper['anchor_tokens']:,} anchor tokens), exact | "
            f"{paper['gpu_hours_exact']} GPU-hours at {paper['tokens_per_s']:,} tokens/s |"
        )
    if paper.get("gpu_hours_adaptive") is not None:
        lines.append(
            f"| paper-scale job, adaptive ({paper['adaptive_passes_fraction']:.0%} of the passes) | "
            f"{paper['gpu_hours_adaptive']} GPU-hours |"
        )
    for train in report.get("training", []):
        if "tokens_per_s" in train:
            lines.append(
                f"| training {train['shape']} ({train['method']}) | {train['tokens_per_s']:,} tokens/s, "
                f"peak {train['peak_memory_gb']} GB |"
            )
    claim = report.get("claim_round_trip", {})
    lines.append(f"| device claim, two processes, one GPU | {claim.get('skipped') or claim.get('second_waited_s')} |")
    lines += ["", "Skipped (out of time): " + (", ".join(report["skipped"]) or "nothing")]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU (no GPU needed)")
    parser.add_argument("--budget-s", type=float, default=450.0, help="wall-time budget; sections past it are skipped")
    args = parser.parse_args(argv)
    started = time.monotonic()
    deadline = started + args.budget_s
    device = torch.device("cpu" if args.dry_run else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here: run with --dry-run, or on a GPU machine", file=sys.stderr)
        return 2
    lengths = json.loads(LENGTHS.read_text())
    plan = plan_for(args.dry_run)
    report: dict[str, Any] = {
        "dry_run": args.dry_run,
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "environment": environment(device),
        "skipped": [],
    }
    # (section, seconds it needs at least, what it runs); the cheap ones first so a slow GPU still reports them.
    sections: list[tuple[str, float, Callable[[], Any]]] = [
        ("exactness", 20, lambda: exactness(plan.exact_shape, device, lengths)),
        *[
            (
                f"throughput {shape}",
                40,
                lambda s=shape, n=n: report.setdefault("throughput", []).append(
                    throughput(s, device, lengths, n, plan.budgets, deadline - 30)
                ),
            )
            for shape, n in plan.speed_shapes
        ],
        (
            "paper_scale",
            0,
            lambda: paper_scale(
                lengths, next((t for t in report.get("throughput", []) if t["shape"] in ("llama-7b", "tiny")), {})
            ),
        ),
        *[
            (
                f"training {shape}{' lora' if lora else ''}",
                45,
                lambda s=shape, lo=lora, b=b, n=n, k=k: report.setdefault("training", []).append(
                    training_step(s, device, lo, b, n, k)
                ),
            )
            for shape, lora, b, n, k in plan.train
        ],
        ("claim_round_trip", 15, lambda: claim_round_trip(device)),
    ]
    for name, needs, run in sections:
        if time.monotonic() + needs > deadline:
            report["skipped"].append(name)
            continue
        try:
            result = run()
        except Exception as error:  # a section that fails is reported, and the others still run
            report.setdefault("errors", {})[name] = f"{type(error).__name__}: {error}"[:500]
            continue
        if result is not None and not name.startswith(("throughput", "training")):
            report[name] = result
        reset_peak(device)
    report["wall_s"] = round(time.monotonic() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "gpu_check.md").write_text(markdown(report))
    print(markdown(report))
    print(json.dumps(report))
    return 1 if report.get("errors") else 0


if __name__ == "__main__":
    raise SystemExit(main())
