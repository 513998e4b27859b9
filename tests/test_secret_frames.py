"""The secret key where error reporters and debuggers look.

Sentry and its peers record the local variables of every frame of a traceback (chained
causes included), each by its ``repr``, walking into dicts, lists and tuples. So the secret
key and the Basic header must never be a plain local of a frame that can raise: they live in
a ``Secret`` whose ``repr`` and ``str`` hide them. And nothing the clients keep (walked
attribute by attribute, as a debugger or a heap dump shows it) holds them outside a
``Secret``, nor a copy of the whole environment.
"""

from __future__ import annotations

import functools
import pickle
import types
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

import aiohttp
import pytest

from asyncpromptcache import (
    AsyncPromptClient,
    FetchError,
    PromptCacheError,
    PromptClient,
    UpstreamError,
)
from asyncpromptcache._core.secret import Secret
from asyncpromptcache.response import OpenAIChatProducer
from asyncpromptcache.server import run_server

from .faultserver import FaultServer, fault_server, fault_server_in_thread
from .helpers import NEEDLES, PUBLIC, SECRET, exception_texts, forwarding_proxy

MARKER = "unrelated-variable-marker-5e1f"  # a variable of the environment the SDK never reads


def assert_clean(text: str, where: str) -> None:
    for needle in [*NEEDLES, MARKER]:
        assert needle not in text, f"{needle!r} found in {where}: {text[:200]!r}"


def check_reported(value: Any, where: str, depth: int = 0) -> None:
    """As an error reporter serializes a local: containers walked, anything else by repr."""
    if depth > 6:
        return
    if isinstance(value, Mapping):
        for key, item in list(value.items()):
            assert_clean(repr(key), where)
            check_reported(item, f"{where}[{key!r}]", depth + 1)
    elif isinstance(value, list | tuple | set | frozenset):
        for index, item in enumerate(list(value)):
            check_reported(item, f"{where}[{index}]", depth + 1)
    else:
        assert_clean(safe(repr, value), where)
        assert_clean(safe(str, value), where)


def safe(show: Any, value: Any) -> str:
    try:
        return str(show(value))
    except Exception:  # an object half built when its constructor raised: reporters skip it
        return ""


def check_frames(error: BaseException) -> int:
    """Every local of every frame of ``error``'s traceback and of its chain. Returns how
    many frames were seen."""
    frames = 0
    todo: list[BaseException | None] = [error]
    seen: set[int] = set()
    while todo:
        exc = todo.pop()
        if exc is None or id(exc) in seen:
            continue
        seen.add(id(exc))
        tb = exc.__traceback__
        while tb is not None:
            code = tb.tb_frame.f_code
            # The test's own frames hold what the test passed: not the SDK's to hide.
            if code.co_filename == __file__:
                tb = tb.tb_next
                continue
            for name, value in tb.tb_frame.f_locals.items():
                check_reported(value, f"local {name!r} of {code.co_name} ({code.co_filename})")
            frames += 1
            tb = tb.tb_next
        todo += [exc.__cause__, exc.__context__]
    for text in exception_texts(error):
        assert_clean(text, "the error's texts")
    return frames


_LEAVES = (str, bytes, int, float, complex, bool, type(None), types.ModuleType, type,
           types.BuiltinFunctionType, types.CodeType)


def check_held(root: object, where: str) -> int:
    """Everything reachable from ``root`` through containers, attributes (``__dict__`` and
    slots), partials, bound methods and closures: no plain copy of the secret or the marker,
    and each ``Secret`` met hides its value. Returns how many objects were seen."""
    seen: set[int] = set()
    todo: list[tuple[object, str, int]] = [(root, where, 0)]
    while todo:
        value, path, depth = todo.pop()
        if id(value) in seen or depth > 12:
            continue
        seen.add(id(value))
        if isinstance(value, Secret):
            assert repr(value) == "Secret('***')" and str(value) == "***"
            continue  # the one place the secret may live
        if isinstance(value, str | bytes):
            assert_clean(value if isinstance(value, str) else value.decode("latin-1"), path)
            continue
        if isinstance(value, _LEAVES):
            continue
        children: list[tuple[object, str]] = []
        if isinstance(value, Mapping):
            try:
                items = list(value.items())
            except Exception:  # a mapping of another thread's changing state
                items = []
            children += [(k, f"{path} key") for k, _ in items]
            children += [(v, f"{path}[{k!r}]") for k, v in items]
        elif isinstance(value, list | tuple | set | frozenset):
            children += [(v, f"{path}[{i}]") for i, v in enumerate(list(value))]
        if isinstance(value, functools.partial):
            children += [(value.func, f"{path}.func"), (value.args, f"{path}.args"),
                         (value.keywords, f"{path}.keywords")]
        if isinstance(value, types.MethodType):
            children.append((value.__self__, f"{path}.__self__"))
        if isinstance(value, types.FunctionType):
            cells = value.__closure__ or ()
            children += [(c.cell_contents, f"{path} closure") for c in cells
                         if _has_contents(c)]
            continue
        attributes = getattr(value, "__dict__", None)
        if isinstance(attributes, dict):
            children += [(v, f"{path}.{k}") for k, v in list(attributes.items())]
        for cls in type(value).__mro__:
            for slot in getattr(cls, "__slots__", ()):
                if isinstance(slot, str) and hasattr(value, slot):
                    children.append((getattr(value, slot), f"{path}.{slot}"))
        todo += [(child, name, depth + 1) for child, name in children]
    return len(seen)


def _has_contents(cell: types.CellType) -> bool:
    try:
        cell.cell_contents  # noqa: B018
    except ValueError:
        return False
    return True


@pytest.fixture(autouse=True)
def environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNRELATED_TOKEN", MARKER)
    monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", PUBLIC)
    monkeypatch.setenv("LANGFUSE_SECRET_KEY", SECRET)


@pytest.fixture
async def server() -> AsyncIterator[FaultServer]:
    async with fault_server() as s:
        s.put("greet", "Hello")
        yield s


@pytest.mark.anyio
@pytest.mark.parametrize("fault", ["401", "hang", "drop", "reset-mid-body", "malformed",
                                   "oversized", "down"])
@pytest.mark.parametrize("keys_from", ["arguments", "environment"])
async def test_frames_of_a_failing_fetch_hold_no_secret(
    server: FaultServer, fault: str, keys_from: str
) -> None:
    keys: dict[str, Any] = (
        {"public_key": PUBLIC, "secret_key": SECRET} if keys_from == "arguments" else {})
    client = AsyncPromptClient(base_url=server.base_url, fetch_timeout_seconds=0.2,
                               max_retries=0, **keys)
    async with client:
        await client.get_prompt("greet")  # a session with the credentials is in use
        if fault == "down":
            await server.go_down()
        else:
            server.fault = fault
        with pytest.raises(FetchError) as info:
            await client.get_prompt("greet", version=1)
        # Our frames and aiohttp's (chained) are all there, each checked.
        assert check_frames(info.value) >= 4
        assert check_held(client, "client") > 100
    check_held(client, "closed client")


def test_configuration_errors_hold_no_secret_in_their_frames() -> None:
    attempts: list[Callable[[], object]] = [
        lambda: AsyncPromptClient(public_key=PUBLIC, secret_key=SECRET, max_size=0),
        lambda: AsyncPromptClient(public_key=PUBLIC, secret_key=SECRET, base_url="ftp://x"),
        lambda: AsyncPromptClient(max_stale_seconds=float("nan")),  # keys from os.environ
        lambda: AsyncPromptClient(env={"LANGFUSE_TIMEOUT": "nan", "LANGFUSE_PUBLIC_KEY": PUBLIC,
                                       "LANGFUSE_SECRET_KEY": SECRET}),
        lambda: PromptClient(public_key=PUBLIC, secret_key=SECRET, refresh_backoff_seconds=-1),
        lambda: PromptClient(max_size=0),
        lambda: OpenAIChatProducer(api_key=SECRET, base_url="ftp://x"),
        lambda: OpenAIChatProducer(api_key=SECRET, base_url="http://127.0.0.1:port"),
        lambda: OpenAIChatProducer(api_key=SECRET, proxy="http://user:pw@"),
    ]
    for attempt in attempts:
        with pytest.raises(PromptCacheError) as info:
            attempt()
        assert check_frames(info.value) >= 2


@pytest.fixture
def sync_server() -> Iterator[FaultServer]:
    with fault_server_in_thread() as s:
        s.put("greet", "Hello")
        yield s


@pytest.mark.parametrize("keys_from", ["arguments", "environment"])
def test_the_sync_facade_keeps_no_secret_and_no_environment(
    sync_server: FaultServer, keys_from: str
) -> None:
    keys: dict[str, Any] = (
        {"public_key": PUBLIC, "secret_key": SECRET} if keys_from == "arguments" else {})
    with PromptClient(base_url=sync_server.base_url, fetch_timeout_seconds=0.2,
                      max_retries=0, **keys) as client:
        assert check_held(client, "sync client") > 20  # not started yet
        client.get_prompt("greet")
        assert check_held(client, "sync client") > 100  # its loop, portal and session
        sync_server.fault = "401"
        with pytest.raises(FetchError) as info:
            client.get_prompt("greet", version=1)
        check_frames(info.value)


def test_secret_hides_its_value() -> None:
    secret = Secret(SECRET)
    shown = [repr(secret), str(secret), f"{secret}", f"{secret!r}", "{}".format(secret)]  # noqa: UP032
    assert all(SECRET not in text for text in shown)
    assert secret.reveal() == SECRET and secret == Secret(SECRET) and secret != Secret("x")
    with pytest.raises(TypeError):
        pickle.dumps(secret)


CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


async def failure(llm: OpenAIChatProducer, fault: str) -> UpstreamError:
    async def request() -> None:
        if fault.endswith("-whole"):
            await llm.complete(CHAT)
        else:
            async for _ in llm.stream(CHAT):
                pass

    with pytest.raises(UpstreamError) as info:
        await request()
    return info.value


@pytest.mark.anyio
@pytest.mark.parametrize("fault", ["down", "401", "disconnect", "truncate", "held",
                                   "down-whole", "401-whole"])
@pytest.mark.parametrize("proxied", [False, True])
async def test_frames_of_a_failing_openai_request_hold_no_api_key(
    fault: str, proxied: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The API key is the secret here; the proxy's credentials (from the environment) too.
    async with run_server() as server, forwarding_proxy() as proxy:
        if proxied:
            monkeypatch.setenv("HTTP_PROXY", proxy.url.replace("//", f"//{PUBLIC}:{SECRET}@"))
        llm = OpenAIChatProducer(base_url=server.base_url + "/v1", api_key=SECRET,
                                 read_timeout_seconds=0.3)
        assert [c async for c in llm.stream(CHAT)]  # a session with the key is in use
        assert len(proxy.seen) == proxied
        if not fault.startswith("down"):
            controls: dict[str, Any] = (
                {"fail_status": 401} if fault.startswith("401") else
                {"hold_after_chunks": 1} if fault == "held" else  # the read timeout ends it
                {"fail_after_chunks": 1, "fail_mode": fault.removesuffix("-whole")})
            async with aiohttp.ClientSession() as http:
                async with http.post(server.base_url + "/_admin/chat/controls",
                                     json=controls) as answer:
                    assert answer.status == 200
                error = await failure(llm, fault)
                async with http.post(server.base_url + "/_admin/chat/release") as answer:
                    assert answer.status == 204
    if fault.startswith("down"):
        error = await failure(llm, fault)
    try:
        # Our frames, and aiohttp's when it raised (chained), are all there, each checked.
        assert check_frames(error) >= (3 if fault.startswith("down") else 1)
        assert check_held(llm, "producer") > 20
    finally:
        await llm.aclose()
    check_held(llm, "closed producer")
