"""The product's packages import each other in one direction: no module reaches itself again through the imports
that run when it is loaded (those at module level; ``TYPE_CHECKING`` blocks and imports inside functions don't)."""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("diffusion_runtime", "openai_frontend")


def product_modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def load_time_imports(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The product modules ``module`` imports while it loads."""

    def owner(name: str) -> str | None:  # the module that defines ``name`` (a module, or a name in one)
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str | None] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test):
                continue
            if isinstance(node, ast.Import):
                found.update(owner(alias.name) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parent, base] if base else parent)
                found.update(owner(f"{base}.{alias.name}") for alias in node.names)
            elif isinstance(node, (ast.If, ast.Try)):
                visit(node.body)
                visit(node.orelse)
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)

    visit(ast.parse(path.read_text()).body)
    return {name for name in found if name and name != module}


def test_no_product_module_imports_itself_back() -> None:
    modules = product_modules()
    graph = {module: load_time_imports(module, path, modules) for module, path in modules.items()}
    assert graph["openai_frontend.app"], "the reader finds imports (a broken reader would find no cycle either)"
    try:
        tuple(TopologicalSorter(graph).static_order())
    except CycleError as error:
        cycle = error.args[1]  # each module in it is imported by the next
        pytest.fail(f"import circle: {' imports '.join(reversed(cycle))}")
