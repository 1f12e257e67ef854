"""Stage 5: MT-Bench, AlpacaEval and a judge-free likelihood signal for every variant, and the report."""

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

import dagster as dg
import pandas as pd
import torch
from pydantic import Field, field_validator

from nuggets_pipeline.core import alpaca_eval, exports, mt_bench
from nuggets_pipeline.core.judging import JudgmentCache, calibrate_judge
from nuggets_pipeline.core.modeling import LoadedModel, load_model
from nuggets_pipeline.core.reference_likelihood import score_references, summarize_scores
from nuggets_pipeline.core.report import JudgeInfo, VariantResults, build_report
from nuggets_pipeline.core.settings import hide_userinfo
from nuggets_pipeline.core.storage import Warehouse, write_text_atomic
from nuggets_pipeline.defs import metadata as md
from nuggets_pipeline.defs.execution import model_step
from nuggets_pipeline.defs.partitions import UNTRAINED, training_variants
from nuggets_pipeline.defs.resources import JudgeResource, ModelResource, WarehouseResource

ALL_PARTITIONS = {"allow_missing_partitions": True}
FINETUNED_MODEL = dg.AssetKey("finetuned_model")  # by key: an asset module never imports another


def variant_model(warehouse: Warehouse, variant: str, device: str, base_model: str) -> LoadedModel:
    """The fine-tuned variant on ``device``: the training model's device (NUGGETS_DEVICE), claimed for this step
    where the node has several GPUs (ModelResource.torch_device). Variant `base` is ``base_model`` untouched."""
    # On a GPU the variants generate in bfloat16; on CPUs in float32, so answers are the same on every CPU.
    dtype = "auto" if torch.device(device).type == "cuda" else "float32"
    if variant == UNTRAINED:
        return load_model(base_model, dtype=dtype, device=device)
    path = warehouse.finetuned_model_dir(variant)
    if not (path / "config.json").exists():
        raise dg.Failure(f"no fine-tuned checkpoint for variant {variant!r} at {path}: materialise finetuned_model")
    return load_model(str(path), dtype=dtype, device=device)


def judgment_cache(warehouse: WarehouseResource) -> JudgmentCache:
    return JudgmentCache(warehouse.warehouse().judgment_cache_path)


def exports_dir(warehouse: WarehouseResource) -> Path:
    return warehouse.warehouse().exports_dir


def variant_evaluation(
    name: str, code_version: str, description: str, judged: bool = True
) -> Callable[[Callable[..., Any]], dg.AssetsDefinition]:
    """The decorator of a per-variant evaluation: one partition per training variant, after its fine-tune, on
    the model pool; a judged benchmark also carries the judgments check."""
    return model_step(
        name=name,
        group_name="evaluation",
        partitions_def=training_variants,
        deps=[FINETUNED_MODEL],
        code_version=code_version,
        description=description,
        check_specs=[judgments_check(name)] if judged else None,
    )


@dataclass(frozen=True, kw_only=True)
class EvaluationProfile:
    """Subset sizes and decoding lengths; ``None`` means the whole set. Keywords only: seven numbers in a row
    cannot be told apart."""

    mt_bench_questions: int | None
    mt_bench_max_new_tokens: int
    alpaca_eval_instructions: int | None
    alpaca_eval_max_new_tokens: int
    likelihood_alpaca_eval_items: int | None
    likelihood_mt_bench_items: int | None
    calibration_pairs: int


# `paper`: the full benchmarks with their authors' generation lengths (FastChat's 1,024 new tokens for MT-Bench,
# AlpacaEval's 2,048). `cpu-demo`: slices small enough for 2 CPU cores, the asset defaults.
EvaluationProfileName = Literal["cpu-demo", "paper"]
EVALUATION_PROFILES: dict[EvaluationProfileName, EvaluationProfile] = {
    "cpu-demo": EvaluationProfile(
        mt_bench_questions=4,
        mt_bench_max_new_tokens=128,
        alpaca_eval_instructions=16,
        alpaca_eval_max_new_tokens=128,
        likelihood_alpaca_eval_items=32,
        likelihood_mt_bench_items=None,
        calibration_pairs=16,
    ),
    "paper": EvaluationProfile(
        mt_bench_questions=None,
        mt_bench_max_new_tokens=1024,
        alpaca_eval_instructions=None,
        alpaca_eval_max_new_tokens=2048,
        likelihood_alpaca_eval_items=None,
        likelihood_mt_bench_items=None,
        calibration_pairs=100,
    ),
}


def profile_field() -> Any:
    return Field(default="cpu-demo", description="cpu-demo (small slices) or paper (full sets); set fields override")


class CalibrationConfig(dg.Config):
    profile: EvaluationProfileName = profile_field()
    n: int | None = Field(default=None, ge=2, description="GPT-4-decided pairs to test the judge on, balanced")
    route: Literal["pairwise", "pointwise"] = Field(default="pairwise")
    seed: int = 0

    def pairs(self) -> int:
        return self.n or EVALUATION_PROFILES[self.profile].calibration_pairs


JUDGMENTS_CHECK = "judgments_answered"
LAST_ERROR_LIMIT = 600  # characters of the judge's last error shown (each judgment's error is cut to ~300 already)


def judgments_check(asset: str) -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec(
        JUDGMENTS_CHECK,
        asset=asset,
        description="Warns when some judge requests failed (their rows carry no verdict and are left out of the "
        "score); the asset itself fails when all failed, or more than the judge's max_failed_fraction.",
    )


def judgment_failures(
    asset: str, rows: pd.DataFrame, judged: pd.Series, max_failed_fraction: float
) -> dg.AssetCheckResult:
    """The judgments check of ``rows`` (``judged``: the rows a judge was asked about): ``failed_judgments`` over
    their ``failed`` and ``error`` columns."""
    failed = rows["failed"].astype(bool) & judged
    errors = rows.loc[failed, "error"].dropna()
    last = str(errors.iloc[-1]) if len(errors) else None
    return failed_judgments(asset, int(judged.sum()), int(failed.sum()), last, max_failed_fraction)


def failed_judgments(
    asset: str, n_judged: int, n_failed: int, last_error: str | None, max_failed_fraction: float
) -> dg.AssetCheckResult:
    """The judgments check of an asset whose judge was asked ``n_judged`` times; raises ``dg.Failure`` with the
    count and the judge's last error when all of them failed, or more than ``max_failed_fraction``.

    A score over the few judgments that got through (or over none: NaN) would otherwise be stored, exported and
    reported as if the benchmark had run; the failures are not cached, so materialising again retries only them.
    """
    metadata: dict[str, Any] = {
        "failed_judgments": n_failed,
        "judgments": n_judged,
        "max_failed_fraction": max_failed_fraction,
    }
    if n_failed:
        # Each error was redacted by the judge backend when it was made; URL credentials are hidden once more here.
        last = hide_userinfo(last_error)[:LAST_ERROR_LIMIT] if last_error else "no error text"
        metadata["last_error"] = last
        if n_failed == n_judged or n_failed > max_failed_fraction * n_judged:
            raise dg.Failure(
                description=f"{asset}: {n_failed} of {n_judged} judgments failed (allowed: at most "
                f"{max_failed_fraction:.0%}, never all); the judge's last error: {last}. Fix the judge (server, "
                f"key, timeout_s, max_retries) and materialise again: answered judgments are cached, failed ones "
                f"are asked again",
                metadata=metadata,
            )
    return dg.AssetCheckResult(
        check_name=JUDGMENTS_CHECK,
        asset_key=asset,
        passed=n_failed == 0,
        severity=dg.AssetCheckSeverity.WARN,
        metadata=metadata,
    )


@model_step(
    group_name="evaluation",
    code_version="calibration-v1",
    check_specs=[judgments_check("judge_calibration")],
)
def judge_calibration(
    context: dg.AssetExecutionContext, config: CalibrationConfig, judge: JudgeResource, warehouse: WarehouseResource
) -> Iterator[dg.Output[pd.DataFrame] | dg.AssetCheckResult]:
    """How far the judge agrees with GPT-4 on shipped AlpacaEval annotations: its trust figure. Fails, like the
    benchmarks, when the judge's requests failed (all, or more than its ``max_failed_fraction``): a judge that
    could not be reached is not a judge found untrustworthy."""
    result = calibrate_judge(
        judge.build(), n=config.pairs(), seed=config.seed, route=config.route, cache=judgment_cache(warehouse)
    )
    check = failed_judgments(
        "judge_calibration", result.requests, result.failed, result.last_error, judge.max_failed_fraction
    )
    context.log.info(result.summary)
    row = pd.DataFrame([{k: v for k, v in result.__dict__.items()}])
    yield dg.Output(
        row,
        metadata={
            "judge": result.judge,
            "agreement_with_gpt4": result.agreement if result.agreement is not None else float("nan"),
            "ci_95": f"{result.ci_low:.3f} – {result.ci_high:.3f}",
            "near_chance": result.near_chance,
            "summary": dg.MetadataValue.md(result.summary),
            "pairs": result.n,
            "wall_s": result.elapsed_s,
        },
    )
    yield check


# A benchmark's core `evaluate` (mt_bench, alpaca_eval): the variant's model and the judge on its device, then as
# keywords the judgment cache, a progress callback and the benchmark's own options; the rows and their summary.
BenchmarkEvaluate = Callable[..., tuple[pd.DataFrame, Any]]


class JudgedBenchmarkConfig(dg.Config):
    """The fields MT-Bench and AlpacaEval both take: the size profile, the generation length and batch, the seed."""

    profile: EvaluationProfileName = profile_field()
    max_new_tokens: int | None = Field(default=None, gt=0)
    batch_size: int = Field(default=8, gt=0)
    seed: int = 0

    def settings(self) -> tuple[int | None, int]:
        """(items, None for all; max new tokens): set fields win over the profile's. Each benchmark's own."""
        raise NotImplementedError


ConfigT = TypeVar("ConfigT", bound=JudgedBenchmarkConfig)


@dataclass(frozen=True)
class JudgedBenchmark(Generic[ConfigT]):
    """The shape MT-Bench and AlpacaEval share, for the partition's variant: ``evaluate`` runs the benchmark,
    ``results`` checks its judgments, exports it and yields the asset's output and check."""

    context: dg.AssetExecutionContext
    config: ConfigT
    judge: JudgeResource
    training_model: ModelResource
    warehouse: WarehouseResource

    def evaluate(
        self, what: str, decoding: dict[str, Any], evaluate: BenchmarkEvaluate, **options: Any
    ) -> tuple[pd.DataFrame, Any]:
        """Load the variant on the training model's device, run ``evaluate`` with the config's sizes, batch and
        seed, ``options`` and the judge there (judgments cached in the home), stamp every row with the variant,
        model and decoding (the generation length, then ``decoding``)."""
        limit, max_new_tokens = self.config.settings()
        decoding = {"max_new_tokens": max_new_tokens, **decoding}
        variant = self.context.partition_key
        device = self.training_model.torch_device()
        loaded = variant_model(self.warehouse.warehouse(), variant, device, self.training_model.model)
        rows, summary = evaluate(
            loaded,
            self.judge.build(device),
            cache=judgment_cache(self.warehouse),
            progress=md.progress_logger(self.context.log.info, what + ": {done}/{total}", parts=5),
            limit=limit,
            max_new_tokens=max_new_tokens,
            batch_size=self.config.batch_size,
            seed=self.config.seed,
            **options,
        )
        rows = rows.assign(variant=variant, model_fingerprint=loaded.fingerprint, decoding=json.dumps(decoding))
        return rows, summary

    def results(
        self,
        rows: pd.DataFrame,
        judged: pd.Series,
        export: Callable[[Path], dict[str, Path]],
        summary: mt_bench.MTBenchSummary | alpaca_eval.AlpacaEvalSummary,
        **figures: Any,
    ) -> Iterator[dg.Output[pd.DataFrame] | dg.AssetCheckResult]:
        """The judgments check of ``rows`` (``judged``: the rows a judge was asked about) first: a benchmark whose
        judge failed raises before ``export`` writes anything a reader could take for a result. Then the rows, with
        the exported files, the device, the judge's figures of ``summary`` and ``figures`` as metadata, and the
        check."""
        asset = self.context.asset_key.to_user_string()
        check = judgment_failures(asset, rows, judged, self.judge.max_failed_fraction)
        written = export(exports_dir(self.warehouse))
        yield dg.Output(
            rows,
            metadata={
                **md.paths_metadata(written),
                "device": self.training_model.device_used(),
                **judgment_figures(summary),
                **figures,
            },
        )
        yield check


JudgedResults = Iterator[dg.Output[pd.DataFrame] | dg.AssetCheckResult]


def judged_benchmark(
    config_type: type[ConfigT], code_version: str
) -> Callable[[Callable[[JudgedBenchmark[ConfigT]], JudgedResults]], dg.AssetsDefinition]:
    """The asset of a judged benchmark (``variant_evaluation``), named and described, as ``dg.asset`` does, by the
    decorated function and its docstring. The function gets the partition's ``JudgedBenchmark``, built from the
    context, the config and the resources every judged benchmark takes, so each benchmark states only what it
    evaluates and reports. ``config_type`` is the asset's config class (Dagster reads the config schema off the
    parameter's annotation)."""

    def decorate(run: Callable[[JudgedBenchmark[ConfigT]], JudgedResults]) -> dg.AssetsDefinition:
        if not run.__doc__:
            raise TypeError(f"{run.__name__}: a judged benchmark's docstring is its asset's description")

        @variant_evaluation(run.__name__, code_version=code_version, description=run.__doc__)
        def judged(
            context: dg.AssetExecutionContext,
            config: config_type,  # type: ignore[valid-type]
            judge: JudgeResource,
            training_model: ModelResource,
            warehouse: WarehouseResource,
        ) -> JudgedResults:
            yield from run(JudgedBenchmark(context, config, judge, training_model, warehouse))

        return judged

    return decorate


def judgment_figures(summary: mt_bench.MTBenchSummary | alpaca_eval.AlpacaEvalSummary) -> dict[str, Any]:
    """What every judged benchmark reports of its judge: its name, the score's standard error, and the judgments
    left out of the score (unreadable, or failed)."""
    return {
        "judge": summary.judge,
        "standard_error": summary.standard_error,
        "unparseable_judgments": summary.n_unparseable,
        "failed_judgments": summary.n_failed,
    }


class MTBenchConfig(JudgedBenchmarkConfig):
    questions: int | None = Field(default=None, gt=0, description="first N of the 80 questions (80: all)")

    def settings(self) -> tuple[int | None, int]:
        """(questions, None for all; max new tokens): set fields win over the profile's."""
        profile = EVALUATION_PROFILES[self.profile]
        return self.questions or profile.mt_bench_questions, self.max_new_tokens or profile.mt_bench_max_new_tokens


@judged_benchmark(MTBenchConfig, code_version="mt-bench-v1")
def mt_bench_results(benchmark: JudgedBenchmark[MTBenchConfig]) -> JudgedResults:
    """MT-Bench: two-turn answers graded 1-10 by the judge; one row per (question, turn)."""
    rows, summary = benchmark.evaluate("MT-Bench answers", {"temperatures": "fastchat"}, mt_bench.evaluate)
    categories = pd.DataFrame(sorted(summary.per_category.items()), columns=["category", "mean_rating"])
    yield from benchmark.results(
        rows,
        pd.Series(True, index=rows.index),
        # FastChat's files: show_result reads the grades, gen_judgment can re-grade the answers with GPT-4.
        lambda folder: exports.export_mt_bench(rows, benchmark.context.partition_key, folder),
        summary,
        score=summary.score,
        turn_1=summary.turn_1,
        turn_2=summary.turn_2,
        questions=summary.n_questions,
        per_category=md.table(categories),
    )


class AlpacaEvalConfig(JudgedBenchmarkConfig):
    instructions: int | None = Field(default=None, gt=0, description="first N of the 805 instructions (805: all)")
    version: Literal["alpaca_eval_1", "alpaca_eval_2"] = Field(
        default="alpaca_eval_1", description="reference: text-davinci-003 (1, the paper's) or gpt-4-1106 (2)"
    )
    protocol: Literal["pairwise", "pointwise"] = Field(
        default="pairwise", description="pointwise rates each output 1-10 (the route for weak judges)"
    )

    def settings(self) -> tuple[int | None, int]:
        """(instructions, None for all; max new tokens): set fields win over the profile's."""
        profile = EVALUATION_PROFILES[self.profile]
        return (
            self.instructions or profile.alpaca_eval_instructions,
            self.max_new_tokens or profile.alpaca_eval_max_new_tokens,
        )


@judged_benchmark(AlpacaEvalConfig, code_version="alpaca-eval-v1")
def alpaca_eval_results(benchmark: JudgedBenchmark[AlpacaEvalConfig]) -> JudgedResults:
    """AlpacaEval: the variant's outputs judged against the reference model's; one row each."""
    config = benchmark.config
    annotations, summary = benchmark.evaluate(
        "AlpacaEval outputs",
        {"temperature": 0},
        alpaca_eval.evaluate,
        version=config.version,
        generator=exports.model_id(benchmark.context.partition_key),
        protocol=config.protocol,
    )
    datasets = pd.DataFrame(sorted(summary.per_dataset.items()), columns=["dataset", "win_rate"])
    yield from benchmark.results(
        annotations,
        # An output identical to the reference is a tie without asking the judge (no prompt hash): not counted.
        annotations["prompt_hash"].notna(),
        lambda folder: exports.export_alpaca_eval(annotations, folder),
        summary,
        lc_glm=summary.lc_glm,
        reference=summary.reference,
        win_rate=summary.win_rate,
        length_controlled_win_rate=summary.length_controlled_win_rate,
        avg_output_length=summary.avg_length,
        instructions=summary.n_instructions,
        per_dataset=md.table(datasets),
    )


class LikelihoodConfig(dg.Config):
    profile: EvaluationProfileName = profile_field()
    alpaca_eval_items: int | None = Field(default=None, gt=0, description="gpt-4-1106 reference answers (805: all)")
    mt_bench_items: int | None = Field(default=None, gt=0, description="GPT-4 MT-Bench references (30: all)")
    alpaca_eval_sample_seed: int | None = Field(
        default=None,
        description="with alpaca_eval_items: a seeded random sample of that many from all five source datasets "
        "(None: the first N, which are one or two of them)",
    )

    def items(self) -> dict[str, int | None]:
        """Answers scored per source (None: all): set fields win over the profile's."""
        profile = EVALUATION_PROFILES[self.profile]
        return {
            "alpaca_eval": self.alpaca_eval_items or profile.likelihood_alpaca_eval_items,
            "mt_bench": self.mt_bench_items or profile.likelihood_mt_bench_items,
        }


@variant_evaluation(
    "reference_likelihood",
    code_version="likelihood-v1",
    description="Judge-free: mean per-token log-likelihood of strong reference answers never trained on.",
    judged=False,
)
def reference_likelihood(
    context: dg.AssetExecutionContext,
    config: LikelihoodConfig,
    training_model: ModelResource,
    warehouse: WarehouseResource,
) -> dg.Output[pd.DataFrame]:
    variant = context.partition_key
    loaded = variant_model(warehouse.warehouse(), variant, training_model.torch_device(), training_model.model)
    frames, lines = [], {}
    for source, limit in config.items().items():
        started = time.perf_counter()
        seed = config.alpaca_eval_sample_seed if source == "alpaca_eval" else None
        scores, summary = score_references(loaded, source, limit=limit, sample_seed=seed)
        context.log.info(
            f"reference log-likelihood, {source}: {summary.n_items} answers, {summary.n_tokens} answer tokens, "
            f"mean {summary.mean_logprob:.4f} nats/token in {time.perf_counter() - started:.1f} s"
        )
        frames.append(scores.assign(source=source))
        lines[f"{source}_mean_logprob"] = summary.mean_logprob
        lines[f"{source}_items"] = summary.n_items
    rows = pd.concat(frames, ignore_index=True).assign(variant=variant, model_fingerprint=loaded.fingerprint)
    return dg.Output(rows, metadata={**lines, "device": training_model.device_used()})


def by_variant(frames: dict[str, pd.DataFrame] | pd.DataFrame) -> dict[str, pd.DataFrame]:
    if isinstance(frames, pd.DataFrame):  # a single materialised partition loads as a frame
        return {str(frames["variant"].iloc[0]): frames} if len(frames) else {}
    return dict(frames)


class ReportConfig(dg.Config):
    mt_bench_answer_files: list[str] = Field(
        default=[],
        description="FastChat model_answer/<model>.jsonl files of other models (e.g. FastChat's published "
        "answers): graded by the same judge on the questions our variants answered and shown beside them",
    )
    variants: list[str] | None = Field(
        default=None, description="training variants to report and compare (None: every variant evaluated)"
    )
    bootstrap_resamples: int = Field(default=10_000, gt=0, description="resamples of the paired comparisons")
    bootstrap_seed: int = Field(default=0, description="seed of the paired comparisons' bootstrap")

    @field_validator("variants")
    @classmethod
    def _known_variants(cls, value: list[str] | None) -> list[str] | None:
        unknown = sorted(set(value or []) - set(training_variants.get_partition_keys()))
        if unknown:
            known = training_variants.get_partition_keys()
            raise ValueError(f"no such training variant {unknown}; the variants: {known}")
        return value


def other_models(
    paths: list[str], questions_asked: set[int], judge: JudgeResource, warehouse: WarehouseResource
) -> tuple[list[VariantResults], list[str]]:
    """Grade other models' FastChat answers with our judge, so their rows are comparable with ours."""
    if not paths:
        return [], []
    if not questions_asked:
        raise dg.Failure("mt_bench_answer_files are graded on the questions the variants answered: none has yet")
    built = judge.build()
    questions = [q for q in mt_bench.load_questions() if q.question_id in questions_asked]
    results, names = [], []
    for path in paths:
        name, answers = exports.read_fastchat_answers(path)
        answered = {a.question_id for a in answers}
        if missing := sorted(questions_asked - answered):
            raise dg.Failure(f"{path}: no answer to MT-Bench question(s) {missing} that the variants answered")
        chosen = [a for a in answers if a.question_id in questions_asked]
        rows = mt_bench.grade_answers(built, questions, chosen, cache=judgment_cache(warehouse))
        bench = exports_dir(warehouse) / exports.FASTCHAT_BENCH
        exports.write_jsonl_atomic(
            bench / "model_answer" / f"{exports.safe_name(name)}.jsonl",
            [
                json.loads(line)
                for line in Path(path).expanduser().read_text(encoding="utf-8").splitlines()
                if line.strip()
            ],
        )
        exports.write_jsonl_atomic(
            exports.judgment_part_path(exports_dir(warehouse), built.name, name), exports.fastchat_judgments(rows, name)
        )
        results.append(VariantResults(variant=name, mt_bench=mt_bench.summarize(rows)))
        names.append(name)
    return results, names


@dg.asset(
    group_name="evaluation",
    ins={
        "mt_bench_results": dg.AssetIn(metadata=ALL_PARTITIONS),
        "alpaca_eval_results": dg.AssetIn(metadata=ALL_PARTITIONS),
        "reference_likelihood": dg.AssetIn(metadata=ALL_PARTITIONS),
    },
    code_version="report-v2",
)
def evaluation_report(
    context: dg.AssetExecutionContext,
    config: ReportConfig,
    mt_bench_results: dict[str, pd.DataFrame],
    alpaca_eval_results: dict[str, pd.DataFrame],
    reference_likelihood: dict[str, pd.DataFrame],
    judge_calibration: pd.DataFrame,
    warehouse: WarehouseResource,
    judge: JudgeResource,
) -> dg.Output[pd.DataFrame]:
    """Every variant side by side, with paired bootstrap comparisons: did the selection help?"""
    mt, ae, lk = by_variant(mt_bench_results), by_variant(alpaca_eval_results), by_variant(reference_likelihood)
    wanted = set(config.variants) if config.variants is not None else set(training_variants.get_partition_keys())
    variants = [v for v in training_variants.get_partition_keys() if v in wanted and (v in mt or v in ae or v in lk)]
    if not variants:
        raise dg.Failure("no variant has evaluation results yet: materialise mt_bench_results / alpaca_eval_results")
    results = []
    for variant in variants:
        likelihood = None
        if variant in lk:
            likelihood = {s: summarize_scores(g, s) for s, g in lk[variant].groupby("source")}
        results.append(
            VariantResults(
                variant=variant,
                mt_bench=mt_bench.summarize(mt[variant]) if variant in mt else None,
                alpaca_eval=alpaca_eval.summarize(ae[variant]) if variant in ae else None,
                likelihood=likelihood,
            )
        )
    asked = {int(q) for frame in mt.values() for q in frame["question_id"]}
    others, other_names = other_models(config.mt_bench_answer_files, asked, judge, warehouse)
    results += others
    written: dict[str, Path] = {}
    mt_judges = {str(j) for frame in mt.values() for j in frame["judge"].dropna().unique()}
    for judge_name in mt_judges:  # one file with every model: what FastChat's show_result reads
        models = [exports.model_id(v) for v in variants if v in mt] + other_names
        written[f"mt_bench_judgments_{exports.safe_name(judge_name)}"] = exports.combine_judgments(
            exports_dir(warehouse), judge_name, models
        )
    calibration = judge_calibration.iloc[0]
    judge_info = JudgeInfo(
        name=str(calibration["judge"]),
        backend=str(calibration["backend"]),
        mode=str(calibration["mode"]),
        agreement=None if pd.isna(calibration["agreement"]) else float(calibration["agreement"]),
        ci_low=float(calibration["ci_low"]),
        ci_high=float(calibration["ci_high"]),
        near_chance=bool(calibration["near_chance"]),
    )
    # How far the golden ranking can be trusted, as golden_subset recorded it from the stored pair deltas.
    reliability = md.latest_value(context.instance, "golden_subset", "reliability_figures")
    reliability = dict(reliability) if isinstance(reliability, dict) else None
    table, comparisons, markdown = build_report(
        results, judge_info, reliability=reliability, resamples=config.bootstrap_resamples, seed=config.bootstrap_seed
    )
    store = warehouse.warehouse()
    report_path = write_text_atomic(store.evaluation_report_path, markdown)
    # The same figures, machine-readable: the study command builds its results.json from this file.
    write_text_atomic(
        report_path.with_suffix(".json"),
        json.dumps(
            {
                "variants": variants,
                "judge": judge_info.__dict__,
                "metrics": json.loads(table.to_json(orient="records")),
                "comparisons": json.loads(comparisons.to_json(orient="records")),
                "reliability": reliability,
            },
            indent=1,
        ),
    )
    context.log.info("\n" + markdown)
    return dg.Output(
        table.reset_index(drop=True),
        metadata={
            "report": dg.MetadataValue.md(markdown),
            "variants": ", ".join(variants),
            "chart": comparison_chart(table, store.plot_path("evaluation")),
            "report_file": dg.MetadataValue.path(str(report_path)),
            "comparisons": md.table(comparisons_preview(comparisons)),
            "other_models": ", ".join(other_names) or "none",
            "reliability": (reliability or {}).get("line", "no readout: golden_subset recorded none"),
            **md.paths_metadata(written),
        },
    )


def comparisons_preview(comparisons: pd.DataFrame) -> pd.DataFrame:
    columns = ["comparison", "source", "n", "difference", "ci_low", "ci_high", "verdict"]
    return comparisons[columns] if len(comparisons) else pd.DataFrame(columns=columns)


def comparison_chart(table: pd.DataFrame, path: Path) -> dg.MetadataValue:
    """One bar group per metric, one bar per variant: the answer at a glance."""
    variants = [c for c in table.columns if c in training_variants.get_partition_keys()]
    headline = table[table["headline"].astype(bool)] if "headline" in table else table
    numeric = headline.set_index("metric")[variants].apply(pd.to_numeric, errors="coerce").dropna(how="all")
    figure, axes = md.pyplot().subplots(1, max(len(numeric), 1), figsize=(3 * max(len(numeric), 1), 3), squeeze=False)
    for axis, (metric, values) in zip(axes[0], numeric.iterrows(), strict=False):
        palette = ["#d4a017", "#8a8a8a", "#b0b0b0", "#c0504d", "#4f6bed", "#6a9f58"]
        axis.bar(values.index, values.to_numpy(), color=[palette[i % len(palette)] for i in range(len(values))])
        axis.tick_params(axis="x", labelsize=7, rotation=30)
        axis.set_title(str(metric), fontsize=8)
        lower, upper = values.min(), values.max()
        margin = (upper - lower) * 0.5 or abs(upper) * 0.05 or 1.0
        axis.set_ylim(lower - margin, upper + margin)  # small judges differ by hundredths: zoom in, not from 0
    figure.tight_layout()
    return md.save_plot(figure, path)
