"""The pipeline's stages, declared once: what each runs, reads and writes.

Everything else is derived from `STAGES`: which stages each one waits for (`upstream`: those whose
outputs it reads) and so which run at once in the Prefect flow, each stage's cache key, the
`shrinkflow stage NAME` commands, dvc.yaml (`shrinkflow dvc-yaml` writes it; a test fails when
the committed file differs), the folder under models/ each stage writes (`Stage.models_dir`,
what `Catalog.models_dir` returns) and the candidate folders a stage reads (`CANDIDATES` in its
inputs: those of every stage declared before it that makes candidates). The declared order is
a topological order (a test checks it): dvc.yaml lists the stages in it, and stages that may
run at once start in it. A stage's code dependencies are not listed by hand: they are the
import closure of its stage function's module within the project's packages (`code_deps`), so
editing any module a stage imports, however deeply, re-runs that stage in both Prefect and DVC.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

PROJECT_PACKAGES = ("shrinkflow", "serving", "tasks")  # whose modules count as a stage's code
ROOT = Path(__file__).resolve().parents[2]
MODELS = "models"  # each stage that writes models writes one folder in it
# what the stages read that none of them writes (params.yaml aside: a stage's `params`)
EXTERNAL = ("data/external",)
# in a stage's inputs: the candidate folders of every stage declared before it
CANDIDATES = "<candidates of the stages before>"


@dataclass(frozen=True)
class Output:
    path: str  # relative to the project root
    note: str = ""  # what it holds (a comment in dvc.yaml)
    cache: bool = True  # False: tracked by DVC but not stored in its cache (small text files)
    # a models/ folder of candidates, listed in its candidates.json (`tasks.services.candidates`): what
    # the stages with CANDIDATES in their inputs read
    candidates: bool = False


@dataclass(frozen=True)
class Stage:
    name: str
    function: str  # "module:function", imported only when the stage really runs
    params: tuple[str, ...]  # params.yaml sections or keys it reads (dvc.yaml `params`)
    # data it reads, files or folders (dvc.yaml `deps` besides code); CANDIDATES: the candidate
    # folders of the stages declared before it
    inputs: tuple[str, ...]
    outs: tuple[Output, ...] = ()  # what it writes (dvc.yaml `outs`)
    metrics: tuple[str, ...] = ()  # JSON metrics (dvc.yaml `metrics`, not cached)
    plots: tuple[str, ...] = ()  # CSV/PNG plots (dvc.yaml `plots`, not cached)
    subprocesses: tuple[str, ...] = ()  # project modules it runs as `python -m` (code it runs too)
    services: tuple[str, ...] = ()  # environment variables naming services its outputs live in

    @property
    def module(self) -> str:
        return self.function.partition(":")[0]

    @property
    def outputs(self) -> tuple[str, ...]:
        """Everything the stage leaves behind; a missing one forces it to run again."""
        return (*(out.path for out in self.outs), *self.metrics)

    @property
    def models_dir(self) -> str | None:
        """Its folder under models/ (relative to the project root), None if it writes none."""
        return next((out.path for out in self.outs if Path(out.path).parent == Path(MODELS)),
                    None)

    @property
    def candidates_dir(self) -> str | None:
        """Its folder of candidates, None if it makes none."""
        return next((out.path for out in self.outs if out.candidates), None)


@dataclass(frozen=True)
class Plot:
    """A `dvc plots` definition over columns of a CSV file."""

    name: str
    source: str  # the CSV file
    y: tuple[str, ...]  # its columns drawn
    x: str = "epoch"
    template: str = "linear"  # DVC's plot templates: linear, scatter, ...
    title: str = ""


def _all_metrics(stage: str) -> Output:
    """reports/<stage>/metrics.json, for a stage whose reports/<stage> is not one output folder."""
    return Output(f"reports/{stage}/metrics.json", "all the stage's figures (metrics/: a few)",
                  cache=False)


def _declared(stages: tuple[Stage, ...]) -> dict[str, Stage]:
    """The stages by name, CANDIDATES in a stage's inputs replaced by the candidate folders of
    the stages declared before it, in their order."""
    declared: dict[str, Stage] = {}
    for item in stages:
        earlier = [other.candidates_dir for other in declared.values() if other.candidates_dir]
        inputs = [path for entry in item.inputs
                  for path in (earlier if entry == CANDIDATES else [entry])]
        declared[item.name] = replace(item, inputs=tuple(inputs))
    return declared


STAGES: dict[str, Stage] = _declared((
    Stage("prepare", "tasks.stages.prepare:run_prepare", ("prepare",), ("data/external",),
          outs=(Output("data/raw", "the raw table: versioned by DVC, pushed to the remote"),
                Output("data/processed", "train/val/test splits + normalization statistics"),
                _all_metrics("prepare")),
          metrics=("metrics/prepare.json",)),
    # searches the teacher's config on train/validation; baseline trains what it chose
    Stage("search", "tasks.stages.search:run_search", ("search", "baseline"), ("data/processed",),
          outs=(Output("models/search", "choice.json: the searched baseline values (or none: "
                                        "params.yaml's stay) and why"),
                Output("reports/search", "metrics.json (all the figures), summary.md and the "
                                         "study's plots", cache=False)),
          metrics=("metrics/search.json",), services=("SHRINKFLOW_SEARCH_STORAGE",)),
    # a searched config must win again at the full budget, by the search's rule
    Stage("baseline", "tasks.stages.baseline:run_baseline", ("baseline", "search.within_se"),
          ("data/processed", "models/search"),
          outs=(Output("models/baseline", "model.pt (state_dict), architecture.json, model.onnx",
                       candidates=True),
                _all_metrics("baseline")),
          metrics=("metrics/baseline.json",),
          plots=("metrics/baseline_history.csv", "reports/baseline/confusion_matrix.png",
                 "reports/baseline/training_curves.png")),
    # fine-tuning reuses baseline.train/augment, and the distillation loss's settings
    Stage("prune", "tasks.stages.prune:run_prune",
          ("prune", "baseline", "distill.temperature", "distill.alpha"),
          ("models/baseline", "data/processed"),
          outs=(Output("models/pruned", "structured-* (smaller dense) and unstructured-* "
                                        "(sparse) candidates", candidates=True),
                Output("reports/prune/candidates.json", "each candidate's figures, the ratios "
                                                        "the search tried", cache=False),
                _all_metrics("prune")),
          metrics=("metrics/prune.json",)),
    # students share baseline.train/augment
    Stage("distill", "tasks.stages.distill:run_distill", ("distill", "baseline"),
          ("models/baseline", "data/processed"),
          outs=(Output("models/distilled", "<student>-kd and <student>-scratch per student",
                       candidates=True),
                Output("reports/distill/candidates.json", "each student's figures", cache=False),
                _all_metrics("distill")),
          metrics=("metrics/distill.json",)),
    # QAT reuses baseline.train/augment
    Stage("quantize", "tasks.stages.quantize:run_quantize", ("quantize", "baseline"),
          (CANDIDATES, "data/processed"),
          outs=(Output("models/quantized", "<candidate>-<method>.onnx for every candidate "
                                           "and method", candidates=True),
                Output("reports/quantize/candidates.json", "each file's figures, every attempt "
                                                           "of the fallback chain", cache=False),
                _all_metrics("quantize")),
          metrics=("metrics/quantize.json",)),
    Stage("ensemble", "tasks.stages.ensemble:run_ensemble", ("ensemble",),
          (CANDIDATES, "data/processed"),
          outs=(Output("models/ensemble", "ensemble-<method>.onnx: the members' graphs and a "
                                          "combining head in one file", candidates=True),
                Output("reports/ensemble/candidates.json", "members, weights, each ensemble's "
                                                           "figures", cache=False),
                _all_metrics("ensemble")),
          metrics=("metrics/ensemble.json",)),
    # compression recipes searched on validation; the front joins the hand-set candidates
    Stage("recipes", "tasks.stages.recipes:run_recipes", ("search", "baseline"),
          ("models/baseline", "data/processed"),
          outs=(Output("models/searched", "recipe-<trial>.onnx: the recipe study's Pareto front",
                       candidates=True),
                Output("reports/recipes", "candidates.json (every trial, the front), metrics.json "
                                          "(all the figures), summary.md and the study's plots",
                       cache=False)),
          metrics=("metrics/recipes.json",), services=("SHRINKFLOW_SEARCH_STORAGE",)),
    Stage("compare", "tasks.stages.compare:run_compare", ("compare", "measure"),
          (CANDIDATES, "data/processed"),
          outs=(Output("reports/compare", "candidates.json (every candidate's figures), "
                                          "metrics.json (all the figures), candidates.csv, "
                                          "candidates.md and pareto.png",
                       cache=False),),
          metrics=("metrics/compare.json",)),
    # registers in the MLflow Model Registry (another store: run again); the gate reads the
    # registry's current champion
    Stage("deploy", "tasks.stages.deploy:run_deploy",
          ("deploy", "project.experiment", "compare.max_accuracy_drop_pp", "serve.threads"),
          ("reports/compare/candidates.json", CANDIDATES, "data/processed"),
          outs=(Output("models/deploy", "model.onnx: raw feature rows in, label and "
                                        "probabilities out, as registered"),),
          metrics=("metrics/deploy.json",), subprocesses=("tasks.services.registry_check",),
          services=("MLFLOW_TRACKING_URI",)),
))
# what `dvc plots show` draws besides each stage's own plots files
PLOTS = (
    Plot("loss", "metrics/baseline_history.csv", ("train_loss", "val_loss")),
    Plot("validation_accuracy", "metrics/baseline_history.csv", ("val_accuracy",)),
    Plot("candidates", "reports/compare/candidates.csv", ("accuracy",), x="size_ratio",
         template="scatter", title="Every candidate, test accuracy against size ratio (times "
                                   "smaller than the fp32 torch teacher)"),
)
IMAGE_PLOTS = ("reports/baseline/confusion_matrix.png", "reports/baseline/training_curves.png",
               "reports/compare/pareto.png")


def stage(name: str) -> Stage:
    if name not in STAGES:
        raise KeyError(f"unknown stage {name!r}; stages are {', '.join(STAGES)}")
    return STAGES[name]


# ---------------------------------------------------------------------------------------------
# Dependencies between stages: from what they read and write (`STAGES` is fixed: each answer is
# worked out once)
# ---------------------------------------------------------------------------------------------
def _overlap(first: str, second: str) -> bool:
    """Is one path the other, or inside it (a file of an output folder, a folder of outputs)?"""
    first_path, second_path = Path(first), Path(second)
    return (first_path == second_path or first_path in second_path.parents
            or second_path in first_path.parents)


def reads_from(name: str, other: str) -> bool:
    """Does stage `name` read something stage `other` writes?"""
    return other != name and any(_overlap(path, out) for path in stage(name).inputs
                                 for out in stage(other).outputs)


@cache
def upstream(name: str) -> tuple[str, ...]:
    """The stages whose outputs stage `name` reads, in declared order: it starts once they are
    done."""
    return tuple(other for other in STAGES if reads_from(name, other))


@cache
def _before(name: str) -> frozenset[str]:
    """Every stage `name` waits for, directly or through others."""
    found, pending = set(), list(upstream(name))
    while pending:
        other = pending.pop()
        if other not in found:
            found.add(other)
            pending.extend(upstream(other))
    return frozenset(found)


@cache
def independent(name: str) -> tuple[str, ...]:
    """The stages that may run while stage `name` runs: neither before nor after it."""
    return tuple(other for other in STAGES if other != name and other not in _before(name)
                 and name not in _before(other))


@cache
def _most_independent(names: tuple[str, ...]) -> int:
    """The size of the largest group of `names` in which no stage waits for another."""
    if not names:
        return 0
    first, rest = names[0], names[1:]
    return max(_most_independent(rest),
               1 + _most_independent(tuple(other for other in rest if other in independent(first))))


@cache
def width(name: str | None = None) -> int:
    """The most stages that can run at once (beside stage `name`, itself included)."""
    if name is None:
        return _most_independent(tuple(STAGES))
    return 1 + _most_independent(independent(name))


def candidate_stages(name: str) -> tuple[str, ...]:
    """The stages whose candidate folders stage `name` reads, in declared order."""
    return tuple(other.name for other in STAGES.values()
                 if other.candidates_dir and other.candidates_dir in stage(name).inputs)


# ---------------------------------------------------------------------------------------------
# Code dependencies: the import closure of a stage's module
# ---------------------------------------------------------------------------------------------
def module_file(module: str, root: Path = ROOT,
                packages: tuple[str, ...] = PROJECT_PACKAGES) -> Path | None:
    """The project file defining `module` (a package's __init__.py), None if it is not ours.

    This module is not code a stage computes with, though stages ask it where their folders
    are: what a stage takes from it (its function, params, inputs and outputs) is in its cache
    key and its dvc.yaml entry already, so a change to another stage's declaration (or to the
    writing of dvc.yaml) re-runs nothing."""
    if module.split(".")[0] not in packages or module == __name__:
        return None
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path, module: str) -> frozenset[str]:
    """Every module an `import` anywhere in the file names (inside functions too: lazy imports
    are still code the stage runs). `from package import name` counts `package.name` when that
    is a module, and `package` itself either way."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    try:
        return _parsed_imports(path.read_text(), package)
    except SyntaxError as error:
        error.filename = str(path)  # the error names the file, as `python path` would
        raise


@cache  # keyed on the text: an edited file is parsed again, a project's copy is not
def _parsed_imports(source: str, package: str) -> frozenset[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x / from .y import z
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return frozenset(found)


def _with_parents(module: str) -> list[str]:
    """a.b.c -> [a, a.b, a.b.c]: importing a module runs its packages' __init__ first."""
    parts = module.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def import_closure(module: str, root: Path = ROOT,
                   packages: tuple[str, ...] = PROJECT_PACKAGES) -> tuple[str, ...]:
    """Files of `packages` that `module` imports, directly or through other modules of them,
    itself included; relative to `root`, sorted."""
    seen: dict[str, Path] = {}
    outside: set[str] = set()  # modules that are not ours
    pending = [module]
    while pending:
        name = pending.pop()
        for candidate in _with_parents(name):
            if candidate in seen or candidate in outside:
                continue
            path = module_file(candidate, root, packages)
            if path is None:
                outside.add(candidate)
                continue
            seen[candidate] = path
            pending.extend(imported_modules(path, candidate))
    # an empty package __init__ runs no code
    return tuple(sorted(str(path.relative_to(root)) for path in seen.values()
                        if path.name != "__init__.py" or path.stat().st_size))


def code_deps(name: str, root: Path = ROOT) -> tuple[str, ...]:
    """The project source files stage `name` runs, in its process and in the ones it starts."""
    item = stage(name)
    return tuple(sorted({path for module in (item.module, *item.subprocesses)
                         for path in import_closure(module, root)}))


def user_code(modules: Sequence[str], root: Path = ROOT) -> tuple[str, ...]:
    """The files of a user's model modules (of `baseline.model.class_path` and the like) and of
    the modules of their own packages they import; relative to `root`, sorted."""
    packages = tuple(sorted({module.split(".")[0] for module in modules}))
    return tuple(sorted({path for module in modules
                         for path in import_closure(module, root, packages)}))


def builds_models(name: str) -> bool:
    """Does stage `name` build (or rebuild) the teacher's or a student's network?"""
    return name == "baseline" or "baseline" in _before(name)


def deps(name: str, root: Path = ROOT, user_modules: Sequence[str] = (),
         user_files: Sequence[str] = ()) -> tuple[str, ...]:
    """Everything stage `name` computes from besides params: its data inputs, its code and, when
    it builds networks, the user's model code (`user_modules`: the modules of the class paths
    params name) and files (`user_files`: the teacher's weights), relative to `root`."""
    user = (*user_code(user_modules, root), *user_files) if builds_models(name) else ()
    return (*stage(name).inputs, *code_deps(name, root), *user)


# ---------------------------------------------------------------------------------------------
# dvc.yaml, written from the declarations above
# ---------------------------------------------------------------------------------------------
DVC_YAML_HEADER = """\
# Written by `shrinkflow dvc-yaml` from tasks/services/dag.py, where the stages are declared once: edit
# that file, not this one (a test fails when they disagree). Each stage runs the same function the
# Prefect flow runs; its deps are its data inputs plus every project module it imports.
# `dvc repro` runs what changed, `dvc exp run -S key=value` tries a param,
# `dvc metrics show|diff` and `dvc plots show` read the outputs.
"""


def _uncached(path: str) -> list[str]:
    return [f"      - {path}:", "          cache: false"]


def dvc_yaml(root: Path = ROOT, user_modules: Sequence[str] = (),
             user_files: Sequence[str] = ()) -> str:
    """The text of dvc.yaml for `STAGES` (and the user's model modules and files, see `deps`)."""
    lines = [DVC_YAML_HEADER.rstrip("\n"), "stages:"]
    for item in STAGES.values():
        lines += [f"  {item.name}:", f"    cmd: shrinkflow stage {item.name}", "    deps:"]
        lines += [f"      - {path}" for path in deps(item.name, root, user_modules, user_files)]
        lines += ["    params:", *(f"      - {key}" for key in item.params)]
        if item.outs:
            lines.append("    outs:")
            for out in item.outs:
                entry = _uncached(out.path) if not out.cache else [f"      - {out.path}"]
                if out.note:
                    entry[0] += f"  # {out.note}"
                lines += entry
        if item.metrics:
            lines += ["    metrics:", *(line for path in item.metrics for line in _uncached(path))]
        if item.plots:
            lines += ["    plots:", *(line for path in item.plots for line in _uncached(path))]
        lines.append("")
    lines += ["# What `dvc plots show` / `dvc plots diff` draw.", "plots:"]
    for plot in PLOTS:
        shown = plot.y[0] if len(plot.y) == 1 else f"[{', '.join(plot.y)}]"
        lines += [f"  - {plot.name}:", *([f"      template: {plot.template}"]
                                         if plot.template != "linear" else []),
                  *([f"      title: {plot.title}"] if plot.title else []),
                  f"      x: {plot.x}", "      y:", f"        {plot.source}: {shown}"]
    lines += [f"  - {path}" for path in IMAGE_PLOTS]
    return "\n".join(lines) + "\n"
