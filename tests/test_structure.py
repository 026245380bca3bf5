"""The package's shape: imports point down the pipeline only, docstring examples run, lint passes."""

import ast
import doctest
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "cream_tf"

# The pipeline, lowest layer first: a module may import only from layers below its own.
LAYERS = [
    [
        "cream_tf",
        "cream_tf.atomic",
        "cream_tf.candidates",
        "cream_tf.launch",
        "cream_tf.native_logs",
        "cream_tf.folders",
        "cream_tf.detection",
    ],
    ["cream_tf.arch"],
    ["cream_tf.typed_yaml", "cream_tf.run_guard", "cream_tf.tflite_metadata"],
    ["cream_tf.config", "cream_tf.flops", "cream_tf.blocks"],
    [
        "cream_tf.childnet",
        "cream_tf.batchnorm",
        "cream_tf.distribute",
        "cream_tf.data.held_out",
        "cream_tf.data.augment",
    ],
    ["cream_tf.convert", "cream_tf.twin", "cream_tf.data.sources", "cream_tf.keras_internals", "cream_tf.callbacks"],
    ["cream_tf.data.pipeline"],
    ["cream_tf.data"],
    ["cream_tf.zoo", "cream_tf.supernet", "cream_tf.checkpoints"],
    [
        "cream_tf.evaluate",
        "cream_tf.optim",
        "cream_tf.training",
        "cream_tf.applications",
        "cream_tf.detection.demo_data",
    ],
    ["cream_tf.detection.garden"],
    ["cream_tf.export", "cream_tf.search.board", "cream_tf.search.sampler", "cream_tf.search"],
    ["cream_tf.qat", "cream_tf.latency"],
    ["cream_tf.search.trainer", "cream_tf.search.selection", "cream_tf.retrain"],
    ["cream_tf.search.run"],
    ["cream_tf.commands"],
    ["cream_tf.cli", "cream_tf.detection.__main__"],
]


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p) for p in PACKAGE.rglob("*.py")}


def imports_of(path: Path) -> set[str]:
    """Every cream_tf module `path` imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            # `from cream_tf.data import sources` imports the module cream_tf.data.sources;
            # `from cream_tf.config import DataConfig` the module cream_tf.config.
            named = {f"{node.module}.{alias.name}" for alias in node.names} & MODULES
            found |= named or {node.module}
    return found & MODULES


def import_graph() -> dict[str, set[str]]:
    return {module_name(path): imports_of(path) - {module_name(path)} for path in PACKAGE.rglob("*.py")}


def test_every_module_has_a_layer():
    placed = [name for layer in LAYERS for name in layer]
    assert sorted(placed) == sorted(import_graph()), "place new modules in LAYERS"


def upward_imports(graph) -> list[str]:
    rank = {name: i for i, layer in enumerate(LAYERS) for name in layer}
    return [
        f"{module} (layer {rank[module]}) imports {target} (layer {rank[target]})"
        for module, targets in graph.items()
        for target in targets
        # A package's __init__ may re-export what its own modules define.
        if rank[target] >= rank[module] and not target.startswith(module + ".")
    ]


def cycle_in(graph) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module, path):
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                return [*path, module, target]
            if target not in state and (found := visit(target, [*path, module])):
                return found
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (found := visit(module, [])):
            return found
    return None


def test_imports_point_down_the_pipeline_only():
    assert not upward_imports(import_graph()), "\n".join(upward_imports(import_graph()))


def test_the_import_graph_has_no_cycle():
    assert cycle_in(import_graph()) is None, " -> ".join(cycle_in(import_graph()))


def test_the_checks_catch_what_they_are_for():
    graph = import_graph()
    assert "cream_tf.optim" in graph["cream_tf.retrain"]  # the graph sees real imports
    assert upward_imports({**graph, "cream_tf.retrain": {"cream_tf.search.run"}})
    assert upward_imports({**graph, "cream_tf.evaluate": {"cream_tf.export"}})
    assert cycle_in({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


@pytest.mark.parametrize(
    "name",
    [
        "cream_tf.arch",
        "cream_tf.candidates",
        "cream_tf.childnet",
        "cream_tf.flops",
        "cream_tf.zoo",
        "cream_tf.supernet",
        "cream_tf.data",
        "cream_tf.applications",
    ],
)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, extraglobs=vars(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0, result


def test_no_docstring_example_is_left_unchecked():
    """Examples with `>>>` are the doctests above; anywhere else they would show unchecked output."""
    checked = {"arch", "candidates", "childnet", "flops", "zoo", "supernet", "data/__init__", "applications"}
    unchecked = [
        str(p.relative_to(REPO))
        for p in PACKAGE.rglob("*.py")
        if ">>>" in p.read_text() and str(p.relative_to(PACKAGE).with_suffix("")) not in checked
    ]
    assert not unchecked, unchecked


@pytest.mark.parametrize("command", [["check", "."], ["format", "--check", "."]], ids=["lint", "format"])
def test_ruff(command):
    result = subprocess.run([sys.executable, "-m", "ruff", *command], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
