"""The pipeline's stages, declared once: what each runs, reads and writes.

Everything else is derived from `STAGES`: the Prefect flow's order, each stage's cache key, the
`shrinkflow stage NAME` commands and dvc.yaml (`shrinkflow dvc-yaml` writes it; a test fails when
the committed file differs). A stage's code dependencies are not listed by hand: they are the
import closure of its stage function's module within the project's packages (`code_deps`), so
editing any module a stage imports, however deeply, re-runs that stage in both Prefect and DVC.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import cache
from pathlib import Path

PROJECT_PACKAGES = ("shrinkflow", "serving", "tasks")  # whose modules count as a stage's code
ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Output:
    path: str  # relative to the project root
    note: str = ""  # what it holds (a comment in dvc.yaml)
    cache: bool = True  # False: tracked by DVC but not stored in its cache (small text files)


@dataclass(frozen=True)
class Stage:
    name: str
    function: str  # "module:function", imported only when the stage really runs
    params: tuple[str, ...]  # params.yaml sections or keys it reads (dvc.yaml `params`)
    inputs: tuple[str, ...]  # data it reads, files or folders (dvc.yaml `deps` besides code)
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


@dataclass(frozen=True)
class Plot:
    """A `dvc plots` definition over columns of a CSV file."""

    name: str
    source: str  # the CSV file
    y: tuple[str, ...]  # its columns drawn
    x: str = "epoch"
    template: str = "linear"  # DVC's plot templates: linear, scatter, ...
    title: str = ""


_CANDIDATES = ("models/baseline", "models/pruned", "models/distilled")


def _all_metrics(stage: str) -> Output:
    """reports/<stage>/metrics.json, for a stage whose reports/<stage> is not one output folder."""
    return Output(f"reports/{stage}/metrics.json", "all the stage's figures (metrics/: a few)",
                  cache=False)


STAGES: dict[str, Stage] = {stage.name: stage for stage in (
    Stage("prepare", "tasks.prepare:run_prepare", ("prepare",), ("data/external",),
          outs=(Output("data/raw", "the raw table: versioned by DVC, pushed to the remote"),
                Output("data/processed", "train/val/test splits + normalization statistics"),
                _all_metrics("prepare")),
          metrics=("metrics/prepare.json",)),
    # searches the teacher's config on train/validation; baseline trains what it chose
    Stage("search", "tasks.search:run_search", ("search", "baseline"), ("data/processed",),
          outs=(Output("models/search", "choice.json: the searched baseline values (or none: "
                                        "params.yaml's stay) and why"),
                Output("reports/search", "metrics.json (all the figures), summary.md and the "
                                         "study's plots", cache=False)),
          metrics=("metrics/search.json",), services=("SHRINKFLOW_SEARCH_STORAGE",)),
    # a searched config must win again at the full budget, by the search's rule
    Stage("baseline", "tasks.baseline:run_baseline", ("baseline", "search.within_se"),
          ("data/processed", "models/search"),
          outs=(Output("models/baseline", "model.pt (state_dict), architecture.json, model.onnx"),
                _all_metrics("baseline")),
          metrics=("metrics/baseline.json",),
          plots=("metrics/baseline_history.csv", "reports/baseline/confusion_matrix.png",
                 "reports/baseline/training_curves.png")),
    # fine-tuning reuses baseline.train/augment, and the distillation loss's settings
    Stage("prune", "tasks.prune:run_prune",
          ("prune", "baseline", "distill.temperature", "distill.alpha"),
          ("models/baseline", "data/processed"),
          outs=(Output("models/pruned", "structured-* (smaller dense) and unstructured-* "
                                        "(sparse) candidates"),
                Output("reports/prune/candidates.json", "each candidate's figures, the ratios "
                                                        "the search tried", cache=False),
                _all_metrics("prune")),
          metrics=("metrics/prune.json",)),
    # students share baseline.train/augment
    Stage("distill", "tasks.distill:run_distill", ("distill", "baseline"),
          ("models/baseline", "data/processed"),
          outs=(Output("models/distilled", "<student>-kd and <student>-scratch per student"),
                Output("reports/distill/candidates.json", "each student's figures", cache=False),
                _all_metrics("distill")),
          metrics=("metrics/distill.json",)),
    # QAT reuses baseline.train/augment
    Stage("quantize", "tasks.quantize:run_quantize", ("quantize", "baseline"),
          (*_CANDIDATES, "data/processed"),
          outs=(Output("models/quantized", "<candidate>-<method>.onnx for every candidate "
                                           "and method"),
                Output("reports/quantize/candidates.json", "each file's figures, every attempt "
                                                           "of the fallback chain", cache=False),
                _all_metrics("quantize")),
          metrics=("metrics/quantize.json",)),
    Stage("ensemble", "tasks.ensemble:run_ensemble", ("ensemble",),
          (*_CANDIDATES, "models/quantized", "data/processed"),
          outs=(Output("models/ensemble", "ensemble-<method>.onnx: the members' graphs and a "
                                          "combining head in one file"),
                Output("reports/ensemble/candidates.json", "members, weights, each ensemble's "
                                                           "figures", cache=False),
                _all_metrics("ensemble")),
          metrics=("metrics/ensemble.json",)),
    # compression recipes searched on validation; the front joins the hand-set candidates
    Stage("recipes", "tasks.recipes:run_recipes", ("search", "baseline"),
          ("models/baseline", "data/processed"),
          outs=(Output("models/searched", "recipe-<trial>.onnx: the recipe study's Pareto front"),
                Output("reports/recipes", "candidates.json (every trial, the front), metrics.json "
                                          "(all the figures), summary.md and the study's plots",
                       cache=False)),
          metrics=("metrics/recipes.json",), services=("SHRINKFLOW_SEARCH_STORAGE",)),
    Stage("compare", "tasks.compare:run_compare", ("compare", "measure"),
          (*_CANDIDATES, "models/quantized", "models/ensemble", "models/searched", "data/processed"),
          outs=(Output("reports/compare", "candidates.json (every candidate's figures), "
                                          "metrics.json (all the figures), candidates.csv, "
                                          "candidates.md and pareto.png",
                       cache=False),),
          metrics=("metrics/compare.json",)),
    # registers in the MLflow Model Registry (another store: run again); the gate reads the
    # registry's current champion
    Stage("deploy", "tasks.deploy:run_deploy",
          ("deploy", "project.experiment", "compare.max_accuracy_drop_pp", "serve.threads"),
          ("reports/compare/candidates.json", *_CANDIDATES, "models/quantized", "models/ensemble",
           "models/searched", "data/processed"),
          outs=(Output("models/deploy", "model.onnx: raw feature rows in, label and "
                                        "probabilities out, as registered"),),
          metrics=("metrics/deploy.json",), subprocesses=("tasks.registry_check",),
          services=("MLFLOW_TRACKING_URI",)),
)}
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
# Code dependencies: the import closure of a stage's module
# ---------------------------------------------------------------------------------------------
def module_file(module: str, root: Path = ROOT) -> Path | None:
    """The project file defining `module` (a package's __init__.py), None if it is not ours."""
    if module.split(".")[0] not in PROJECT_PACKAGES:
        return None
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_modules(path: Path, module: str) -> frozenset[str]:
    """Every module an `import` anywhere in the file names (inside functions too: lazy imports
    are still code the stage runs). `from package import name` counts `package.name` when that
    is a module, and `package` itself either way."""
    stat = path.stat()
    return _parsed_imports(path, module, stat.st_mtime_ns, stat.st_size)


@cache  # keyed on the file's mtime and size too: an edited file is parsed again
def _parsed_imports(path: Path, module: str, mtime_ns: int, size: int) -> frozenset[str]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
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


def import_closure(module: str, root: Path = ROOT) -> tuple[str, ...]:
    """Project files that `module` imports, directly or through other project modules, itself
    included; relative to `root`, sorted."""
    seen: dict[str, Path] = {}
    pending = [module]
    while pending:
        name = pending.pop()
        for candidate in _with_parents(name):
            path = module_file(candidate, root)
            if path is None or candidate in seen:
                continue
            seen[candidate] = path
            pending.extend(_imported_modules(path, candidate))
    # an empty package __init__ runs no code
    return tuple(sorted(str(path.relative_to(root)) for path in seen.values()
                        if path.name != "__init__.py" or path.stat().st_size))


def code_deps(name: str, root: Path = ROOT) -> tuple[str, ...]:
    """The project source files stage `name` runs, in its process and in the ones it starts."""
    item = stage(name)
    return tuple(sorted({path for module in (item.module, *item.subprocesses)
                         for path in import_closure(module, root)}))


def deps(name: str, root: Path = ROOT) -> tuple[str, ...]:
    """Everything stage `name` computes from besides params: its data inputs and its code."""
    return (*stage(name).inputs, *code_deps(name, root))


# ---------------------------------------------------------------------------------------------
# dvc.yaml, written from the declarations above
# ---------------------------------------------------------------------------------------------
DVC_YAML_HEADER = """\
# Written by `shrinkflow dvc-yaml` from tasks/dag.py, where the stages are declared once: edit
# that file, not this one (a test fails when they disagree). Each stage runs the same function the
# Prefect flow runs; its deps are its data inputs plus every project module it imports.
# `dvc repro` runs what changed, `dvc exp run -S key=value` tries a param,
# `dvc metrics show|diff` and `dvc plots show` read the outputs.
"""


def _uncached(path: str) -> list[str]:
    return [f"      - {path}:", "          cache: false"]


def dvc_yaml(root: Path = ROOT) -> str:
    """The text of dvc.yaml for `STAGES`."""
    lines = [DVC_YAML_HEADER.rstrip("\n"), "stages:"]
    for item in STAGES.values():
        lines += [f"  {item.name}:", f"    cmd: shrinkflow stage {item.name}", "    deps:"]
        lines += [f"      - {path}" for path in deps(item.name, root)]
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
