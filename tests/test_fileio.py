"""Atomic writes (a failure in the middle leaves the old file whole and no temporary file behind), the JSON
and CSV files, what a run records, and what makes a folder a run."""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest

from ferkit.errors import FerkitError
from ferkit.fileio import (atomic_path, environment, is_run_folder, output_file, output_folder, run_folder_around,
                           write_csv, write_json, write_text)


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


def test_a_write_that_cannot_begin_names_the_file_asked_for(tmp_path):
    (tmp_path / "a_file").touch()
    path = tmp_path / "a_file" / "metrics.json"  # its folder cannot be made
    with pytest.raises(OSError) as raised:
        with atomic_path(path):
            pass
    assert raised.value.filename == str(path)


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


def test_the_commit_of_a_project_ferkit_is_installed_in_is_not_recorded_as_ferkits(monkeypatch, tmp_path):
    import shutil
    import subprocess

    from ferkit import fileio

    if shutil.which("git") is None:
        pytest.skip("git is not installed")

    def git(*args: str) -> str:
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                              capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    (tmp_path / "analysis.py").write_text("print('my study')\n")
    git("add", "analysis.py")
    git("commit", "-q", "-m", "my study")
    installed = tmp_path / ".venv" / "site-packages" / "ferkit" / "fileio.py"  # not tracked by the project
    installed.parent.mkdir(parents=True)
    shutil.copy(fileio.__file__, installed)
    monkeypatch.setattr(fileio, "__file__", str(installed))
    assert fileio.git_commit() is None
    git("add", "-f", str(installed))
    git("commit", "-q", "-m", "ferkit inside")  # now it is this checkout's own file
    assert fileio.git_commit() == git("rev-parse", "HEAD")


@pytest.mark.parametrize("name", ["a" * 251 + ".csv", "é" * 125 + ".csv"], ids=["ascii", "two_bytes_each"])
# 255 bytes each: the most a name may have
def test_a_name_as_long_as_the_file_system_allows_is_written(tmp_path, name):
    write_text(tmp_path / name, "x")
    assert (tmp_path / name).read_text() == "x" and len(list(tmp_path.iterdir())) == 1


def test_json_files_take_numpy_values_and_paths_and_refuse_anything_else(tmp_path):
    write_json(tmp_path / "a.json", {"counts": np.arange(3), "accuracy": np.float32(0.5), "data": Path("x/fer.csv")})
    assert json.loads((tmp_path / "a.json").read_text()) == {"counts": [0, 1, 2], "accuracy": 0.5, "data": "x/fer.csv"}
    with pytest.raises(TypeError, match="not JSON serialisable: object"):
        write_json(tmp_path / "b.json", {"x": object()})
    assert not (tmp_path / "b.json").exists()


def test_the_recorded_command_quotes_a_word_with_spaces(monkeypatch):
    argv = ["ferkit", "train", "my data/fer.csv", "--out", "runs/cnn"]
    monkeypatch.setattr(sys, "argv", argv)
    recorded = environment()["command"]
    assert recorded == "ferkit train 'my data/fer.csv' --out runs/cnn" and shlex.split(recorded) == argv


def test_csv_files_end_their_lines_with_lf_and_quote_what_needs_it(tmp_path):
    write_csv(tmp_path / "a.csv", ["path", "true"], [["a,b.png", 3], ["c.png", 0]])
    assert (tmp_path / "a.csv").read_bytes() == b'path,true\n"a,b.png",3\nc.png,0\n'


def test_a_run_folder_is_one_that_holds_both_run_json_and_config_yaml(tmp_path):
    """Another tool's run.json alone does not make a folder a ferkit run, whose files no command may replace."""
    (tmp_path / "run.json").write_text("{}")
    assert not is_run_folder(tmp_path) and output_folder(tmp_path) == tmp_path
    (tmp_path / "config.yaml").write_text("model: cnn\n")
    assert is_run_folder(tmp_path) and run_folder_around(tmp_path / "eval" / "test") == tmp_path
    with pytest.raises(FerkitError, match="is a training run's folder"):
        output_folder(tmp_path)


@pytest.mark.parametrize("check, what", [(output_file, "file"), (output_folder, "folder")])
def test_an_empty_output_path_is_named_as_such_not_taken_for_the_working_folder(check, what):
    with pytest.raises(FerkitError, match=f"^--out is empty; name a {what}$"):
        check(" ", "--out")
