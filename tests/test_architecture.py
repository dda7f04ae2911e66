"""The two layers: the library never imports the run layer or matplotlib, and nothing cycles.

The import graph is read from the source (every import statement that runs when a module is
imported: module level, not inside functions), so the test sees what the code says, whatever
happens to be loaded already.
"""

import ast
import os
import subprocess
import sys

import pytest

import tfmagic

PACKAGE_DIR = os.path.dirname(tfmagic.__file__)

# The library: what a model.fit user imports. Everything else in tfmagic is the run layer.
LIBRARY = {
    "tfmagic", "tfmagic._atomic", "tfmagic._checks", "tfmagic._quiet_start", "tfmagic.registry",
    "tfmagic.schedules", "tfmagic.optimizers", "tfmagic.losses", "tfmagic.layers",
    "tfmagic.callbacks", "tfmagic.data", "tfmagic.records", "tfmagic.distribute",
    "tfmagic.augment", "tfmagic.augment.autoaugment", "tfmagic.augment.color",
    "tfmagic.augment.crops", "tfmagic.augment.erasing", "tfmagic.augment.mixing",
    "tfmagic.augment.ops", "tfmagic.augment.seeding",
    "tfmagic.models", "tfmagic.models.applications", "tfmagic.models.common",
    "tfmagic.models.mobilenet", "tfmagic.models.resnet", "tfmagic.models.surgery",
}
FORBIDDEN_IN_LIBRARY = ("matplotlib",)


def _modules() -> dict[str, str]:
    """Module name -> source file, for every module of the package."""
    found = {}
    for root, _, files in os.walk(PACKAGE_DIR):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(root, name)
            parts = os.path.relpath(path, os.path.dirname(PACKAGE_DIR))[:-3].split(os.sep)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _import_time_statements(tree: ast.Module):
    """Import statements that run on import: at module level, in if/try blocks too."""
    pending = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If | ast.Try | ast.With):
            for field in ("body", "orelse", "finalbody", "handlers"):
                pending.extend(getattr(node, field, []))
        elif isinstance(node, ast.ExceptHandler):
            pending.extend(node.body)


def _imports(name: str, path: str, modules: dict[str, str]) -> set[str]:
    """What a module imports when imported: tfmagic modules by name, others by top package."""
    with open(path) as f:
        tree = ast.parse(f.read())
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    targets = set()
    for node in _import_time_statements(tree):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:
            anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join(anchor + ([base] if base else []))
        for alias in node.names:
            child = f"{base}.{alias.name}"
            targets.add(child if child in modules else base)
    return {t if t.startswith("tfmagic") else t.split(".")[0] for t in targets}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_the_layers_are_as_listed(graph):
    """The library list names only modules that exist, and the run layer holds the Recipe,
    `train()` and the augmentation pipeline (which reads a Recipe)."""
    assert set(graph) >= LIBRARY, sorted(LIBRARY - set(graph))
    run_layer = sorted(set(graph) - LIBRARY)
    assert "tfmagic.recipe" in run_layer and "tfmagic.training" in run_layer
    assert "tfmagic.augment.pipeline" in run_layer


def test_library_never_imports_the_run_layer_or_matplotlib(graph):
    problems = []
    for name in sorted(LIBRARY):
        for target in sorted(graph[name]):
            if target.startswith("tfmagic") and target not in LIBRARY:
                problems.append(f"{name} imports {target} (run layer)")
            if target in FORBIDDEN_IN_LIBRARY:
                problems.append(f"{name} imports {target}")
    assert not problems, "\n".join(problems)


def test_no_import_cycles(graph):
    """Depth-first search over tfmagic's own modules; a module importing its parent
    package (which Python has started already) is not a cycle."""
    internal = {
        name: {t for t in targets if t in graph and not name.startswith(t + ".")}
        for name, targets in graph.items()
    }
    state: dict[str, str] = {}
    cycles = []

    def visit(name: str, path: list[str]) -> None:
        state[name] = "open"
        for target in sorted(internal[name]):
            if state.get(target) == "open":
                cycles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[name] = "done"

    for name in sorted(internal):
        if name not in state:
            visit(name, [name])
    assert not cycles, "\n".join(cycles)


def test_the_walk_sees_real_imports(graph):
    """The reader of the source is right about a few known edges (so that the checks above
    cannot pass by reading nothing)."""
    assert "tfmagic.recipe" in graph["tfmagic.training"]
    assert "tfmagic.choices" in graph["tfmagic.recipe"]
    assert "tfmagic.recipe" in graph["tfmagic.wiring"]
    assert "matplotlib" in graph["tfmagic.plots"]
    assert "tfmagic.schedules" in graph["tfmagic"]
    assert "tfmagic.augment.pipeline" not in graph["tfmagic.augment"]


def test_import_tfmagic_is_light_in_a_fresh_process():
    """`import tfmagic` registers the Keras objects without the Recipe, the run layer or
    matplotlib. Keras itself imports matplotlib when it is installed, so the fresh process
    makes matplotlib unimportable: tfmagic must import without it, and must not have loaded
    any run-layer module."""
    code = (
        "import sys\n"
        "sys.modules['matplotlib'] = None\n"
        "import tfmagic, keras\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('tfmagic'))\n"
        "print(' '.join(loaded))\n"
        "print(keras.saving.get_registered_object('tfmagic>CosinePowerAnnealing').__name__)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert done.returncode == 0, done.stderr[-3000:]
    loaded, registered = done.stdout.split("\n")[:2]
    assert registered == "CosinePowerAnnealing"
    run_layer = [m for m in loaded.split() if m not in LIBRARY]
    assert not run_layer, run_layer
    assert "tfmagic.schedules" in loaded.split()
