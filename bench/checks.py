"""The acceptance targets of `make bench`, each a pure function of the measured numbers.

Every check returns {"target", "value", "met"}: what is promised, what was measured, whether it
holds. Candidates are picked on validation, targets are read on test; a speed target is met only
when the whole interval of its ratio clears it. Each check has a test that feeds it a case that
must fail (tests/bench/test_checks.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from shrinkflow.gate import within_drop

# digits with the search off: the compression targets were set against params.yaml's teacher
UNSEARCHED = "digits (params.yaml teacher)"
INTERVALS = ("speedup_b1_vs_torch", "speedup_b1_vs_ort_fp32", "throughput_ratio_b256_vs_ort_fp32")
CACHED_RERUN_TARGET_PCT = 8.0  # a cached re-run costs at most this share of a full run
# the recipe search's hypervolume: a candidate counts within 5 pp of the teacher's validation
# accuracy, no bigger than its ONNX file and no slower than it in ONNX Runtime at batch 1
HYPERVOLUME_DROP_PP = 5.0
DISTILL_GAIN_TARGET_PP = 2.0
TABLE_RUN_TARGET_S = 30 * 60  # a full default run on the generated 500,000-row table
IMAGES_TASK = "shapes"  # the image task: a folder of generated 32x32 RGB shapes, a ResNet-8 teacher
TEACHER_CEILING = 0.99  # its teacher's test accuracy stays below this: compression can lose some
LOW_BIT = ("int4_weights", "ternary", "binary")  # quantize methods storing weights in < 8 bits
LOW_BIT_SMALLER = 1.8  # a low-bit file against the same model's int8 weight-only file
LOW_BIT_DROP_PP = 0.5
FLOOR_RATIO = 1.5  # the deployed digits model's batch-1 latency against one MatMul's
FLOOR_DROP_PP = 0.3  # ... while it stays this close to params.yaml's teacher on test


def interval_met(row: dict, key: str, target: float) -> bool:
    """A speed target is met when the whole interval clears it, not just the point estimate."""
    return f"{key}_interval" in row and row[f"{key}_interval"][0] >= target


# (target, field of the deployed digits row, test of the row); the speed targets read the
# deployed candidate's fresh timing after the choice (bench/deployed.py), not compare's rounds
DIGITS_TARGETS = (
    (">= 25x smaller than fp32 torch", "size_ratio", lambda row: row["size_ratio"] >= 25),
    (">= 12x faster than fp32 torch at batch 1 (timed again after the choice)",
     "retimed_speedup_b1_vs_torch", lambda row: interval_met(row, "retimed_speedup_b1_vs_torch", 12)),
    (">= 2x faster than fp32 ONNX Runtime at batch 1 (timed again after the choice)",
     "retimed_speedup_b1_vs_ort_fp32",
     lambda row: interval_met(row, "retimed_speedup_b1_vs_ort_fp32", 2)),
    ("<= 0.5 pp test accuracy drop", "accuracy_drop_pp",
     lambda row: within_drop(row["accuracy_drop_pp"], 0.5)),
)


def ratio_text(row: dict, key: str) -> str:
    low, high = row[f"{key}_interval"]
    return f"{row[key]:.2f}x [{low:.2f}, {high:.2f}]"


def shown(row: dict, key: str) -> str:
    if key not in row:
        return "not measured"
    return ratio_text(row, key) if f"{key}_interval" in row else f"{row[key]:.2f}"


def deployed_checks(rows: list[dict], task: str) -> list[dict]:
    """The digits targets on the candidate `task`'s compare deployed."""
    deployed = next((row for row in rows if row["task"] == task and row["deployed"]), None)
    return [{"target": f"{task} deployed: {target}",
             "value": shown(deployed, key) if deployed else "nothing deployed",
             "met": deployed is not None and met(deployed)}
            for target, key, met in DIGITS_TARGETS]


def mnist1d_check(rows: list[dict]) -> dict:
    """The fastest batch-256 candidate within 0.3 pp of the teacher on validation and >= 10x
    smaller (chosen on validation); then its test drop and throughput are checked."""
    key = "throughput_ratio_b256_vs_ort_fp32"
    eligible = [row for row in rows if row["task"] == "mnist1d" and row["file"].endswith(".onnx")
                and within_drop(row["val_accuracy_drop_pp"], 0.3) and row["size_ratio"] >= 10]
    target = ("mnist1d: a candidate within 0.3 pp of the teacher (test), >= 10x smaller, >= 8x "
              "batch-256 throughput of ONNX Runtime fp32 (picked on validation)")
    if not eligible:
        return {"target": target, "value": "no candidate within 0.3 pp on validation and 10x "
                                           "smaller", "met": False}
    pick = max(eligible, key=lambda row: row[key])
    return {"target": target,
            "value": f"{pick['candidate']}: test drop {pick['accuracy_drop_pp']:.2f} pp, "
                     f"{pick['size_ratio']:.1f}x smaller, {shown(pick, key)}",
            "met": within_drop(pick["accuracy_drop_pp"], 0.3) and interval_met(pick, key, 8)}



def ensemble_check(rows: list[dict], report: dict) -> dict:
    """mnist1d: the ensemble picked on validation against its best member (also picked on
    validation): more accurate on both splits, >= 5x smaller than the teacher's ONNX file."""
    target = ("mnist1d: an ensemble of >= 3 compressed members is more accurate on validation "
              "and test than its best member and >= 5x smaller than the fp32 teacher's ONNX file")
    task = {row["candidate"]: row for row in rows if row["task"] == "mnist1d"}
    made = [row for name, row in task.items() if name.startswith("ensemble-")]
    if len(report["members"]) < 3 or not made:
        return {"target": target, "value": f"no ensemble of 3: {report.get('reason')}", "met": False}
    chosen = max(made, key=lambda row: (row["val_accuracy"], -row["size_bytes"]))
    best = max((task[name] for name in report["members"]), key=lambda row: row["val_accuracy"])
    teacher_onnx = next(row for row in task.values() if row["file"] == "models/baseline/model.onnx")
    smaller = teacher_onnx["size_bytes"] / chosen["size_bytes"]
    return {"target": target,
            "value": f"{chosen['candidate']} of {', '.join(report['members'])}: val "
                     f"{chosen['val_accuracy']:.4f} vs {best['val_accuracy']:.4f} ({best['candidate']}), "
                     f"test {chosen['accuracy']:.4f} vs {best['accuracy']:.4f}, {smaller:.1f}x smaller",
            "met": (chosen["val_accuracy"] > best["val_accuracy"]
                    and chosen["accuracy"] > best["accuracy"] and smaller >= 5)}



def _area(points: Sequence[tuple[float, float]]) -> float:
    """The area two-objective points (minimised) dominate inside the unit square."""
    area, best = 0.0, 1.0
    ordered = sorted(points)
    for index, (x, y) in enumerate(ordered):
        best = min(best, y)
        right = ordered[index + 1][0] if index + 1 < len(ordered) else 1.0
        area += (right - x) * (1.0 - best)
    return area


def hypervolume(points: Iterable[Sequence[float]]) -> float:
    """The volume three-objective points (each minimised, scaled so the reference point is
    (1, 1, 1)) dominate inside the unit cube; points outside it add nothing. Exact: slices along
    the third objective, each the area of the points at or below it."""
    inside = sorted((max(0.0, a), max(0.0, b), max(0.0, c)) for a, b, c in points
                    if a < 1 and b < 1 and c < 1)
    levels = sorted({point[2] for point in inside})
    volume = 0.0
    for index, level in enumerate(levels):
        top = levels[index + 1] if index + 1 < len(levels) else 1.0
        volume += (top - level) * _area([(a, b) for a, b, c in inside if c <= level])
    return volume


def scaled(row: dict, teacher: dict) -> tuple[float, float, float]:
    """A candidate's (validation error, file size, batch-1 latency) against the reference point:
    the teacher's validation accuracy less HYPERVOLUME_DROP_PP, its ONNX file's size and latency."""
    worst_error = 1.0 - (teacher["val_accuracy"] - HYPERVOLUME_DROP_PP / 100)
    return ((1.0 - row["val_accuracy"]) / worst_error, row["size_bytes"] / teacher["size_bytes"],
            row["latency_ms_p50_b1"] / teacher["latency_ms_p50_b1"])


def recipe_check(rows: list[dict], task: str = "mnist1d") -> dict:
    """The recipe search pays when the candidates with its front dominate more of (validation
    accuracy, file size, batch-1 latency) than the candidates without it, over a fixed reference
    point (the fp32 ONNX teacher's figures, HYPERVOLUME_DROP_PP of accuracy below it)."""
    target = (f"{task}: the recipe search's front adds hypervolume of (val accuracy, file size, "
              "batch-1 latency) to the hand-set candidates")
    onnx = [row for row in rows if row["task"] == task and row["file"].endswith(".onnx")]
    teacher = next((row for row in onnx if row["file"] == "models/baseline/model.onnx"), None)
    searched = [row for row in onnx if row["kind"] == "searched"]
    if teacher is None or not searched:
        return {"target": target, "value": "no recipe candidates", "met": False,
                "hypervolume_with_recipes": 0.0, "hypervolume_without_recipes": 0.0}
    without = hypervolume(scaled(row, teacher) for row in onnx if row["kind"] != "searched")
    with_recipes = hypervolume(scaled(row, teacher) for row in onnx)
    return {"target": target,
            "value": f"{with_recipes:.4f} with {len(searched)} recipe candidates vs "
                     f"{without:.4f} without ({with_recipes - without:+.4f})",
            "met": with_recipes - without > 1e-9,  # more slices of the same volume: rounding
            "hypervolume_with_recipes": with_recipes, "hypervolume_without_recipes": without}


def distillation_check(task: str, metrics: dict) -> dict:
    """The student whose distillation gained most on validation; its test gain must reach the
    target. Beside it: what the teacher's soft labels add on the labeled rows alone, and what the
    unlabeled pool adds on top (test), when the stage measured them."""
    target = (f"{task}: a distilled student beats the same student alone by >= "
              f"{DISTILL_GAIN_TARGET_PP:.0f} pp (test; the student picked on validation)")
    students = sorted(key.removesuffix(".val_kd_gain_pp") for key in metrics
                      if key.endswith(".val_kd_gain_pp"))
    if not students:
        return {"target": target, "value": "no student trained both ways", "met": False}
    pick = max(students, key=lambda student: (metrics[f"{student}.val_kd_gain_pp"], student))
    gain = metrics[f"{pick}.kd_gain_pp"]
    parts = [f"{pick}: {gain:+.2f} pp (validation {metrics[f'{pick}.val_kd_gain_pp']:+.2f} pp)"]
    if f"{pick}.soft_label_gain_pp" in metrics:
        parts.append(f"soft labels on the labeled rows {metrics[f'{pick}.soft_label_gain_pp']:+.2f}"
                     f" pp, the unlabeled pool {metrics[f'{pick}.pool_gain_pp']:+.2f} pp more")
    return {"target": target, "value": "; ".join(parts), "met": gain >= DISTILL_GAIN_TARGET_PP}


def image_checks(rows: list[dict], task: str = IMAGES_TASK) -> list[dict]:
    """The image task's teacher leaves room to lose accuracy (below `TEACHER_CEILING` on test);
    its deployed candidate (chosen on validation) is >= 4x smaller than the teacher's ONNX file,
    >= 2x its batch-256 throughput in ONNX Runtime (the whole interval, timed again after the
    choice when it was) and within 1 pp of it on test."""
    task_rows = [row for row in rows if row["task"] == task]
    teacher = next((row for row in task_rows if row["file"] == "models/baseline/model.onnx"), None)
    deployed = next((row for row in task_rows if row["deployed"]), None)
    hard = {"target": f"{task}: the teacher stays below {100 * TEACHER_CEILING:.0f}% on test (the "
                      "data is hard enough for compression to lose accuracy)",
            "value": f"{teacher['accuracy']:.4f}" if teacher else "no teacher",
            "met": teacher is not None and teacher["accuracy"] < TEACHER_CEILING}
    target = (f"{task} deployed: >= 4x smaller than the teacher's ONNX file, >= 2x its batch-256 "
              "throughput in ONNX Runtime, within 1 pp on test")
    if teacher is None or deployed is None:
        return [hard, {"target": target, "value": "nothing deployed", "met": False}]
    key = next(key for key in ("retimed_throughput_ratio_b256_vs_ort_fp32",
                               "throughput_ratio_b256_vs_ort_fp32") if f"{key}_interval" in deployed)
    smaller = teacher["size_bytes"] / deployed["size_bytes"]
    return [hard, {
        "target": target,
        "value": f"{deployed['candidate']}: {smaller:.1f}x smaller, {ratio_text(deployed, key)} "
                 f"at batch 256, test drop {deployed['accuracy_drop_pp']:.2f} pp",
        "met": smaller >= 4 and interval_met(deployed, key, 2)
               and within_drop(deployed["accuracy_drop_pp"], 1.0)}]


def low_bit_rows(rows: list[dict], task: str) -> list[dict]:
    """`task`'s quantize candidates with weights in fewer than 8 bits, each with
    `smaller_than_int8_weights`: the size of the same model's int8 weight-only file over its own
    (absent when that file was not made)."""
    task_rows = [row for row in rows if row["task"] == task and row["kind"] == "quantized"]
    int8 = {row["parent"]: row for row in task_rows if row["method"] == "int8_weights"}
    return [{**row, **({"smaller_than_int8_weights": int8[row["parent"]]["size_bytes"]
                        / row["size_bytes"]} if row["parent"] in int8 else {})}
            for row in task_rows if row["method"] in LOW_BIT]


def low_bit_check(rows: list[dict], task: str) -> dict:
    """Among `task`'s 4-bit, ternary and binary files that are on compare's front,
    `LOW_BIT_SMALLER` times smaller than the same model's int8 weight-only file and within
    `LOW_BIT_DROP_PP` of the teacher on validation, the most accurate on validation (then the
    smallest); its test drop must be within `LOW_BIT_DROP_PP` too."""
    target = (f"{task}: a 4-bit, ternary or binary file on compare's front, >= "
              f"{LOW_BIT_SMALLER}x smaller than the same model's int8 weight-only file, within "
              f"{LOW_BIT_DROP_PP} pp of the teacher on test (picked on validation)")
    made = low_bit_rows(rows, task)
    eligible = [row for row in made if row["pareto"]
                and row.get("smaller_than_int8_weights", 0.0) >= LOW_BIT_SMALLER
                and within_drop(row["val_accuracy_drop_pp"], LOW_BIT_DROP_PP)]
    if not eligible:
        best = max(made, key=lambda row: row.get("smaller_than_int8_weights", 0.0), default=None)
        return {"target": target, "met": False,
                "value": "no low-bit file made" if best is None else
                         f"none on the front within {LOW_BIT_DROP_PP} pp on validation and "
                         f"{LOW_BIT_SMALLER}x smaller; the smallest against its int8 file: "
                         f"{best['candidate']}, {best.get('smaller_than_int8_weights', 0.0):.2f}x, "
                         f"validation drop {best['val_accuracy_drop_pp']:.2f} pp, "
                         f"{'on' if best['pareto'] else 'off'} the front"}
    pick = max(eligible, key=lambda row: (row["val_accuracy"], -row["size_bytes"]))
    return {"target": target,
            "value": f"{pick['candidate']}: {pick['smaller_than_int8_weights']:.2f}x smaller than "
                     f"its int8 weight-only file ({int(pick['size_bytes']):,} bytes), test drop "
                     f"{pick['accuracy_drop_pp']:.2f} pp (validation "
                     f"{pick['val_accuracy_drop_pp']:.2f} pp)",
            "met": within_drop(pick["accuracy_drop_pp"], LOW_BIT_DROP_PP)}


def floor_check(rows: list[dict], task: str) -> dict:
    """`task`'s deployed model, timed again after the choice: its batch-1 latency in ONNX Runtime
    against one MatMul of the input's width (the runtime's floor, timed in the same rounds), the
    whole interval at most `FLOOR_RATIO`, while within `FLOOR_DROP_PP` of params.yaml's teacher on
    test; by how much it misses when it does."""
    target = (f"{task} deployed: batch-1 latency <= {FLOOR_RATIO}x one MatMul of the input's "
              f"width in ONNX Runtime (the floor, timed in the same run), within {FLOOR_DROP_PP} pp "
              "of params.yaml's teacher on test")
    key = "latency_vs_matmul_b1"
    row = next((row for row in rows if row["task"] == task and row["deployed"]), None)
    if row is None or f"{key}_interval" not in row or "vs_params_yaml_teacher" not in row:
        return {"target": target, "value": "not timed against the floor", "met": False}
    drop = row["vs_params_yaml_teacher"]["accuracy_drop_pp"]
    slowest = row[f"{key}_interval"][1]
    fast, close = slowest <= FLOOR_RATIO, within_drop(drop, FLOOR_DROP_PP)
    misses = ([] if fast else [f"latency up to {slowest / FLOOR_RATIO:.2f}x the target"]) + \
             ([] if close else [f"accuracy {drop - FLOOR_DROP_PP:.2f} pp beyond it"])
    return {"target": target,
            "value": f"{row['candidate']}: {ratio_text(row, key)} the MatMul's "
                     f"{row['floor_us_b1']['matmul']:.1f} µs ({row['latency_us_b1']:.1f} µs), test "
                     f"drop {drop:.2f} pp vs params.yaml's teacher"
                     + (f"; {', '.join(misses)}" if misses else ""),
            "met": fast and close}


def serving_check(serving: dict) -> dict:
    """shrinkflow serve against mlflow models serve: requests/s counts answered requests only,
    and one failed request in any round, at any concurrency, fails the check."""
    low, high = serving["rps_ratio_range"]
    errors = sum(measured[f"{server}_errors"] for measured in (serving, *(
        value for key, value in serving.items() if key.startswith("c") and isinstance(value, dict)))
        for server in ("shrinkflow", "mlflow"))
    return {"target": "serving: shrinkflow serve >= 2x the requests/s of mlflow models serve at "
                      "concurrency 8, with a lower p99 (every round's ratio >= 2), no failed request",
            "value": f"{serving['rps_ratio']:.2f}x [{low:.2f}, {high:.2f}]; p99 "
                     f"{serving['shrinkflow_p99_ms']:.1f} vs {serving['mlflow_p99_ms']:.1f} ms; "
                     f"{errors} failed requests",
            "met": errors == 0 and low >= 2 and serving["shrinkflow_p99_ms"] < serving["mlflow_p99_ms"]}


def pruning_check(pruning: dict) -> dict:
    return {"target": "structured pruning at 50% channels: >= 1.3x faster on torch",
            "value": ratio_text(pruning, "speedup"), "met": pruning["speedup_interval"][0] >= 1.3}


def cached_rerun_check(pipeline: dict) -> dict:
    return {"target": f"cached re-run <= {CACHED_RERUN_TARGET_PCT:.0f}% of a full run",
            "value": f"{pipeline['cached_rerun_pct']:.1f}%",
            "met": pipeline["cached_rerun_pct"] <= CACHED_RERUN_TARGET_PCT}


def table_check(table: dict) -> dict:
    rows = f"{table['rows']:,}"
    return {"target": f"a full default run on a {rows}-row table (numbers, text, gaps) "
                      f"<= {TABLE_RUN_TARGET_S / 60:.0f} minutes",
            "value": f"{table['full_run_s'] / 60:.1f} minutes (prepare alone "
                     f"{table['prepare_s']:.0f} s, peak memory {table['prepare_peak_rss_mb']:.0f} MB;"
                     f" on {table['floor_rows']:,} rows {table['floor_prepare_s']:.0f} s, "
                     f"{table['floor_peak_rss_mb']:.0f} MB)",
            "met": table["full_run_s"] <= TABLE_RUN_TARGET_S}


def search_checks(search: dict) -> list[dict]:
    grid, tpe = search["grid_best_accuracy"], search["tpe_hyperband_best_accuracy"]
    mine, theirs = search["teacher"]["searched"], search["teacher"]["params_yaml"]
    ratio = search["trials_per_min_2_workers"] / search["trials_per_min_1_worker"]
    return [
        {"target": "search: TPE + Hyperband within 0.5 pp of the grid's best validation accuracy "
                   "with <= 1/3 of its training epochs",
         "value": f"{tpe:.4f} vs {grid:.4f} ({100 * (tpe - grid):+.2f} pp), "
                  f"{search['tpe_hyperband_epochs']} vs {search['grid_epochs']} epochs",
         "met": within_drop(100 * (grid - tpe), 0.5)
                and 3 * search["tpe_hyperband_epochs"] <= search["grid_epochs"]},
        {"target": "search: 2 Dask workers complete >= 1.5x the trials per minute of 1",
         "value": f"{search['trials_per_min_2_workers']:.1f} vs "
                  f"{search['trials_per_min_1_worker']:.1f} per minute ({ratio:.2f}x)",
         "met": ratio >= 1.5},
        {"target": "search: the default budget adds <= 25% to a full default run on digits",
         "value": f"+{search['default_search_added_pct']:.1f}% (every stage called directly, "
                  f"search on vs off); the search's own {search['default_search_s']:.1f} s "
                  f"(study and confirmation) are {search['default_search_own_pct']:.1f}% of "
                  "the run without it",
         "met": max(search["default_search_added_pct"], search["default_search_own_pct"]) <= 25},
        {"target": "search: the searched digits teacher beats params.yaml's on validation, or "
                   "matches it with fewer parameters (both trained for the full epochs)",
         "value": f"{mine['val_accuracy']:.4f} val, {int(mine['params_count']):,} params vs "
                  f"{theirs['val_accuracy']:.4f}, {int(theirs['params_count']):,} "
                  f"(the study proposed: {search['default_choice']}; then "
                  f"{search['default_confirmation']})",
         "met": (mine["val_accuracy"], -mine["params_count"])
                > (theirs["val_accuracy"], -theirs["params_count"])},
    ]


