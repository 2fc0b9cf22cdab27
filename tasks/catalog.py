"""Where every artifact lives, declared once (like a Kedro catalog).

Stage functions ask the catalog for paths instead of building them, so tests point a whole pipeline
at a temporary root. `STAGE_DEPS` lists what each stage reads: it feeds the Prefect cache key and
must agree with the stage's `deps` in dvc.yaml (a test checks that).
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

# Code and data each stage depends on, relative to the project root (mirrors dvc.yaml deps),
# in the order the pipeline runs the stages.
STAGE_DEPS: dict[str, tuple[str, ...]] = {
    "prepare": (
        "shrinkflow/config.py", "shrinkflow/data.py",
        "tasks/prepare.py", "tasks/validation.py", "data/external",
    ),
    "baseline": (
        "shrinkflow/models.py", "shrinkflow/train.py", "shrinkflow/measure.py",
        "shrinkflow/export.py", "shrinkflow/plots.py", "tasks/baseline.py", "tasks/candidates.py",
        "data/processed",
    ),
    "prune": (
        "shrinkflow/prune.py", "shrinkflow/sparse.py", "shrinkflow/distill.py", "shrinkflow/train.py", "shrinkflow/models.py",
        "tasks/prune.py", "tasks/candidates.py", "models/baseline", "data/processed",
    ),
    "distill": (
        "shrinkflow/distill.py", "shrinkflow/train.py", "shrinkflow/models.py", "shrinkflow/data.py",
        "tasks/distill.py", "tasks/candidates.py", "models/baseline", "data/processed",
    ),
    "quantize": (
        "shrinkflow/quantize.py", "shrinkflow/export.py", "tasks/quantize.py",
        "tasks/candidates.py", "models/baseline", "models/pruned", "models/distilled",
        "data/processed",
    ),
    "compare": (
        "shrinkflow/measure.py", "shrinkflow/gate.py", "shrinkflow/plots.py",
        "tasks/compare.py", "tasks/candidates.py", "models/baseline", "models/pruned",
        "models/distilled", "models/quantized", "data/processed",
    ),
}

# What each stage writes besides reports (mirrors dvc.yaml outs and metrics).
STAGE_OUTPUTS: dict[str, tuple[str, ...]] = {
    "prepare": ("data/processed", "data/raw", "metrics/prepare.json"),
    "baseline": ("models/baseline", "metrics/baseline.json"),
    "prune": ("models/pruned", "metrics/prune.json"),
    "distill": ("models/distilled", "metrics/distill.json"),
    "quantize": ("models/quantized", "metrics/quantize.json"),
    "compare": ("reports/compare", "metrics/compare.json"),
}

# What a project checkout is made of, outputs aside (tests and benchmarks copy this).
PROJECT_SOURCES = ("shrinkflow", "tasks", "flows", "configs", "data/external",
                   "params.yaml", "dvc.yaml")


def copy_sources(source: Path, destination: Path) -> Path:
    """Copy a project's code and configuration (no outputs, no stores) into `destination`."""
    for name in PROJECT_SOURCES:
        if (source / name).is_dir():
            shutil.copytree(source / name, destination / name,
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / name, destination / name)
    return destination


@dataclass(frozen=True)
class Catalog:
    """Paths of one project checkout (or a test's temporary copy)."""

    root: Path

    @classmethod
    def at(cls, root: str | Path = ".") -> Catalog:
        return cls(Path(root).resolve())

    def path(self, relative: str) -> Path:
        return self.root / relative

    # -- prepare --------------------------------------------------------------------------
    @property
    def raw_dir(self) -> Path:
        return self.root / "data" / "raw"

    def raw_table(self, name: str) -> Path:
        return self.raw_dir / f"{name}.csv"

    @property
    def processed_dir(self) -> Path:
        return self.root / "data" / "processed"

    def split_file(self, split: str, directory: Path | None = None) -> Path:
        return (directory or self.processed_dir) / f"{split}.npz"

    def unlabeled_file(self, directory: Path | None = None) -> Path:
        """Normalized inputs without labels, for distillation (absent when none are configured)."""
        return (directory or self.processed_dir) / "unlabeled.npz"

    def dataset_file(self, directory: Path | None = None) -> Path:
        """Spec, normalization statistics, class counts and the raw digest of the data set."""
        return (directory or self.processed_dir) / "dataset.json"

    @property
    def data_docs_dir(self) -> Path:
        return self.root / "reports" / "data_docs"

    @property
    def validation_report(self) -> Path:
        return self.root / "reports" / "validation.json"

    # -- baseline -------------------------------------------------------------------------
    @property
    def baseline_dir(self) -> Path:
        return self.stage_models("baseline")

    @property
    def baseline_plots_dir(self) -> Path:
        return self.root / "reports" / "baseline"

    # -- compression stages ----------------------------------------------------------------
    def stage_models(self, stage: str) -> Path:
        """models/<stage>/: one folder per candidate plus the stage's candidates.json."""
        return self.root / "models" / stage

    @property
    def compare_dir(self) -> Path:
        return self.root / "reports" / "compare"

    # -- metrics (read by `dvc metrics show` / `dvc plots show`) ---------------------------
    def metrics_file(self, stage: str) -> Path:
        return self.root / "metrics" / f"{stage}.json"

    def history_file(self, stage: str) -> Path:
        return self.root / "metrics" / f"{stage}_history.csv"

    # -- run summary ----------------------------------------------------------------------
    @property
    def summary_file(self) -> Path:
        return self.root / "reports" / "summary.md"

    def stage_outputs(self, stage: str) -> tuple[Path, ...]:
        """What a finished stage leaves behind; a missing one forces the stage to re-run."""
        if stage not in STAGE_OUTPUTS:
            raise KeyError(f"unknown stage {stage!r}; stages are {sorted(STAGE_DEPS)}")
        return tuple(self.path(relative) for relative in STAGE_OUTPUTS[stage])

    def stamp_file(self, stage: str) -> Path:
        """The cache key the stage's current outputs were made from (see tasks.stages)."""
        return self.root / ".shrinkflow" / "stamps" / stage

    def outputs_exist(self, stage: str) -> bool:
        return all(path.exists() for path in self.stage_outputs(stage))

    def deps_digest(self, stage: str) -> str:
        """Content hash of everything `stage` reads (files and whole folders)."""
        digest = hashlib.sha256()
        for relative in STAGE_DEPS[stage]:
            digest.update(relative.encode())
            digest.update(tree_digest(self.path(relative)).encode())
        return digest.hexdigest()


def file_md5(path: Path) -> str:
    """md5 of a file's bytes: the same digest DVC records for it in dvc.lock."""
    digest = hashlib.md5()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tree_digest(path: Path) -> str:
    """Digest of a file, or of every file under a folder (names and contents); '' if absent."""
    if path.is_file():
        return file_md5(path)
    if not path.is_dir():
        return ""
    digest = hashlib.md5()
    for child in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(child.relative_to(path)).encode())
        digest.update(file_md5(child).encode())
    return digest.hexdigest()
