"""Reading verdicts: bracketed text (generate mode) and next-token distributions (probabilities mode).

Every reader returns ``(value, error)``: a value, or None with the reason no verdict could be read. Nothing is
ever guessed: an unreadable judgment stays unread.
"""

from __future__ import annotations

import json
import math
import re

from nuggets_pipeline.core.judging.types import PAIR_LABELS, RATING_LABELS, RawOutput, VerdictKind

# FastChat reads "[[rating]]" and falls back to "[rating]"; spaces inside the brackets are tolerated here.
_DOUBLE_RATING = re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]")
_SINGLE_RATING = re.compile(r"\[\s*(\d+(?:\.\d+)?)\s*\]")
_PAIR_VERDICT = re.compile(r"\[\[\s*([ABC])\s*\]\]")
PAIR_VALUES = {"A": 1.0, "B": 0.0, "C": 0.5}

Reading = tuple[float | None, str | None]


def parse_rating(text: str | None) -> Reading:
    """A 1-10 rating from "[[7]]" (or "[7]" when no double-bracketed number exists).

    Repeats of the same number are fine; different numbers are ambiguous and out-of-range numbers are
    rejected, both as unparseable rather than picking one.
    """
    if not text or not text.strip():
        return None, "empty judge output"
    found = _DOUBLE_RATING.findall(text) or _SINGLE_RATING.findall(text)
    if not found:
        return None, "no [[rating]] in judge output"
    ratings = {float(match) for match in found}
    if len(ratings) > 1:
        return None, f"conflicting ratings {sorted(ratings)}"
    rating = ratings.pop()
    if not 1.0 <= rating <= 10.0:
        return None, f"rating {rating:g} outside 1-10"
    return rating, None


def parse_pair(text: str | None) -> Reading:
    """P(first shown output is better) from "[[A]]" (1), "[[B]]" (0) or "[[C]]" (tie, 0.5)."""
    if not text or not text.strip():
        return None, "empty judge output"
    verdicts = set(_PAIR_VERDICT.findall(text))
    if not verdicts:
        return None, "no [[A]]/[[B]]/[[C]] verdict in judge output"
    if len(verdicts) > 1:
        return None, f"conflicting verdicts {sorted(verdicts)}"
    return PAIR_VALUES[verdicts.pop()], None


def labels_for(kind: VerdictKind) -> tuple[str, ...]:
    return RATING_LABELS if kind == "rating" else PAIR_LABELS


def candidate_logprobs(top_logprobs: dict[str, float], kind: VerdictKind) -> dict[str, float]:
    """Verdict labels found among an API's top tokens; " 7" and "7" count as the same label.

    On servers whose tokenizer splits "10" into "1","0" the first token "1" cannot tell 1 from 10; it is read
    as 1 (the same first-token reading AlpacaEval's weighted annotator makes). Local judges avoid this by
    computing the "10" continuation exactly.
    """
    labels = set(labels_for(kind))
    merged: dict[str, list[float]] = {}
    for token, logprob in top_logprobs.items():
        label = token.strip()
        if label in labels:
            merged.setdefault(label, []).append(logprob)
    return {label: _logsumexp(values) for label, values in merged.items()}


def read_distribution(kind: VerdictKind, raw: RawOutput) -> Reading:
    """Expected rating over "1".."10", or P(A) / (P(A) + P(B)), renormalised over the labels present.

    Labels missing from an API's top tokens count as probability 0 (they are below the 20th token).
    """
    candidates = raw.candidates if raw.candidates is not None else candidate_logprobs(raw.top_logprobs or {}, kind)
    if not candidates:
        return None, "no verdict token among the judge's most likely next tokens"
    probs = {label: math.exp(logprob) for label, logprob in candidates.items()}
    total = sum(probs.values())
    if total <= 0.0:
        return None, "verdict tokens have zero probability"
    if kind == "rating":
        return sum(int(label) * p for label, p in probs.items()) / total, None
    return probs.get("A", 0.0) / total, None


def read_raw(kind: VerdictKind, raw: RawOutput) -> Reading:
    """The verdict of whatever the backend returned, in the mode it was asked in."""
    if raw.text is not None:
        return parse_rating(raw.text) if kind == "rating" else parse_pair(raw.text)
    return read_distribution(kind, raw)


def serialise(raw: RawOutput) -> str:
    """The text of a judgment as stored: the judge's words, or its top tokens as JSON."""
    if raw.text is not None:
        return raw.text
    payload: dict[str, dict[str, float]] = {"top_logprobs": raw.top_logprobs or {}}
    if raw.candidates is not None:
        payload["candidates"] = raw.candidates
    return json.dumps(payload, ensure_ascii=False)


def _logsumexp(values: list[float]) -> float:
    peak = max(values)
    return peak + math.log(sum(math.exp(v - peak) for v in values))
