"""Prompt models and the one strict parser of Langfuse's wire format. Pure: no I/O."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal, TypeAlias

import attrs

from .._core.errors import InvalidArgumentError, InvalidResponseError, TemplateError
from .composition import parse_resolution_graph
from .keys import PromptKey
from .template import compile_template, find_variable_names, to_langchain_template

__all__ = [
    "ChatMessage",
    "ChatPrompt",
    "Placeholder",
    "Prompt",
    "PromptType",
    "TextPrompt",
    "parse_prompt",
]

logger = logging.getLogger("asyncpromptcache")

PromptType: TypeAlias = Literal["text", "chat"]


def check_prompt_type(value: object) -> PromptType:
    """``value`` if it is ``"text"`` or ``"chat"``, else ``InvalidArgumentError``."""
    if isinstance(value, str) and value in ("text", "chat"):
        return value  # type: ignore[return-value]
    raise InvalidArgumentError(f"type must be 'text' or 'chat', got {value!r}")


def _tuple_of_str(value: Sequence[str]) -> tuple[str, ...]:
    return tuple(value)


@attrs.frozen
class ChatMessage:
    """One message of a chat prompt. ``type`` is kept only to serialise back what was read."""

    role: str
    content: str
    type: Literal["chatmessage"] | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.type is not None:
            data["type"] = self.type
        return data


@attrs.frozen
class Placeholder:
    """A slot in a chat prompt that ``compile(name=[...messages])`` fills with messages."""

    name: str

    def to_dict(self) -> dict[str, Any]:
        return {"type": "placeholder", "name": self.name}


ChatItem: TypeAlias = ChatMessage | Placeholder


def _tuple_of_items(value: Sequence[ChatItem]) -> tuple[ChatItem, ...]:
    return tuple(value)


@attrs.frozen(kw_only=True)
class _PromptBase:
    name: str
    version: int
    config: Any = attrs.field(factory=dict, eq=True, hash=False)
    labels: tuple[str, ...] = attrs.field(default=(), converter=_tuple_of_str)
    tags: tuple[str, ...] = attrs.field(default=(), converter=_tuple_of_str)
    commit_message: str | None = None
    is_fallback: bool = False
    # Langfuse's ``resolutionGraph``: the prompts this one was composed of (see composition).
    resolution_graph: Any = attrs.field(default=None, eq=False, hash=False, repr=False)

    def _meta_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "config": self.config,
            "labels": list(self.labels),
            "tags": list(self.tags),
            "commitMessage": self.commit_message,
        }


@attrs.frozen(kw_only=True)
class TextPrompt(_PromptBase):
    """A text prompt: one template string."""

    type: ClassVar[Literal["text"]] = "text"
    prompt: str

    def compile(self, /, **variables: Any) -> str:
        """The template with ``variables`` substituted; a variable not given stays as written."""
        return compile_template(self.prompt, variables)

    def compile_strict(self, /, **variables: Any) -> str:
        """Like ``compile``, but a variable not given raises ``TemplateError`` naming it."""
        missing: list[str] = []
        text = compile_template(self.prompt, variables, missing)
        _raise_if_missing(self.name, missing, [])
        return text

    @property
    def variables(self) -> list[str]:
        """Variable names in the template, in order (repeats included, as Langfuse gives them)."""
        return find_variable_names(self.prompt)

    def get_langchain_prompt(self, /, **variables: Any) -> str:
        """The template as a LangChain ``PromptTemplate`` string (``{{x}}`` -> ``{x}``).

        Variables given are substituted first. Plain data; LangChain is not imported.
        """
        text = compile_template(self.prompt, variables) if variables else self.prompt
        return to_langchain_template(text)

    def to_dict(self) -> dict[str, Any]:
        """The prompt in Langfuse's wire format."""
        return {**self._meta_dict(), "type": "text", "prompt": self.prompt}


@attrs.frozen(kw_only=True)
class ChatPrompt(_PromptBase):
    """A chat prompt: messages and placeholders."""

    type: ClassVar[Literal["chat"]] = "chat"
    prompt: tuple[ChatItem, ...] = attrs.field(converter=_tuple_of_items)

    def compile(self, /, **kwargs: Any) -> list[dict[str, Any]]:
        """Messages as ``{"role", "content"}`` dicts with variables substituted.

        A placeholder given a list of message dicts becomes copies of them (extra keys such as
        ``tool_calls`` kept, content compiled); a placeholder not given stays in place as
        ``{"type": "placeholder", "name": ...}``.
        """
        return self._compile(kwargs, None, None)

    def compile_strict(self, /, **kwargs: Any) -> list[dict[str, Any]]:
        """Like ``compile``, but missing variables or placeholders raise ``TemplateError``."""
        missing_vars: list[str] = []
        missing_slots: list[str] = []
        messages = self._compile(kwargs, missing_vars, missing_slots)
        _raise_if_missing(self.name, missing_vars, missing_slots)
        return messages

    def _compile(
        self, kwargs: Mapping[str, Any], missing: list[str] | None, slots: list[str] | None
    ) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        unresolved: list[str] = []
        for item in self.prompt:
            if isinstance(item, ChatMessage):
                out.append(
                    {"role": item.role, "content": compile_template(item.content, kwargs, missing)}
                )
                continue
            if item.name not in kwargs:
                out.append(item.to_dict())
                unresolved.append(item.name)
                continue
            value = kwargs[item.name]
            if not isinstance(value, list):
                out.append({"role": "NOT_GIVEN", "content": str(value)})
                logger.warning(
                    "Placeholder %r must contain a list of chat messages, got %s",
                    item.name, type(value),
                )
                continue
            for message in value:
                if isinstance(message, dict):
                    compiled = dict(message)
                    compiled["role"] = message.get("role", "NOT_GIVEN")
                    # Text the caller supplies is data: strict mode does not ask for its
                    # variables (a chat history may well mention "{{name}}").
                    compiled["content"] = compile_template(message.get("content", ""), kwargs)
                    out.append(compiled)
                else:
                    out.append({"role": "NOT_GIVEN", "content": str(value)})
                    logger.warning(
                        "Placeholder %r should contain a list of chat messages with 'role' and "
                        "'content' fields. Appended as string.", item.name,
                    )
        if unresolved:
            if slots is not None:
                slots.extend(unresolved)
            else:
                logger.warning(
                    "Placeholders %s have not been resolved. Pass them as keyword arguments "
                    "to compile().", unresolved,
                )
        return out

    @property
    def variables(self) -> list[str]:
        """Variable names in the messages, in order (placeholders are not variables)."""
        names: list[str] = []
        for item in self.prompt:
            if isinstance(item, ChatMessage):
                names.extend(find_variable_names(item.content))
        return names

    @property
    def placeholders(self) -> list[str]:
        """Names of the placeholders, in order."""
        return [item.name for item in self.prompt if isinstance(item, Placeholder)]

    def get_langchain_prompt(self, /, **kwargs: Any) -> list[tuple[str, str]]:
        """Messages as LangChain ``ChatPromptTemplate.from_messages`` tuples.

        Plain data: ``(role, template)`` for messages and ``("placeholder", "{name}")`` for
        placeholders not given, LangChain's own tuple form for a ``MessagesPlaceholder``.
        """
        result: list[tuple[str, str]] = []
        for message in self._compile(kwargs, None, []):
            if message.get("type") == "placeholder":
                result.append(("placeholder", "{" + message["name"] + "}"))
            else:
                result.append((message["role"], to_langchain_template(message["content"])))
        return result

    def to_dict(self) -> dict[str, Any]:
        """The prompt in Langfuse's wire format."""
        return {
            **self._meta_dict(),
            "type": "chat",
            "prompt": [item.to_dict() for item in self.prompt],
        }


Prompt: TypeAlias = TextPrompt | ChatPrompt


def _raise_if_missing(name: str, variables: list[str], placeholders: list[str]) -> None:
    if not variables and not placeholders:
        return
    parts = []
    if variables:
        parts.append("variables " + ", ".join(repr(v) for v in dict.fromkeys(variables)))
    if placeholders:
        parts.append("placeholders " + ", ".join(repr(p) for p in dict.fromkeys(placeholders)))
    raise TemplateError(
        f"prompt {name!r}: missing " + " and ".join(parts),
        missing_variables=tuple(dict.fromkeys(variables)),
        missing_placeholders=tuple(dict.fromkeys(placeholders)),
    )


# -- parsing -------------------------------------------------------------------------------

_MISSING = object()


def _field(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...], path: str) -> Any:
    value = data.get(key, _MISSING)
    if value is _MISSING:
        raise InvalidResponseError(f"invalid prompt: field {path!r} is missing", field=path)
    # bool is an int subclass; a version of True is not a version.
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
        raise InvalidResponseError(
            f"invalid prompt: field {path!r} should be {_kind_name(kind)}, "
            f"got {type(value).__name__}",
            field=path,
        )
    return value


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", list: "a list", dict: "an object",
             type(None): "null"}
    return " or ".join(names.get(k, k.__name__) for k in _as_tuple(kind))


def _str_list(data: Mapping[str, Any], key: str) -> list[str]:
    values: list[str] = _field(data, key, list, key)
    for i, value in enumerate(values):
        if not isinstance(value, str):
            path = f"{key}[{i}]"
            raise InvalidResponseError(
                f"invalid prompt: field {path!r} should be a string, got {type(value).__name__}",
                field=path,
            )
    return values


def _parse_chat_item(item: Any, path: str) -> ChatItem:
    if not isinstance(item, dict):
        raise InvalidResponseError(
            f"invalid prompt: field {path!r} should be an object, got {type(item).__name__}",
            field=path,
        )
    kind = item.get("type")
    if kind == "placeholder":
        return Placeholder(name=_field(item, "name", str, f"{path}.name"))
    if kind not in (None, "chatmessage"):
        raise InvalidResponseError(
            f"invalid prompt: field '{path}.type' should be 'chatmessage' or 'placeholder', "
            f"got {kind!r}",
            field=f"{path}.type",
        )
    return ChatMessage(
        role=_field(item, "role", str, f"{path}.role"),
        content=_field(item, "content", str, f"{path}.content"),
        type=kind,
    )


def _version(data: Mapping[str, Any]) -> int:
    version: int = _field(data, "version", int, "version")
    if version < 1:  # Langfuse counts versions from 1; 0 is what a fallback carries
        raise InvalidResponseError(
            f"invalid prompt: field 'version' should be 1 or more, got {version}", field="version"
        )
    return version


def parse_prompt(data: Any) -> Prompt:
    """Parse one prompt from Langfuse's wire format (``GET /api/public/v2/prompts/{name}``).

    Strict: a missing or wrongly-typed field raises ``InvalidResponseError`` whose ``field``
    names it. Fields this SDK does not use (``id``, ``createdAt``...) are ignored;
    ``resolutionGraph`` is kept as ``resolution_graph`` (checked by
    ``composition.parse_resolution_graph``).
    """
    if not isinstance(data, dict):
        raise InvalidResponseError(
            f"invalid prompt: expected a JSON object, got {type(data).__name__}", field=None
        )
    kind = _field(data, "type", str, "type")
    name = _field(data, "name", str, "name")
    if not name:
        raise InvalidResponseError("invalid prompt: field 'name' is empty", field="name")
    common: dict[str, Any] = {
        "name": name,
        "version": _version(data),
        "config": _field(data, "config", object, "config"),
        "labels": _str_list(data, "labels"),
        "tags": _str_list(data, "tags"),
        "commit_message": (
            _field(data, "commitMessage", (str, type(None)), "commitMessage")
            if "commitMessage" in data else None
        ),
    }
    graph = data.get("resolutionGraph")
    if graph is not None:
        parse_resolution_graph(graph)
        common["resolution_graph"] = graph
    if kind == "text":
        return TextPrompt(prompt=_field(data, "prompt", str, "prompt"), **common)
    if kind == "chat":
        items = _field(data, "prompt", list, "prompt")
        return ChatPrompt(
            prompt=tuple(_parse_chat_item(item, f"prompt[{i}]") for i, item in enumerate(items)),
            **common,
        )
    raise InvalidResponseError(
        f"invalid prompt: field 'type' should be 'text' or 'chat', got {kind!r}", field="type"
    )


def prompt_from_value(
    name: str, value: Any, prompt_type: PromptType, label: str | None = None
) -> Prompt:
    """Build a fallback prompt (``is_fallback=True``, version 0) from a string or message list.

    Labelled with ``label`` when one was asked for, as Langfuse's SDK labels its fallbacks.
    """
    labels = [label] if label is not None else []
    if prompt_type == "text":
        if not isinstance(value, str):
            raise InvalidArgumentError(
                f"a text fallback must be a string, got {type(value).__name__}"
            )
        return TextPrompt(name=name, version=0, prompt=value, labels=labels, is_fallback=True)
    if not isinstance(value, list):
        raise InvalidArgumentError(
            f"a chat fallback must be a list of messages, got {type(value).__name__}"
        )
    try:
        items = tuple(_parse_chat_item(item, f"fallback[{i}]") for i, item in enumerate(value))
    except InvalidResponseError as exc:
        raise InvalidArgumentError(f"invalid chat fallback: {exc}") from None
    return ChatPrompt(name=name, version=0, prompt=items, labels=labels, is_fallback=True)


def wrong_type(key: PromptKey, prompt: Prompt, asked: PromptType) -> InvalidResponseError:
    """The error for ``prompt``, found for ``key``, when a caller asked for the other type."""
    return InvalidResponseError(
        f"prompt {key.describe()} is a {prompt.type} prompt, but type={asked!r} was asked for",
        field="type", name=key.name, key=key,
    )
