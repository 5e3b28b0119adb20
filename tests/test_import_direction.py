"""Imports run one way: backbones, model and data at the bottom, then parallel, train, analysis,
pipelines; and no project import hides inside a function."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "usae_jax"

_BOTTOM = {"validation", "config", "config_io", "progress"}
"""Modules every layer above them may import: the validation idiom, the configs (and their
reading, writing and binding), progress."""

LAYERS = {
    "validation": set(),
    "config": {"validation"},
    "config_io": {"config"},
    "progress": set(),
    "backbones": {"validation", "progress"},
    "model": _BOTTOM,
    "data": _BOTTOM | {"backbones"},
    "parallel": _BOTTOM | {"model", "data"},
    "train": _BOTTOM | {"model", "data", "parallel"},
    "analysis": _BOTTOM | {"backbones", "model", "data", "parallel", "train"},
    "pipelines": _BOTTOM | {"backbones", "model", "data", "parallel", "train", "analysis"},
}
"""Each top-level part of the package and the parts it may import (besides itself)."""


def _part(module: str) -> str:
    return module.split(".")[1]


def _project_imports(tree: ast.AST):
    """``(node, imported module, inside a function)`` of every usae_jax import."""
    found = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.ImportFrom) and (child.module or "").startswith("usae_jax"):
                found.append((child, child.module, nested))
            elif isinstance(child, ast.Import):
                names = [a.name for a in child.names if a.name.startswith("usae_jax")]
                found.extend((child, name, nested) for name in names)
            visit(child, nested)

    visit(tree, False)
    return found


def _violations(root: Path) -> list[str]:
    problems = []
    for path in sorted(root.rglob("*.py")):
        module = ".".join(("usae_jax", *path.relative_to(root).with_suffix("").parts))
        if module.count(".") == 0:
            continue
        part = _part(module)
        allowed = LAYERS.get(part)
        for node, imported, in_function in _project_imports(ast.parse(path.read_text())):
            where = f"{path.relative_to(root.parent)}:{node.lineno}"
            if in_function:
                problems.append(f"{where}: project import inside a function ({imported})")
            if imported == "usae_jax" or imported.count(".") == 0:
                continue
            target = _part(imported)
            if allowed is None:
                problems.append(f"{where}: {part} is not a known layer")
            elif target != part and target not in allowed:
                problems.append(f"{where}: {part} imports {imported} (upward)")
    return problems


def test_every_part_is_a_known_layer():
    parts = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()}
    parts = {p for p in parts if not p.startswith("__")}
    assert parts <= set(LAYERS), sorted(parts - set(LAYERS))


def test_imports_run_one_way_and_none_hide_in_functions():
    assert _violations(PACKAGE) == []


def test_the_walker_catches_an_upward_and_a_hidden_import(tmp_path):
    root = tmp_path / "usae_jax"
    (root / "model").mkdir(parents=True)
    (root / "model" / "bad.py").write_text(
        "from usae_jax.train.loop import train\n\ndef f():\n    import usae_jax.config\n"
    )
    problems = _violations(root)
    assert any("upward" in p for p in problems) and any("inside a function" in p for p in problems)
