"""Batched generation: batching does not change greedy outputs, temperatures and token budgets are honoured,
EOS stops a sequence, prompts follow the chat template or the Alpaca format."""

from __future__ import annotations

import copy
import dataclasses
import time

import pytest
import torch

from nuggets_pipeline.core.generation import (
    assistant,
    generate,
    prompt_ids,
    render_alpaca,
    stop_token_ids,
    throughput,
    user,
)
from nuggets_pipeline.core.modeling import LoadedModel, encode
from nuggets_pipeline.core.templates import ALPACA

CONVERSATIONS = [
    [user("Hello there")],
    [user("Write a long poem about the sea, the mountains and the wind between them.")],
    [user("x")],
    [user("Hi"), assistant("Hello! How can I help?"), user("Tell me a joke.")],
    [user("List three prime numbers.")],
]


@pytest.fixture(scope="module")
def chatty(tiny_model: LoadedModel) -> LoadedModel:
    """The tiny model with its own random output head. The tied tiny model greedily repeats its last prompt
    token whatever the prompt, which would make batched-vs-unbatched comparisons vacuous."""
    model = copy.deepcopy(tiny_model.model)
    generator = torch.Generator().manual_seed(1)
    model.lm_head.weight = torch.nn.Parameter(torch.randn(model.lm_head.weight.shape, generator=generator))
    return dataclasses.replace(tiny_model, model=model)


def _greedy_ids(loaded: LoadedModel, conversation, n: int) -> list[int]:
    ids = prompt_ids(loaded.tokenizer, conversation)
    out = loaded.model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, min_new_tokens=n)
    return out[0, len(ids) :].tolist()


def test_batched_equals_unbatched_under_greedy(chatty: LoadedModel) -> None:
    batched = generate(chatty, CONVERSATIONS, max_new_tokens=10, batch_size=4)
    single = [generate(chatty, [c], max_new_tokens=10, batch_size=1)[0] for c in CONVERSATIONS]
    assert [g.text for g in batched] == [g.text for g in single]
    assert [g.completion_tokens for g in batched] == [g.completion_tokens for g in single]
    # The outputs depend on the prompt, so the comparison above is not trivially true.
    assert len({g.text for g in batched}) == len(CONVERSATIONS)
    # Prompt lengths differ within a batch, so left padding was exercised.
    assert len({g.prompt_tokens for g in batched}) > 1


def test_greedy_matches_plain_hf_generate(chatty: LoadedModel) -> None:
    ours = generate(chatty, CONVERSATIONS[:2], max_new_tokens=8, batch_size=2)
    for conversation, generation in zip(CONVERSATIONS[:2], ours, strict=True):
        expected = chatty.tokenizer.decode(_greedy_ids(chatty, conversation, 8), skip_special_tokens=True)
        assert generation.text == expected.strip()


@pytest.mark.slow
def test_per_item_temperature_is_honoured(chatty: LoadedModel) -> None:
    temperatures = [0.0, 1.5, 0.0, 1.5, 0.7]
    mixed = generate(chatty, CONVERSATIONS, temperature=temperatures, max_new_tokens=12, seed=7, batch_size=8)
    assert [g.temperature for g in mixed] == temperatures
    greedy = generate(chatty, CONVERSATIONS, temperature=0.0, max_new_tokens=12)
    # Greedy items are unaffected by sampled neighbours...
    for i in (0, 2):
        assert mixed[i].text == greedy[i].text
    # ...while sampled ones leave the greedy path, reproducibly for a seed and differently for another.
    assert any(mixed[i].text != greedy[i].text for i in (1, 3, 4))
    again = generate(chatty, CONVERSATIONS, temperature=temperatures, max_new_tokens=12, seed=7, batch_size=8)
    assert [g.text for g in again] == [g.text for g in mixed]
    other = generate(chatty, CONVERSATIONS, temperature=temperatures, max_new_tokens=12, seed=8, batch_size=8)
    assert [other[i].text for i in (1, 3, 4)] != [mixed[i].text for i in (1, 3, 4)]


def test_checkpoint_generation_settings_do_not_leak_in(tiny_model: LoadedModel) -> None:
    """A checkpoint's generation_config (penalties, n-gram blocking) must not change the evaluation. The tied
    tiny model repeats its last prompt token, so either setting would change its output if it leaked in."""
    model = copy.deepcopy(tiny_model.model)
    model.generation_config.repetition_penalty = 5.0
    model.generation_config.no_repeat_ngram_size = 1
    opinionated = dataclasses.replace(tiny_model, model=model)
    for temperature in (0.0, 1.0):
        clean = generate(tiny_model, CONVERSATIONS[:2], temperature=temperature, max_new_tokens=8, seed=1)
        other = generate(opinionated, CONVERSATIONS[:2], temperature=temperature, max_new_tokens=8, seed=1)
        assert [g.text for g in other] == [g.text for g in clean]


def test_sampling_leaves_the_global_rng_alone(chatty: LoadedModel) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    generate(chatty, CONVERSATIONS[:2], temperature=1.0, max_new_tokens=3, seed=5)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("max_new_tokens", [1, 5])
def test_max_new_tokens_is_respected(chatty: LoadedModel, max_new_tokens: int) -> None:
    generations = generate(chatty, CONVERSATIONS, temperature=1.0, max_new_tokens=max_new_tokens)
    for g in generations:
        assert g.completion_tokens <= max_new_tokens
        assert g.finished or g.completion_tokens == max_new_tokens


def test_generation_stops_at_eos(chatty: LoadedModel) -> None:
    conversation = CONVERSATIONS[1]
    greedy = _greedy_ids(chatty, conversation, 6)
    stop_at = next(k for k in range(1, 6) if greedy[k] not in greedy[:k])
    # Make EOS a hair more likely than the token greedy decoding picks at step ``stop_at``.
    model = copy.deepcopy(chatty.model)
    eos = chatty.tokenizer.eos_token_id
    with torch.no_grad():
        model.lm_head.weight[eos] = model.lm_head.weight[greedy[stop_at]] * 1.001
    stopping = dataclasses.replace(chatty, model=model)
    (generation,) = generate(stopping, [conversation], max_new_tokens=20)
    assert generation.finished
    assert generation.completion_tokens == stop_at
    assert generation.text == chatty.tokenizer.decode(greedy[:stop_at], skip_special_tokens=True).strip()


def test_prompt_uses_the_chat_template(tiny_model: LoadedModel) -> None:
    tokenizer = tiny_model.tokenizer
    conversation = CONVERSATIONS[3]
    text = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    assert "<|im_start|>assistant\nHello! How can I help?<|im_end|>" in text
    assert prompt_ids(tokenizer, conversation) == encode(tokenizer, text)


def test_prompt_without_template_is_alpaca(tiny_model: LoadedModel) -> None:
    tokenizer = copy.deepcopy(tiny_model.tokenizer)
    tokenizer.chat_template = None
    single = [user("Name a colour.")]
    assert render_alpaca(single) == ALPACA.prompt("Name a colour.")
    expected = [tiny_model.bos_token_id, *encode(tokenizer, ALPACA.prompt("Name a colour."))]
    assert prompt_ids(tokenizer, single) == expected

    conversation = CONVERSATIONS[3]
    next_turn = "\n\n### Instruction:\nTell me a joke.\n\n### Response:"
    rendered = render_alpaca(conversation, eos_token="</s>")
    assert rendered == ALPACA.prompt("Hi") + "Hello! How can I help?</s>" + next_turn
    ids = prompt_ids(tokenizer, conversation)
    answer = encode(tokenizer, "Hello! How can I help?")
    start = 1 + len(encode(tokenizer, ALPACA.prompt("Hi")))
    # The earlier answer is closed by EOS, as in training, then the next instruction block follows.
    assert ids[start : start + len(answer) + 1] == [*answer, tokenizer.eos_token_id]
    assert ids[start + len(answer) + 1 :] == encode(tokenizer, next_turn)


def test_stop_tokens_include_the_generation_config_eos(tiny_model: LoadedModel) -> None:
    model = copy.deepcopy(tiny_model.model)
    model.generation_config.eos_token_id = [2, 7]
    assert stop_token_ids(dataclasses.replace(tiny_model, model=model)) == [2, 7]


def test_invalid_requests_are_refused(tiny_model: LoadedModel) -> None:
    with pytest.raises(ValueError, match="end with a user message"):
        generate(tiny_model, [[user("a"), assistant("b")]])
    with pytest.raises(ValueError, match="role"):
        generate(tiny_model, [[assistant("a"), user("b")]])
    with pytest.raises(ValueError, match="temperatures"):
        generate(tiny_model, CONVERSATIONS[:2], temperature=[0.0])
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(tiny_model, CONVERSATIONS[:1], max_new_tokens=0)


def test_progress_callback_reports_every_batch(tiny_model: LoadedModel) -> None:
    calls: list[tuple[int, int]] = []
    generate(tiny_model, CONVERSATIONS, max_new_tokens=2, batch_size=2, progress=lambda *c: calls.append(c))
    assert calls == [(2, 5), (4, 5), (5, 5)]


def test_overlong_prompt_is_cut_from_the_left(tiny_model: LoadedModel) -> None:
    model = copy.deepcopy(tiny_model.model)
    model.config.max_position_embeddings = 40
    small = dataclasses.replace(tiny_model, model=model)
    (generation,) = generate(small, [[user("word " * 100)]], max_new_tokens=8)
    assert generation.prompt_truncated
    assert generation.prompt_tokens == 32


@pytest.mark.slow
def test_smollm2_generates_answers_and_measures_throughput(smollm2: LoadedModel) -> None:
    conversations = [[user("What is the capital of France?")], [user("Name three primary colours.")]]
    started = time.perf_counter()
    generations = generate(smollm2, conversations, max_new_tokens=48, batch_size=2)
    elapsed = time.perf_counter() - started
    assert "Paris" in generations[0].text
    assert all(g.completion_tokens > 0 for g in generations)
    print(f"SmolLM2 generation: {throughput(generations, elapsed):.1f} tokens/s over {elapsed:.1f} s")
