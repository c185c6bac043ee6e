"""The layering contract (STYLE "Layers"): vqgpt's imports point one way, and no import hides in a function.

    scripts -> cli -> train -> eval -> generate -> models | tokenizers -> data -> helpers at the bottom

Read from the source with `ast`, so the test sees every import, module-level or not, without running any.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import ROOT

PACKAGE = ROOT / "vqgpt"

# Highest first. A module may import its own layer's modules (siblings in one layer excepted, below) and any
# lower layer's, never a higher one's.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("vqgpt.cli",),  # the scripts' Hydra bridge
    ("vqgpt.train",),
    ("vqgpt.eval",),
    ("vqgpt.generate",),
    ("vqgpt.models", "vqgpt.tokenizers"),  # side by side: neither imports the other
    ("vqgpt.data",),
    ("vqgpt.checkpoint", "vqgpt.registry", "vqgpt.config", "vqgpt.errors", "vqgpt.paths", "vqgpt.safe_pickle",
     "vqgpt.images", "vqgpt.progress", "vqgpt.device"),  # the helpers every layer may use
)
SIBLINGS_APART = {"vqgpt.models", "vqgpt.tokenizers"}

# Imports inside functions, allowed only where they buy something a module-level import cannot.
LOCAL_IMPORTS_ALLOWED = {
    "vqgpt": "PEP 562: `import vqgpt` stays torch-free until a layer is used",
    "vqgpt.cli": "the command line is checked in a second, before torch and the library are imported",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def vqgpt_imports(path: Path) -> list[tuple[str, bool]]:
    """(imported vqgpt module, inside a function?) for every import statement in `path`."""
    name, tree = module_name(path), ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] if node.module else [f"{base}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        found += [(t, node.col_offset > 0) for t in targets if t == "vqgpt" or t.startswith("vqgpt.")]
    return found


def unit(module: str) -> str | None:
    """The layer entry `module` belongs to (its longest matching prefix), or None for the package itself."""
    matches = [u for layer in LAYERS for u in layer if module == u or module.startswith(u + ".")]
    return max(matches, key=len) if matches else None


def rank(u: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if u in layer)


def violations(imports: dict[str, list[tuple[str, bool]]]) -> list[str]:
    """Every import that points up a layer, across side-by-side packages, or hides in a function."""
    bad = []
    for source, targets in sorted(imports.items()):
        src = unit(source)
        for target, local in targets:
            dst = unit(target)
            if local and source not in LOCAL_IMPORTS_ALLOWED:
                bad.append(f"{source} imports {target} inside a function")
            if src is None or dst is None or src == dst:
                continue
            if rank(dst) < rank(src):
                bad.append(f"{source} ({src}) imports {target} from a higher layer ({dst})")
            elif rank(dst) == rank(src) and {src, dst} <= SIBLINGS_APART:
                bad.append(f"{source} imports {target}: {src} and {dst} stay apart")
    return bad


def cycles(imports: dict[str, list[tuple[str, bool]]]) -> list[list[str]]:
    """Cycles between layer entries (packages and bottom modules), found by depth-first search."""
    graph: dict[str, set[str]] = {}
    for source, targets in imports.items():
        src = unit(source)
        for target, _ in targets:
            dst = unit(target)
            if src and dst and src != dst:
                graph.setdefault(src, set()).add(dst)
    found, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def package_imports() -> dict[str, list[tuple[str, bool]]]:
    return {module_name(p): vqgpt_imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_module_has_a_layer():
    assert [m for m in package_imports() if m != "vqgpt" and unit(m) is None] == []


def test_imports_point_down_the_layers_and_none_hides_in_a_function():
    assert violations(package_imports()) == []


def test_no_cycle_between_packages():
    assert cycles(package_imports()) == []


@pytest.mark.parametrize(("imports", "words"), [
    ({"vqgpt.data.token_cache": [("vqgpt.train.loggers", False)]}, "from a higher layer (vqgpt.train)"),
    ({"vqgpt.models.gpt": [("vqgpt.tokenizers.base", False)]}, "stay apart"),
    ({"vqgpt.train.gpt": [("vqgpt.eval.evaluate", True)]}, "inside a function"),
])
def test_the_checker_catches_each_kind_of_violation(imports, words):
    assert any(words in line for line in violations(imports))


def test_the_checker_finds_a_cycle():
    imports = {"vqgpt.eval.evaluate": [("vqgpt.train.gpt", False)], "vqgpt.train.gpt": [("vqgpt.eval.fid", False)]}
    assert cycles(imports) == [["vqgpt.eval", "vqgpt.train", "vqgpt.eval"]]
