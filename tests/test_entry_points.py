"""Every entry point in ``experiments/`` and ``benchmarks/`` imports, and every flag it defines
explains itself (a broken import in a script no other test runs once hid here: experiments.recipes
imported ``replace_fields`` from the wrong module after the restructure)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Run in a fresh interpreter: absl flags live in one global registry, so each module's flags are
# removed after it is checked (several scripts define ``--workdir``).
CHECK = r"""
import importlib, json, sys
from absl import flags

report = {}
for name in sys.argv[1:]:
    before = set(flags.FLAGS)
    try:
        importlib.import_module(name)
    except Exception as error:  # noqa: BLE001  (reported to the test, which fails)
        report[name] = {"error": f"{type(error).__name__}: {error}"}
        continue
    defined = sorted(set(flags.FLAGS) - before)
    report[name] = {
        "flags": defined,
        "no_help": [f for f in defined if not (flags.FLAGS[f].help or "").strip()],
    }
    for flag in defined:
        delattr(flags.FLAGS, flag)
print(json.dumps(report))
"""


def _modules(folder: str) -> list[str]:
    """Module names of the ``.py`` files in ``folder`` (a path relative to the root)."""
    package = folder.replace("/", ".")
    return sorted(
        f"{package}.{path.stem}" for path in (ROOT / folder).glob("*.py") if path.stem != "__init__"
    )


def test_every_entry_point_imports_and_documents_its_flags():
    modules = _modules("experiments") + _modules("experiments/configs") + _modules("benchmarks")
    assert "experiments.recipes" in modules and "benchmarks.step_vs_official" in modules
    done = subprocess.run(
        [sys.executable, "-c", CHECK, *modules],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    broken = {name: r["error"] for name, r in report.items() if "error" in r}
    assert not broken, broken
    undocumented = {name: r["no_help"] for name, r in report.items() if r["no_help"]}
    assert not undocumented, undocumented
    # The absl entry points do define flags (the check above saw them).
    assert "steps" in report["experiments.recipes"]["flags"]
