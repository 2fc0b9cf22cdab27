"""`shrinkflow`: run the pipeline, run one stage (what dvc.yaml calls), manage the registered
models, serve one, open the MLflow UI.

A mistake of the user's (a bad config key, bad data, a stage run before the one it needs) prints
its message and exits with status 1 (2 for a bad configuration), without a Python traceback;
`--debug` shows the traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from shrinkflow.config import ConfigError, Params, load_params
from shrinkflow.errors import UserError
from tasks.services.dag import STAGES
from tasks.services.environment import configure

app = typer.Typer(help="Make neural networks small and fast, reproducibly.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)

ParamsOption = Annotated[Path, typer.Option("--params", "-p", help="the params.yaml to run")]
OverlayOption = Annotated[list[Path] | None, typer.Option(
    "--config", "-c", help="YAML file merged over params.yaml (e.g. configs/mnist1d.yaml)")]
SetOption = Annotated[list[str] | None, typer.Option(
    "--set", "-s", help="override one key, e.g. --set baseline.train.epochs=5")]
DebugOption = Annotated[bool, typer.Option("--debug", help="show Python tracebacks of errors")]
# Prefect's loggers report a failed task or flow with the exception's traceback
PREFECT_RUN_LOGGERS = ("prefect.task_runs", "prefect.flow_runs")


class _NoUserErrorTraceback(logging.Filter):
    """Keeps a log record's message but drops the traceback of a user error."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], UserError):
            record.exc_info, record.exc_text = None, None
        return True


def _setup(params: Path, overlays: list[Path] | None, overrides: list[str] | None,
           debug: bool = False) -> Params:
    """Check the configuration before anything slow starts; exit 2 naming the bad key."""
    configure(Path.cwd())
    # our progress at INFO; libraries only when they warn
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    logging.getLogger("shrinkflow").setLevel(logging.INFO)
    if not debug:
        for name in PREFECT_RUN_LOGGERS:
            logging.getLogger(name).addFilter(_NoUserErrorTraceback())
    try:
        return load_params(params, overlays, overrides)
    except ConfigError as error:
        typer.secho(str(error), fg="red", err=True)
        raise typer.Exit(2) from None


@contextmanager
def _user_errors(debug: bool) -> Iterator[None]:
    """A user error ends the command with its message and status 1; a traceback with --debug."""
    try:
        yield
    except UserError as error:
        if debug:
            raise
        typer.secho(f"error: {error}", fg="red", err=True)
        raise typer.Exit(1) from None


@app.command()
def run(params: ParamsOption = Path("params.yaml"), config: OverlayOption = None,
        set_: SetOption = None, debug: DebugOption = False) -> None:
    """Run the whole pipeline as a Prefect flow, tracked in MLflow and versioned with DVC."""
    loaded = _setup(params, config, set_, debug)
    from flows.server import prefect_api
    from tasks.services.lock import project_lock

    root = Path.cwd().resolve()
    with _user_errors(debug), project_lock(root), prefect_api() as server:
        # while a temporary Prefect server starts: imports, and the MLflow store opened
        from tasks.services import tracking

        tracking.experiment_id(root, loaded.project.experiment)
        from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

        from flows.pipeline import pipeline

        if server is not None:
            server.wait()
        # heartbeats detect crashed runs on remote workers; a local run only pays ~1 s for them
        with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            result = pipeline(str(params), [str(p) for p in config or []], list(set_ or []),
                              str(root))
    _print_result(result)


def _print_result(result: dict) -> None:
    typer.echo(f"\nteacher:     {result['stages']['baseline']['teacher']}")
    typer.echo(f"deployable:  {result['stages']['compare']['headline']}")
    typer.echo(f"registry:    {result['stages']['deploy']['headline']}")
    typer.echo("compared:    reports/compare/candidates.md, reports/compare/pareto.png")
    typer.echo(f"MLflow run:  {result['links']['pipeline']}  (open the UI with `make ui`)")
    typer.echo("reports:     reports/summary.md, reports/search/, reports/baseline/, "
               "reports/data_docs/index.html")
    typer.echo("metrics:     metrics/*.json  (`dvc metrics show`; every figure: "
               "reports/<stage>/metrics.json; `dvc plots show` draws the candidates)")


@app.command()
def stage(name: Annotated[str, typer.Argument(help=f"one of: {', '.join(STAGES)}")],
          params: ParamsOption = Path("params.yaml"), config: OverlayOption = None,
          set_: SetOption = None, debug: DebugOption = False) -> None:
    """Run one stage without Prefect (what each dvc.yaml stage calls)."""
    if name not in STAGES:
        typer.secho(f"unknown stage {name!r}; stages are: {', '.join(STAGES)}", fg="red", err=True)
        raise typer.Exit(2)
    loaded = _setup(params, config, set_, debug)
    from tasks.services import tracking
    from tasks.services.lock import project_lock
    from tasks.services.runner import recover_outputs, run_stage

    root = Path.cwd().resolve()
    with _user_errors(debug), project_lock(root):
        recover_outputs(root)
        tracking.fail_orphaned_runs(root, loaded.project.experiment)
        summary = run_stage(name, loaded, root)
    typer.echo(f"{name}: MLflow run {summary['run_id']}")


@app.command()
def check(params: ParamsOption = Path("params.yaml"), config: OverlayOption = None,
          set_: SetOption = None) -> None:
    """Validate the configuration and print it resolved, without running anything."""
    import yaml

    loaded = _setup(params, config, set_)
    typer.echo(yaml.safe_dump(loaded.model_dump(mode="json"), sort_keys=False))
    from tasks.services.model_check import check_models

    with _user_errors(debug=False):
        for line in check_models(loaded, Path.cwd().resolve()):
            typer.echo(f"checked: {line}")


@app.command("dvc-yaml")
def dvc_yaml(check_only: Annotated[bool, typer.Option(
        "--check", help="only check that dvc.yaml is current; exit 1 if not")] = False) -> None:
    """Write dvc.yaml from the stages declared in tasks/services/dag.py (deps derived from imports)."""
    from tasks.services.dag import dvc_yaml as render

    target = Path.cwd() / "dvc.yaml"
    # the user's model modules and weights, from params.yaml, are deps of the stages that build
    # networks
    path = Path.cwd() / "params.yaml"
    params = _setup(path, None, None) if path.is_file() else Params()
    text = render(Path.cwd().resolve(), params.user_modules, params.user_files)
    if check_only:
        if not target.is_file() or target.read_text() != text:
            typer.secho("dvc.yaml is out of date: run `shrinkflow dvc-yaml`", fg="red", err=True)
            raise typer.Exit(1)
        typer.echo("dvc.yaml is current")
        return
    target.write_text(text)
    typer.echo(f"wrote {target}")


@app.command()
def pull(debug: DebugOption = False) -> None:
    """Fetch the data and models dvc.lock records from the DVC remote (SHRINKFLOW_DVC_REMOTE, else
    .dvc/config's), after checking it answers."""
    configure(Path.cwd())
    from tasks.services import versions

    with _user_errors(debug):
        typer.echo(versions.pull(Path.cwd().resolve()).strip() or "nothing to pull")


@app.command()
def ui(port: Annotated[int, typer.Option(help="port of the UI")] = 5000,
       host: Annotated[str, typer.Option(help="bind address")] = "127.0.0.1") -> None:
    """Open the MLflow UI on the project's tracking store (http://127.0.0.1:5000)."""
    configure(Path.cwd())
    store = os.environ["MLFLOW_TRACKING_URI"]
    # the UI's background job runner (GenAI evaluation jobs, ~8 processes) serves nothing here
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    typer.echo(f"MLflow UI on http://{host}:{port} for {store}")
    # fixed arguments, no shell
    os.execvp(sys.executable, [sys.executable, "-m", "mlflow", "ui",  # nosec B606
                               "--backend-store-uri", store, "--host", host, "--port", str(port),
                               "--workers", "1"])


# ---------------------------------------------------------------------------------------------
# The model registry and the server
# ---------------------------------------------------------------------------------------------
models_app = typer.Typer(help="Registered models: list versions, promote one, roll back.",
                         no_args_is_help=True)
app.add_typer(models_app, name="models")
NameOption = Annotated[str | None, typer.Option(
    "--name", "-n", help="registered model (default: deploy.registered_model, else shrinkflow-<data set>)")]


def _registry(params: Path, name: str | None, debug: bool) -> tuple[Params, Path, str]:
    loaded = _setup(params, None, None, debug)
    from tasks.services import registry

    root = Path.cwd().resolve()
    with _user_errors(debug):
        return loaded, root, registry.model_name(loaded, root, name)


@models_app.command("list")
def models_list(name: NameOption = None, params: ParamsOption = Path("params.yaml"),
                debug: DebugOption = False) -> None:
    """Every version, newest first: aliases, candidate, accuracy, size, latency, last move."""
    _, root, name = _registry(params, name, debug)
    from tasks.services import registry

    with _user_errors(debug):
        versions = registry.list_versions(root, name)
    typer.echo(f"{name} ({len(versions)} versions)")
    typer.echo(f"{'version':>7}  {'aliases':<22} {'candidate':<30} {'val acc':>7} {'test acc':>8} "
               f"{'bytes':>9} {'p50 ms':>7}  last move")
    for item in versions:
        move = (f"{item['shrinkflow.moved_how']} {item['shrinkflow.moved_at']}"
                if "shrinkflow.moved_how" in item else "")
        typer.echo(f"{item['version']:>7}  {','.join(item['aliases']) or '-':<22} "
                   f"{item.get('candidate', '?'):<30} {float(item.get('val_accuracy', 'nan')):>7.4f} "
                   f"{float(item.get('test_accuracy', 'nan')):>8.4f} "
                   f"{float(item.get('size_bytes', 'nan')):>9,.0f} "
                   f"{float(item.get('latency_ms_p50_b1', 'nan')):>7.4f}  {move}")


@models_app.command("promote")
def models_promote(version: Annotated[str, typer.Argument(help="the version to make champion")],
                   name: NameOption = None, params: ParamsOption = Path("params.yaml"),
                   force: Annotated[bool, typer.Option(
                       "--force", help="promote even when a check of the gate fails")] = False,
                   debug: DebugOption = False) -> None:
    """Make VERSION the champion if it passes the gate (accuracy vs the champion on validation,
    size and latency budgets, integration check)."""
    loaded, root, name = _registry(params, name, debug)
    from tasks.services import registry
    from tasks.services.lock import project_lock

    with _user_errors(debug), project_lock(root):
        done = registry.gated_promote(root, loaded.project.experiment, name, version,
                                      loaded.deploy, how="manual", force=force)
    for check in done.checks:
        typer.echo(f"  {'pass' if check.passed else 'FAIL'}  {check.name}: {check.detail}")
    if not done.promoted:
        typer.secho(f"version {version} not promoted; the champion is unchanged "
                    "(--force to promote anyway)", fg="red", err=True)
        raise typer.Exit(1)
    typer.echo(f"{name}: champion is version {version}")


@models_app.command("rollback")
def models_rollback(name: NameOption = None, params: ParamsOption = Path("params.yaml"),
                    debug: DebugOption = False) -> None:
    """Give the champion alias back to the previous champion."""
    loaded, root, name = _registry(params, name, debug)
    from tasks.services import registry
    from tasks.services.lock import project_lock

    with _user_errors(debug), project_lock(root):
        demoted, restored = registry.rollback(root, loaded.project.experiment, name)
    typer.echo(f"{name}: champion is version {restored} again (was {demoted})")


@app.command()
def serve(name: NameOption = None,
          alias: Annotated[str | None, typer.Option(help="registry alias to serve and follow")] = None,
          host: Annotated[str | None, typer.Option(help="bind address (default 127.0.0.1)")] = None,
          port: Annotated[int | None, typer.Option(help="TCP port (default 8000)")] = None,
          params: ParamsOption = Path("params.yaml"), set_: SetOption = None,
          debug: DebugOption = False) -> None:
    """Serve a registered model over HTTP: POST /predict, /invocations; GET /health, /model."""
    loaded = _setup(params, None, set_, debug)
    import uvicorn

    from serving.app import create_app
    from tasks.services import registry

    cfg, root = loaded.serve, Path.cwd().resolve()
    with _user_errors(debug):
        name = registry.model_name(loaded, root, name)
        source = registry.RegistrySource(root, name, alias or cfg.alias, cfg.threads)
        if source.current_version() is None:
            raise registry.RegistryError(f"alias {source.alias!r} of {name!r} points to no version "
                                         "(`shrinkflow models list`)")
    application = create_app(source, max_batch=cfg.max_batch, max_wait_ms=cfg.max_wait_ms,
                             max_request_rows=cfg.max_request_rows,
                             max_body_bytes=cfg.max_body_bytes, poll_seconds=cfg.poll_seconds,
                             max_image_pixels=cfg.max_image_pixels)
    bind = host or cfg.host
    if bind not in ("127.0.0.1", "localhost", "::1"):
        typer.secho(f"warning: binding {bind} makes the server reachable from the network; it has "
                    "no authentication", fg="yellow", err=True)
    typer.echo(f"serving {name}@{source.alias} on http://{bind}:{port or cfg.port}")
    uvicorn.run(application, host=bind, port=port or cfg.port, log_level="warning")


# ---------------------------------------------------------------------------------------------
# Unattended runs: a cron schedule, and a git hook
# ---------------------------------------------------------------------------------------------
RunsOverlayOption = Annotated[list[str] | None, typer.Option(
    "--config", "-c", help="YAML file merged over params.yaml in every run this starts")]


@app.command("schedule")
def schedule_command(
        cron: Annotated[str | None, typer.Option(
            help="cron expression, e.g. '0 3 * * *' (default: prefect.yaml's)")] = None,
        pool: Annotated[str | None, typer.Option(
            help="register with this work pool of the Prefect server in PREFECT_API_URL "
                 "(run by `prefect worker start --pool NAME`) instead of serving here")] = None,
        config: RunsOverlayOption = None, set_: SetOption = None,
        debug: DebugOption = False) -> None:
    """Run the pipeline on a cron schedule: prefect.yaml's deployment, served from this machine
    (until Ctrl+C) or registered with a Prefect server's work pool."""
    configure(Path.cwd())
    from flows.triggers import schedule

    with _user_errors(debug):
        where = f"work pool {pool!r}" if pool else "this machine (Ctrl+C stops it)"
        typer.echo(f"scheduling the pipeline ({cron or 'cron of prefect.yaml'}) on {where}")
        deployment = schedule(Path.cwd().resolve(), cron, pool, list(config or []),
                              list(set_ or []))
    if deployment:
        typer.echo(f"deployment {deployment} registered; start a worker: "
                   f"prefect worker start --pool {pool}")


hooks_app = typer.Typer(help="The git hook: a commit that changes the pipeline's inputs (params, "
                             "code the stages import, source data) starts a run in the background.",
                        no_args_is_help=True)
app.add_typer(hooks_app, name="hooks")


@hooks_app.command("install")
def hooks_install(config: RunsOverlayOption = None, set_: SetOption = None,
                  debug: DebugOption = False) -> None:
    """Install the post-commit hook (its runs get --config/--set as given here)."""
    from flows.triggers import install_hook

    with _user_errors(debug):
        path = install_hook(Path.cwd().resolve(), list(config or []), list(set_ or []))
    typer.echo(f"installed {path}: a commit that changes the pipeline's inputs starts a run")


@hooks_app.command("uninstall")
def hooks_uninstall(debug: DebugOption = False) -> None:
    """Remove shrinkflow's post-commit hook (another one is left alone)."""
    from flows.triggers import uninstall_hook

    with _user_errors(debug):
        path = uninstall_hook(Path.cwd().resolve())
    typer.echo(f"removed {path}" if path else "no shrinkflow post-commit hook installed")


@hooks_app.command("post-commit")
def hooks_post_commit(config: RunsOverlayOption = None, set_: SetOption = None,
                      debug: DebugOption = False) -> None:
    """What the hook runs after each commit: start a run if the commit changed its inputs."""
    configure(Path.cwd())
    from flows.triggers import start_commit_run

    with _user_errors(debug):
        typer.echo(start_commit_run(Path.cwd().resolve(), list(config or []), list(set_ or [])))
