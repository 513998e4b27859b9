"""The aiohttp application: Langfuse's public prompt API (v2) over a ``PromptStore``.

Prompt names are data. A name is one percent-encoded path segment, so the item routes are
matched on the *raw* path: aiohttp decodes ``%2F`` before routing, which would turn the prompt
``a/versions/1`` into the label-update route. Everything after ``/api/public/v2/prompts/`` is
split on literal slashes first and only then is each segment unquoted.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import importlib.metadata
import logging
import re
from collections.abc import Mapping
from typing import Any, NoReturn
from urllib.parse import unquote

import anyio
import attrs
from aiohttp import web
from aiohttp.typedefs import Handler
from multidict import MultiMapping

from .._core.errors import ConfigurationError
from .._store._compose import ResolutionError
from .._store._schema import (
    PRODUCTION_LABEL,
    PromptDraft,
    PromptValidationError,
    parse_json_body,
    parse_new_labels,
    parse_updated_at,
)
from .._store._sqlite import PromptConflictError, PromptReferenceError, PromptStore
from ._controls import RequestCounter, ServerControls
from ._llms import add_llm_routes
from ._outbox import WebhookSender, check_webhook

__all__ = ["DEFAULT_PROJECT_ID", "MAX_BODY_BYTES", "check_keys", "create_app"]

logger = logging.getLogger("asyncpromptcache.server")

#: Largest request body accepted (413 above it).
MAX_BODY_BYTES = 1024 * 1024
#: The ``projectId`` every prompt reports.
DEFAULT_PROJECT_ID = "asyncpromptcache-local"

_HEALTH_PATH = "/api/public/health"
_PROJECTS_PATH = "/api/public/projects"
_PROMPTS_PATH = "/api/public/v2/prompts"
_ITEM_PREFIX = _PROMPTS_PATH + "/"
_MAX_INT = 2**31 - 1  # Langfuse's versions are 32-bit; also keeps SQLite from overflowing
_INT_RE = re.compile(r"[0-9]{1,10}")

_ERROR_NAMES = {
    400: "InvalidRequestError",
    401: "UnauthorizedError",
    403: "ForbiddenError",
    404: "LangfuseNotFoundError",
    405: "MethodNotAllowedError",
    413: "PayloadTooLargeError",
    429: "TooManyRequestsError",
    500: "InternalServerError",
    502: "BadGatewayError",
    503: "ServiceUnavailableError",
    504: "GatewayTimeoutError",
}

try:
    _VERSION = importlib.metadata.version("asyncpromptcache")
except importlib.metadata.PackageNotFoundError:  # pragma: no cover - running from a checkout
    _VERSION = "unknown"


class _ApiError(Exception):
    """An error answer: status and Langfuse's ``{"message", "error"}`` body."""

    def __init__(
        self, status: int, message: str, *, error: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error = error or _error_name(status)
        self.headers = dict(headers or {})


def _error_name(status: int) -> str:
    return _ERROR_NAMES.get(status, "InternalServerError" if status >= 500 else "Error")


def _bad_request(message: str) -> NoReturn:
    raise _ApiError(400, message)


def _error_response(
    status: int, message: str, error: str | None = None, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.json_response(
        {"message": message, "error": error or _error_name(status)}, status=status,
        headers=headers,
    )


@attrs.frozen
class _State:
    store: PromptStore
    counter: RequestCounter
    controls: ServerControls
    credentials: tuple[bytes, bytes] | None = attrs.field(repr=False)
    project_id: str


_STATE = web.AppKey("asyncpromptcache_server", _State)


def check_keys(public_key: str | None, secret_key: str | None) -> bool:
    """Whether the server has keys; ``ConfigurationError`` unless they make a usable pair.

    Keys come in pairs, and an empty or whitespace-only key is refused: it would be a
    password anyone can guess (and ``--public-key ""`` is more likely a slip than a wish).
    """
    if (public_key is None) != (secret_key is None):
        raise ConfigurationError("give both a public key and a secret key, or neither")
    for what, key in (("public", public_key), ("secret", secret_key)):
        if key is not None and not key.strip():
            raise ConfigurationError(f"the {what} key must not be empty or whitespace")
    return public_key is not None


def create_app(
    store: PromptStore,
    *,
    public_key: str | None = None,
    secret_key: str | None = None,
    counter: RequestCounter | None = None,
    controls: ServerControls | None = None,
    project_id: str = DEFAULT_PROJECT_ID,
    webhook_url: str | None = None,
    webhook_secret: str | None = None,
) -> web.Application:
    """The server as an ``aiohttp.web.Application`` (run it with ``run_server`` or aiohttp).

    With keys, every request except ``GET /api/public/health`` needs HTTP Basic auth with
    user = ``public_key`` and password = ``secret_key``. Give both keys or neither. Whether
    serving without keys is safe depends on where it is bound; ``run_server`` checks that.

    With ``webhook_url`` and ``webhook_secret``, every change to a prompt version is posted
    there as Langfuse's signed prompt-version webhook (see ``_outbox``), in the background.
    """
    webhooks = check_webhook(webhook_url, webhook_secret)
    if check_keys(public_key, secret_key):
        assert public_key is not None and secret_key is not None
        credentials: tuple[bytes, bytes] | None = (
            public_key.encode("utf-8"), secret_key.encode("utf-8")
        )
    else:
        credentials = None
    app = web.Application(
        middlewares=[_error_middleware, _count_middleware, _auth_middleware],
        client_max_size=MAX_BODY_BYTES,
    )
    app[_STATE] = _State(
        store=store,
        counter=counter if counter is not None else RequestCounter(),
        controls=controls if controls is not None else ServerControls(),
        credentials=credentials,
        project_id=project_id,
    )
    if webhooks:
        assert webhook_url is not None and webhook_secret is not None
        WebhookSender(webhook_url, webhook_secret, project_id=project_id).attach(app, store)
    app.router.add_get(_HEALTH_PATH, _health, name="health")
    app.router.add_get(_PROJECTS_PATH, _projects)  # the SDKs' auth_check()
    app.router.add_get(_PROMPTS_PATH, _list_prompts)
    app.router.add_post(_PROMPTS_PATH, _create_prompt)
    # Everything below the collection, slashes included: split on the raw path in _item().
    app.router.add_route("*", _ITEM_PREFIX + "{rest:.+}", _item)
    app.router.add_get("/_admin/requests", _get_requests)
    app.router.add_delete("/_admin/requests", _reset_requests)
    app.router.add_get("/_admin/controls", _get_controls)
    app.router.add_post("/_admin/controls", _set_controls)
    add_llm_routes(app)  # /v1/chat/completions, /v1/responses, /v1/messages, /v1/embeddings
    return app


# -- middlewares ---------------------------------------------------------------------------


@web.middleware
async def _error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error becomes Langfuse's JSON error body, including aiohttp's own 404/405/413."""
    try:
        return await handler(request)
    except _ApiError as exc:
        return _error_response(exc.status, exc.message, exc.error, exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
        if exc.status == 404:
            message = f"Not found: {request.method} {request.rel_url.raw_path}"
            return _error_response(404, message, "NotFoundError", headers)
        if exc.status == 405:
            message = f"Method {request.method} not allowed on {request.rel_url.raw_path}"
            return _error_response(405, message, None, headers)
        if exc.status == 413:
            message = f"Request body too large (limit {MAX_BODY_BYTES} bytes)"
            return _error_response(413, message)
        return _error_response(exc.status, exc.reason, None, headers)
    except Exception:
        logger.exception("unhandled error on %s %s", request.method, request.rel_url.raw_path)
        return _error_response(500, "Internal server error")


@web.middleware
async def _count_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count the request as it arrives, before auth, so a 401 counts too.

    Only an authorized request is counted per prompt name: names in requests without valid
    keys are made up by whoever sent them, and would grow the counter without bound.
    """
    kind = _route_kind(request)
    if kind is not None:
        route, name = kind
        request.app[_STATE].counter.record(route, name if _authorized(request) else None)
    return await handler(request)


@web.middleware
async def _auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not _authorized(request):
        message = (
            "Invalid credentials: check the public and secret key"
            if "Authorization" in request.headers
            else "Missing authorization header: use HTTP Basic auth with the public key "
            "as user and the secret key as password"
        )
        raise _ApiError(
            401, message, headers={"WWW-Authenticate": 'Basic realm="asyncpromptcache"'}
        )
    return await handler(request)


def _authorized(request: web.Request) -> bool:
    credentials = request.app[_STATE].credentials
    if credentials is None or request.match_info.route.name == "health":
        return True
    header = request.headers.get("Authorization")
    return header is not None and _basic_auth_matches(header, credentials)


def _basic_auth_matches(header: str, credentials: tuple[bytes, bytes]) -> bool:
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    user, sep, password = decoded.partition(b":")
    # Both comparisons always run: no timing hint of which key was wrong.
    user_ok = hmac.compare_digest(user, credentials[0])
    password_ok = hmac.compare_digest(password, credentials[1])
    return bool(sep) and user_ok and password_ok


# -- paths and query -----------------------------------------------------------------------


def _split_item_path(raw_path: str) -> tuple[str, str | None] | None:
    """``(name segment, version segment or None)`` of an item path, still percent-encoded."""
    if not raw_path.startswith(_ITEM_PREFIX):
        return None
    segments = raw_path[len(_ITEM_PREFIX):].split("/")
    if len(segments) == 1:
        return segments[0], None
    if len(segments) == 3 and segments[1] == "versions":
        return segments[0], segments[2]
    return None


def _decode_segment(segment: str) -> str | None:
    try:
        # errors="strict": two different byte strings must never decode to one name.
        return unquote(segment, errors="strict")
    except UnicodeDecodeError:
        return None


def _route_kind(request: web.Request) -> tuple[str, str | None] | None:
    """What the counter calls this request, and the prompt name it is for."""
    raw, method = request.rel_url.raw_path, request.method
    if raw == _HEALTH_PATH:
        return "health", None
    if raw == _PROMPTS_PATH:
        return {"GET": "list", "HEAD": "list", "POST": "create"}.get(method, "other"), None
    item = _split_item_path(raw)
    if item is not None:
        name = _decode_segment(item[0])
        if item[1] is None:
            return {"GET": "get_prompt", "DELETE": "delete"}.get(method, "other"), name
        return ("patch" if method == "PATCH" else "other"), name
    if raw == "/api" or raw.startswith("/api/"):
        return "other", None
    return None  # /_admin and stray paths are not client traffic


def _query_value(query: MultiMapping[str], key: str) -> str | None:
    values = query.getall(key, [])
    if not values:
        return None
    if len(values) > 1:
        _bad_request(f"query parameter {key!r} was given {len(values)} times")
    value = values[0]
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        _bad_request(f"query parameter {key!r} is not valid UTF-8")
    return value


def _parse_int(text: str, what: str, *, maximum: int = _MAX_INT) -> int:
    # A strict pattern: int() would also take " 1", "+1", "1_0" and 4,300-digit numbers.
    if not _INT_RE.fullmatch(text) or not 1 <= int(text) <= maximum:
        _bad_request(f"{what} must be an integer from 1 to {maximum}, got {text!r}")
    return int(text)


def _int_query(query: MultiMapping[str], key: str, default: int, maximum: int = _MAX_INT) -> int:
    value = _query_value(query, key)
    return default if value is None else _parse_int(value, f"{key!r}", maximum=maximum)


def _datetime_query(query: MultiMapping[str], key: str) -> str | None:
    value = _query_value(query, key)
    if value is None:
        return None
    try:
        return parse_updated_at(value)
    except PromptValidationError as exc:
        _bad_request(f"{key!r}: {exc}")


def _version_and_label(query: MultiMapping[str]) -> tuple[int | None, str | None]:
    version = _query_value(query, "version")
    label = _query_value(query, "label")
    if label == "":
        _bad_request("'label' must not be empty")
    return (None if version is None else _parse_int(version, "'version'")), label


def _describe(name: str, version: int | None, label: str | None) -> str:
    if version is not None:
        return f"'{name}' with version {version}"
    if label is not None:
        return f"'{name}' with label '{label}'"
    return f"'{name}'"


async def _read_json(request: web.Request) -> Any:
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise _ApiError(413, f"Request body too large (limit {MAX_BODY_BYTES} bytes)")
    raw = await request.read()  # raises 413 past client_max_size, chunked bodies included
    try:
        return parse_json_body(raw)
    except PromptValidationError as exc:
        _bad_request(str(exc))


# -- handlers ------------------------------------------------------------------------------


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"status": "OK", "version": _VERSION})


async def _projects(request: web.Request) -> web.Response:
    """The one project the keys belong to, in Langfuse's shape (its SDKs' ``auth_check()``
    asks for it and wants at least one)."""
    project_id = request.app[_STATE].project_id
    return web.json_response({"data": [{
        "id": project_id, "name": project_id, "metadata": {},
        "organization": {"id": project_id, "name": project_id},
    }]})


async def _list_prompts(request: web.Request) -> web.Response:
    state = request.app[_STATE]
    query = request.query
    page = await state.store.list_prompts(
        name=_query_value(query, "name"),
        label=_query_value(query, "label"),
        tag=_query_value(query, "tag"),
        page=_int_query(query, "page", 1, maximum=10**9),
        limit=_int_query(query, "limit", 50, maximum=100),
        from_updated_at=_datetime_query(query, "fromUpdatedAt"),
        to_updated_at=_datetime_query(query, "toUpdatedAt"),
    )
    return web.json_response(page.to_dict())


async def _create_prompt(request: web.Request) -> web.Response:
    state = request.app[_STATE]
    body = await _read_json(request)
    try:
        draft = PromptDraft.from_json(body)
        stored = await state.store.create(draft)
    except (PromptValidationError, PromptConflictError, PromptReferenceError) as exc:
        _bad_request(str(exc))
    return web.json_response(stored.to_wire(state.project_id), status=201)


async def _item(request: web.Request) -> web.Response:
    """``/api/public/v2/prompts/{name}`` and ``.../{name}/versions/{version}``, raw-matched."""
    item = _split_item_path(request.rel_url.raw_path)
    if item is None:
        raise web.HTTPNotFound()
    segment, version_segment = item
    allowed = ("GET", "DELETE") if version_segment is None else ("PATCH",)
    if request.method not in allowed:
        raise web.HTTPMethodNotAllowed(request.method, allowed)
    name = _decode_segment(segment)
    if name is None:
        _bad_request("the prompt name in the path is not valid percent-encoded UTF-8")
    if not name:
        _bad_request("the prompt name in the path is empty")
    if version_segment is not None:
        version_text = _decode_segment(version_segment) or ""
        return await _patch_labels(request, name, _parse_int(version_text, "the version"))
    if request.method == "DELETE":
        return await _delete_prompt(request, name)
    return await _get_prompt(request, name)


async def _get_prompt(request: web.Request, name: str) -> web.Response:
    state = request.app[_STATE]
    version, label = _version_and_label(request.query)
    if version is not None and label is not None:
        _bad_request("give either 'version' or 'label', not both")
    resolve = _query_value(request.query, "resolve")
    if resolve not in (None, "true", "false"):
        _bad_request(f"'resolve' must be 'true' or 'false', got {resolve[:100]!r}")
    controls = state.controls
    if controls.get_delay_seconds > 0:
        await anyio.sleep(controls.get_delay_seconds)
    if controls.get_fail_status is not None:
        raise _ApiError(controls.get_fail_status, "Failure injected by the server controls")
    if version is None and label is None:
        label = PRODUCTION_LABEL
    try:
        stored = await state.store.get(
            name, version=version, label=label, resolve=resolve != "false"
        )
    except ResolutionError as exc:
        raise _ApiError(409, str(exc), error="LangfuseConflictError") from None
    if stored is None:
        raise _ApiError(404, f"Prompt not found: {_describe(name, version, label)}")
    return web.json_response(stored.to_wire(state.project_id))


async def _patch_labels(request: web.Request, name: str, version: int) -> web.Response:
    state = request.app[_STATE]
    body = await _read_json(request)
    try:
        labels = parse_new_labels(body)
    except PromptValidationError as exc:
        _bad_request(str(exc))
    stored = await state.store.set_labels(name, version, labels)
    if stored is None:
        raise _ApiError(404, f"Prompt not found: {_describe(name, version, None)}")
    return web.json_response(stored.to_wire(state.project_id))


async def _delete_prompt(request: web.Request, name: str) -> web.Response:
    state = request.app[_STATE]
    version, label = _version_and_label(request.query)
    try:
        deleted = await state.store.delete(name, version=version, label=label)
    except PromptReferenceError as exc:
        _bad_request(str(exc))
    if not deleted:
        raise _ApiError(404, f"Prompt not found: {_describe(name, version, label)}")
    return web.Response(status=204)


async def _get_requests(request: web.Request) -> web.Response:
    return web.json_response(request.app[_STATE].counter.snapshot())


async def _reset_requests(request: web.Request) -> web.Response:
    request.app[_STATE].counter.reset()
    return web.Response(status=204)


async def _get_controls(request: web.Request) -> web.Response:
    return web.json_response(request.app[_STATE].controls.to_dict())


async def _set_controls(request: web.Request) -> web.Response:
    controls = request.app[_STATE].controls
    body = await _read_json(request)
    if not isinstance(body, dict):
        _bad_request("the body should be a JSON object of controls")
    try:
        controls.update(body)
    except ValueError as exc:
        _bad_request(str(exc))
    return web.json_response(controls.to_dict())

