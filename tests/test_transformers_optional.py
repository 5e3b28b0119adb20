"""transformers is no runtime dependency: nothing in ``usae_jax/`` imports it (not even lazily),
importing every backbone and its callers leaves it unimported, and pyproject names it only in the
``test`` extra, without an upper bound (so installing usae_jax never changes a user's
transformers)."""

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def transformers_imports(path: Path) -> list[str]:
    """``"file:line module"`` of every import of transformers in ``path`` (at any depth)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module or ""]
        else:
            continue
        hits = [n for n in names if n == "transformers" or n.startswith("transformers.")]
        found += [f"{path.name}:{node.lineno} {n}" for n in hits]
    return found


def test_no_module_imports_transformers():
    paths = sorted((ROOT / "usae_jax").rglob("*.py"))
    assert len(paths) > 50
    found = [hit for path in paths for hit in transformers_imports(path)]
    assert not found, found


def test_the_scan_finds_lazy_imports(tmp_path):
    module = tmp_path / "m.py"
    module.write_text(
        "import json\n\ndef f():\n    from transformers import FlaxViTModel\n"
        "    import transformers.models.vit as vit\n"
    )
    assert transformers_imports(module) == ["m.py:4 transformers", "m.py:5 transformers.models.vit"]


def test_backbones_and_their_callers_import_without_transformers():
    modules = [
        "usae_jax.backbones." + p.stem
        for p in sorted((ROOT / "usae_jax" / "backbones").glob("*.py"))
        if p.stem != "__init__"
    ] + [
        "usae_jax.data.extract",
        "usae_jax.data.text",
        "usae_jax.data.crossmodal",
        "usae_jax.analysis.steering",
        "usae_jax.analysis.cam.optimize",
        "usae_jax.pipelines.sparc_text",
    ]
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'transformers')\n"
        "assert not bad, bad\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_pyproject_names_transformers_only_in_the_test_extra():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.lower().startswith("transformers")]
    extras = project["optional-dependencies"]
    for extra, requirements in extras.items():
        named = [r for r in requirements if r.lower().startswith("transformers")]
        assert named == ([] if extra != "test" else ["transformers"]), (extra, named)
