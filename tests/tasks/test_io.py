"""tasks.services.io: atomic writes keep the previous version when writing fails or the run is killed;
missing inputs name the stage that makes them."""

from __future__ import annotations

import os

import pytest

from tasks.services import io as io_module
from tasks.services.io import atomic_dir, atomic_file, load_processed, read_json, recover


def test_atomic_file__failure_keeps_old_content(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_file(target) as temporary:
        temporary.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target], "no temporary file should be left behind"


@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "two-renames"])
def test_atomic_dir__replaces_whole_folder_on_success(tmp_path, monkeypatch, exchange):
    # given: a folder, on a file system that can (or cannot) exchange two names in one step
    if not exchange:
        monkeypatch.setattr(io_module, "_exchange", lambda first, second: False)
    target = tmp_path / "folder"
    target.mkdir()
    (target / "stale.txt").write_text("stale")
    # when
    with atomic_dir(target) as staging:
        (staging / "fresh.txt").write_text("fresh")
    # then
    assert sorted(p.name for p in target.iterdir()) == ["fresh.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder"], "no leftovers"
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


def test_atomic_dir__swaps_in_one_step_so_the_target_never_disappears(tmp_path, monkeypatch):
    # given: a folder being replaced, and a spy on every rename
    target = tmp_path / "folder"
    target.mkdir()
    (target / "old.txt").write_text("old")
    renames: list[tuple[str, str]] = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: renames.append((a, b)) or real_replace(a, b))
    # when
    with atomic_dir(target) as staging:
        (staging / "new.txt").write_text("new")
    # then: the new content is in place, and the old folder was never renamed away (it was
    # exchanged with the staging folder in one system call)
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert renames == [], f"no two-step rename should happen here, saw {renames}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder"], "no leftovers"


def test_recover__puts_back_a_folder_a_killed_two_step_swap_left_aside(tmp_path):
    # given: what a kill between the two renames of the fallback swap leaves: the old folder
    # set aside, nothing at the target, and a staging folder of the dead run
    target = tmp_path / "folder"
    (tmp_path / ".folder.old").mkdir()
    (tmp_path / ".folder.old" / "keep.txt").write_text("keep")
    (tmp_path / ".folder.abc123.tmp").mkdir()
    # and: a file a killed atomic write left half-written
    (tmp_path / ".summary.md.xyz.tmp").write_text("half")
    # when
    recover(target)
    recover(tmp_path / "summary.md")
    # then
    assert (target / "keep.txt").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder"]


def test_load_processed__missing_split_is_a_user_error_naming_the_stage(tmp_path):
    from shrinkflow.errors import UserError
    from tasks.services.catalog import Catalog

    with pytest.raises(UserError, match="run the 'prepare' stage first"):
        load_processed(Catalog.at(tmp_path))
