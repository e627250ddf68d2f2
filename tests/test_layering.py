"""The import graph points one way.

Packages: client/ and server/ over asr_grpc/ (the generated stubs) and asr/; server/ never imports client/.
Inside asr/, layers (LAYERS below): a module may import its own layer and the ones under it, never one above.

Every module is parsed, not imported, so that a lazy import inside a function or one under TYPE_CHECKING
counts as much as one at the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# asr/, bottom first. A package name stands for all its modules; the package `asr` itself (its __init__,
# the public API) only for itself.
LAYERS: list[tuple[str, set[str]]] = [
    # audio I/O, tokenizers, CTC word alignment, file writing, statistics,
    # and the number format of inference (asr.precision)
    (
        "foundations",
        {"asr.audio", "asr.tokenizer", "asr.alignment", "asr.files", "asr.significance", "asr.precision"},
    ),
    # front ends (log-mel, Whisper's encoder), encoder, decoder, CTC loss, the model: no search or recognition
    (
        "network",
        {
            "asr.features",
            "asr.whisper_encoder",
            "asr.whisper_stream",
            "asr.encoder",
            "asr.lc_blstm",
            "asr.decoder",
            "asr.ctc",
            "asr.model",
        },
    ),
    # corpora, manifests, batches, augmentation
    ("data", {"asr.data"}),
    # search (whole, or growing with the audio), language models, phrase biasing, test-time augmentation
    ("decoding", {"asr.decoding", "asr.growing_search", "asr.lm", "asr.word_lm", "asr.biasing", "asr.tta"}),
    # load_model, transcribe, streaming (the recognizer, per-stream state, endpointing)
    (
        "recognition",
        {
            "asr",
            "asr.checkpoint",
            "asr.model_decoding",
            "asr.transcribe",
            "asr.streaming",
            "asr.stream_state",
            "asr.endpointing",
            "asr.online",
            "asr.online_stream",
        },
    ),
    # training, evaluation, LM commands
    ("applications", {"asr.training", "asr.train", "asr.evaluate", "asr.lm_cli"}),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(package: str) -> dict[str, Path]:
    return {module_name(p): p for p in sorted((ROOT / package).rglob("*.py"))}


ALL = {**modules("asr"), **modules("server"), **modules("client"), **modules("asr_grpc")}


def imported(path: Path) -> set[str]:
    """The modules `path` imports, anywhere in the file: `from a import b` counts as a.b when that is a
    module, else as a; relative imports are resolved."""
    package = list(path.relative_to(ROOT).parent.parts)
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
            for alias in node.names:
                names.add(f"{module}.{alias.name}" if f"{module}.{alias.name}" in ALL else module)
    return names


def top(name: str) -> str:
    return name.split(".")[0]


def layer_of(module: str) -> int | None:
    """The index in LAYERS of an asr module, None for one outside asr/."""
    if top(module) != "asr":
        return None
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if n == 1 and module != "asr":
            break  # `asr` names the package __init__ alone
        prefix = ".".join(parts[:n])
        for i, (_, members) in enumerate(LAYERS):
            if prefix in members:
                return i
    raise AssertionError(f"{module} is in no layer of tests/test_layering.py: add it to LAYERS")


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
        for path in modules(package).values()
        for name in imported(path)
        if top(name) in forbidden
    }
    assert not bad, "\n".join(sorted(bad))


def test_every_asr_module_has_a_layer() -> None:
    for module in modules("asr"):
        layer_of(module)


def test_asr_imports_only_down_its_layers() -> None:
    bad = []
    for module, path in modules("asr").items():
        own = layer_of(module)
        assert own is not None
        for name in imported(path):
            other = layer_of(name)
            if other is not None and other > own:
                bad.append(f"{module} ({LAYERS[own][0]}) imports {name} ({LAYERS[other][0]})")
    assert not bad, "imports up the layers of asr/:\n" + "\n".join(sorted(bad))


@pytest.mark.parametrize("package", ["asr", "server"])
def test_no_import_cycles(package: str) -> None:
    """Not even inside a layer, nor through a TYPE_CHECKING import (importing a submodule runs its package's
    __init__, which is not counted)."""
    graph = {m: {n for n in imported(p) if n in ALL and n != m} for m, p in modules(package).items()}
    done: set[str] = set()

    def visit(m: str, trail: list[str]) -> None:
        if m in trail:
            raise AssertionError("import cycle: " + " -> ".join([*trail[trail.index(m) :], m]))
        if m in done:
            return
        for n in sorted(graph.get(m, ())):
            visit(n, [*trail, m])
        done.add(m)

    for m in sorted(graph):
        visit(m, [])
