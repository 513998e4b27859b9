"""Templates: every template case against Langfuse's own ``TemplateParser``, plus properties.

Two oracles: Langfuse's Python SDK itself (``langfuse.model``, a dev dependency) and a small
independent model of those rules written below without ``str.find`` or regexes.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from langfuse.model import BasePromptClient, TemplateParser

from asyncpromptcache import TextPrompt
from asyncpromptcache._prompts.template import (
    compile_template,
    find_variable_names,
    to_langchain_template,
)

# -- the two oracles ---------------------------------------------------------------------------


def langfuse_compile(content: str, data: dict[str, Any]) -> str:
    result: Any = TemplateParser.compile_template(content, data)
    assert isinstance(result, str)
    return result


def langfuse_variables(content: str) -> list[str]:
    result: Any = TemplateParser.find_variable_names(content)
    assert isinstance(result, list)
    return result


def langfuse_langchain(content: str) -> str:
    result: Any = BasePromptClient._get_langchain_prompt_string(content)
    assert isinstance(result, str)
    return result


def _pair_at(text: str, i: int, ch: str) -> bool:
    return i + 1 < len(text) and text[i] == ch and text[i + 1] == ch


def _strip(text: str) -> str:
    start, end = 0, len(text)
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return text[start:end]


def model_tokens(template: str) -> list[tuple[str, str | None]]:
    """The template as ``(raw_text, name)`` pieces; ``name`` is None for literal text.

    The template rules restated: scanning left to right, ``{{`` opens a variable and the first
    ``}}`` after it closes it; with no ``}}`` after it the rest is literal.
    """
    pieces: list[tuple[str, str | None]] = []
    literal: list[str] = []
    i = 0
    while i < len(template):
        if _pair_at(template, i, "{"):
            k = i + 2
            while k < len(template) and not _pair_at(template, k, "}"):
                k += 1
            if k >= len(template):  # unclosed: everything from here on is literal
                literal.append(template[i:])
                break
            if literal:
                pieces.append(("".join(literal), None))
                literal = []
            pieces.append((template[i : k + 2], _strip(template[i + 2 : k])))
            i = k + 2
        else:
            literal.append(template[i])
            i += 1
    if literal:
        pieces.append(("".join(literal), None))
    return pieces


def model_compile(template: str, data: dict[str, Any]) -> str:
    out = []
    for raw, name in model_tokens(template):
        if name is None or name not in data:
            out.append(raw)
        elif data[name] is None:
            out.append("")
        else:
            out.append(str(data[name]))
    return "".join(out)


def model_variables(template: str) -> list[str]:
    return [name for _, name in model_tokens(template) if name is not None]


# -- the template cases -------------------------------------------------------------------------

CASES: list[tuple[str, str, dict[str, Any], str]] = [
    ("plain", "Hi {{a}}!", {"a": "Ann"}, "Hi Ann!"),
    ("spaces inside", "Hi {{ a }}!", {"a": "Ann"}, "Hi Ann!"),
    ("tabs and many spaces", "{{\t  a   }}", {"a": "x"}, "x"),
    ("repeated", "{{a}} {{a}}", {"a": "z"}, "z z"),
    ("missing variable", "Hi {{a}} and {{ b }}", {"a": "A"}, "Hi A and {{ b }}"),
    ("missing, nothing given", "{{ a }}", {}, "{{ a }}"),
    ("None", "[{{a}}]", {"a": None}, "[]"),
    ("int", "n={{a}}", {"a": 42}, "n=42"),
    ("zero", "n={{a}}", {"a": 0}, "n=0"),
    ("False", "{{a}}", {"a": False}, "False"),
    ("float", "{{a}}", {"a": 1.5}, "1.5"),
    ("dict", "{{a}}", {"a": {"k": [1, "v"]}}, "{'k': [1, 'v']}"),
    ("list", "{{a}}", {"a": [1, "two", None]}, "[1, 'two', None]"),
    ("empty string", "<{{a}}>", {"a": ""}, "<>"),
    ("no second substitution", "{{a}} {{b}}", {"a": "{{b}}", "b": "B"}, "{{b}} B"),
    ("value refers to itself", "{{a}}", {"a": "{{a}}"}, "{{a}}"),
    ("unclosed", "x {{a", {"a": "A"}, "x {{a"),
    ("closed then unclosed", "{{a}} {{a", {"a": "A"}, "A {{a"),
    ("empty name", "{{}}", {"a": "A"}, "{{}}"),
    ("empty name given", "<{{}}>", {"": "E"}, "<E>"),
    ("blank name given", "<{{   }}>", {"": "E"}, "<E>"),
    ("triple braces", "{{{a}}}", {"a": "A"}, "{{{a}}}"),
    ("triple braces, name with brace", "{{{a}}}", {"{a": "A"}, "A}"),
    ("extra closing brace", "{{a}}}", {"a": "A"}, "A}"),
    ("single braces", "{a} {", {"a": "A"}, "{a} {"),
    ("two words", "{{ a b }}", {"a": "A", "b": "B"}, "{{ a b }}"),
    ("two words given", "{{ a b }}", {"a b": "AB"}, "AB"),
    ("newline inside", "{{\na\n}}", {"a": "A"}, "A"),
    ("newline in the name", "{{a\nb}}", {"a": "A"}, "{{a\nb}}"),
    ("newline in the name given", "{{a\nb}}", {"a\nb": "AB"}, "AB"),
    ("newlines outside", "line1\n{{a}}\nline3", {"a": "L2"}, "line1\nL2\nline3"),
    (
        "unicode name and value",
        "¡Hola {{ nombre_ñ }}! {{名前}}",
        {"nombre_ñ": "José", "名前": "山田"},
        "¡Hola José! 山田",
    ),
    ("emoji value", "{{a}}", {"a": "🎉"}, "🎉"),
    ("unicode whitespace stripped", "{{\u00a0a\u2003}}", {"a": "A"}, "A"),
    ("empty template", "", {"a": "A"}, ""),
    ("no variables", "just text", {"a": "A"}, "just text"),
    ("closing before opening", "}} {{a}}", {"a": "A"}, "}} A"),
    ("first closing wins", "{{a}} b}}", {"a": "A"}, "A b}}"),
    ("opening inside a variable", "{{a {{b}}", {"a {{b": "X", "b": "B"}, "X"),
    ("value with braces and newline", "{{a}}", {"a": "}}\n{{"}, "}}\n{{"),
    ("json around", '{"k": "{{a}}"}', {"a": "v"}, '{"k": "v"}'),
    ("dotted name is a plain name", "{{a.b}}", {"a": {"b": 1}}, "{{a.b}}"),
    ("mustache section is a plain name", "{{#a}}x{{/a}}", {"a": True}, "{{#a}}x{{/a}}"),
]


@pytest.mark.parametrize(
    ("template", "data", "expected"),
    [pytest.param(t, d, e, id=i) for i, t, d, e in CASES],
)
def test_case_matches_langfuse(template: str, data: dict[str, Any], expected: str) -> None:
    # The expected strings are written out so that a change in Langfuse itself shows up too.
    assert langfuse_compile(template, data) == expected
    assert compile_template(template, data) == expected
    assert TextPrompt(name="p", version=1, prompt=template).compile(**data) == expected


@pytest.mark.parametrize(
    ("template", "data"), [pytest.param(t, d, id=i) for i, t, d, _ in CASES]
)
def test_case_matches_reference_model(template: str, data: dict[str, Any]) -> None:
    assert compile_template(template, data) == model_compile(template, data)


@pytest.mark.parametrize("template", [pytest.param(t, id=i) for i, t, _, _ in CASES])
def test_variables_match_langfuse(template: str) -> None:
    ours = find_variable_names(template)
    assert ours == langfuse_variables(template)
    assert ours == model_variables(template)
    assert TextPrompt(name="p", version=1, prompt=template).variables == ours


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("", []),
        ("no vars", []),
        ("{{a}} {{ b }} {{a}}", ["a", "b", "a"]),  # repeats kept, in order
        ("{{}}", [""]),
        ("{{{a}}}", ["{a"]),
        ("{{ a b }}", ["a b"]),
        ("{{a", []),
        ("{{\n名前\n}}", ["名前"]),
    ],
)
def test_variables_written_out(template: str, expected: list[str]) -> None:
    assert langfuse_variables(template) == expected
    assert find_variable_names(template) == expected


def test_missing_names_are_collected_in_order() -> None:
    missing: list[str] = []
    out = compile_template("{{a}} {{b}} {{ c }} {{b}}", {"a": 1}, missing)
    assert out == "1 {{b}} {{ c }} {{b}}"
    assert missing == ["b", "c", "b"]


def test_compile_does_not_mutate_data() -> None:
    data: dict[str, Any] = {"a": ["x"], "b": None}
    compile_template("{{a}}{{b}}{{c}}", data)
    assert data == {"a": ["x"], "b": None}


# -- LangChain conversion ----------------------------------------------------------------------

LANGCHAIN_CASES = [
    "Hello {{name}}",
    "Hello {{ name }} and {{other_1}}",
    'Return JSON like {"name": "{{name}}", "age": {{age}}}',
    "Return JSON like { 'a': 1 }",
    '{\n  "nested": {"k": "v"},\n  "list": [{"x": 1}]\n}',
    "{not json} and {{var}}",
    "unbalanced } and { and }}",
    '{{ "quoted in doubled braces" }}',
    "{{a b}} stays, {{ a-b }} stays",
    "{{名前}} is \\w in Python regexes",
    "",
    '{  "spaced": true }',
    "}}}{{{",
]


@pytest.mark.parametrize("content", LANGCHAIN_CASES)
def test_langchain_string_matches_langfuse(content: str) -> None:
    assert to_langchain_template(content) == langfuse_langchain(content)


def test_langchain_string_written_out() -> None:
    content = 'Answer as {"name": "{{name}}"} for {{ user }} {x}'
    expected = 'Answer as {{"name": "{name}"}} for {user} {x}'
    assert langfuse_langchain(content) == expected
    assert to_langchain_template(content) == expected


# -- properties --------------------------------------------------------------------------------

FRAGMENTS = [
    "{{", "}}", "{", "}", " ", "  ", "\n", "\t", "a", "b", "x", "a b", "é", "名", "_", "1",
    "{{a}}", "{{ b }}", "{{x}}", "{{ 名 }}", "{{}}", '"', "'", ":", "\u00a0",
]
NAMES = ["a", "b", "x", "名", "", "a b", "{a", "1", "é", "_"]

templates = st.lists(st.sampled_from(FRAGMENTS), max_size=14).map("".join) | st.text(
    alphabet="{} \n\tab名x\"'", max_size=30
)
values = st.one_of(
    st.text(alphabet="{} abx名\n", max_size=8),
    st.sampled_from(["{{x}}", "{{a}}", "{{ b }}", "}}", "{{"]),
    st.integers(),
    st.none(),
    st.booleans(),
    st.lists(st.integers() | st.text(max_size=3), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers() | st.none(), max_size=2),
)
datas = st.dictionaries(st.sampled_from(NAMES), values, max_size=6)

PROPERTY_SETTINGS = settings(
    max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@PROPERTY_SETTINGS
@given(template=templates, data=datas)
def test_compile_property_matches_both_oracles(template: str, data: dict[str, Any]) -> None:
    ours = compile_template(template, data)
    assert ours == langfuse_compile(template, data)
    assert ours == model_compile(template, data)


@PROPERTY_SETTINGS
@given(template=templates)
def test_variables_property(template: str) -> None:
    ours = find_variable_names(template)
    assert ours == langfuse_variables(template)
    assert ours == model_variables(template)
    assert compile_template(template, {}) == template  # nothing given: nothing changes


@PROPERTY_SETTINGS
@given(
    content=st.lists(
        st.sampled_from(['{', '}', '{{', '}}', ' ', '"', "'", 'k', ':', '{{v}}', '{{ w }}', '\n']),
        max_size=16,
    ).map("".join)
)
def test_langchain_property_matches_langfuse(content: str) -> None:
    assert to_langchain_template(content) == langfuse_langchain(content)
