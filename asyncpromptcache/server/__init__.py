"""A local, Langfuse-compatible prompt server: Langfuse's public prompt API (v2) on aiohttp.

For tests, demos and offline work::

    async with run_server(seed_dir="examples/prompts") as server:
        ...  # point a client at server.base_url; server.counter counts its requests

or, from synchronous code, ``with ServerThread() as server: ...``. On the command line it is
``python -m asyncpromptcache serve``. It behaves as Langfuse's server does: composed prompts
resolved, Langfuse's create-time validation, and (with ``webhook_url``/``webhook_secret``)
its signed prompt-version webhooks.
"""

from .._store._compose import ResolutionError as ResolutionError
from .._store._schema import (
    MAX_NAME_LENGTH as MAX_NAME_LENGTH,
    PromptDraft as PromptDraft,
    PromptValidationError as PromptValidationError,
    load_seed_dir as load_seed_dir,
)
from .._store._sqlite import (
    PromptChange as PromptChange,
    PromptConflictError as PromptConflictError,
    PromptPage as PromptPage,
    PromptReferenceError as PromptReferenceError,
    PromptStore as PromptStore,
    PromptSummary as PromptSummary,
    StoreClosedError as StoreClosedError,
    StoredPrompt as StoredPrompt,
)
from ._app import (
    DEFAULT_PROJECT_ID as DEFAULT_PROJECT_ID,
    MAX_BODY_BYTES as MAX_BODY_BYTES,
    check_keys as check_keys,
    create_app as create_app,
)
from ._cli import add_serve_arguments as add_serve_arguments, run_serve as run_serve
from ._controls import (
    MAX_COUNTED_NAMES as MAX_COUNTED_NAMES,
    ROUTE_KINDS as ROUTE_KINDS,
    RequestCounter as RequestCounter,
    ServerControls as ServerControls,
)
from ._guard import ConnectionGuard as ConnectionGuard
from ._outbox import WebhookSender as WebhookSender
from ._runner import (
    RunningServer as RunningServer,
    ServerThread as ServerThread,
    basic_auth_header as basic_auth_header,
    check_bind as check_bind,
    is_loopback_host as is_loopback_host,
    run_server as run_server,
)

__all__ = [
    "DEFAULT_PROJECT_ID",
    "MAX_BODY_BYTES",
    "MAX_COUNTED_NAMES",
    "MAX_NAME_LENGTH",
    "ROUTE_KINDS",
    "ConnectionGuard",
    "PromptChange",
    "PromptConflictError",
    "PromptDraft",
    "PromptPage",
    "PromptReferenceError",
    "PromptStore",
    "PromptSummary",
    "PromptValidationError",
    "RequestCounter",
    "ResolutionError",
    "RunningServer",
    "ServerControls",
    "ServerThread",
    "StoreClosedError",
    "StoredPrompt",
    "WebhookSender",
    "add_serve_arguments",
    "basic_auth_header",
    "check_bind",
    "check_keys",
    "create_app",
    "is_loopback_host",
    "load_seed_dir",
    "run_serve",
    "run_server",
]
