"""The house's size rules, measured from the code: no class over 450 lines, no function over
90, at most 12 modules at the package root, and a layout table in the README that names every
room (each subpackage and root module)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "asyncpromptcache"
README = (PACKAGE.parent / "README.md").read_text(encoding="utf-8")
MAX_CLASS, MAX_FUNCTION, MAX_ROOT_MODULES = 450, 90, 12


def _sizes() -> list[tuple[str, str, int]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                assert node.end_lineno is not None
                found.append((f"{path.relative_to(PACKAGE)}:{node.name}", type(node).__name__,
                              node.end_lineno - node.lineno + 1))
    return found


def test_no_class_over_450_lines_and_no_function_over_90() -> None:
    sizes = _sizes()
    assert len(sizes) > 100  # the walk found the package
    big_classes = [(where, n) for where, kind, n in sizes if kind == "ClassDef" and n > MAX_CLASS]
    long_functions = [(where, n) for where, kind, n in sizes
                      if kind != "ClassDef" and n > MAX_FUNCTION]
    assert big_classes == []
    assert long_functions == []


def test_at_most_twelve_modules_at_the_package_root() -> None:
    modules = sorted(path.name for path in PACKAGE.glob("*.py"))
    assert "__init__.py" in modules
    assert len(modules) <= MAX_ROOT_MODULES, modules


def test_the_readme_layout_table_names_every_room() -> None:
    layout = README.split("## Layout", 1)[1].split("\n## ", 1)[0]
    rooms = re.findall(r"^\| `([^`]+)`", layout, flags=re.MULTILINE)
    subpackages = {f"{path.parent.name}/" for path in PACKAGE.glob("*/__init__.py")}
    root_modules = {path.name for path in PACKAGE.glob("*.py")} - {"__init__.py", "__main__.py"}
    named = {room.split(" ")[0] for room in rooms}
    missing = sorted(room for room in subpackages | root_modules
                     if not any(name.startswith(room) for name in named))
    assert missing == []
