"""The client's options are defined once (``ClientOptions``): both constructors take every one
of them, with the same defaults and types, pass each one on, and every environment variable
an option names is read. Adding an option in one place and not the others fails here."""

from __future__ import annotations

import inspect
import typing
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import attrs
import pytest
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.trace import NoOpTracerProvider

from asyncpromptcache import AsyncPromptClient, ConfigurationError, PromptClient, RetryPolicy
from asyncpromptcache._core.secret import Secret
from asyncpromptcache._prompts.options import ClientOptions, environment_of
from asyncpromptcache._prompts.settings import Environment, resolve_settings
from asyncpromptcache.testing import StaticSource

FIELDS = {field.name: field for field in attrs.fields(ClientOptions)}
TYPES = typing.get_type_hints(ClientOptions)


def given_type(name: str) -> Any:
    """The annotation a constructor has for option ``name``."""
    given = FIELDS[name].metadata["given"]
    return TYPES[name] if given is None else given


@pytest.mark.parametrize(("constructor", "async_only"), [
    (AsyncPromptClient, False), (PromptClient, True),
])
def test_the_constructors_take_every_option_with_its_default_and_type(
    constructor: type, async_only: bool
) -> None:
    init = vars(constructor)["__init__"]
    signature = inspect.signature(init)
    hints = typing.get_type_hints(init)
    parameters = dict(signature.parameters)
    del parameters["self"]
    expected = {name for name, field in FIELDS.items()
                if field.metadata["sync"] or not async_only}
    assert set(parameters) == expected
    for name, parameter in parameters.items():
        assert parameter.kind is inspect.Parameter.KEYWORD_ONLY, name
        assert parameter.default == FIELDS[name].default, name
        assert hints[name] == given_type(name), name
    assert hints["return"] is type(None)


def test_the_settings_take_options_by_their_names() -> None:
    """The environment's side: what ``resolve_settings`` merges are options, as the options
    hold them (the secret key wrapped)."""
    parameters = dict(inspect.signature(resolve_settings).parameters)
    hints = typing.get_type_hints(resolve_settings)
    del parameters["environment"]
    assert parameters
    for name, parameter in parameters.items():
        assert name in FIELDS
        assert parameter.default == FIELDS[name].default, name
        assert hints[name] == TYPES[name], name


def examples(session: aiohttp.ClientSession) -> dict[str, Any]:
    """A value for every option, none its default."""
    return {
        "public_key": "pk-lf-example", "secret_key": "sk-lf-example",
        "base_url": "http://127.0.0.1:9", "source": StaticSource(), "session": session,
        "cache_ttl_seconds": 7.0, "max_size": 3, "max_stale_seconds": 11.0,
        "fetch_timeout_seconds": 2.0, "max_retries": 4, "retry": RetryPolicy(max_retries=1),
        "verify_ssl": False, "trust_env": False, "refresh_backoff_seconds": 0.5,
        "refresh_backoff_max_seconds": 9.0, "clock": lambda: 0.0,
        "env": {"LANGFUSE_TIMEOUT": "3", "UNRELATED_VARIABLE": "x"},
        "negative_cache_seconds": 1.5, "shared": "redis://127.0.0.1:1/0",
        "webhook_secret": "whsec-example",
        "meter_provider": NoOpMeterProvider(), "tracer_provider": NoOpTracerProvider(),
    }


def held(value: Any) -> Any:
    """An option as given, from an option as held."""
    if isinstance(value, Secret):
        return value.reveal()
    if isinstance(value, Environment):
        return dict(value.values)
    return value


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.mark.anyio
async def test_every_option_given_reaches_the_options(session: aiohttp.ClientSession) -> None:
    given = examples(session)
    assert set(given) == set(FIELDS)  # a new option needs an example here
    for name, value in given.items():
        assert value != FIELDS[name].default, name
    expected = {**given, "env": {"LANGFUSE_TIMEOUT": "3"}}

    client = AsyncPromptClient(**given)
    for name in FIELDS:
        assert held(getattr(client._config, name)) == expected[name], name

    sync_given = {name: value for name, value in given.items()
                  if FIELDS[name].metadata["sync"]}
    sync = PromptClient(**sync_given)
    try:
        for name in sync_given:
            assert held(getattr(sync._client._config, name)) == expected[name], name
    finally:
        sync.close()


# For each option an environment variable may give: a value for the variable, and where the
# resolved value shows.
FROM_ENVIRONMENT: dict[str, tuple[str, Any, Callable[[ClientOptions], Any]]] = {
    "public_key": ("pk-lf-env", "pk-lf-env", lambda o: o.settings().public_key),
    "secret_key": ("sk-lf-env", "sk-lf-env", lambda o: held(o.settings().secret_key)),
    "base_url": ("http://127.0.0.1:7/", "http://127.0.0.1:7", lambda o: o.settings().base_url),
    "cache_ttl_seconds": ("8", 8.0, lambda o: o.settings().cache_ttl_seconds),
    "fetch_timeout_seconds": ("3", 3.0, lambda o: o.settings().timeout_seconds),
    "shared": ("redis://127.0.0.1:1/0", True, lambda o: o.tier() is not None),
    "webhook_secret": ("whsec-env", "whsec-env", lambda o: held(o.webhook_key())),
}


def test_every_variable_an_option_names_is_read() -> None:
    named = {name for name, field in FIELDS.items() if field.metadata["env"]}
    assert set(FROM_ENVIRONMENT) == named
    keys = {"LANGFUSE_PUBLIC_KEY": "pk-lf-base", "LANGFUSE_SECRET_KEY": "sk-lf-base"}
    for name, (text, resolved, read) in FROM_ENVIRONMENT.items():
        assert read(ClientOptions(env=environment_of(keys))) != resolved, name
        for var in FIELDS[name].metadata["env"]:
            options = ClientOptions(
                env=environment_of({**keys, var: text, "UNRELATED_VARIABLE": "x"}))
            assert read(options) == resolved, var
            assert "UNRELATED_VARIABLE" not in options.env.values


def test_a_bad_option_is_refused_where_the_options_are_built() -> None:
    for name, value in [("max_size", 0), ("max_retries", -1), ("cache_ttl_seconds", "1"),
                        ("fetch_timeout_seconds", 0), ("negative_cache_seconds", float("nan")),
                        ("refresh_backoff_seconds", -1.0), ("webhook_secret", Secret(" "))]:
        bad: dict[str, Any] = {name: value}
        with pytest.raises(ConfigurationError, match=name):
            ClientOptions(**bad)
