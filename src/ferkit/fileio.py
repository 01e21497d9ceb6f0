"""Atomic writes, checksums and the environment a run records: nothing half-written is ever left."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from ferkit.errors import FerkitError


_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; it replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def output_folder(path: str | os.PathLike, option: str = "--out", create: bool = True) -> Path:
    """Create the folder a command writes into, or stop saying why it cannot be. With create=False,
    only check, so that a command can refuse a bad --out before its work without leaving a folder
    behind when something else stops it."""
    path = Path(path)
    if problem := _folder_problem(path):
        raise FerkitError(f"{option} {path}: {problem}; name another folder")
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FerkitError(f"{option} {path}: cannot create this folder ({exc.strerror})") from None
    return path


def output_file(path: str | os.PathLike, option: str, create_folder: bool = True) -> Path:
    """Check, before any work, that a command can write the file `path`; create its folder."""
    path = Path(path)
    if path.is_dir():
        raise FerkitError(f"{option} {path}: is a folder; name the file to write")
    if problem := _folder_problem(path.parent):
        raise FerkitError(f"{option} {path}: its folder {path.parent} {problem}; name another file")
    output_folder(path.parent, option, create_folder)
    return path


def _folder_problem(path: Path) -> str | None:
    """Why `path` cannot be (made into) a folder this process writes in; None when it can."""
    existing = next(p for p in (path, *path.parents) if p.exists())  # "." or "/" at the latest
    if not existing.is_dir():
        return "is a file, not a folder" if existing == path else f"lies inside the file {existing}"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"cannot be written in (no permission for {existing})"
    return None


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def git_commit() -> str | None:
    """The commit of ferkit's own checkout, when it runs from one."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def environment() -> dict[str, Any]:
    """Versions and hardware, recorded by every run so that it can be replicated."""
    import numpy
    import torch

    from ferkit import __version__

    versions = {"ferkit": __version__, "python": sys.version.split()[0], "numpy": numpy.__version__,
                "torch": torch.__version__}
    for name in ("pandas", "sklearn", "matplotlib", "PIL"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            pass
    cuda = torch.cuda.is_available()
    return {
        "versions": versions,
        "git_commit": git_commit(),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "command": " ".join(sys.argv),
    }
