"""The run summary: a Prefect markdown artifact and reports/summary.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task

from tasks.services import io
from tasks.services.catalog import Catalog
from tasks.services.stage_tasks import RETRIES


def summary_markdown(summaries: dict[str, dict[str, Any]], links: dict[str, str]) -> str:
    baseline = summaries["baseline"]["metrics"]
    lines = [f"# shrinkflow run on `{summaries['prepare']['dataset']}`", "",
             f"Teacher: validation accuracy {baseline['val_accuracy']:.4f}, test accuracy "
             f"{baseline['accuracy']:.4f}, {int(baseline['params_count']):,} parameters.", ""]
    if "search" in summaries:
        proposed, kept = summaries["search"]["choice"]["reason"], summaries["baseline"]["teacher"]
        lines += [f"Teacher search: {proposed} (reports/search/summary.md)."
                  + ("" if kept == proposed else f" Then {kept}."), ""]
    lines += ["| stage | MLflow run |", "|---|---|"]
    lines += [f"| {stage} | [{summary['run_id']}]({links[stage]}) |"
              for stage, summary in summaries.items()]
    if "compare" in summaries:
        lines += ["", "## Candidates", "", summaries["compare"]["table"]]
    if summaries.get("ensemble", {}).get("members"):
        weights = summaries["ensemble"]["weights"]
        lines += ["", "Ensemble members, with the weights fitted on validation (what "
                  "`ensemble-weighted` uses): "
                  + ", ".join(f"{name} {weight:.2f}" for name, weight in weights.items()) + "."]
    if "deploy" in summaries:
        lines += ["", "## Registry", "", summaries["deploy"]["headline"] + "."]
    if "pipeline" in links:
        lines += ["", f"Pipeline run: {links['pipeline']} (open the UI with `make ui`)."]
    return "\n".join(lines) + "\n"


@task(name="publish-summary", **RETRIES)
def publish_summary(root: Path, summaries: dict[str, dict[str, Any]],
                    links: dict[str, str]) -> str:
    from prefect.artifacts import create_markdown_artifact

    markdown = summary_markdown(summaries, links)
    io.write_text(Catalog.at(root).summary_file, markdown)
    create_markdown_artifact(markdown, key="pipeline-summary", description="shrinkflow run")
    return markdown
