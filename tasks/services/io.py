"""Reading and writing stage outputs: atomic writes, and the processed data every stage reads.

Files are written next to their target under a temporary name and renamed into place; folders are
built in a temporary sibling folder and swapped in whole. Readers see the old version or the new
one, never a mix, and a run killed at any instant leaves one of the two in place: the swap is one
atomic exchange of the two names (Linux renameat2), and where the file system cannot exchange, the
two renames it takes instead are undone by `recover` at the next start.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from shrinkflow.errors import UserError
from tasks.services.catalog import Catalog

if TYPE_CHECKING:
    from shrinkflow import data

_AT_FDCWD, _RENAME_EXCHANGE = -100, 2  # <fcntl.h>, <linux/fs.h>


class MissingInputError(UserError, FileNotFoundError):
    """A stage's input is not there: the stage that produces it has not run (or was cleaned)."""


class UnsafeFileError(UserError, ValueError):
    """A file holds pickled Python objects where only plain arrays belong: it is not loaded."""


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def _publish_mode(path: Path) -> None:
    """mkstemp/mkdtemp create private (0600/0700) entries; give them the usual permissions."""
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~_umask())


@contextmanager
def atomic_file(target: Path) -> Iterator[Path]:
    """Yield a temporary path; on success it replaces `target`, on error it is removed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        _publish_mode(temporary)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def _exchange(first: Path, second: Path) -> bool:
    """Swap two existing paths in one atomic step; False where the system cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # not glibc >= 2.28
        return False
    done = renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second),
                     _RENAME_EXCHANGE)
    return done == 0


def _retired(target: Path) -> Path:
    return target.with_name(f".{target.name}.old")


def recover(target: Path) -> None:
    """Undo what a killed write of `target` left: the old folder set aside with nothing in its
    place is put back, and the temporary files and folders of dead runs are removed. Call it only
    while holding the project lock (another run's temporary files are not dead)."""
    retired = _retired(target)
    if retired.exists() and not target.exists():
        os.replace(retired, target)
    shutil.rmtree(retired, ignore_errors=True)
    for stale in target.parent.glob(f".{target.name}.*.tmp"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


@contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield an empty temporary folder; on success it replaces `target` as a whole."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        yield staging
        _publish_mode(staging)
        if not target.exists():
            os.replace(staging, target)
        elif not _exchange(staging, target):
            # two renames: a kill between them leaves only the retired folder, which `recover`
            # puts back at the next start
            shutil.rmtree(_retired(target), ignore_errors=True)
            os.replace(target, _retired(target))
            os.replace(staging, target)
            shutil.rmtree(_retired(target), ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # after an exchange: the previous version


def write_json(target: Path, data: Any) -> Path:
    with atomic_file(target) as temporary:
        temporary.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return target


def write_text(target: Path, text: str) -> Path:
    with atomic_file(target) as temporary:
        temporary.write_text(text)
    return target


def require(path: Path, produced_by: str) -> Path:
    """`path`, or a MissingInputError naming the stage that should have produced it."""
    if not path.exists():
        raise MissingInputError(f"{path} not found: run the '{produced_by}' stage first")
    return path


def read_json(path: Path, produced_by: str) -> Any:
    """Read a stage output, saying which stage should have produced it when it is missing."""
    return json.loads(require(path, produced_by).read_text())


def _arrays(path: Path, produced_by: str) -> dict[str, np.ndarray]:
    # allow_pickle=False: an .npz holding pickled objects is refused, never unpickled
    with np.load(require(path, produced_by), allow_pickle=False) as arrays:
        try:
            return {name: arrays[name] for name in arrays.files}
        except ValueError as error:
            raise UnsafeFileError(f"{path} holds pickled objects, not plain arrays: refused "
                                  f"({error})") from None


def read_candidates(catalog: Catalog, stage: str) -> dict[str, Any]:
    """Every candidate `stage` made or measured, with all its figures (its candidates report)."""
    return read_json(catalog.candidates_report(stage), produced_by=stage)


def write_metrics(catalog: Catalog, stage: str, headline: dict[str, Any], metrics: dict[str, Any],
                  directory: Path | None = None) -> None:
    """metrics/<stage>.json: `headline`, a few numbers under the names the stages share (what
    `dvc metrics show` prints); reports/<stage>/metrics.json (in `directory`, the staging folder
    of a report folder written whole): `metrics`, all of the stage's figures."""
    write_json(catalog.metrics_file(stage), headline)
    write_json(catalog.metrics_report(stage, directory), metrics)


def read_metrics(catalog: Catalog, stage: str) -> dict[str, Any]:
    """All of a stage's figures (its reports/<stage>/metrics.json), not only the headline."""
    return read_json(catalog.metrics_report(stage), produced_by=stage)


def load_processed(catalog: Catalog) -> tuple[data.Splits, data.DatasetSpec, dict[str, Any]]:
    """The splits written by `prepare`, with the data set's spec and metadata."""
    from shrinkflow import data  # imports torch: only stages that run need it, not the cache checks

    meta = read_json(catalog.dataset_file(), produced_by="prepare")
    splits = []
    for name in ("train", "val", "test"):
        arrays = _arrays(catalog.split_file(name), produced_by="prepare")
        splits.append(data.Split(arrays["x"], arrays["y"]))
    return data.Splits(*splits), data.DatasetSpec.from_dict(meta["spec"]), meta


def load_raw_rows(catalog: Catalog, split: str) -> tuple[pd.DataFrame | np.ndarray, np.ndarray]:
    """A split's inputs as the raw data has them, what a user sends the deployed model: a table's
    feature columns (text and missing values included), or an image folder's images (uint8
    N x H x W x C); and its class indices."""
    arrays = _arrays(catalog.split_file(split), produced_by="prepare")
    if "rows" not in arrays:
        raise MissingInputError(f"{catalog.split_file(split)} has no row numbers: run the "
                                "'prepare' stage again")
    meta = read_json(catalog.dataset_file(), produced_by="prepare")
    raw_file, spec = catalog.path(meta["raw_file"]), meta["spec"]
    if spec.get("raw") == "images":
        return _arrays(raw_file, produced_by="prepare")["images"][arrays["rows"]], arrays["y"]
    table = pd.read_csv(raw_file, usecols=spec["feature_columns"])
    return table[spec["feature_columns"]].iloc[arrays["rows"]].reset_index(drop=True), arrays["y"]


def load_unlabeled(catalog: Catalog) -> np.ndarray | None:
    """The normalized unlabeled inputs written by `prepare`; None when it wrote none."""
    path = catalog.unlabeled_file()
    return _arrays(path, produced_by="prepare")["x"] if path.is_file() else None
