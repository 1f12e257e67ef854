"""Prompt templates: how an (instruction, input, output) example becomes text."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PromptTemplate:
    """A template renders a prompt (everything before the response) and the response separately.

    Keeping the two apart lets the scorer tokenise them separately, so an anchor's response tokens are
    identical whatever precedes them.
    """

    name: str
    with_input: str
    without_input: str
    response_prefix: str = ""

    def prompt(self, instruction: str, input_text: str = "") -> str:
        if input_text:
            return self.with_input.format(instruction=instruction, input=input_text)
        return self.without_input.format(instruction=instruction)

    def response(self, output: str) -> str:
        return self.response_prefix + output

    def full(self, instruction: str, input_text: str, output: str) -> str:
        return self.prompt(instruction, input_text) + self.response(output)


# The NUGGETS paper's scoring template.
NUGGETS = PromptTemplate(
    name="nuggets",
    with_input="Instruction:\n{instruction}\nInput:\n{input}\nResponse:\n",
    without_input="Instruction:\n{instruction}\nResponse:\n",
)

# Stanford Alpaca's training template (tatsu-lab/stanford_alpaca train.py PROMPT_DICT). Alpaca's train.py
# concatenates source + target with nothing between, so the response follows "### Response:" directly.
ALPACA = PromptTemplate(
    name="alpaca",
    with_input=(
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
    ),
    without_input=(
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Response:"
    ),
)

TEMPLATES: dict[str, PromptTemplate] = {t.name: t for t in (NUGGETS, ALPACA)}


def get_template(name: str) -> PromptTemplate:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise ValueError(f"unknown prompt template {name!r}; choose one of {sorted(TEMPLATES)}") from None
