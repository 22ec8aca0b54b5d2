"""The metrics sit at the bottom of the package: they import nothing above them."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import honestface.metrics

#: What honestface.metrics may import from the package (besides itself).
# third_party_logs: a leaf module the package itself loads (it quiets a third-party logger)
METRICS_MAY_IMPORT = {"honestface.errors", "honestface.paths", "honestface.third_party_logs"}


def _package_imports(module_file: Path, package: str) -> set[str]:
    """Every ``honestface`` module a file imports, at module level or inside functions."""
    tree = ast.parse(module_file.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            names = [name] if node.module else [f"{name}.{alias.name}" for alias in node.names]
            found.update(n for n in names if n.startswith("honestface"))
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("honestface"))
    return found


def test_metrics_import_nothing_above_them():
    folder = Path(honestface.metrics.__file__).parent
    files = sorted(folder.rglob("*.py"))
    assert len(files) >= 7
    outside = {}
    for path in files:
        imports = {name for name in _package_imports(path, "honestface.metrics")
                   if not name.startswith("honestface.metrics")}
        if imports - METRICS_MAY_IMPORT:
            outside[path.name] = sorted(imports - METRICS_MAY_IMPORT)
    assert outside == {}


def test_importing_the_metrics_loads_no_higher_module():
    code = ("import json, sys, honestface.metrics, honestface.metrics.iqa, honestface.metrics.registry; "
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('honestface'))))")
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                 cwd=Path(__file__).resolve().parents[1]).stdout)
    higher = [m for m in loaded if m != "honestface" and not m.startswith("honestface.metrics")
              and m not in METRICS_MAY_IMPORT]
    assert higher == []


def test_the_evaluation_package_sits_above_the_metrics():
    from honestface.evaluation import Evaluator
    from honestface.evaluation.heldout import evaluate_heldout

    assert Evaluator.__module__ == "honestface.evaluation.evaluator"
    assert evaluate_heldout.__module__ == "honestface.evaluation.heldout"
    assert not (Path(honestface.metrics.__file__).parent / "evaluate.py").exists()
