"""Resources: the models the core works with, the warehouse, and the Parquet IO manager."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
from pydantic import Field, field_validator
from upath import UPath

from nuggets_pipeline.core.modeling import DTYPES, LoadedModel, load_model
from nuggets_pipeline.core.paths import nuggets_home
from nuggets_pipeline.core.storage import Warehouse, write_parquet_atomic
from nuggets_pipeline.core.templates import TEMPLATES

_LOADED: dict[tuple[str, str, str], LoadedModel] = {}


class ModelResource(dg.ConfigurableResource):
    """A causal LM and its tokenizer: a preset, a Hugging Face id or a local path (safetensors only)."""

    model: str = Field(default="smollm2-135m-instruct", description="preset name, HF model id or local path")
    dtype: str = Field(default="float32", description="float32, bfloat16, float16 or auto")
    device: str = Field(default="cpu", description="cpu, cuda, cuda:N or auto")
    template: str = Field(default="nuggets", description="prompt template used with this model")

    @field_validator("dtype")
    @classmethod
    def _known_dtype(cls, value: str) -> str:
        if value not in (*DTYPES, "auto"):
            raise ValueError(f"dtype must be one of {[*DTYPES, 'auto']}, got {value!r}")
        return value

    @field_validator("template")
    @classmethod
    def _known_template(cls, value: str) -> str:
        if value not in TEMPLATES:
            raise ValueError(f"template must be one of {sorted(TEMPLATES)}, got {value!r}")
        return value

    def load(self) -> LoadedModel:
        """Loaded once per process and shared by every asset that asks for the same model."""
        key = (self.model, self.dtype, self.device)
        if key not in _LOADED:
            _LOADED[key] = load_model(self.model, dtype=self.dtype, device=self.device)
        return _LOADED[key]


class WarehouseResource(dg.ConfigurableResource):
    """The home directory's warehouse: Parquet tables and the DuckDB catalog of views over them."""

    home: str | None = Field(default=None, description="defaults to $NUGGETS_HOME or ./.nuggets_home")

    def root(self) -> Path:
        path = Path(self.home).expanduser() if self.home else nuggets_home()
        path.mkdir(parents=True, exist_ok=True)
        return path

    def warehouse(self) -> Warehouse:
        return Warehouse(self.root() / "warehouse")

    def query(self, sql: str) -> pd.DataFrame:
        return self.warehouse().query(sql)


class ParquetWarehouseIOManager(dg.UPathIOManager):
    """DataFrames as Parquet under the warehouse, one file per partition, each exposed as a DuckDB view."""

    extension = ".parquet"

    def __init__(self, warehouse: Warehouse) -> None:
        self.warehouse = warehouse
        super().__init__(base_path=UPath(warehouse.root))

    def _get_path_without_extension(self, context: dg.OutputContext | dg.InputContext) -> UPath:
        table = "__".join(context.asset_key.path)
        if context.has_asset_partitions:
            return self._base_path / table / context.asset_partition_key
        return self._base_path / table / "all"

    def _get_paths_for_partitions(self, context):  # type: ignore[no-untyped-def]
        table = "__".join(context.asset_key.path)
        keys = context.asset_partition_keys
        return {key: (self._base_path / table / key).with_suffix(self.extension) for key in keys}

    def dump_to_path(self, context: dg.OutputContext, obj: Any, path: UPath) -> None:
        if not isinstance(obj, pd.DataFrame):
            raise TypeError(f"{context.asset_key.to_user_string()}: this IO manager stores DataFrames, got {type(obj)}")
        write_parquet_atomic(obj, Path(path))
        self.warehouse.register_view("__".join(context.asset_key.path))

    def load_from_path(self, context: dg.InputContext, path: UPath) -> pd.DataFrame:
        return pd.read_parquet(Path(path))


class WarehouseIOManagerFactory(dg.ConfigurableIOManagerFactory):
    warehouse: WarehouseResource

    def create_io_manager(self, context: dg.InitResourceContext) -> ParquetWarehouseIOManager:
        return ParquetWarehouseIOManager(self.warehouse.warehouse())
