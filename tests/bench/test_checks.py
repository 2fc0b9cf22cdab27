"""The benchmark's checks: each one passes on figures that meet its target and fails on a case that
must fail; a section that raises leaves the others' figures and fails the bench."""

from __future__ import annotations

import itertools
import json
import sys

import numpy as np
import pytest

from bench import checks
from bench.report import markdown


def _row(candidate: str, task: str = "mnist1d", **figures) -> dict:
    return {"task": task, "candidate": candidate, "file": f"models/{candidate}/model.onnx",
            "kind": "quantized", "deployed": False, "val_accuracy": 0.95, "accuracy": 0.95,
            "size_bytes": 1000, "latency_ms_p50_b1": 0.1, **figures}


def _teacher(**figures) -> dict:
    return _row("baseline-fp32-onnx", file="models/baseline/model.onnx", kind="baseline",
                val_accuracy=0.96, size_bytes=10_000, latency_ms_p50_b1=0.2, **figures)


class TestHypervolume:
    def test_one_point_dominates_its_box(self):
        assert checks.hypervolume([(0.5, 0.5, 0.5)]) == pytest.approx(0.125)

    def test_matches_a_brute_force_count_on_a_grid(self):
        points = np.random.default_rng(0).uniform(0, 1, (7, 3))
        grid = (np.arange(60) + 0.5) / 60
        cells = np.array(list(itertools.product(grid, grid, grid)))
        dominated = (cells[:, None, :] >= points[None, :, :]).all(axis=2).any(axis=1)
        assert checks.hypervolume(points.tolist()) == pytest.approx(dominated.mean(), abs=0.01)

    def test_points_beyond_the_reference_add_nothing(self):
        assert checks.hypervolume([(1.2, 0.1, 0.1), (0.5, 0.5, 1.0)]) == 0.0


class TestRecipeCheck:
    def test_a_recipe_that_beats_the_hand_set_candidates_adds_hypervolume(self):
        rows = [_teacher(), _row("pruned"), _row("recipe-3", kind="searched", size_bytes=500)]
        check = checks.recipe_check(rows)
        assert check["met"], check
        assert check["hypervolume_with_recipes"] > check["hypervolume_without_recipes"] > 0

    def test_recipes_dominated_by_the_hand_set_candidates_fail(self):
        # the recipe is on no front of its own: worse on every objective than `pruned`
        rows = [_teacher(), _row("pruned"),
                _row("recipe-3", kind="searched", val_accuracy=0.94, size_bytes=2000,
                     latency_ms_p50_b1=0.15)]
        check = checks.recipe_check(rows)
        assert not check["met"]
        assert check["hypervolume_with_recipes"] == pytest.approx(check["hypervolume_without_recipes"])

    def test_no_recipe_candidates_fail(self):
        assert not checks.recipe_check([_teacher(), _row("pruned")])["met"]


class TestDistillationCheck:
    GAINS = {"wide.val_kd_gain_pp": 0.5, "wide.kd_gain_pp": 3.0,
             "narrow.val_kd_gain_pp": 2.5, "narrow.kd_gain_pp": 1.0}

    def test_the_student_is_picked_on_validation_not_on_test(self):
        # wide gains most on test, narrow on validation: narrow is judged, and misses
        check = checks.distillation_check("mnist1d", self.GAINS)
        assert check["value"].startswith("narrow: +1.00 pp") and not check["met"]

    def test_a_student_picked_on_validation_that_gains_on_test_passes(self):
        gains = {**self.GAINS, "narrow.kd_gain_pp": 2.4, "narrow.soft_label_gain_pp": 1.5,
                 "narrow.pool_gain_pp": 0.9}
        check = checks.distillation_check("mnist1d", gains)
        assert check["met"]
        assert "soft labels on the labeled rows +1.50 pp, the unlabeled pool +0.90 pp" in check["value"]

    def test_no_student_trained_both_ways_fails(self):
        assert not checks.distillation_check("mnist1d", {"unlabeled_rows": 10})["met"]


def _serving(**changes) -> dict:
    measured = {"concurrency": 8, "rps_ratio": 3.0, "rps_ratio_range": [2.5, 3.5],
                "shrinkflow_p99_ms": 2.0, "mlflow_p99_ms": 9.0, "shrinkflow_errors": 0,
                "mlflow_errors": 0}
    return {**measured, "c1": {**measured, "concurrency": 1}, **changes}


class TestServingCheck:
    def test_a_faster_server_without_errors_passes(self):
        assert checks.serving_check(_serving())["met"]

    @pytest.mark.parametrize("where", ["top", "c1"])
    def test_one_failed_request_in_any_round_fails(self, where):
        report = _serving()
        (report if where == "top" else report["c1"])["mlflow_errors"] = 1
        check = checks.serving_check(report)
        assert not check["met"] and "1 failed requests" in check["value"]

    def test_a_round_below_twice_the_rate_fails(self):
        assert not checks.serving_check(_serving(rps_ratio_range=[1.9, 3.5]))["met"]


class TestDeployedChecks:
    def _deployed(self, **changes) -> dict:
        return {**self._meeting(), **changes}

    def _meeting(self) -> dict:
        return _row("student-int8", task="digits", deployed=True, size_ratio=30,
                    accuracy_drop_pp=0.28, speedup_b1_vs_torch=20.0,
                    speedup_b1_vs_torch_interval=[19.0, 21.0], speedup_b1_vs_ort_fp32=2.5,
                    speedup_b1_vs_ort_fp32_interval=[2.4, 2.6],
                    retimed_speedup_b1_vs_torch=15.0, retimed_speedup_b1_vs_torch_interval=[13, 17],
                    retimed_speedup_b1_vs_ort_fp32=2.2,
                    retimed_speedup_b1_vs_ort_fp32_interval=[2.1, 2.3])

    def test_targets_met_in_the_fresh_rounds_pass(self):
        assert all(check["met"] for check in checks.deployed_checks([self._deployed()], "digits"))

    def test_the_speed_targets_read_the_fresh_rounds_not_the_choosing_ones(self):
        # compare's rounds (which chose it) clear 2x; timed again, the interval does not
        row = self._deployed(retimed_speedup_b1_vs_ort_fp32_interval=[1.8, 2.3])
        met = {check["target"]: check["met"] for check in checks.deployed_checks([row], "digits")}
        assert [target for target, ok in met.items() if not ok] == [
            "digits deployed: >= 2x faster than fp32 ONNX Runtime at batch 1 (timed again after "
            "the choice)"]

    def test_a_candidate_never_timed_again_fails_its_speed_targets(self):
        row = {key: value for key, value in self._deployed().items()
               if not key.startswith("retimed_")}
        found = checks.deployed_checks([row], "digits")
        assert [check["met"] for check in found] == [True, False, False, True]
        assert found[1]["value"] == "not measured"

    def test_nothing_deployed_fails_every_target(self):
        assert not any(check["met"] for check in checks.deployed_checks([_row("x")], "digits"))


class TestImageChecks:
    def _rows(self, teacher_accuracy: float = 0.97, **deployed) -> list[dict]:
        teacher = _teacher(task=checks.IMAGES_TASK, accuracy=teacher_accuracy)
        chosen = _row("structured-50-int8_static", task=checks.IMAGES_TASK, deployed=True,
                      size_bytes=2_000, accuracy_drop_pp=0.5,
                      throughput_ratio_b256_vs_ort_fp32=3.0,
                      throughput_ratio_b256_vs_ort_fp32_interval=[2.6, 3.3],
                      retimed_throughput_ratio_b256_vs_ort_fp32=2.5,
                      retimed_throughput_ratio_b256_vs_ort_fp32_interval=[2.2, 2.8])
        return [teacher, {**chosen, **deployed}]

    def test_a_hard_task_and_a_small_fast_close_candidate_pass(self):
        hard, deployed = checks.image_checks(self._rows())
        assert hard["met"] and deployed["met"]
        assert deployed["value"] == ("structured-50-int8_static: 5.0x smaller, 2.50x [2.20, 2.80] "
                                     "at batch 256, test drop 0.50 pp")

    @pytest.mark.parametrize("change", [
        {"size_bytes": 2_600},  # 3.8x smaller
        {"retimed_throughput_ratio_b256_vs_ort_fp32_interval": [1.9, 2.8]},  # fresh rounds
        {"accuracy_drop_pp": 1.25},
    ])
    def test_a_candidate_short_of_one_target_fails(self, change):
        assert not checks.image_checks(self._rows(**change))[1]["met"]

    def test_a_teacher_at_99_percent_leaves_nothing_to_lose_and_fails(self):
        assert not checks.image_checks(self._rows(teacher_accuracy=0.99))[0]["met"]

    def test_nothing_deployed_fails(self):
        rows = [row for row in self._rows() if not row["deployed"]]
        assert checks.image_checks(rows)[1]["value"] == "nothing deployed"
        assert not checks.image_checks(rows)[1]["met"]


class TestLowBitCheck:
    def _rows(self, **ternary) -> list[dict]:
        def quantized(method: str, size: int, **figures) -> dict:
            return _row(f"student-kd-{method}", **{
                "parent": "student-kd", "method": method, "size_bytes": size, "pareto": False,
                "val_accuracy_drop_pp": 0.0, "accuracy_drop_pp": 0.0, **figures})

        return [_teacher(method="fp32", parent="baseline"), quantized("int8_weights", 9_000),
                quantized("int4_weights", 5_300, pareto=True, val_accuracy=0.96),  # 1.7x
                quantized("ternary", 3_000.0, **{"pareto": True, "accuracy_drop_pp": 0.25,
                                               "val_accuracy_drop_pp": 0.2, **ternary})]

    def test_a_small_close_file_on_the_front_passes_and_is_reported_against_its_int8_file(self):
        check = checks.low_bit_check(self._rows(), "mnist1d")
        assert check["met"], check
        assert check["value"] == ("student-kd-ternary: 3.00x smaller than its int8 weight-only "
                                  "file (3,000 bytes), test drop 0.25 pp (validation 0.20 pp)")

    @pytest.mark.parametrize("change", [
        {"pareto": False},  # dominated: the 4-bit file (1.7x) is no substitute
        {"size_bytes": 5_100},  # 1.76x smaller than its int8 weight-only file
        {"val_accuracy_drop_pp": 0.75},  # too far on validation: not picked
        {"accuracy_drop_pp": 0.75},  # picked on validation, too far on test
    ])
    def test_a_file_short_of_one_target_fails(self, change):
        assert not checks.low_bit_check(self._rows(**change), "mnist1d")["met"]

    def test_the_report_sets_each_low_bit_file_beside_its_int8_file(self):
        from bench.report import low_bit_lines

        lines = low_bit_lines(self._rows())
        assert "| mnist1d | student-kd-ternary | 3,000 | 3.00x | 0.9500 (0.20) | 0.9500 (0.25) | yes |" \
            in lines
        assert "| mnist1d | student-kd-int4_weights | 5,300 | 1.70x | 0.9600 (0.00) | 0.9500 (0.00) | yes |" \
            in lines
        assert low_bit_lines(self._rows()[:2]) == []

    def test_no_low_bit_file_fails(self):
        rows = [row for row in self._rows() if row["method"] not in checks.LOW_BIT]
        check = checks.low_bit_check(rows, "mnist1d")
        assert not check["met"] and check["value"] == "no low-bit file made"


class TestFloorCheck:
    def _rows(self, interval=(1.3, 1.45), drop: float = 0.28) -> list[dict]:
        return [_row("student-kd-int8_weights", task="digits", deployed=True,
                     latency_vs_matmul_b1=1.4, latency_vs_matmul_b1_interval=list(interval),
                     latency_us_b1=12.6, floor_us_b1={"identity": 8.1, "matmul": 9.0},
                     vs_params_yaml_teacher={"accuracy_drop_pp": drop})]

    def test_close_to_the_floor_and_to_the_teacher_passes(self):
        check = checks.floor_check(self._rows(), "digits")
        assert check["met"] and check["value"] == (
            "student-kd-int8_weights: 1.40x [1.30, 1.45] the MatMul's 9.0 µs (12.6 µs), test drop "
            "0.28 pp vs params.yaml's teacher")

    def test_a_miss_fails_and_says_by_how_much(self):
        check = checks.floor_check(self._rows(interval=(1.35, 1.6), drop=0.56), "digits")
        assert not check["met"]
        assert check["value"].endswith("; latency up to 1.07x the target, accuracy 0.26 pp beyond it")

    def test_a_model_not_timed_against_the_floor_fails(self):
        rows = [{key: value for key, value in self._rows()[0].items()
                 if not key.startswith("latency_vs")}]
        assert not checks.floor_check(rows, "digits")["met"]


TABLE = {"rows": 500_000, "csv_mb": 79.0, "prepare_s": 53.2, "prepare_peak_rss_mb": 1517.0,
         "floor_rows": 2_000, "floor_prepare_s": 9.4, "floor_peak_rss_mb": 488.0,
         "full_run_s": 1500.0, "deployed": "student-kd-int8_weights",
         "deployed_test_accuracy": 0.801, "teacher_test_accuracy": 0.804,
         "prepare_metrics": {"n_columns": 9, "missing_values": 85_000, "n_features": 58}}


class TestTableCheck:
    def test_a_run_within_thirty_minutes_meets_it_and_says_prepare_s_figures(self):
        check = checks.table_check(TABLE)
        assert check["met"] and check["value"] == ("25.0 minutes (prepare alone 53 s, peak memory "
                                                   "1517 MB; on 2,000 rows 9 s, 488 MB)")

    def test_a_run_over_thirty_minutes_fails(self):
        assert not checks.table_check({**TABLE, "full_run_s": 1801.0})["met"]

    def test_the_report_shows_the_table_and_its_figures(self):
        text = markdown({"sections_failed": [], "machine": {}, "table": TABLE})
        assert "## A user table" in text and "500,000 rows (79 MB of CSV): 9 feature columns" in text
        assert "| prepare alone: peak memory (MB) | 1517 |" in text
        assert "| prepare on 2,000 rows of it (the floor): peak memory (MB) | 488 |" in text
        assert ("Deployed: student-kd-int8_weights, test accuracy 0.8010 against the teacher's "
                "0.8040.") in text


def test_a_failed_section_keeps_the_others_and_fails_the_bench(tmp_path, monkeypatch, capsys):
    from bench import run

    # given a bench whose pipeline section measures and whose compression section raises
    monkeypatch.setattr(sys, "argv", ["run.py", "--tasks", "breast_cancer", "--output",
                                      str(tmp_path)])
    monkeypatch.setattr(run, "pipeline_timings", lambda workdir: (
        {"full_run_s": 100.0, "cached_rerun_s": 5.0, "direct_calls_s": 90.0,
         "orchestration_overhead_pct": 11.1, "cached_rerun_pct": 5.0,
         "stages_at_once": {"at_once": 3, "one_at_a_time_s": 100.0, "side_by_side_s": 110.0,
                            "saved_s": -10.0, "saved_pct": -10.0}}, {}))

    def broken(*args):
        raise ValueError("Cannot tell a COMPLETE trial.")

    monkeypatch.setattr(run, "compression", broken)
    # when it runs, then it exits non-zero naming the section
    with pytest.raises(SystemExit, match="sections failed: compression"):
        run.main()
    # and the report holds what was measured, with the failed section marked
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["pipeline"]["full_run_s"] == 100.0
    assert report["sections_failed"] == [{"section": "compression",
                                          "error": "ValueError: Cannot tell a COMPLETE trial."}]
    assert report["targets"] == [checks.cached_rerun_check(report["pipeline"])]
    assert "Sections that failed** (their figures are missing below): compression" in \
        (tmp_path / "bench.md").read_text()
    assert "110.0 s against 100.0 s one at a time, -10.0 s (-10.0%) saved" in \
        (tmp_path / "bench.md").read_text()
    assert markdown(report) == (tmp_path / "bench.md").read_text()


def test_a_report_that_cannot_be_rendered_keeps_its_figures_and_fails_the_bench(tmp_path):
    from bench.run import Sections

    # given: a report whose search figures are partial (its section failed half-way)
    sections = Sections(tmp_path)
    sections.report.update({"machine": {}, "search": {"hypervolume_with_recipes": 0.5},
                            "table": TABLE})
    # when it is written
    sections.write()
    # then: every figure is in bench.json, the page says why it is short, and it counts as failed
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["table"]["full_run_s"] == TABLE["full_run_s"]
    assert report["sections_failed"] == [{"section": "report",
                                          "error": "KeyError: 'default_search_s'"}]
    assert "every figure is in bench.json" in (tmp_path / "bench.md").read_text()
