"""Running a script of `benchmarks/` the way a user does: its own process, one thread, output captured."""

import os
import subprocess
import sys

from nuggets_pipeline.core.paths import REPO_ROOT


def run_benchmark(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / script), *args],
        cwd=REPO_ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
