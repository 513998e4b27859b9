"""The ``serve`` command line (``add_serve_arguments`` + ``run_serve``) in a real process."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from asyncpromptcache.server import add_serve_arguments, basic_auth_header

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "prompts"
# What ``python -m asyncpromptcache serve`` runs, without depending on __main__.
SNIPPET = (
    "import argparse, sys\n"
    "from asyncpromptcache.server import add_serve_arguments, run_serve\n"
    "parser = argparse.ArgumentParser(prog='serve')\n"
    "add_serve_arguments(parser)\n"
    "sys.exit(run_serve(parser.parse_args()))\n"
)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LANGFUSE_")}
    return {**env, **extra}


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", SNIPPET, *args], capture_output=True, text=True, timeout=20,
        env=env or clean_env(),
    )


@contextmanager
def serving(*args: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """Start the command, yield its base URL, stop it with Ctrl-C and check it exits cleanly."""
    process = subprocess.Popen(
        [sys.executable, "-c", SNIPPET, "--port", "0", *args], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env=env or clean_env(),
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # "" if it died: no hang
        match = re.search(r"http://127\.0\.0\.1:\d+", line)
        assert match, (line, process.stderr.read() if process.stderr else "")
        yield match.group(0)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, object]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.load(error)


def test_defaults_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LANGFUSE_PUBLIC_KEY", raising=False)
    monkeypatch.delenv("LANGFUSE_SECRET_KEY", raising=False)
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    args = parser.parse_args([])
    assert (args.host, args.port, args.db, args.seed, args.public_key, args.secret_key,
            args.delay_ms) == ("127.0.0.1", 3000, ":memory:", None, None, None, 0.0)
    monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", "pk-env")
    monkeypatch.setenv("LANGFUSE_SECRET_KEY", "sk-env")
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    args = parser.parse_args(["--public-key", "pk-arg"])
    assert (args.public_key, args.secret_key) == ("pk-arg", "sk-env")
    assert "sk-env" not in parser.format_help()


def test_non_loopback_without_keys_is_refused() -> None:
    for host in ("0.0.0.0", "::", "192.0.2.1"):
        result = run("--host", host, "--port", "0")
        assert result.returncode == 2
        assert "refusing to serve" in result.stderr and "--public-key" in result.stderr
        assert result.stdout == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--public-key", "pk"], "both a public key and a secret key"),
        (["--db", "/nonexistent-dir/sub/prompts.db"], "cannot open the database"),
        (["--seed", "/nonexistent-dir"], "is not a directory"),
        (["--delay-ms", "-5"], "--delay-ms"),
    ],
)
def test_bad_options_exit_2(args: list[str], message: str) -> None:
    result = run("--port", "0", *args)
    assert (result.returncode, result.stdout) == (2, "")
    assert message in result.stderr


def test_busy_port_exits_1() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = run("--port", str(taken.getsockname()[1]))
    assert result.returncode == 1
    assert "error:" in result.stderr


def test_serve_seed_and_persist(tmp_path: Path) -> None:
    db = tmp_path / "prompts.db"
    with serving("--seed", str(EXAMPLES), "--db", str(db)) as base_url:
        status, prompt = get(f"{base_url}/api/public/v2/prompts/team%2Fagent%2Fgreet")
        assert status == 200 and isinstance(prompt, dict)
        assert prompt["name"] == "team/agent/greet"
        assert get(f"{base_url}/api/public/health")[0] == 200
    assert db.exists()
    # Started again on the same file: the prompts are still there, and not seeded twice.
    with serving("--seed", str(EXAMPLES), "--db", str(db)) as base_url:
        status, page = get(f"{base_url}/api/public/v2/prompts?name=movie-critic")
        assert status == 200 and isinstance(page, dict)
        assert page["data"][0]["versions"] == [1, 2]


def test_serve_with_keys_from_the_environment() -> None:
    env = clean_env(LANGFUSE_PUBLIC_KEY="pk-lf-cli", LANGFUSE_SECRET_KEY="sk-lf-cli")
    with serving("--seed", str(EXAMPLES), env=env) as base_url:
        url = f"{base_url}/api/public/v2/prompts/movie-critic"
        status, body = get(url)
        assert status == 401 and isinstance(body, dict)
        assert body["error"] == "UnauthorizedError"
        auth = {"Authorization": basic_auth_header("pk-lf-cli", "sk-lf-cli")}
        assert get(url, auth)[0] == 200


def test_sigterm_stops_cleanly() -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", SNIPPET, "--port", "0"], stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True, env=clean_env(),
    )
    try:
        assert process.stdout is not None
        assert "http://127.0.0.1:" in process.stdout.readline()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
