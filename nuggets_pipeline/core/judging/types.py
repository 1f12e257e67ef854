"""The judge layer's data: what is asked (requests, prompts) and what comes back (judgments)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Literal

Mode = Literal["generate", "probabilities"]
Backend = Literal["openai", "local"]
# What a prompt asks for: a 1-10 rating, or which of two outputs (A, B) is better.
VerdictKind = Literal["rating", "pair"]
MODES: tuple[Mode, ...] = ("generate", "probabilities")

RATING_LABELS = tuple(str(r) for r in range(1, 11))
PAIR_LABELS = ("A", "B")


@dataclass(frozen=True)
class SingleRequest:
    """One MT-Bench answer to grade on 1-10 (FastChat single-answer grading).

    ``questions``/``answers`` hold the conversation's turns; ``turn`` says which answer is graded (2 uses the
    multi-turn template, which shows turn 1 as context). Give ``references`` (FastChat does for the math,
    reasoning and coding categories) to switch to the reference-guided template.
    """

    questions: tuple[str, ...]
    answers: tuple[str, ...]
    turn: int = 1
    references: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.turn not in (1, 2):
            raise ValueError(f"turn must be 1 or 2, got {self.turn}")
        if len(self.questions) < self.turn or len(self.answers) < self.turn:
            raise ValueError(f"turn {self.turn} needs {self.turn} question(s) and answer(s)")
        if self.references is not None and len(self.references) < self.turn:
            raise ValueError(f"turn {self.turn} needs {self.turn} reference answer(s)")


@dataclass(frozen=True)
class PairRequest:
    """Which of two outputs answers the instruction better; ``output_a`` is shown first."""

    instruction: str
    output_a: str
    output_b: str

    def swapped(self) -> PairRequest:
        return PairRequest(self.instruction, self.output_b, self.output_a)


@dataclass(frozen=True)
class PointwiseRequest:
    """Rate one output for one instruction on 1-10 (the route for judges too weak to compare two outputs)."""

    instruction: str
    output: str


@dataclass(frozen=True)
class JudgePrompt:
    """A rendered judge prompt, backend-neutral.

    ``verdict_prefix`` is where the verdict goes in ``probabilities`` mode: backends that can prefill the
    assistant turn (local) place it there and read the next token; backends that cannot (OpenAI chat API)
    rely on the user message's closing cue asking for the bare verdict as the first token.
    """

    kind: VerdictKind
    user: str
    system: str | None = None
    verdict_prefix: str = ""
    template: str = ""

    @property
    def prompt_hash(self) -> str:
        payload = {"kind": self.kind, "system": self.system, "user": self.user, "prefix": self.verdict_prefix}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def messages(self) -> list[dict[str, str]]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        return [*system, {"role": "user", "content": self.user}]


@dataclass(frozen=True)
class RawOutput:
    """What a backend returned for one prompt: text (generate), log-probs (probabilities), or an error.

    ``top_logprobs``: the verdict position's most likely tokens, as the backend saw them. ``candidates``:
    exact log-probabilities of the verdict labels ("1".."10", "A", "B") when the backend can compute them
    (local); otherwise labels are read from ``top_logprobs`` (see ``parsing.read_distribution``).
    """

    text: str | None = None
    top_logprobs: dict[str, float] | None = None
    candidates: dict[str, float] | None = None
    error: str | None = None


@dataclass(frozen=True)
class Judgment:
    """One judge verdict. ``value`` is a 1-10 rating, or P(first shown output is better) for pairs.

    ``parsed`` False with ``raw`` set: the judge answered but no verdict could be read (value stays None and
    is counted, never imputed). ``raw`` None with ``error``: the request itself failed (not cached, retried on
    the next run). Labelled with the judge's ``judge`` name everywhere: a small local judge's numbers are not
    comparable with GPT-4-judged leaderboards.
    """

    judge: str
    backend: Backend
    mode: Mode
    prompt_hash: str
    raw: str | None
    value: float | None
    parsed: bool
    error: str | None = None
    cached: bool = False

    @property
    def failed(self) -> bool:
        """The request got no answer at all (transport error, refused request)."""
        return self.raw is None

    @property
    def unparseable(self) -> bool:
        return self.raw is not None and not self.parsed


@dataclass(frozen=True)
class BothOrders:
    """A pair judged in both orders; ``value`` = P(``output_a`` better) averaged over the two orders.

    Averaging cancels a judge's position bias; ``value`` is None unless both orders parsed.
    """

    forward: Judgment
    backward: Judgment
    value: float | None = field(init=False)

    def __post_init__(self) -> None:
        both = self.forward.value is not None and self.backward.value is not None
        value = (self.forward.value + 1.0 - self.backward.value) / 2 if both else None
        object.__setattr__(self, "value", value)
