"""The house's import rules, checked: the core knows nothing of Dagster, an asset module never imports another,
and importing a module never patches Dagster (the pool fix is installed by ``build_defs``)."""

import ast
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import nuggets_pipeline
from nuggets_pipeline import core
from nuggets_pipeline.defs import assets

PACKAGE_ROOT = Path(nuggets_pipeline.__file__).parent
ASSETS_PACKAGE = assets.__name__


def run_python(code: str) -> str:
    """``code`` in a fresh interpreter (this one has imported Dagster long ago); its last line of output."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


def test_importing_the_core_imports_no_dagster() -> None:
    """The package itself (the issue's check, ``python -c "import nuggets_pipeline.core"``) and every module in it."""
    modules = sorted(info.name for info in pkgutil.walk_packages(core.__path__, prefix=f"{core.__name__}."))
    assert "nuggets_pipeline.core.versions" in modules and len(modules) > 20
    code = (
        "import importlib, json, sys\n"
        "import nuggets_pipeline.core\n"
        "bare = sorted(m for m in sys.modules if m.split('.')[0] == 'dagster')\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "every = sorted(m for m in sys.modules if m.split('.')[0] in ('dagster', 'dagster_pandera'))\n"
        "layer = sorted(m for m in sys.modules if m.startswith('nuggets_pipeline.') and "
        "not m.startswith('nuggets_pipeline.core'))\n"
        "print(json.dumps([bare, every, layer]))"
    )
    bare, every, layer = json.loads(run_python(code))
    assert bare == [], "import nuggets_pipeline.core imported Dagster"
    assert every == [], f"a core module imports Dagster: {every[:5]}"
    assert layer == [], f"a core module imports the layers above it: {layer}"


def imported_modules(path: Path, package: str) -> set[str]:
    """Every module a source file imports, relative imports resolved against ``package``."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}  # `from package import module`
    return found


def test_no_asset_module_imports_another_asset_module() -> None:
    folder = PACKAGE_ROOT / "defs" / "assets"
    asset_modules = {f"{ASSETS_PACKAGE}.{path.stem}" for path in folder.glob("*.py") if path.stem != "__init__"}
    assert len(asset_modules) >= 7
    crossings = {
        path.name: sorted((imported_modules(path, ASSETS_PACKAGE) & asset_modules) - {f"{ASSETS_PACKAGE}.{path.stem}"})
        for path in sorted(folder.glob("*.py"))
    }
    assert {name: found for name, found in crossings.items() if found} == {}, (
        "an asset module imports another: move the shared piece to the core (versions, storage) or defs/metadata.py"
    )


def test_the_rule_sees_every_way_of_importing_an_asset_module(tmp_path: Path) -> None:
    """The check above must not miss an import because of how it is written."""
    source = tmp_path / "example.py"
    source.write_text(
        "import nuggets_pipeline.defs.assets.scoring\n"
        "from nuggets_pipeline.defs.assets.training import variant_examples\n"
        "from nuggets_pipeline.defs.assets import evaluation\n"
        "from .exports import scored_pool_exports\n"
        "from . import incoming\n"
    )
    found = imported_modules(source, ASSETS_PACKAGE)
    for stem in ("scoring", "training", "evaluation", "exports", "incoming"):
        assert f"{ASSETS_PACKAGE}.{stem}" in found, stem


def test_importing_the_dagster_layer_patches_nothing_until_the_definitions_are_built() -> None:
    code = (
        "import json\n"
        "from dagster._core.execution.plan.active import ActiveExecution\n"
        "from dagster._core.execution.plan.instance_concurrency_context import InstanceConcurrencyContext as C\n"
        "from nuggets_pipeline.defs import checks, pools, resources, sensors\n"
        "from nuggets_pipeline.defs.assets import anchors, evaluation, exports, incoming, ingestion\n"
        "from nuggets_pipeline.defs.assets import scoring, training\n"
        "before = [pools.installed(), C.__enter__ is not pools.DAGSTER_ENTER, "
        "ActiveExecution.sleep_til_ready is not pools.DAGSTER_SLEEP_TIL_READY]\n"
        "from nuggets_pipeline.defs.definitions import build_defs\n"
        "build_defs()\n"
        "after = [pools.installed(), C.__enter__ is not pools.DAGSTER_ENTER, "
        "ActiveExecution.sleep_til_ready is not pools.DAGSTER_SLEEP_TIL_READY]\n"
        "print(json.dumps([before, after]))"
    )
    before, after = json.loads(run_python(code))
    assert before == [False, False, False], "a module patched Dagster when it was imported"
    assert after == [True, True, True], "build_defs did not install the pool fix"
