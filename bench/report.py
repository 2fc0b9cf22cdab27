"""reports/bench.md: the benchmark's figures for people, from the report `bench/run.py` builds.

Each part is drawn only when its section measured something: a bench whose later section failed
still shows the earlier ones, and names the failed sections first.
"""

from __future__ import annotations

from bench.checks import CACHED_RERUN_TARGET_PCT, UNSEARCHED, low_bit_rows, ratio_text


def serving_lines(report: dict) -> list[str]:
    lines = ["## Serving", "",
             f"`{report['model']}` ({report['candidate']}), one raw row per request to "
             "`/invocations` on keep-alive connections from an asyncio load generator on the same "
             f"machine; the servers take turns over {report['rounds']} rounds of "
             f"{report['round_seconds']:.0f} s, after checking that they label the rows alike. "
             "Medians over the rounds; the ratio's range is over the rounds.", "",
             "| concurrency | server | requests/s | p50 ms | p99 ms | errors |",
             "|---:|---|---:|---:|---:|---:|"]
    for measured in (report["c1"], report):
        for server in ("shrinkflow", "mlflow"):
            lines.append(f"| {measured['concurrency']} | {server} | {measured[f'{server}_rps']:.0f} "
                         f"| {measured[f'{server}_p50_ms']:.2f} | {measured[f'{server}_p99_ms']:.2f} "
                         f"| {measured[f'{server}_errors']} |")
    for measured in (report["c1"], report):
        low, high = measured["rps_ratio_range"]
        lines.append(f"\nAt concurrency {measured['concurrency']}, `shrinkflow serve` answers "
                     f"{measured['rps_ratio']:.2f}x [{low:.2f}, {high:.2f}] the requests per "
                     "second of `mlflow models serve`.")
    return lines + [""]


def table_lines(table: dict) -> list[str]:
    metrics = table["prepare_metrics"]
    deployed = table["deployed"] or "none"
    accuracy = (f"test accuracy {table['deployed_test_accuracy']:.4f} against the teacher's "
                f"{table['teacher_test_accuracy']:.4f}" if table["deployed_test_accuracy"]
                is not None else "nothing deployable")
    return ["## A user table", "",
            f"A generated table (bench/tables.py) of {table['rows']:,} rows "
            f"({table['csv_mb']:.0f} MB of CSV): {metrics['n_columns']} feature columns, text "
            f"among them, {metrics['missing_values']:,} missing values, encoded to "
            f"{metrics['n_features']} model inputs.", "",
            "| measure | value |", "|---|---:|",
            f"| prepare alone: seconds | {table['prepare_s']:.1f} |",
            f"| prepare alone: peak memory (MB) | {table['prepare_peak_rss_mb']:.0f} |",
            f"| prepare on {table['floor_rows']:,} rows of it (the floor): seconds | "
            f"{table['floor_prepare_s']:.1f} |",
            f"| prepare on {table['floor_rows']:,} rows of it (the floor): peak memory (MB) | "
            f"{table['floor_peak_rss_mb']:.0f} |",
            f"| full default run (`shrinkflow run`): seconds | {table['full_run_s']:.1f} |", "",
            f"Deployed: {deployed}, {accuracy}."]


def search_lines(search: dict) -> list[str]:
    return ["## Search", "",
            f"The default teacher search took {search['default_search_s']:.1f} s: the study "
            f"{search['default_study_s']:.1f} s, and training its proposal's rival for the full "
            f"budget {search['default_confirm_s']:.1f} s, {search['default_search_own_pct']:.1f}% "
            "of the pipeline without the search. Called directly, the whole pipeline took "
            f"{search['default_search_added_pct']:.1f}% longer with the search than without "
            "(a teacher the search made smaller also speeds up the stages after it). The study "
            f"proposed {search['default_choice']}; then {search['default_confirmation']}.", "",
            "| teacher (full epochs) | val acc | test acc | params |", "|---|---:|---:|---:|",
            *(f"| {name} | {row['val_accuracy']:.4f} | {row['accuracy']:.4f} | "
              f"{int(row['params_count']):,} |" for name, row in (
                  ("searched", search["teacher"]["searched"]),
                  ("params.yaml", search["teacher"]["params_yaml"]))), "",
            f"On a fixed space of {search['grid_points']} points (up to {search['epochs_per_trial']} "
            "epochs per trial):", "",
            "| study | best val accuracy | training epochs |", "|---|---:|---:|",
            f"| exhaustive grid | {search['grid_best_accuracy']:.4f} | {search['grid_epochs']} |",
            f"| TPE + Hyperband, {search['tpe_trials']} trials | "
            f"{search['tpe_hyperband_best_accuracy']:.4f} | {search['tpe_hyperband_epochs']} |", "",
            f"Random-sampler trials per minute: {search['trials_per_min_1_worker']:.1f} on one "
            f"worker, {search['trials_per_min_2_workers']:.1f} on two Dask workers (one run each)."]


def _machine(report: dict) -> list[str]:
    machine = report.get("machine", {})
    lines = ["# shrinkflow benchmark", ""]
    if report.get("sections_failed"):
        lines += ["**Sections that failed** (their figures are missing below): "
                  + "; ".join(f"{failed['section']}: {failed['error'].splitlines()[0]}"
                              for failed in report["sections_failed"]), ""]
    if machine:
        lines += [f"{machine['cpu']}, {machine['cores']} cores, {machine['threads']} thread(s) for "
                  f"inference; torch {machine['torch']}, onnxruntime {machine['onnxruntime']}. "
                  "Every speed ratio compares models timed side by side in one process, with its "
                  "95% bootstrap interval over the timing rounds.", ""]
    return lines


def _pipeline(pipeline: dict) -> list[str]:
    verdict = "meets" if pipeline["cached_rerun_pct"] <= CACHED_RERUN_TARGET_PCT else "MISSES"
    return ["## Pipeline", "", "| measure | seconds |", "|---|---:|",
            f"| full run (`shrinkflow run`) | {pipeline['full_run_s']:.1f} |",
            f"| cached re-run, nothing changed | {pipeline['cached_rerun_s']:.1f} |",
            f"| stage functions called directly | {pipeline['direct_calls_s']:.1f} |", "",
            f"The cached re-run takes {pipeline['cached_rerun_pct']:.1f}% of the full run "
            f"({verdict} the {CACHED_RERUN_TARGET_PCT:.0f}% target); orchestration adds "
            f"{pipeline['orchestration_overhead_pct']:.0f}% to the stages called directly "
            "(single runs each: these two are not ratios measured side by side).", "",
            *_stages_at_once(pipeline.get("stages_at_once"))]


def _stages_at_once(concurrency: dict | None) -> list[str]:
    if not concurrency:
        return []
    return [f"Independent stages run side by side ({concurrency['at_once']} at once, in processes "
            f"of their own): {concurrency['side_by_side_s']:.1f} s against "
            f"{concurrency['one_at_a_time_s']:.1f} s one at a time, {concurrency['saved_s']:.1f} s "
            f"({concurrency['saved_pct']:.1f}%) saved (two fresh full runs, one after the other; "
            "negative: lost).", ""]


def _compression(report: dict) -> list[str]:
    lines = ["## Compression", "",
             "Validation accuracy is what every choice reads; test accuracy is reported only. "
             "Drops in percentage points against the teacher; the deployed candidate is in bold.",
             ""]
    for task, control in report.get("controls", {}).items():
        lines.append(f"Control on {task}: the baseline's ONNX file timed a second time as another "
                     f"candidate reads {ratio_text(control, 'speedup_b1_vs_ort_fp32')} at batch 1 "
                     f"and {ratio_text(control, 'throughput_ratio_b256_vs_ort_fp32')} at batch 256 "
                     "against itself: the noise floor.")
    lines += ["", "| task | candidate | val acc (drop pp) | test acc (drop pp) | params | bytes | "
              "smaller | p50 ms b1 | vs torch b1 | vs ORT fp32 b1 | vs ORT fp32 b256 |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in report["compression"]:
        name = f"**{row['candidate']}**" if row["deployed"] else row["candidate"]
        lines.append(
            f"| {row['task']} | {name} | {row['val_accuracy']:.4f} "
            f"({row['val_accuracy_drop_pp']:.2f}) | {row['accuracy']:.4f} "
            f"({row['accuracy_drop_pp']:.2f}) | {int(row['params_count'])} | "
            f"{int(row['size_bytes'])} | {row['size_ratio']:.1f}x | "
            f"{row['latency_ms_p50_b1']:.4f} | {ratio_text(row, 'speedup_b1_vs_torch')} | "
            f"{ratio_text(row, 'speedup_b1_vs_ort_fp32')} | "
            f"{ratio_text(row, 'throughput_ratio_b256_vs_ort_fp32')} |")
    return lines


def _number(value: float, fmt: str) -> str:
    return "n/a" if value != value else fmt.format(value)  # NaN: not measured for this row


def _judged(report: dict) -> list[str]:
    """Every candidate beside its teacher as compare judged it (on test; agreement on validation
    too), with its session memory, the seconds it took to make and a second runtime's agreement."""
    lines = ["", "### Judged beside the teacher", "",
             "Top-1 agreement with the teacher and KL divergence from its probabilities, expected "
             "calibration error, the accuracy lost on corrupted inputs (mild and strong), the ONNX "
             "Runtime session's peak memory at batch 1 and 256, the wall seconds the candidate and "
             "what it was made from took, and how often a second runtime gives ONNX Runtime's top "
             "class (n/a: it cannot run the file).", "",
             "| task | candidate | val agreement | agreement | KL | ECE | drop pp mild | drop pp "
             "strong | MB b1 | MB b256 | s to make | 2nd runtime |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in report["compression"]:
        if "agreement" not in row:
            continue
        name = f"**{row['candidate']}**" if row["deployed"] else row["candidate"]
        cells = [_number(row[key], fmt) for key, fmt in (
            ("val_agreement", "{:.4f}"), ("agreement", "{:.4f}"), ("kl_to_teacher", "{:.4f}"),
            ("ece", "{:.4f}"), ("robustness_drop_pp_mild", "{:.2f}"),
            ("robustness_drop_pp_strong", "{:.2f}"), ("memory_mb_b1", "{:.1f}"),
            ("memory_mb_b256", "{:.1f}"), ("cost_seconds", "{:.1f}"),
            ("second_runtime_agreement", "{:.4f}"))]
        lines.append(f"| {row['task']} | {name} | " + " | ".join(cells) + " |")
    return lines


def low_bit_lines(rows: list[dict]) -> list[str]:
    """Every 4-bit, ternary and binary file beside the same model's int8 weight-only file."""
    found = [row for task in dict.fromkeys(row["task"] for row in rows)
             for row in low_bit_rows(rows, task)]
    if not found:
        return []
    lines = ["", "### Weights in fewer than 8 bits", "",
             "Each 4-bit, ternary or binary file against the int8 weight-only file of the same "
             "model, with its accuracy (drop against the teacher) and whether it is on compare's "
             "front (validation accuracy, size, batch-1 latency).", "",
             "| task | candidate | bytes | smaller than int8 weights | val acc (drop pp) | test acc "
             "(drop pp) | on the front |", "|---|---|---:|---:|---:|---:|---|"]
    for row in found:
        smaller = row.get("smaller_than_int8_weights")
        lines.append(f"| {row['task']} | {row['candidate']} | {int(row['size_bytes']):,} | "
                     f"{f'{smaller:.2f}x' if smaller else 'n/a'} | {row['val_accuracy']:.4f} "
                     f"({row['val_accuracy_drop_pp']:.2f}) | {row['accuracy']:.4f} "
                     f"({row['accuracy_drop_pp']:.2f}) | {'yes' if row['pareto'] else 'no'} |")
    return lines


def _deployed(deployed: dict) -> list[str]:
    lines = ["", "## The deployed candidates, timed again", "",
             "After compare's choice, in fresh rounds: the deployed file, the deployable graph users "
             "call (raw rows in, label names out), the fp32 baseline, and the runtime's floor (a "
             "one-node Identity graph, one MatMul of the input's width x classes), all with the "
             "same session settings.", "",
             "| task | candidate | us b1 | served us b1 | samples/s b256 | floor us (identity, "
             "matmul) | times the matmul b1 | vs ORT fp32 b1 | vs ORT fp32 b256 | vs torch b1 | "
             "vs params.yaml teacher |",
             "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---|"]
    for task, found in deployed.items():
        floor = found["floor_us_b1"]
        fixed = found.get("vs_params_yaml_teacher")
        versus = (f"{fixed['size_ratio']:.1f}x smaller, {fixed['accuracy_drop_pp']:+.2f} pp test "
                  f"drop" if fixed else "-")
        lines.append(f"| {task} | {found['candidate']} | {found['latency_us_b1']:.1f} | "
                     f"{found['served_latency_us_b1']:.1f} | {found['throughput_sps_b256']:,.0f} | "
                     f"{floor['identity']:.1f}, {floor['matmul']:.1f} | "
                     f"{ratio_text(found, 'latency_vs_matmul_b1')} | "
                     f"{ratio_text(found, 'retimed_speedup_b1_vs_ort_fp32')} | "
                     f"{ratio_text(found, 'retimed_throughput_ratio_b256_vs_ort_fp32')} | "
                     f"{ratio_text(found, 'retimed_speedup_b1_vs_torch')} | {versus} |")
    return lines


def _distillation(report: dict) -> list[str]:
    lines = []
    for task, metrics in report.get("distillation", {}).items():
        gains = {key.removesuffix(".kd_gain_pp"): value for key, value in metrics.items()
                 if key.endswith(".kd_gain_pp") and not key.endswith(".val_kd_gain_pp")}
        if not gains:
            continue
        unlabeled = metrics.get("unlabeled_rows", 0)
        pool = (f"; the distilled ones also learned from {unlabeled:,} unlabeled inputs the "
                f"teacher labeled" if unlabeled else "")
        lines += ["", f"Distillation on {task}, each student against the same student trained "
                      f"without the teacher (test accuracy; validation in brackets){pool}:", ""]
        for student, gain in sorted(gains.items()):
            split = (f"; soft labels on the labeled rows {metrics[f'{student}.soft_label_gain_pp']:+.2f}"
                     f" pp, the unlabeled pool {metrics[f'{student}.pool_gain_pp']:+.2f} pp more"
                     if f"{student}.soft_label_gain_pp" in metrics else "")
            lines.append(f"- {student}: {gain:+.2f} pp ({metrics[f'{student}.val_kd_gain_pp']:+.2f}"
                         f" pp){split}")
    return lines


def _ensembles(report: dict) -> list[str]:
    lines = []
    for task, ensemble in report.get("ensembles", {}).items():
        weights = ", ".join(f"{name} {weight:.2f}" for name, weight in ensemble["weights"].items())
        lines += ["", f"Ensembles on {task}: " + (f"members {weights} (weights from validation, "
                                                  "used by ensemble-weighted)."
                                                  if weights else f"none ({ensemble['reason']}).")]
    return lines


def markdown(report: dict) -> str:
    lines = _machine(report)
    if report.get("pipeline"):
        lines += _pipeline(report["pipeline"])
    if report.get("compression"):
        lines += _compression(report) + _judged(report) + low_bit_lines(report["compression"])
    if report.get("deployed"):
        lines += _deployed(report["deployed"])
    pruning = report.get("structured_pruning_torch_b1")
    if pruning:
        lines += ["", f"Structured pruning of {UNSEARCHED}, 50% of channels, eager torch batch 1: "
                      f"{ratio_text(pruning, 'speedup')} faster (timed side by side over "
                      f"{pruning['rounds']} rounds)."]
    lines += _distillation(report) + _ensembles(report)
    if report.get("serving"):
        lines += ["", *serving_lines(report["serving"])]
    if report.get("search"):
        lines += ["", *search_lines(report["search"])]
    if report.get("table"):
        lines += ["", *table_lines(report["table"])]
    if report.get("targets"):
        lines += ["", "## Targets", "",
                  "Candidates are picked on validation; targets are read on test. A speed target "
                  "is met when its whole interval clears it.", "",
                  "| target | measured | met |", "|---|---|---|"]
        lines += [f"| {check['target']} | {check['value']} | {'yes' if check['met'] else 'NO'} |"
                  for check in report["targets"]]
    return "\n".join(lines) + "\n"
