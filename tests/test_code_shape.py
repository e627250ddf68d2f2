"""No long functions: every function and method in asr/, server/ and client/ fits in MAX_LINES lines.

A function is counted from its ``def`` line to its last line (decorators not counted, docstring and comments
counted), as ``ast`` gives them; nested functions count on their own and inside the function around them.
A long function is a set of steps that want names: split it (issue 31).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("asr", "server", "client")
MAX_LINES = 60


def long_functions(source: str, filename: str, limit: int = MAX_LINES) -> list[str]:
    """``file:line name (n lines)`` for each function in ``source`` longer than ``limit`` lines."""
    found = []
    for node in ast.walk(ast.parse(source, filename=filename)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            assert node.end_lineno is not None
            n = node.end_lineno - node.lineno + 1
            if n > limit:
                found.append(f"{filename}:{node.lineno} {node.name} ({n} lines)")
    return found


def test_no_function_is_longer_than_the_limit() -> None:
    files = [p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))]
    assert len(files) > 50, "the packages were not found"
    found = [f for p in files for f in long_functions(p.read_text(), str(p.relative_to(ROOT)))]
    assert not found, f"functions over {MAX_LINES} lines (split them into named steps):\n" + "\n".join(found)


def test_the_check_sees_long_functions_and_methods() -> None:
    def function(header: str, body_lines: int, indent: str = "") -> str:
        return f"{indent}{header}\n" + "".join(f"{indent}    x{i} = {i}\n" for i in range(body_lines))

    fits = function("def fits():", MAX_LINES - 1)  # lines 1-60
    long = function("async def long(self):", MAX_LINES, indent="    ")  # lines 62-122
    source = fits + "class A:\n" + long
    assert long_functions(source, "m.py") == [f"m.py:{MAX_LINES + 2} long ({MAX_LINES + 1} lines)"]
