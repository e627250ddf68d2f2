"""The trainer stays in small rooms: no function or method in ``asr/training/`` runs past 60 lines (the
old ``asr/train.py`` had one of 396), and the old ``asr.train`` address still reaches the trainer."""

from __future__ import annotations

import ast
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pytest

TRAINING = Path(__file__).resolve().parent.parent / "asr" / "training"
MAX_LINES = 60


def function_lengths(source: str) -> dict[str, int]:
    """``{qualified name: lines}`` of every function and method in ``source``, from ``def`` to its last
    line (decorators not counted, docstring and comments counted)."""
    lengths: dict[str, int] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    assert child.end_lineno is not None
                    lengths[name] = child.end_lineno - child.lineno + 1
                visit(child, name + ".")
            else:
                visit(child, prefix)

    visit(ast.parse(source), "")
    return lengths


def test_the_measure_counts_nested_functions_and_methods() -> None:
    source = "class A:\n    def f(self):\n        def g():\n            pass\n\n        return g\n"
    assert function_lengths(source) == {"A.f": 5, "A.f.g": 2}
    long = "def f():\n" + "    x = 1\n" * MAX_LINES
    assert function_lengths(long)["f"] == MAX_LINES + 1  # what the test below would refuse


def test_no_function_in_asr_training_runs_past_60_lines() -> None:
    files = sorted(TRAINING.glob("*.py"))
    assert len(files) > 5
    too_long = {
        f"{path.name}:{name}": n
        for path in files
        for name, n in function_lengths(path.read_text(encoding="utf-8")).items()
        if n > MAX_LINES
    }
    assert not too_long, f"functions over {MAX_LINES} lines: {too_long}; split them into named steps"


def test_the_old_address_reexports_and_patches_reach_the_trainer(monkeypatch: pytest.MonkeyPatch) -> None:
    import asr.train as old
    from asr.training import loop, precision, validation

    assert old.train is loop.train and old.TrainConfig is loop.TrainConfig

    def spy(device: Any, enabled: bool) -> Any:
        return nullcontext()

    monkeypatch.setattr(old, "_autocast", spy)
    assert loop.autocast is spy and validation.autocast is spy
    monkeypatch.undo()
    assert loop.autocast is precision.autocast and validation.autocast is precision.autocast
