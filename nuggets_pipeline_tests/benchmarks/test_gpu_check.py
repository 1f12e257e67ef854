"""The GPU check cannot rot: its dry run (tiny shapes, CPU) runs where a bare GPU machine would, with neither
Dagster nor pydantic-settings importable, and writes every figure the GPU run writes."""

import json
import subprocess
import sys
from pathlib import Path

from nuggets_pipeline.core.paths import REPO_ROOT

# Loaded first by the child interpreter: any import of these packages fails, as on the bare GPU machine.
BLOCKER = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"dagster", "pydantic_settings", "dagster_duckdb", "dagster_pandera", "duckdb"}:
            raise ImportError(f"{name} is not installed on the bare GPU machine")
        return None
sys.meta_path.insert(0, Block())
"""


def bare_python(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    return {"PYTHONPATH": str(tmp_path), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}


def test_the_core_imports_without_dagster_or_pydantic_settings(tmp_path: Path) -> None:
    code = "import nuggets_pipeline.core.scoring, nuggets_pipeline.core.devices, nuggets_pipeline.core.modeling"
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        env=bare_python(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    blocked = subprocess.run([sys.executable, "-c", "import dagster"], env=bare_python(tmp_path), capture_output=True)
    assert blocked.returncode != 0  # the blocker works, so the first run proves something


def test_the_dry_run_writes_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "gpu_check.py"), "--out", str(out), "--dry-run"],
        cwd=tmp_path,
        env=bare_python(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    printed = json.loads(done.stdout.strip().splitlines()[-1])
    assert printed == json.loads((out / "gpu_check.json").read_text())
    assert printed["skipped"] == [] and "errors" not in printed
    exact = printed["exactness"]
    assert exact["float32_within_1e-3"] and exact["bos"]["zero_and_one_shot_start_with_bos_once"]
    assert exact["bfloat16"]["one_shot_max_abs_diff"] < 0.1
    speed = printed["throughput"][0]["budgets"]["512"]
    assert speed["engine_tokens_per_s"] > 0 and speed["plain_forward_tokens_per_s"] > 0
    assert printed["paper_scale"]["anchor_tokens"] == 52_002 * 18_683 and printed["paper_scale"]["gpu_hours_exact"] > 0
    assert [t["method"].split()[0] for t in printed["training"]] == ["full", "lora"]
    assert all(t["tokens_per_s"] > 0 for t in printed["training"])
    assert "| engine vs plain forward, float32" in (out / "gpu_check.md").read_text()
