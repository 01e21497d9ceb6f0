"""Atomic writes (text, JSON, CSV), checksums, the environment a run records, and the checks of run
folders and of the folders commands write into: no file is ever half-written (a kill leaves at most a
hidden .NAME.*.tmp, which train and run remove), and nothing of a run or of the user's is written over."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator, Sequence

from ferkit.errors import FerkitError


_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; it replaces `path` only if the block succeeds. The file and
    then its folder are synced, so a power cut keeps the new file; a refused write (a full disk) names
    `path`, not the temporary file."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # the name cut to 200 bytes: the temporary name adds 14 to a name that may already have the 255 allowed
        short = os.fsencode(path.name)[:200].decode("utf-8", "ignore")
        fd, tmp = tempfile.mkstemp(prefix=f".{short}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:  # name the file the user asked for, not the temporary one
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
        _sync_folder(path.parent)
    except OSError as exc:
        if exc.errno is None or exc.filename not in (None, tmp):  # not the system's refusal to write tmp
            raise
        raise OSError(exc.errno, exc.strerror, str(path)) from None  # a full disk: name the file being written
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def hold_lock(lock_file: Path, refusal: str) -> IO[bytes] | None:
    """Hold an exclusive lock on `lock_file` (made if missing, never replaced, so that every process
    locks the same file) until the returned handle is closed; when another process holds it, stop
    with `refusal`. POSIX; elsewhere None: no lock. The system drops it when the process ends, even
    by kill -9."""
    try:
        import fcntl
    except ImportError:
        return None
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    handle = open(lock_file, "ab")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise FerkitError(refusal) from None
    return handle


@contextmanager
def folder_lock(folder: str | os.PathLike, what: str) -> Iterator[None]:
    """Hold an exclusive lock on `folder` (its .ferkit.lock file) for the block: a second command that
    writes into the same folder (`what` names it) stops instead of mixing its files with the first's."""
    handle = hold_lock(Path(folder) / ".ferkit.lock", f"{folder}: another {what} is writing into this folder now; "
                       "wait for it to end, or choose another --out")
    try:
        yield
    finally:
        if handle is not None:
            handle.close()  # releases the lock


def remove_stale_temporaries(folder: str | os.PathLike, recursive: bool = False) -> None:
    """Remove the temporary files (.NAME.XXXXXXXX.tmp) that a kill in the middle of an atomic write
    left in `folder` (and below it, with `recursive`); call it only while holding the folder's lock."""
    folder = Path(folder)
    if folder.is_dir():
        for stale in (folder.rglob(".*.tmp") if recursive else folder.glob(".*.tmp")):
            if stale.is_file():
                stale.unlink(missing_ok=True)


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """The same path once links are resolved, or two names (hard links) of one existing file."""
    if Path(a).resolve() == Path(b).resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist yet
        return False


def _sync_folder(folder: Path) -> None:
    """Make a rename survive a power cut: the new name is in the folder's entry, not in the file."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # a system that cannot open folders (Windows): its renames are durable enough
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse to sync a folder; the rename itself has happened
        pass
    finally:
        os.close(fd)


# Where a training run keeps its own files: no other command's output goes there (output_folder).
RUN_OWN_FOLDERS = ("checkpoints", "eval")
# ... and the files `ferkit train` writes at the top of a run folder: no other command's file replaces them
RUN_OWN_FILES = ("run.json", "config.yaml", "history.csv", "learning_curves.png")


def is_run_folder(path: str | os.PathLike) -> bool:
    """Whether `path` holds a training run: `ferkit train` writes run.json and config.yaml first."""
    return (Path(path) / "run.json").is_file() and (Path(path) / "config.yaml").is_file()


def require_not_study(path: str | os.PathLike, where: str | None = None) -> None:
    """Stop when `path` is a `ferkit run` study given where one of its runs belongs: it was told to train one."""
    if (Path(path) / "pipeline.json").is_file():
        raise FerkitError(f"{where or path}: is a `ferkit run` study, not a run; give one of its runs: "
                          f"{Path(path) / 'cnn'} (or {Path(path) / 'mlp'})")


def require_run_folder(path: str | os.PathLike, where: str | None = None, needs: tuple[str, ...] = ()) -> None:
    """Stop, saying what to run, when `path` (called `where` in the message) is no folder, a study, or lacks
    one of the files `needs` names (a trailing / for a folder)."""
    where = where or str(path)
    require_not_study(path, where)
    if Path(path).is_file():
        raise FerkitError(f"{where}: is a file, not a run folder; give the folder that `ferkit train --out` wrote")
    if not Path(path).is_dir():
        raise FerkitError(f"{where}: no such run folder; train one with `ferkit train DATA --out {path}`")
    missing = [name for name in needs if not (Path(path) / name).exists()]
    if missing and is_run_folder(path) and not (Path(path) / "history.csv").exists():
        raise FerkitError(f"{where}: its training stopped before its first epoch ended, so it has no checkpoint yet; "
                          "run the same `ferkit train` command again, which starts it anew in this folder")
    if missing:
        raise FerkitError(f"{where}: not a trained ferkit run (no {', no '.join(missing)}); give the folder that "
                          f"`ferkit train DATA --out {path}` wrote")


def run_folder_around(path: str | os.PathLike) -> Path | None:
    """The training run folder that `path` is or lies inside, if any."""
    absolute = Path(os.path.abspath(path))
    return next((folder for folder in (absolute, *absolute.parents) if is_run_folder(folder)), None)


def require_outside(data: str | os.PathLike, path: str | os.PathLike, option: str = "--out") -> None:
    """Stop when `path` lies in the image-folder dataset `data`: the figures written there would be
    read as faces by the next load, which then refuses the folder."""
    folder, target = Path(os.path.realpath(data)), Path(os.path.realpath(path))  # links lead there too
    if folder.is_dir() and target.is_relative_to(folder):
        raise FerkitError(f"{option} {path}: is inside the image folder {data}, where every image must be a face; "
                          "write outside it")


def output_folder(path: str | os.PathLike, option: str = "--out", create: bool = True) -> Path:
    """Create the folder a command writes into, or stop saying why it cannot be: a path that is no
    folder, a run folder itself or its checkpoints/ or eval/ (whose files would then pass for the
    run's: `ferkit report` and `ferkit ensemble` read them). With create=False only check, so that
    a command refuses a bad --out before its work without leaving a folder behind."""
    path = check_folder_path(path, option)
    if _inside_run(path) == ():
        raise FerkitError(f"{option} {path}: is a training run's folder; name a folder of its own (one inside the "
                          f"run, such as {path / 'report'}, is fine)")
    if problem := _run_own_problem(path):
        raise FerkitError(f"{option} {path}: {problem}; name another folder")
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FerkitError(f"{option} {path}: cannot create this folder ({exc.strerror})") from None
    return path


def check_folder_path(path: str | os.PathLike, option: str = "--out") -> Path:
    """Stop unless `path` names a folder this process can make or write in; create nothing."""
    if not os.fspath(path).strip():
        raise FerkitError(f"{option} is empty; name a folder")
    path = Path(path)
    if problem := _folder_problem(path):
        raise FerkitError(f"{option} {path}: {problem}; name another folder")
    return path


def output_file(path: str | os.PathLike, option: str, create_folder: bool = True) -> Path:
    """Check, before any work, that a command can write the file `path` (not in a run's checkpoints/ or
    eval/, not a run's own run.json, config.yaml, history.csv or learning_curves.png); create its folder."""
    if not os.fspath(path).strip():
        raise FerkitError(f"{option} is empty; name a file")
    path = Path(path)
    if path.is_dir():
        raise FerkitError(f"{option} {path}: is a folder; name the file to write")
    if problem := _folder_problem(path.parent) or _run_own_problem(path.parent):
        raise FerkitError(f"{option} {path}: its folder {path.parent} {problem}; name another file")
    if path.name in RUN_OWN_FILES and _inside_run(path.parent) == ():
        raise FerkitError(f"{option} {path}: is the training run's own {path.name}; name another file")
    if create_folder:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FerkitError(f"{option} {path}: cannot create its folder ({exc.strerror})") from None
    return path


def require_only(folder: Path, entries: set[str], reason: str) -> None:
    """Stop when `folder` holds anything but `entries` (dotfiles aside), giving `reason`: the command
    would write over files of the same names, and nothing of the user's may be lost."""
    foreign = sorted(p.name for p in folder.iterdir() if p.name not in entries and not p.name.startswith(".")) \
        if folder.is_dir() else []
    if foreign:
        raise FerkitError(f"--out {folder}: holds other files ({', '.join(foreign[:3])}"
                          f"{', ...' if len(foreign) > 3 else ''}); {reason}")


def holds(marker: bytes) -> Callable[[Path], bool]:
    """A test of a file ferkit wrote: its bytes hold `marker` (the report's "Built by ferkit", say)."""
    return lambda path: marker in path.read_bytes()


def json_with(*keys: str) -> Callable[[Path], bool]:
    """A test of a JSON file ferkit wrote: an object holding these keys."""
    def test(path: Path) -> bool:
        try:
            record = read_json(path)
        except (OSError, ValueError):
            return False
        return isinstance(record, dict) and set(keys) <= record.keys()
    return test


def require_own_files(folder: Path, ours: dict[str, Callable[[Path], bool]], command: str) -> None:
    """Stop before a file of the user's is replaced by one of `command`'s of the same name (a report.md of their
    own in the folder given to `ferkit report`): `ours` tells, per name, whether an existing file is ferkit's."""
    foreign = [name for name, test in ours.items() if (folder / name).is_file() and not test(folder / name)]
    if foreign:
        raise FerkitError(f"--out {folder}: holds {', '.join(foreign)}, which `{command}` did not write and would "
                          f"replace; name another folder, or move {'that file' if len(foreign) == 1 else 'them'}")


def _inside_run(path: Path) -> tuple[str, ...] | None:
    """Where `path` lies inside the training run folder around it (() for the run folder itself);
    None outside any run."""
    run = run_folder_around(path)
    return None if run is None else Path(os.path.abspath(path)).relative_to(run).parts


def _run_own_problem(path: Path) -> str | None:
    inside = _inside_run(path)
    if inside and inside[0] in RUN_OWN_FOLDERS:
        return f"lies inside a training run's {inside[0]}/ folder, where the run keeps its own files"
    return None


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


def write_csv(path: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """A CSV file (LF line ends), written atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


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


def read_record(path: str | os.PathLike, todo: str) -> dict[str, Any]:
    """A JSON object that ferkit wrote (run.json, pipeline.json); a damaged one (a hand edit, a copy cut
    short) is named with `todo`, the way out, instead of a traceback."""
    try:
        record = read_json(path)
    except (OSError, ValueError) as exc:
        raise FerkitError(f"{path}: unreadable ({exc}); {todo}") from None
    if not isinstance(record, dict):
        raise FerkitError(f"{path}: expected a JSON object, found {type(record).__name__}; {todo}")
    return record


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def git_commit() -> str | None:
    """The commit of ferkit's own checkout, when it runs from one: not that of a user's project in which
    ferkit is installed (a virtual environment inside it), where this file is no tracked file."""
    here = Path(__file__).resolve().parent
    try:
        tracked = subprocess.run(["git", "ls-files", "--error-unmatch", "--", Path(__file__).name], cwd=here,
                                 capture_output=True, timeout=5)
        if tracked.returncode != 0:
            return None
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def cpu_model() -> str | None:
    """The processor's name, as Linux's /proc/cpuinfo or macOS's sysctl gives it (with the family and model
    numbers where cpuinfo has them: a virtual machine's name can be as plain as "Intel(R) Xeon(R) Processor")."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            fields = dict(line.split(":", 1) for line in f.read().split("\n\n")[0].splitlines() if ":" in line)
    except OSError:
        fields = {}
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    if name := fields.get("model name"):
        family, model = fields.get("cpu family"), fields.get("model")
        return f"{name} (family {family}, model {model})" if family and model else name
    if sys.platform == "darwin":
        try:
            return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                                  timeout=5).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            return None
    return None


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
        "cpu_model": cpu_model(),  # the same seed gives other last digits on another processor
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # the kernels torch picked: AVX2, AVX512, ...
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "command": shlex.join(sys.argv),  # quoted: a path with spaces stays one word
        "cwd": os.getcwd(),  # where the command's relative paths start
    }
