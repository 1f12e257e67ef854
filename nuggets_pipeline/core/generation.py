"""Batched generation for evaluation: chat-template aware, greedy or seeded sampling, per-item temperature.

A prompt is a conversation (a list of ``{"role": "user"|"assistant", "content": ...}`` messages ending with a
user turn). It is rendered with the tokenizer's chat template when it has one (base presets and fine-tuned
checkpoints both ship one); otherwise with the Alpaca training template, later turns appended in the same
``### Instruction:`` / ``### Response:`` format.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig, PreTrainedTokenizerBase

from nuggets_pipeline.core.modeling import LoadedModel, bos_token_id, encode
from nuggets_pipeline.core.templates import ALPACA

Message = dict[str, str]
Conversation = Sequence[Message]
# Called after every batch with (items done, items in total).
ProgressCallback = Callable[[int, int], None]

# What follows an earlier answer when a conversation continues without a chat template: Alpaca's instruction
# block without the once-per-conversation preamble, so turn 2 reads like a second Alpaca example.
_ALPACA_NEXT_TURN = "\n\n" + ALPACA.without_input[ALPACA.without_input.index("### Instruction:") :]


# generate() fills every setting left unset (None) from the checkpoint's generation_config. Pinning these to
# their neutral values keeps a checkpoint's repetition penalty, n-gram blocking or beam settings from changing
# what the evaluation measures.
_NEUTRAL_GENERATION = {
    "num_beams": 1,
    "repetition_penalty": 1.0,
    "encoder_repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "typical_p": 1.0,
    "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0,
    # Takes precedence over a checkpoint's min_length as well.
    "min_new_tokens": 0,
}


@dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int
    # Tokens generated before the end-of-sequence token (that token itself is not counted).
    completion_tokens: int
    # True when the model emitted end-of-sequence, False when it ran into max_new_tokens.
    finished: bool
    temperature: float
    # True when the prompt was cut from the left to fit the model's context next to max_new_tokens.
    prompt_truncated: bool = False


def user(content: str) -> Message:
    return {"role": "user", "content": content}


def assistant(content: str) -> Message:
    return {"role": "assistant", "content": content}


def has_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_alpaca(conversation: Conversation, eos_token: str = "") -> str:
    """A conversation in Alpaca format: the first user turn as an Alpaca prompt, later turns appended, each
    earlier answer followed by ``eos_token`` (training targets end with EOS; see ``sft_data``)."""
    return "".join(_alpaca_pieces(conversation, eos_token))


def prompt_ids(tokenizer: PreTrainedTokenizerBase, conversation: Conversation) -> list[int]:
    """Token ids the model continues from. With a chat template, its rendering (it places its own special
    tokens). Without one, BOS + the Alpaca rendering, each piece encoded on its own and each earlier answer
    closed by the EOS id, as ``sft_data`` encodes prompt and response separately in training."""
    _check_conversation(conversation)
    if has_chat_template(tokenizer):
        text = tokenizer.apply_chat_template(list(conversation), tokenize=False, add_generation_prompt=True)
        return encode(tokenizer, text)
    ids = [bos_token_id(tokenizer)]
    for message, piece in zip(conversation, _alpaca_pieces(conversation), strict=True):
        ids.extend(encode(tokenizer, piece))
        if message["role"] == "assistant" and tokenizer.eos_token_id is not None:
            ids.append(int(tokenizer.eos_token_id))
    return ids


def _alpaca_pieces(conversation: Conversation, eos_token: str = "") -> list[str]:
    _check_conversation(conversation)
    pieces = [ALPACA.prompt(conversation[0]["content"])]
    for message in conversation[1:]:
        if message["role"] == "assistant":
            pieces.append(message["content"] + eos_token)
        else:
            pieces.append(_ALPACA_NEXT_TURN.format(instruction=message["content"]))
    return pieces


def stop_token_ids(loaded: LoadedModel) -> list[int]:
    """EOS of the tokenizer and of the model's generation config (chat models end turns with their token)."""
    ids: set[int] = set()
    if loaded.tokenizer.eos_token_id is not None:
        ids.add(int(loaded.tokenizer.eos_token_id))
    configured = getattr(loaded.model.generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(int(i) for i in configured)
    if not ids:
        raise ValueError(f"model {loaded.name!r} defines no end-of-sequence token; generation could not stop")
    return sorted(ids)


def generate(
    loaded: LoadedModel,
    conversations: Sequence[Conversation],
    *,
    temperature: float | Sequence[float] = 0.0,
    max_new_tokens: int = 512,
    batch_size: int = 8,
    seed: int = 0,
    top_p: float = 1.0,
    top_k: int = 50,
    progress: ProgressCallback | None = None,
    description: str = "generate",
) -> list[Generation]:
    """Answer every conversation; results come back in input order.

    ``temperature`` is one value or one per conversation: 0 means greedy, anything above samples. Items are
    batched by temperature (one ``generate`` call has one temperature) and, within a temperature, longest
    prompt first so that padding stays small. Sampling is seeded per batch from ``seed`` and the batch's
    items, so a rerun with the same inputs gives the same texts. ``top_k=50``, ``top_p=1`` are the Hugging
    Face defaults FastChat's MT-Bench answer generation samples with (``top_k=0`` turns top-k off).
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    temperatures = _per_item(temperature, len(conversations))
    encoded = [prompt_ids(loaded.tokenizer, c) for c in conversations]
    context = _context_length(loaded)
    stops = stop_token_ids(loaded)

    order = sorted(range(len(encoded)), key=lambda i: (temperatures[i], -len(encoded[i]), i))
    batches: list[list[int]] = []
    for index in order:
        last = batches[-1] if batches else None
        if last and len(last) < batch_size and temperatures[last[0]] == temperatures[index]:
            last.append(index)
        else:
            batches.append([index])

    results: list[Generation | None] = [None] * len(encoded)
    done = 0
    with tqdm(total=len(encoded), desc=description, unit="item", disable=None) as bar:
        for batch in batches:
            generations = _generate_batch(
                loaded,
                [encoded[i] for i in batch],
                temperatures[batch[0]],
                max_new_tokens,
                _batch_seed(seed, batch),
                top_p,
                top_k,
                context,
                stops,
            )
            for index, generation in zip(batch, generations, strict=True):
                results[index] = generation
            done += len(batch)
            bar.update(len(batch))
            if progress is not None:
                progress(done, len(encoded))
    return [r for r in results if r is not None]


def _generate_batch(
    loaded: LoadedModel,
    prompts: list[list[int]],
    temperature: float,
    max_new_tokens: int,
    seed: int,
    top_p: float,
    top_k: int,
    context: int | None,
    stops: list[int],
) -> list[Generation]:
    tokenizer = loaded.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    budget = None if context is None else context - max_new_tokens
    if budget is not None and budget < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt ({context} positions)")
    truncated = [budget is not None and len(p) > budget for p in prompts]
    # Keep the end of an over-long prompt: the question being answered and the generation prompt live there.
    prompts = [p[-budget:] if cut else p for p, cut in zip(prompts, truncated, strict=True)]

    # Left padding: every row's last prompt token sits at the same position, where generation starts.
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, ids in enumerate(prompts):
        input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, width - len(ids) :] = 1

    sampling = temperature > 0
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=sampling,
        temperature=temperature if sampling else 1.0,
        top_p=top_p if sampling else 1.0,
        top_k=top_k if sampling else 50,
        eos_token_id=stops,
        pad_token_id=pad,
        bos_token_id=bos_token_id(tokenizer),
        **_NEUTRAL_GENERATION,
    )
    # fork_rng keeps the caller's global RNG untouched; the seed makes sampling reproducible.
    with torch.random.fork_rng(devices=[loaded.device] if loaded.device.type == "cuda" else []):
        torch.manual_seed(seed)
        with torch.inference_mode():
            output = loaded.model.generate(
                input_ids=input_ids.to(loaded.device),
                attention_mask=attention_mask.to(loaded.device),
                generation_config=config,
            )
    new_tokens = output[:, width:].tolist()

    results = []
    for ids, prompt, cut in zip(new_tokens, prompts, truncated, strict=True):
        end = next((position for position, token in enumerate(ids) if token in stops), None)
        kept = ids if end is None else ids[:end]
        results.append(
            Generation(
                text=tokenizer.decode(kept, skip_special_tokens=True).strip(),
                prompt_tokens=len(prompt),
                completion_tokens=len(kept),
                finished=end is not None,
                temperature=temperature,
                prompt_truncated=cut,
            )
        )
    return results


def _per_item(temperature: float | Sequence[float], n: int) -> list[float]:
    if isinstance(temperature, int | float):
        temperature = [temperature] * n
    values = [float(t) for t in temperature]
    if len(values) != n:
        raise ValueError(f"got {len(values)} temperatures for {n} conversations")
    if any(t < 0 for t in values):
        raise ValueError("temperatures must be >= 0 (0 means greedy)")
    return values


def _batch_seed(seed: int, batch: list[int]) -> int:
    # Depends on which items are in the batch, not on how many batches ran before it.
    return zlib.crc32(f"{seed}:{','.join(map(str, batch))}".encode())


def _context_length(loaded: LoadedModel) -> int | None:
    value = getattr(loaded.model.config, "max_position_embeddings", None)
    return int(value) if value else None


def _check_conversation(conversation: Conversation) -> None:
    if not conversation or conversation[-1]["role"] != "user":
        raise ValueError("a conversation to answer must be non-empty and end with a user message")
    for position, message in enumerate(conversation):
        expected = "user" if position % 2 == 0 else "assistant"
        if message.get("role") != expected:
            raise ValueError(f"message {position} should have role {expected!r}, got {message.get('role')!r}")


def throughput(generations: Sequence[Generation], seconds: float) -> float:
    """Generated tokens per second over a run (the figure the evaluation assets log)."""
    return sum(g.completion_tokens for g in generations) / seconds if seconds > 0 else float("nan")


__all__ = [
    "Conversation",
    "Generation",
    "Message",
    "ProgressCallback",
    "assistant",
    "generate",
    "has_chat_template",
    "prompt_ids",
    "render_alpaca",
    "stop_token_ids",
    "throughput",
    "user",
]
