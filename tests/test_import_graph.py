"""The import graph of `ugpnet/` and `pipelines/` (issue 12), read from the source with `ast`:

- `ugpnet/` is the pure-PyTorch library: it imports nothing from `pipelines/`, Ray, MLflow or any
  S3 layer, so that it installs and runs without them;
- no module reaches into another module's private names (`from x import _y`, `x._y`);
- no import cycles between project modules, counting imports inside functions too;
- the third-party packages imported are the ones pyproject.toml declares, and the reverse.
"""

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("ugpnet", "pipelines")
FORBIDDEN_IN_UGPNET = ("pipelines", "ray", "mlflow", "boto3", "botocore", "s3fs", "fsspec", "pyarrow")
# Declared for what an import needs at run time without naming it.
DECLARED_NOT_IMPORTED = {
    "pywavelets": "skimage.restoration.denoise_wavelet (a baseline) imports pywt itself",
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for package in PACKAGES for path in (REPO / package).rglob("*.py")}


def imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(module, names taken from it, line) for every import statement, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, [alias.name for alias in node.names], node.lineno))
    return found


def project_targets(module: str, names: list[str]) -> set[str]:
    """Project modules an import statement loads: the module, and submodules named in a from-import."""
    targets = {module} if module in MODULES else set()
    return targets | {f"{module}.{name}" for name in names if f"{module}.{name}" in MODULES}


def is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_ugpnet_imports_nothing_from_pipelines_ray_mlflow_or_s3():
    offending = [f"{module_name(path)}:{line} imports {module}"
                 for name, path in MODULES.items() if name.split(".")[0] == "ugpnet"
                 for module, _, line in imports(path) if module.split(".")[0] in FORBIDDEN_IN_UGPNET]
    assert offending == []


def test_no_module_takes_a_private_name_from_another():
    offending = []
    for name, path in MODULES.items():
        aliases = {}  # local name → project module, for attribute access like `restore._x`
        for module, names, line in imports(path):
            if module in MODULES and module != name:
                offending += [f"{name}:{line} from {module} import {item}" for item in names if is_private(item)]
            for item in names:
                if f"{module}.{item}" in MODULES:
                    aliases[item] = f"{module}.{item}"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                    and node.value.id in aliases and is_private(node.attr):
                offending.append(f"{name}:{node.lineno} {node.value.id}.{node.attr}")
    assert offending == []


def test_the_project_s_modules_import_each_other_without_cycles():
    graph = {name: set().union(*[project_targets(module, names) for module, names, _ in imports(path)]) - {name}
             for name, path in MODULES.items()}
    cycles, state = [], {}

    def visit(node, trail):
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                cycles.append(" → ".join([*trail[trail.index(target):], target]))
            elif target not in state:
                visit(target, [*trail, target])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def normalised(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


def declared_distributions() -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + [requirement for extra, listed in project["optional-dependencies"].items()
                                              if extra != "dev" for requirement in listed]
    return {normalised(re.match(r"[A-Za-z0-9_.-]+", requirement)[0]) for requirement in requirements}


def imported_top_levels() -> set[str]:
    names = {module.split(".")[0] for path in MODULES.values() for module, _, _ in imports(path)}
    return {name for name in names if name not in sys.stdlib_module_names and name not in PACKAGES}


def test_declared_dependencies_are_the_imported_ones():
    providers = importlib.metadata.packages_distributions()  # import name → distributions installed for it
    declared = declared_distributions()
    imported = {name: {normalised(dist) for dist in providers.get(name, [name])} for name in imported_top_levels()}
    undeclared = sorted(name for name, dists in imported.items() if not dists & declared)
    unused = sorted(declared - set().union(*imported.values()) - set(DECLARED_NOT_IMPORTED))
    assert (undeclared, unused) == ([], [])
