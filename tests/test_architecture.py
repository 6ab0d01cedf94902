"""The house is one-way: every import in src/ points down the layers, and none in a circle.

Data flows hooks → snapshot → writer → store → readers, export, analysis; the layers below
put the modules that serve others lower. A module imports only modules of its own layer or
of lower ones, and the module graph has no cycle. Every import counts, those inside
functions too; only imports under ``if TYPE_CHECKING:`` (annotations, never run) do not.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).parents[1] / "src"
PACKAGE = "wordybird"

#: (module, or prefix ending in ".", layer): the longest match decides; higher imports lower.
LAYERS: list[tuple[str, int]] = [
    ("wordybird", 100),  # the package root: the public facade, above everything
    ("wordybird.cli", 100),
    ("wordybird.training.", 90),
    ("wordybird.capture.", 80),
    ("wordybird.analysis", 70),
    ("wordybird.analysis.", 70),
    ("wordybird.inspection", 60),
    ("wordybird.recorder.cli", 60),
    ("wordybird.export", 60),  # callable as the export function: it imports the writer
    ("wordybird.export.cli", 60),
    ("wordybird.export.writer", 60),
    ("wordybird.export.select", 60),
    ("wordybird.opening", 50),  # open(): the one entry to every reader
    ("wordybird.recorder", 45),  # the recorder's facade: imports the writer and the reader
    ("wordybird.recorder.reader", 40),
    ("wordybird.recorder.writer", 40),
    ("wordybird.recorder.snapshot", 40),
    ("wordybird.export.", 40),  # the exported file's layout and reader
    ("wordybird.recorder.", 30),  # the store: format, commit, decoding, chunks, codecs
    ("wordybird.recording", 20),
    ("wordybird.xarray_adapter", 20),
    ("wordybird.clitypes", 15),
    ("wordybird.storage", 10),
    ("wordybird.storage.", 10),
    ("wordybird.", 0),  # errors, constants, dtypes, extras, knobs, atomic, _version
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted((SRC / PACKAGE).rglob("*.py"))}


def layer(module: str) -> int:
    matches = [
        (len(key), rank)
        for key, rank in LAYERS
        if module == key or (key.endswith(".") and module.startswith(key))
    ]
    assert matches, f"{module} is in no layer: add it to LAYERS"
    return max(matches)[1]


def _type_checking_blocks(tree: ast.AST) -> set[int]:
    """Line numbers of statements under ``if TYPE_CHECKING:``."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in (
            "TYPE_CHECKING",
            "typing.TYPE_CHECKING",
        ):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def imports_of(module: str) -> dict[str, int]:
    """The wordybird modules ``module`` imports at run time, with the line of each."""
    tree = ast.parse(MODULES[module].read_text())
    skipped = _type_checking_blocks(tree)
    found: dict[str, int] = {}
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skipped:
            continue
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                targets.append(submodule if submodule in MODULES else node.module)
        for target in targets:
            if target == PACKAGE or target.startswith(PACKAGE + "."):
                found.setdefault(target, node.lineno)
    return found


GRAPH = {module: imports_of(module) for module in MODULES}


def test_every_module_is_in_a_layer() -> None:
    for module in MODULES:
        layer(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module: str) -> None:
    upward = [
        f"{module} (layer {layer(module)}) imports {target} (layer {layer(target)}) at line {line}"
        for target, line in GRAPH[module].items()
        if layer(target) > layer(module)
    ]
    assert not upward, "\n".join(upward)


def test_no_import_circle() -> None:
    """Tarjan's strongly connected components of the module graph: each must be one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in GRAPH[module]:
            if target not in MODULES:
                continue
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1 or module in GRAPH[module]:
                circles.append(sorted(component))

    for module in MODULES:
        if module not in index:
            visit(module)
    assert not circles, circles


def test_the_walk_sees_what_it_must() -> None:
    """The checks above are only as good as the walk: it must see imports inside functions,
    skip those under TYPE_CHECKING, and resolve ``from package import module``."""
    assert "wordybird.recorder.writer" in GRAPH["wordybird"]  # inside __getattr__
    assert "wordybird.recording" not in GRAPH["wordybird.xarray_adapter"]  # TYPE_CHECKING
    assert "wordybird.recorder.bf16" in GRAPH["wordybird.recorder.format"]
    assert layer("wordybird.training.run") > layer("wordybird.recorder.commit")
