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


def test_a_refused_write_names_the_file_asked_for_not_the_temporary(tmp_path):
    import errno

    path = tmp_path / "labels.csv"
    with pytest.raises(OSError) as raised:
        with atomic_path(path) as tmp:
            with open(tmp, "w"):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a full disk says it
    assert (raised.value.errno, raised.value.filename) == (errno.ENOSPC, str(path))
    with pytest.raises(OSError) as raised:  # another file's trouble, or a library's own OSError, stays as it is
        with atomic_path(path) as tmp:
            open(tmp_path / "absent" / "x")
    assert raised.value.filename == str(tmp_path / "absent" / "x")
    with pytest.raises(OSError, match="^image file is truncated$"):
        with atomic_path(path) as tmp:
            raise OSError("image file is truncated")
    assert list(tmp_path.iterdir()) == []


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
