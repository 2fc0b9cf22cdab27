"""A team's folder of images and its own network, through every stage to a champion that answers
base64 image requests as offline evaluation does.

Integration test (slow: a pipeline per network): 160 generated 32x32 RGB images in four class
folders; the teacher is the team's residual CNN class, torchvision's mobilenet_v3_small or
resnet18 (each then given back its own weights with 0 epochs), or an ONNX file. Each run ends with
`shrinkflow serve` answering {"images": [base64 PNG, ...]} with the labels the deployed graph gives
the test split's images offline."""

from __future__ import annotations

import base64
import json
import shutil
import sys
from pathlib import Path

import httpx
import pytest

from bench.images import write_folder
from bench.serving import free_port, running
from serving.model import ServedModel
from shrinkflow.config import load_params
from shrinkflow.images import encode_png
from tasks.services import registry
from tasks.services.dag import STAGES
from tasks.services.runner import run_stage
from tests.conftest import REPO, TINY, copy_project
from tests.flows.test_user_model import assert_its_weights_score_what_it_scored

pytestmark = [pytest.mark.integration, pytest.mark.slow]
VENV_BIN = Path(sys.executable).parent
IMAGES = ["prepare.source=images", "prepare.images.path=data/external/shapes",
          "prepare.images.min_per_class=10", "baseline.train.epochs=3"]
NETWORKS = {
    "custom-residual": ["baseline.model.family=custom",
                        "baseline.model.class_path=team_nets:ResidualNet",
                        "baseline.model.init_args={in_channels: 3, n_classes: 4}"],
    "torchvision-mobilenet": ["baseline.model.family=torchvision",
                              "baseline.model.arch=mobilenet_v3_small"],
    # 11M parameters: a batch of 256 takes seconds, so compare times fewer rounds of it
    "torchvision-resnet18": ["baseline.model.family=torchvision", "baseline.model.arch=resnet18",
                             "measure.rounds=2", "measure.warmup=1"],
}


def image_project(root: Path) -> Path:
    project = copy_project(root / "project")
    write_folder(project / "data" / "external" / "shapes", per_class=40, classes=4)
    (project / "team_nets.py").write_text((REPO / "tests" / "core" / "nets.py").read_text())
    return project


def run_all(project: Path, overrides: list[str]) -> None:
    params = load_params(project / "params.yaml", overrides=overrides)
    for stage in STAGES:
        run_stage(stage, params, project)


def served_like_offline(project: Path, name: str) -> None:
    """`shrinkflow serve` answers the test images, sent as base64 PNG files, with the labels the
    deployed graph gives them offline."""
    rows = registry.Rows.of_split(project, "test")
    model = ServedModel.from_onnx(project / "models" / "deploy" / "model.onnx", version="file")
    offline, _ = model.predict(rows.x)
    payload = {"images": [base64.b64encode(encode_png(image)).decode() for image in rows.x]}
    port = free_port()
    command = [str(VENV_BIN / "shrinkflow"), "serve", "--name", name, "--port", str(port)]
    with running(command, project, port, "/health") as url:
        answer = httpx.post(f"{url}/predict", json=payload, timeout=60)
        corrupt = httpx.post(f"{url}/predict", json={"images": ["bm90IGFuIGltYWdl"]}, timeout=60)
    assert answer.status_code == 200, answer.text
    assert answer.json()["labels"] == offline
    assert corrupt.status_code == 400 and "images[0]" in corrupt.json()["error"]


def _compared(project: Path) -> dict:
    return json.loads((project / "reports" / "compare" / "candidates.json").read_text())


@pytest.fixture(scope="module", params=list(NETWORKS))
def ran(request, tmp_path_factory) -> tuple[Path, list[str]]:
    project = image_project(tmp_path_factory.mktemp(request.param))
    overrides = [*TINY, *IMAGES, *NETWORKS[request.param],
                 f"deploy.registered_model=images-{request.param}"]
    run_all(project, overrides)
    return project, overrides


def test_every_stage_compressed_the_network_and_the_champion_answers_images(ran):
    project, overrides = ran
    candidates = _compared(project)["candidates"]
    teacher, pruned = candidates["baseline-fp32"], candidates["structured-50"]
    assert pruned["params_count"] < 0.6 * teacher["params_count"], "pruning removed channels"
    assert {"pruned", "distilled", "quantized"} <= {row["kind"] for row in candidates.values()}
    served_like_offline(project, overrides[-1].split("=", 1)[1])


def test_its_saved_weights_with_zero_epochs_score_what_it_scored(ran):
    assert_its_weights_score_what_it_scored(*ran)


def test_an_onnx_teacher_of_images_is_quantized_and_distilled(tmp_path):
    project = image_project(tmp_path)
    first = load_params(project / "params.yaml", overrides=[*TINY, *IMAGES])
    for stage in ("prepare", "search", "baseline"):
        run_stage(stage, first, project)
    shutil.copy(project / "models" / "baseline" / "model.onnx", project / "teacher.onnx")
    run_all(project, [*TINY, *IMAGES, "baseline.onnx=teacher.onnx", "deploy.registered_model=images-onnx"])
    candidates = _compared(project)["candidates"]
    assert {"baseline-fp32-int8_static", "student-kd", "student-kd-int8_static"} <= set(candidates)
    served_like_offline(project, "images-onnx")
