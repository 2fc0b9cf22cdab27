"""What `shrinkflow check` says of a team's own networks, before anything runs.

A custom or torchvision teacher or student (or `baseline.onnx`) is built and run on a batch of
the data's inputs, and `baseline.weights` are loaded into the teacher; a misfit is a
`ModelError` naming the key. The data's shape is a built-in source's, an image folder's (its
class folders, `prepare.images.size` and `channels`), or, for a table, the one
`prepare` wrote for it (a table's encoded width is known only once it is prepared: until then
the classes are only imported). Nothing is written.
"""

from __future__ import annotations

from pathlib import Path

from shrinkflow import data, images, models, user_models
from shrinkflow.config import Params
from tasks.services import io
from tasks.services.catalog import Catalog
from tasks.services.runner import user_code_importable


def _data_spec(params: Params, root: Path) -> data.DatasetSpec | None:
    if params.prepare.source == "images":  # known from the folder: its classes, and the settings
        settings = params.prepare.images
        classes = images.class_folders(root / (settings.path or ""))
        return data.images_spec(Path(settings.path or "").name, [item.name for item in classes],
                                settings.size, settings.channels)
    if params.prepare.source != "csv":
        return data.builtin_table(params.prepare)[1]
    found = Catalog.at(root).dataset_file()
    meta = io.read_json(found) if found.is_file() else None
    if meta is None or meta["spec"]["name"] != Path(params.prepare.csv.path or "").stem:
        return None
    return data.DatasetSpec.from_dict(meta["spec"])


def _student_key(name: str) -> str:
    return "distill.student" if name == "student" else f"distill.extra_students.{name}"


def check_models(params: Params, root: Path) -> list[str]:
    """A line per network checked (none when params name only built-in ones, without weights)."""
    students = {_student_key(name): config
                for name, config in params.distill.students().items() if not config.is_builtin}
    teacher = params.baseline
    if teacher.model.is_builtin and teacher.weights is None and teacher.onnx is None \
            and not students:
        return []
    user_code_importable(params, root)
    spec = _data_spec(params, root)
    if spec is None:
        for key, config in {"baseline.model": teacher.model, **students}.items():
            if config.class_path:
                user_models.import_class(config.class_path, f"{key}.class_path")
        return ["the classes import; their outputs and weights are checked against the table "
                "once `shrinkflow stage prepare` has read it"]
    shape, classes = f"{spec.name}'s inputs {spec.input_shape}", len(spec.classes)
    if teacher.onnx is not None:
        onnx_teacher = user_models.OnnxTeacher(root / teacher.onnx)
        user_models.check_outputs(onnx_teacher, spec.input_shape, classes, "baseline.onnx")
        said = [f"baseline.onnx: {teacher.onnx} maps {shape} to {classes} classes"]
    else:
        arch, _ = models.teacher_for_data(teacher, spec.kind, spec.input_shape, classes, root)
        said = [f"baseline.model: {arch.describe()} maps {shape} to {classes} classes"
                + (f"; the weights {teacher.weights} fit it" if teacher.weights else "")]
    for key, config in students.items():
        arch, _ = models.build_for_data(config, spec.kind, spec.input_shape, classes, key)
        said.append(f"{key}: {arch.describe()} maps {shape} to {classes} classes")
    return said
