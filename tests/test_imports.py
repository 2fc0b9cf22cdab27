"""The project's imports point one way: no module of flows/ imports a module that imports it back,
and the core (shrinkflow/) imports no orchestration, tracking or service library.

An import circle works only while every module of it imports the others' names late enough
(inside a function, or after its own definitions); one innocent top-level import then breaks
the whole circle with a half-initialised module. Imports are read from the source with `ast`,
those inside functions included, so a late import cannot hide one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tasks.services.dag import imported_modules

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("flows", "tasks", "serving", "shrinkflow")  # the project's own code; the rest is third-party
# what the core must not import (DESIGN.md, Layers): they belong to tasks/, serving/ and flows/
ADAPTER_LIBRARIES = ("prefect", "mlflow", "dvc", "great_expectations", "sqlalchemy", "fastapi",
                     "starlette", "uvicorn", "boto3")


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for package in PACKAGES
            for path in sorted((REPO / package).rglob("*.py"))}


def _import_graph() -> dict[str, set[str]]:
    modules = _modules()
    # the same reading of a file's imports that gives each stage its code dependencies
    return {name: {found for found in imported_modules(path, name) if found in modules} - {name}
            for name, path in modules.items()}


def _path_back(graph: dict[str, set[str]], start: str) -> list[str] | None:
    """A chain of imports from `start` that leads back to it, or None."""
    trail: dict[str, str] = {}
    queue = [start]
    while queue:
        current = queue.pop(0)
        for following in sorted(graph[current]):
            if following == start:
                chain = [current]
                while chain[-1] != start:
                    chain.append(trail[chain[-1]])
                return [start, *reversed(chain[:-1]), start]
            if following not in trail:
                trail[following] = current
                queue.append(following)
    return None


def test_import_graph_reads_imports_inside_functions():
    # given flows/cli.py, which imports the pipeline only inside the `run` command
    graph = _import_graph()
    # then that late import is an edge of the graph all the same
    assert "flows.pipeline" in graph["flows.cli"], "imports inside functions should be read"


def test_path_back_finds_a_circle_through_several_modules():
    # given a -> b -> c -> a, and d outside it
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    # then the circle is found from each of its modules, and none from d
    assert _path_back(graph, "a") == ["a", "b", "c", "a"]
    assert _path_back(graph, "c") == ["c", "a", "b", "c"]
    assert _path_back(graph, "d") is None


@pytest.mark.parametrize("module", sorted(name for name in _modules()
                                          if name.split(".")[0] == "flows"))
def test_no_flows_module_imports_a_module_that_imports_it_back(module: str):
    # given the project's import graph, late imports included
    circle = _path_back(_import_graph(), module)
    # then no chain of imports leads from this module back to it
    assert circle is None, (f"{module} is part of an import circle: {' -> '.join(circle)}; "
                            "move what both sides need one layer down (tasks/) so the "
                            "imports point one way")


def _adapter_imports(path: Path) -> list[str]:
    """Each import of an ADAPTER_LIBRARIES package in the file (functions included), as
    "line N: the statement"."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names = [node.module or ""]
        else:
            continue
        if any(name.split(".")[0] in ADAPTER_LIBRARIES for name in names):
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def test_adapter_imports_are_found_inside_functions_too(tmp_path):
    # given a module that imports sqlalchemy late, and one that only has a name alike
    late = tmp_path / "late.py"
    late.write_text("import os\n\ndef engine():\n    from sqlalchemy.engine import make_url\n"
                    "    import mlflow.tracking as tracking\n    return make_url, tracking\n")
    alike = tmp_path / "alike.py"
    alike.write_text("import prefecture\nfrom . import mlflow\nfrom .dvc import lock\n")
    # then both library imports of the first are found, with their lines, and nothing in the other
    assert _adapter_imports(late) == ["line 4: from sqlalchemy.engine import make_url",
                                      "line 5: import mlflow.tracking as tracking"]
    assert _adapter_imports(alike) == []


def test_the_core_imports_no_orchestration_tracking_or_service_library():
    # given every module of the core, its imports inside functions included
    offending = [f"{_module_name(path)} {found}" for path in sorted((REPO / "shrinkflow").rglob("*.py"))
                 for found in _adapter_imports(path)]
    # then none imports prefect, mlflow, dvc, great_expectations or a service adapter
    assert not offending, ("the core (shrinkflow/) should import none of "
                           f"{', '.join(ADAPTER_LIBRARIES)}; move the code that needs them to "
                           "tasks/ (tracking, orchestration, storages) or serving/ (HTTP):\n  "
                           + "\n  ".join(offending))


def _stage_imports(graph: dict[str, set[str]], layer: str) -> list[str]:
    """Each import of a stage module (tasks.stages.*) by a module of `layer`, as "a -> b"."""
    return [f"{name} -> {found}" for name, imported in sorted(graph.items())
            if name.startswith(f"{layer}.") for found in sorted(imported)
            if found.startswith("tasks.stages.") and found != name]


def test_stage_imports_are_found_in_a_graph_that_has_them():
    # given a stage importing another stage, and a service importing a stage
    graph = {"tasks.stages.a": {"tasks.stages.b", "tasks.services.io"}, "tasks.stages.b": set(),
             "tasks.services.io": {"tasks.stages.a"}}
    # then both are named
    assert _stage_imports(graph, "tasks.stages") == ["tasks.stages.a -> tasks.stages.b"]
    assert _stage_imports(graph, "tasks.services") == ["tasks.services.io -> tasks.stages.a"]


@pytest.mark.parametrize("layer", ["tasks.stages", "tasks.services"])
def test_no_stage_or_service_imports_a_stage(layer: str):
    # given the import graph, late imports included
    offending = _stage_imports(_import_graph(), layer)
    # then a stage reads another stage's outputs through the catalog, never its code, and the
    # services the stages share know no stage
    assert not offending, ("a stage imports services (tasks/services/), never a stage; move what "
                           "both need into a service:\n  " + "\n  ".join(offending))


def test_tasks_stages_holds_exactly_the_declared_stages():
    from tasks.services.dag import STAGES
    # given the stage modules on disk and the stages declared in the DAG
    on_disk = {name for name in _modules() if name.startswith("tasks.stages.")}
    declared = {stage.module for stage in STAGES.values()}
    # then each declared stage runs a function of tasks/stages/, and each module there is a stage
    assert on_disk == declared, (f"only on disk: {sorted(on_disk - declared)}; "
                                 f"only declared: {sorted(declared - on_disk)}")


def _defined_names(path: Path) -> set[str]:
    """The names a module defines at its top level (functions, classes, assignments, imports),
    read from its source."""
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for target in targets for t in ast.walk(target)
                         if isinstance(t, ast.Name))
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, ast.If | ast.Try):  # TYPE_CHECKING blocks, guarded imports
            names.update(alias.asname or alias.name for child in ast.walk(node)
                         if isinstance(child, ast.Import | ast.ImportFrom) for alias in child.names)
    return names


def _missing_names(modules: dict[str, Path], root: Path = REPO) -> list[str]:
    """`from <project module> import <name>` anywhere in `modules` (inside functions too)
    where the module neither defines the name nor has it as a submodule."""
    missing = []
    for path in modules.values():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom) or node.level or node.module not in modules:
                continue
            defined = _defined_names(modules[node.module])
            missing += [f"{path.relative_to(root)}:{node.lineno}: {node.module} has no "
                        f"{alias.name!r}" for alias in node.names
                        if alias.name not in defined and f"{node.module}.{alias.name}" not in modules]
    return missing


def test_every_name_imported_from_the_project_exists():
    # bench/ runs its code in subprocesses and behind lazy imports, so a renamed module or
    # function there fails only when that section of `make bench` runs
    modules = {**_modules(), **{_module_name(path): path
                                for path in sorted((REPO / "bench").rglob("*.py"))}}
    assert _missing_names(modules) == []


def test_a_name_a_module_lacks_is_found(tmp_path):
    (tmp_path / "lib.py").write_text("def present():\n    pass\n")
    (tmp_path / "user.py").write_text("def late():\n    from lib import absent, present\n")
    modules = {"lib": tmp_path / "lib.py", "user": tmp_path / "user.py"}
    assert _missing_names(modules, tmp_path) == ["user.py:2: lib has no 'absent'"]
