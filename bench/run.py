"""`make bench`: measure the pipeline on this machine and write reports/bench.{json,md}.

Everything is measured in this one run, each in a fresh temporary copy of the project (so the
user's own stores and outputs are untouched):

  pipeline     `shrinkflow run` end to end on the default config, the same command again with
               nothing changed (served from the cache; target: <= 8% of the full run), and every
               stage function called directly in one process; the difference is the
               orchestration overhead. The direct calls run again with the search off: the
               teacher is params.yaml's, as when the compression targets were set.
  compression  every candidate of each task (digits from the pipeline runs above, with the
               searched teacher and with params.yaml's; mnist1d and the image task, a folder of
               generated 32x32 shapes with a ResNet-8 teacher, run directly), as measured side
               by side by the compare stage, with the fields of shared/BENCH.md: validation
               accuracy (what every choice reads), test accuracy (reported only), and ratios
               against the fp32 baseline in torch and ONNX Runtime, each with its 95% interval.
               The control (the baseline file timed again as another candidate) shows the noise
               floor.
               Each task's distillation figures (reports/distill/metrics.json): what each student
               gains with the teacher, on validation and test, split into the soft labels' share
               and the unlabeled pool's.
  deployed     each deployed candidate timed again in fresh rounds after the choice (compare's
               own ratio carries the winner's curse), in absolute terms beside the runtime's
               floor, with the deployable graph users call, and against params.yaml's teacher
               (bench/deployed.py).
  pruning      eager-torch batch-1 latency of params.yaml's digits teacher vs its 50%-channel
               pruning.
  serving      `shrinkflow serve` against `mlflow models serve` on the digits champion the
               pipeline run registered (bench/serving.py): answered requests per second and
               p50/p99 latency at concurrency 1 and 8, and every failed request.
  search       the default teacher search's cost (the direct calls with it and without it) and
               what it chose (from the pipeline run above), the recipe search's front; on a fixed
               small space, the exhaustive grid against TPE with Hyperband, and trials per minute
               on 1 and 2 Dask workers (bench/search.py).
  targets      the acceptance targets (bench/checks.py), each checked on these numbers.

A section that fails is named in `sections_failed`, the others still run, and the report so far is
written after every section; the bench then exits non-zero. reports/bench.md is drawn by
bench/report.py.

Usage: python bench/run.py [--tasks digits mnist1d] [--output reports]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import checks  # noqa: E402  (the project root is on the path only now)
from tasks.stages.compare import JUDGED  # noqa: E402

OVERLAYS = {"digits": None, "mnist1d": "configs/mnist1d.yaml",
            "breast_cancer": "configs/breast_cancer.yaml", checks.IMAGES_TASK: "configs/shapes.yaml"}
IMAGES_PER_CLASS = 500  # of the image task's 8 classes: 4,000 images, 800 of them for test
UNSEARCHED = checks.UNSEARCHED
# the quickest complete pipeline: only warms Prefect's database, its numbers are not reported
WARM_UP = ["--set", "baseline.train.epochs=1", "--set", "prune.finetune_epochs=0",
           "--set", "prune.unstructured.enabled=false", "--set", "distill.enabled=false",
           "--set", "quantize.methods=[fp16]", "--set", "measure.repeats=5"]


def fresh_project(parent: Path, name: str) -> Path:
    from tasks.services.catalog import copy_sources

    return copy_sources(REPO, parent / name)


def project_env(project: Path) -> dict[str, str]:
    """A user's shell in that project: its own MLflow store, a Prefect home shared by the bench."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("MLFLOW_", "PREFECT_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["PYTHONPATH"] = str(REPO)
    env["PREFECT_HOME"] = str(project.parent / "prefect-home")
    return env


class BenchError(RuntimeError):
    """A command the benchmark runs failed: its section is marked failed, the others still run."""


def timed(command: list[str], project: Path, **env: str) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, cwd=project, env={**project_env(project), **env},
                            capture_output=True, text=True,
                            timeout=3 * 3600)  # mnist1d distils 5 students on 2 cores
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise BenchError(f"{' '.join(command)} failed in {project}:\n{result.stderr[-3000:]}")
    return elapsed


DIRECT = """
import json
import sys
from pathlib import Path
from tasks.services.environment import configure
configure(Path.cwd())
from shrinkflow.config import load_params
from tasks.services.dag import STAGES
from tasks.services.runner import run_stage
overlays, overrides, last = json.loads(sys.argv[1])
params = load_params("params.yaml", overlays, overrides)
for stage in list(STAGES)[: list(STAGES).index(last) + 1 if last else None]:
    run_stage(stage, params, Path.cwd())
"""


def direct_calls(project: Path, overlay: str | None, overrides: tuple[str, ...] = (),
                 last: str | None = None) -> float:
    """Every stage function (up to `last`) in one process, without Prefect: the work the flow
    orchestrates."""
    spec = json.dumps([[overlay] if overlay else [], list(overrides), last])
    return timed([sys.executable, "-c", DIRECT, spec], project)


def pipeline_timings(workdir: Path) -> tuple[dict[str, float], dict[str, Path]]:
    """The flow's full and cached runs, and every stage called directly with the search on (the
    default) and off: the two direct runs, one after the other, give the search's cost. Returns
    the timings and the projects by task label (digits, and digits with params.yaml's teacher)."""
    # the very first flow on a new PREFECT_HOME creates Prefect's database (~10 s, once per
    # machine): pay it on a throw-away project so full_run_s is what every later run costs
    print("pipeline: warming Prefect's database ...", flush=True)
    timed(["shrinkflow", "run", *WARM_UP], fresh_project(workdir, "warm"))
    flow_project = fresh_project(workdir, "flow")
    print("pipeline: full run through Prefect ...", flush=True)
    full = timed(["shrinkflow", "run"], flow_project)
    print(f"  {full:.1f} s; cached re-run ...", flush=True)
    cached = timed(["shrinkflow", "run"], flow_project)
    print(f"  {cached:.1f} s; the full run with the other choice of stages at once ...",
          flush=True)
    concurrency = stages_at_once(workdir, full)
    print("  the same stages called directly ...", flush=True)
    direct = direct_calls(fresh_project(workdir, "direct"), None)
    print(f"  {direct:.1f} s; the same with the search off ...", flush=True)
    unsearched_project = fresh_project(workdir, "unsearched")
    unsearched = direct_calls(unsearched_project, None, ("search.enabled=false",))
    print(f"  {unsearched:.1f} s", flush=True)
    return {
        "full_run_s": round(full, 2),
        "cached_rerun_s": round(cached, 2),
        "direct_calls_s": round(direct, 2),
        "direct_calls_unsearched_s": round(unsearched, 2),
        "orchestration_overhead_pct": round(100 * (full - direct) / direct, 1),
        "cached_rerun_pct": round(100 * cached / full, 1),
        "cached_rerun_target_pct": checks.CACHED_RERUN_TARGET_PCT,
        "stages_at_once": concurrency,
    }, {"digits": flow_project, UNSEARCHED: unsearched_project}


def stages_at_once(workdir: Path, full: float) -> dict[str, Any]:
    """The full run of a fresh project again with the other choice of how many stages run side
    by side: as many as the DAG allows where this machine ran them one at a time (two cores),
    else one at a time. The wall time saved is the one-at-a-time run's minus the other's."""
    from flows.pipeline import at_once
    from tasks.services.dag import width
    from tasks.services.environment import STAGES_AT_ONCE_VARIABLE

    machine = at_once()
    other = width() if machine == 1 else 1
    again = timed(["shrinkflow", "run"], fresh_project(workdir, "at-once"),
                  **{STAGES_AT_ONCE_VARIABLE: str(other)})
    print(f"  {again:.1f} s with {other} at once", flush=True)
    one_at_a_time, side_by_side = (full, again) if machine == 1 else (again, full)
    return {"at_once": max(machine, other), "one_at_a_time_s": round(one_at_a_time, 2),
            "side_by_side_s": round(side_by_side, 2),
            "saved_s": round(one_at_a_time - side_by_side, 2),
            "saved_pct": round(100 * (one_at_a_time - side_by_side) / one_at_a_time, 1)}


BENCH_FIELDS = ("candidate", "file", "method", "parent", "val_accuracy", "val_accuracy_drop_pp",
                "accuracy", "accuracy_drop_pp", "params_count", "size_bytes", "size_ratio",
                "latency_ms_p50_b1", "throughput_sps_b256", "deployed", "pareto",
                *checks.INTERVALS, *(f"{key}_interval" for key in checks.INTERVALS),
                *JUDGED, "second_runtime", "second_runtime_error")


def stage_report(project: Path, stage: str) -> dict:
    """Every candidate `stage` made or measured in `project`, with all its figures."""
    from tasks.services import io
    from tasks.services.catalog import Catalog

    return io.read_candidates(Catalog.at(project), stage)


def stage_metrics(project: Path, stage: str) -> dict:
    """All the figures `stage` wrote in `project` (metrics/<stage>.json holds only a few)."""
    from tasks.services import io
    from tasks.services.catalog import Catalog

    return io.read_metrics(Catalog.at(project), stage)


def compression_rows(task: str, project: Path) -> tuple[list[dict], dict]:
    """Every candidate the compare stage measured, with the fields of shared/BENCH.md and its kind
    (the models/ folder that lists it), and the control (the baseline file timed again)."""
    report = stage_report(project, "compare")
    rows = [{"task": task, **{key: row[key] for key in (*BENCH_FIELDS, "kind")}}
            for row in report["candidates"].values()]
    return rows, report["control"]


def structured_torch_speedup(project: Path, threads: int) -> dict:
    """Eager-torch batch-1 speed-up of the baseline's 50%-channel structured pruning, the two
    timed side by side in this process, with its interval."""
    import numpy as np

    from shrinkflow.config import MeasureConfig
    from shrinkflow.measure import Noise, time_side_by_side, torch_predictor, torch_threads
    from tasks.services.candidates import load_torch

    cfg = MeasureConfig(threads=threads, warmup=50, repeats=1500, throughput_repeats=10, rounds=10)
    arch, baseline = load_torch(project / "models" / "baseline", "baseline")
    _, pruned = load_torch(project / "models" / "pruned" / "structured-50", "prune")
    x = np.random.default_rng(0).normal(size=(256, *arch.input_shape)).astype(np.float32)
    with torch_threads(threads):
        timings = time_side_by_side({"baseline": lambda: torch_predictor(baseline),
                                     "pruned": lambda: torch_predictor(pruned)}, x, cfg)
    ratio = Noise(timings).speedup("baseline", "pruned")
    return {**ratio.fields("speedup"), "rounds": cfg.rounds}


def image_task(project: Path) -> None:
    """The image task's inputs in `project`: the generated folder of shapes (bench/images.py)
    and the team's own network, bench/nets.py, where its class path names it."""
    from bench.images import write_folder

    write_folder(project / "data" / "external" / "shapes", IMAGES_PER_CLASS)
    (project / "bench").mkdir(exist_ok=True)
    (project / "bench" / "nets.py").write_text((REPO / "bench" / "nets.py").read_text())


def compression(workdir: Path, tasks: list[str], projects: dict[str, Path]) -> dict[str, Any]:
    """Candidates of every task (those in `projects` from the runs above, others run directly;
    the projects run here are added to it), the control of each, each task's distillation
    figures (reports/distill/metrics.json) and ensemble report (members, weights)."""
    found: dict[str, Any] = {"compression": [], "controls": {}, "distillation": {}, "ensembles": {}}
    for task in [*tasks, *([UNSEARCHED] if "digits" in tasks else [])]:
        project = projects.get(task)
        if project is None:
            print(f"compression: {task}, every stage ...", flush=True)
            project = projects[task] = fresh_project(workdir, f"task-{task}")
            if task == checks.IMAGES_TASK:
                image_task(project)
            direct_calls(project, OVERLAYS[task])
        rows, found["controls"][task] = compression_rows(task, project)
        found["compression"] += rows
        found["distillation"][task] = stage_metrics(project, "distill")
        found["ensembles"][task] = stage_report(project, "ensemble")
    return found


def deployed_section(rows: list[dict], projects: dict[str, Path], threads: int) -> dict[str, dict]:
    """Each task's deployed candidate timed again in fresh rounds after the choice, in absolute
    terms beside the runtime's floor (bench/deployed.py), and against params.yaml's teacher; the
    figures are added to its compression row too."""
    from bench.deployed import against_teacher, retime

    fixed_teacher = next((row for row in rows if row["task"] == UNSEARCHED
                          and row["file"] == "models/baseline/model.pt"), None)
    found = {}
    for task, project in projects.items():
        row = next((row for row in rows if row["task"] == task and row["deployed"]), None)
        if row is None or not row["file"].endswith(".onnx"):
            continue
        print(f"deployed: {task} {row['candidate']} timed again ...", flush=True)
        found[task] = {"candidate": row["candidate"], **retime(project, row["file"], threads)}
        if fixed_teacher is not None and task.startswith("digits"):
            found[task]["vs_params_yaml_teacher"] = against_teacher(row, fixed_teacher)
        row.update({key: value for key, value in found[task].items() if key != "candidate"})
    return found


def search_section(projects: dict[str, Path], pipeline: dict) -> dict:
    """The default search inside the pipeline run, its cost (the whole pipeline called directly
    with the search on, then off; and the search's own seconds: the study, and the training
    that confirmed its proposal at the full budget), then bench/search.py's studies."""
    project = projects["digits"]
    default = stage_metrics(project, "search")
    choice = json.loads((project / "models" / "search" / "choice.json").read_text())
    result = subprocess.run([sys.executable, str(REPO / "bench" / "search.py"), str(project)],
                            cwd=project, env=project_env(project), capture_output=True, text=True,
                            timeout=3600)
    if result.returncode != 0:
        raise BenchError(f"bench/search.py failed:\n{result.stderr[-3000:]}")
    studies = json.loads(result.stdout.strip().splitlines()[-1])
    teachers = {name: stage_metrics(projects[label], "baseline")
                for name, label in (("searched", "digits"), ("params_yaml", UNSEARCHED))}
    confirm = teachers["searched"].get("search_confirm_seconds", 0.0)
    on, off = pipeline["direct_calls_s"], pipeline["direct_calls_unsearched_s"]
    recipes = projects.get("mnist1d")
    return {**studies, "default_search_s": round(default["seconds"] + confirm, 2),
            "default_study_s": round(default["seconds"], 2), "default_confirm_s": round(confirm, 2),
            "default_search_added_pct": round(100 * (on - off) / off, 1),
            "default_search_own_pct": round(100 * (default["seconds"] + confirm) / off, 1),
            "default_choice": choice["reason"], "default_searched": bool(default["searched"]),
            "default_confirmation": _confirmation(teachers["searched"]),
            "default_figures": {key: value for key, value in default.items()
                                if key.startswith(("chosen_", "reference_"))},
            # the teachers baseline trained (full epochs): searched, and params.yaml's own
            "teacher": {name: {key: metrics[key] for key in ("val_accuracy", "accuracy",
                                                              "params_count")}
                        for name, metrics in teachers.items()},
            "recipe_front": stage_report(recipes, "recipes")["front"] if recipes else []}


def _confirmation(baseline: dict) -> str:
    """What baseline's full-budget training of the search's proposal found (its metrics)."""
    if "full_searched_params" not in baseline:
        return "nothing to confirm"
    kept = "searched" if baseline["search_confirmed"] else "params.yaml's"
    return (f"for the full budget the proposal reached {baseline['full_searched_val_accuracy']:.4f} "
            f"val with {baseline['full_searched_params']:,.0f} params against params.yaml's "
            f"{baseline['full_params_yaml_val_accuracy']:.4f} with "
            f"{baseline['full_params_yaml_params']:,.0f}: the {kept} config is the teacher")


TABLE_ROWS = 500_000
FLOOR_ROWS = 2_000  # the same table this small: the memory and time of prepare without the data
TABLE_SOURCE = ["--set", "prepare.source=csv", "--set", "prepare.csv.path=data/external/table.csv",
                "--set", "prepare.csv.target=tier"]
PEAK_RSS = """
import json, resource, subprocess, sys, time
started = time.perf_counter()
code = subprocess.run(sys.argv[1:], capture_output=True, text=True)
print(json.dumps({"seconds": time.perf_counter() - started, "returncode": code.returncode,
                  "stderr": code.stderr[-3000:],
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def with_peak_memory(command: list[str], project: Path) -> dict[str, float]:
    """`command`'s wall seconds and peak resident memory, from a process whose one child it is
    (getrusage reports the largest child a process waited for)."""
    result = subprocess.run([sys.executable, "-c", PEAK_RSS, *command], cwd=project,
                            env=project_env(project), capture_output=True, text=True, check=True)
    found = json.loads(result.stdout.splitlines()[-1])
    if found["returncode"] != 0:
        raise BenchError(f"{' '.join(command)} failed in {project}:\n{found['stderr']}")
    return {"seconds": found["seconds"], "peak_rss_mb": found["peak_rss_mb"]}


def table_section(workdir: Path, rows: int = TABLE_ROWS) -> dict[str, Any]:
    """A generated user table (bench/tables.py: numbers and text, with gaps): `prepare` alone,
    with its peak memory, beside the same on `FLOOR_ROWS` rows (imports, validation and tracking
    without the data), and the full default run on it, each in a fresh project."""
    from bench.tables import write_table

    print(f"table: {rows:,} rows: prepare (and on {FLOOR_ROWS:,} rows, the floor), then the "
          "full default run ...", flush=True)
    prepare = ["shrinkflow", "stage", "prepare", *TABLE_SOURCE]
    small = fresh_project(workdir, "table-floor")
    write_table(small / "data" / "external" / "table.csv", FLOOR_ROWS)
    floor = with_peak_memory(prepare, small)
    alone = fresh_project(workdir, "table-prepare")
    table = write_table(alone / "data" / "external" / "table.csv", rows)
    prepared = with_peak_memory(prepare, alone)
    project = fresh_project(workdir, "table")
    (project / "data" / "external" / "table.csv").write_bytes(table.read_bytes())
    full = timed(["shrinkflow", "run", *TABLE_SOURCE], project)
    deployed = json.loads((project / "models" / "deploy" / "deploy.json").read_text())
    compared = stage_report(project, "compare")
    chosen = compared["candidates"].get(compared.get("deployed") or "", {})
    return {"rows": rows, "csv_mb": table.stat().st_size / 1e6,
            "prepare_s": prepared["seconds"], "prepare_peak_rss_mb": prepared["peak_rss_mb"],
            "floor_rows": FLOOR_ROWS, "floor_prepare_s": floor["seconds"],
            "floor_peak_rss_mb": floor["peak_rss_mb"],
            "full_run_s": full, "prepare_metrics": stage_metrics(project, "prepare"),
            "deployed": deployed.get("candidate"), "deployed_test_accuracy": chosen.get("accuracy"),
            "teacher_test_accuracy": compared["candidates"].get("baseline-fp32", {}).get("accuracy")}


def serving_section(project: Path) -> dict:
    """Both servers on the champion the pipeline run in `project` registered."""
    from bench.serving import serving
    from tasks.services.registry import Rows

    print("serving: shrinkflow serve vs mlflow models serve ...", flush=True)
    deployed = json.loads((project / "models" / "deploy" / "deploy.json").read_text())
    if not deployed.get("champion"):
        return {}
    rows = Rows.of_split(project, "test").x
    env = {**project_env(project), "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"}
    return {**serving(project, deployed["registered_model"], rows, env),
            "candidate": deployed["candidate"]}


def _shortened(error: Exception, keep: int = 3000) -> str:
    """The error's first line (what failed) and the end of the rest (where it failed)."""
    text = f"{type(error).__name__}: {error}"
    head = text.splitlines()[0][:keep // 4]
    return text if len(text) <= keep else f"{head}\n...\n{text[len(head) - keep:]}"


class Sections:
    """The bench's sections, run one after the other: one that raises is recorded in
    `sections_failed` with its error and the rest still run; the report measured so far is
    written after every section, so a bench stopped half-way leaves what it had."""

    def __init__(self, output: Path) -> None:
        self.output = output
        self.report: dict[str, Any] = {"sections_failed": []}

    def run(self, name: str, measure: Callable[..., Any], *args: Any, default: Any = None) -> Any:
        print(f"{name} ...", flush=True)
        try:
            found = measure(*args)
        except Exception as exc:  # one section's failure must not lose the others' figures
            traceback.print_exc()
            self.report["sections_failed"].append({"section": name, "error": _shortened(exc)})
            found = default
        self.write()
        return found

    def write(self) -> None:
        """bench.json, then bench.md. A report that cannot be rendered (a figure missing where
        the page expects it) is itself a failed section: bench.json keeps every figure."""
        from bench.report import markdown

        self.output.mkdir(parents=True, exist_ok=True)
        self._replace("bench.json", json.dumps(self.report, indent=2) + "\n")
        try:
            page = markdown(self.report)
        except Exception as exc:  # the figures are safe in bench.json; say what broke the page
            traceback.print_exc()
            self.report["sections_failed"].append({"section": "report", "error": _shortened(exc)})
            self._replace("bench.json", json.dumps(self.report, indent=2) + "\n")
            page = f"# Benchmark\n\nbench.md could not be written: {_shortened(exc)}; " \
                   "every figure is in bench.json.\n"
        self._replace("bench.md", page)

    def _replace(self, name: str, text: str) -> None:
        staged = self.output / f".{name}.tmp"
        staged.write_text(text)
        staged.replace(self.output / name)


def targets(report: dict) -> list[dict]:
    """The acceptance targets on what this run measured (a section that failed has none)."""
    rows = report.get("compression", [])
    tasks = {row["task"] for row in rows}
    found = []
    for task in (UNSEARCHED, "digits"):
        if task in tasks:
            found += [*checks.deployed_checks(rows, task), checks.floor_check(rows, task)]
    found += [checks.low_bit_check(rows, task) for task in (UNSEARCHED, "digits", "mnist1d")
              if task in tasks]
    if "mnist1d" in tasks:
        found += [checks.mnist1d_check(rows), checks.recipe_check(rows)]
        if report.get("ensembles", {}).get("mnist1d"):
            found.append(checks.ensemble_check(rows, report["ensembles"]["mnist1d"]))
    if checks.IMAGES_TASK in tasks:
        found += checks.image_checks(rows)
    if report.get("distillation", {}).get("mnist1d"):
        found.append(checks.distillation_check("mnist1d", report["distillation"]["mnist1d"]))
    if report.get("structured_pruning_torch_b1"):
        found.append(checks.pruning_check(report["structured_pruning_torch_b1"]))
    if report.get("serving"):
        found.append(checks.serving_check(report["serving"]))
    if report.get("search"):
        found += checks.search_checks(report["search"])
    if report.get("pipeline"):
        found.append(checks.cached_rerun_check(report["pipeline"]))
    if report.get("table"):
        found.append(checks.table_check(report["table"]))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+",
                        default=["digits", "mnist1d", checks.IMAGES_TASK, "table"],
                        choices=[*OVERLAYS, "table"])
    parser.add_argument("--table-rows", type=int, default=TABLE_ROWS,
                        help="rows of the generated table of the task 'table'")
    parser.add_argument("--output", type=Path, default=REPO / "reports")
    args = parser.parse_args()

    from shrinkflow.config import load_params
    from shrinkflow.measure import machine_info

    threads = load_params(REPO / "params.yaml").measure.threads
    sections = Sections(args.output)
    report = sections.report
    report["machine"] = machine_info(threads)
    with tempfile.TemporaryDirectory(prefix="shrinkflow-bench-") as scratch:
        workdir = Path(scratch)
        report["pipeline"], projects = sections.run("pipeline", pipeline_timings, workdir,
                                                    default=({}, {}))
        tasks = [task for task in args.tasks if task in OVERLAYS]
        report.update(sections.run("compression", compression, workdir, tasks, projects,
                                   default={}))
        rows = report.get("compression", [])
        report["deployed"] = sections.run("deployed", deployed_section, rows, projects, threads,
                                          default={})
        if "digits" in args.tasks:
            # the pruning target, like the compression targets, was set on params.yaml's teacher
            report["structured_pruning_torch_b1"] = sections.run(
                "pruning", structured_torch_speedup, projects.get(UNSEARCHED), threads, default={})
            report["serving"] = sections.run("serving", serving_section, projects.get("digits"),
                                             default={})
            report["search"] = sections.run("search", search_section, projects, report["pipeline"],
                                            default={})
        if "table" in args.tasks:
            report["table"] = sections.run("table", table_section, workdir, args.table_rows,
                                           default={})
        report["machine"].update(_noise_floor(report))
        report["targets"] = targets(report)
        for check in report["targets"]:  # the recipe check's measure belongs to the search's
            if "hypervolume_with_recipes" in check and report.get("search"):
                report["search"].update(
                    {key: check.pop(key) for key in ("hypervolume_with_recipes",
                                                     "hypervolume_without_recipes")})
    sections.write()
    print("\n" + (args.output / "bench.md").read_text())
    print(f"written: {args.output / 'bench.json'}, {args.output / 'bench.md'}")
    if report["sections_failed"]:
        failed = ", ".join(section["section"] for section in report["sections_failed"])
        sys.exit(f"bench: sections failed: {failed} (the others are in the report)")


def _noise_floor(report: dict) -> dict:
    """The machine's noise floor (the control's ratio) and the runtime's per-call floor."""
    controls, deployed = report.get("controls", {}), report.get("deployed", {})
    control = controls.get("digits") or next(iter(controls.values()), None)
    timed_again = deployed.get("digits") or next(iter(deployed.values()), {})
    return {**({"control_speedup_b1": control["speedup_b1_vs_ort_fp32"],
                "control_speedup_b1_interval": control["speedup_b1_vs_ort_fp32_interval"]}
               if control else {}),
            **({"floor_us_b1": timed_again["floor_us_b1"]} if timed_again else {})}


if __name__ == "__main__":
    main()
