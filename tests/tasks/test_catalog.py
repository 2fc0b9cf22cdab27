"""The catalog's declared stage inputs agree with dvc.yaml and drive cache keys."""

from __future__ import annotations

import yaml

from tasks.catalog import STAGE_DEPS, STAGE_OUTPUTS, Catalog
from tasks.stages import STAGE_SECTIONS
from tests.conftest import REPO


def test_stage_deps_match_dvc_yaml():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for stage, deps in STAGE_DEPS.items():
        assert sorted(stages[stage]["deps"]) == sorted(deps), \
            f"dvc.yaml deps of {stage!r} should match tasks/catalog.py STAGE_DEPS"


def test_stage_params_match_dvc_yaml():
    """Prefect's cache key and DVC must re-run a stage for the same params changes."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for stage, sections in STAGE_SECTIONS.items():
        assert sorted(stages[stage]["params"]) == sorted(sections), \
            f"dvc.yaml params of {stage!r} should match tasks/stages.py STAGE_SECTIONS"


def test_stage_outputs_match_dvc_yaml_outs_and_metrics():
    def paths(entries: list | None) -> list[str]:  # "path" or {"path": {options}}
        return [next(iter(entry)) if isinstance(entry, dict) else entry for entry in entries or []]

    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for stage, outputs in STAGE_OUTPUTS.items():
        declared = paths(stages[stage].get("outs")) + paths(stages[stage].get("metrics"))
        assert sorted(outputs) == sorted(declared), \
            f"dvc.yaml outs + metrics of {stage!r} should match tasks/catalog.py STAGE_OUTPUTS"


def test_deps_digest_changes_with_an_input_file(project):
    catalog = Catalog.at(project)
    before = catalog.deps_digest("prepare")
    (project / "data" / "external" / "new.csv").write_text("a,label\n1,0\n")
    assert catalog.deps_digest("prepare") != before, "a new input file should change the key"
    assert catalog.deps_digest("baseline") == catalog.deps_digest("baseline"), "stable otherwise"
