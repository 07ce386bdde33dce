"""The package layout: one importable name (``medstack``), every module importable, no import circles."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Import name -> folder, as pyproject.toml maps them.
PACKAGE_DIRS = {
    "medstack": REPO / "medstack",
    "medstack.flows": REPO / "flows",
    "medstack.tasks": REPO / "tasks",
    "medstack.models": REPO / "models",
}


def _modules() -> dict[str, Path]:
    """Every module of the installed package, by import name, from the folders pyproject.toml maps."""
    found = {}
    for package, folder in PACKAGE_DIRS.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


MODULES = _modules()


def _from_base(node: ast.ImportFrom, package: str) -> str:
    """The absolute module of ``from <module> import ...``, relative imports resolved against ``package``."""
    base = node.module or ""
    if node.level:
        base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
    return base


def _imports(name: str, path: Path) -> set[str]:
    """medstack modules that ``name`` imports anywhere in its body (function-level imports included)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _from_base(node, package)
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def test_layout_maps_every_folder():
    assert {"medstack.flows.ensemble", "medstack.tasks.training", "medstack.models.training",
            "medstack.data.images", "medstack.pipeline.train"} <= set(MODULES)


def test_no_import_circles():
    """Depth-first search over the import graph, lazy (function-level) imports counted as edges too."""
    graph = {name: _imports(name, path) for name, path in MODULES.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)


def test_every_module_imports_in_a_fresh_interpreter(tmp_path):
    """First the training module alone: every medstack.models module it loads is one the fold cache key hashes
    (``medstack.pipeline.train.training_modules``, found by reading the sources), so a change to any of them
    retrains. Then every other module."""
    from medstack.pipeline.train import training_modules

    importable = sorted(name for name in MODULES if not name.endswith(".__main__"))  # __main__ runs the CLI
    code = ("import importlib, sys\nimport medstack.models.training\n"
            "print(' '.join(m.split('.')[2] for m in sys.modules if m.startswith('medstack.models.')))\n"
            "for name in %r:\n    importlib.import_module(name)\n" % importable)
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = set(done.stdout.split())
    assert "training" in loaded and loaded <= training_modules(), loaded - training_modules()


@pytest.mark.parametrize("name", ["models", "tasks", "flows"])
def test_only_medstack_is_importable_outside_the_repo(tmp_path, name):
    """Installed medstack never shadows a user's own ``models``/``tasks``/``flows`` package."""
    code = f"import importlib.util as u; print(u.find_spec({name!r}) is None, u.find_spec('medstack.{name}') is not None)"
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True"]


def test_package_modules_fit_in_one_sitting():
    """About 350 lines at most per module, so each one can be read in one sitting."""
    long = {name: n for name, path in MODULES.items() if (n := len(path.read_text().splitlines())) > 350}
    assert not long, long


# The config is the bottom layer: every other layer reads its sections; it reads none of them. Below it only
# medstack.errors (the MedstackError family, which imports no medstack module), so the config may raise its own.
CONFIG_LAYER = {"medstack.config", "medstack.config_sections", "medstack.errors"}


def test_the_config_imports_no_other_layer():
    """Models take the config sections they need; the config never imports models (nor any other layer), lazily
    inside a function included: strategy names and parameter schemas are the config's own."""
    reaching = {name: sorted(_imports(name, MODULES[name]) - CONFIG_LAYER) for name in sorted(CONFIG_LAYER)}
    assert not any(reaching.values()), reaching


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _private_uses(path: Path, own: str | None) -> list[str]:
    """``from <medstack module> import _name`` and ``<medstack module>._name`` in one file; ``own`` (the file's
    module, if it is one) may use its own private names."""
    package = "" if own is None else own if path.name == "__init__.py" else own.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    bound: dict[str, str] = {}  # local name -> medstack module it stands for
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                bound[alias.asname or alias.name.partition(".")[0]] = alias.name if alias.asname else alias.name.partition(".")[0]
        elif isinstance(node, ast.ImportFrom):
            base = _from_base(node, package)
            for alias in node.names:
                if f"{base}.{alias.name}" in MODULES:
                    bound[alias.asname or alias.name] = f"{base}.{alias.name}"
                elif base in MODULES and base != own and _is_private(alias.name):
                    found.append(f"line {node.lineno}: from {base} import {alias.name}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _is_private(node.attr):
            chain, value = [], node.value
            while isinstance(value, ast.Attribute):
                chain.insert(0, value.attr)
                value = value.value
            if isinstance(value, ast.Name) and value.id in bound:
                module = ".".join([bound[value.id], *chain])
                if module in MODULES and module != own:
                    found.append(f"line {node.lineno}: {module}.{node.attr}")
    return found


def test_no_private_names_cross_modules():
    """A ``_private`` name is its module's own: no other module (nor a benchmark script) imports or reaches it."""
    files = {path: name for name, path in MODULES.items()}
    files.update({path: None for path in sorted((REPO / "benchmarks").glob("*.py"))})
    found = {str(path.relative_to(REPO)): uses for path, own in files.items() if (uses := _private_uses(path, own))}
    assert not found, found


def test_every_strategy_name_has_a_schema_and_an_implementation():
    """The config owns the strategy names (and their parameter schemas); models implement exactly those names."""
    from medstack.config import STRATEGY_PARAMS
    from medstack.models.strategies import STRATEGIES

    assert set(STRATEGIES) == set(STRATEGY_PARAMS)
