"""Stage `prepare` on a folder of images (one sub-folder per class): real PNG files, Great
Expectations on broken folders, nothing written when one is refused.

One generated folder is prepared once per module; each broken folder is then refused against
those outputs, which must stay as they were.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.images import write_folder
from shrinkflow.config import PrepareConfig, load_params
from shrinkflow.images import ImageError, Resizer, decode
from tasks.services import io
from tasks.services.catalog import Catalog
from tasks.services.validation import DataValidationError
from tasks.stages.prepare import run_prepare
from tests.conftest import TINY, copy_project
from tests.tasks.test_prepare import refused

FOLDER = "data/external/shapes"
CLASSES = ["circle", "cross", "square", "triangle"]  # the first four shapes, sorted
IMAGES_SOURCE = ("prepare.source=images", f"prepare.images.path={FOLDER}")


def image_params(project: Path, *overrides: str):
    return load_params(project / "params.yaml", overrides=[*TINY, *IMAGES_SOURCE, *overrides])


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> tuple[Path, dict]:
    """A project prepared from 4 classes x 20 generated 32x32 RGB images, one of them 48x40."""
    project = copy_project(tmp_path_factory.mktemp("images") / "project")
    write_folder(project / FOLDER, per_class=20, classes=4)
    big = np.random.default_rng(1).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    Image.fromarray(big).save(project / FOLDER / "circle" / "big.png")
    (project / FOLDER / "circle" / "notes.txt").write_text("not an image, ignored")
    return project, run_prepare(image_params(project), project)


def test_an_image_folder_is_decoded_resized_split_and_normalized(prepared):
    project, summary = prepared
    catalog = Catalog.at(project)
    # then: every image counted, the classes are the folder names in order
    assert summary["metrics"]["n_images"] == 81 and summary["metrics"]["n_classes"] == 4
    meta = json.loads(catalog.dataset_file().read_text())
    assert meta["spec"]["classes"] == CLASSES and meta["spec"]["raw"] == "images"
    assert meta["spec"]["input_shape"] == [3, 32, 32]
    # and: the raw pixels are kept once, resized as the served graph resizes them
    raw = np.load(catalog.raw_images("shapes"))
    assert raw["images"].shape == (81, 32, 32, 3) and raw["images"].dtype == np.uint8
    files = list(raw["files"])
    big = files.index(f"{FOLDER}/circle/big.png")
    expected = Resizer(32, 3)(decode((project / files[big]).read_bytes(), 3)[None])[0]
    assert np.array_equal(raw["images"][big], expected)
    assert raw["labels"][big] == CLASSES.index("circle")
    # and: the splits hold float32 N x C x H x W, normalized per channel on train
    train = np.load(catalog.split_file("train"))
    assert train["x"].shape[1:] == (3, 32, 32) and train["x"].dtype == np.float32
    assert np.allclose(train["x"].mean(axis=(0, 2, 3)), 0, atol=1e-4)
    assert np.allclose(train["x"].std(axis=(0, 2, 3)), 1, atol=1e-3)
    # and: each sample's raw image is what a client would send the served model
    images, labels = io.load_raw_rows(catalog, "test")
    assert images.dtype == np.uint8 and images.shape[1:] == (32, 32, 3)
    assert np.array_equal(labels, np.load(catalog.split_file("test"))["y"])


def _break(project: Path, breaking: str) -> Path:
    """A copy of the module's folder broken in one way, as the project's image folder."""
    folder = project / "data" / "external" / f"broken-{breaking}"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(project / FOLDER, folder)
    if breaking == "corrupt":
        (folder / "cross" / "00003.png").write_bytes(b"\x89PNG truncated")
    elif breaking == "empty class":
        (folder / "hexagon").mkdir()
    else:  # a class with too few images
        for path in sorted((folder / "square").iterdir())[3:]:
            path.unlink()
    return folder


@pytest.mark.parametrize("breaking, named", [
    ("corrupt", ["file 'data/external/broken-corrupt/cross/00003.png'", "Pillow"]),
    ("empty class", ["folder 'data/external/broken-empty class/hexagon'", "holds 0 images"]),
    ("thin class", ["folder 'data/external/broken-thin class/square'", "holds 3 images",
                    "prepare.images.min_per_class"]),
])
def test_a_broken_folder_is_refused_naming_the_file_or_folder(prepared, breaking, named):
    project, _ = prepared
    # given: the folder broken in one way; when: it is prepared; then: refused, nothing written
    folder = _break(project, breaking)
    error = refused(project, image_params(project, f"prepare.images.path={folder.relative_to(project)}"))
    assert isinstance(error, DataValidationError)
    for words in named:
        assert words in str(error), str(error)
    # and: the failed validation's report is kept
    reports = json.loads(Catalog.at(project).validation_report.read_text())
    assert reports[-1]["success"] is False


@pytest.mark.parametrize("path, says", [
    ("data/external/nothing-here", "prepare.images.path: no folder"),
    (f"{FOLDER}/circle", "needs one sub-folder per class"),
])
def test_a_missing_folder_or_one_without_classes_is_refused(prepared, path, says):
    project, _ = prepared
    with pytest.raises(ImageError, match=says):
        run_prepare(image_params(project, f"prepare.images.path={path}"), project)


def test_the_image_source_needs_its_path():
    with pytest.raises(ValueError, match="prepare.images.path is not set"):
        PrepareConfig(source="images")
