"""The house's rules that no single feature test sees: what an import pulls in, and which
modules may import which."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _modules_after(code: str) -> set[str]:
    script = f"{code}\nimport sys\nprint('\\n'.join(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60, check=True, cwd=ROOT)
    return set(result.stdout.split())


def test_importing_the_package_does_not_load_the_server() -> None:
    loaded = _modules_after("import asyncpromptcache, asyncpromptcache.response")
    assert "asyncpromptcache" in loaded
    assert not {name for name in loaded if name.startswith("asyncpromptcache.server")}


def test_a_store_source_does_not_load_the_server() -> None:
    loaded = _modules_after("from asyncpromptcache import DirectorySource, StoreSource")
    assert "asyncpromptcache._store._sqlite" in loaded
    assert "asyncpromptcache.server" not in loaded


# -- benchmarks and tests share helpers through devkit/, never one through the other --------

# What the dev extra has and the bench extra has not: a benchmark importing one of these
# crashes on `pip install -e '.[bench]' && python -m benchmarks`.
DEV_ONLY = ("pytest", "_pytest", "pluggy", "hypothesis", "trio", "pytest_asyncio", "fastapi",
            "mypy")


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of its code (lazy imports included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
        elif isinstance(node, ast.ImportFrom) and node.level:
            package = path.parent.relative_to(ROOT).as_posix().replace("/", ".")
            found.add(f"{package}.{node.module or ''}".rstrip("."))
    return found


def _top(module: str) -> str:
    return module.split(".", 1)[0]


def test_benchmarks_and_devkit_import_neither_tests_nor_dev_only_packages() -> None:
    for folder in ("benchmarks", "devkit"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            bad = {m for m in _imports(path) if _top(m) in ("tests", *DEV_ONLY)}
            assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"
    for path in sorted((ROOT / "devkit").rglob("*.py")):
        assert not {m for m in _imports(path) if _top(m) == "benchmarks"}, path


def test_no_test_imports_a_benchmarks_helper() -> None:
    """Tests may run the benchmarks (test_benchmarks) but share helpers through devkit/."""
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        helpers = {m for m in _imports(path)
                   if _top(m) == "benchmarks" and m.rsplit(".", 1)[-1].startswith("_")}
        assert not helpers, f"{path.name} imports {sorted(helpers)}"


_BENCH_ONLY = f"""
import importlib.abc, runpy, sys

class DevOnly(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {DEV_ONLY!r}:
            raise ImportError(name + " is not in the bench extra")
        return None

sys.meta_path.insert(0, DevOnly())
sys.argv = ["benchmarks", *sys.argv[1:]]
runpy.run_module("benchmarks", run_name="__main__", alter_sys=True)
"""


@pytest.mark.slow
def test_the_shared_tier_benchmark_runs_with_the_bench_extra_alone(tmp_path: Path) -> None:
    """`python -m benchmarks` in smoke mode, the dev extra's packages made unimportable:
    the shared-tier scenario (which once imported a test module, and pytest with it) runs
    to its end, its Redis rows included."""
    result = subprocess.run(
        [sys.executable, "-c", _BENCH_ONLY, "--smoke", "--only", "shared",
         "--out", str(tmp_path)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    shared = json.loads((tmp_path / "latest.json").read_text())["scenarios"]["shared"]["data"]
    assert shared["requests"]["asyncpromptcache + RedisTier"]["errors"] == 0
    assert shared["invalidation_ms"]["n"] > 0


def test_no_test_module_imports_another() -> None:
    """Test modules share helpers through tests/helpers.py, fixtures through
    tests/conftest.py (and what benchmarks use too through devkit/), never each other."""
    found = set()
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom):
                module = node.module or ""
                if module in ("", "tests"):  # from . import test_x, from tests import test_x
                    names = [alias.name for alias in node.names]
                else:
                    names = [module.removeprefix("tests.")]
            elif isinstance(node, ast.Import):
                names = [alias.name.removeprefix("tests.") for alias in node.names]
            found |= {(path.stem, name) for name in names if name.startswith("test_")}
    assert not found, sorted(found)
