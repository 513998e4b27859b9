"""The upstream every benchmark fetches from: the project's local Langfuse-compatible server,
run in a child process so that its CPU time is not charged to the client being measured.

The parent steers it through the server's admin routes over loopback: ``POST /_admin/controls``
(``get_delay_seconds`` for upstream latency, ``get_fail_status`` for an outage) and
``/_admin/requests`` (the request counter). The server runs without keys (it then binds to
loopback only), so every client may send keys of its own.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def spawn_module(module: str, *args: str,
                 env: Mapping[str, str] | None = None) -> subprocess.Popen[str]:
    """``python -m module *args`` in a child process that can import this repo, talking over
    pipes; ``env``: variables set in its environment besides this process's."""
    env = {**os.environ, **(env or {})}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return subprocess.Popen(
        [sys.executable, "-m", module, *args], cwd=REPO, env=env,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )


EXAMPLES = REPO / "examples" / "prompts"
#: How many prompts the server holds besides the examples: ``bench-000``, ``bench-001``...
SEED_COUNT = 100
PUBLIC_KEY, SECRET_KEY = "pk-lf-bench", "sk-lf-bench"
_UNSET: Any = object()


def bench_name(i: int) -> str:
    return f"bench-{i:03d}"


def bench_drafts(count: int = SEED_COUNT) -> list[dict[str, Any]]:
    """Create requests (Langfuse's shape) for the benchmark prompts."""
    return [
        {
            "name": bench_name(i), "type": "text",
            "prompt": f"You are support agent #{i} of {{{{product}}}}. "
                      "Answer {{user}} briefly.",
            "config": {"model": "gpt-4o-mini", "temperature": 0.2},
            "labels": ["production"], "tags": ["bench"],
        }
        for i in range(count)
    ]


class Upstream:
    """The server in a child process. ``with Upstream() as upstream: upstream.base_url``.

    With ``webhook_url`` and ``webhook_secret`` it sends Langfuse's signed prompt-version
    webhooks there (``serve --webhook-url --webhook-secret``)."""

    def __init__(
        self, *, webhook_url: str | None = None, webhook_secret: str | None = None
    ) -> None:
        self.base_url = ""
        self._proc: subprocess.Popen[str] | None = None
        self._args = [] if webhook_url is None else [webhook_url, webhook_secret or ""]

    def __enter__(self) -> Upstream:
        self._proc = spawn_module("devkit.upstream", *self._args)
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            self._stop()
            raise RuntimeError("the benchmark's upstream server did not start")
        self.base_url = json.loads(line)["base_url"]
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop()

    def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        assert proc.stdin is not None
        proc.stdin.close()  # the child exits when its stdin closes
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    def cpu_seconds(self) -> float:
        """CPU time the server process has used so far (from ``/proc/<pid>/stat``)."""
        if self._proc is None:
            return 0.0
        try:
            with open(f"/proc/{self._proc.pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    # -- admin routes (blocking; from async code use the a* versions) -------------------------

    def _admin(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.base_url + path, data=data, method=method,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:  # loopback only
            raw = response.read()
        return json.loads(raw) if raw else None

    def control(self, *, delay: float | None = None, fail_status: int | None = _UNSET) -> None:
        """Set the upstream latency (seconds) and/or the status every GET fails with."""
        changes: dict[str, Any] = {}
        if delay is not None:
            changes["get_delay_seconds"] = delay
        if fail_status is not _UNSET:
            changes["get_fail_status"] = fail_status
        self._admin("POST", "/_admin/controls", changes)

    def requests(self) -> int:
        """GET-prompt requests the server received since the last ``reset()``."""
        snapshot = self._admin("GET", "/_admin/requests")
        return int(snapshot["routes"].get("get_prompt", 0))

    def reset(self) -> None:
        self._admin("DELETE", "/_admin/requests")

    def normal(self) -> None:
        """No latency, no failures, counter at zero."""
        self.control(delay=0.0, fail_status=None)
        self.reset()

    # -- the OpenAI-compatible chat endpoint (``/v1/chat/completions``) -------------------

    def chat_controls(self, **changes: Any) -> None:
        """Set the chat endpoint's controls (``token_delay_seconds``, ``hold_after_chunks``...)."""
        self._admin("POST", "/_admin/chat/controls", changes)

    def chat_streams(self) -> int:
        """Streams the chat endpoint started since the server started."""
        return int(self._admin("GET", "/_admin/chat/requests")["streams"])

    async def acontrol(
        self, *, delay: float | None = None, fail_status: int | None = _UNSET
    ) -> None:
        await asyncio.to_thread(self.control, delay=delay, fail_status=fail_status)

    async def arequests(self) -> int:
        return await asyncio.to_thread(self.requests)

    async def areset(self) -> None:
        await asyncio.to_thread(self.reset)


# -- the child process -------------------------------------------------------------------------

_BENCH_MAX_CONNECTIONS = 8192


async def _serve(webhook_url: str | None, webhook_secret: str | None) -> None:
    from asyncpromptcache.server import PromptDraft, PromptStore, run_server

    store = PromptStore(":memory:")
    try:
        await store.import_dir(EXAMPLES)
        await store.create_many([PromptDraft.from_json(d) for d in bench_drafts()])
        # The benchmarks load it far past a development server's connection limit (1,000
        # concurrent clients, 8 worker processes with their keep-alive pools): the guard would
        # refuse newcomers, the benchmark's own admin requests among them.
        async with run_server(store=store, host="127.0.0.1", webhook_url=webhook_url,
                              webhook_secret=webhook_secret,
                              max_connections=_BENCH_MAX_CONNECTIONS) as server:
            print(json.dumps({"base_url": server.base_url}), flush=True)
            await asyncio.to_thread(sys.stdin.read)  # until the parent closes our stdin
    finally:
        store.close()


if __name__ == "__main__":
    _url, _secret = (sys.argv[1], sys.argv[2]) if len(sys.argv) == 3 else (None, None)
    asyncio.run(_serve(_url, _secret))


# -- prompts on the upstream, as Langfuse's API writes them ------------------------------


def _api(upstream: Upstream, method: str, path: str, body: Any) -> Any:
    auth = base64.b64encode(f"{PUBLIC_KEY}:{SECRET_KEY}".encode()).decode()
    request = urllib.request.Request(
        upstream.base_url + path, method=method, data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Basic {auth}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # loopback only
        return json.loads(response.read())


def create(upstream: Upstream, name: str, body: str, labels: list[str]) -> int:
    """A new version on the local server (Langfuse's create request); its number."""
    created = _api(upstream, "POST", "/api/public/v2/prompts",
                   {"name": name, "type": "text", "prompt": body, "labels": labels})
    return int(created["version"])


def move_label(upstream: Upstream, name: str, version: int, label: str) -> None:
    """Langfuse's PATCH of a version's labels: ``label`` moves to ``version``."""
    _api(upstream, "PATCH", f"/api/public/v2/prompts/{name}/versions/{version}",
         {"newLabels": [label]})


def publish(upstream: Upstream, name: str, body: str) -> int:
    """A new version of ``name`` labelled ``production``; its number."""
    return create(upstream, name, body, ["production"])
