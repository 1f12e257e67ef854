"""docs/study.md and the README's headline, rendered from results.json, never typed by hand; and the plot of the
paired differences (differences.png).

``render_study_doc`` fills every ``<!-- study:NAME -->…<!-- /study:NAME -->`` block of a Markdown text with the
figure of that name (headline, settings, machine, timings, comparisons, variants, length) and leaves the rest
of the text as it is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd


def difference_plot(comparisons: pd.DataFrame, path: Path) -> None:
    """Each comparison's paired difference with its interval, one panel per likelihood source."""
    from nuggets_pipeline.defs import metadata as md

    plt = md.pyplot()
    sources = sorted(comparisons["source"].unique())
    figure, axes = plt.subplots(1, len(sources), figsize=(6 * len(sources), 0.5 * len(comparisons) + 2), squeeze=False)
    colours = {"ahead": "#2e7d32", "behind": "#c62828", "within noise": "#757575"}
    for axis, source in zip(axes[0], sources, strict=True):
        rows = comparisons[comparisons["source"] == source].iloc[::-1]
        y = range(len(rows))
        for i, row in zip(y, rows.itertuples(), strict=True):
            axis.errorbar(
                row.difference,
                i,
                xerr=[[row.difference - row.ci_low], [row.ci_high - row.difference]],
                fmt="o",
                color=colours[row.verdict],
                capsize=4,
            )
        axis.axvline(0, color="black", linewidth=0.8)
        axis.set_yticks(list(y), [f"{r.first} − {r.second}" for r in rows.itertuples()], fontsize=8)
        axis.set_xlabel("paired difference (nats/token), 95% interval")
        axis.set_title(f"{source} ({int(rows['n'].iloc[0])} answers)")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _block(name: str) -> tuple[str, str]:
    return f"<!-- study:{name} -->", f"<!-- /study:{name} -->"


def render_blocks(results: dict[str, Any]) -> dict[str, str]:
    s = results["settings"]
    timings = results["stage_wall_s"]
    estimated = results["estimated_stage_s"]
    lines = ["| stage | measured (s) | estimated (s) | CPU |", "|---|---:|---:|---|"]
    for stage, est in estimated.items():
        measured = timings.get(stage, {}).get("wall_s")
        cpu = timings.get(stage, {}).get("cpu", results["machine"].get("cpu", "–"))
        lines.append(f"| {stage} | {'–' if measured is None else f'{measured:,.0f}'} | {est:,} | {cpu} |")
    total = sum(t.get("wall_s") or 0.0 for t in timings.values())
    lines.append(f"| **total** | **{total:,.0f}** ({total / 3600:.2f} h) | {sum(estimated.values()):,} | |")
    comparison = [
        "| comparison | source | answers | difference (nats/token) | 95% interval | verdict | beyond seed spread | "
        "MT-Bench Δ | AlpacaEval win-rate Δ |",
        "|---|---|---:|---:|---|---|---|---:|---:|",
    ]
    for c in results["comparisons"]:
        mt, ae = c.get("mt_bench_score_delta"), c.get("alpaca_eval_win_rate_delta")
        comparison.append(
            f"| {c['comparison']} | {c['source']} | {c['n']} | {c['difference']:+.4f} | "
            f"[{c['ci_low']:+.4f}, {c['ci_high']:+.4f}] | {c['verdict']} | {_yes_no(c.get('beyond_seed_spread'))} | "
            f"{'–' if mt is None else f'{mt:+.3f}'} | {'–' if ae is None else f'{ae:+.2f}'} |"
        )
    judge = results["judge"]
    if judge.get("near_chance", True):
        comparison.append(
            "\nThe judge columns come from the SmolLM2 judge, which calibration put at chance "
            f"(agreement with GPT-4 {judge.get('agreement') or float('nan'):.1%}): shown, not evidence."
        )
    variants = [
        "| variant | examples | tokens / example | steps | final loss | train wall (s) | tokens/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for v, f in results["variants"].items():
        loss, seen, rate = f.get("final_loss"), f.get("examples_seen"), f.get("tokens_per_s")
        per_example = f"{f['train_tokens'] / seen:.0f}" if seen and f.get("train_tokens") else "–"
        variants.append(
            f"| {v} | {f.get('examples', '–')} | {per_example} | {f.get('steps', '–')} | "
            f"{'–' if loss is None else f'{loss:.4f}'} | {f.get('wall_s', 0):,.0f} | "
            f"{'–' if rate is None else f'{rate:.0f}'} |"
        )
    pool = results.get("scored_pool", {})
    length = "_Not measured._"
    if "spearman_golden_score_vs_response_chars" in pool:
        means = pool["response_chars_mean"]
        length = (
            f"Across the {pool['candidates']} scored candidates, golden score and response length (characters) have "
            f"a Spearman correlation of {pool['spearman_golden_score_vs_response_chars']:+.2f}; mean response "
            f"length: golden quarter {means['golden quarter']:,.0f}, bottom quarter {means['bottom quarter']:,.0f}, "
            f"whole pool {means['pool']:,.0f} characters."
        )
    settings = "```json\n" + json.dumps(s, indent=1) + "\n```"
    scoring = _scoring_lines(results.get("scoring"))
    machine_line = ", ".join(f"{k} {v}" for k, v in results["machine"].items())
    return {
        "headline": results["headline"],
        "settings": settings,
        "machine": machine_line,
        "timings": "\n".join(lines),
        "comparisons": "\n".join(comparison),
        "variants": "\n".join(variants),
        "length": length,
        "scoring": scoring,
        "objections": _objections(results),
    }


def _comparison(results: dict[str, Any], name: str, source: str = "alpaca_eval") -> dict[str, Any] | None:
    found = [c for c in results["comparisons"] if c["comparison"] == name and c["source"] == source]
    return found[0] if found else None


def _said(results: dict[str, Any], name: str, floor: bool = False) -> str:
    """A comparison's sentence (AlpacaEval references) with whether it clears the seed spread, or 'not measured';
    ``floor``: the comparison that is the seed spread."""
    c = _comparison(results, name)
    if c is None:
        return f"{name}: not measured"
    beyond = c.get("beyond_seed_spread")
    if floor:
        spread = "; this gap is the seed spread, which every other verdict must clear"
    elif beyond is None or c["verdict"] == "within noise":
        spread = ""
    else:
        spread = "; beyond the seed spread" if beyond else "; but within the seed spread"
    sentence = c.get("sentence") or (
        f"{name}: {c['difference']:+.4f} nats/token, 95% interval [{c['ci_low']:+.4f}, {c['ci_high']:+.4f}], "
        f"{c['verdict']}"
    )
    return sentence.removeprefix("alpaca_eval: ") + spread


def _objections(results: dict[str, Any]) -> str:
    """The five objections to a golden-vs-random verdict, each answered from the results in one line."""
    scoring = results.get("scoring") or {}
    # The exact matrix of the same pool where one is committed (adaptive scores leave most rows incomplete).
    figures = scoring.get("exact_matrix_readout") or scoring.get("reliability_figures") or {}
    reliability = figures.get("reliability")
    noise = (
        f"{figures.get('line')} ({figures.get('candidates')} candidates scored on every anchor; "
        f"{figures.get('anchors_for_reliability_0_8')} anchors would reach a reliability of 0.8)"
        if reliability is not None
        else f"{scoring.get('reliability') or 'not measured'}"
    )
    pool = results.get("scored_pool", {})
    rho = pool.get("spearman_golden_score_vs_response_chars")
    base = [c for c in results["comparisons"] if c["source"] == "alpaca_eval" and c.get("second") == "base"]
    ahead = [c["first"] for c in base if c["verdict"] == "ahead"]
    lines = [
        f"1. **Noise** (is the ranking more than the draw of anchors?): {noise}.",
        "2. **Seed spread** (how far apart are two random draws?): "
        + f"{_said(results, 'random vs random-1', floor=True)}.",
        "3. **Length** (does the score only pick long answers?): "
        + (f"golden score vs response length, Spearman {rho:+.2f}; " if rho is not None else "")
        + f"{_said(results, 'golden vs length-matched')}; {_said(results, 'golden vs longest')}.",
        "4. **Base** (did fine-tuning move the model at all?): "
        + (
            f"{len(ahead)} of {len(base)} variants ahead of the untouched model ({', '.join(ahead) or 'none'}); "
            f"{_said(results, 'golden vs base')}."
            if base
            else "not measured."
        ),
        f"5. **IFD** (the cheap competitor): {_said(results, 'golden vs ifd')}; "
        f"{_said(results, 'ifd vs random (pooled random+random-1)')}.",
    ]
    return "\n".join(lines)


def _scoring_lines(scoring: dict[str, Any] | None) -> str:
    """How the pool was scored, how far its ranking is signal, and what selection cost against tuning."""
    if not scoring:
        return "_Not recorded (a study before the scoring figures were kept)._"
    passes = scoring.get("passes_fraction")
    lines = [
        f"- Mode: {scoring['mode']} ({scoring['dtype']}); anchor passes "
        + (
            f"{scoring['anchor_passes']:,} of exact scoring's {scoring['anchor_passes_exact']:,} ({passes:.1%}), "
            f"{scoring['settled_early']:,} candidates settled before their last anchor."
            if passes is not None
            else "not recorded."
        ),
        f"- Reliability of the ranking: {scoring.get('reliability') or 'not recorded'}.",
    ]
    if scoring.get("selection_to_tuning"):
        lines.append(f"- Cost: {scoring['selection_to_tuning']}.")
    return "\n".join(lines)


def _yes_no(value: bool | None) -> str:
    return "–" if value is None else ("yes" if value else "no")


def render_study_doc(text: str, results: dict[str, Any]) -> str:
    """Replace every ``<!-- study:NAME -->…<!-- /study:NAME -->`` block of ``text`` with the figure from
    ``results``; a block the text lacks is left out, a text without blocks is returned unchanged."""
    for name, body in render_blocks(results).items():
        start, end = _block(name)
        while start in text:
            head, rest = text.split(start, 1)
            if end not in rest:
                raise ValueError(f"block {start} has no closing {end}")
            _, tail = rest.split(end, 1)
            text = f"{head}{start}\n{body}\n{end}{tail}"
            break
    return text


# ---------------------------------------------------------------------------------------------------------------


__all__ = ["difference_plot", "render_blocks", "render_study_doc"]
