"""Supervised fine-tuning data: Alpaca prompt-completion examples, tokenised for TRL's SFTTrainer.

One example becomes ``BOS + prompt + response + EOS`` with a ``completion_mask`` marking the response and its EOS:
TRL's prompt-completion form once tokenised (the columns its own tokenisation step produces). With
``completion_only_loss`` TRL turns the mask into labels, so the loss is on the response and its EOS only, and its
collator pads on the right (or, ``padding_free``, puts the examples end to end in one row).

Differences from Alpaca's train.py and from TRL tokenising the text itself, each deliberate:
- BOS is prepended explicitly (as everywhere in this project: the scorer, the chat template) instead of by the
  tokenizer; neither SmolLM2's nor the tiny model's tokenizer adds one, so TRL's text path would train without it.
- Prompt and response are tokenised separately (as the scorer does), so the mask falls exactly on the
  prompt/response boundary; tokenising prompt + response together can merge tokens across it.
- An example longer than ``max_length`` is never cut silently: it is counted, and either its response is cut
  at ``max_length`` (losing its EOS, so the model is not taught to stop mid-answer) or it is skipped with a
  recorded reason. TRL's own truncation then has nothing left to cut.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass, field

import pandas as pd
from transformers import PreTrainedTokenizerBase

from nuggets_pipeline.core.modeling import bos_token_id
from nuggets_pipeline.core.templates import ALPACA, PromptTemplate

OVERLONG_POLICIES: tuple[str, ...] = ("truncate", "skip")


class TrainingDataError(ValueError):
    """The examples cannot be turned into a training set; the message says why."""


class EmptyTrainingSetError(TrainingDataError):
    """Nothing to train on: no examples were given, or every one was skipped."""


@dataclass(frozen=True)
class EncodedExample:
    input_ids: list[int]
    # 1 on the tokens the loss is computed on (the response and its EOS), 0 on BOS and the prompt.
    completion_mask: list[int]
    # Tokens the whole example has before any truncation (BOS and EOS included).
    full_length: int
    truncated: bool = False


@dataclass(frozen=True)
class SkippedExample:
    id: str
    reason: str


@dataclass
class SFTDataset:
    """Tokenised training examples (``input_ids``, ``completion_mask``) plus the account of the over-long ones."""

    features: list[dict[str, list[int]]]
    ids: list[str]
    max_length: int | None
    overlong_policy: str
    # Examples longer than max_length, whatever was then done with them (= truncated + len(skipped)).
    overlong: int = 0
    truncated: int = 0
    skipped: list[SkippedExample] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.features)

    @property
    def tokens(self) -> int:
        """Tokens in one pass over the data (prompt and response, no padding)."""
        return sum(len(f["input_ids"]) for f in self.features)

    @property
    def target_tokens(self) -> int:
        """Tokens the loss is computed on in one pass over the data."""
        return sum(sum(f["completion_mask"]) for f in self.features)


def encode_example(
    prompt_ids: list[int], response_ids: list[int], bos_id: int, eos_id: int, max_length: int | None, overlong: str
) -> EncodedExample | str:
    """Assemble one example from its tokenised prompt and response; a string return is a skip reason.

    ``max_length`` None: no limit."""
    prompt = [bos_id, *prompt_ids]
    target = [*response_ids, eos_id]
    full_length = len(prompt) + len(target)
    truncated = False
    if max_length is not None and full_length > max_length:
        if overlong == "skip":
            return f"over max_length: {full_length} tokens > {max_length}"
        room = max_length - len(prompt)
        if room < 1:
            return f"prompt too long: {len(prompt)} tokens leave no room for a response in {max_length}"
        target = target[:room]
        truncated = True
    return EncodedExample(
        input_ids=prompt + target,
        completion_mask=[0] * len(prompt) + [1] * len(target),
        full_length=full_length,
        truncated=truncated,
    )


def _text_column(examples: pd.DataFrame, name: str) -> list[str]:
    if name not in examples.columns:
        return [""] * len(examples)
    return ["" if pd.isna(value) else str(value) for value in examples[name]]


def prepare_sft_dataset(
    examples: pd.DataFrame,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int | None,
    overlong: str = "truncate",
    template: PromptTemplate = ALPACA,
) -> SFTDataset:
    """Tokenise ``examples`` (columns instruction, input, output; id optional) for supervised fine-tuning."""
    if overlong not in OVERLONG_POLICIES:
        raise ValueError(f"unknown over-long policy {overlong!r}; use one of {OVERLONG_POLICIES}")
    if tokenizer.eos_token_id is None:
        raise TrainingDataError("the tokenizer has no EOS token; the model could not learn where answers end")
    if examples.empty:
        raise EmptyTrainingSetError("the training set is empty: no examples were given (check the subset)")
    missing = {"instruction", "output"} - set(examples.columns)
    if missing:
        raise TrainingDataError(f"examples lack column(s) {sorted(missing)}; need instruction, input, output")

    instructions, inputs, outputs = (_text_column(examples, c) for c in ("instruction", "input", "output"))
    ids = _text_column(examples, "id") if "id" in examples.columns else [str(i) for i in examples.index]
    prompts = [template.prompt(i, x) for i, x in zip(instructions, inputs, strict=True)]
    responses = [template.response(o) for o in outputs]
    # The same call as modeling.encode (no special tokens), batched: BOS and EOS are added as ids below.
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(responses, add_special_tokens=False)["input_ids"]

    dataset = SFTDataset(features=[], ids=[], max_length=max_length, overlong_policy=overlong)
    bos, eos = bos_token_id(tokenizer), int(tokenizer.eos_token_id)
    for example_id, p_ids, r_ids in zip(ids, prompt_ids, response_ids, strict=True):
        encoded = encode_example(list(p_ids), list(r_ids), bos, eos, max_length, overlong)
        if isinstance(encoded, str):
            dataset.overlong += 1
            dataset.skipped.append(SkippedExample(example_id, encoded))
            continue
        dataset.overlong += encoded.truncated
        dataset.truncated += encoded.truncated
        dataset.ids.append(example_id)
        dataset.features.append({"input_ids": encoded.input_ids, "completion_mask": encoded.completion_mask})
    if not dataset.features:
        reasons = "; ".join(sorted({s.reason.split(":")[0] for s in dataset.skipped}))
        raise EmptyTrainingSetError(
            f"the training set is empty: all {len(examples)} examples were skipped ({reasons}); "
            f"raise max_length (now {max_length}) or use overlong='truncate'"
        )
    return dataset


def random_subset(pool: pd.DataFrame, size: int, seed: int) -> pd.DataFrame:
    """The control variant: exactly ``size`` rows drawn uniformly without replacement.

    Rows are ordered by id before drawing, so the draw depends on the pool's content and the seed only, not on
    the order the pool happens to be stored in.
    """
    if size < 1:
        raise ValueError(f"a random subset needs at least one row, got size={size}")
    if size > len(pool):
        raise ValueError(f"cannot draw a random subset of {size} rows from a pool of only {len(pool)}")
    ordered = pool.sort_values("id", kind="stable") if "id" in pool.columns else pool
    return ordered.sample(n=size, random_state=seed).reset_index(drop=True)


# --- Chat template ------------------------------------------------------------------------------------------
# Later turns of a conversation repeat the instruction block without the once-per-conversation preamble, the
# same continuation generation.render_alpaca uses for models without a template.
def _later_turn(prompt: str) -> str:
    return "\n\n" + prompt[prompt.index("### Instruction:") :]


def _jinja_concat(template: str, **fields: str) -> str:
    """A str.format template as a Jinja expression: its literals quoted, its fields replaced by expressions.

    A JSON string literal is also a valid Jinja string literal, escapes included.
    """
    parts = []
    for literal, name, _, _ in string.Formatter().parse(template):
        if literal:
            parts.append(json.dumps(literal))
        if name is not None:
            parts.append(fields[name])
    return " ~ ".join(parts)


def alpaca_chat_template(template: PromptTemplate = ALPACA) -> str:
    """A Jinja chat template rendering conversations exactly as training rendered examples.

    A user message's ``content`` is the instruction and its optional ``input`` key the Alpaca input; each
    assistant turn ends with EOS, as training targets do. The first turn starts with BOS and the full prompt,
    later turns continue with the instruction block. The prompt already ends with "### Response:", so
    ``add_generation_prompt`` adds nothing. System messages are refused: Alpaca's preamble is fixed.
    """
    fields = {"instruction": "message['content']", "input": "message['input']"}
    with_input, without_input = template.with_input, template.without_input

    def user_turn(first: bool) -> str:
        pick = (lambda t: t) if first else _later_turn
        return (
            "{%- if message['input'] is defined and message['input'] -%}"
            f"{{{{ {_jinja_concat(pick(with_input), **fields)} }}}}"
            "{%- else -%}"
            f"{{{{ {_jinja_concat(pick(without_input), **fields)} }}}}"
            "{%- endif -%}"
        )

    return (
        "{%- for message in messages -%}"
        "{%- if message['role'] == 'user' -%}"
        "{%- if loop.index0 % 2 != 0 -%}"
        "{{ raise_exception('Alpaca conversations alternate user and assistant turns, starting with user') }}"
        "{%- endif -%}"
        "{%- if loop.first -%}{{ bos_token }}"
        + user_turn(first=True)
        + "{%- else -%}"
        + user_turn(first=False)
        + "{%- endif -%}"
        "{%- elif message['role'] == 'assistant' -%}"
        "{%- if loop.index0 % 2 != 1 -%}"
        "{{ raise_exception('Alpaca conversations alternate user and assistant turns, starting with user') }}"
        "{%- endif -%}"
        "{{ message['content'] ~ eos_token }}"
        "{%- else -%}"
        "{{ raise_exception('Alpaca has only user and assistant turns, got role ' ~ message['role']) }}"
        "{%- endif -%}"
        "{%- endfor -%}"
    )


__all__ = [
    "OVERLONG_POLICIES",
    "EmptyTrainingSetError",
    "EncodedExample",
    "SFTDataset",
    "SkippedExample",
    "TrainingDataError",
    "alpaca_chat_template",
    "encode_example",
    "prepare_sft_dataset",
    "random_subset",
]
