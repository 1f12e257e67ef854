"""Every module a doc, profile or build file names exists: a move of a module that forgets its readers fails here."""

import importlib.util
import re
from importlib.machinery import ModuleSpec
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
READERS = [
    "README.md",
    "Makefile",
    "pyproject.toml",
    "workspace.yaml",
    "dagster.yaml",
    *(str(p.relative_to(ROOT)) for p in sorted((ROOT / "docs").glob("*.md"))),
    *(str(p.relative_to(ROOT)) for p in sorted((ROOT / "deploy").rglob("*")) if p.is_file()),
]
# `nuggets_pipeline.defs.definitions` (a dotted module) or `nuggets_pipeline/core/scoring.py` (a file path)
DOTTED = re.compile(r"\bnuggets_pipeline(?:\.[a-z_][a-z0-9_]*)+")
PATH = re.compile(r"\bnuggets_pipeline(?:/[a-z_][a-z0-9_]*)+(?:\.py|/)")
# `core/storage.py`: a file path inside the package, as the README writes many
IN_PACKAGE = re.compile(r"(?<![/\w])(?:core|defs|runs|study)(?:/[a-z_][a-z0-9_]*)*/[a-z_][a-z0-9_]*\.py\b")


def named_modules() -> dict[str, set[str]]:
    named: dict[str, set[str]] = {}
    for reader in READERS:
        path = ROOT / reader
        if not path.exists():
            continue
        text = path.read_text(errors="replace")
        # a test's path (`core/test_exports.py`) is the test package's, which mirrors the package
        in_package = [
            f"nuggets_pipeline{'_tests' if m.rsplit('/', 1)[-1].startswith('test_') else ''}/{m}"
            for m in IN_PACKAGE.findall(text)
        ]
        for match in DOTTED.findall(text) + PATH.findall(text) + in_package:
            named.setdefault(match.rstrip("/"), set()).add(reader)
    return named


def spec_of(module: str) -> ModuleSpec | None:
    try:
        return importlib.util.find_spec(module)
    except ModuleNotFoundError:  # a name below a module that is not a package
        return None


def exists(name: str) -> bool:
    if "/" in name:
        return (ROOT / name).exists()
    parts = name.split(".")
    # `nuggets_pipeline.defs.definitions.defs` names an attribute of a module: the longest importable prefix
    # must be a module that holds the rest.
    for cut in range(len(parts), 1, -1):
        module = ".".join(parts[:cut])
        if spec_of(module) is not None:
            if cut == len(parts):
                return True
            holder = importlib.import_module(module)
            return hasattr(holder, parts[cut])
    return False


def test_the_docs_name_modules_that_exist() -> None:
    named = named_modules()
    assert "nuggets_pipeline.defs.definitions" in named  # the code location, named by workspace.yaml and pyproject
    missing = {name: sorted(readers) for name, readers in named.items() if not exists(name)}
    assert not missing, f"named but not in the package: {missing}"
