"""tasks.services.lock: one run at a time per checkout; a second one waits, saying for whom."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tasks.services.catalog import Catalog
from tasks.services.lock import describe_holder, project_lock
from tests.conftest import REPO

pytestmark = pytest.mark.integration  # contending runs are other processes

HOLD = """
import sys, time
from pathlib import Path
sys.path.insert(0, {repo!r})
from tasks.services.lock import project_lock
started = time.monotonic()
with project_lock(Path({root!r})):
    print(f"got the lock after {{time.monotonic() - started:.2f}} s", flush=True)
"""


def _contender(root) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", HOLD.format(repo=str(REPO), root=str(root))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_second_run_waits_for_the_first_and_says_who_holds_the_lock(tmp_path):
    # given: this process holds the checkout's lock
    with project_lock(tmp_path):
        assert "pid" in describe_holder(Catalog.at(tmp_path).lock_file)
        # when: another process asks for it
        other = _contender(tmp_path)
        time.sleep(1.5)
        # then: it is still waiting
        assert other.poll() is None, "the second run should wait while the first holds the lock"
    # and: it proceeds once the first lets go, after saying whom it waited for
    out, err = other.communicate(timeout=30)
    assert other.returncode == 0, err
    assert float(out.split()[4]) >= 1.0, out
    assert "waiting for the run in" in err and "pid" in err, err


def test_the_lock_is_reentrant_within_a_process_and_separate_per_checkout(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    with project_lock(first), project_lock(first):
        # another checkout is not blocked by this one
        other = _contender(second)
        out, err = other.communicate(timeout=30)
        assert other.returncode == 0 and "waiting" not in err, err
