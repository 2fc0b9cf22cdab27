"""One study shared by several workers on a busy machine: no trial runs twice, no search crashes.

Regression tests of a search that ended with Optuna's "Cannot tell a COMPLETE trial" on a loaded
2-core machine: two workers started the same queued trial (SQLite let both read it as waiting),
and a worker starved past its heartbeat's grace period had its trial failed and retried under it.
The storage is the stage's (`tasks.services.studies.storage`: BEGIN IMMEDIATE on SQLite, heartbeats); the
loop that runs and tells the trials is the core's (`shrinkflow.search.study.optimize`).
"""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from shrinkflow.search import study
from tasks.services import studies

pytestmark = pytest.mark.integration
QUEUED = 200


def _open(url: str, heartbeat_s: int = 10) -> optuna.Study:
    return study.create(studies.storage(url, heartbeat_s), "shared", ["maximize"],
                        optuna.samplers.RandomSampler(seed=0))


def test_two_workers_never_start_the_same_queued_trial(tmp_path):
    # given many queued trials and two workers, each with its own connection, popping at once
    url = f"sqlite:///{tmp_path / 'study.db'}"
    first = _open(url)
    for value in range(QUEUED):
        first.enqueue_trial({"x": float(value)})
    started: list[list[int]] = [[], []]
    ready = threading.Barrier(2)

    def pop_all(worker: int) -> None:
        mine = _open(url)
        ready.wait()
        while (trial_id := mine._pop_waiting_trial_id()) is not None:
            started[worker].append(trial_id)

    workers = [threading.Thread(target=pop_all, args=(k,)) for k in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    # then every queued trial was started exactly once
    twice = set(started[0]) & set(started[1])
    assert not twice, f"trials {sorted(twice)} were started by both workers"
    assert len(started[0]) + len(started[1]) == QUEUED


def test_a_trial_finished_elsewhere_meanwhile_does_not_end_the_search(tmp_path, caplog):
    # given a trial that another worker completes while this one still trains it
    url = f"sqlite:///{tmp_path / 'study.db'}"
    opened, elsewhere = _open(url), _open(url)

    def objective(trial: optuna.Trial) -> float:
        if trial.number == 0:
            elsewhere.tell(trial.number, 0.25)  # the other worker's result lands first
        return 0.5

    # when the search runs to its budget
    with caplog.at_level(logging.WARNING, logger="shrinkflow.search"):
        study.optimize(opened, objective, trials=3, timeout_s=None)
    # then it finished, the other worker's result stands and the log says what happened
    trials = opened.get_trials()
    assert [trial.state for trial in trials] == [TrialState.COMPLETE] * 3
    assert [trial.value for trial in trials] == [0.25, 0.5, 0.5]
    assert "trial 0 was finished elsewhere (complete)" in caplog.text


WORKER = """
import sys, time
from pathlib import Path
import optuna
from shrinkflow.search import study
from tasks.services import studies
folder = Path(sys.argv[1])
opened = study.create(studies.storage(f"sqlite:///{folder / 'study.db'}", 1), "shared", ["maximize"],
                      optuna.samplers.RandomSampler(seed=0))
def objective(trial):
    (folder / "started").touch()
    while not (folder / "go").exists():
        time.sleep(0.05)
    return 0.5
study.optimize(opened, objective, trials=1, timeout_s=None)
"""


def _wait_for(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up after {seconds:.0f} s waiting for {what}")
        time.sleep(0.05)


def _stop_holding_no_lock(pid: int, database: Path) -> None:
    """SIGSTOP the process at a moment it holds no SQLite lock (its heartbeat thread writes every
    second: stopped inside that write, it would lock everyone else out of the study)."""
    for _ in range(100):
        os.kill(pid, signal.SIGSTOP)
        probe = sqlite3.connect(database, timeout=0.5, isolation_level=None)
        try:
            probe.execute("BEGIN IMMEDIATE")
            probe.execute("ROLLBACK")
            return
        except sqlite3.OperationalError:
            os.kill(pid, signal.SIGCONT)
            time.sleep(0.05)
        finally:
            probe.close()
    pytest.fail("the worker held the study's lock every time it was stopped")


@pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="needs POSIX job control signals")
def test_a_starved_worker_whose_trial_was_retried_finishes_cleanly(tmp_path):
    # given a worker (heartbeat 1 s) stopped by the OS in the middle of its trial
    url = f"sqlite:///{tmp_path / 'study.db'}"
    opened = _open(url, heartbeat_s=1)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    worker = subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path)], env=env,
                              stderr=subprocess.PIPE, text=True)
    try:
        _wait_for((tmp_path / "started").exists, 120, "the worker's trial to start")
        _stop_holding_no_lock(worker.pid, tmp_path / "study.db")
        storage = opened._storage
        _wait_for(lambda: storage._get_stale_trial_ids(opened._study_id), 60,
                  "the stopped worker's heartbeat to go stale")
        # when another worker fails it as stale, and trains its queued retry to the budget
        study.optimize(opened, lambda trial: 0.75, trials=1, timeout_s=None)
        os.kill(worker.pid, signal.SIGCONT)
        (tmp_path / "go").touch()
        _, stderr = worker.communicate(timeout=120)
    finally:
        if worker.poll() is None:
            os.kill(worker.pid, signal.SIGCONT)
            worker.kill()
    # then the starved worker ends without an error, its stale result dropped, and the study
    # holds the failed trial and its completed retry
    assert worker.returncode == 0, stderr[-2000:]
    assert "was finished elsewhere (fail)" in stderr
    states = [(trial.state, trial.value) for trial in opened.get_trials()]
    assert states == [(TrialState.FAIL, None), (TrialState.COMPLETE, 0.75)]
