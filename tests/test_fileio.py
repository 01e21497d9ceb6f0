"""Atomic writes: a failure in the middle leaves the old file whole and no temporary file behind."""

from __future__ import annotations

import os

import pytest

from ferkit.fileio import atomic_path, write_text


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_text("half of the new")
            raise RuntimeError("killed")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["history.csv"]


def test_written_files_get_the_usual_permissions(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    write_text(tmp_path / "a.txt", "x")
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "a.txt").read_text() == "x"


@pytest.mark.parametrize("status, recorded", [("", "0123abc"), (" M src/ferkit/train.py\n", "0123abc-dirty")])
def test_the_recorded_commit_says_when_the_checkout_had_changes(monkeypatch, status, recorded):
    import subprocess
    import types

    from ferkit import fileio

    def git(args, **kwargs):
        out = "0123abc\n" if args[1] == "rev-parse" else status
        return types.SimpleNamespace(returncode=0, stdout=out, stderr="")

    monkeypatch.setattr(subprocess, "run", git)
    assert fileio.git_commit() == recorded
