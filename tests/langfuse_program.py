"""One program written against the Langfuse Python SDK's prompt API, run by
tests/test_langfuse_dropin.py with either client: ``python tests/langfuse_program.py official``
imports ``from langfuse import Langfuse``, ``... ours`` imports
``from asyncpromptcache.langfuse import Langfuse``. Nothing else differs. It prints, as JSON,
every observation it makes (an exception as whether it was raised, and whether it is a
ValueError); the keys and the server's URL come from the environment.

``observe`` and ``OutOfBand`` are shared with the awaited run of ``AsyncLangfuse``.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import urllib.request
from collections.abc import Callable
from typing import Any


def shape(value: Any) -> Any:
    """``value`` as JSON that keeps its types: lists, dicts and tuples are told apart, and any
    other object is its class name and repr (a LangChain ``MessagesPlaceholder``)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list):
        return [shape(v) for v in value]
    if isinstance(value, tuple):
        return {"tuple": [shape(v) for v in value]}
    if isinstance(value, dict):
        return {"dict": {str(k): shape(v) for k, v in value.items()}}
    return {"class": type(value).__name__, "repr": repr(value)}


def describe(prompt: Any) -> dict[str, Any]:
    """Everything a program reads of a prompt object, with the types it reads them as."""
    return {
        "class": type(prompt).__name__,
        "name": prompt.name,
        "version": prompt.version,
        "prompt": shape(prompt.prompt),
        "config": shape(prompt.config),
        "labels": shape(prompt.labels),
        "tags": shape(prompt.tags),
        "commit_message": prompt.commit_message,
        "is_fallback": prompt.is_fallback,
        "variables": shape(prompt.variables),
    }


class Observations:
    def __init__(self) -> None:
        self.seen: list[Any] = []

    def add(self, what: str, value: Any) -> None:
        self.seen.append([what, value])

    def prompt(self, what: str, prompt: Any) -> None:
        self.add(what, describe(prompt))

    def raises(self, what: str, call: Callable[[], Any]) -> None:
        try:
            value = call()
        except Exception as exc:
            self.add(what, {"raised": True, "ValueError": isinstance(exc, ValueError)})
        else:
            self.add(what, {"raised": False, "value": describe(value)})


class OutOfBand:
    """Another writer: creates versions on the server without going through the client."""

    def __init__(self, base_url: str, public_key: str, secret_key: str) -> None:
        self.base_url = base_url
        token = base64.b64encode(f"{public_key}:{secret_key}".encode()).decode()
        self.headers = {"Authorization": f"Basic {token}", "Content-Type": "application/json"}

    def create(self, **body: Any) -> None:
        request = urllib.request.Request(
            f"{self.base_url}/api/public/v2/prompts", data=json.dumps(body).encode(),
            headers=self.headers, method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status in (200, 201)


HISTORY = [
    {"role": "user", "content": "Hi, I am {{user}}"},
    {"role": "assistant", "content": "Hello", "tool_calls": [{"id": "1"}]},
]


def program(Langfuse: Any, env: dict[str, str]) -> list[Any]:
    obs = Observations()
    other = OutOfBand(env["base_url"], env["public_key"], env["secret_key"])
    langfuse = Langfuse(
        public_key=env["public_key"], secret_key=env["secret_key"], base_url=env["base_url"],
        timeout=5, tracing_enabled=False,
    )
    obs.add("auth_check", langfuse.auth_check())

    # Text prompts: label (default production), other labels, versions, latest.
    greeting = langfuse.get_prompt("greeting")
    obs.prompt("greeting", greeting)
    obs.add("compile", greeting.compile(name="Ann", place="Paris"))
    obs.add("compile partial", greeting.compile(name="Ann"))
    obs.add("compile none", greeting.compile(name=None, place=42))
    obs.add("compile nothing", greeting.compile())
    obs.add("compile nested", greeting.compile(name="{{place}}", place="x"))
    obs.add("langchain", shape(greeting.get_langchain_prompt()))
    obs.add("langchain precompiled", shape(greeting.get_langchain_prompt(name="Ann")))
    obs.add("prompt[:5]", greeting.prompt[:5])
    staging = langfuse.get_prompt("greeting", label="staging")
    obs.prompt("staging", staging)
    obs.prompt("latest", langfuse.get_prompt("greeting", label="latest"))
    first = langfuse.get_prompt("greeting", version=1)
    obs.prompt("version 1", first)
    obs.add("equality", [greeting == first, greeting == staging, greeting != staging,
                         greeting == langfuse.get_prompt("greeting"), greeting == "greeting"])
    json_prompt = langfuse.get_prompt("json-answer")
    obs.add("langchain json", shape(json_prompt.get_langchain_prompt()))
    obs.add("json config", shape(json_prompt.config))
    obs.prompt("in a folder", langfuse.get_prompt("team/agent", cache_ttl_seconds=0))

    # Chat prompts, with a placeholder.
    support = langfuse.get_prompt("support", type="chat")
    obs.prompt("support", support)
    obs.add("first message", support.prompt[0]["content"])
    obs.add("roles", [m.get("role") for m in support.prompt])
    obs.add("chat compile", shape(support.compile(user="Ann", product="Acme",
                                                  question="Why?", history=HISTORY)))
    obs.add("chat compile, placeholder left", shape(support.compile(user="Ann")))
    obs.add("chat compile, not a list", shape(support.compile(history="oops")))
    obs.add("chat langchain", shape(support.get_langchain_prompt()))
    obs.add("chat langchain filled", shape(support.get_langchain_prompt(history=HISTORY)))
    obs.add("chat equality", [support == langfuse.get_prompt("support", type="chat"),
                              support == langfuse.get_prompt("support", type="chat", version=1),
                              support == greeting])
    obs.prompt("chat asked as text", langfuse.get_prompt("support"))
    obs.prompt("text asked as chat", langfuse.get_prompt("greeting", type="chat"))

    # Errors.
    obs.raises("missing", lambda: langfuse.get_prompt("missing", max_retries=0))
    obs.raises("missing label", lambda: langfuse.get_prompt("greeting", label="nope",
                                                            max_retries=0))
    obs.raises("missing version", lambda: langfuse.get_prompt("greeting", version=99,
                                                              max_retries=0))
    obs.raises("version and label", lambda: langfuse.get_prompt("greeting", version=1,
                                                                label="staging"))
    obs.raises("empty name", lambda: langfuse.get_prompt(""))

    # Fallbacks: used when the fetch fails with nothing cached.
    obs.prompt("text fallback", langfuse.get_prompt("missing", fallback="Hi {{name}}",
                                                    max_retries=0))
    obs.prompt("fallback with a label", langfuse.get_prompt(
        "missing", label="staging", fallback="Hi", max_retries=0))
    obs.prompt("fallback with a version", langfuse.get_prompt(
        "missing", version=4, fallback="Hi", max_retries=0))
    chat_fallback = langfuse.get_prompt(
        "missing", type="chat", fallback=[{"role": "system", "content": "Be {{tone}}"}],
        max_retries=0)
    obs.prompt("chat fallback", chat_fallback)
    obs.add("chat fallback compile", shape(chat_fallback.compile(tone="kind")))
    obs.prompt("fallback not needed", langfuse.get_prompt("greeting", fallback="unused"))
    obs.raises("empty fallback", lambda: langfuse.get_prompt("missing", fallback="",
                                                             max_retries=0))

    # Writes.
    created = langfuse.create_prompt(
        name="greeting", prompt="Hey {{name}}, v3", labels=["production"], tags=["demo"],
        config={"temperature": 0.2}, commit_message="third",
    )
    obs.prompt("created", created)
    obs.prompt("production after create", langfuse.get_prompt("greeting"))
    obs.prompt("latest after create", langfuse.get_prompt("greeting", label="latest"))
    chat_created = langfuse.create_prompt(
        name="support", type="chat", labels=["staging"],
        prompt=[{"role": "system", "content": "New {{user}}"},
                {"type": "placeholder", "name": "history"}],
    )
    obs.prompt("chat created", chat_created)
    obs.prompt("chat staging", langfuse.get_prompt("support", type="chat", label="staging"))
    obs.prompt("new name", langfuse.create_prompt(name="fresh", prompt="New"))
    obs.raises("chat prompt not a list", lambda: langfuse.create_prompt(
        name="bad", type="chat", prompt="not a list"))
    obs.raises("text prompt not a str", lambda: langfuse.create_prompt(
        name="bad", prompt=[{"role": "user", "content": "x"}]))
    updated = langfuse.update_prompt(name="greeting", version=1, new_labels=["production"])
    obs.add("updated", [updated.name, updated.version, updated.labels, updated.prompt,
                        updated.config, updated.tags, updated.commit_message])
    obs.prompt("production after update", langfuse.get_prompt("greeting"))
    obs.prompt("version 3 after update", langfuse.get_prompt("greeting", version=3))
    obs.raises("update a missing version", lambda: langfuse.update_prompt(
        name="greeting", version=42, new_labels=["x"]))

    # Caching: a change made elsewhere is seen after the TTL, with cache_ttl_seconds=0, or
    # after clear_prompt_cache().
    other.create(name="greeting", type="text", prompt="v4 from elsewhere", labels=["production"])
    obs.prompt("cached after a change elsewhere", langfuse.get_prompt("greeting"))
    obs.prompt("cache_ttl_seconds=0", langfuse.get_prompt("greeting", cache_ttl_seconds=0))
    other.create(name="greeting", type="text", prompt="v5 from elsewhere", labels=["production"])
    obs.prompt("staging still cached", langfuse.get_prompt("greeting", label="staging"))
    langfuse.clear_prompt_cache()
    obs.prompt("after clear_prompt_cache", langfuse.get_prompt("greeting"))
    obs.raises("missing before it exists", lambda: langfuse.get_prompt("later", max_retries=0))
    other.create(name="later", type="text", prompt="Now here", labels=["production"])
    obs.prompt("created elsewhere after a miss", langfuse.get_prompt("later"))

    obs.add("flush", langfuse.flush())
    obs.add("shutdown", langfuse.shutdown())
    return obs.seen


SEED: list[dict[str, Any]] = [
    {"name": "greeting", "type": "text", "prompt": "Hello {{name}}, welcome to {{ place }}!",
     "labels": ["production"], "config": {"model": "gpt-4o-mini"}, "commitMessage": "first"},
    {"name": "greeting", "type": "text", "prompt": "Hi {{name}}", "labels": ["staging"],
     "tags": ["beta"]},
    {"name": "json-answer", "type": "text", "labels": ["production"],
     "prompt": 'Answer as {"answer": "{{answer}}", "nested": {"a": 1}} about {{topic}}',
     "config": {"response_format": {"type": "json_object"}, "n": [1, 2]}},
    {"name": "team/agent", "type": "text", "prompt": "In a folder: {{x}}",
     "labels": ["production"]},
    {"name": "support", "type": "chat", "labels": ["production"],
     "config": {"temperature": 0},
     "prompt": [{"role": "system", "content": "You support {{user}} on {{product}}."},
                {"type": "placeholder", "name": "history"},
                {"type": "chatmessage", "role": "user", "content": "{{question}}"}]},
]


def seed(other: OutOfBand) -> None:
    for body in SEED:
        other.create(**body)


def _record_connections(into: list[str]) -> None:
    """Every host this process resolves or connects to, from the interpreter's audit events
    (the test checks that all are loopback)."""

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event == "socket.connect" and isinstance(args[1], tuple):
            into.append(str(args[1][0]))
        elif event == "socket.getaddrinfo":
            into.append(str(args[0]))

    sys.addaudithook(hook)


def main() -> None:
    which = sys.argv[1]
    hosts: list[str] = []
    _record_connections(hosts)
    if which == "official":
        from langfuse import Langfuse
    else:
        from asyncpromptcache.langfuse import Langfuse  # type: ignore[assignment]
    env = {
        "base_url": os.environ["PROGRAM_BASE_URL"],
        "public_key": os.environ["PROGRAM_PUBLIC_KEY"],
        "secret_key": os.environ["PROGRAM_SECRET_KEY"],
    }
    observed = program(Langfuse, env)
    print(json.dumps({"observed": observed, "hosts": sorted(set(hosts))}))


if __name__ == "__main__":
    main()
