"""Who may import whom, read from the source (every import, also those inside functions and under
TYPE_CHECKING): no import cycle among ncf_core's modules; the launchers and the MLOps pipeline use ncf_core's
settings and the names in ncf_sagemaker.contract, never the training image's adapter."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.support import ROOT


def imported_modules(path: Path, package: str) -> set[str]:
    """The absolute names of the modules ``path`` (in ``package``) imports."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            out.add(module)
            out |= {f"{module}.{alias.name}" for alias in node.names}  # `from . import data`
    return out


def core_graph() -> dict[str, set[str]]:
    modules = {p.stem: p for p in (ROOT / "ncf_core").glob("*.py")}
    graph = {}
    for name, path in modules.items():
        imports = imported_modules(path, "ncf_core")
        graph[name] = {m for m in modules if m != name and f"ncf_core.{m}" in imports}
    return graph


def test_ncf_core_has_no_import_cycle():
    graph = core_graph()
    assert graph["models"] >= {"config"} and "models" not in graph["config"]  # the cycle that was
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                pytest.fail("import cycle: " + " -> ".join([*path[path.index(dep) :], dep]))
            if dep not in state:
                visit(dep, [*path, dep])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


@pytest.mark.parametrize(
    ("root", "package"), [("mlops/ncf_mlops", "ncf_mlops"), ("scripts/ncf_launch", "ncf_launch")]
)
def test_launchers_and_mlops_do_not_import_the_training_adapter(root, package):
    for path in sorted((ROOT / root).glob("*.py")):
        bad = {m for m in imported_modules(path, package) if m.startswith("ncf_sagemaker.training")}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"
