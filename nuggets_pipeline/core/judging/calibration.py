"""How far to trust a judge: its agreement with GPT-4's shipped AlpacaEval verdicts (alpaca-7b vs
text-davinci-003) on a balanced sample, with a 95% interval and the baselines that expose position bias."""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass
from functools import cache
from typing import Literal

from nuggets_pipeline.core.judging.api import compare_both_orders, rate_pointwise
from nuggets_pipeline.core.judging.backends import Judge
from nuggets_pipeline.core.judging.cache import JudgmentCache
from nuggets_pipeline.core.judging.types import PairRequest, PointwiseRequest
from nuggets_pipeline.core.paths import shipped

GPT4_ANNOTATIONS = "alpaca_eval/results/alpaca-7b/alpaca_eval_gpt4/annotations.json"
Route = Literal["pairwise", "pointwise"]


@dataclass(frozen=True)
class CalibrationItem:
    """One GPT-4-decided pair: ``reference`` is text-davinci-003's output (``output_1``), ``candidate``
    alpaca-7b's (``output_2``)."""

    index: int
    instruction: str
    reference: str
    candidate: str
    gpt4_prefers_reference: bool


@dataclass(frozen=True)
class Calibration:
    judge: str
    backend: str
    mode: str
    route: Route
    n: int  # pairs sampled (half decided each way by GPT-4)
    judged: int  # pairs with a verdict; agreement is over these
    agreement: float | None
    ci_low: float
    ci_high: float
    # Pairwise only: agreement using just the order with the reference shown first (no position-bias
    # cancelling), and the mean P(first shown is better) over both orders (0.5 = no position bias).
    single_order_agreement: float | None
    position_bias: float | None
    # Agreement of "always pick the reference" on all GPT-4-decided pairs (unbalanced); 0.5 on this sample.
    reference_baseline: float
    near_chance: bool
    unparseable: int
    requests: int  # judgments asked for (two per pair in either route)
    failed: int  # of those, requests that got no answer (not cached: asked again next time)
    last_error: str | None  # the last failed request's error, already redacted by the judge backend
    seed: int
    elapsed_s: float
    summary: str


@cache
def _decided_pairs() -> tuple[CalibrationItem, ...]:
    """GPT-4's annotations with a winner (preference 1 or 2); preference 0 marks identical outputs, a tie."""
    rows = json.loads(shipped(GPT4_ANNOTATIONS).read_text(encoding="utf-8"))
    return tuple(
        CalibrationItem(i, row["instruction"], row["output_1"], row["output_2"], int(row["preference"]) == 1)
        for i, row in enumerate(rows)
        if int(row["preference"]) in (1, 2)
    )


def calibration_sample(n: int = 80, seed: int = 0) -> list[CalibrationItem]:
    """``n/2`` pairs GPT-4 gave to the reference and ``n/2`` it gave to alpaca-7b, drawn with ``seed``."""
    if n < 2 or n % 2:
        raise ValueError(f"calibration needs an even n >= 2 for a balanced sample, got {n}")
    pairs = _decided_pairs()
    rng = random.Random(seed)
    for_reference = [p for p in pairs if p.gpt4_prefers_reference]
    for_candidate = [p for p in pairs if not p.gpt4_prefers_reference]
    if n // 2 > len(for_candidate):
        raise ValueError(f"n={n} exceeds the {2 * len(for_candidate)} pairs a balanced sample can hold")
    chosen = rng.sample(for_reference, n // 2) + rng.sample(for_candidate, n // 2)
    return sorted(chosen, key=lambda p: p.index)


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a proportion; (0, 1) with no observations."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _credit(reference_margin: float, gpt4_prefers_reference: bool) -> float:
    """1 if the judge leans the way GPT-4 decided, 0 if the other way, 0.5 for an exact tie."""
    if reference_margin == 0:
        return 0.5
    return 1.0 if (reference_margin > 0) == gpt4_prefers_reference else 0.0


def calibrate_judge(
    judge: Judge, n: int = 80, seed: int = 0, route: Route = "pairwise", *, cache: JudgmentCache | None = None
) -> Calibration:
    """Agreement with GPT-4 on ``n`` balanced pairs.

    ``pairwise``: each pair judged in both orders and P(reference better) averaged, cancelling position bias.
    ``pointwise``: each output rated 1-10 alone; the higher rating is the judge's pick.
    """
    started = time.perf_counter()
    items = calibration_sample(n, seed)
    single_order: float | None = None
    position_bias: float | None = None
    if route == "pairwise":
        results = compare_both_orders(
            judge, [PairRequest(i.instruction, i.reference, i.candidate) for i in items], cache=cache
        )
        margins = [None if r.value is None else r.value - 0.5 for r in results]
        judgments = [j for r in results for j in (r.forward, r.backward)]
        forward = [
            (r.forward.value, item) for r, item in zip(results, items, strict=True) if r.forward.value is not None
        ]
        if forward:
            single_order = sum(_credit(v - 0.5, i.gpt4_prefers_reference) for v, i in forward) / len(forward)
        shown_first = [j.value for j in judgments if j.value is not None]
        position_bias = sum(shown_first) / len(shown_first) if shown_first else None
    elif route == "pointwise":
        requests = [PointwiseRequest(i.instruction, out) for i in items for out in (i.reference, i.candidate)]
        judgments = rate_pointwise(judge, requests, cache=cache)
        margins = []
        for ref, cand in zip(judgments[::2], judgments[1::2], strict=True):
            both = ref.value is not None and cand.value is not None
            margins.append(ref.value - cand.value if both else None)
    else:
        raise ValueError(f"unknown calibration route {route!r}; use 'pairwise' or 'pointwise'")

    credits = [_credit(m, i.gpt4_prefers_reference) for m, i in zip(margins, items, strict=True) if m is not None]
    agreement = sum(credits) / len(credits) if credits else None
    low, high = wilson_interval(sum(credits), len(credits))
    decided = _decided_pairs()
    calibration = dict(
        judge=judge.name,
        backend=judge.backend,
        mode=judge.mode,
        route=route,
        n=n,
        judged=len(credits),
        agreement=agreement,
        ci_low=low,
        ci_high=high,
        single_order_agreement=single_order,
        position_bias=position_bias,
        reference_baseline=sum(p.gpt4_prefers_reference for p in decided) / len(decided),
        near_chance=low <= 0.5 <= high,
        unparseable=sum(j.unparseable for j in judgments),
        requests=len(judgments),
        failed=sum(j.failed for j in judgments),
        last_error=next((j.error for j in reversed(judgments) if j.failed), None),
        seed=seed,
        elapsed_s=time.perf_counter() - started,
    )
    return Calibration(**calibration, summary=_summary(calibration))


def _summary(c: dict) -> str:
    who = f"Judge {c['judge']} ({c['backend']}, {c['mode']}, {c['route']})"
    if c["agreement"] is None:
        return (
            f"{who} produced no readable verdict on {c['n']} pairs ({c['unparseable']} unparseable, "
            f"{c['failed']} failed requests): it cannot be used as a judge in this mode."
        )
    head = (
        f"{who} agreed with GPT-4 on {c['agreement']:.0%} of {c['judged']} balanced pairs "
        f"(95% interval {c['ci_low']:.0%}-{c['ci_high']:.0%})"
    )
    if c["near_chance"]:
        verdict = "indistinguishable from a coin flip, so its verdicts say little about which output is better"
    elif c["ci_low"] > 0.5:
        verdict = "better than chance: its verdicts track GPT-4's preferences to a measurable degree"
    else:
        verdict = "worse than chance: it tends to prefer the output GPT-4 rejected"
    context = (
        f" Always picking the reference would agree {c['reference_baseline']:.0%} on the unbalanced "
        f"AlpacaEval data but 50% here"
    )
    if c["single_order_agreement"] is not None:
        context += (
            f"; judged in one order only (reference first) this judge agrees "
            f"{c['single_order_agreement']:.0%}, and it picks whichever output is shown first with "
            f"probability {c['position_bias']:.2f} (0.50 = no position bias)"
        )
    return f"{head}: {verdict}.{context}."
