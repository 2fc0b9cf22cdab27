"""infra/stack.py without starting services: its settings, and what it refuses before it starts
anything. (The stack up, with the pipeline on it: tests/flows/test_stack.py.)"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "infra"))
import stack  # noqa: E402  (infra/ holds scripts, not a package)


def test_settings_come_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("STACK_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("STACK_MLFLOW_PORT", "5999")
    monkeypatch.setenv("STACK_BUCKET", "team")
    settings = stack.Settings.from_environment()
    assert settings.home == tmp_path / "elsewhere"
    assert settings.ports["mlflow"] == 5999 and settings.ports["prefect"] == 4200
    env = settings.project_env()
    assert env["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5999"
    assert env["SHRINKFLOW_DVC_REMOTE"] == "s3://team/dvc"


def test_a_port_in_use_is_named_before_anything_starts(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = stack.Settings(tmp_path, {**stack.DEFAULT_PORTS, "mlflow": port})
        with pytest.raises(stack.StackError, match=f"mlflow \\({port}, STACK_MLFLOW_PORT\\)"):
            stack.up(settings, echo=lambda line: None)
    assert not (tmp_path / "pids").exists() and not (tmp_path / "postgres").exists()
