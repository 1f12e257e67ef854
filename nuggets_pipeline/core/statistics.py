"""Paired comparisons of fine-tuned variants on the judge-free reference log-likelihood.

Every variant scores the same reference answers, so two variants are compared answer by answer: the per-answer
difference of mean per-token log-likelihood (nats/token), averaged, with a percentile bootstrap interval over
answers (resampling answers, not tokens, because tokens within an answer are not independent). The verdict only
says "ahead" or "behind" when the interval excludes zero; otherwise "within noise". It says nothing about size:
a difference can be real and still too small to matter, and the report prints the number beside it.

A side of a comparison may pool several variants (e.g. the random controls drawn with different seeds): its
per-answer value is then the mean over those variants, so "golden vs random (pooled)" compares golden with the
average control.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

CONFIDENCE = 0.95
RESAMPLES = 10_000


@dataclass(frozen=True)
class ComparisonSpec:
    """``first`` minus ``second``; each side is one variant or several pooled (mean per answer)."""

    first: tuple[str, ...]
    second: tuple[str, ...]
    # Why this comparison is in the study (printed beside it).
    purpose: str = ""

    @property
    def label(self) -> str:
        return f"{side_label(self.first)} vs {side_label(self.second)}"


@dataclass(frozen=True)
class PairedDifference:
    source: str
    first: str
    second: str
    n: int
    mean_first: float
    mean_second: float
    difference: float  # mean over answers of (first - second), nats/token; higher favours first
    ci_low: float
    ci_high: float
    confidence: float
    resamples: int
    seed: int
    verdict: str  # "ahead" / "behind" / "within noise": first relative to second
    purpose: str = ""
    first_variants: tuple[str, ...] = ()
    second_variants: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["first_variants"] = list(self.first_variants)
        out["second_variants"] = list(self.second_variants)
        return out

    def sentence(self, decimals: int = 4) -> str:
        """One line that does not overstate: the number, its interval, and what the interval allows."""
        interval = f"[{self.ci_low:+.{decimals}f}, {self.ci_high:+.{decimals}f}]"
        what = {
            "ahead": f"{self.first} ahead of {self.second}",
            "behind": f"{self.first} behind {self.second}",
            "within noise": f"{self.first} and {self.second} within noise",
        }[self.verdict]
        return (
            f"{self.source}: {self.first} − {self.second} = {self.difference:+.{decimals}f} nats/token, "
            f"{self.confidence:.0%} interval {interval} over {self.n} answers: {what}"
        )


def side_label(variants: Sequence[str]) -> str:
    return variants[0] if len(variants) == 1 else f"{variants[0].split('-')[0]} (pooled {'+'.join(variants)})"


def verdict(ci_low: float, ci_high: float) -> str:
    """Ahead when the whole interval is above zero, behind when below, else within noise."""
    if np.isnan(ci_low) or np.isnan(ci_high):
        return "within noise"
    if ci_low > 0:
        return "ahead"
    if ci_high < 0:
        return "behind"
    return "within noise"


def bootstrap_mean_interval(
    differences: np.ndarray, *, resamples: int = RESAMPLES, confidence: float = CONFIDENCE, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``differences`` (resampling its elements with replacement).

    Resamples are drawn in blocks so 10,000 resamples of 805 answers stay within a few MB of memory.
    """
    values = np.asarray(differences, dtype=np.float64)
    if values.ndim != 1 or len(values) == 0:
        raise ValueError("bootstrap needs a non-empty 1-D array of paired differences")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    if np.isnan(values).any():
        raise ValueError("paired differences contain NaN: every answer must have a score for both sides")
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    block = max(1, 2_000_000 // len(values))
    for start in range(0, resamples, block):
        stop = min(start + block, resamples)
        picks = rng.integers(0, len(values), size=(stop - start, len(values)))
        means[start:stop] = values[picks].mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return float(low), float(high)


def side_values(per_item: Mapping[str, pd.Series], variants: Sequence[str]) -> pd.Series:
    """Per-answer value of one side: the variant's own, or the mean over the pooled variants (shared answers)."""
    frame = pd.concat([per_item[v].rename(v) for v in variants], axis=1, join="inner")
    return frame.mean(axis=1)


def paired_difference(
    per_item: Mapping[str, pd.Series],
    spec: ComparisonSpec,
    source: str,
    *,
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> PairedDifference:
    """``spec.first`` minus ``spec.second`` over the answers both sides scored; ``per_item`` maps a variant to
    its per-answer mean log-likelihood indexed by answer id."""
    first, second = side_values(per_item, spec.first), side_values(per_item, spec.second)
    shared = pd.concat([first.rename("first"), second.rename("second")], axis=1, join="inner").sort_index()
    if shared.empty:
        raise ValueError(f"{spec.label}: the two sides share no scored answer for {source}")
    differences = (shared["first"] - shared["second"]).to_numpy()
    low, high = bootstrap_mean_interval(differences, resamples=resamples, confidence=confidence, seed=seed)
    return PairedDifference(
        source=source,
        first=side_label(spec.first),
        second=side_label(spec.second),
        n=len(shared),
        mean_first=float(shared["first"].mean()),
        mean_second=float(shared["second"].mean()),
        difference=float(differences.mean()),
        ci_low=low,
        ci_high=high,
        confidence=confidence,
        resamples=resamples,
        seed=seed,
        verdict=verdict(low, high),
        purpose=spec.purpose,
        first_variants=tuple(spec.first),
        second_variants=tuple(spec.second),
    )


def random_controls(variants: Sequence[str]) -> tuple[str, ...]:
    """The random-control variants present: `random`, `random-1`, ... in seed order."""
    found = [v for v in variants if v == "random" or (v.startswith("random-") and v[len("random-") :].isdigit())]
    return tuple(sorted(found, key=lambda v: 0 if v == "random" else int(v.split("-")[1])))


def standard_comparisons(variants: Sequence[str]) -> list[ComparisonSpec]:
    """The study's comparisons among the variants present: golden against each random seed (and their pool), the
    cheap baselines users would pick instead (longest responses, a length-matched sample, IFD), full and bottom;
    the baselines against random; every variant against the untouched base model; and the random seeds against
    each other (the noise floor every other difference must clear)."""
    present = set(variants)
    randoms = random_controls(variants)
    pooled = randoms if randoms else ()
    specs: list[ComparisonSpec] = []
    if "golden" in present:
        specs += [ComparisonSpec(("golden",), (r,), "selection vs a random sample of the same size") for r in randoms]
        if len(randoms) > 1:
            specs.append(ComparisonSpec(("golden",), pooled, "selection vs the average random control"))
        for baseline, purpose in BASELINES.items():
            if baseline in present:
                specs.append(ComparisonSpec(("golden",), (baseline,), purpose))
        if "full" in present:
            specs.append(ComparisonSpec(("golden",), ("full",), "a quarter of the pool vs all of it"))
        if "bottom" in present:
            specs.append(ComparisonSpec(("golden",), ("bottom",), "top quarter vs bottom quarter by golden score"))
    if pooled:
        for baseline in ("ifd", "longest"):
            if baseline in present:
                specs.append(ComparisonSpec((baseline,), pooled, f"does the {baseline} baseline beat chance?"))
        if "bottom" in present:
            specs.append(ComparisonSpec(pooled, ("bottom",), "does the bottom quarter hurt against chance?"))
    if "base" in present:
        specs += [
            ComparisonSpec((v,), ("base",), "did this fine-tune move the model at all?")
            for v in variants
            if v != "base"
        ]
    if len(randoms) > 1:
        specs += [
            ComparisonSpec((randoms[0],), (other,), "noise floor: two random seeds, no selection")
            for other in randoms[1:]
        ]
    return specs


# The cheap selectors golden is set against, each the golden subset's size (core.selection, core.ifd).
BASELINES = {
    "longest": "selection vs the longest responses (length alone)",
    "length-matched": "selection vs a random sample with golden's response lengths (what the score adds beyond length)",
    "ifd": "selection vs IFD, the two-pass selector users pick instead",
}


def compare_variants(
    per_item: Mapping[str, Mapping[str, pd.Series]],
    specs: Sequence[ComparisonSpec] | None = None,
    *,
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> list[PairedDifference]:
    """Every comparison for every source: ``per_item[source][variant]`` is a Series of per-answer values.

    A comparison whose variants a source lacks is skipped for that source (not every run trains every variant).
    """
    out = []
    for source in sorted(per_item):
        by_variant = per_item[source]
        for spec in specs if specs is not None else standard_comparisons(list(by_variant)):
            if all(v in by_variant for v in (*spec.first, *spec.second)):
                out.append(
                    paired_difference(by_variant, spec, source, resamples=resamples, confidence=confidence, seed=seed)
                )
    return out


__all__ = [
    "BASELINES",
    "CONFIDENCE",
    "RESAMPLES",
    "ComparisonSpec",
    "PairedDifference",
    "bootstrap_mean_interval",
    "compare_variants",
    "paired_difference",
    "random_controls",
    "side_values",
    "standard_comparisons",
    "verdict",
]
