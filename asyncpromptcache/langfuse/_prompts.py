"""Langfuse's prompt objects (``TextPromptClient``, ``ChatPromptClient``) as views of our
immutable models: the attributes, types, ``compile()``, ``get_langchain_prompt()`` and
equality of the Langfuse Python SDK's, with nothing parsed a second time. Pure: no I/O."""

from __future__ import annotations

import copy
from typing import Any, ClassVar, Literal, TypeAlias

import attrs

from .._prompts.models import ChatMessage, ChatPrompt, Prompt, TextPrompt
from .._prompts.template import compile_template, to_langchain_template

__all__ = ["ChatPromptClient", "LangfusePrompt", "TextPromptClient", "wrap"]

class _PromptClient:
    """What both prompt objects share. Every attribute is read from the immutable prompt the
    cache holds, and lists and dicts come out as new copies: a caller changing them changes
    its own copy, never the prompt every other caller is served."""

    __slots__ = ("_model",)
    _model: Prompt
    type: ClassVar[Literal["text", "chat"]]

    def __init__(self, model: Prompt) -> None:
        self._model = model

    @property
    def is_fallback(self) -> bool:
        return self._model.is_fallback

    @property
    def name(self) -> str:
        return self._model.name

    @property
    def version(self) -> int:
        return self._model.version

    @property
    def config(self) -> Any:
        return copy.deepcopy(self._model.config)

    @property
    def labels(self) -> list[str]:
        return list(self._model.labels)

    @property
    def tags(self) -> list[str]:
        return list(self._model.tags)

    @property
    def commit_message(self) -> str | None:
        return self._model.commit_message

    @property
    def variables(self) -> list[str]:
        """The template's variable names, in order, repeats included."""
        return self._model.variables

    @property
    def model(self) -> Prompt:
        """The cached prompt itself (``TextPrompt`` or ``ChatPrompt``), immutable."""
        return self._model

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} name={self.name!r} version={self.version} "
            f"labels={self.labels!r} is_fallback={self.is_fallback}>"
        )


class TextPromptClient(_PromptClient):
    """A text prompt, as Langfuse's ``TextPromptClient``: ``prompt`` is the template string."""

    __slots__ = ()
    type: ClassVar[Literal["text"]] = "text"
    _model: TextPrompt

    @property
    def prompt(self) -> str:
        return self._model.prompt

    def compile(self, **kwargs: Any) -> str:
        """The template with ``kwargs`` substituted; a variable not given stays as written."""
        return self._model.compile(**kwargs)

    def get_langchain_prompt(self, **kwargs: Any) -> str:
        """The template for LangChain's ``PromptTemplate``: ``{{x}}`` becomes ``{x}`` (JSON
        braces doubled); variables in ``kwargs`` are substituted first."""
        text = compile_template(self.prompt, kwargs) if kwargs else self.prompt
        return to_langchain_template(text)

    def __eq__(self, other: object) -> bool:
        # Langfuse's definition: the same class, name, version, template and config.
        if isinstance(other, self.__class__):
            return (self.name, self.version, self.prompt, self._model.config) == (
                other.name, other.version, other.prompt, other._model.config
            )
        return False

    __hash__ = None  # type: ignore[assignment]  # as Langfuse's: equal by value, unhashable


class ChatPromptClient(_PromptClient):
    """A chat prompt, as Langfuse's ``ChatPromptClient``: ``prompt`` is a list of
    ``{"type": "message", "role", "content"}`` and ``{"type": "placeholder", "name"}``."""

    __slots__ = ()
    type: ClassVar[Literal["chat"]] = "chat"
    _model: ChatPrompt

    @property
    def prompt(self) -> list[dict[str, Any]]:
        return [
            {"type": "message", "role": item.role, "content": item.content}
            if isinstance(item, ChatMessage) else {"type": "placeholder", "name": item.name}
            for item in self._model.prompt
        ]

    def compile(self, **kwargs: Any) -> list[dict[str, Any]]:
        """Messages as ``{"role", "content"}`` with variables substituted; a placeholder given
        a list of messages becomes them, one not given stays as ``{"type": "placeholder",
        "name"}``."""
        return self._model.compile(**kwargs)

    def get_langchain_prompt(self, **kwargs: Any) -> list[Any]:
        """Messages for LangChain's ``ChatPromptTemplate.from_messages``: ``(role, template)``
        tuples, and for each placeholder not given a LangChain ``MessagesPlaceholder``.
        Without LangChain installed (where Langfuse raises ``ImportError``), such a
        placeholder is LangChain's tuple form ``("placeholder", "{name}")`` instead."""
        messages: list[Any] = []
        for message in self.compile(**kwargs):
            if message.get("type") == "placeholder":
                messages.append(_messages_placeholder(message["name"]))
            elif "role" in message and "content" in message:
                messages.append((message["role"], to_langchain_template(message["content"])))
        return messages

    def __eq__(self, other: object) -> bool:
        # Langfuse's definition: the same class, name, version, messages and config (a
        # message's extra keys do not count).
        if isinstance(other, self.__class__):
            return (self.name, self.version, self.prompt, self._model.config) == (
                other.name, other.version, other.prompt, other._model.config
            )
        return False

    __hash__ = None  # type: ignore[assignment]


def _messages_placeholder(name: str) -> Any:
    try:
        from langchain_core.prompts.chat import MessagesPlaceholder
    except ImportError:
        return ("placeholder", "{" + name + "}")
    return MessagesPlaceholder(variable_name=name)


LangfusePrompt: TypeAlias = TextPromptClient | ChatPromptClient


_VIEWS: dict[type, type[LangfusePrompt]] = {
    TextPrompt: TextPromptClient, ChatPrompt: ChatPromptClient,
}


def wrap(model: Prompt) -> LangfusePrompt:
    """The Langfuse prompt object over ``model``."""
    return _VIEWS[model.__class__](model)


def fallback_model(model: Prompt, version: int | None) -> Prompt:
    """A fallback as Langfuse builds one: at the version asked for, else 0."""
    return attrs.evolve(model, version=version or 0) if version else model
