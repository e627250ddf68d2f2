"""The import graph points one way: client/ and server/ over asr_grpc/ and asr/, never server -> client.

Every module is parsed, not imported, so that a lazy import inside a function or a TYPE_CHECKING block
counts as much as one at the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def imported(path: Path) -> set[str]:
    """Every absolute module name `path` imports, anywhere in the file (relative imports resolved)."""
    package = list(path.relative_to(ROOT).parent.parts)  # what a relative import is relative to
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            names.add(module)
            # `from asr import model` imports the module asr.model
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def top(name: str) -> str:
    return name.split(".")[0]


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("server", {"client"}),
        ("asr", {"server", "client", "asr_grpc"}),
        ("asr_grpc", {"asr", "server", "client"}),
    ],
)
def test_package_does_not_import(package: str, forbidden: set[str]) -> None:
    bad = {
        f"{path.relative_to(ROOT)} imports {name}"
        for path in modules(package)
        for name in imported(path)
        if top(name) in forbidden
    }
    assert not bad, "\n".join(sorted(bad))
