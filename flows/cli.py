"""`shrinkflow`: run the pipeline, run one stage (what dvc.yaml calls), open the MLflow UI."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from shrinkflow.config import ConfigError, load_params
from tasks.catalog import STAGE_DEPS
from tasks.environment import configure

app = typer.Typer(help="Make neural networks small and fast, reproducibly.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)

ParamsOption = Annotated[Path, typer.Option("--params", "-p", help="the params.yaml to run")]
OverlayOption = Annotated[list[Path] | None, typer.Option(
    "--config", "-c", help="YAML file merged over params.yaml (e.g. configs/mnist1d.yaml)")]
SetOption = Annotated[list[str] | None, typer.Option(
    "--set", "-s", help="override one key, e.g. --set baseline.train.epochs=5")]
STAGES = tuple(STAGE_DEPS)


def _setup(params: Path, overlays: list[Path] | None, overrides: list[str] | None):
    """Check the configuration before anything slow starts; exit 2 naming the bad key."""
    configure(Path.cwd())
    # our progress at INFO; libraries only when they warn
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    logging.getLogger("shrinkflow").setLevel(logging.INFO)
    try:
        return load_params(params, overlays, overrides)
    except ConfigError as error:
        typer.secho(str(error), fg="red", err=True)
        raise typer.Exit(2) from None


@app.command()
def run(params: ParamsOption = Path("params.yaml"), config: OverlayOption = None,
        set_: SetOption = None) -> None:
    """Run the whole pipeline as a Prefect flow, tracked in MLflow and versioned with DVC."""
    _setup(params, config, set_)
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    from flows.pipeline import pipeline

    # heartbeats detect crashed runs on remote workers; a local run only pays ~1 s for them
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        result = pipeline(str(params), [str(p) for p in config or []], list(set_ or []))
    baseline = result["stages"]["baseline"]["metrics"]
    typer.echo(f"\nbaseline test accuracy {baseline['accuracy']:.4f}, "
               f"{int(baseline['params_count'])} params")
    deployed = result["stages"]["compare"]["deployed"]
    typer.echo(f"deployable:  {deployed or 'none within compare.max_accuracy_drop_pp'} "
               "(reports/compare/candidates.md, reports/compare/pareto.png)")
    typer.echo(f"MLflow run:  {result['links']['pipeline']}  (open the UI with `make ui`)")
    typer.echo("reports:     reports/summary.md, reports/baseline/, reports/data_docs/index.html")
    typer.echo("metrics:     metrics/*.json  (`dvc metrics show`)")


@app.command()
def stage(name: Annotated[str, typer.Argument(help=f"one of: {', '.join(STAGES)}")],
          params: ParamsOption = Path("params.yaml"), config: OverlayOption = None,
          set_: SetOption = None) -> None:
    """Run one stage without Prefect (what each dvc.yaml stage calls)."""
    if name not in STAGES:
        typer.secho(f"unknown stage {name!r}; stages are: {', '.join(STAGES)}", fg="red", err=True)
        raise typer.Exit(2)
    loaded = _setup(params, config, set_)
    from tasks.stages import run_stage

    summary = run_stage(name, loaded, Path.cwd())
    typer.echo(f"{name}: MLflow run {summary['run_id']}")


@app.command()
def check(params: ParamsOption = Path("params.yaml"), config: OverlayOption = None,
          set_: SetOption = None) -> None:
    """Validate the configuration and print it resolved, without running anything."""
    import yaml

    loaded = _setup(params, config, set_)
    typer.echo(yaml.safe_dump(loaded.model_dump(mode="json"), sort_keys=False))


@app.command()
def ui(port: Annotated[int, typer.Option(help="port of the UI")] = 5000,
       host: Annotated[str, typer.Option(help="bind address")] = "127.0.0.1") -> None:
    """Open the MLflow UI on the project's tracking store (http://127.0.0.1:5000)."""
    configure(Path.cwd())
    store = os.environ["MLFLOW_TRACKING_URI"]
    typer.echo(f"MLflow UI on http://{host}:{port} for {store}")
    os.execvp(sys.executable, [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", store,
                               "--host", host, "--port", str(port), "--workers", "1"])
