"""The library's layers import one way only: runtime → core → data → models → methods → experiments.

Walks every ``import`` statement of ``course_lib`` (those inside functions too) with ``ast`` and fails on
an upward import (a lower layer importing a higher one) or an import circle between modules.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "course_lib"

#: layer of each top-level part of course_lib (higher numbers may import lower ones, never the reverse)
LAYERS = {
    "runtime": 0,
    "checkpoints": 1, "show": 1, "losses": 1, "metrics": 1, "train": 1, "viz": 1,
    "data": 2,
    "models": 3,
    "methods": 4,
    "experiments": 5,
    "exercises": 6,
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    mod = _module_name(path)
    is_pkg = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("course_lib")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = mod.split(".")
                base = base if is_pkg else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("course_lib"):
                out.add(target)
                # "from course_lib.methods import coop" imports the submodule too
                for a in node.names:
                    cand = PKG.parent / Path(*(target + "." + a.name).split("."))
                    if cand.with_suffix(".py").exists() or (cand / "__init__.py").exists():
                        out.add(target + "." + a.name)
    return out


def _layer(mod: str) -> int:
    parts = mod.split(".")
    if len(parts) < 2:
        return -1  # the package itself
    top = parts[1]
    if top not in LAYERS:
        raise AssertionError(f"{mod}: top-level part {top!r} has no layer; add it to LAYERS in {__file__}")
    return LAYERS[top]


FILES = sorted(PKG.rglob("*.py"))


def test_every_part_has_a_layer():
    for f in FILES:
        _layer(_module_name(f))


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PKG)))
def test_no_upward_import(path):
    mod = _module_name(path)
    me = _layer(mod)
    bad = [t for t in _imports(path) if _layer(t) > me]
    assert not bad, f"{mod} (layer {me}) imports higher layers: {sorted(bad)}"


def test_no_import_cycles():
    graph = {}
    for f in FILES:
        mod = _module_name(f)
        graph[mod] = {t for t in _imports(f) if t != mod and not mod.startswith(t + ".") and t != "course_lib"}
    # a package's __init__ re-exporting its modules is not a cycle with them
    color: dict[str, int] = {}
    stack: list[str] = []

    def visit(n):
        color[n] = 1
        stack.append(n)
        for m in graph.get(n, ()):
            if m not in graph:
                continue
            if n.startswith(m + ".") or m.startswith(n + "."):
                continue
            if color.get(m) == 1:
                cyc = stack[stack.index(m):] + [m]
                raise AssertionError(f"import cycle: {' -> '.join(cyc)}")
            if not color.get(m):
                visit(m)
        stack.pop()
        color[n] = 2

    for n in sorted(graph):
        if not color.get(n):
            visit(n)
