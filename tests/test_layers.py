"""The layers the folders show hold: no import cycle, no import upward, and the core and the
Azure scorer load nothing of the node's roles (jobs, DIMSE, HTTP, CLI, bench).

Bottom to top: ``domain`` -> ``dicom_io``, ``inference``, ``explain`` -> ``node.core`` ->
the roles in ``node/`` and ``deploy/`` (see docs/architecture.md).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("domain", "dicom_io", "inference", "explain", "node", "deploy")
ROLES = ("node.jobs", "node.broker", "node.dimse", "node.http", "node.cli", "node.bench",
         "node.service")
#: What each layer may import of the project (itself always).
ALLOWED: dict[str, tuple[str, ...]] = {
    "domain": (),
    "dicom_io": ("domain",),
    "inference": ("domain", "dicom_io"),
    "explain": ("domain", "dicom_io", "inference"),
    "node.core": ("domain", "dicom_io", "inference", "explain"),
    "deploy": ("domain", "dicom_io", "inference", "explain", "node.core"),
}


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Project modules ``name`` imports, at any depth of its code (function-level too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                       for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def layer(name: str) -> str:
    return "node.core" if name.startswith("node.core") else name.split(".")[0]


def test_no_import_cycle() -> None:
    g = graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(name: str, stack: list[str]) -> None:
        state[name] = 1
        for dep in sorted(g[name]):
            if state.get(dep) == 1:
                cycles.append([*stack[stack.index(dep):], dep])
            elif dep not in state:
                visit(dep, [*stack, dep])
        state[name] = 2

    for name in sorted(g):
        if name not in state:
            visit(name, [name])
    assert cycles == [], [" -> ".join(c) for c in cycles]


def test_no_layer_imports_upward() -> None:
    upward = []
    for name, deps in graph().items():
        allowed = ALLOWED.get(layer(name))
        if allowed is None:  # the node's roles may import every layer below them
            continue
        upward += [f"{name} imports {d}" for d in deps
                   if layer(d) != layer(name) and layer(d) not in allowed]
    assert upward == []


def test_the_core_and_the_azure_scorer_load_no_role_of_the_node() -> None:
    # the inference server provides azureml.contrib.services, which score.py imports
    code = ("import sys, azureml_inference_server_http.server, node.core.pipeline, "
            "node.core.scoring, node.core.errors, node.core.memory, deploy.score; "
            f"print(sorted(m for m in sys.modules if m.startswith({ROLES!r})))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
