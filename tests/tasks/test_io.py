"""Atomic writes keep the previous version when writing fails."""

from __future__ import annotations

import pytest

from tasks.io import atomic_dir, atomic_file, read_json


def test_atomic_file__failure_keeps_old_content(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_file(target) as temporary:
        temporary.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target], "no temporary file should be left behind"


def test_atomic_dir__replaces_whole_folder_on_success(tmp_path):
    target = tmp_path / "folder"
    target.mkdir()
    (target / "stale.txt").write_text("stale")
    with atomic_dir(target) as staging:
        (staging / "fresh.txt").write_text("fresh")
    assert sorted(p.name for p in target.iterdir()) == ["fresh.txt"]
    assert oct(target.stat().st_mode & 0o777) != oct(0o700), "the folder should not stay private"


def test_atomic_dir__failure_keeps_old_folder(tmp_path):
    target = tmp_path / "folder"
    target.mkdir()
    (target / "keep.txt").write_text("keep")
    with pytest.raises(ValueError), atomic_dir(target) as staging:
        (staging / "partial.txt").write_text("partial")
        raise ValueError("bad data")
    assert sorted(p.name for p in target.iterdir()) == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder"]


def test_read_json__missing_file_names_the_stage(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the 'prepare' stage first"):
        read_json(tmp_path / "dataset.json", produced_by="prepare")
