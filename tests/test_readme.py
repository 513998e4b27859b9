"""What the README promises a new user: its code samples run against the shipped example
prompts and compile them completely, every CLI command has a description, and log lines say
where they come from."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from asyncpromptcache import ChatPrompt, TextPrompt
from asyncpromptcache.server import ServerThread

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
SAMPLES = re.findall(r"```python\n(.*?)```", README, flags=re.DOTALL)


def _run_sample(code: str) -> None:
    if "await " in code or "async with" in code:
        body = textwrap.indent(code, "    ")
        namespace: dict[str, Any] = {}
        exec(compile(f"async def _sample():\n{body}", "README.md", "exec"), namespace)
        asyncio.run(namespace["_sample"]())
    else:
        exec(compile(code, "README.md", "exec"), {})


def test_readme_samples_compile_the_shipped_prompts_completely(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert len(SAMPLES) >= 2
    compiled: list[Any] = []
    for cls in (TextPrompt, ChatPrompt):
        original = cls.compile

        def recording(self: Any, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            result = _original(self, *args, **kwargs)
            compiled.append(result)
            return result

        monkeypatch.setattr(cls, "compile", recording)
    with ServerThread(public_key="pk-readme", secret_key="sk-readme",
                      seed_dir=ROOT / "examples" / "prompts") as server:
        monkeypatch.delenv("LANGFUSE_HOST", raising=False)
        monkeypatch.setenv("LANGFUSE_BASE_URL", server.base_url)
        monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", "pk-readme")
        monkeypatch.setenv("LANGFUSE_SECRET_KEY", "sk-readme")
        for code in SAMPLES:
            _run_sample(code)
        assert server.counter.get("get_prompt") == 3  # real prompts, no fallback
    assert len(compiled) == sum(code.count(".compile(") for code in SAMPLES) == 3
    for result in compiled:
        texts = [result] if isinstance(result, str) else [
            message.get("content", "") for message in result
        ]
        for text in texts:
            assert "{{" not in text and "}}" not in text, text
    assert compiled[0] == "As a expert movie critic, do you like Dune? Answer in one paragraph."


def _cli(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "asyncpromptcache", *args],
                            capture_output=True, text=True, timeout=60, check=True)
    return result.stdout


def test_cli_help_describes_each_command() -> None:
    top = _cli("--help")
    commands = re.findall(r"^    (\w+)\s+(\S.*)$", top, flags=re.MULTILINE)
    assert {name for name, _ in commands} == {"serve", "demo"}
    for name, summary in commands:
        assert len(summary) > 20, (name, summary)
        page = _cli(name, "--help")
        description = page.split("\n\n")[1]
        assert len(description) > 80, (name, page)
    serve = _cli("serve", "--help")
    for option in ("--seed", "--db", "--webhook-url", "--webhook-secret", "--max-connections",
                   "--header-timeout", "--delay-ms", "--public-key"):
        assert option in serve


def test_log_lines_name_their_logger_and_level_without_app_logging() -> None:
    code = ("import logging, asyncpromptcache\n"
            "logging.getLogger('asyncpromptcache').warning('refresh of %r failed', 'greet')\n"
            "logging.getLogger('asyncpromptcache').info('not at warning level')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=True)
    assert result.stderr == "WARNING asyncpromptcache: refresh of 'greet' failed\n"
    configured = ("import logging, asyncpromptcache\n"
                  "logging.basicConfig(format='app|%(levelname)s|%(name)s|%(message)s')\n"
                  "logging.getLogger('asyncpromptcache').warning('once')\n")
    result = subprocess.run([sys.executable, "-c", configured], capture_output=True,
                            text=True, timeout=60, check=True)
    assert result.stderr == "app|WARNING|asyncpromptcache|once\n"  # the app's format, once


def test_readme_opens_with_what_it_is_and_cites_nothing_outside_the_repo() -> None:
    assert README.startswith("# asyncpromptcache\n\n")
    first_paragraph = README.split("\n\n")[1]
    assert not first_paragraph.startswith("```") and "asyncio" in first_paragraph
    assert "filler text" in README.split("## ")[0]  # the demo's answers are not a model's
    for outside in ("SPEC", "DESIGN.md", "../shared", "issue "):
        assert outside not in README, outside
