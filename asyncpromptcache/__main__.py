"""``python -m asyncpromptcache serve|demo``."""

from __future__ import annotations

import argparse
import logging

from .server import add_serve_arguments, run_serve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m asyncpromptcache",
        description="asyncpromptcache: an asyncio-native cache for prompts from Langfuse's "
                    "prompt API. Run a command with --help for its options.",
    )
    commands = parser.add_subparsers(dest="command", required=True, title="commands",
                                     metavar="{serve,demo}")
    serve = commands.add_parser(
        "serve", help="run the Langfuse-compatible local prompt server",
        description="A Langfuse-compatible prompt API (get, list, create, label updates, "
                    "delete, health; composed prompts resolved; signed prompt-version "
                    "webhooks) over a SQLite store, for offline development, demos and "
                    "tests. Counts every request (GET /_admin/requests) and can be made slow "
                    "or failing (POST /_admin/controls). Without keys it binds to loopback only.",
    )
    add_serve_arguments(serve)
    commands.add_parser(
        "demo", help="show the cache at work against a local server",
        description="Starts a local prompt server with a few prompts in this process and "
                    "shows the cache against it: a cold fetch, fresh hits, 1,000 "
                    "concurrent cold callers sending one request, a background refresh, and "
                    "the server going away. Takes a few seconds; no network, no keys.",
    )
    args = parser.parse_args(argv)
    if args.command == "serve":
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        return run_serve(args)
    from ._demo import run_demo

    logging.basicConfig(level=logging.ERROR, format="   [log] %(levelname)s %(message)s")
    return run_demo()


if __name__ == "__main__":
    raise SystemExit(main())
