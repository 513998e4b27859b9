"""Prompt models: compile against Langfuse's own prompt clients, strict mode, the strict parser,
serialisation and fallbacks.

Langfuse's clients are built exactly as its SDK builds them from a server answer: the wire dict
goes through ``parse_obj_as(Prompt, ...)`` into ``Prompt_Text``/``Prompt_Chat``.
"""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Callable
from typing import Any

import attrs
import pytest
from hypothesis import given, settings, strategies as st
from langfuse.api import Prompt as LangfusePrompt, Prompt_Chat, Prompt_Text
from langfuse.api.core.pydantic_utilities import parse_obj_as
from langfuse.model import ChatPromptClient, TextPromptClient

from asyncpromptcache import (
    ChatMessage,
    ChatPrompt,
    InvalidArgumentError,
    InvalidResponseError,
    Placeholder,
    PromptCacheError,
    TemplateError,
    TextPrompt,
    parse_prompt,
)
from asyncpromptcache._prompts.models import prompt_from_value

# -- wire payloads shaped like Langfuse's server answers ---------------------------------------

SERVER_ONLY_FIELDS = (
    "id", "createdAt", "updatedAt", "projectId", "createdBy", "resolutionGraph", "isActive",
)

TEXT_PAYLOAD: dict[str, Any] = {
    "id": "cm3x0q2c50001ad8p0v9k1s2t",
    "createdAt": "2024-11-20T10:15:02.345Z",
    "updatedAt": "2024-11-20T10:15:02.345Z",
    "projectId": "cm3wzz1f00000ad8pq3b8c7d6",
    "createdBy": "API",
    "name": "movie-critic",
    "version": 3,
    "type": "text",
    "prompt": "As a {{criticLevel}} movie critic, do you like {{ movie }}?",
    "config": {"model": "gpt-4o", "temperature": 0.7, "stop": ["\n"]},
    "labels": ["production", "latest"],
    "tags": ["movies", "критик"],
    "commitMessage": None,
    "resolutionGraph": None,
    "isActive": None,
}

CHAT_PAYLOAD: dict[str, Any] = {
    "id": "cm3x0q2c50002ad8p7a1b2c3d",
    "createdAt": "2024-11-21T08:00:00.000Z",
    "updatedAt": "2024-11-21T08:00:00.000Z",
    "projectId": "cm3wzz1f00000ad8pq3b8c7d6",
    "createdBy": "API",
    "name": "team/support/answer",
    "version": 12,
    "type": "chat",
    "prompt": [
        {"type": "chatmessage", "role": "system", "content": "You help with {{product}}."},
        {"type": "placeholder", "name": "history"},
        {"role": "user", "content": "{{ question }}"},
    ],
    "config": {"model": "gpt-4o-mini"},
    "labels": ["staging"],
    "tags": [],
    "commitMessage": "tone down the system prompt",
    "resolutionGraph": None,
}


def payload(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(base)
    data.update(changes)
    return data


def wire_only(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in SERVER_ONLY_FIELDS}


def langfuse_client(data: dict[str, Any]) -> Any:
    """Langfuse's own prompt client for a wire dict, built the way its SDK builds it."""
    parsed: Any = parse_obj_as(LangfusePrompt, copy.deepcopy(data))  # type: ignore[arg-type]
    if isinstance(parsed, Prompt_Chat):
        return ChatPromptClient(parsed)
    assert isinstance(parsed, Prompt_Text)
    return TextPromptClient(parsed)


def items_of(messages: Any) -> list[list[tuple[str, Any]]]:
    """Messages as ordered key/value lists, so that key order is compared too (it is JSON)."""
    return [list(dict(m).items()) for m in messages]


def chat(*items: dict[str, Any], name: str = "c") -> dict[str, Any]:
    return {
        "name": name, "version": 1, "type": "chat", "prompt": list(items), "config": {},
        "labels": [], "tags": [], "commitMessage": None,
    }


def text(template: str) -> dict[str, Any]:
    return {
        "name": "t", "version": 1, "type": "text", "prompt": template, "config": {},
        "labels": [], "tags": [], "commitMessage": None,
    }


def parse_chat(data: dict[str, Any]) -> ChatPrompt:
    prompt = parse_prompt(data)
    assert isinstance(prompt, ChatPrompt)
    return prompt


def parse_text(data: dict[str, Any]) -> TextPrompt:
    prompt = parse_prompt(data)
    assert isinstance(prompt, TextPrompt)
    return prompt


# -- parsing -----------------------------------------------------------------------------------


def test_parse_text_payload() -> None:
    prompt = parse_prompt(copy.deepcopy(TEXT_PAYLOAD))
    assert prompt == TextPrompt(
        name="movie-critic",
        version=3,
        prompt="As a {{criticLevel}} movie critic, do you like {{ movie }}?",
        config={"model": "gpt-4o", "temperature": 0.7, "stop": ["\n"]},
        labels=("production", "latest"),
        tags=("movies", "критик"),
        commit_message=None,
    )
    assert prompt.type == "text"
    assert prompt.is_fallback is False
    assert prompt.labels == ("production", "latest")


def test_parse_chat_payload() -> None:
    prompt = parse_prompt(copy.deepcopy(CHAT_PAYLOAD))
    assert isinstance(prompt, ChatPrompt)
    assert prompt.type == "chat"
    assert prompt.name == "team/support/answer"
    assert prompt.version == 12
    assert prompt.commit_message == "tone down the system prompt"
    assert prompt.labels == ("staging",)
    assert prompt.tags == ()
    assert prompt.config == {"model": "gpt-4o-mini"}
    assert prompt.is_fallback is False
    assert prompt.prompt == (
        ChatMessage(role="system", content="You help with {{product}}.", type="chatmessage"),
        Placeholder(name="history"),
        ChatMessage(role="user", content="{{ question }}"),
    )
    assert prompt.variables == ["product", "question"]
    assert prompt.placeholders == ["history"]


@pytest.mark.parametrize("base", [TEXT_PAYLOAD, CHAT_PAYLOAD], ids=["text", "chat"])
def test_parsed_fields_agree_with_langfuse(base: dict[str, Any]) -> None:
    ours = parse_prompt(copy.deepcopy(base))
    theirs = langfuse_client(base)
    assert ours.name == theirs.name
    assert ours.version == theirs.version
    assert ours.config == theirs.config
    assert list(ours.labels) == theirs.labels
    assert list(ours.tags) == theirs.tags
    assert ours.commit_message == theirs.commit_message
    assert ours.variables == theirs.variables
    assert ours.is_fallback is theirs.is_fallback is False


@pytest.mark.parametrize("base", [TEXT_PAYLOAD, CHAT_PAYLOAD], ids=["text", "chat"])
def test_round_trip(base: dict[str, Any]) -> None:
    prompt = parse_prompt(copy.deepcopy(base))
    assert prompt.to_dict() == wire_only(base)
    assert parse_prompt(prompt.to_dict()) == prompt
    # Plain JSON data, no tuples or attrs objects left in it.
    assert json.loads(json.dumps(prompt.to_dict())) == wire_only(base)


def test_missing_commit_message_is_null() -> None:
    data = wire_only(TEXT_PAYLOAD)
    del data["commitMessage"]
    prompt = parse_prompt(data)
    assert prompt.commit_message is None
    assert prompt.to_dict()["commitMessage"] is None


@pytest.mark.parametrize("config", [None, [], "raw", 3, {"nested": {"a": [1, None]}}])
def test_config_may_be_any_json(config: Any) -> None:
    prompt = parse_prompt(payload(TEXT_PAYLOAD, config=config))
    assert prompt.config == config
    assert prompt.to_dict()["config"] == config


def test_chat_message_type_is_kept_only_when_sent() -> None:
    prompt = parse_chat(copy.deepcopy(CHAT_PAYLOAD))
    out = prompt.to_dict()["prompt"]
    assert out[0] == {
        "type": "chatmessage", "role": "system", "content": "You help with {{product}}."
    }
    assert out[2] == {"role": "user", "content": "{{ question }}"}
    assert "type" not in out[2]


def test_extra_fields_in_items_are_ignored() -> None:
    data = chat(
        {"role": "user", "content": "hi", "id": "m1", "metadata": {"x": 1}},
        {"type": "placeholder", "name": "h", "extra": True},
    )
    prompt = parse_chat(data)
    assert prompt.prompt == (ChatMessage(role="user", content="hi"), Placeholder(name="h"))


def test_input_lists_are_copied() -> None:
    data = copy.deepcopy(CHAT_PAYLOAD)
    prompt = parse_chat(data)
    data["labels"].append("production")
    data["tags"].append("t")
    data["prompt"].append({"role": "user", "content": "late"})
    data["prompt"][0]["content"] = "changed"
    assert prompt.labels == ("staging",)
    assert prompt.tags == ()
    assert len(prompt.prompt) == 3
    assert prompt.prompt[0] == ChatMessage(
        role="system", content="You help with {{product}}.", type="chatmessage"
    )


def _delete(key: str) -> Callable[[dict[str, Any]], None]:
    def mutate(data: dict[str, Any]) -> None:
        del data[key]

    return mutate


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(data: dict[str, Any]) -> None:
        data[key] = value

    return mutate


def _set_item(index: int, key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(data: dict[str, Any]) -> None:
        data["prompt"][index][key] = value

    return mutate


def _del_item(index: int, key: str) -> Callable[[dict[str, Any]], None]:
    def mutate(data: dict[str, Any]) -> None:
        del data["prompt"][index][key]

    return mutate


def _replace_item(index: int, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(data: dict[str, Any]) -> None:
        data["prompt"][index] = value

    return mutate


REQUIRED = ["name", "version", "type", "prompt", "config", "labels", "tags"]

BAD_PAYLOADS: list[Any] = [
    *[pytest.param(TEXT_PAYLOAD, _delete(k), k, id=f"text-missing-{k}") for k in REQUIRED],
    *[pytest.param(CHAT_PAYLOAD, _delete(k), k, id=f"chat-missing-{k}") for k in REQUIRED],
    pytest.param(TEXT_PAYLOAD, _set("version", "1"), "version", id="version-str"),
    pytest.param(TEXT_PAYLOAD, _set("version", True), "version", id="version-true"),
    pytest.param(TEXT_PAYLOAD, _set("version", 1.5), "version", id="version-float"),
    pytest.param(TEXT_PAYLOAD, _set("version", None), "version", id="version-null"),
    pytest.param(TEXT_PAYLOAD, _set("name", 5), "name", id="name-int"),
    pytest.param(TEXT_PAYLOAD, _set("name", None), "name", id="name-null"),
    pytest.param(TEXT_PAYLOAD, _set("labels", [1]), "labels[0]", id="labels-int-item"),
    pytest.param(TEXT_PAYLOAD, _set("labels", ["ok", None]), "labels[1]", id="labels-null-item"),
    pytest.param(TEXT_PAYLOAD, _set("labels", "production"), "labels", id="labels-str"),
    pytest.param(TEXT_PAYLOAD, _set("tags", [True]), "tags[0]", id="tags-bool-item"),
    pytest.param(TEXT_PAYLOAD, _set("tags", {"a": 1}), "tags", id="tags-object"),
    pytest.param(TEXT_PAYLOAD, _set("prompt", 5), "prompt", id="text-prompt-int"),
    pytest.param(TEXT_PAYLOAD, _set("prompt", ["x"]), "prompt", id="text-prompt-list"),
    pytest.param(TEXT_PAYLOAD, _set("prompt", None), "prompt", id="text-prompt-null"),
    pytest.param(CHAT_PAYLOAD, _set("prompt", "x"), "prompt", id="chat-prompt-str"),
    pytest.param(CHAT_PAYLOAD, _set("prompt", {"role": "u"}), "prompt", id="chat-prompt-object"),
    pytest.param(CHAT_PAYLOAD, _replace_item(0, "hi"), "prompt[0]", id="chat-item-str"),
    pytest.param(CHAT_PAYLOAD, _replace_item(2, None), "prompt[2]", id="chat-item-null"),
    pytest.param(CHAT_PAYLOAD, _replace_item(1, ["a"]), "prompt[1]", id="chat-item-list"),
    pytest.param(CHAT_PAYLOAD, _del_item(0, "role"), "prompt[0].role", id="message-no-role"),
    pytest.param(CHAT_PAYLOAD, _set_item(2, "role", None), "prompt[2].role", id="role-null"),
    pytest.param(CHAT_PAYLOAD, _del_item(2, "content"), "prompt[2].content", id="no-content"),
    pytest.param(CHAT_PAYLOAD, _set_item(2, "content", 5), "prompt[2].content", id="content-int"),
    pytest.param(
        CHAT_PAYLOAD, _set_item(0, "content", [{"type": "text", "text": "hi"}]),
        "prompt[0].content", id="content-list",
    ),
    pytest.param(CHAT_PAYLOAD, _del_item(1, "name"), "prompt[1].name", id="placeholder-no-name"),
    pytest.param(
        CHAT_PAYLOAD, _set_item(1, "name", 3), "prompt[1].name", id="placeholder-name-int"
    ),
    pytest.param(CHAT_PAYLOAD, _set("type", "foo"), "type", id="type-foo"),
    pytest.param(TEXT_PAYLOAD, _set("type", None), "type", id="type-null"),
    pytest.param(TEXT_PAYLOAD, _set("type", 1), "type", id="type-int"),
    pytest.param(CHAT_PAYLOAD, _set_item(0, "type", "weird"), "prompt[0].type", id="item-weird"),
    pytest.param(TEXT_PAYLOAD, _set("commitMessage", 5), "commitMessage", id="commit-int"),
]


@pytest.mark.parametrize(("base", "mutate", "field"), BAD_PAYLOADS)
def test_bad_payload_names_the_field(
    base: dict[str, Any], mutate: Callable[[dict[str, Any]], None], field: str
) -> None:
    data = copy.deepcopy(base)
    mutate(data)
    with pytest.raises(InvalidResponseError) as info:
        parse_prompt(data)
    assert info.value.field == field
    assert field in str(info.value)
    assert isinstance(info.value, PromptCacheError)


@pytest.mark.parametrize(
    "data", [None, [], [copy.deepcopy(TEXT_PAYLOAD)], "text", 5, b"{}", json.dumps(TEXT_PAYLOAD)]
)
def test_non_object_payload_is_invalid(data: Any) -> None:
    with pytest.raises(InvalidResponseError) as info:
        parse_prompt(data)
    assert info.value.field is None


# -- frozen models ----------------------------------------------------------------------------


def test_models_are_frozen() -> None:
    text_prompt = parse_prompt(copy.deepcopy(TEXT_PAYLOAD))
    chat_prompt = parse_chat(copy.deepcopy(CHAT_PAYLOAD))
    message = chat_prompt.prompt[0]
    placeholder = chat_prompt.prompt[1]
    assert isinstance(message, ChatMessage)
    assert isinstance(placeholder, Placeholder)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        text_prompt.prompt = "changed"  # type: ignore[misc]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        text_prompt.version = 4  # type: ignore[misc]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        chat_prompt.labels = ("x",)  # type: ignore[misc]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        message.content = "changed"  # type: ignore[misc]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        placeholder.name = "changed"  # type: ignore[misc]
    assert isinstance(chat_prompt.prompt, tuple)
    assert isinstance(chat_prompt.labels, tuple)


def test_equality() -> None:
    a = parse_prompt(copy.deepcopy(CHAT_PAYLOAD))
    assert a == parse_prompt(copy.deepcopy(CHAT_PAYLOAD))
    assert a != parse_prompt(payload(CHAT_PAYLOAD, version=13))
    assert a != parse_prompt(payload(CHAT_PAYLOAD, config={"model": "other"}))
    assert a != parse_prompt(payload(CHAT_PAYLOAD, labels=["production"]))


# -- text compile vs Langfuse ------------------------------------------------------------------

TEXT_KWARGS: list[dict[str, Any]] = [
    {},
    {"criticLevel": "expert", "movie": "Dune 2"},
    {"criticLevel": None},
    {"movie": {"title": "Dune", "year": 2024}},
    {"criticLevel": "{{movie}}", "movie": "M"},
    {"criticLevel": ["a", 1], "unused": "x"},
]


@pytest.mark.parametrize("kwargs", TEXT_KWARGS)
def test_text_compile_matches_langfuse(kwargs: dict[str, Any]) -> None:
    ours = parse_text(copy.deepcopy(TEXT_PAYLOAD))
    theirs = langfuse_client(TEXT_PAYLOAD)
    assert ours.compile(**kwargs) == theirs.compile(**kwargs)


def test_text_compile_written_out() -> None:
    ours = parse_text(copy.deepcopy(TEXT_PAYLOAD))
    assert ours.compile(criticLevel="expert", movie="Dune 2") == (
        "As a expert movie critic, do you like Dune 2?"
    )
    assert ours.compile(movie="Dune 2") == "As a {{criticLevel}} movie critic, do you like Dune 2?"


LANGCHAIN_TEXTS = [
    "As a {{criticLevel}} critic, rate {{ movie }}.",
    'Reply as JSON: {"rating": "{{rating}}", "pros": [{"k": 1}]} for {{ movie }}',
    "Use {braces} freely but {{var}} is a variable",
    "",
]


@pytest.mark.parametrize("template", LANGCHAIN_TEXTS)
@pytest.mark.parametrize("kwargs", [{}, {"movie": "Dune"}, {"rating": "{{x}}", "var": None}])
def test_text_langchain_matches_langfuse(template: str, kwargs: dict[str, Any]) -> None:
    ours = parse_text(text(template))
    theirs = langfuse_client(text(template))
    assert ours.get_langchain_prompt(**kwargs) == theirs.get_langchain_prompt(**kwargs)


def test_text_langchain_written_out() -> None:
    ours = parse_text(text('JSON {"a": "{{ x }}"} for {{y}}'))
    assert ours.get_langchain_prompt() == 'JSON {{"a": "{x}"}} for {y}'
    assert ours.get_langchain_prompt(y="Y") == 'JSON {{"a": "{x}"}} for Y'


# -- chat compile vs Langfuse ------------------------------------------------------------------

CHAT_CASES: list[Any] = [
    pytest.param(
        chat(
            {"role": "system", "content": "You are {{ persona }}."},
            {"role": "user", "content": "{{q}} {{q}} {{missing}}"},
        ),
        {"persona": "kind", "q": 7},
        id="variables",
    ),
    pytest.param(
        chat(
            {"role": "system", "content": "sys {{a}}"},
            {"type": "placeholder", "name": "history"},
            {"role": "user", "content": "{{a}}?"},
        ),
        {
            "a": "A",
            "history": [
                {"role": "user", "content": "hello {{a}}", "name": "u1"},
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [{"id": "call_1", "type": "function",
                                    "function": {"name": "f", "arguments": "{}"}}],
                },
                {"role": "tool", "content": "{{ a }} done", "tool_call_id": "call_1"},
            ],
        },
        id="placeholder-with-tool-calls",
    ),
    pytest.param(
        chat({"role": "system", "content": "s"}, {"type": "placeholder", "name": "history"}),
        {},
        id="placeholder-not-given",
    ),
    pytest.param(
        chat({"type": "placeholder", "name": "h"}, {"role": "user", "content": "{{x}}"}),
        {"x": "X", "h": "just a string"},
        id="placeholder-str",
    ),
    pytest.param(
        chat({"type": "placeholder", "name": "h"}),
        {"h": {"role": "user", "content": "a dict, not a list"}},
        id="placeholder-dict",
    ),
    pytest.param(chat({"type": "placeholder", "name": "h"}), {"h": 3}, id="placeholder-int"),
    pytest.param(chat({"type": "placeholder", "name": "h"}), {"h": None}, id="placeholder-none"),
    pytest.param(
        chat({"type": "placeholder", "name": "h"}),
        {"h": [{"role": "user", "content": "ok"}, "not a dict", 5]},
        id="list-with-non-dicts",
    ),
    pytest.param(
        chat({"type": "placeholder", "name": "h"}),
        {"h": [{"content": "no role {{v}}"}, {"role": "user"}, {}], "v": "V"},
        id="messages-missing-role-or-content",
    ),
    pytest.param(
        chat({"type": "placeholder", "name": "h"}),
        {"h": []},
        id="empty-list",
    ),
    pytest.param(
        chat(
            {"type": "placeholder", "name": "a"},
            {"type": "placeholder", "name": "b"},
            {"role": "user", "content": "{{ a }}"},
        ),
        {"a": [{"role": "user", "content": "{{b}}"}], "b": "B"},
        id="placeholder-name-also-a-variable",
    ),
    pytest.param(
        chat({"role": "user", "content": "{{x}}"}, {"type": "placeholder", "name": "h"}),
        {"x": "{{h}}", "h": [{"role": "user", "content": "{{x}}"}]},
        id="no-second-substitution",
    ),
    pytest.param(
        chat({"role": "assistant", "content": ""}, {"role": "user", "content": "ünï {{ 名 }}"}),
        {"名": "値"},
        id="unicode-and-empty",
    ),
]


@pytest.mark.parametrize(("data", "kwargs"), CHAT_CASES)
def test_chat_compile_matches_langfuse(data: dict[str, Any], kwargs: dict[str, Any]) -> None:
    ours = parse_chat(data).compile(**copy.deepcopy(kwargs))
    theirs = langfuse_client(data).compile(**copy.deepcopy(kwargs))
    assert items_of(ours) == items_of(theirs)


@pytest.mark.parametrize(("data", "kwargs"), CHAT_CASES)
def test_chat_variables_match_langfuse(data: dict[str, Any], kwargs: dict[str, Any]) -> None:
    assert parse_chat(data).variables == langfuse_client(data).variables


def test_chat_compile_written_out() -> None:
    prompt = parse_chat(copy.deepcopy(CHAT_PAYLOAD))
    tool_call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    history = [
        {"role": "user", "content": "about {{product}}"},
        {"role": "assistant", "content": "", "tool_calls": [tool_call]},
    ]
    out = prompt.compile(product="Widget", question="Why?", history=history)
    assert out == [
        {"role": "system", "content": "You help with Widget."},
        {"role": "user", "content": "about Widget"},
        {"role": "assistant", "content": "", "tool_calls": [tool_call]},
        {"role": "user", "content": "Why?"},
    ]
    # The caller's messages are copied, not compiled in place.
    assert history[0] == {"role": "user", "content": "about {{product}}"}
    assert prompt.compile(product="Widget") == [
        {"role": "system", "content": "You help with Widget."},
        {"type": "placeholder", "name": "history"},
        {"role": "user", "content": "{{ question }}"},
    ]


def test_chat_compile_output_is_not_shared_with_the_prompt() -> None:
    prompt = parse_chat(copy.deepcopy(CHAT_PAYLOAD))
    first = prompt.compile()
    first[1]["name"] = "mutated"
    first[0]["content"] = "mutated"
    assert prompt.compile() == [
        {"role": "system", "content": "You help with {{product}}."},
        {"type": "placeholder", "name": "history"},
        {"role": "user", "content": "{{ question }}"},
    ]


def _resolved(case: Any) -> bool:
    data, kwargs = case.values
    names = {item["name"] for item in data["prompt"] if item.get("type") == "placeholder"}
    return names <= set(kwargs)


# Unresolved placeholders differ on purpose (Langfuse needs langchain_core; see below).
RESOLVED_CHAT_CASES = [case for case in CHAT_CASES if _resolved(case)]


@pytest.mark.parametrize(("data", "kwargs"), RESOLVED_CHAT_CASES)
def test_chat_langchain_matches_langfuse_when_placeholders_are_resolved(
    data: dict[str, Any], kwargs: dict[str, Any]
) -> None:
    ours = parse_chat(data).get_langchain_prompt(**copy.deepcopy(kwargs))
    theirs = langfuse_client(data).get_langchain_prompt(**copy.deepcopy(kwargs))
    assert ours == theirs


def test_chat_langchain_with_json_written_out() -> None:
    prompt = parse_chat(
        chat(
            {"role": "system", "content": 'Answer as {"a": "{{ x }}"}'},
            {"type": "placeholder", "name": "h"},
        )
    )
    out = prompt.get_langchain_prompt(h=[{"role": "user", "content": "{{y}} {z}"}])
    assert out == [("system", 'Answer as {{"a": "{x}"}}'), ("user", "{y} {z}")]


def test_chat_langchain_unresolved_placeholder_is_plain_data() -> None:
    prompt = parse_chat(copy.deepcopy(CHAT_PAYLOAD))
    loaded_before = {m for m in sys.modules if m.startswith("langchain")}
    out = prompt.get_langchain_prompt(product="W")
    assert out == [
        ("system", "You help with W."),
        ("placeholder", "{history}"),
        ("user", "{question}"),
    ]
    assert {m for m in sys.modules if m.startswith("langchain")} == loaded_before


# -- strict compile ----------------------------------------------------------------------------


def test_text_strict_names_every_missing_variable() -> None:
    prompt = parse_text(text("{{a}} {{ b }} {{c}} {{b}} {{a}}"))
    with pytest.raises(TemplateError) as info:
        prompt.compile_strict(c="C")
    assert info.value.missing_variables == ("a", "b")
    assert info.value.missing_placeholders == ()
    assert "'a'" in str(info.value)
    assert "'b'" in str(info.value)
    assert "'c'" not in str(info.value)
    assert isinstance(info.value, PromptCacheError)


def test_chat_strict_names_every_missing_variable_and_placeholder() -> None:
    prompt = parse_chat(
        chat(
            {"role": "system", "content": "{{persona}} {{tone}}"},
            {"type": "placeholder", "name": "history"},
            {"type": "placeholder", "name": "examples"},
            {"role": "user", "content": "{{question}} {{persona}}"},
        )
    )
    with pytest.raises(TemplateError) as info:
        prompt.compile_strict(tone="dry", examples=[])
    assert info.value.missing_variables == ("persona", "question")
    assert info.value.missing_placeholders == ("history",)
    message = str(info.value)
    for name in ("persona", "question", "history"):
        assert name in message
    assert "examples" not in message
    assert "tone" not in message


def test_chat_strict_only_placeholders_missing() -> None:
    prompt = parse_chat(chat({"type": "placeholder", "name": "h"}, {"role": "u", "content": "x"}))
    with pytest.raises(TemplateError) as info:
        prompt.compile_strict()
    assert info.value.missing_variables == ()
    assert info.value.missing_placeholders == ("h",)


def test_strict_equals_compile_when_nothing_is_missing() -> None:
    text_prompt = parse_text(copy.deepcopy(TEXT_PAYLOAD))
    kwargs: dict[str, Any] = {"criticLevel": None, "movie": 3, "unused": "u"}
    assert text_prompt.compile_strict(**kwargs) == text_prompt.compile(**kwargs)
    assert text_prompt.compile_strict(**kwargs) == "As a  movie critic, do you like 3?"

    chat_prompt = parse_chat(copy.deepcopy(CHAT_PAYLOAD))
    history = [{"role": "user", "content": "hi", "tool_calls": []}]
    expected = chat_prompt.compile(product="P", question="Q", history=history)
    assert chat_prompt.compile_strict(product="P", question="Q", history=history) == expected
    assert len(expected) == 3


def test_strict_accepts_a_non_list_placeholder_as_given() -> None:
    # Given but not a list: compile's "NOT_GIVEN" message, as Langfuse does, not a missing one.
    prompt = parse_chat(chat({"type": "placeholder", "name": "h"}))
    assert prompt.compile_strict(h="text") == [{"role": "NOT_GIVEN", "content": "text"}]


def test_strict_with_no_variables() -> None:
    assert parse_text(text("plain")).compile_strict() == "plain"
    assert parse_text(text("")).compile_strict() == ""


@pytest.mark.parametrize("name", ["self", "strict", "variables", "kwargs"])
def test_any_variable_name_works(name: str) -> None:
    template = "<{{" + name + "}}>"
    text_prompt = parse_text(text(template))
    assert text_prompt.compile(**{name: "v"}) == "<v>"
    assert text_prompt.compile_strict(**{name: "v"}) == "<v>"
    assert text_prompt.get_langchain_prompt(**{name: "v"}) == "<v>"
    chat_prompt = parse_chat(chat({"role": "user", "content": template}))
    assert chat_prompt.compile(**{name: "v"}) == [{"role": "user", "content": "<v>"}]
    assert chat_prompt.compile_strict(**{name: "v"}) == [{"role": "user", "content": "<v>"}]
    assert chat_prompt.get_langchain_prompt(**{name: "v"}) == [("user", "<v>")]


def test_strict_true_is_just_a_variable_in_compile() -> None:
    prompt = parse_text(text("{{strict}} {{x}}"))
    assert prompt.compile(strict=True) == "True {{x}}"


def test_placeholder_named_self() -> None:
    prompt = parse_chat(chat({"type": "placeholder", "name": "self"}))
    assert prompt.compile(self=[{"role": "user", "content": "m"}]) == [
        {"role": "user", "content": "m"}
    ]
    with pytest.raises(TemplateError) as info:
        prompt.compile_strict()
    assert info.value.missing_placeholders == ("self",)


# -- fallbacks ---------------------------------------------------------------------------------


def test_text_fallback() -> None:
    prompt = prompt_from_value("greet", "Hi {{name}}", "text")
    assert isinstance(prompt, TextPrompt)
    assert prompt.is_fallback is True
    assert prompt.version == 0
    assert prompt.name == "greet"
    assert prompt.labels == ()
    assert prompt.tags == ()
    assert prompt.config == {}
    assert prompt.compile(name="Ann") == "Hi Ann"
    assert prompt.variables == ["name"]
    fallback_args: dict[str, Any] = {
        "name": "greet", "prompt": "Hi {{name}}", "type": "text", "version": 0, "config": {},
        "labels": [], "tags": [],
    }
    theirs = TextPromptClient(Prompt_Text(**fallback_args), is_fallback=True)
    assert prompt.compile(name="Ann") == theirs.compile(name="Ann")


def test_chat_fallback() -> None:
    messages = [
        {"role": "system", "content": "Be {{tone}}."},
        {"type": "placeholder", "name": "history"},
        {"role": "user", "content": "{{q}}"},
    ]
    prompt = prompt_from_value("support", copy.deepcopy(messages), "chat")
    assert isinstance(prompt, ChatPrompt)
    assert prompt.is_fallback is True
    assert prompt.version == 0
    assert prompt.name == "support"
    assert prompt.prompt == (
        ChatMessage(role="system", content="Be {{tone}}."),
        Placeholder(name="history"),
        ChatMessage(role="user", content="{{q}}"),
    )
    # As Langfuse's get_prompt builds its own fallback (the untyped boundary is theirs).
    fallback_args: dict[str, Any] = {
        "name": "support", "prompt": copy.deepcopy(messages), "type": "chat", "version": 0,
        "config": {}, "labels": [], "tags": [],
    }
    theirs = ChatPromptClient(Prompt_Chat(**fallback_args), is_fallback=True)
    kwargs: dict[str, Any] = {
        "tone": "brief", "q": "?", "history": [{"role": "user", "content": "x"}]
    }
    assert items_of(prompt.compile(**kwargs)) == items_of(theirs.compile(**kwargs))


def test_parsed_prompt_is_not_a_fallback() -> None:
    assert parse_prompt(copy.deepcopy(TEXT_PAYLOAD)).is_fallback is False


@pytest.mark.parametrize(
    ("value", "prompt_type"),
    [
        pytest.param(["Hi"], "text", id="text-list"),
        pytest.param(None, "text", id="text-none"),
        pytest.param(5, "text", id="text-int"),
        pytest.param("Hi", "chat", id="chat-str"),
        pytest.param({"role": "user", "content": "x"}, "chat", id="chat-dict"),
        pytest.param(None, "chat", id="chat-none"),
        pytest.param([1], "chat", id="chat-item-int"),
        pytest.param([{"role": "user"}], "chat", id="chat-no-content"),
        pytest.param([{"content": "x"}], "chat", id="chat-no-role"),
        pytest.param([{"role": "user", "content": 3}], "chat", id="chat-content-int"),
        pytest.param([{"type": "placeholder"}], "chat", id="chat-placeholder-no-name"),
        pytest.param([{"type": "odd", "role": "u", "content": "c"}], "chat", id="chat-odd-type"),
    ],
)
def test_bad_fallback(value: Any, prompt_type: Any) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        prompt_from_value("p", value, prompt_type)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, PromptCacheError)
    # A caller's mistake, not a bad server answer.
    assert not isinstance(info.value, InvalidResponseError)


# -- properties --------------------------------------------------------------------------------

_FRAGMENTS = [
    "{{", "}}", "{", "}", " ", "\n", "a", "b", "h", "{{a}}", "{{ b }}", "{{h}}", "名", '"',
]
_templates = st.lists(st.sampled_from(_FRAGMENTS), max_size=8).map("".join)
_names = st.sampled_from(["a", "b", "h", "名"])
_items = st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(["system", "user"]), "content": _templates}),
    st.fixed_dictionaries(
        {"type": st.just("chatmessage"), "role": st.just("assistant"), "content": _templates}
    ),
    st.fixed_dictionaries({"type": st.just("placeholder"), "name": _names}),
)
_given_message = st.fixed_dictionaries(
    {},
    optional={
        "role": st.sampled_from(["user", "tool"]),
        "content": _templates,
        "tool_calls": st.just([{"id": "c"}]),
    },
)
_kwarg_values = st.one_of(
    st.none(),
    st.integers(-5, 5),
    _templates,
    st.lists(_given_message, max_size=3),
    st.lists(_given_message | st.integers(), max_size=2),
)
_kwargs = st.dictionaries(_names, _kwarg_values, max_size=4)


@settings(max_examples=120, deadline=None)
@given(items=st.lists(_items, max_size=4), kwargs=_kwargs)
def test_chat_compile_property_matches_langfuse(
    items: list[dict[str, Any]], kwargs: dict[str, Any]
) -> None:
    data = chat(*items)
    ours = parse_chat(copy.deepcopy(data))
    theirs = langfuse_client(data)
    assert items_of(ours.compile(**copy.deepcopy(kwargs))) == items_of(
        theirs.compile(**copy.deepcopy(kwargs))
    )
    assert ours.variables == theirs.variables
    assert parse_prompt(ours.to_dict()) == ours
    assert ours.to_dict() == data


@settings(max_examples=60, deadline=None)
@given(
    template=_templates,
    version=st.integers(1, 10**6),
    labels=st.lists(st.sampled_from(["production", "latest", "staging", "a.b-c_1"]), unique=True),
    tags=st.lists(st.text(max_size=5), max_size=3),
    commit=st.none() | st.text(max_size=10),
    config=st.none() | st.dictionaries(st.text(max_size=3), st.integers() | st.text(max_size=3)),
)
def test_text_round_trip_property(
    template: str, version: int, labels: list[str], tags: list[str], commit: str | None,
    config: Any,
) -> None:
    data = {
        "name": "n", "version": version, "type": "text", "prompt": template, "config": config,
        "labels": labels, "tags": tags, "commitMessage": commit,
    }
    prompt = parse_prompt(copy.deepcopy(data))
    assert prompt.to_dict() == data
    assert parse_prompt(prompt.to_dict()) == prompt
    assert prompt.compile(a="A", b=None) == langfuse_client(data).compile(a="A", b=None)


def test_strict_compile_does_not_scan_supplied_history() -> None:
    # A chat history is the caller's data: "{{name}}" in it is text, not a missing variable.
    prompt = ChatPrompt(
        name="support", version=1,
        prompt=[ChatMessage(role="system", content="Help {{user}}."), Placeholder(name="history")],
    )
    history = [{"role": "user", "content": "How do I write {{name}} in jinja?"}]
    assert prompt.compile_strict(user="Ann", history=history) == [
        {"role": "system", "content": "Help Ann."},
        {"role": "user", "content": "How do I write {{name}} in jinja?"},
    ]
