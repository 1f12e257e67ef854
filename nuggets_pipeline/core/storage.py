"""Intermediates live as Parquet files under the home; a DuckDB catalog holds views over them.

Why not DuckDB tables: DuckDB allows one writer per file across processes, and shard runs write in parallel.
Each writer here owns its own Parquet file (written to a temporary name, then renamed: atomic on POSIX), and
the catalog only needs a write when a view is (re)defined, which is retried while another process holds it.
"""

from __future__ import annotations

import os
import random
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import duckdb
import pandas as pd

CATALOG_FILE = "warehouse.duckdb"
SCHEMA = "nuggets"
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


def write_parquet_atomic(frame: pd.DataFrame, path: Path) -> None:
    """Readers see the old file or the new one, never a half-written one; a re-run replaces, never appends.

    The file gets the mode any new file gets (0666 less the umask: 0644 by default), like the exports: mkstemp's
    private 0600 would make warehouse files the only ones a group or a UI user cannot read. For private data,
    set a umask (077) or lock the home folder; both cover every file the pipeline writes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(handle, 0o666 & ~current_umask())
    os.close(handle)
    try:
        frame.to_parquet(temporary, index=False)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


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


class Warehouse:
    """Parquet tables under ``root/<table>/`` (one file per partition) and a DuckDB catalog of views."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    @property
    def catalog(self) -> Path:
        return self.root / CATALOG_FILE

    def table_dir(self, table: str) -> Path:
        return self.root / _identifier(table)

    def write(self, table: str, frame: pd.DataFrame, partition: str = "all") -> Path:
        path = self.table_dir(table) / f"{partition}.parquet"
        write_parquet_atomic(frame, path)
        self.register_view(table)
        return path

    def read(self, table: str, partitions: list[str] | None = None) -> pd.DataFrame:
        folder = self.table_dir(table)
        files = (
            sorted(folder.glob("*.parquet")) if partitions is None else [folder / f"{p}.parquet" for p in partitions]
        )
        missing = [f for f in files if not f.exists()]
        if missing or not files:
            raise FileNotFoundError(f"table {table!r} has no data at {missing or folder}")
        return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)

    def partitions(self, table: str) -> list[str]:
        return sorted(p.stem for p in self.table_dir(table).glob("*.parquet"))

    def register_view(self, table: str) -> None:
        pattern = str(self.table_dir(table) / "*.parquet").replace("'", "''")
        statement = (
            f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}; "
            f"CREATE OR REPLACE VIEW {SCHEMA}.{_identifier(table)} AS "
            f"SELECT * FROM read_parquet('{pattern}', union_by_name = true)"
        )

        def define() -> None:
            with duckdb.connect(str(self.catalog)) as connection:
                connection.execute(statement)

        with_lock_retry(define)

    def query(self, sql: str) -> pd.DataFrame:
        """Read-only SQL over the catalog (``nuggets.<table>``); never takes the writer lock."""

        def run() -> pd.DataFrame:
            with duckdb.connect(str(self.catalog), read_only=True) as connection:
                return connection.execute(sql).df()

        return with_lock_retry(run)
