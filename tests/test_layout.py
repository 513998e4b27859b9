"""The house's rules that no single feature test sees: what an import pulls in, and which
modules may import which."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
