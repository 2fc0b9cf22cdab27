"""Shared fixtures: one temporary MLflow store and Prefect home per session, tiny projects per test.

Services are real (SQLite MLflow store, Prefect's test harness, DVC in a temporary git repo); only
their locations are temporary. Heavy imports stay inside fixtures so core tests start fast.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Overrides that keep pipeline tests to seconds: small models, few epochs, short timing loops.
TINY = [
    "search.trials=1",  # the reference trial only: params.yaml's config stays, in seconds
    "search.epochs=1",
    "search.min_epochs=1",
    "baseline.train.epochs=2",
    "baseline.model.width=16",
    "prune.steps=1",
    "prune.finetune_epochs=1",
    "prune.structured.ratios=[0.5]",
    "distill.student.width=4",
    "distill.epochs=2",
    "quantize.methods=[int8_dynamic, int8_static]",
    "quantize.low_bit_epochs=1",
    "measure.warmup=2",
    "measure.repeats=10",
    "measure.throughput_repeats=3",
]


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist each of the workers gets one CPU thread (and so do the commands they
    start): two torch processes with a thread per core each would slow each other about tenfold."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[name] = "1"
        import torch

        torch.set_num_threads(1)


# Test files whose tests share a costly session fixture: under pytest-xdist each group runs in
# one worker, so the fixture is built once; every other test goes to whichever worker is free.
SHARED_FIXTURES = {"flows": ("prefect_api", "reference"), "trained": ("trained_tiny",)}
SHARED_FIXTURE_FILES = {
    "flows": ("tests/flows/test_cli.py", "tests/flows/test_interruptions.py",
              "tests/flows/test_pipeline.py", "tests/flows/test_dvc.py", "tests/flows/test_ui.py"),
    "trained": ("tests/tasks/test_baseline.py", "tests/tasks/test_compare.py",
                "tests/tasks/test_deploy.py", "tests/tasks/test_distill_stage.py",
                "tests/tasks/test_prune_stage.py", "tests/tasks/test_ensemble_stage.py",
                "tests/tasks/test_quantize_stage.py", "tests/tasks/test_safe_loading.py",
                "tests/tasks/test_search_stage.py",
                "tests/tasks/test_recipes_stage.py"),
}
_GROUP_OF_FILE = {path: group for group, paths in SHARED_FIXTURE_FILES.items() for path in paths}
# The longest scopes (a group, or a file), started first: a worker takes the next scope when the
# one it runs is nearly done, so a long one left for last would keep the others waiting.
LONGEST_FIRST = ("flows", "trained", "tests/flows/test_triggers.py", "tests/flows/test_services.py",
                 "tests/flows/test_user_table.py")


def _scope(nodeid: str) -> str:
    path = nodeid.split("::")[0]
    return _GROUP_OF_FILE.get(path, path)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The scopes of `LONGEST_FIRST` first, in that order; the rest as collected."""
    def rank(item: pytest.Item) -> int:
        scope = _scope(item.nodeid)
        return LONGEST_FIRST.index(scope) if scope in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the tests of a scope keep their order


def pytest_itemcollected(item: pytest.Item) -> None:
    """A test using a shared fixture must sit in a file of that fixture's group."""
    path = item.nodeid.split("::")[0]
    for group, fixtures in SHARED_FIXTURES.items():
        if set(fixtures) & set(getattr(item, "fixturenames", ())) and \
                _GROUP_OF_FILE.get(path) != group:
            raise pytest.UsageError(f"{path} uses {fixtures}: list it in SHARED_FIXTURE_FILES"
                                    f"[{group!r}] (tests/conftest.py)")


@pytest.hookimpl(optionalhook=True)  # a run without pytest-xdist (-p no:xdist) has no such hook
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """Spread the tests file by file (a module-scoped fixture, such as a running server, is then
    built once, not once per worker), and the files of a group together; scopes in the order
    collected (`pytest_collection_modifyitems`), not by their number of tests."""
    from xdist.scheduler import LoadScopeScheduling

    class SharedFixtureScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _scope(nodeid)

    config.option.loadscopereorder = False
    return SharedFixtureScheduling(config, log)


@pytest.fixture(scope="session")
def services_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("services")


@pytest.fixture(autouse=True, scope="session")
def _isolated_services(services_dir: Path) -> None:
    """Point MLflow, Prefect and DVC at session-temporary locations, never the user's own."""
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{services_dir / 'mlflow.db'}"
    os.environ["PREFECT_HOME"] = str(services_dir / "prefect")
    os.environ["DVC_SITE_CACHE_DIR"] = str(services_dir / "dvc-site-cache")
    from tasks.services.environment import configure

    configure(services_dir)  # the remaining defaults (telemetry off, timeouts)


def copy_project(destination: Path) -> Path:
    """A copy of the project's code and configuration (no outputs) in `destination`."""
    from tasks.services.catalog import copy_sources

    return copy_sources(REPO, destination)


def unlabeled_csv_params(project: Path, frame, *overrides: str):
    """TINY params with `frame` (a pandas table) as the project's prepare.unlabeled_csv."""
    from shrinkflow.config import load_params

    frame.to_csv(project / "data" / "external" / "unlabeled.csv", index=False)
    return load_params(project / "params.yaml", overrides=[
        *TINY, "prepare.unlabeled_csv=data/external/unlabeled.csv", *overrides])


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return copy_project(tmp_path / "project")


@pytest.fixture
def tiny_params():
    """Default params.yaml with the TINY overrides (digits, 2 epochs)."""
    from shrinkflow.config import load_params

    return load_params(REPO / "params.yaml", overrides=TINY)


@pytest.fixture(scope="session")
def trained_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project after `prepare`, `search` and `baseline` on the TINY params, made once per session: stage
    tests start from a copy (`copy_trained`) instead of validating and training again."""
    from shrinkflow.config import load_params
    from tasks.services.runner import run_stage

    project = copy_project(tmp_path_factory.mktemp("trained") / "project")
    params = load_params(project / "params.yaml", overrides=TINY)
    for stage in ("prepare", "search", "baseline"):
        run_stage(stage, params, project)
    return project


def copy_trained(trained: Path, destination: Path) -> Path:
    """A copy of `trained_tiny` (code, config and outputs) at `destination`."""
    return Path(shutil.copytree(trained, destination))


@pytest.fixture
def trained_project(trained_tiny: Path, tmp_path: Path) -> Path:
    """A fresh copy of `trained_tiny` for one test."""
    return copy_trained(trained_tiny, tmp_path / "trained")
