"""Supervised fine-tuning data, prepared the way Stanford Alpaca's train.py prepares it.

One example becomes ``BOS + prompt + response + EOS``; the labels copy the ids with every prompt position
(BOS included) set to ``IGNORE_INDEX``, so the loss is computed on the response and its EOS only. Batches are
padded on the right and padded labels are ignored too.

Differences from Alpaca's train.py, each deliberate:
- BOS is prepended explicitly (as everywhere in this project) instead of by the tokenizer, and prompt and
  response are tokenised separately, so the label mask falls exactly on the prompt/response boundary.
- ``padding_free`` batches put the examples end to end in one row instead of padding them (see sft_collator).
- An example longer than ``max_length`` is never cut silently: it is counted, and either its response is cut
  at ``max_length`` (losing its EOS, so the model is not taught to stop mid-answer) or it is skipped with a
  recorded reason.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass, field

import pandas as pd
from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening, PreTrainedTokenizerBase

from nuggets_pipeline.core.modeling import bos_token_id
from nuggets_pipeline.core.templates import ALPACA, PromptTemplate

# The label value Hugging Face causal LMs (and torch's cross-entropy) leave out of the loss.
IGNORE_INDEX = -100

OVERLONG_POLICIES: tuple[str, ...] = ("truncate", "skip")


class TrainingDataError(ValueError):
    """The examples cannot be turned into a training set; the message says why."""


class EmptyTrainingSetError(TrainingDataError):
    """Nothing to train on: no examples were given, or every one was skipped."""


@dataclass(frozen=True)
class EncodedExample:
    input_ids: list[int]
    labels: list[int]
    # Tokens the whole example has before any truncation (BOS and EOS included).
    full_length: int
    truncated: bool = False


@dataclass(frozen=True)
class SkippedExample:
    id: str
    reason: str


@dataclass
class SFTDataset:
    """Tokenised training examples plus the account of what happened to the over-long ones."""

    features: list[dict[str, list[int]]]
    ids: list[str]
    max_length: int
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
        return sum(sum(1 for label in f["labels"] if label != IGNORE_INDEX) for f in self.features)


def encode_example(
    prompt_ids: list[int], response_ids: list[int], bos_id: int, eos_id: int, max_length: int, overlong: str
) -> EncodedExample | str:
    """Assemble one example from its tokenised prompt and response; a string return is a skip reason."""
    prompt = [bos_id, *prompt_ids]
    target = [*response_ids, eos_id]
    full_length = len(prompt) + len(target)
    truncated = False
    if full_length > max_length:
        if overlong == "skip":
            return f"over max_length: {full_length} tokens > {max_length}"
        room = max_length - len(prompt)
        if room < 1:
            return f"prompt too long: {len(prompt)} tokens leave no room for a response in {max_length}"
        target = target[:room]
        truncated = True
    return EncodedExample(
        input_ids=prompt + target,
        labels=[IGNORE_INDEX] * len(prompt) + target,
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
    max_length: int,
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
        ones = [1] * len(encoded.input_ids)
        dataset.features.append({"input_ids": encoded.input_ids, "attention_mask": ones, "labels": encoded.labels})
    if not dataset.features:
        reasons = "; ".join(sorted({s.reason.split(":")[0] for s in dataset.skipped}))
        raise EmptyTrainingSetError(
            f"the training set is empty: all {len(examples)} examples were skipped ({reasons}); "
            f"raise max_length (now {max_length}) or use overlong='truncate'"
        )
    return dataset


def sft_collator(
    tokenizer: PreTrainedTokenizerBase, padding_free: bool = False
) -> DataCollatorForSeq2Seq | DataCollatorWithFlattening:
    """Pads ids on the right with the pad token and labels with IGNORE_INDEX, as Alpaca's collator does.

    ``padding_free``: the batch's examples end to end in one row, with position ids restarting at 0 for each.
    transformers turns those position ids into a block-diagonal causal mask, so no token attends across
    examples and the loss is the padded batch's loss; only the padding's compute is gone (Alpaca-length
    examples in random batches of 4 are about 1.6x their real tokens once padded).
    """
    if padding_free:
        # Each example's first label is already IGNORE_INDEX (BOS is prompt), so the separator changes nothing.
        return DataCollatorWithFlattening(return_position_ids=True, separator_id=IGNORE_INDEX, return_tensors="pt")
    if tokenizer.padding_side != "right":
        raise ValueError("training pads on the right (Alpaca); set tokenizer.padding_side = 'right' first")
    return DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX, return_tensors="pt")


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
    "IGNORE_INDEX",
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
    "sft_collator",
]
