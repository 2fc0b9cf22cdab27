"""shrinkflow.progress: a line at most every few seconds, on long steps, through logging (so a log
file gets it as a terminal does)."""

from __future__ import annotations

import logging

from torch import nn

from shrinkflow import train
from shrinkflow.progress import Heartbeat, rate


def test_a_heartbeat_is_due_once_its_interval_has_passed():
    now = [100.0]
    heartbeat = Heartbeat(every=5.0, clock=lambda: now[0])
    seen = []
    for _ in range(12):
        now[0] += 1.0
        seen.append(heartbeat.due())
    # due at 5 s and 10 s after it was made, and not between
    assert [step for step, due in enumerate(seen, 1) if due] == [5, 10]


def test_rate_rounds_to_three_figures():
    assert rate(123456, 2.0) == "61,700 rows/s" and rate(5, 0.0) == "0 rows/s"


def test_fit_logs_where_it_is_without_a_terminal(separable, cpu_train_cfg, monkeypatch, caplog):
    # given a heartbeat due at every batch, and no progress bar
    monkeypatch.setattr(train, "Heartbeat", lambda: Heartbeat(every=0.0))
    train_split, val_split = separable
    with caplog.at_level(logging.INFO, logger="shrinkflow.train"):
        train.fit(nn.Linear(4, 2), train_split, val_split, cpu_train_cfg, progress=False,
                  description="teacher")
    # then the log says the step, epoch, batch, speed and best accuracy so far
    lines = [record.getMessage() for record in caplog.records]
    assert any(line.startswith(f"teacher: epoch {cpu_train_cfg.epochs}/{cpu_train_cfg.epochs}, "
                               "batch 2/") and "rows/s, best val acc" in line for line in lines), lines


def test_a_long_opaque_call_is_said_to_be_still_running(caplog):
    import time

    from shrinkflow.progress import ticking

    with caplog.at_level(logging.INFO, logger="shrinkflow.test"), \
            ticking(logging.getLogger("shrinkflow.test"), "validating", every=0.05):
        time.sleep(0.3)
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) >= 3 and all(line.startswith("still validating (") for line in lines), lines
