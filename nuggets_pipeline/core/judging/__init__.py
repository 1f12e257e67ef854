"""The LLM-judge layer: one ``Judge`` interface over two backends (OpenAI-compatible HTTP, local HF
model), two verdict modes (``generate``: parse the written verdict; ``probabilities``: read the next-token
distribution), a SQLite judgment cache, and calibration against GPT-4's AlpacaEval verdicts.
Plain Python, no Dagster.

Import from here."""

from nuggets_pipeline.core.judging.api import (
    compare_both_orders,
    compare_pair,
    grade_single,
    judge_prompts,
    rate_pointwise,
)
from nuggets_pipeline.core.judging.backends import (
    DEFAULT_API_KEY_ENV,
    Judge,
    JudgeRequestError,
    LocalJudge,
    OpenAIJudge,
    make_judge,
)
from nuggets_pipeline.core.judging.cache import JudgmentCache
from nuggets_pipeline.core.judging.calibration import (
    Calibration,
    CalibrationItem,
    calibrate_judge,
    calibration_sample,
    wilson_interval,
)
from nuggets_pipeline.core.judging.parsing import parse_pair, parse_rating, read_distribution
from nuggets_pipeline.core.judging.prompts import mt_bench_prompt, pair_prompt, pointwise_prompt
from nuggets_pipeline.core.judging.types import (
    MODES,
    BothOrders,
    JudgePrompt,
    Judgment,
    Mode,
    PairRequest,
    PointwiseRequest,
    RawOutput,
    SingleRequest,
)

__all__ = [
    "DEFAULT_API_KEY_ENV",
    "MODES",
    "BothOrders",
    "Calibration",
    "CalibrationItem",
    "Judge",
    "JudgePrompt",
    "JudgeRequestError",
    "Judgment",
    "JudgmentCache",
    "LocalJudge",
    "Mode",
    "OpenAIJudge",
    "PairRequest",
    "PointwiseRequest",
    "RawOutput",
    "SingleRequest",
    "calibrate_judge",
    "calibration_sample",
    "compare_both_orders",
    "compare_pair",
    "grade_single",
    "judge_prompts",
    "make_judge",
    "mt_bench_prompt",
    "pair_prompt",
    "parse_pair",
    "parse_rating",
    "pointwise_prompt",
    "rate_pointwise",
    "read_distribution",
    "wilson_interval",
]
