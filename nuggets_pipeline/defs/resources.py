"""Resources: the models the core works with, how scores are computed, the judge, the warehouse, and the Parquet
IO manager. The models and the device a process's resources share live in ``model_cache``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import dagster as dg
import pandas as pd
import torch
from pydantic import Field, PrivateAttr, ValidationInfo, field_validator, model_validator
from upath import UPath

from nuggets_pipeline.core.adaptive import AdaptiveConfig
from nuggets_pipeline.core.modeling import DTYPES, LoadedModel, resolve_device
from nuggets_pipeline.core.paths import nuggets_home
from nuggets_pipeline.core.reliability import SelectionRule
from nuggets_pipeline.core.scoring import ScoringConfig
from nuggets_pipeline.core.selection import PAPER_GOLDEN_SHARE
from nuggets_pipeline.core.settings import (
    JUDGE_MAX_FAILED_FRACTION,
    JUDGE_MAX_RETRIES,
    JUDGE_TIMEOUT_S,
    require_one_of,
)
from nuggets_pipeline.core.storage import Warehouse, write_parquet_atomic
from nuggets_pipeline.core.templates import TEMPLATES
from nuggets_pipeline.core.versions import scoring_fingerprint
from nuggets_pipeline.defs.model_cache import claim_for_process, load_shared, process_claim, release_for_process
from nuggets_pipeline.defs.schemas import TABLE_SCHEMAS


class ModelResource(dg.ConfigurableResource):
    """A causal LM and its tokenizer: a preset, a Hugging Face id or a local path (safetensors only)."""

    model: str = Field(default="smollm2-135m-instruct", description="preset name, HF model id or local path")
    dtype: str = Field(default="float32", description="float32, bfloat16, float16 or auto")
    device: str = Field(default="cpu", description="cpu, cuda, cuda:N or auto")
    template: str = Field(default="nuggets", description="prompt template used with this model")
    threads: int | None = Field(
        default=None,
        gt=0,
        description="torch intra-op threads for this process (None: torch's default, one per core). On a busy "
        "machine fewer threads than cores can be several times faster.",
    )

    @field_validator("dtype", "template")
    @classmethod
    def _known_choice(cls, value: str, info: ValidationInfo) -> str:
        choices = {"dtype": [*DTYPES, "auto"], "template": sorted(TEMPLATES)}
        return require_one_of(str(info.field_name), value, choices[str(info.field_name)])

    # A distinct GPU per model step (core/devices.py, docs/gpus.md): claimed on first use, held until the step's
    # resources are torn down or its process dies.
    _claimed: bool = PrivateAttr(default=False)
    _log: Any = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._log = context.log

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._claimed:
            release_for_process(context.log.info)
        self._claimed = False

    def device_used(self) -> str:
        """The device this step computes on: a claimed one (cuda:1, sim:0) for auto/cuda when the machine has GPUs
        (or simulated ones), else ``device`` as resolved today (cpu, cuda:0 ...). Claims on first call."""
        if self.device == "cpu":
            return "cpu"  # claims nothing, as before
        if not self._claimed:
            claim_for_process(self.device, self.model, self._log.info if self._log is not None else None)
            self._claimed = True
        held = process_claim()
        return held.name if held is not None else str(resolve_device(self.device))

    def torch_device(self) -> str:
        """The torch device this step's models run on: the claimed device's (a simulated device computes on the
        CPU), else ``device`` resolved. Claims on first call, like ``device_used``."""
        self.device_used()
        held = process_claim()
        return held.torch_device if held is not None else str(resolve_device(self.device))

    def load(self) -> LoadedModel:
        """Loaded once per process and shared by every asset that asks for the same model."""
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        return load_shared(self.model, self.dtype, self.torch_device())


def core_default(setting: str, **field: Any) -> Any:
    """A ``Field`` of an ``adaptive_*`` setting whose default is the core's ``AdaptiveConfig.<setting>`` (chosen on
    synthetic pools), so the resource and the core never disagree on it: one source of truth."""
    return Field(default=getattr(AdaptiveConfig, setting), **field)


class ScoringResource(dg.ConfigurableResource):
    """How scores are computed. Shared by the zero-shot and one-shot assets so both use identical settings."""

    separator: str = Field(default="\n\n", description="text between the in-context example and the anchor")
    max_length: int | None = Field(default=None, description="cap on tokens per sequence; every cut is counted")
    batch_tokens: int | None = Field(
        default=None, gt=0, description="padded tokens per forward pass (None: 512 on CPU, 16,384 on CUDA)"
    )
    candidates_per_pass: int = Field(
        default=ScoringConfig.candidates_per_pass, gt=0, description="candidates whose anchors share forward passes"
    )
    checkpoint_every: int = Field(default=16, gt=0, description="candidates between checkpoints inside a shard")
    keep_pair_deltas: bool = Field(default=True, description="store every (candidate, anchor) delta")
    decision_threshold: float | None = Field(
        default=None, description="settle a candidate as soon as its side of this threshold is certain"
    )
    mode: Literal["exact", "decision", "adaptive"] = Field(
        default="exact",
        description="exact: every anchor for every candidate; decision: stop once the verdict at decision_threshold "
        "is certain (setting decision_threshold alone also means decision); adaptive: one_shot_screening scores "
        "adaptive_first_anchors anchors of every candidate, then one_shot_scores gives more, adaptive_round_anchors "
        "at a time, only to candidates whose interval still straddles the cut of the adaptive_* criterion",
    )
    adaptive_confidence: float = core_default(
        "confidence", gt=0, le=1, description="adaptive: confidence of each interval (1: exact, decision-mode bounds)"
    )
    adaptive_first_anchors: int = core_default(
        "first_anchors", ge=1, description="adaptive: anchors every candidate gets first"
    )
    adaptive_round_anchors: int = core_default("round_anchors", ge=1, description="adaptive: anchors added per round")
    adaptive_calibration_share: float = core_default(
        "calibration_share",
        ge=0,
        le=1,
        description="adaptive: share of each shard scored on every anchor at screening (the pool model's sample)",
    )
    adaptive_seed: int = core_default("seed", description="adaptive: seed of the order anchors are scored in")
    adaptive_threshold: float | None = Field(
        default=None, ge=0, lt=1, description="adaptive: the cut is this threshold (select with the same threshold)"
    )
    adaptive_top_k: int | None = Field(default=None, gt=0, description="adaptive: the cut keeps the k best")
    adaptive_top_fraction: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="adaptive: the cut keeps this fraction of the best; with no adaptive criterion set, the "
        "selection's default (the paper's golden share)",
    )

    @model_validator(mode="after")
    def _mode_fits(self) -> ScoringResource:
        if self.mode == "decision" and self.decision_threshold is None:
            raise ValueError("scoring.mode decision needs scoring.decision_threshold (the threshold to decide)")
        if self.mode == "adaptive" and self.decision_threshold is not None:
            raise ValueError("scoring.decision_threshold belongs to decision mode; adaptive takes adaptive_threshold")
        chosen = [n for n in ("adaptive_threshold", "adaptive_top_k", "adaptive_top_fraction") if getattr(self, n)]
        if len(chosen) > 1:
            raise ValueError(f"scoring: {' and '.join(chosen)} are both set; set one adaptive criterion")
        return self

    @property
    def effective_mode(self) -> str:
        """decision_threshold alone has always meant decision mode; it still does."""
        return "decision" if self.decision_threshold is not None else self.mode

    def adaptive_config(self) -> AdaptiveConfig:
        return AdaptiveConfig(
            confidence=self.adaptive_confidence,
            first_anchors=self.adaptive_first_anchors,
            round_anchors=self.adaptive_round_anchors,
            seed=self.adaptive_seed,
            calibration_share=self.adaptive_calibration_share,
        )

    def adaptive_rule(self) -> SelectionRule:
        """The criterion refinement settles candidates against; golden_subset must select with the same one."""
        if self.adaptive_threshold is not None:
            return SelectionRule(threshold=self.adaptive_threshold)
        if self.adaptive_top_k is not None:
            return SelectionRule(top_k=self.adaptive_top_k)
        return SelectionRule(top_fraction=self.adaptive_top_fraction or PAPER_GOLDEN_SHARE)

    def core_config(self, template: str) -> ScoringConfig:
        """The core's settings; the template comes from the model resource (one source of truth)."""
        return ScoringConfig(
            template=template,
            separator=self.separator,
            max_length=self.max_length,
            batch_tokens=self.batch_tokens,
            candidates_per_pass=self.candidates_per_pass,
            candidates_per_chunk=self.checkpoint_every,
            keep_pair_deltas=self.keep_pair_deltas,
            decision_threshold=self.decision_threshold,
        )

    def fingerprint(self, model_fingerprint: str, template: str) -> str:
        """This resource's scoring fingerprint for a model and template (``core.versions.scoring_fingerprint``)."""
        return scoring_fingerprint(model_fingerprint, template, self.separator, self.max_length)


class JudgeResource(dg.ConfigurableResource):
    """The LLM judge of MT-Bench and AlpacaEval: a local model in-process, or an OpenAI-compatible server.

    The API key is read from the environment variable named by ``api_key_env`` when a request is made; it is
    never part of this configuration, the logs, metadata or the judgment cache. A ``base_url`` holding credentials
    (``user:key@host``) is refused when the judge is built, with a message that does not show them.
    """

    backend: str = Field(default="local", description="local (in-process HF model) or openai (any compatible API)")
    model: str = Field(default="smollm2-135m-instruct", description="local preset/path, or the served model name")
    mode: str | None = Field(default=None, description="generate or probabilities (default: per backend)")
    base_url: str = Field(default="https://api.openai.com/v1", description="openai backend: the server")
    api_key_env: str = Field(default="NUGGETS_JUDGE_API_KEY", description="openai backend: env var with the key")
    concurrency: int = Field(default=4, gt=0, description="openai backend: requests in flight")
    timeout_s: float = Field(
        default=JUDGE_TIMEOUT_S, gt=0, description="openai backend: seconds a try may wait on the server"
    )
    max_retries: int = Field(
        default=JUDGE_MAX_RETRIES, ge=0, description="openai backend: retries after a timeout, drop, 429 or 5xx"
    )
    max_failed_fraction: float = Field(
        default=JUDGE_MAX_FAILED_FRACTION,
        ge=0,
        le=1,
        description="an evaluation asset fails when more than this share of its judgments failed (all: always)",
    )
    dtype: str = Field(default="float32", description="local backend: dtype")
    device: str = Field(default="cpu", description="local backend: device")

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        if value not in ("local", "openai"):
            raise ValueError(f"judge backend must be local or openai, got {value!r}")
        return value

    def build(self, device: str | None = None):  # type: ignore[no-untyped-def]
        """The judge; ``device`` (the step's claimed device) overrides the configured one for a local judge, so
        a judge and the model it grades share the GPU their step holds."""
        from nuggets_pipeline.core.judging import make_judge

        if self.backend == "local":
            # A judge configured for the CPU stays there; otherwise it follows the step onto its claimed device.
            target = self.device if device is None or self.device == "cpu" else device
            loaded = load_shared(self.model, self.dtype, target)
            return make_judge("local", loaded, self.mode, name=self.model)
        return make_judge(
            "openai",
            self.model,
            self.mode,
            base_url=self.base_url,
            api_key_env=self.api_key_env,
            concurrency=self.concurrency,
            timeout_s=self.timeout_s,
            max_retries=self.max_retries,
        )


class WarehouseResource(dg.ConfigurableResource):
    """The home directory's warehouse: Parquet tables and the DuckDB catalog of views over them."""

    home: str | None = Field(default=None, description="defaults to $NUGGETS_HOME or ./.nuggets_home")

    def root(self) -> Path:
        path = Path(self.home).expanduser() if self.home else nuggets_home()
        path.mkdir(parents=True, exist_ok=True)
        return path

    def warehouse(self) -> Warehouse:
        return Warehouse(self.root() / "warehouse")


class ParquetWarehouseIOManager(dg.UPathIOManager):
    """DataFrames as Parquet under the warehouse, one file per partition, each exposed as a DuckDB view.

    The paths come from ``Warehouse`` (the one owner of the layout); a table read back is checked against its
    pandera schema (``schemas.TABLE_SCHEMAS``), and a damaged file fails the reading step with the file's name.
    Inputs that mean a partial read set ``allow_missing_partitions`` in their metadata (Dagster's UPath rule).
    """

    extension = ".parquet"

    def __init__(self, warehouse: Warehouse) -> None:
        self.warehouse = warehouse
        super().__init__(base_path=UPath(warehouse.root))

    @staticmethod
    def _table(context: dg.OutputContext | dg.InputContext) -> str:
        return "__".join(context.asset_key.path)

    def _get_path_without_extension(self, context: dg.OutputContext | dg.InputContext) -> UPath:
        # Partitioned assets: the table's folder (each partition is a file in it, see below).
        table = self._table(context)
        if context.has_asset_partitions:
            return UPath(self.warehouse.table_dir(table))
        return UPath(self.warehouse.partition_path(table).with_suffix(""))

    def _get_paths_for_partitions(self, context):  # type: ignore[no-untyped-def]
        table = self._table(context)
        return {key: UPath(self.warehouse.partition_path(table, key)) for key in context.asset_partition_keys}

    def dump_to_path(self, context: dg.OutputContext, obj: Any, path: UPath) -> None:
        if not isinstance(obj, pd.DataFrame):
            raise TypeError(f"{context.asset_key.to_user_string()}: this IO manager stores DataFrames, got {type(obj)}")
        write_parquet_atomic(obj, Path(path))
        problem = self.warehouse.register_view(self._table(context))
        if problem:
            context.log.warning(problem)

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        # One run may materialise a range of partitions (a single-run backfill): it returns {partition: frame}.
        if context.has_asset_partitions and len(context.asset_partition_keys) > 1:
            if not isinstance(obj, dict) or set(obj) != set(context.asset_partition_keys):
                raise TypeError("a multi-partition output must be a dict with one DataFrame per partition key")
            for key, path in self._get_paths_for_partitions(context).items():
                self.dump_to_path(context, obj[key], path)
            return
        super().handle_output(context, obj)

    def load_from_path(self, context: dg.InputContext, path: UPath) -> pd.DataFrame:
        return self.warehouse.read_file(Path(path), TABLE_SCHEMAS.get(self._table(context)))


class WarehouseIOManagerFactory(dg.ConfigurableIOManagerFactory):
    warehouse: WarehouseResource

    def create_io_manager(self, context: dg.InitResourceContext) -> ParquetWarehouseIOManager:
        return ParquetWarehouseIOManager(self.warehouse.warehouse())
