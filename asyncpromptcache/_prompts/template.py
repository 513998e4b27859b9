"""Langfuse's ``{{ variable }}`` templates, rule for rule as its Python SDK (``TemplateParser``).

One left-to-right pass: ``{{`` opens, the first ``}}`` after it closes, the text between,
stripped, is the name. A given name is replaced by ``str(value)`` (``None`` by ``""``); a name
not given is left exactly as written. A substituted value is never scanned again.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

_OPEN = "{{"
_CLOSE = "}}"


def _variables(content: str) -> Iterator[tuple[str, int, int]]:
    """Yield ``(name, start, end)`` for each ``{{ name }}`` in order."""
    pos = 0
    while pos < len(content):
        start = content.find(_OPEN, pos)
        if start == -1:
            return
        close = content.find(_CLOSE, start)
        if close == -1:
            return
        end = close + len(_CLOSE)
        yield content[start + len(_OPEN) : close].strip(), start, end
        pos = end


def find_variable_names(content: str) -> list[str]:
    """The variable names of a template, in order, repeats included (as Langfuse returns them)."""
    return [name for name, _, _ in _variables(content)]


def compile_template(
    content: str, data: Mapping[str, Any], missing: list[str] | None = None
) -> str:
    """Substitute ``data`` into ``content``; names not in ``data`` are appended to ``missing``."""
    parts: list[str] = []
    pos = 0
    for name, start, end in _variables(content):
        parts.append(content[pos:start])
        if name in data:
            value = data[name]
            parts.append("" if value is None else str(value))
        else:
            parts.append(content[start:end])
            if missing is not None:
                missing.append(name)
        pos = end
    parts.append(content[pos:])
    return "".join(parts)


_LANGCHAIN_VARIABLE = re.compile(r"{{\s*(\w+)\s*}}")


def to_langchain_template(content: str) -> str:
    """Langfuse's conversion to a LangChain f-string template: ``{{x}}`` -> ``{x}``.

    Braces that open a JSON object (the next non-space character is a quote) are doubled so
    that LangChain reads them literally; existing ``{{``/``}}`` pairs are left alone.
    """
    out: list[str] = []
    stack: list[bool] = []
    i, n = 0, len(content)
    while i < n:
        ch = content[i]
        if ch in "{}" and i + 1 < n and content[i + 1] == ch:
            out.append(ch * 2)
            i += 2
            continue
        if ch == "{":
            j = i + 1
            while j < n and content[j].isspace():
                j += 1
            is_json = j < n and content[j] in "'\""
            out.append("{{" if is_json else "{")
            stack.append(is_json)
        elif ch == "}":
            is_json = stack.pop() if stack else False
            out.append("}}" if is_json else "}")
        else:
            out.append(ch)
        i += 1
    return _LANGCHAIN_VARIABLE.sub(r"{\g<1>}", "".join(out))
