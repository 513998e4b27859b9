"""``python -m asyncpromptcache serve|demo``."""

from __future__ import annotations

import argparse
import logging

from .server import add_serve_arguments, run_serve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m asyncpromptcache")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve", help="run the Langfuse-compatible local prompt server",
        description="A Langfuse-compatible prompt API over a SQLite store, for offline "
                    "development, demos and tests.",
    )
    add_serve_arguments(serve)
    commands.add_parser("demo", help="show the cache at work against a local server")
    args = parser.parse_args(argv)
    if args.command == "serve":
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
        return run_serve(args)
    from ._demo import run_demo

    logging.basicConfig(level=logging.ERROR, format="   [log] %(levelname)s %(message)s")
    return run_demo()


if __name__ == "__main__":
    raise SystemExit(main())
