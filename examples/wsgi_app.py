"""A small WSGI app (stdlib ``wsgiref``) serving compiled prompts from one shared client.

    python -m asyncpromptcache serve --seed examples/prompts      # in another terminal
    LANGFUSE_BASE_URL=http://127.0.0.1:3000 python examples/wsgi_app.py
    curl 'http://127.0.0.1:8000/?movie=Dune'

One ``PromptClient`` for the process, used without ``with``: its loop thread starts on the
first request and it is closed at interpreter exit. Request threads share its cache. It is
fork-safe, so ``gunicorn --preload examples.wsgi_app:app`` works too: each worker keeps the
prompts fetched before the fork and starts its own loop thread.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from socketserver import ThreadingMixIn
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIEnvironment

from asyncpromptcache import FetchError, PromptClient

client = PromptClient()  # settings from the environment (LANGFUSE_BASE_URL, keys, TTL)


def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    query = parse_qs(environ.get("QUERY_STRING", ""))
    movie = query.get("movie", ["Dune"])[0]
    try:
        prompt = client.get_prompt("movie-critic", fallback="Do you like {{movie}}?")
    except FetchError as exc:  # not reached with a fallback; shown for the shape of errors
        start_response("502 Bad Gateway", [("Content-Type", "text/plain; charset=utf-8")])
        return [f"{exc}\n".encode()]
    body = prompt.compile(criticlevel="casual", movie=movie) + "\n"
    start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
    return [body.encode()]


class ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


if __name__ == "__main__":
    with make_server("127.0.0.1", 8000, app, server_class=ThreadingWSGIServer) as httpd:
        print("serving on http://127.0.0.1:8000/?movie=Dune (Ctrl-C to stop)")
        with contextlib.suppress(KeyboardInterrupt):
            httpd.serve_forever()
