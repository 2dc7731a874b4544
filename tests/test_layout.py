"""The package's shape: no import circle, no endpoint importing another, no file over ~450 lines."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "fer_async"
ENDPOINTS = {"fer_async.server.ws", "fer_async.server.views", "fer_async.server.mjpeg"}
MAX_LINES = 450


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Every fer_async module -> the fer_async modules it imports (anywhere in the file)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fer_async"):
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    found.add(sub if sub in modules else node.module)
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("fer_async")}
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def test_no_import_circle() -> None:
    graph = _imports()
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            raise AssertionError("import circle: " + " -> ".join([*path[path.index(module) :], module]))
        if module in done:
            return
        for imported in sorted(graph[module]):
            if imported != "fer_async" and not module.startswith(imported + "."):  # a package's own __init__
                visit(imported, [*path, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])


def test_no_endpoint_imports_another() -> None:
    graph = _imports()
    for endpoint in ENDPOINTS:
        assert not graph[endpoint] & (ENDPOINTS - {endpoint}), (endpoint, graph[endpoint])


def test_service_and_training_files_stay_small() -> None:
    long = {
        str(p.relative_to(PACKAGE.parent)): n
        for folder in (PACKAGE, PACKAGE.parent / "training")
        for p in folder.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"over {MAX_LINES} lines: {long}"


def test_training_tools_do_not_load_the_web_server() -> None:
    code = (
        "import sys, training.clip, training.evaluate; print(sorted(m for m in sys.modules if m.startswith('aiohttp')))"
    )
    env = {**os.environ, "PYTHONPATH": str(PACKAGE.parent)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.strip() == "[]"
