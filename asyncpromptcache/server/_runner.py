"""Running the server: an async context manager, and a background thread for sync code."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractContextManager, asynccontextmanager
from types import TracebackType
from typing import Any, TypeVar

import anyio.from_thread
import attrs
from aiohttp import web

from .._core.errors import ConfigurationError
from .._store._sqlite import PromptStore
from ._app import DEFAULT_PROJECT_ID, check_keys, create_app
from ._controls import RequestCounter, ServerControls
from ._guard import DEFAULT_HEADER_TIMEOUT, DEFAULT_MAX_CONNECTIONS, ConnectionGuard
from ._outbox import check_webhook

__all__ = [
    "RunningServer",
    "ServerThread",
    "basic_auth_header",
    "check_bind",
    "is_loopback_host",
    "run_server",
]

_T = TypeVar("_T")

# In-flight requests get this long to finish on shutdown (aiohttp's default is 60 s).
_SHUTDOWN_TIMEOUT = 2.0


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` is a loopback address (``127.0.0.0/8``, ``::1``) or ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, public_key: str | None, secret_key: str | None) -> None:
    """Raise ``ConfigurationError`` unless the keys and the address make a safe server.

    Keys come in pairs (see ``check_keys``); without keys the server may only listen on a
    loopback address, where nobody but this machine can reach it.
    """
    if not check_keys(public_key, secret_key) and not is_loopback_host(host):
        raise ConfigurationError(
            f"refusing to serve on {host!r} without authentication: anyone who can reach it "
            "could read and change every prompt. Set a public and a secret key (--public-key "
            "and --secret-key, or LANGFUSE_PUBLIC_KEY and LANGFUSE_SECRET_KEY), or bind a "
            "loopback address such as 127.0.0.1."
        )


@attrs.frozen
class RunningServer:
    """A running server: where it listens and its in-process instruments."""

    base_url: str
    host: str
    port: int
    store: PromptStore
    counter: RequestCounter
    controls: ServerControls
    public_key: str | None = None
    secret_key: str | None = attrs.field(default=None, repr=False)
    seeded: int = 0
    connections: ConnectionGuard = attrs.field(factory=ConnectionGuard, repr=False)

    @property
    def auth_headers(self) -> dict[str, str]:
        """``{"Authorization": "Basic ..."}`` for the server's keys; empty when it has none."""
        if self.public_key is None or self.secret_key is None:
            return {}
        return {"Authorization": basic_auth_header(self.public_key, self.secret_key)}


def basic_auth_header(user: str, password: str) -> str:
    """The ``Authorization`` value for HTTP Basic auth (UTF-8, as Langfuse's SDK sends it)."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def _base_url(address: Any) -> str:
    ip = ipaddress.ip_address(address[0])
    if ip.is_unspecified:  # bound to every interface: reach it through loopback here
        ip = ipaddress.ip_address("::1" if ip.version == 6 else "127.0.0.1")
    host = f"[{ip}]" if ip.version == 6 else str(ip)
    return f"http://{host}:{address[1]}"


@asynccontextmanager
async def run_server(
    store: PromptStore | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    public_key: str | None = None,
    secret_key: str | None = None,
    seed_dir: str | os.PathLike[str] | None = None,
    *,
    counter: RequestCounter | None = None,
    controls: ServerControls | None = None,
    project_id: str = DEFAULT_PROJECT_ID,
    access_log: bool = False,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    header_timeout: float = DEFAULT_HEADER_TIMEOUT,
    webhook_url: str | None = None,
    webhook_secret: str | None = None,
) -> AsyncIterator[RunningServer]:
    """Serve the prompt API on ``host:port`` (``port=0``: a free port) for the ``async with``.

    Without ``store`` an in-memory one is made (and closed on exit); a given store is left
    open. ``seed_dir`` is imported first, all or nothing. Without keys, a non-loopback
    ``host`` raises ``ConfigurationError``. At most ``max_connections`` connections are
    open at once, and a new connection gets ``header_timeout`` seconds to send its first
    request's headers (see ``ConnectionGuard``). With ``webhook_url`` and
    ``webhook_secret``, every change to a prompt version is sent there as Langfuse's signed
    prompt-version webhook.
    """
    check_bind(host, public_key, secret_key)
    try:
        guard = ConnectionGuard(max_connections=max_connections, header_timeout=header_timeout)
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None
    owned = store is None
    if store is None:
        store = PromptStore(":memory:")
    try:
        seeded = len(await store.import_dir(seed_dir)) if seed_dir is not None else 0
        counter = counter if counter is not None else RequestCounter()
        controls = controls if controls is not None else ServerControls()
        app = create_app(
            store, public_key=public_key, secret_key=secret_key, counter=counter,
            controls=controls, project_id=project_id, webhook_url=webhook_url,
            webhook_secret=webhook_secret,
        )
        runner_options: dict[str, Any] = {} if access_log else {"access_log": None}
        runner = web.AppRunner(app, shutdown_timeout=_SHUTDOWN_TIMEOUT, **runner_options)
        await runner.setup()
        try:
            # Our own listener instead of web.TCPSite: the guard wraps aiohttp's protocol.
            assert runner.server is not None  # set by setup()
            listener = await asyncio.get_running_loop().create_server(
                guard.wrap(runner.server), host, port, reuse_address=True,
            )
            try:
                address = listener.sockets[0].getsockname()
                yield RunningServer(
                    base_url=_base_url(address), host=host, port=address[1], store=store,
                    counter=counter, controls=controls, public_key=public_key,
                    secret_key=secret_key, seeded=seeded, connections=guard,
                )
            finally:
                listener.close()
        finally:
            await runner.cleanup()
    finally:
        if owned:
            store.close()


class ServerThread:
    """The server on its own event loop in a background thread, for synchronous code.

    ``start()`` returns once it listens (or raises what stopped it); ``stop()`` shuts it down
    and joins the thread. Also a context manager. Same arguments as ``run_server``.
    """

    def __init__(
        self,
        store: PromptStore | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        public_key: str | None = None,
        secret_key: str | None = None,
        seed_dir: str | os.PathLike[str] | None = None,
        *,
        counter: RequestCounter | None = None,
        controls: ServerControls | None = None,
        project_id: str = DEFAULT_PROJECT_ID,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        header_timeout: float = DEFAULT_HEADER_TIMEOUT,
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
    ) -> None:
        check_bind(host, public_key, secret_key)  # fail in the caller's thread, early
        check_webhook(webhook_url, webhook_secret)
        self._options: dict[str, Any] = {
            "store": store, "host": host, "port": port, "public_key": public_key,
            "secret_key": secret_key, "seed_dir": seed_dir, "counter": counter,
            "controls": controls, "project_id": project_id,
            "max_connections": max_connections, "header_timeout": header_timeout,
            "webhook_url": webhook_url, "webhook_secret": webhook_secret,
        }
        self._portal_cm: AbstractContextManager[anyio.from_thread.BlockingPortal] | None = None
        self._portal: anyio.from_thread.BlockingPortal | None = None
        self._server_cm: AbstractContextManager[RunningServer] | None = None
        self._server: RunningServer | None = None

    def start(self) -> ServerThread:
        """Start serving; returns ``self`` once the socket listens."""
        if self._server is not None:
            raise RuntimeError("the server thread is already running")
        portal_cm = anyio.from_thread.start_blocking_portal("asyncio")
        portal = portal_cm.__enter__()
        try:
            server_cm = portal.wrap_async_context_manager(run_server(**self._options))
            server = server_cm.__enter__()
        except BaseException:
            portal_cm.__exit__(*sys.exc_info())
            raise
        self._portal_cm, self._portal = portal_cm, portal
        self._server_cm, self._server = server_cm, server
        return self

    def stop(self) -> None:
        """Stop serving and join the thread. Idempotent."""
        server_cm, portal_cm = self._server_cm, self._portal_cm
        self._server_cm = self._portal_cm = None
        self._server = self._portal = None
        try:
            if server_cm is not None:
                server_cm.__exit__(None, None, None)
        finally:
            if portal_cm is not None:
                portal_cm.__exit__(None, None, None)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def server(self) -> RunningServer:
        """The running server; ``RuntimeError`` when not started."""
        if self._server is None:
            raise RuntimeError("the server thread is not running: call start() first")
        return self._server

    @property
    def base_url(self) -> str:
        """For example ``http://127.0.0.1:54321``."""
        return self.server.base_url

    @property
    def port(self) -> int:
        """The port it listens on."""
        return self.server.port

    @property
    def store(self) -> PromptStore:
        """The prompt store (its async methods run on any event loop; see ``call``)."""
        return self.server.store

    @property
    def counter(self) -> RequestCounter:
        """The request counter (thread-safe)."""
        return self.server.counter

    @property
    def controls(self) -> ServerControls:
        """The server controls; setting a field takes effect on the next request."""
        return self.server.controls

    @property
    def public_key(self) -> str | None:
        """The public key clients must send, if any."""
        return self.server.public_key

    @property
    def secret_key(self) -> str | None:
        """The secret key clients must send, if any."""
        return self.server.secret_key

    def call(self, func: Callable[..., Awaitable[_T]], *args: Any) -> _T:
        """Run ``await func(*args)`` on the server's event loop and return its result."""
        if self._portal is None:
            raise RuntimeError("the server thread is not running: call start() first")
        return self._portal.call(func, *args)

    def __repr__(self) -> str:
        state = self._server.base_url if self._server is not None else "stopped"
        return f"ServerThread({state})"
