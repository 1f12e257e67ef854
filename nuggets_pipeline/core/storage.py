"""The one owner of the home's files: where every output lives, how it is written, and how tables are read back.

Layout of ``<home>`` (``Warehouse``, built on ``<home>/warehouse``; nothing else in the project builds these paths):

- ``warehouse/``: one folder per table, one Parquet file per partition (``all.parquet`` for an unpartitioned
  table), plus ``warehouse.duckdb``, a catalog of views for people and the CLI;
- ``checkpoints/<table>/<shard>/<version>/``: scoring checkpoints;
- ``finetuned/<variant>/``: a fine-tuned variant's run (its loadable model in ``model/``);
- ``exports/``: files for other tools (FastChat, alpaca_eval, trainers) and the evaluation report;
- ``plots/``: the PNG charts shown in the UI;
- ``judgments.sqlite``: the judge's answers, cached.

Every file is written by ``write_atomic`` (or a function built on it): a temporary name, then a rename, with the
mode any new file gets (0666 less the umask); a folder built whole comes from ``staging_folder`` (0777 less it).

Why not DuckDB tables: DuckDB allows one writer per file across processes, and shard runs write in parallel.
Each writer here owns its own Parquet file (written to a temporary name, then renamed: atomic on POSIX), and
the catalog only needs a write when a view is (re)defined, which is retried while another process holds it.
Pipeline reads never touch the catalog file: cross-partition SQL runs in an in-memory DuckDB over the Parquet
files themselves (``Warehouse.sql``), with values passed as parameters, so it never waits on a writer's lock.
Every file read back is checked: a file that is not Parquet, is truncated, or whose columns do not have the
table's types fails with an error that names the file, and no other file is touched.
"""

from __future__ import annotations

import logging
import os
import random
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import pandas as pd
import pyarrow as pa_arrow
import pyarrow.parquet as pq

CATALOG_FILE = "warehouse.duckdb"
SCHEMA = "nuggets"
FILENAME_COLUMN = "filename"  # the column DuckDB adds with read_parquet(..., filename = true)
T = TypeVar("T")


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (``os.umask`` alone must set one)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class StoredTableError(RuntimeError):
    """A stored file cannot be used as the table it belongs to; the message names the file."""

    def __init__(self, path: Path | str, problem: str) -> None:
        self.path = Path(path)
        super().__init__(
            f"stored file {self.path} is unusable: {problem}. Re-materialise that partition (or delete the file); "
            "no other file was read or changed"
        )


def write_atomic(path: Path, write: Callable[[Path], object]) -> Path:
    """The one atomic writer of the project (warehouse, checkpoints, exports): ``write`` fills a temporary file
    beside ``path``, which is then renamed over it, so readers see the old file or the new one, never half of
    one, and a re-run replaces, never appends.

    The file gets the mode any new file gets (0666 less the umask: 0644 by default): mkstemp's private 0600 made
    the files written this way the only ones a group or a UI user could not read. For private data, set a umask
    (077) or lock the home folder; both cover every file the pipeline writes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(handle, 0o666 & ~current_umask())
    os.close(handle)
    try:
        write(Path(temporary))
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def write_parquet_atomic(frame: pd.DataFrame, path: Path) -> Path:
    """``frame`` as one Parquet file, written atomically (``write_atomic``)."""
    return write_atomic(path, lambda temporary: frame.to_parquet(temporary, index=False))


def write_text_atomic(path: Path, text: str) -> Path:
    """UTF-8 text written atomically (``write_atomic``)."""
    return write_atomic(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


def staging_folder(beside: Path) -> Path:
    """An empty hidden folder next to ``beside``, to build a folder in before it is renamed into place; mode 0777
    less the umask (0755 by default) like any new folder, not mkdtemp's private 0700."""
    beside.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".{beside.name}.", dir=beside.parent))
    folder.chmod(0o777 & ~current_umask())
    return folder


def is_lock_error(error: Exception) -> bool:
    return isinstance(error, duckdb.IOException) and "lock" in str(error).lower()


def with_lock_retry(action: Callable[[], T], timeout_s: float = 120.0) -> T:
    """Run a DuckDB write, waiting (with jittered back-off) while another process holds the file."""
    deadline = time.monotonic() + timeout_s
    delay = 0.05
    while True:
        try:
            return action()
        except duckdb.IOException as error:
            if not is_lock_error(error) or time.monotonic() > deadline:
                raise
            time.sleep(delay + random.uniform(0, delay))
            delay = min(delay * 2, 2.0)


def _identifier(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ValueError(f"not a valid table name: {name!r}")
    return name


def _partition_key(key: str) -> str:
    # Partition keys become file names: no separators, no parent references, no hidden files.
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", key) or ".." in key:
        raise ValueError(f"not a valid partition key: {key!r}")
    return key


# pandera dtype name -> does an Arrow column type store it (what pandas writes for that dtype)
_ARROW_TYPES: dict[str, Callable[[pa_arrow.DataType], bool]] = {
    "str": lambda t: pa_arrow.types.is_string(t) or pa_arrow.types.is_large_string(t) or pa_arrow.types.is_null(t),
    "float64": lambda t: pa_arrow.types.is_floating(t) or pa_arrow.types.is_null(t),
    "int64": pa_arrow.types.is_integer,
    "bool": pa_arrow.types.is_boolean,
}


def expected_columns(schema: Any) -> dict[str, str]:
    """Column -> dtype name of a pandera DataFrameModel (or DataFrameSchema)."""
    built = schema.to_schema() if hasattr(schema, "to_schema") else schema
    return {name: str(column.dtype) for name, column in built.columns.items()}


class Warehouse:
    """Parquet tables under ``root/<table>/`` (one file per partition) and a DuckDB catalog of views."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    @property
    def catalog(self) -> Path:
        return self.root / CATALOG_FILE

    @classmethod
    def of_home(cls, home: Path) -> Warehouse:
        """The warehouse of a home folder (``<home>/warehouse``)."""
        return cls(Path(home) / "warehouse")

    @property
    def home(self) -> Path:
        return self.root.parent

    # -- the home's other outputs (the module docstring's layout) ---------------------------------------------

    @property
    def exports_dir(self) -> Path:
        return self.home / "exports"

    @property
    def evaluation_report_path(self) -> Path:
        """The report's Markdown; its figures sit beside it with the suffix ``.json``."""
        return self.exports_dir / "evaluation_report.md"

    @property
    def judgment_cache_path(self) -> Path:
        return self.home / "judgments.sqlite"

    def plot_path(self, name: str) -> Path:
        return self.home / "plots" / f"{_partition_key(name)}.png"

    def finetuned_dir(self, variant: str) -> Path:
        """A fine-tuned variant's run folder (checkpoints, examples, model card)."""
        return self.home / "finetuned" / _partition_key(variant)

    def finetuned_model_dir(self, variant: str) -> Path:
        """The loadable Hugging Face model of a variant: the ``model`` folder core.training saves in its run."""
        return self.finetuned_dir(variant) / "model"

    def table_dir(self, table: str) -> Path:
        return self.root / _identifier(table)

    def partition_path(self, table: str, partition: str = "all") -> Path:
        return self.table_dir(table) / f"{_partition_key(partition)}.parquet"

    def checkpoint_dir(self, table: str, partition: str, version: str) -> Path:
        """Scratch files of one partition's run, kept per version so two versions never mix."""
        return self.home / "checkpoints" / _identifier(table) / _partition_key(partition) / _partition_key(version)

    def checkpoint_files(self, directory: Path, kind: str) -> list[Path]:
        """``<kind>-NNNNN.parquet`` files of a checkpoint directory, in the order they were written."""
        if not directory.is_dir():
            return []
        return sorted(
            directory / entry.name
            for entry in os.scandir(directory)
            if entry.is_file() and entry.name.startswith(f"{kind}-") and entry.name.endswith(".parquet")
        )

    # -- writing --------------------------------------------------------------------------------------------

    def write(self, table: str, frame: pd.DataFrame, partition: str = "all") -> Path:
        path = self.partition_path(table, partition)
        write_parquet_atomic(frame, path)
        problem = self.register_view(table)
        if problem:
            logging.getLogger(__name__).warning(problem)
        return path

    # -- finding files ----------------------------------------------------------------------------------------

    def partitions(self, table: str) -> list[str]:
        folder = self.table_dir(table)
        if not folder.is_dir():
            return []
        # Hidden names are writers' temporary files (write_parquet_atomic): never part of the table.
        return sorted(
            entry.name[: -len(".parquet")]
            for entry in os.scandir(folder)
            if entry.is_file() and entry.name.endswith(".parquet") and not entry.name.startswith(".")
        )

    def files(self, table: str, partitions: Iterable[str] | None = None, allow_missing: bool = False) -> list[Path]:
        """The files of some partitions (all when None). A missing one is an error unless ``allow_missing``."""
        keys = self.partitions(table) if partitions is None else list(partitions)
        paths = [self.partition_path(table, key) for key in keys]
        missing = [p for p in paths if not p.exists()]
        if missing and not allow_missing:
            raise FileNotFoundError(f"table {table!r} has no stored partition at {', '.join(map(str, missing))}")
        return [p for p in paths if p.exists()]

    def check_file(self, path: Path, schema: Any | None = None) -> None:
        """Reads only the file's footer: not Parquet / truncated, or a column of the wrong type, names the file."""
        if not Path(path).is_file():
            raise FileNotFoundError(f"stored file {path} does not exist: materialise that asset (partition) first")
        try:
            arrow_schema = pq.read_schema(path)
        except Exception as error:  # pyarrow raises ArrowInvalid, OSError ... for a damaged file
            raise StoredTableError(path, f"not a readable Parquet file ({error})") from error
        if schema is None:
            return
        stored = {field.name: field.type for field in arrow_schema}
        for column, dtype in expected_columns(schema).items():
            if column not in stored:
                raise StoredTableError(path, f"column {column!r} is missing")
            accepts = _ARROW_TYPES.get(dtype)
            if accepts is not None and not accepts(stored[column]):
                raise StoredTableError(path, f"column {column!r} is stored as {stored[column]}, expected {dtype}")

    # -- reading ----------------------------------------------------------------------------------------------

    def read_file(self, path: Path, schema: Any | None = None) -> pd.DataFrame:
        """One stored file as a DataFrame, checked against ``schema`` (a pandera model) when given."""
        self.check_file(path, schema)
        try:
            frame = pd.read_parquet(path)
        except Exception as error:
            raise StoredTableError(path, f"not a readable Parquet file ({error})") from error
        if schema is not None:
            validate(schema, frame, path)
        return frame

    def read(
        self,
        table: str,
        partitions: list[str] | None = None,
        schema: Any | None = None,
        allow_missing: bool = False,
    ) -> pd.DataFrame:
        files = self.files(table, partitions, allow_missing=allow_missing)
        if not files:
            if allow_missing:
                return pd.DataFrame({c: pd.Series(dtype=_pandas_dtype(d)) for c, d in _columns_or_empty(schema)})
            raise FileNotFoundError(f"table {table!r} has no data at {self.table_dir(table)}")
        return pd.concat([self.read_file(f, schema) for f in files], ignore_index=True)

    def sql(
        self,
        query: str,
        params: Sequence[Any] | Mapping[str, Any] | None = None,
        files: Mapping[str, tuple[list[Path], Any]] | None = None,
        frames: Mapping[str, pd.DataFrame] | None = None,
    ) -> pd.DataFrame:
        """Run ``query`` in an in-memory DuckDB where each name of ``files`` is a view over those Parquet files
        (checked first, see ``check_file``; with a ``filename`` column) and each name of ``frames`` a DataFrame.

        Values go in ``params`` ($name or ?), never into the query text. No catalog, so no lock: any number of
        processes read at once while shard runs write their own files.
        """
        with duckdb.connect() as connection:
            for name, (paths, schema) in (files or {}).items():
                for path in paths:
                    self.check_file(path, schema)
                if paths:
                    relation = connection.read_parquet([str(p) for p in paths], union_by_name=True, filename=True)
                else:
                    columns = dict(_columns_or_empty(schema))
                    empty = pd.DataFrame({c: pd.Series(dtype=_pandas_dtype(d)) for c, d in columns.items()})
                    relation = connection.from_df(empty.assign(**{FILENAME_COLUMN: pd.Series(dtype=object)}))
                connection.register(_identifier(name), relation)
            for name, frame in (frames or {}).items():
                connection.register(_identifier(name), frame)
            try:
                return connection.execute(query, params or []).df()
            except duckdb.Error as error:
                # A file that passed the footer check but fails while its pages are read (cut in the middle).
                named = [str(p) for paths, _ in (files or {}).values() for p in paths if str(p) in str(error)]
                if named:
                    raise StoredTableError(named[0], str(error)) from error
                raise

    def register_view(self, table: str) -> str | None:
        """(Re)define the catalog view of a table. The view is for people and the CLI; the pipeline never reads it.

        A damaged file would stop DuckDB from defining the view over the folder's glob; then the view covers the
        readable files only, and the returned message names the files left out (callers log it). The write that
        asked for the view is never failed by another partition's damaged file.
        """
        quoted = str(self.table_dir(table) / "*.parquet").replace("'", "''")
        try:
            self._define_view(table, f"'{quoted}'")
            return None
        except duckdb.Error as error:
            if is_lock_error(error):
                raise
        # Only after a failure are the files checked one by one (a footer read each), to leave the bad ones out.
        good, bad = [], []
        for path in self.files(table):
            try:
                self.check_file(path)
                good.append(path)
            except StoredTableError:
                bad.append(path)
        if not good:
            return f"catalog view nuggets.{table} not defined: no readable file ({', '.join(map(str, bad))})"
        self._define_view(table, "[" + ", ".join("'" + str(p).replace("'", "''") + "'" for p in good) + "]")
        return f"catalog view nuggets.{table} leaves out unreadable files: {', '.join(map(str, bad))}"

    def _define_view(self, table: str, source: str) -> None:
        statement = (
            f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}; "
            f"CREATE OR REPLACE VIEW {SCHEMA}.{_identifier(table)} AS "
            f"SELECT * FROM read_parquet({source}, union_by_name = true)"
        )

        def define() -> None:
            with duckdb.connect(str(self.catalog)) as connection:
                connection.execute(statement)

        with_lock_retry(define)

    def query(self, sql: str) -> pd.DataFrame:
        """Read-only SQL over the catalog (``nuggets.<table>``) for people and the CLI; never takes the writer lock."""

        def run() -> pd.DataFrame:
            with duckdb.connect(str(self.catalog), read_only=True) as connection:
                return connection.execute(sql).df()

        return with_lock_retry(run)


def _columns_or_empty(schema: Any | None) -> list[tuple[str, str]]:
    return list(expected_columns(schema).items()) if schema is not None else []


def _pandas_dtype(dtype: str) -> str:
    return {"str": "object", "float64": "float64", "int64": "int64", "bool": "bool"}.get(dtype, "object")


def validate(schema: Any, frame: pd.DataFrame, path: Path | str) -> pd.DataFrame:
    """pandera on a frame read back; a failure names the file (or files) its failing rows came from."""
    import pandera.errors

    try:
        return schema.validate(frame, lazy=True)
    except pandera.errors.SchemaErrors as error:
        raise StoredTableError(
            path, f"does not match {getattr(schema, '__name__', 'its schema')}: {str(error)[:1500]}"
        ) from error
