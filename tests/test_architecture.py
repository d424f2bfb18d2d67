"""The layering of docs/architecture.md, read from the imports (also those inside functions): no import circle
between the parts of the package, the trainer never imports a method, methods never import the evaluation, the
core reaches the nano world only through the registry, one checkpoint format, files of a readable size."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "ladd"
# Parts allowed to import ladd.nano: the nano world itself and the command line on top of everything.
NANO_USERS = {"ladd.nano", "ladd.cli"}


def _part(module: str) -> str:
    """``ladd.methods.ladd`` -> ``ladd.methods``; ``ladd.flow`` -> ``ladd.flow``."""
    return ".".join(module.split(".")[:2])


def _imports() -> dict[str, set[str]]:
    """Module name -> the ``ladd`` modules it imports."""
    out = {}
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("ladd")}
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ladd") and not node.level:
                found |= {f"{node.module}.{a.name}" if node.module == "ladd" else node.module for a in node.names}
        out[name] = found
    return out


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, targets in _imports().items():
        src = _part(module)
        graph.setdefault(src, set()).update(_part(t) for t in targets if _part(t) not in (src, "ladd"))
    return graph


def test_no_import_circle_between_parts():
    graph = _graph()
    state: dict[str, int] = {}

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                pytest.fail("import circle: " + " -> ".join(path[path.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert len(graph) > 10  # the walk saw the package


def test_layer_rules():
    graph = _graph()
    assert "ladd.methods" not in graph["ladd.training"], "the trainer must not import a method"
    assert "ladd.evaluation" not in graph["ladd.methods"], "methods must not import the evaluation (no metric signal)"
    core_to_nano = sorted(p for p, targets in graph.items() if "ladd.nano" in targets and p not in NANO_USERS)
    assert core_to_nano == [], f"{core_to_nano} import ladd.nano; go through ladd.models.registry.world"
    assert {"ladd.training", "ladd.models"} <= graph["ladd.methods"]  # the rules above are checked on real edges


def test_one_checkpoint_format_and_file_sizes():
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        assert "torch.save(" not in text, f"{path}: checkpoints are safetensors + JSON (ladd.training.checkpoint)"
        assert len(text.splitlines()) <= 420, f"{path} has {len(text.splitlines())} lines; split it along a concept"
