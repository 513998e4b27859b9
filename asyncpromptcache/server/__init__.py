"""A local, Langfuse-compatible prompt server: Langfuse's public prompt API (v2) on aiohttp.

For tests, demos and offline work::

    async with run_server(seed_dir="examples/prompts") as server:
        ...  # point a client at server.base_url; server.counter counts its requests

or, from synchronous code, ``with ServerThread() as server: ...``. On the command line it is
``python -m asyncpromptcache serve``.
"""

from ._app import DEFAULT_PROJECT_ID as DEFAULT_PROJECT_ID
from ._app import MAX_BODY_BYTES as MAX_BODY_BYTES
from ._app import create_app as create_app
from ._cli import add_serve_arguments as add_serve_arguments
from ._cli import run_serve as run_serve
from ._controls import ROUTE_KINDS as ROUTE_KINDS
from ._controls import RequestCounter as RequestCounter
from ._controls import ServerControls as ServerControls
from ._runner import RunningServer as RunningServer
from ._runner import ServerThread as ServerThread
from ._runner import basic_auth_header as basic_auth_header
from ._runner import check_bind as check_bind
from ._runner import is_loopback_host as is_loopback_host
from ._runner import run_server as run_server
from ._schema import MAX_NAME_LENGTH as MAX_NAME_LENGTH
from ._schema import PromptDraft as PromptDraft
from ._schema import PromptValidationError as PromptValidationError
from ._schema import load_seed_dir as load_seed_dir
from ._store import PromptConflictError as PromptConflictError
from ._store import PromptPage as PromptPage
from ._store import PromptStore as PromptStore
from ._store import PromptSummary as PromptSummary
from ._store import StoreClosedError as StoreClosedError
from ._store import StoredPrompt as StoredPrompt

__all__ = [
    "DEFAULT_PROJECT_ID",
    "MAX_BODY_BYTES",
    "MAX_NAME_LENGTH",
    "ROUTE_KINDS",
    "PromptConflictError",
    "PromptDraft",
    "PromptPage",
    "PromptStore",
    "PromptSummary",
    "PromptValidationError",
    "RequestCounter",
    "RunningServer",
    "ServerControls",
    "ServerThread",
    "StoreClosedError",
    "StoredPrompt",
    "add_serve_arguments",
    "basic_auth_header",
    "check_bind",
    "create_app",
    "is_loopback_host",
    "load_seed_dir",
    "run_serve",
    "run_server",
]
