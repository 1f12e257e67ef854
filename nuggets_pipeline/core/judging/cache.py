"""A judgment cache in SQLite, keyed by (judge cache key, prompt hash): re-runs and crashes never pay twice.

WAL mode plus a busy timeout lets several processes (Dagster runs a step per process) read and write the same
file. Only answered judgments are stored, unparseable ones included (as unparseable); failed requests are not,
so the next run retries them.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

from nuggets_pipeline.core.judging.types import Judgment
from nuggets_pipeline.core.paths import nuggets_home

CACHE_FILE = "judgments.sqlite"
BUSY_TIMEOUT_S = 60.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS judgments (
    judge_key TEXT NOT NULL,
    prompt_hash TEXT NOT NULL,
    judge TEXT NOT NULL,
    backend TEXT NOT NULL,
    mode TEXT NOT NULL,
    raw TEXT NOT NULL,
    value REAL,
    parsed INTEGER NOT NULL,
    error TEXT,
    created_at TEXT NOT NULL,
    PRIMARY KEY (judge_key, prompt_hash)
) WITHOUT ROWID
"""


class JudgmentCache:
    def __init__(self, path: Path | str | None = None) -> None:
        self.path = Path(path) if path is not None else nuggets_home() / CACHE_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # One connection shared by the caller's threads, serialised by a lock; other processes have their own.
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, check_same_thread=False)
        with self._lock:
            self._initialise()

    def _initialise(self) -> None:
        # Switching a new file to WAL needs an exclusive lock, and SQLite answers "database is locked" at once
        # (without the busy handler) when another process is doing the same, so the first open retries.
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        delay = 0.005
        while True:
            try:
                if self._db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                    self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.execute(_SCHEMA)
                self._db.commit()
                return
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) or time.monotonic() > deadline:
                    raise
                self._db.rollback()
                time.sleep(delay)
                delay = min(delay * 2, 0.5)

    def get_many(self, judge_key: str, prompt_hashes: Iterable[str]) -> dict[str, Judgment]:
        """Stored judgments by prompt hash (marked ``cached``); hashes never judged are absent."""
        hashes = list(dict.fromkeys(prompt_hashes))
        found: dict[str, Judgment] = {}
        with self._lock:
            for start in range(0, len(hashes), 500):  # SQLite caps the number of bound parameters
                chunk = hashes[start : start + 500]
                rows = self._db.execute(
                    "SELECT prompt_hash, judge, backend, mode, raw, value, parsed, error FROM judgments "
                    f"WHERE judge_key = ? AND prompt_hash IN ({','.join('?' * len(chunk))})",
                    [judge_key, *chunk],
                )
                for prompt_hash, judge, backend, mode, raw, value, parsed, error in rows:
                    found[prompt_hash] = Judgment(
                        judge=judge,
                        backend=backend,
                        mode=mode,
                        prompt_hash=prompt_hash,
                        raw=raw,
                        value=value,
                        parsed=bool(parsed),
                        error=error,
                        cached=True,
                    )
        return found

    def put_many(self, judge_key: str, judgments: Iterable[Judgment]) -> int:
        """Store answered judgments (failed requests are skipped); the first stored answer wins. Returns
        how many rows were new."""
        now = datetime.now(UTC).isoformat(timespec="seconds")
        rows = [
            (
                judge_key,
                j.prompt_hash,
                j.judge,
                j.backend,
                j.mode,
                j.raw,
                j.value,
                int(j.parsed),
                j.error,
                now,
            )
            for j in judgments
            if not j.failed
        ]
        if not rows:
            return 0
        with self._lock:
            before = self._db.total_changes
            self._db.executemany("INSERT OR IGNORE INTO judgments VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            self._db.commit()
            return self._db.total_changes - before

    def count(self, judge_key: str | None = None) -> int:
        with self._lock:
            if judge_key is None:
                return self._db.execute("SELECT COUNT(*) FROM judgments").fetchone()[0]
            return self._db.execute("SELECT COUNT(*) FROM judgments WHERE judge_key = ?", [judge_key]).fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> JudgmentCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
