"""Where every artifact lives, declared once (like a Kedro catalog).

Stage functions ask the catalog for paths instead of building them, so tests point a whole pipeline
at a temporary root. Which stage reads and writes what is declared in `tasks.services.dag`: the folder under
models/ each stage writes comes from there (`models_dir`).
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

from tasks.services import dag

# What a project checkout is made of, outputs aside (tests and benchmarks copy this).
PROJECT_SOURCES = ("shrinkflow", "serving", "tasks", "flows", "configs", "data/external",
                   "params.yaml", "dvc.yaml", "prefect.yaml")


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

    def relative(self, path: Path) -> str:
        """`path` relative to the project root, as manifests and reports record files."""
        return path.relative_to(self.root).as_posix()

    # -- prepare --------------------------------------------------------------------------
    @property
    def raw_dir(self) -> Path:
        return self.root / "data" / "raw"

    def raw_table(self, name: str) -> Path:
        return self.raw_dir / f"{name}.csv"

    def raw_images(self, name: str) -> Path:
        """An image folder's pixels (uint8 N x H x W x C), labels and file names."""
        return self.raw_dir / f"{name}.npz"

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
        return self.models_dir("baseline")

    @property
    def baseline_plots_dir(self) -> Path:
        return self.report_dir("baseline")

    # -- compression stages ----------------------------------------------------------------
    def models_dir(self, stage: str) -> Path:
        """The folder under models/ that `stage` writes, as `tasks.services.dag` declares it: one folder
        or file per candidate plus the stage's candidates.json, where it makes candidates."""
        folder = dag.stage(stage).models_dir
        if folder is None:
            raise KeyError(f"stage {stage!r} writes no folder under {dag.MODELS}/")
        return self.path(folder)

    @property
    def compare_dir(self) -> Path:
        return self.report_dir("compare")

    def report_dir(self, stage: str) -> Path:
        """reports/<stage>/: a stage's figures and human-readable summaries."""
        return self.root / "reports" / stage

    def candidates_report(self, stage: str) -> Path:
        """reports/<stage>/candidates.json: every candidate the stage made or measured, each with
        all its figures (read it with `tasks.services.io.read_candidates`); metrics/<stage>.json holds
        only the stage's headline numbers, so that `dvc metrics show` stays readable."""
        return self.report_dir(stage) / "candidates.json"

    def metrics_report(self, stage: str, directory: Path | None = None) -> Path:
        """reports/<stage>/metrics.json: all of the stage's figures, of which metrics/<stage>.json
        shows a few (read it with `tasks.services.io.read_metrics`); `directory`: the staging folder of a
        report folder written whole."""
        return (directory or self.report_dir(stage)) / "metrics.json"

    @property
    def candidates_table(self) -> Path:
        """reports/compare/candidates.csv: one line per compared candidate (`dvc plots`)."""
        return self.compare_dir / "candidates.csv"

    # -- metrics (read by `dvc metrics show` / `dvc plots show`) ---------------------------
    def metrics_file(self, stage: str) -> Path:
        """metrics/<stage>.json: a few headline numbers under names the stages share (`dvc
        metrics show` prints one column per name in any file); the rest: `metrics_report`."""
        return self.root / "metrics" / f"{stage}.json"

    def history_file(self, stage: str) -> Path:
        return self.root / "metrics" / f"{stage}_history.csv"

    # -- search -------------------------------------------------------------------------
    @property
    def search_db(self) -> Path:
        """The default study storage (SQLite) when no other is configured."""
        return self.root / "optuna.db"

    def search_trials_dir(self, study: str) -> Path:
        """Weights of each finished trial of `study` (kept across resumed runs)."""
        return self.root / ".shrinkflow" / "search" / study

    @property
    def search_choice_file(self) -> Path:
        """The config `baseline` trains, as the search chose it (see tasks.stages.search)."""
        return self.models_dir("search") / "choice.json"


    # -- run summary ----------------------------------------------------------------------
    @property
    def summary_file(self) -> Path:
        return self.root / "reports" / "summary.md"

    def stamp_file(self, stage: str) -> Path:
        """The cache key the stage's current outputs were made from (see tasks.services.runner)."""
        return self.root / ".shrinkflow" / "stamps" / stage

    @property
    def lock_file(self) -> Path:
        """Held by the run working in this checkout (see tasks.services.lock)."""
        return self.root / ".shrinkflow" / "lock"


def file_md5(path: Path) -> str:
    """md5 of a file's bytes: the same digest DVC records for it in dvc.lock."""
    digest = hashlib.md5(usedforsecurity=False)  # a content digest, as DVC's, not a secret
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
    digest = hashlib.md5(usedforsecurity=False)
    for child in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(child.relative_to(path)).encode())
        digest.update(file_md5(child).encode())
    return digest.hexdigest()
