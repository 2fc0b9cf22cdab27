"""`make bench`: measure the pipeline on this machine and write reports/bench.{json,md}.

Everything is measured in this one run, each in a fresh temporary copy of the project (so the
user's own stores and outputs are untouched):

  pipeline     `shrinkflow run` end to end on the default config, the same command again with
               nothing changed (served from the cache; target <= 10 s), and every stage function
               called directly in one process; the difference is the orchestration overhead.
  compression  every candidate of each task (digits from the pipeline run above, mnist1d run
               directly), as measured side by side by the compare stage, with the fields of
               shared/BENCH.md and ratios against the fp32 baseline in torch and ONNX Runtime.
  pruning      eager-torch batch-1 latency of the digits baseline vs its 50%-channel pruning.
  distillation each student's accuracy with the teacher minus without it (metrics/distill.json),
               and how many unlabeled inputs the distilled students also learned from.
  targets      the acceptance targets of the compression work, each checked on these numbers.

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
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

OVERLAYS = {"digits": None, "mnist1d": "configs/mnist1d.yaml",
            "breast_cancer": "configs/breast_cancer.yaml"}
CACHED_RERUN_TARGET_S = 10.0
# the quickest complete pipeline: only warms Prefect's database, its numbers are not reported
WARM_UP = ["--set", "baseline.train.epochs=1", "--set", "prune.finetune_epochs=0",
           "--set", "prune.unstructured.enabled=false", "--set", "distill.enabled=false",
           "--set", "quantize.methods=[fp16]", "--set", "measure.repeats=5"]


def fresh_project(parent: Path, name: str) -> Path:
    from tasks.catalog import copy_sources

    return copy_sources(REPO, parent / name)


def project_env(project: Path) -> dict[str, str]:
    """A user's shell in that project: its own MLflow store, a Prefect home shared by the bench."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("MLFLOW_", "PREFECT_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["PYTHONPATH"] = str(REPO)
    env["PREFECT_HOME"] = str(project.parent / "prefect-home")
    return env


def timed(command: list[str], project: Path) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, cwd=project, env=project_env(project), capture_output=True,
                            text=True, timeout=1800)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed in {project}:\n{result.stderr[-3000:]}")
    return elapsed


DIRECT = """
import sys
from pathlib import Path
from tasks.environment import configure
configure(Path.cwd())
from shrinkflow.config import load_params
from flows.pipeline import STAGES
from tasks.stages import run_stage
params = load_params("params.yaml", [o for o in sys.argv[1:]])
for stage in STAGES:
    run_stage(stage, params, Path.cwd())
"""


def direct_calls(project: Path, overlay: str | None) -> float:
    """Every stage function in one process, without Prefect: the work the flow orchestrates."""
    return timed([sys.executable, "-c", DIRECT, *([overlay] if overlay else [])], project)


def pipeline_timings(workdir: Path) -> tuple[dict[str, float], Path]:
    # the very first flow on a new PREFECT_HOME creates Prefect's database (~10 s, once per
    # machine): pay it on a throw-away project so full_run_s is what every later run costs
    print("pipeline: warming Prefect's database ...", flush=True)
    timed(["shrinkflow", "run", *WARM_UP], fresh_project(workdir, "warm"))
    flow_project = fresh_project(workdir, "flow")
    print("pipeline: full run through Prefect ...", flush=True)
    full = timed(["shrinkflow", "run"], flow_project)
    print(f"  {full:.1f} s; cached re-run ...", flush=True)
    cached = timed(["shrinkflow", "run"], flow_project)
    print(f"  {cached:.1f} s; the same stages called directly ...", flush=True)
    direct = direct_calls(fresh_project(workdir, "direct"), None)
    print(f"  {direct:.1f} s", flush=True)
    return {
        "full_run_s": round(full, 2),
        "cached_rerun_s": round(cached, 2),
        "direct_calls_s": round(direct, 2),
        "orchestration_overhead_pct": round(100 * (full - direct) / direct, 1),
        "cached_rerun_target_s": CACHED_RERUN_TARGET_S,
    }, flow_project


BENCH_FIELDS = ("candidate", "file", "accuracy", "accuracy_drop_pp", "params_count",
                "size_bytes", "size_ratio", "latency_ms_p50_b1", "speedup_b1_vs_torch",
                "speedup_b1_vs_ort_fp32", "throughput_sps_b256",
                "throughput_ratio_b256_vs_ort_fp32", "deployed")


def compression_rows(task: str, project: Path) -> list[dict]:
    """Every candidate the compare stage measured, with the fields of shared/BENCH.md."""
    report = json.loads((project / "metrics" / "compare.json").read_text())
    return [{"task": task, **{key: row[key] for key in BENCH_FIELDS}}
            for row in report["candidates"].values()]


def structured_torch_speedup(project: Path, threads: int) -> dict[str, float]:
    """Eager-torch batch-1 latency of the baseline over its 50%-channel structured pruning, the
    two timed in turn over several rounds in this process (`measure.latencies`)."""
    import numpy as np

    from shrinkflow.config import MeasureConfig
    from shrinkflow.measure import latencies, torch_predictor, torch_threads
    from tasks.candidates import load_torch

    cfg = MeasureConfig(threads=threads, warmup=50, repeats=1500, throughput_repeats=5, rounds=5)
    arch, baseline = load_torch(project / "models" / "baseline", "baseline")
    _, pruned = load_torch(project / "models" / "pruned" / "structured-50", "prune")
    x = np.random.default_rng(0).normal(size=(256, *arch.input_shape)).astype(np.float32)
    with torch_threads(threads):
        timed = latencies({"baseline": lambda: torch_predictor(baseline),
                           "pruned": lambda: torch_predictor(pruned)}, x, cfg)
    base, small = (timed[name]["latency_ms_p50_b1"] for name in ("baseline", "pruned"))
    return {"baseline_ms": base, "structured_50_ms": small, "speedup": base / small,
            "rounds": cfg.rounds}


# (target, field of the deployed digits row, test of its value)
DIGITS_TARGETS = (
    (">= 25x smaller than fp32 torch", "size_ratio", lambda value: value >= 25),
    (">= 12x faster than fp32 torch at batch 1", "speedup_b1_vs_torch", lambda value: value >= 12),
    (">= 2x faster than fp32 ONNX Runtime at batch 1", "speedup_b1_vs_ort_fp32",
     lambda value: value >= 2),
    ("<= 0.5 pp accuracy drop", "accuracy_drop_pp", lambda value: value <= 0.5),
)


def targets(rows: list[dict], kd_gain_pp: dict[str, dict[str, float]],
            pruning: dict[str, float]) -> list[dict]:
    """The acceptance targets of the compression work, each checked on this run's numbers."""
    def best(task: str, key: str, ok) -> dict | None:
        matching = [row for row in rows if row["task"] == task and ok(row)]
        return max(matching, key=lambda row: row[key]) if matching else None

    checks = []
    digits = next((row for row in rows if row["task"] == "digits" and row["deployed"]), None)
    if digits is not None or any(row["task"] == "digits" for row in rows):
        checks += [{"target": f"digits deployed: {target}", "value": (digits or {}).get(key),
                    "met": digits is not None and met(digits[key])}
                   for target, key, met in DIGITS_TARGETS]
    if any(row["task"] == "mnist1d" for row in rows):
        small = best("mnist1d", "throughput_ratio_b256_vs_ort_fp32",
                     lambda r: r["accuracy_drop_pp"] <= 0.3 and r["size_ratio"] >= 10)
        checks.append({"target": "mnist1d: a candidate within 0.3 pp, >= 10x smaller, >= 8x "
                                 "batch-256 throughput of ONNX Runtime fp32",
                       "value": small and f"{small['candidate']}: "
                                          f"{small['throughput_ratio_b256_vs_ort_fp32']:.1f}x",
                       "met": bool(small) and small["throughput_ratio_b256_vs_ort_fp32"] >= 8})
    if kd_gain_pp.get("mnist1d"):
        student, gain = max(kd_gain_pp["mnist1d"].items(), key=lambda item: item[1])
        checks.append({"target": "mnist1d: a distilled student beats the same student alone "
                                 "by >= 2 pp",
                       "value": f"{student}: {gain:+.2f} pp", "met": gain >= 2})
    if pruning:
        checks.append({"target": "structured pruning at 50% channels: >= 1.3x faster on torch",
                       "value": pruning["speedup"], "met": pruning["speedup"] >= 1.3})
    return checks


def compression(workdir: Path, tasks: list[str],
                flow_project: Path) -> tuple[list, dict, dict]:
    """Candidates of every task (digits from the flow run above, others run directly), the
    distillation gain of each student by task, and the unlabeled rows each task distilled on."""
    rows, kd_gain, unlabeled = [], {}, {}
    for task in tasks:
        if task == "digits":
            project = flow_project
        else:
            print(f"compression: {task}, every stage ...", flush=True)
            project = fresh_project(workdir, f"task-{task}")
            direct_calls(project, OVERLAYS[task])
        rows += compression_rows(task, project)
        distill = json.loads((project / "metrics" / "distill.json").read_text())
        kd_gain[task] = {key.removesuffix(".kd_gain_pp"): value for key, value in distill.items()
                         if key.endswith(".kd_gain_pp")}
        unlabeled[task] = distill.get("unlabeled_rows", 0)
    return rows, kd_gain, unlabeled


def markdown(report: dict) -> str:
    machine = report["machine"]
    lines = ["# shrinkflow benchmark", "",
             f"{machine['cpu']}, {machine['cores']} cores, {machine['threads']} thread(s) for "
             f"inference; torch {machine['torch']}, onnxruntime {machine['onnxruntime']}.", ""]
    pipeline = report["pipeline"]
    verdict = "meets" if pipeline["cached_rerun_s"] <= CACHED_RERUN_TARGET_S else "MISSES"
    lines += ["## Pipeline", "", "| measure | seconds |", "|---|---:|",
              f"| full run (`shrinkflow run`) | {pipeline['full_run_s']:.1f} |",
              f"| cached re-run, nothing changed | {pipeline['cached_rerun_s']:.1f} |",
              f"| stage functions called directly | {pipeline['direct_calls_s']:.1f} |", "",
              f"Orchestration overhead: {pipeline['orchestration_overhead_pct']:.0f} %. "
              f"The cached re-run {verdict} the {CACHED_RERUN_TARGET_S:.0f} s target.", ""]
    lines += ["## Compression", "",
              "Ratios against the fp32 baseline measured in the same run; drop in percentage "
              "points against the teacher; the deployed candidate is in bold.", "",
              "| task | candidate | accuracy | drop pp | params | bytes | size ratio | "
              "p50 ms b1 | vs torch b1 | vs ORT fp32 b1 | samples/s b256 | vs ORT fp32 b256 |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in report["compression"]:
        name = f"**{row['candidate']}**" if row["deployed"] else row["candidate"]
        lines.append(
            f"| {row['task']} | {name} | {row['accuracy']:.4f} | "
            f"{row['accuracy_drop_pp']:.2f} | {int(row['params_count'])} | {int(row['size_bytes'])} | "
            f"{row['size_ratio']:.1f}x | {row['latency_ms_p50_b1']:.4f} | "
            f"{row['speedup_b1_vs_torch']:.1f}x | {row['speedup_b1_vs_ort_fp32']:.2f}x | "
            f"{row['throughput_sps_b256']:.0f} | {row['throughput_ratio_b256_vs_ort_fp32']:.2f}x |")
    pruning = report["structured_pruning_torch_b1"]
    if pruning:
        lines += ["", f"Structured pruning, 50% of channels, eager torch batch 1: "
                      f"{pruning['baseline_ms']:.4f} ms -> {pruning['structured_50_ms']:.4f} ms "
                      f"({pruning['speedup']:.2f}x, p50 over {pruning['rounds']} rounds timed "
                      f"in turn)."]
    for task, gains in report["distillation_gain_pp"].items():
        rows = [row for row in report["compression"] if row["task"] == task]
        unlabeled = report["distillation_unlabeled_rows"].get(task, 0)
        pool = (f"; the distilled ones also learned from {unlabeled:,} unlabeled inputs the "
                f"teacher labeled" if unlabeled else "")
        lines += ["", f"Distillation on {task}, each student against the same student trained "
                      f"without the teacher{pool}:", ""]
        for student, gain in sorted(gains.items(), key=lambda item: item[0] != "student"):
            alone = next(row for row in rows if row["candidate"] == f"{student}-scratch")
            lines.append(f"- {student} ({int(alone['params_count']):,} params): {gain:+.2f} pp "
                         f"(alone it is {alone['accuracy_drop_pp']:.2f} pp below the teacher)")
    lines += ["", "## Targets", "", "| target | measured | met |", "|---|---|---|"]
    for check in report["targets"]:
        value = check["value"]
        shown = f"{value:.2f}" if isinstance(value, float) else str(value)
        lines.append(f"| {check['target']} | {shown} | {'yes' if check['met'] else 'NO'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["digits", "mnist1d"], choices=OVERLAYS)
    parser.add_argument("--output", type=Path, default=REPO / "reports")
    args = parser.parse_args()

    from shrinkflow.config import load_params
    from shrinkflow.measure import machine_info

    threads = load_params(REPO / "params.yaml").measure.threads
    with tempfile.TemporaryDirectory(prefix="shrinkflow-bench-") as scratch:
        workdir = Path(scratch)
        pipeline, flow_project = pipeline_timings(workdir)
        rows, kd_gain, unlabeled = compression(workdir, args.tasks, flow_project)
        pruning = structured_torch_speedup(flow_project, threads) if "digits" in args.tasks else {}
        report = {"machine": machine_info(threads), "pipeline": pipeline, "compression": rows,
                  "distillation_gain_pp": kd_gain, "distillation_unlabeled_rows": unlabeled,
                  "structured_pruning_torch_b1": pruning,
                  "targets": targets(rows, kd_gain, pruning)}
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    (args.output / "bench.md").write_text(text)
    print("\n" + text)
    print(f"written: {args.output / 'bench.json'}, {args.output / 'bench.md'}")


if __name__ == "__main__":
    main()
