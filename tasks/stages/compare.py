"""Stage `compare`: every candidate timed side by side, the Pareto front, the deployable pick.

Reads the candidates.json manifests of every stage declared before it in `tasks.services.dag` that
makes candidates (models/{baseline,pruned,distilled,quantized,ensemble,searched}/, those that
exist), data/processed/ and params.yaml `compare` and `measure`.

- Accuracy: every candidate on the validation split (what the choice reads) and on the test split
  (reported only), with the drop against the teacher on each.
- Speed: measured here only, all models in this one process, taking turns over several rounds
  (`measure.time_side_by_side`), so the ratios compare like with like. Every ratio has a bootstrap
  interval over the rounds, and a control (the baseline's ONNX file timed a second time as if it
  were another candidate) shows the noise floor: its ratio to the baseline should read 1.00. These
  are the only speed figures: they are also logged to each candidate's own MLflow run.
- Judged as the compression literature judges a compressed model (`shrinkflow.judge`): agreement
  with the teacher (top-1 and KL divergence), calibration (ECE) and accuracy on corrupted copies
  of the inputs at two severities (the same copies for every candidate, `compare.seed`), on
  validation and test.
- Memory: each candidate's ONNX Runtime session at batch 1 and 256, in a fresh process each
  (`shrinkflow.footprint`), beside the runtime's own (an Identity graph of the input's width).
- Portability: whether a second runtime (OpenVINO, when installed) runs each file, and how often
  it gives ONNX Runtime's top class on the validation inputs (`shrinkflow.portability`).
- Cost: the wall seconds each candidate and what it was made from took to make, from the stages'
  reports (`make_seconds`; the baseline's `train_seconds`).
- Choice (`shrinkflow.gate`): within `compare.max_accuracy_drop_pp` of the teacher on validation
  (and, when set, `compare.min_agreement` and `compare.max_robustness_drop_pp`), on the Pareto
  front, the fastest, latencies inside the noise or within `compare.min_speedup` counting as
  ties.

Writes metrics/compare.json (the headline: how many candidates were compared, the deployed
candidate's accuracies, drop, size ratio and speed-up over ONNX Runtime fp32) and reports/compare/:
metrics.json (also its name, size, speed-up over eager torch and the control's noise floor),
candidates.json (every candidate's row with the fields of the benchmark report, and the control:
what deploy and the benchmark read, through `tasks.services.io.read_candidates`), candidates.csv (one row
per candidate, for `dvc plots`), candidates.md and pareto.png; logs them to MLflow.
"""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path
from typing import Any

from shrinkflow import footprint, gate, judge, measure, plots, portability
from shrinkflow.config import CompareConfig, MeasureConfig, Params
from shrinkflow.data import DatasetSpec, Splits
from shrinkflow.export import onnx_predictor
from tasks.services import dag, io, tracking
from tasks.services.candidates import (
    MANIFEST,
    Candidate,
    evaluate_onnx,
    load_torch,
    read_manifests,
    torch_teacher,
)
from tasks.services.catalog import Catalog
from tasks.services.io import load_processed

log = logging.getLogger("shrinkflow.compare")
# the teacher in eager torch: the reference of every ratio (of drops and sizes too); a teacher
# that is a user's ONNX file has none, and its file is the reference of drops and sizes
TORCH_BASELINE = "baseline-fp32-torch"
CONTROL = "control"  # the baseline's ONNX file timed again: its ratio to the baseline is the noise
# (column, header, format) of candidates.md
TABLE = (("val_accuracy", "val acc", "{:.4f}"), ("val_accuracy_drop_pp", "val drop pp", "{:.2f}"),
         ("accuracy", "test acc", "{:.4f}"), ("accuracy_drop_pp", "test drop pp", "{:.2f}"),
         ("params_count", "params", "{:,.0f}"), ("size_bytes", "bytes", "{:,.0f}"),
         ("size_ratio", "smaller", "{:.1f}x"), ("latency_ms_p50_b1", "p50 ms b1", "{:.4f}"),
         ("speedup_b1_vs_torch", "vs torch b1", None),
         ("speedup_b1_vs_ort_fp32", "vs ORT fp32 b1", None),
         ("throughput_sps_b256", "samples/s b256", "{:,.0f}"),
         ("throughput_ratio_b256_vs_ort_fp32", "vs ORT fp32 b256", None))
# the deployed candidate's figures in reports/compare/metrics.json, named as in its row
FIGURES = ("val_accuracy", "accuracy", "accuracy_drop_pp", "size_bytes", "size_ratio",
           "speedup_b1_vs_torch", "speedup_b1_vs_ort_fp32")
# metrics/compare.json: shared name <- name in reports/compare/metrics.json. The speed-up shown is
# over ONNX Runtime fp32 (the baseline's own served file): the runtime every candidate is served
# in, so it is what compression gains; eager torch's adds the switch of runtime to it
HEADLINE = {"candidates": "candidates", "val_accuracy": "val_accuracy", "accuracy": "accuracy",
            "accuracy_drop_pp": "accuracy_drop_pp", "size_ratio": "size_ratio",
            "speedup_b1": "speedup_b1_vs_ort_fp32"}
# (column, header, format) of the second table of candidates.md: the judged figures, on test
JUDGED_TABLE = (("val_agreement", "val agreement", "{:.4f}"), ("agreement", "agreement", "{:.4f}"),
                ("kl_to_teacher", "KL to teacher", "{:.4f}"), ("ece", "ECE", "{:.4f}"),
                *((f"robustness_drop_pp_{name}", f"drop pp {name}", "{:.2f}")
                  for name in judge.SEVERITIES),
                ("memory_mb_b1", "MB b1", "{:.1f}"), ("memory_mb_b256", "MB b256", "{:.1f}"),
                ("cost_seconds", "s to make", "{:.1f}"),
                ("second_runtime_agreement", "2nd runtime agreement", "{:.4f}"))
MEMORY = ("memory_mb_b1", "memory_mb_b256")  # of an ONNX Runtime session (`shrinkflow.footprint`)
UNSPLIT = (*MEMORY, "cost_seconds", "second_runtime_agreement")  # not of a split
JUDGED = (*(f"{prefix}{key}" for key, _, _ in JUDGED_TABLE[1:] if key not in UNSPLIT
            for prefix in ("val_", "")), *UNSPLIT)
# columns of candidates.csv (`dvc plots`): the scalar fields of a row; intervals stay in the JSON
CSV_COLUMNS = ("candidate", "kind", "method", "parent", "val_accuracy", "accuracy",
               "val_accuracy_drop_pp", "accuracy_drop_pp", "params_count", "size_bytes",
               "size_ratio", "latency_ms_p50_b1", "throughput_sps_b256", "speedup_b1_vs_torch",
               "speedup_b1_vs_ort_fp32", "throughput_ratio_b256_vs_ort_fp32", *JUDGED, "pareto",
               "deployed")
# what compare logs onto each candidate's own run (and the deployed one's onto compare's run)
LOGGED = ("latency_ms_p50_b1", "latency_ms_p95_b1", "throughput_sps_b256", "size_ratio",
          "speedup_b1_vs_torch", "speedup_b1_vs_ort_fp32", "throughput_ratio_b256_vs_ort_fp32",
          "val_accuracy_drop_pp", "accuracy_drop_pp", *JUDGED)


def _kind(catalog: Catalog, stage: str) -> str:
    """A candidate's kind: the name of the models/ folder listing it ("pruned")."""
    return catalog.models_dir(stage).name


def _candidates(catalog: Catalog) -> list[tuple[str, Candidate]]:
    """Every candidate listed under models/, in the stages' order, with its kind."""
    found = [(_kind(catalog, stage), candidate) for stage in dag.candidate_stages("compare")
             for candidate in read_manifests(catalog, (stage,))]
    if not found:
        raise io.MissingInputError(f"no {MANIFEST} under {catalog.root / 'models'}: "
                                   "run the 'baseline' stage first")
    return found


def _ratio_cell(row: dict[str, Any], key: str) -> str:
    if math.isnan(row[key]):  # against eager torch, when the teacher is an ONNX file
        return "n/a"
    low, high = row[f"{key}_interval"]
    return f"{row[key]:.2f}x [{low:.2f}, {high:.2f}]"


def _cell(value: float, fmt: str) -> str:
    return "n/a" if isinstance(value, float) and math.isnan(value) else fmt.format(value)


def _unported(rows: list[dict[str, Any]]) -> str:
    """The candidates the second runtime could not run, and why."""
    refused = [f"- {row['candidate']}: {row['second_runtime_error']}" for row in rows
               if row["second_runtime_error"] and row["file"].endswith(".onnx")]
    runtime = next((row["second_runtime"] for row in rows if row["second_runtime"]), "")
    if not runtime:
        return "\nNo second runtime is installed (`pip install openvino`): portability is not measured.\n"
    return f"\nRun by ONNX Runtime only, not by {runtime}:\n\n" + "\n".join(refused) + "\n" \
        if refused else f"\nEvery candidate file also runs in {runtime}.\n"


def _table(rows: list[dict[str, Any]], columns: tuple, chosen: str | None) -> list[str]:
    lines = ["| candidate | " + " | ".join(header for _, header, _ in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for row in rows:
        name = f"**{row['candidate']}** (deployed)" if row["candidate"] == chosen else row["candidate"]
        cells = [_ratio_cell(row, key) if fmt is None else _cell(row[key], fmt)
                 for key, _, fmt in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def markdown_table(rows: list[dict[str, Any]], control: dict[str, Any], chosen: str | None,
                   rules: gate.Rules, floor: dict[str, float]) -> str:
    lines = _table(rows, TABLE, chosen)
    verdict = (f"Deployed: `{chosen}`, the fastest candidate on the Pareto front "
               f"{rules.describe()} (latencies inside the timing noise tie; then the smaller file "
               "wins)." if chosen else
               f"No candidate is {rules.describe()}: nothing is deployable.")
    judged = _table(rows, JUDGED_TABLE, chosen)
    severities = "; ".join(
        f"{name}: noise of {severity.noise_std:g} of each input's spread, images shifted up to "
        f"{severity.max_shift} px and rotated up to {severity.max_rotation_deg:g} degrees, "
        f"signals shifted up to {severity.max_shift} sample(s) and scaled by up to "
        f"{severity.max_scale:.0%}" for name, severity in judge.SEVERITIES.items())
    noise = (f"Control: the baseline's ONNX file timed a second time as another candidate runs "
             f"{_ratio_cell(control, 'speedup_b1_vs_ort_fp32')} as fast as itself at batch 1 and "
             f"{_ratio_cell(control, 'throughput_ratio_b256_vs_ort_fp32')} at batch 256: the "
             "noise floor of these ratios. Intervals: 95% bootstrap over the timing rounds.")
    return ("\n".join(lines) + f"\n\n{verdict}\n\n{noise}\n\n"
            "Judged against the teacher, on test (agreement also on validation): top-1 "
            "agreement, KL divergence of the probabilities from the teacher's, expected "
            "calibration error (15 bins), the accuracy lost on corrupted inputs "
            f"({severities}); the peak memory of an ONNX Runtime session running batches of "
            f"1 and 256, each in a fresh process (the runtime alone, an Identity graph of the "
            f"input's width, takes {floor['memory_mb_b1']:.1f} and {floor['memory_mb_b256']:.1f} "
            "MB); the wall seconds it took to make, with everything it was made from (the "
            "teacher's training included); and how often a second runtime gives the top class "
            "ONNX Runtime gives, on the validation inputs.\n\n" + "\n".join(judged) + "\n"
            + _unported(rows))


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    """candidates.csv: one line per candidate, `CSV_COLUMNS` wide."""
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return path


def stage_metrics(chosen: dict[str, Any] | None, control: dict[str, Any],
                  compared: int) -> dict[str, Any]:
    """reports/compare/metrics.json: the deployed candidate (none: null) and its figures, the
    noise floor of the speed-ups, and how many candidates were compared."""
    return {"deployed": chosen["candidate"] if chosen else None, "candidates": compared,
            "control_speedup_b1": control["speedup_b1_vs_ort_fp32"],
            **({key: chosen[key] for key in FIGURES} if chosen else {})}


def metrics_headline(metrics: dict[str, Any]) -> dict[str, Any]:
    """metrics/compare.json: `HEADLINE` of the stage's metrics (only the count without a
    deployed candidate)."""
    return {shared: metrics[own] for shared, own in HEADLINE.items() if own in metrics}


def _accuracy_drops(scores: dict[str, float], teacher: dict[str, float]) -> dict[str, float]:
    """Teacher accuracy minus this one, in percentage points, on validation and on test."""
    return {f"{split}accuracy_drop_pp": 100.0 * (teacher[f"{split}accuracy"]
                                                 - scores[f"{split}accuracy"])
            for split in ("val_", "")}


NOT_A_FILE = {"second_runtime": "", "second_runtime_agreement": math.nan,
              "second_runtime_error": "eager torch, not an ONNX file"}
NOT_TIMED = {"speedup_b1_vs_torch": math.nan, "speedup_b1_vs_torch_interval": [math.nan, math.nan]}


def _speed(name: str, timings: dict[str, measure.Timing], noise: measure.Noise,
           reference_onnx: str) -> dict[str, Any]:
    """Timings and ratios; against eager torch only when the teacher has a torch model."""
    return {**timings[name].metrics(),
            **(noise.speedup(TORCH_BASELINE, name).fields("speedup_b1_vs_torch")
               if TORCH_BASELINE in timings else NOT_TIMED),
            **noise.speedup(reference_onnx, name).fields("speedup_b1_vs_ort_fp32"),
            **noise.speedup(reference_onnx, name, measure.THROUGHPUT_BATCH).fields(
                "throughput_ratio_b256_vs_ort_fp32")}


def _torch_row(catalog: Catalog, splits: Splits) -> tuple[dict[str, Any], Any]:
    """The teacher in eager torch: its scores and sizes, and the module to time."""
    arch, model = load_torch(catalog.baseline_dir, produced_by="baseline")
    predict = measure.torch_predictor(model)
    row = {"candidate": TORCH_BASELINE, "kind": _kind(catalog, "baseline"),
           "file": catalog.relative(catalog.baseline_dir / "model.pt"),
           "parent": "baseline", "method": "fp32-eager",
           **measure.scores(predict, splits.val.x, splits.val.y, splits.test.x, splits.test.y),
           **measure.torch_size(model, catalog.baseline_dir / "model.pt", arch.input_shape)}
    return row, model


def _costs(catalog: Catalog, found: list[tuple[str, Candidate]]) -> dict[str, float]:
    """Each candidate's cost: the wall seconds it took to make and those of everything it was
    made from (its parent, their parents, an ensemble's members, the teacher's training), each
    counted once. The seconds are read from the stages' reports, which no cache key covers: a
    duration is not a property of the file."""
    own = {"baseline": io.read_metrics(catalog, "baseline").get("train_seconds", 0.0)}
    for stage in dag.candidate_stages("compare"):
        report = catalog.candidates_report(stage)
        if report.is_file():
            own |= {name: figures.get("make_seconds", 0.0) for name, figures in
                    io.read_candidates(catalog, stage).get("candidates", {}).items()}
    parents = {candidate.name: candidate.parent for _, candidate in found}
    parents[TORCH_BASELINE] = "baseline"

    def cost(name: str) -> float:
        seen, waiting = set(), [name]
        while waiting:
            current = waiting.pop()
            if current not in seen:
                seen.add(current)
                waiting += parents[current].split("+") if current in parents else []
        return sum(own.get(ancestor, 0.0) for ancestor in seen)

    return {name: cost(name) for name in parents}


def _judge_inputs(splits: Splits, spec: DatasetSpec, teacher: measure.Predictor,
                  cfg: CompareConfig) -> judge.Inputs:
    """The splits' inputs, their corrupted copies and the teacher's answers, for every
    candidate."""
    log.info("corrupted copies of the validation and test inputs (%s), and the teacher's answers",
             ", ".join(judge.SEVERITIES))
    return judge.Inputs.make({"val": splits.val.x, "test": splits.test.x},
                             {"val": splits.val.y, "test": splits.test.y}, spec.kind, teacher,
                             cfg.seed)


def _time(catalog: Catalog, candidates: list[Candidate], teacher: Any, splits: Splits,
          cfg: MeasureConfig) -> tuple[dict[str, measure.Timing], measure.Noise]:
    """Every candidate, the eager-torch teacher (None: the teacher is an ONNX file) and the
    control, timed side by side."""

    def onnx_loader(path: Path):
        return lambda: onnx_predictor(path, cfg.threads)

    loaders = {**({TORCH_BASELINE: lambda: measure.torch_predictor(teacher)}
                  if teacher is not None else {}),
               **{c.name: onnx_loader(catalog.path(c.onnx)) for c in candidates},
               CONTROL: onnx_loader(catalog.path(candidates[0].onnx))}
    log.info("timing %d models side by side (%d rounds, threads=%d)", len(loaders), cfg.rounds,
             cfg.threads)
    with measure.torch_threads(cfg.threads):
        # inputs of the validation split: every choice, the latency tie included, reads it
        timings = measure.time_side_by_side(loaders, splits.val.x, cfg)
    return timings, measure.Noise(timings)


def run_compare(params: Params, root: Path, parent_run_id: str | None = None) -> dict[str, Any]:
    """Evaluate and time every candidate, pick the deployable one; returns a JSON summary."""
    catalog, cfg = Catalog.at(root), params.compare
    with tracking.stage_run("compare", params, catalog.root, parent_run_id, cfg) as run:
        splits, spec, _ = load_processed(catalog)
        found = _candidates(catalog)
        candidates = [candidate for _, candidate in found]
        reference_onnx = candidates[0].name  # the baseline's manifest comes first
        # the reference of drops and size ratios: the teacher in eager torch, or, when it is a
        # user's ONNX file, that file (the baseline's manifest comes first)
        torch_row, teacher = _torch_row(catalog, splits) if torch_teacher(catalog) else (None, None)
        teacher_predict = (measure.torch_predictor(teacher) if teacher is not None
                           else onnx_predictor(catalog.path(candidates[0].onnx)))
        inputs = _judge_inputs(splits, spec, teacher_predict, cfg)
        # eager torch is not a runtime session: its memory and portability are not measured
        rows = [torch_row | judge.judged(teacher_predict, inputs)
                | dict.fromkeys(MEMORY, math.nan) | NOT_A_FILE] if torch_row else []
        for number, (kind, c) in enumerate(found, 1):
            log.info("evaluating candidate %d of %d: %s", number, len(found), c.name)
            path = catalog.path(c.onnx)
            predict = onnx_predictor(path)
            rows.append({"candidate": c.name, "kind": kind, "file": c.onnx, "parent": c.parent,
                         "method": c.method, **evaluate_onnx(path, splits),
                         **judge.judged(predict, inputs),
                         **portability.check(path, splits.val.x,
                                             measure.predict_batched(predict, splits.val.x),
                                             params.measure.threads)})
        log.info("peak memory of each candidate's session, each in a fresh process")
        memory, floor = footprint.with_floor([catalog.path(c.onnx) for c in candidates],
                                             spec.input_shape, params.measure.threads)
        for row, used in zip(rows[len(rows) - len(candidates):], memory, strict=True):
            row |= used
        costs = _costs(catalog, found)
        for row in rows:
            row["cost_seconds"] = costs[row["candidate"]]
        timings, noise = _time(catalog, candidates, teacher, splits, params.measure)
        reference = rows[0]
        for row in rows:
            row |= _speed(row["candidate"], timings, noise, reference_onnx)
            row |= _accuracy_drops(row, reference)
            row["size_ratio"] = reference["size_bytes"] / row["size_bytes"]
        control = {"candidate": CONTROL, "file": candidates[0].onnx,
                   **_speed(CONTROL, timings, noise, reference_onnx)}

        def faster(a: gate.Row, b: gate.Row) -> bool:
            return noise.faster(a["candidate"], b["candidate"], cfg.min_speedup)

        # only ONNX files are served; the eager-torch row is there as the reference
        rules = gate.Rules(cfg.max_accuracy_drop_pp, cfg.min_agreement, cfg.max_robustness_drop_pp)
        chosen = gate.choose([row for row in rows if row["file"].endswith(".onnx")], rules, faster)
        chosen_name = chosen["candidate"] if chosen else None
        front = [row["candidate"] for row in gate.pareto_front(rows, faster)]
        for row in rows:
            row["deployed"] = row["candidate"] == chosen_name
            row["pareto"] = row["candidate"] in front

        table = markdown_table(rows, control, chosen_name, rules, floor)
        with io.atomic_dir(catalog.compare_dir) as staging:
            io.write_json(staging / catalog.candidates_report("compare").name,
                          {"task": spec.name, "deployed": chosen_name, "control": control,
                           "memory_floor": floor,
                           "candidates": {row["candidate"]: row for row in rows}})
            write_csv(staging / catalog.candidates_table.name, rows)
            io.write_text(staging / "candidates.md", f"# Candidates on {spec.name}\n\n{table}")
            plots.pareto(rows, front, chosen_name, staging / "pareto.png",
                         f"{spec.name}: accuracy, size and latency of every candidate")
            metrics = stage_metrics(chosen, control, len(candidates))
            io.write_metrics(catalog, "compare", metrics_headline(metrics), metrics, staging)

        _log(catalog, candidates, rows, control, chosen, spec.name)
        log.info("deployable: %s", chosen_name or "none within tolerance")
        return {"stage": "compare", "run_id": run.info.run_id, "dataset": spec.name,
                "deployed": chosen_name, "table": table,
                "metrics": {key: float(value) for key, value in metrics.items() if key != "deployed"},
                "headline": _headline(chosen, rules)}


def _headline(chosen: dict[str, Any] | None, rules: gate.Rules) -> str:
    """The deployable candidate in one line, as the command line prints it."""
    if chosen is None:
        return f"none: no candidate {rules.describe()}"
    return (f"{chosen['candidate']}: validation accuracy {chosen['val_accuracy']:.4f} (test "
            f"{chosen['accuracy']:.4f}), {chosen['size_ratio']:.1f}x smaller, "
            f"{_ratio_cell(chosen, 'speedup_b1_vs_ort_fp32')} as fast as ONNX Runtime fp32"
            + ("" if math.isnan(chosen["speedup_b1_vs_torch"]) else
               f" and {_ratio_cell(chosen, 'speedup_b1_vs_torch')} as fast as eager torch")
            + " at batch 1")


def _log(catalog: Catalog, candidates: list[Candidate], rows: list[dict[str, Any]],
         control: dict[str, Any], chosen: dict[str, Any] | None, dataset: str) -> None:
    """The comparison on compare's run, and each candidate's timing on the candidate's own run."""
    import mlflow

    by_name = {row["candidate"]: row for row in rows}
    experiment_id = mlflow.active_run().info.experiment_id
    for candidate in candidates:
        made_by = tracking.run_that_made(catalog.root, experiment_id, catalog.path(candidate.onnx))
        if made_by is not None:
            tracking.log_metrics_to(catalog.root, made_by,
                                    {key: by_name[candidate.name][key] for key in LOGGED})
    tracking.log_artifact(catalog.compare_dir, "compare")
    tracking.log_artifact(catalog.metrics_file("compare"))
    tracking.log_metrics({"control_speedup_b1": control["speedup_b1_vs_ort_fp32"],
                          **({f"deployed.{key}": chosen[key] for key in
                              ("val_accuracy", "accuracy", "size_bytes", *LOGGED)} if chosen else {})})
    tracking.set_tags({"deployed_candidate": chosen["candidate"] if chosen else "none",
                       "dataset": dataset})
