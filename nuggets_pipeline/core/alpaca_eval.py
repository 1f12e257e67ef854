"""AlpacaEval: 805 instructions, model outputs paired with a reference model's, judged; leaderboard metrics.

Preferences follow alpaca_eval's encoding throughout: a float in [1, 2] where 1 means the reference
(``output_1``) wins, 2 the evaluated model (``output_2``) wins, 1.5 (or the legacy 0) a draw, NaN no verdict.
Annotation frames use alpaca_eval's column names, so the shipped GPT-4 annotations of alpaca-7b go through the
same ``summarize`` as our own judgments (the test suite reproduces the leaderboard that way).

Metrics come from alpaca_eval's own code (alpaca-eval==0.6.6, ``alpaca_eval.metrics``): ``get_winrate`` and the
length-controlled GLM. Its leaderboard GLM, ``length_controlled_v1``, regresses each preference on
``tanh(std_delta_len)``, a per-instruction ``instruction_difficulty`` and a model indicator, regularised towards
two "gamed" baselines; the difficulties and the gamed annotations come from a fit over the whole leaderboard that
alpaca_eval downloads from the Hugging Face hub, which this project never reaches. So the length-controlled win
rate here is alpaca_eval's ``length_controlled_minimal`` GLM (``tanh(std_delta_len)`` + model term, no
difficulty, no regularisation), built with alpaca_eval's formula and design matrices and fitted by its
``fit_LogisticRegressionCV`` (L1 liblinear, 5 group folds, probability targets, seed 123). Pass
``instruction_difficulty`` to add the difficulty term (alpaca_eval's ``length_controlled_noreg``). Without it the
model term alone sets the prediction, so the LC win rate is logistic(model coefficient) and its per-instruction
standard error is undefined (reported as NaN, where alpaca_eval would print 0). On the shipped alpaca-7b
annotations this gives 25.77 against the leaderboard's 26.29 (``length_controlled_v1``; see the tests).
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import sklearn

from nuggets_pipeline.core.generation import ProgressCallback, generate, user
from nuggets_pipeline.core.judging import (
    Judge,
    Judgment,
    JudgmentCache,
    PairRequest,
    PointwiseRequest,
    compare_both_orders,
    compare_pair,
    rate_pointwise,
)
from nuggets_pipeline.core.modeling import LoadedModel
from nuggets_pipeline.core.paths import shipped

# AlpacaEval 1 (what the NUGGETS paper reports) compares with text-davinci-003, AlpacaEval 2 with GPT-4 Turbo.
REFERENCES = {"alpaca_eval_1": "text_davinci_003", "alpaca_eval_2": "gpt4_1106_preview"}
DEFAULT_VERSION = "alpaca_eval_1"
PROTOCOLS = ("pairwise", "both_orders", "pointwise")

INSTRUCTION_COLUMNS = ["index", "instruction", "dataset", "reference_output", "reference_generator"]
ANNOTATION_COLUMNS = [
    "index",
    "instruction",
    "dataset",
    "output_1",
    "generator_1",
    "output_2",
    "generator_2",
    "model_first",
    "preference",
    "value",
    "parsed",
    "failed",
    "judge",
    "mode",
    "protocol",
    "prompt_hash",
    "cached",
    "error",
]


def model_outputs_path(generator: str) -> str:
    return f"alpaca_eval/results/{generator}/model_outputs.json"


def load_instructions(version: str = DEFAULT_VERSION, limit: int | None = None) -> pd.DataFrame:
    """The AlpacaEval instructions in their canonical order with the reference model's outputs.

    ``index`` is the position in the 805-row set, so a first-N subset keeps the full set's identifiers.
    """
    if version not in REFERENCES:
        raise ValueError(f"unknown AlpacaEval version {version!r}; choose one of {sorted(REFERENCES)}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of instructions, got {limit}")
    reference = REFERENCES[version]
    rows = json.loads(shipped(model_outputs_path(reference)).read_text(encoding="utf-8"))
    frame = pd.DataFrame(
        {
            "index": range(len(rows)),
            "instruction": [r["instruction"] for r in rows],
            "dataset": [r["dataset"] for r in rows],
            "reference_output": [r["output"] for r in rows],
            "reference_generator": reference,
        }
    )
    return frame.head(limit).reset_index(drop=True) if limit is not None else frame


def generate_outputs(
    loaded: LoadedModel,
    instructions: pd.DataFrame,
    *,
    generator: str | None = None,
    temperature: float = 0.0,
    max_new_tokens: int = 512,
    batch_size: int = 8,
    seed: int = 0,
    progress: ProgressCallback | None = None,
) -> pd.DataFrame:
    """The model's answer to each instruction (a single user turn), next to the reference output."""
    generations = generate(
        loaded,
        [[user(text)] for text in instructions["instruction"]],
        temperature=temperature,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        seed=seed,
        progress=progress,
        description="AlpacaEval",
    )
    frame = instructions[INSTRUCTION_COLUMNS].copy()
    frame["output"] = [g.text for g in generations]
    frame["generator"] = generator or loaded.name
    frame["temperature"] = temperature
    frame["completion_tokens"] = [g.completion_tokens for g in generations]
    frame["finished"] = [g.finished for g in generations]
    return frame


def model_shown_first(instruction: str, seed: int) -> bool:
    """Which side the model's output is shown on, decided per instruction by a hash of (seed, instruction).

    A hash rather than one RNG stream: the first-N subset and the full set put every shared instruction on
    the same side, and reordering the frame changes nothing.
    """
    digest = hashlib.sha256(f"{seed}\x1f{instruction}".encode()).digest()
    return digest[0] % 2 == 0


def preference_from_value(value: float | None, model_first: bool) -> float:
    """A judge's P(first shown output is better) as an alpaca_eval preference (2: model wins); NaN if None."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return math.nan
    p_model = value if model_first else 1.0 - value
    return 1.0 + p_model


def judge_outputs(
    judge: Judge,
    outputs: pd.DataFrame,
    *,
    protocol: str = "pairwise",
    seed: int = 0,
    cache: JudgmentCache | None = None,
) -> pd.DataFrame:
    """Judge every model output against the reference output; one annotation row per instruction.

    ``pairwise`` (alpaca_eval's protocol): one comparison per instruction, the model's side randomised with
    ``seed``. ``both_orders``: judged as shown and swapped, averaged (cancels position bias, twice the cost).
    ``pointwise``: each output rated 1-10 on its own; the higher rating wins, equal ratings draw (for judges
    too weak to compare two outputs). As in alpaca_eval, an output identical to the reference is a draw
    without asking the judge.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown AlpacaEval judging protocol {protocol!r}; choose one of {PROTOCOLS}")
    model_first = [model_shown_first(text, seed) for text in outputs["instruction"]]
    rows = outputs.to_dict("records")
    asked = [i for i, r in enumerate(rows) if r["output"] != r["reference_output"]]
    answered = _judge_rows(judge, [rows[i] for i in asked], [model_first[i] for i in asked], protocol, cache)
    # Per row: the verdict as P(first shown output better), and the judgments it came from (none if identical).
    values: list[float | None] = [0.5] * len(rows)
    parts: list[tuple[Judgment, ...]] = [()] * len(rows)
    for i, (value, judgments) in zip(asked, answered, strict=True):
        values[i], parts[i] = value, judgments

    frame = pd.DataFrame(
        {
            "index": outputs["index"].to_numpy(),
            "instruction": outputs["instruction"].to_numpy(),
            "dataset": outputs["dataset"].to_numpy(),
            "output_1": outputs["reference_output"].to_numpy(),
            "generator_1": outputs["reference_generator"].to_numpy(),
            "output_2": outputs["output"].to_numpy(),
            "generator_2": outputs["generator"].to_numpy(),
            "model_first": model_first,
            "preference": [preference_from_value(v, f) for v, f in zip(values, model_first, strict=True)],
            "value": [math.nan if v is None else v for v in values],
            "parsed": [v is not None for v in values],
            "failed": [any(j.failed for j in js) for js in parts],
            "judge": judge.name,
            "mode": judge.mode,
            "protocol": protocol,
            # The first judgment's hash (pointwise: the model's rating; both orders: the order as shown).
            "prompt_hash": [js[0].prompt_hash if js else None for js in parts],
            "cached": [bool(js) and all(j.cached for j in js) for js in parts],
            "error": ["; ".join(j.error for j in js if j.error) or None for js in parts],
        }
    )
    return frame[ANNOTATION_COLUMNS]


def _judge_rows(
    judge: Judge, rows: list[dict], model_first: list[bool], protocol: str, cache: JudgmentCache | None
) -> list[tuple[float | None, tuple[Judgment, ...]]]:
    """(P(first shown output better), the judgments behind it) for each row, in order."""
    if not rows:
        return []
    if protocol == "pointwise":
        requests = [PointwiseRequest(r["instruction"], r["output"]) for r in rows]
        requests += [PointwiseRequest(r["instruction"], r["reference_output"]) for r in rows]
        rated = rate_pointwise(judge, requests, cache=cache)
        pairs = list(zip(rated[: len(rows)], rated[len(rows) :], strict=True))
        return [
            (_pointwise_first_better(m, r, first), (m, r)) for (m, r), first in zip(pairs, model_first, strict=True)
        ]
    requests = [
        PairRequest(
            r["instruction"], *((r["output"], r["reference_output"]) if first else (r["reference_output"], r["output"]))
        )
        for r, first in zip(rows, model_first, strict=True)
    ]
    if protocol == "both_orders":
        return [(b.value, (b.forward, b.backward)) for b in compare_both_orders(judge, requests, cache=cache)]
    return [(j.value, (j,)) for j in compare_pair(judge, requests, cache=cache)]


def _pointwise_first_better(model: Judgment, reference: Judgment, model_first: bool) -> float | None:
    if model.value is None or reference.value is None:
        return None
    p_model = 0.5 if model.value == reference.value else float(model.value > reference.value)
    return p_model if model_first else 1.0 - p_model


# --- Metrics -----------------------------------------------------------------------------------------------
# Computed with alpaca_eval's own code (alpaca-eval==0.6.6, ``alpaca_eval.metrics``): ``get_winrate`` for the
# win rates and, for the length-controlled one, its GLM formulas (``GLM_INFO``), design matrices
# (``make_dmatrix_for_model``) and fit (``fit_LogisticRegressionCV``). Its ``get_length_controlled_winrate``
# wrapper is not called: it downloads ``df_gamed.csv`` from the Hugging Face hub for every GLM, even the
# minimal one that does not use it, and this project never reaches the hub.


def head_to_head(preferences: Sequence[float] | pd.Series) -> dict[str, float]:
    """alpaca_eval's ``get_winrate``: win rate (draws count half, soft preferences count fractionally),
    its standard error (sem of the per-instruction win values), win/loss/draw counts, discrete win rate.

    Preferences outside [1, 2] (NaN: no verdict) are dropped from everything but are not draws.
    """
    from alpaca_eval.metrics import get_winrate

    series = pd.Series(preferences, dtype=float)
    if series.between(1, 2).sum() == 0 and not (series == 0).any():
        # alpaca_eval divides by zero on an empty set; nothing was decided, so nothing is reported.
        return {
            "win_rate": math.nan,
            "standard_error": math.nan,
            "n_wins": 0,
            "n_wins_base": 0,
            "n_draws": 0,
            "n_total": 0,
            "discrete_win_rate": math.nan,
        }
    metrics = get_winrate(pd.DataFrame({"preference": series}))
    counts = ("n_wins", "n_wins_base", "n_draws", "n_total")
    return {k: int(v) if k in counts else float(v) for k, v in metrics.items()}


@dataclass(frozen=True)
class LengthControlled:
    win_rate: float
    standard_error: float
    # Fitted GLM weights: "length" (on tanh(std_delta_len)), "model", and "difficulty" when used.
    coefficients: dict[str, float]
    glm: str


# alpaca_eval's term names (patsy) and ours.
_GLM_TERMS = {
    "np.tanh(std_delta_len)": "length",
    "instruction_difficulty": "difficulty",
    "not_gamed_baseline.astype(float)": "model",
}


def length_controlled_win_rate(
    preferences: Sequence[float] | pd.Series,
    model_lengths: Sequence[int] | pd.Series,
    reference_lengths: Sequence[int] | pd.Series,
    instruction_difficulty: Sequence[float] | pd.Series | None = None,
    n_splits: int = 5,
) -> LengthControlled:
    """The win rate the model would have if its outputs were as long as the reference's (see module docs).

    alpaca_eval's ``length_controlled_minimal`` GLM, or ``length_controlled_noreg`` when difficulties are
    given, fitted by alpaca_eval's ``fit_LogisticRegressionCV``. Lengths are in characters, as alpaca_eval
    measures them. Rows without a preference are left out of the fit but, as in alpaca_eval, still predicted
    (which matters only when difficulties are given).
    """
    from alpaca_eval.metrics.glm_winrate import GLM_INFO, fit_LogisticRegressionCV, make_dmatrix_for_model

    wins = pd.Series(preferences, dtype=float).replace({0.0: 1.5}).to_numpy() - 1
    reference = np.asarray(reference_lengths, dtype=float)
    model = np.asarray(model_lengths, dtype=float)
    if not len(wins) == len(reference) == len(model):
        raise ValueError("one preference and one pair of lengths per instruction is required")
    glm = "length_controlled_noreg" if instruction_difficulty is not None else "length_controlled_minimal"
    delta = reference - model
    spread = delta.std(ddof=1) if len(delta) > 1 else 0.0
    frame = pd.DataFrame(
        {
            "preference": wins,
            # All lengths equal: alpaca_eval would divide 0 by 0; no length effect is the honest design.
            "std_delta_len": delta / spread if spread > 0 else np.zeros_like(delta),
            "instruction_difficulty": (
                np.zeros_like(delta)
                if instruction_difficulty is None
                else np.asarray(instruction_difficulty, dtype=float)
            ),
            "not_gamed_baseline": True,
        }
    )
    known = ~np.isnan(wins)
    folds = min(n_splits, int(known.sum()))
    if folds < 2 or np.all(wins[known] == wins[known][0]):
        # Nothing to regress on: fewer than two verdicts, or all identical (the GLM would diverge).
        return LengthControlled(math.nan, math.nan, {}, glm)
    counterfactual = frame[["instruction_difficulty", "not_gamed_baseline"]].assign(std_delta_len=0.0)
    train, test = make_dmatrix_for_model(frame, counterfactual, formula=GLM_INFO[glm]["formula"])
    # fit_LogisticRegressionCV switches sklearn's metadata routing on globally; the context switches it back.
    with sklearn.config_context(), warnings.catch_warnings():
        # alpaca_eval 0.6.6 passes sklearn arguments newer sklearn deprecates (penalty=, legacy attributes).
        warnings.simplefilter("ignore", FutureWarning)
        fitted = fit_LogisticRegressionCV(train[known], "preference", is_ytrue_proba=True, n_splits=folds)
    predicted = fitted.predict_proba(test)[:, 1]
    # Without difficulties every prediction is the same number: its spread is no standard error (NaN, where
    # alpaca_eval would print 0).
    spread_of_predictions = float(pd.Series(predicted).sem() * 100) if instruction_difficulty is not None else math.nan
    coefficients = {_GLM_TERMS[str(name)]: float(c) for name, c in zip(test.columns, fitted.coef_[0], strict=True)}
    return LengthControlled(float(predicted.mean() * 100), spread_of_predictions, coefficients, glm)


@dataclass(frozen=True)
class AlpacaEvalSummary:
    """One model's AlpacaEval figures; percentages on 0-100 like the leaderboard."""

    generator: str
    reference: str
    judge: str
    protocol: str
    win_rate: float
    standard_error: float
    discrete_win_rate: float
    length_controlled_win_rate: float
    lc_standard_error: float
    lc_glm: str
    n_wins: int
    n_wins_base: int
    n_draws: int
    n_total: int
    n_instructions: int
    # Judge answered but no verdict could be read / the request failed: both excluded, never imputed.
    n_unparseable: int
    n_failed: int
    avg_length: float
    reference_avg_length: float
    per_dataset: dict[str, float] = field(default_factory=dict)
    lc_coefficients: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def summarize(
    annotations: pd.DataFrame,
    *,
    judge: str | None = None,
    instruction_difficulty: pd.Series | None = None,
) -> AlpacaEvalSummary:
    """Leaderboard metrics from an annotation frame (ours from ``judge_outputs``, or alpaca_eval's).

    ``instruction_difficulty``, if given, is indexed by the instruction ``index`` column.
    """
    if annotations.empty:
        raise ValueError("no AlpacaEval annotations to summarise")
    metrics = head_to_head(annotations["preference"])
    difficulty = None
    if instruction_difficulty is not None:
        difficulty = instruction_difficulty.reindex(annotations["index"]).to_numpy()
    lc = length_controlled_win_rate(
        annotations["preference"],
        annotations["output_2"].str.len(),
        annotations["output_1"].str.len(),
        difficulty,
    )
    unparsed = annotations["preference"].isna()
    failed = annotations["failed"] if "failed" in annotations else pd.Series(False, index=annotations.index)
    per_dataset = {
        str(name): head_to_head(group["preference"])["win_rate"]
        for name, group in annotations.groupby("dataset", sort=True)
    }
    return AlpacaEvalSummary(
        generator=_single(annotations["generator_2"]),
        reference=_single(annotations["generator_1"]),
        judge=judge or _single(annotations["judge" if "judge" in annotations else "annotator"]),
        protocol=_single(annotations["protocol"]) if "protocol" in annotations else "pairwise",
        win_rate=metrics["win_rate"],
        standard_error=metrics["standard_error"],
        discrete_win_rate=metrics["discrete_win_rate"],
        length_controlled_win_rate=lc.win_rate,
        lc_standard_error=lc.standard_error,
        lc_glm=lc.glm,
        n_wins=metrics["n_wins"],
        n_wins_base=metrics["n_wins_base"],
        n_draws=metrics["n_draws"],
        n_total=metrics["n_total"],
        n_instructions=len(annotations),
        n_unparseable=int((unparsed & ~failed).sum()),
        n_failed=int(failed.sum()),
        avg_length=float(annotations["output_2"].str.len().mean()),
        reference_avg_length=float(annotations["output_1"].str.len().mean()),
        per_dataset=per_dataset,
        lc_coefficients=lc.coefficients,
    )


def evaluate(
    loaded: LoadedModel,
    judge: Judge,
    *,
    version: str = DEFAULT_VERSION,
    limit: int | None = None,
    generator: str | None = None,
    protocol: str = "pairwise",
    temperature: float = 0.0,
    max_new_tokens: int = 512,
    batch_size: int = 8,
    seed: int = 0,
    cache: JudgmentCache | None = None,
    progress: ProgressCallback | None = None,
) -> tuple[pd.DataFrame, AlpacaEvalSummary]:
    """The whole benchmark for one model: generate on the first ``limit`` instructions, judge against the
    version's reference, summarise. Returns the annotation rows (``ANNOTATION_COLUMNS``) and the summary."""
    instructions = load_instructions(version, limit)
    outputs = generate_outputs(
        loaded,
        instructions,
        generator=generator,
        temperature=temperature,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        seed=seed,
        progress=progress,
    )
    annotations = judge_outputs(judge, outputs, protocol=protocol, seed=seed, cache=cache)
    return annotations, summarize(annotations)


def _single(column: pd.Series) -> str:
    values = column.dropna().unique()
    if len(values) != 1:
        raise ValueError(f"expected one {column.name} in the annotations, found {list(values)[:5]}")
    return str(values[0])


__all__ = [
    "ANNOTATION_COLUMNS",
    "DEFAULT_VERSION",
    "PROTOCOLS",
    "REFERENCES",
    "AlpacaEvalSummary",
    "LengthControlled",
    "evaluate",
    "generate_outputs",
    "head_to_head",
    "judge_outputs",
    "length_controlled_win_rate",
    "load_instructions",
    "model_shown_first",
    "preference_from_value",
    "summarize",
]
