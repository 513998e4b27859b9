"""The official Langfuse JS SDK (npm ``langfuse``, which has ``getPrompt``/``createPrompt``)
works against the local server as against Langfuse.

The package is installed at test time, pinned, into ``.cache/npm/`` in the repository (git
ignores it) and reused from there. The one reason to skip: no node/npm on the machine, or no
way to install the package.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from asyncpromptcache.server import ServerThread

JS_SDK = "langfuse"
JS_SDK_VERSION = "3.39.2"
ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "npm" / f"{JS_SDK}-{JS_SDK_VERSION}"
SCRIPT = Path(__file__).resolve().parent / "js" / "langfuse_sdk_check.cjs"


def _installed() -> bool:
    manifest = CACHE / "node_modules" / JS_SDK / "package.json"
    try:
        return bool(json.loads(manifest.read_text())["version"] == JS_SDK_VERSION)
    except (OSError, ValueError, KeyError):
        return False


@pytest.fixture(scope="module")
def node_modules() -> Path:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are needed to run the official Langfuse JS SDK; "
                    f"found node={node}, npm={npm}")
    if not _installed():
        staging = CACHE.with_name(f"{CACHE.name}.{uuid.uuid4().hex}")
        staging.mkdir(parents=True)
        try:
            result = subprocess.run(
                [npm, "install", "--prefix", str(staging), f"{JS_SDK}@{JS_SDK_VERSION}",
                 "--no-audit", "--no-fund", "--no-save", "--loglevel=error"],
                capture_output=True, text=True, timeout=300, check=False,
            )
            if result.returncode != 0:
                pytest.skip(f"cannot install the Langfuse JS SDK with npm ({JS_SDK}@"
                            f"{JS_SDK_VERSION}): {result.stderr.strip()[-500:]}")
            if not _installed():  # another run may have finished first
                shutil.rmtree(CACHE, ignore_errors=True)
                staging.rename(CACHE)
        except subprocess.TimeoutExpired:
            pytest.skip(f"npm install {JS_SDK}@{JS_SDK_VERSION} took over 300 s")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return CACHE / "node_modules"


def test_official_js_sdk_creates_gets_and_compiles(node_modules: Path) -> None:
    public_key = f"pk-lf-{uuid.uuid4()}"
    with ServerThread(public_key=public_key, secret_key="sk-lf-js") as server:
        result = subprocess.run(
            ["node", str(SCRIPT), server.base_url, public_key, "sk-lf-js"],
            capture_output=True, text=True, timeout=60, check=False,
            env={**os.environ, "NODE_PATH": str(node_modules)},
        )
        assert result.returncode == 0, result.stderr
        out = json.loads(result.stdout.strip().splitlines()[-1])
        counts = server.counter.snapshot()["routes"]
    assert out["created"] == {"name": "js/greet", "version": 1}
    assert out["text"] == {
        "version": 1, "labels": ["production"], "config": {"temperature": 0},
        "compiled": "Hi Ann, welcome to Node.",
    }
    assert out["staging"] == [2, "v2 Bo"]
    assert out["chat"] == [  # a composed chat prompt, resolved by the server
        {"role": "system", "content": "Hi Cy, welcome to JS."},
        {"role": "assistant", "content": "Earlier"},
        {"role": "user", "content": "Why?"},
    ]
    assert out["updated"] == ["production", "staging", "latest"]
    assert out["moved"] == 2
    assert out["missing"] == "Prompt not found: 'js/missing' with label 'production'"
    assert counts == {"create": 3, "get_prompt": 6, "patch": 1}
