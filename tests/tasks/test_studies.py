"""Where studies live: the study database opened from a URL (`tasks.services.studies.storage`).

The storage's sharing between workers (BEGIN IMMEDIATE on SQLite, heartbeats of a starved worker)
is tested in test_shared_study.py.
"""

from __future__ import annotations

import sqlite3

import pytest

from tasks.services import studies


@pytest.mark.parametrize("url", ["postgresql://user:secret@127.0.0.1:1/optuna", "not a url",
                                 "nosuchdialect://host/db"])
def test_an_unusable_storage_is_a_clear_error_without_the_password(url):
    with pytest.raises(studies.StorageError, match="cannot open the search storage") as error:
        studies.storage(url, heartbeat_s=1)
    assert "secret" not in str(error.value)


def test_a_shown_url_hides_the_password_and_a_driver_is_named_for_postgresql():
    url = "postgresql://user:secret@db.example:5432/optuna"
    assert studies.shown_url(url) == "postgresql://user:***@db.example:5432/optuna"
    assert studies.shown_url("not a url") == "<not a database URL>"
    assert studies.with_driver(url) == "postgresql+psycopg://user:secret@db.example:5432/optuna"
    assert studies.with_driver("sqlite:///optuna.db") == "sqlite:///optuna.db"


def test_a_sqlite_storage_beats_and_takes_the_write_lock_even_to_read(tmp_path):
    # given the storage of a SQLite study, with a heartbeat
    opened = studies.storage(f"sqlite:///{tmp_path / 'study.db'}", heartbeat_s=2)
    assert opened.get_heartbeat_interval() == 2
    probe = sqlite3.connect(tmp_path / "study.db", timeout=0, isolation_level=None)
    try:
        with opened.engine.connect() as connection:
            # when one of its transactions has only read
            connection.exec_driver_sql("SELECT 1")
            # then it already holds the write lock (BEGIN IMMEDIATE): no other writer can begin
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                probe.execute("BEGIN IMMEDIATE")
            connection.rollback()
        probe.execute("BEGIN IMMEDIATE")  # and the lock is released with the transaction
        probe.execute("ROLLBACK")
    finally:
        probe.close()
