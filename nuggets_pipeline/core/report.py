"""The side-by-side evaluation report: golden against every other variant (random controls, bottom, full) on
every metric, with deltas, paired bootstrap comparisons, and a Markdown rendering that answers "did the
selection help?" honestly.

Judge-based rows carry the judge's name; when the judge's agreement with GPT-4 is indistinguishable from a
coin flip they are flagged and left out of the verdict, which then rests on the judge-free rows. Small judges
compress their ratings into a narrow band, so every figure keeps three or four decimals.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from nuggets_pipeline.core.alpaca_eval import AlpacaEvalSummary
from nuggets_pipeline.core.mt_bench import MTBenchSummary
from nuggets_pipeline.core.reference_likelihood import LikelihoodSummary, paired_standard_error
from nuggets_pipeline.core.reliability import render_markdown as reliability_markdown
from nuggets_pipeline.core.statistics import PairedDifference, compare_variants

VARIANT_ORDER = ("golden", "random", "random-1", "random-2", "bottom", "full")
# A delta counts as real when it exceeds this many standard errors of the difference (about 95%).
NOISE_Z = 2.0

TABLE_COLUMNS = ["metric", "kind", "higher_is_better", "headline", "decimals"]


@dataclass(frozen=True)
class VariantResults:
    """Everything measured for one fine-tuned variant; any part may be missing (not run)."""

    variant: str
    mt_bench: MTBenchSummary | None = None
    alpaca_eval: AlpacaEvalSummary | None = None
    # Judge-free: mean log-likelihood of strong reference answers, by source ("alpaca_eval", "mt_bench").
    likelihood: dict[str, LikelihoodSummary] | None = None


@dataclass(frozen=True)
class JudgeInfo:
    name: str
    backend: str | None = None
    mode: str | None = None
    # Agreement with GPT-4's AlpacaEval verdicts on a balanced sample, and its 95% interval.
    agreement: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    near_chance: bool | None = None

    @property
    def trusted(self) -> bool:
        """Judge-based deltas count towards the verdict unless calibration put the judge at chance."""
        return not self.near_chance

    def describe(self) -> str:
        how = ", ".join(x for x in (self.backend, self.mode) if x)
        text = f"**{self.name}**" + (f" ({how})" if how else "")
        if self.agreement is None:
            return text + "; not calibrated against GPT-4, so its verdicts are of unknown reliability"
        text += f"; agrees with GPT-4 on {self.agreement:.1%} of balanced AlpacaEval pairs"
        if self.ci_low is not None and self.ci_high is not None:
            text += f" (95% interval {self.ci_low:.1%}–{self.ci_high:.1%})"
        return text


@dataclass(frozen=True)
class _Metric:
    label: str
    kind: str  # "judge" or "judge-free" or "info"
    higher_is_better: bool | None
    headline: bool
    decimals: int


def _metrics(result: VariantResults, judge_name: str) -> dict[_Metric, tuple[float, float]]:
    """(value, standard error or NaN) for every metric this variant has."""
    out: dict[_Metric, tuple[float, float]] = {}
    nan = math.nan
    if result.mt_bench is not None:
        mt = result.mt_bench
        out[_Metric(f"MT-Bench score (1-10, judge {judge_name})", "judge", True, True, 3)] = (
            mt.score,
            mt.standard_error,
        )
        out[_Metric("MT-Bench turn 1", "judge", True, False, 3)] = (mt.turn_1, nan)
        out[_Metric("MT-Bench turn 2", "judge", True, False, 3)] = (mt.turn_2, nan)
        for category, score in sorted(mt.per_category.items()):
            out[_Metric(f"MT-Bench {category}", "judge", True, False, 3)] = (score, nan)
        out[_Metric("MT-Bench ratings unreadable or failed", "info", None, False, 0)] = (
            mt.n_unparseable + mt.n_failed,
            nan,
        )
    if result.alpaca_eval is not None:
        ae = result.alpaca_eval
        reference = ae.reference
        out[_Metric(f"AlpacaEval win rate % vs {reference} (judge {judge_name})", "judge", True, True, 3)] = (
            ae.win_rate,
            ae.standard_error,
        )
        out[_Metric("AlpacaEval length-controlled win rate %", "judge", True, True, 3)] = (
            ae.length_controlled_win_rate,
            ae.lc_standard_error,
        )
        out[_Metric("AlpacaEval discrete win rate %", "judge", True, False, 3)] = (ae.discrete_win_rate, nan)
        out[_Metric("AlpacaEval average output length (chars)", "info", None, False, 1)] = (ae.avg_length, nan)
        out[_Metric("AlpacaEval verdicts unreadable or failed", "info", None, False, 0)] = (
            ae.n_unparseable + ae.n_failed,
            nan,
        )
    for source, summary in sorted((result.likelihood or {}).items()):
        label = _likelihood_label(source, summary)
        out[_Metric(label, "judge-free", True, True, 4)] = (summary.mean_logprob, summary.standard_error)
    return out


def _likelihood_label(source: str, summary: LikelihoodSummary) -> str:
    return f"Reference log-likelihood, {source} ({summary.reference}; nats/token)"


def _paired_likelihood_se(golden: VariantResults, other: VariantResults, metric: _Metric) -> float | None:
    """The answer-by-answer standard error of a likelihood difference, when both variants kept their items."""
    for source, summary in (golden.likelihood or {}).items():
        if _likelihood_label(source, summary) != metric.label:
            continue
        theirs = (other.likelihood or {}).get(source)
        if theirs is None or not summary.per_item or not theirs.per_item:
            return None
        return paired_standard_error(summary, theirs)
    return None


def comparison_table(results: Sequence[VariantResults], judge: JudgeInfo) -> pd.DataFrame:
    """One row per metric, one column per variant (golden, random, full first), then deltas of golden against
    each other variant and, where standard errors exist, the noise band (±2 SE of the difference)."""
    by_variant = {r.variant: r for r in results}
    if len(by_variant) != len(results):
        raise ValueError("each variant may appear once in the report")
    variants = [v for v in VARIANT_ORDER if v in by_variant] + sorted(set(by_variant) - set(VARIANT_ORDER))
    measured = {v: _metrics(by_variant[v], judge.name) for v in variants}
    metrics: list[_Metric] = []
    for v in variants:
        metrics += [m for m in measured[v] if m not in metrics]

    rows = []
    for metric in metrics:
        row: dict[str, object] = {
            "metric": metric.label,
            "kind": metric.kind,
            "higher_is_better": metric.higher_is_better,
            "headline": metric.headline,
            "decimals": metric.decimals,
        }
        for v in variants:
            row[v] = measured[v].get(metric, (math.nan, math.nan))[0]
        if "golden" in measured:
            golden, golden_se = measured["golden"].get(metric, (math.nan, math.nan))
            for other in variants:
                if other == "golden":
                    continue
                value, se = measured[other].get(metric, (math.nan, math.nan))
                row[f"golden − {other}"] = golden - value
                paired = _paired_likelihood_se(by_variant["golden"], by_variant[other], metric)
                noise_se = paired if paired is not None else math.hypot(golden_se, se)
                row[f"noise golden − {other}"] = NOISE_Z * noise_se
        rows.append(row)
    return pd.DataFrame(rows)


def _format(value: object, decimals: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if decimals == 0:
        return f"{value:.0f}"
    return f"{value:.{decimals}f}"


def _signed(value: float, decimals: int) -> str:
    return "–" if math.isnan(value) else f"{value:+.{decimals}f}"


def verdict_lines(table: pd.DataFrame, judge: JudgeInfo, other: str = "random") -> tuple[list[str], str]:
    """Per headline metric: golden's lead over ``other`` and whether it exceeds the noise band; then one
    overall answer. A metric counts only if it has a noise estimate and can be trusted (judge-based ones
    only when the judge is not at chance); the others are listed with the reason they do not count."""
    delta_column, noise_column = f"golden − {other}", f"noise golden − {other}"
    if delta_column not in table:
        return [], f"Cannot say: the report needs both a golden and a {other} variant."
    lines, ahead, behind, level = [], 0, 0, 0
    for row in table[table["headline"]].to_dict("records"):
        delta, noise, decimals = row[delta_column], row[noise_column], int(row["decimals"])
        if math.isnan(delta):
            continue
        better = delta > 0 if row["higher_is_better"] else delta < 0
        if math.isnan(noise):
            outcome, counted = "golden " + ("ahead" if better else "behind"), False
            reason = "no standard error"
        else:
            within = abs(delta) <= noise
            outcome = (
                f"within noise (±{noise:.{decimals}f})"
                if within
                else "golden " + ("ahead" if better else "behind") + f" beyond noise (±{noise:.{decimals}f})"
            )
            counted = row["kind"] == "judge-free" or judge.trusted
            reason = "judge at chance"
            if counted:
                level += within
                ahead += not within and better
                behind += not within and not better
        note = "" if counted else f" — not counted: {reason}"
        lines.append(f"- {row['metric']}: {_signed(delta, decimals)} — {outcome}{note}")

    counted_total = ahead + behind + level
    basis = "" if judge.trusted else " (judge-free only: the judge is at chance)"
    if counted_total == 0:
        answer = "Cannot say: no trustworthy headline metric with a noise estimate was measured for both."
    elif ahead and not behind:
        answer = f"Yes: golden beats {other} on {ahead} of {counted_total} counted headline metrics{basis}."
    elif behind and not ahead:
        answer = f"No: golden trails {other} on {behind} of {counted_total} counted headline metrics{basis}."
    elif ahead or behind:
        answer = f"Mixed: golden ahead of {other} on {ahead}, behind on {behind}, level on {level}{basis}."
    else:
        answer = f"Not measurably: every counted headline difference from {other} is within noise{basis}."
    return lines, answer


def likelihood_comparisons(
    results: Sequence[VariantResults], *, resamples: int = 10_000, seed: int = 0
) -> list[PairedDifference]:
    """The study's paired comparisons (core.statistics) on every likelihood source the variants share."""
    per_item: dict[str, dict[str, pd.Series]] = {}
    for result in results:
        for source, summary in (result.likelihood or {}).items():
            if summary.per_item:
                per_item.setdefault(source, {})[result.variant] = pd.Series(dict(summary.per_item), dtype=float)
    return compare_variants(per_item, resamples=resamples, seed=seed)


def _judge_delta(table: pd.DataFrame, prefix: str, first: Sequence[str], second: Sequence[str]) -> float:
    """A judge metric's difference between two sides (a pooled side: the mean of its variants)."""
    rows = table[table["metric"].str.startswith(prefix) & table["headline"].astype(bool)]
    if rows.empty or not all(v in table.columns for v in (*first, *second)):
        return math.nan
    row = rows.iloc[0]
    values = [[float(row[v]) for v in side] for side in (first, second)]
    return sum(values[0]) / len(values[0]) - sum(values[1]) / len(values[1])


JUDGE_PREFIXES = {"mt_bench_score_delta": "MT-Bench score", "alpaca_eval_win_rate_delta": "AlpacaEval win rate %"}


def comparison_rows(differences: Sequence[PairedDifference], table: pd.DataFrame, judge: JudgeInfo) -> pd.DataFrame:
    """One row per (comparison, likelihood source): the paired difference, its interval and verdict, and the
    judge's MT-Bench / AlpacaEval differences beside it (flagged when the judge is at chance)."""
    rows = []
    for d in differences:
        row = d.as_dict()
        row["comparison"] = f"{d.first} vs {d.second}"
        for column, prefix in JUDGE_PREFIXES.items():
            row[column] = _judge_delta(table, prefix, d.first_variants, d.second_variants)
        row["judge_counted"] = judge.trusted
        rows.append(row)
    return pd.DataFrame(rows)


def render_comparisons(rows: pd.DataFrame, judge: JudgeInfo) -> list[str]:
    """The paired-comparison table as Markdown lines."""
    if rows.empty:
        return []
    flag = "" if judge.trusted else " (judge at chance: not evidence)"
    confidence = float(rows["confidence"].iloc[0])
    parts = [
        "## Paired differences (judge-free)",
        "",
        f"Reference log-likelihood, first minus second, nats/token per answer averaged over answers; "
        f"{confidence:.0%} percentile bootstrap interval over answers ({int(rows['resamples'].iloc[0]):,} "
        f"resamples, seed {int(rows['seed'].iloc[0])}). Verdict: ahead / behind only when the interval excludes 0.",
        "",
        f"| comparison | source | answers | difference | {confidence:.0%} interval | verdict | "
        f"MT-Bench Δ{flag} | AlpacaEval win-rate Δ{flag} |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows.to_dict("records"):
        parts.append(
            f"| {row['comparison']} | {row['source']} | {row['n']} | {row['difference']:+.4f} | "
            f"[{row['ci_low']:+.4f}, {row['ci_high']:+.4f}] | {row['verdict']} | "
            f"{_signed(row['mt_bench_score_delta'], 3)} | {_signed(row['alpaca_eval_win_rate_delta'], 2)} |"
        )
    return [*parts, ""]


def render_markdown(
    table: pd.DataFrame,
    judge: JudgeInfo,
    title: str = "NUGGETS evaluation",
    comparisons: pd.DataFrame | None = None,
    reliability: Mapping[str, Any] | None = None,
) -> str:
    """The report as Markdown: the judge and its reliability, the verdict, the paired comparisons, how far the
    golden ranking itself can be trusted (``reliability``: ``ReliabilityReadout.as_metadata()``), then the
    full table."""
    variants = [c for c in table.columns if c not in TABLE_COLUMNS and not c.startswith(("golden −", "noise "))]
    deltas = [c for c in table.columns if c.startswith("golden −")]
    parts = [f"# {title}", "", f"Judge: {judge.describe()}."]
    if judge.near_chance:
        parts.append(
            "> **Warning: the judge is near chance.** Its agreement with GPT-4 is indistinguishable from a coin "
            "flip, so judge-based numbers below are shown but are not evidence either way; the answer rests on "
            "the judge-free reference log-likelihood."
        )
    parts += ["", "## Did the selection help?", ""]
    for other in [v for v in variants if v != "golden"]:
        lines, answer = verdict_lines(table, judge, other)
        parts += [f"**golden vs {other}: {answer}**", "", *lines, ""]
    if comparisons is not None:
        parts += render_comparisons(comparisons, judge)
    # Beside the verdict: a golden subset picked by a ranking that is mostly anchor noise is a random one.
    parts += reliability_markdown(reliability or {})

    header = ["metric", *variants, *deltas]
    parts += ["## All metrics", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table.to_dict("records"):
        decimals = int(row["decimals"])
        cells = [str(row["metric"])] + [_format(row[v], decimals) for v in variants]
        for column in deltas:
            noise = row[f"noise {column}"]
            cell = _signed(row[column], decimals)
            if not math.isnan(noise) and cell != "–":
                cell += f" (±{noise:.{decimals}f})"
            cells.append(cell)
        parts.append("| " + " | ".join(cells) + " |")
    parts += [
        "",
        f"Deltas are golden minus the other variant; ± is {NOISE_Z:g} standard errors of the difference "
        "(paired answer by answer for the reference log-likelihood, whose variants score the same answers; "
        "independent samples otherwise). Judge-based rows use the judge named above and are not "
        "comparable with GPT-4-judged leaderboards.",
    ]
    return "\n".join(parts) + "\n"


def build_report(
    results: Sequence[VariantResults],
    judge: JudgeInfo,
    title: str = "NUGGETS evaluation",
    reliability: Mapping[str, Any] | None = None,
    *,
    resamples: int = 10_000,
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """The comparison table, the paired comparisons and their Markdown rendering, in one call; ``reliability``
    (the golden ranking's readout figures, when known) gets its own section; ``resamples`` and ``seed`` are the
    paired comparisons' bootstrap."""
    table = comparison_table(results, judge)
    comparisons = comparison_rows(likelihood_comparisons(results, resamples=resamples, seed=seed), table, judge)
    return table, comparisons, render_markdown(table, judge, title, comparisons, reliability)


__all__ = [
    "VARIANT_ORDER",
    "JudgeInfo",
    "VariantResults",
    "build_report",
    "comparison_rows",
    "comparison_table",
    "likelihood_comparisons",
    "render_comparisons",
    "render_markdown",
    "verdict_lines",
]
