"""``serve``: the local prompt server on the command line."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sqlite3
import sys
from contextlib import ExitStack

import anyio

from .._core.errors import ConfigurationError
from .._store._schema import PromptValidationError
from .._store._sqlite import PromptStore
from ._guard import DEFAULT_HEADER_TIMEOUT, DEFAULT_MAX_CONNECTIONS, ConnectionGuard
from ._llms import describe_llm_endpoints
from ._outbox import check_webhook
from ._runner import check_bind, run_server

__all__ = ["add_serve_arguments", "run_serve"]


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``serve`` options to ``parser`` (and name the fake LLM endpoints in its
    epilog)."""
    parser.epilog = (f"Beside the prompt API: {describe_llm_endpoints()}, deterministic, "
                     "streaming (SSE) and not, for the response cache without an API key.")
    parser.add_argument(
        "--host", default="127.0.0.1",
        help="address to bind (default: %(default)s; a non-loopback address needs keys)",
    )
    parser.add_argument(
        "--port", type=int, default=3000, help="port to bind, 0 for a free one (default: 3000)"
    )
    parser.add_argument(
        "--db", default=":memory:", metavar="PATH",
        help="SQLite file, created if missing (default: in memory, gone on exit)",
    )
    parser.add_argument(
        "--seed", metavar="DIR",
        help="import every *.json prompt file (create-request shape) of DIR at start",
    )
    parser.add_argument(
        "--public-key", default=os.environ.get("LANGFUSE_PUBLIC_KEY") or None,
        help="require HTTP Basic auth with this user (default: $LANGFUSE_PUBLIC_KEY)",
    )
    parser.add_argument(
        "--secret-key", default=os.environ.get("LANGFUSE_SECRET_KEY") or None,
        help="... and this password (default: $LANGFUSE_SECRET_KEY)",
    )
    parser.add_argument(
        "--delay-ms", type=float, default=0.0, metavar="MS",
        help="delay every GET of a prompt, to play a distant server (default: 0)",
    )
    parser.add_argument(
        "--max-connections", type=int, default=DEFAULT_MAX_CONNECTIONS, metavar="N",
        help="most connections open at once; past it, one still sending its headers is "
        "dropped (default: %(default)s)",
    )
    parser.add_argument(
        "--header-timeout", type=float, default=DEFAULT_HEADER_TIMEOUT, metavar="SECONDS",
        help="close a new connection that takes longer to send its first request's "
        "headers (default: %(default)s)",
    )
    parser.add_argument(
        "--webhook-url", metavar="URL",
        help="post Langfuse's signed prompt-version webhook here on every create, label "
        "change and delete (needs --webhook-secret)",
    )
    parser.add_argument(
        "--webhook-secret", metavar="SECRET",
        default=os.environ.get("LANGFUSE_WEBHOOK_SECRET") or None,
        help="sign the webhooks with this secret (default: $LANGFUSE_WEBHOOK_SECRET)",
    )
    parser.add_argument(
        "--access-log", action="store_true", help="log every request to stderr"
    )


def run_serve(args: argparse.Namespace) -> int:
    """Run the server until Ctrl-C or SIGTERM; the exit status (0, or 2 for bad options)."""
    try:
        check_bind(args.host, args.public_key, args.secret_key)
        ConnectionGuard(max_connections=args.max_connections, header_timeout=args.header_timeout)
        check_webhook(args.webhook_url, args.webhook_secret if args.webhook_url else None)
    except (ConfigurationError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not 0 <= args.delay_ms <= 3_600_000:
        print("error: --delay-ms must be from 0 to 3600000", file=sys.stderr)
        return 2
    if args.access_log:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        store = PromptStore(args.db)
    except sqlite3.Error as exc:
        print(f"error: cannot open the database {args.db!r}: {exc}", file=sys.stderr)
        return 2
    try:
        return anyio.run(_serve, args, store)
    except KeyboardInterrupt:
        return 0
    finally:
        store.close()


async def _serve(args: argparse.Namespace, store: PromptStore) -> int:
    with ExitStack() as stack:
        # Signals are caught before the address is printed: whoever reads it may stop us at once.
        try:
            signals = stack.enter_context(
                anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM)
            )
        except NotImplementedError:  # Windows: Ctrl-C arrives as KeyboardInterrupt instead
            signals = None
        try:
            async with run_server(
                store, args.host, args.port, args.public_key, args.secret_key, args.seed,
                access_log=args.access_log, max_connections=args.max_connections,
                header_timeout=args.header_timeout, webhook_url=args.webhook_url,
                webhook_secret=args.webhook_secret if args.webhook_url else None,
            ) as server:
                server.controls.get_delay_seconds = args.delay_ms / 1000
                auth = "HTTP Basic auth" if server.public_key else "no auth, loopback only"
                seeded = f", {server.seeded} new prompt versions seeded" if args.seed else ""
                print(
                    f"Langfuse-compatible prompt server on {server.base_url} "
                    f"(db {store.path}, {auth}{seeded}); {describe_llm_endpoints()}. "
                    "Ctrl-C to stop.",
                    flush=True,
                )
                if signals is None:
                    await anyio.sleep_forever()
                else:
                    async for _ in signals:
                        break
        except (PromptValidationError, ConfigurationError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1 if isinstance(exc, OSError) else 2
    return 0
