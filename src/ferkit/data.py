"""FER2013 in every layout users have, validated, parsed fast and cached.

`load(path)` reads Kaggle's `icml_face_data.csv` or `fer2013.csv` (plain, gzip, xz, bz2 or zip; BOM or
not; LF or CRLF; pixels quoted or not) and the image-folder export (`train/<emotion>/Training_<id>.jpg`,
`test/<emotion>/PublicTest_<id>.jpg`, ...) as a folder or an archive. Every row is checked; a bad
file raises `DataFormatError` naming the lines. The parsed arrays are cached under the file's
sha256, so the second load of the same file takes a fraction of a second.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import os
import posixpath
import re
import shutil
import tarfile
import tempfile
import time
import zipfile
import zlib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from ferkit.errors import DataFormatError, FerkitError, Problem
from ferkit.fileio import json_with, output_folder, read_json, require_outside, require_own_files, write_json

EMOTIONS = ("Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral")
SPLITS = ("Training", "PublicTest", "PrivateTest")
SPLIT_ALIASES = {"train": "Training", "val": "PublicTest", "test": "PrivateTest"}
IMAGE_SIZE = 48
N_PIXELS = IMAGE_SIZE * IMAGE_SIZE
CACHE_VERSION = 4  # 2: meta.json says "layout" (was "kind"); 3: and keeps the notes; 4: the image export's colour note
# The published split sizes: a file with others is a subset, or was cut short
FER2013_COUNTS = {"Training": 28_709, "PublicTest": 3_589, "PrivateTest": 3_589}
_MAX_PROBLEMS_KEPT = 50
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
_DATA_SUFFIXES = (".csv", ".gz", ".xz", ".bz2", ".zip", ".tar")  # what a folder without faces may hold instead


@dataclass
class Dataset:
    """FER2013 faces with their labels, splits and where each came from in the source file."""

    images: np.ndarray  # (N, 48, 48) uint8
    labels: np.ndarray  # (N,) int64, index into EMOTIONS
    splits: np.ndarray  # (N,) int8, index into SPLITS
    source: str  # the file or folder it was read from
    sha256: str  # checksum of that file (of the files, for a folder)
    lines: np.ndarray | None = None  # (N,) 1-based CSV line of each row (header = line 1)
    paths: list[str] | None = None  # image-folder layout: each face's path inside the export
    load_seconds: float = 0.0
    from_cache: bool = False
    layout: str = field(default="csv")  # "csv" or "images"
    notes: list[str] = field(default_factory=list)  # what a user should know that is no error

    def __len__(self) -> int:
        return len(self.labels)

    @cached_property
    def faces_sha256(self) -> str:
        """Checksum of the faces, labels and splits in row order: equal for every copy of the same
        data (plain or compressed, re-saved CSV, the image export), unlike the file's `sha256`."""
        digest = hashlib.sha256()
        for array in (self.images, self.labels.astype(np.int64), self.splits.astype(np.int8)):
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()

    def checksums(self) -> dict[str, str]:
        """What a run, checkpoint or evaluation records to name its data; see `is_recorded_as`."""
        return {"data_sha256": self.sha256, "data_faces_sha256": self.faces_sha256}

    def is_recorded_as(self, record: Mapping[str, Any]) -> bool:
        """Whether the data a run or an evaluation recorded (`data_sha256`, and `data_faces_sha256`
        where it was saved) is this one: the same file, or the same faces in another file."""
        return same_data(self.checksums(), record)

    def indices(self, split: str) -> np.ndarray:
        """Row indices of one split ("Training", "PublicTest", "PrivateTest" or train/val/test)."""
        name = SPLIT_ALIASES.get(split, split)
        if name not in SPLITS:
            raise FerkitError(f"unknown split {split!r}: use one of {', '.join(SPLITS)} (or train, val, test)")
        return np.flatnonzero(self.splits == SPLITS.index(name))

    def counts(self) -> dict[str, list[int]]:
        """Per-split class counts in EMOTIONS order."""
        return {
            name: np.bincount(self.labels[self.splits == i], minlength=len(EMOTIONS)).tolist()
            for i, name in enumerate(SPLITS)
        }

    @property
    def origin_column(self) -> str:
        """The column that says where each face came from in the tables ferkit writes: path or line."""
        return "path" if self.paths is not None else "line"

    def origins(self, rows: Sequence[int] | np.ndarray) -> list:
        """That column's values for `rows`: paths inside the image export, or 1-based CSV lines."""
        if self.paths is not None:
            return [self.paths[int(i)] for i in rows]
        return [int(self.lines[int(i)]) for i in rows]


# ---------------------------------------------------------------------------------------------
# Entry point


def load(path: str | os.PathLike, cache: bool = True, cache_dir: str | os.PathLike | None = None) -> Dataset:
    """Load FER2013 from `path` (CSV or image export, plain or compressed); cached by checksum."""
    path = Path(path)
    if not path.exists():
        raise FerkitError(f"{path}: no such file or folder. Download icml_face_data.csv from Kaggle's "
                          "'Challenges in Representation Learning: Facial Expression Recognition Challenge'.")
    if not path.is_dir() and not path.is_file():
        raise FerkitError(f"{path}: not a regular file (a pipe or a device?); save the data to a file and give its path")
    started = time.perf_counter()
    store = _Cache(Path(cache_dir) if cache_dir else default_cache_dir()) if cache else None
    files = _folder_files(path) if path.is_dir() else None  # walked once: for the cache key and for the faces
    stat_key = _stat_key(path, files) if store is not None else ""
    if store is not None and (cached := store.get(stat_key)) is not None:
        cached.source = str(path)
        cached.load_seconds = time.perf_counter() - started
        return cached

    if files is not None:
        entries = list(_folder_entries(files))  # read once: the checksum and the faces come from the same bytes
        if not entries and (inside := [rel for rel, _ in files if rel.lower().endswith(_DATA_SUFFIXES)]):
            which = "that file" if len(inside) == 1 else "one of them"
            raise FerkitError(f"{path}: this folder holds no face images but {', '.join(inside[:3])}"
                              f"{' ...' if len(inside) > 3 else ''}: give {which} instead of the folder")
        # as in an archive: faces and a CSV beside them are two candidates for the data, and neither is guessed
        # (an archive of the same faces beside them is no other data)
        if entries and (csvs := [rel for rel, _ in files if _is_csv_name(rel)]):
            raise FerkitError(f"{path}: this folder holds {len(entries)} face images and {', '.join(csvs[:3])}"
                              f"{' ...' if len(csvs) > 3 else ''}: ferkit cannot tell which is the data; give the "
                              "CSV itself, or move it out of the image folder")
        dataset = _load_image_entries(entries, path, _folder_checksum(entries))
    else:
        raw = _read_bytes(path)
        checksum = _sha256_bytes(raw)
        if store is not None and (cached := store.get_by_sha(checksum)) is not None:
            store.remember(stat_key, checksum)
            cached.source = str(path)
            cached.load_seconds = time.perf_counter() - started
            return cached
        dataset = _load_bytes(raw, path, checksum)
    dataset.source = str(path)  # as a cached load names it: the archive, where errors name the CSV inside it too
    dataset.load_seconds = time.perf_counter() - started
    if store is not None and (refused := store.put(stat_key, dataset)):
        dataset.notes.append(f"the cache {store.root} cannot be written ({refused}), so the file is parsed again at "
                             "every load; set FERKIT_CACHE to a folder you can write in")
    return dataset


def same_data(first: Mapping[str, Any], second: Mapping[str, Any]) -> bool:
    """Whether two records of data (`data_sha256`, `data_faces_sha256`, as checkpoints and evaluations
    keep them) name the same data: the same file, or the same faces in another file."""
    return any(first.get(key) and first.get(key) == second.get(key) for key in ("data_sha256", "data_faces_sha256"))


def require_recorded(dataset: Dataset, record: Mapping[str, Any], what: str, recorded_path: str | None = None,
                     todo: str = "pass that file with --data") -> None:
    """Stop unless `record` (a checkpoint, an evaluation's metrics) was made on `dataset`'s faces.
    `what` ends the message's "... than the data", e.g. "the run runs/cnn was trained on"."""
    if dataset.is_recorded_as(record):
        return
    recorded = f" ({recorded_path}, sha256 {str(record.get('data_sha256'))[:12]}...)" if recorded_path else \
        f" (sha256 {str(record.get('data_sha256'))[:12]}...)"
    raise FerkitError(f"{dataset.source} (sha256 {dataset.sha256[:12]}...) holds other faces, labels or splits than "
                      f"the data {what}{recorded}; {todo}")


def default_cache_dir() -> Path:
    """Where parsed datasets are kept: $FERKIT_CACHE, else ~/.cache/ferkit."""
    env = os.environ.get("FERKIT_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "ferkit"


def _sha256_bytes(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


# ---------------------------------------------------------------------------------------------
# Containers: plain, gzip, xz, bz2, zip, tar


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise FerkitError(f"{path}: cannot read the file ({exc.strerror})") from None


def _load_bytes(raw: bytes, path: Path, checksum: str) -> Dataset:
    """Dispatch on the file's magic bytes, not its name: users rename files."""
    if not raw:
        raise DataFormatError(str(path), [_EMPTY_FILE])
    if raw[:2] == b"\x1f\x8b":
        return _load_bytes(_decompress(gzip.decompress, raw, path, "gzip"), path, checksum)
    if raw[:6] == b"\xfd7zXZ\x00":
        return _load_bytes(_decompress(lzma.decompress, raw, path, "xz"), path, checksum)
    if raw[:3] == b"BZh":
        return _load_bytes(_decompress(bz2.decompress, raw, path, "bz2"), path, checksum)
    if raw[:4] == b"PK\x03\x04":
        return _load_zip(raw, path, checksum)
    if raw[:4] == b"PK\x05\x06":
        raise DataFormatError(str(path), [Problem(None, None, "the zip archive is empty; download the data again")])
    if len(raw) > 262 and raw[257:262] == b"ustar" or _is_old_tar(raw):
        return _load_tar(raw, path, checksum)
    if kind := next((name for magic, name in _IMAGE_MAGIC if raw.startswith(magic)), None):
        raise DataFormatError(str(path), [Problem(None, None, f"this is a {kind} image, not a FER2013 CSV: give the "
                                                              "CSV, or the image-folder export (the folder that holds "
                                                              "train/ and test/, or its archive)")])
    return _parse_csv(raw, str(path), checksum)


# How image files begin: one given as the data was read as a CSV and refused for binary bytes on "line 2"
_IMAGE_MAGIC = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
                (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"))


def _is_old_tar(raw: bytes) -> bool:
    """A tar without the ustar mark (`tar --format=v7`): its first header's checksum is right."""
    if len(raw) < 512:
        return False
    try:
        stored = int(raw[148:156].strip(b"\0 "), 8)
    except ValueError:
        return False
    return stored == sum(raw[:148]) + 8 * 32 + sum(raw[156:512])  # the checksum field counts as spaces


def _decompress(fn: Callable[[bytes], bytes], raw: bytes, path: Path, kind: str) -> bytes:
    truncated = DataFormatError(str(path), [Problem(None, None, f"the {kind} stream ends too early: the file is "
                                                                "truncated (an interrupted download?); download it again")])
    try:
        return fn(raw)
    except EOFError:
        raise truncated from None
    except (OSError, lzma.LZMAError, zlib.error, ValueError) as exc:
        if "ended before the end-of-stream marker" in str(exc):  # how xz and bz2 report a truncated stream
            raise truncated from None
        raise DataFormatError(str(path), [Problem(None, None, f"the {kind} stream is corrupt ({exc}); "
                                                              "download the file again")]) from None


def _load_zip(raw: bytes, path: Path, checksum: str) -> Dataset:
    try:
        archive = zipfile.ZipFile(io.BytesIO(raw))
        names = [n for n in archive.namelist() if not n.endswith("/") and not _is_junk(n)]
    except (zipfile.BadZipFile, EOFError) as exc:
        raise DataFormatError(str(path), [Problem(None, None, f"the zip archive is corrupt or truncated ({exc}); "
                                                              "download it again")]) from None

    def read(name: str) -> bytes:
        try:
            return archive.read(name)
        # a damaged member, as zipfile lets its decompressors say it: bz2 an OSError, lzma an LZMAError; a
        # member's offset damaged below 0, a ValueError (negative seek)
        except (OSError, lzma.LZMAError, ValueError) as exc:
            raise DataFormatError(str(path), [Problem(None, None, f"the zip archive is corrupt ({exc}); "
                                                                  "download it again")]) from None

    try:
        return _load_members("zip", names, read, path, checksum)
    except (zipfile.BadZipFile, EOFError, zlib.error) as exc:
        raise DataFormatError(str(path), [Problem(None, None, f"the zip archive is corrupt ({exc}); download it again")]) from None
    except (RuntimeError, NotImplementedError) as exc:  # encrypted, or a compression method Python lacks
        raise DataFormatError(str(path), [Problem(None, None, f"cannot read the zip archive ({exc}); extract it with "
                                                              "an unzip tool and give the extracted file or folder")]) from None


def _load_members(kind: str, names: list[str], read: Callable[[str], bytes], path: Path, checksum: str) -> Dataset:
    """An archive's one CSV, or its face images; anything else is refused rather than guessed at."""
    csvs = [n for n in names if _is_csv_name(n)]
    images = [n for n in names if _is_face_file(n)]
    if csvs and images or len(csvs) > 1:
        held = ([f"{len(images)} face images"] if images else []) + csvs[:3] + (["more"] if len(csvs) > 3 else [])
        raise DataFormatError(str(path), [Problem(None, None, f"the {kind} archive holds {', '.join(held[:-1])} and "
                                                              f"{held[-1]}: ferkit cannot tell which is the data; "
                                                              "extract the one you mean and give it")])
    if csvs:
        return _load_bytes(read(csvs[0]), Path(f"{path}!{csvs[0]}"), checksum)  # a compressed one too
    if images:
        return _load_image_entries(((n, read(n)) for n in images), path, checksum)
    neither = (f"the {kind} archive holds neither one FER2013 CSV nor the image folders train/ and test/ (it holds "
               f"{len(names)} files)")
    raise DataFormatError(str(path), [Problem(None, None, neither)])


def _load_tar(raw: bytes, path: Path, checksum: str) -> Dataset:
    def corrupt(why: str) -> DataFormatError:
        return DataFormatError(str(path), [Problem(None, None, f"the tar archive is {why}; download it again")])

    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as archive:
            files = [(posixpath.normpath(m.name), m) for m in archive.getmembers() if not m.isdir()]
            members = dict(files)  # a name stored twice (`tar -r`) stays listed twice: refused as a second copy
            # tarfile takes a file cut between two members for the end of the archive; a whole one ends in a
            # zero block
            if raw[archive.offset:archive.offset + 512] != bytes(512):
                raise corrupt("truncated: it ends without the end-of-archive marker (an interrupted download?)")

            def read(name: str) -> bytes:  # `tar -cf x.tar .` stores ./train/...: the names are normalised
                member = members[name]
                try:
                    content = archive.extractfile(member)
                except KeyError:  # how tarfile says a link's target is missing
                    content = None
                if content is None:  # a link to nothing or to a folder, a pipe, a device
                    raise DataFormatError(str(path), [Problem(None, None, f"{name} is no file in the archive" + (
                        f" (it links to {member.linkname})" if member.linkname else ""))])
                return content.read()

            return _load_members("tar", [name for name, _ in files], read, path, checksum)
    except (tarfile.TarError, EOFError) as exc:
        raise corrupt(f"corrupt or truncated ({exc})") from None


_SYSTEM_FOLDERS = ("lost+found",)  # at the root of a drive, unreadable, never a dataset's


def _folder_files(root: Path) -> list[tuple[str, Path]]:
    """Every entry under `root` but folders, as (relative path, path), in path order. Linked folders
    are followed (a link back to a folder above is not); hidden and system folders are not entered;
    a broken link, a pipe and the like are listed, so that a face among them is refused, not skipped."""
    files = []

    def visit(folder: Path, rel: str, above: frozenset[tuple[int, int]]) -> None:
        try:
            info = folder.stat()
            children = sorted(os.scandir(folder), key=lambda entry: entry.name)
        except OSError as exc:
            raise FerkitError(f"{root / rel}: cannot read this folder ({exc.strerror})") from None
        here = (info.st_dev, info.st_ino)
        if here in above:
            return
        for child in children:
            child_rel = f"{rel}/{child.name}" if rel else child.name
            try:
                is_folder = child.is_dir()
            except OSError:  # a link to itself
                is_folder = False
            if not is_folder:
                files.append((child_rel, Path(child.path)))
            elif not _is_junk(child.name) and child.name not in _SYSTEM_FOLDERS:
                visit(Path(child.path), child_rel, above | {here})

    visit(root, "", frozenset())
    return sorted(files, key=lambda item: item[0].split("/"))  # the order Path sorting gave: checksums stay


def _folder_entries(files: list[tuple[str, Path]]) -> Iterator[tuple[str, bytes]]:
    for rel, file in files:
        if _is_face_file(rel):
            if not file.is_file():  # reading a pipe would wait forever
                what = "a link to nothing" if file.is_symlink() else "not a regular file"
                raise FerkitError(f"{file}: {what}; remove it or put the face image in its place")
            try:
                yield rel, file.read_bytes()
            except OSError as exc:
                raise FerkitError(f"{file}: cannot read this image ({exc.strerror})") from None


def _folder_checksum(entries: list[tuple[str, bytes]]) -> str:
    """sha256 over the sorted relative paths and contents of the folder's image files."""
    digest = hashlib.sha256()
    for rel, content in entries:
        # surrogateescape: a name that is not UTF-8 hashes as its bytes; the others exactly as UTF-8
        digest.update(rel.encode("utf-8", "surrogateescape") + b"\0" + hashlib.sha256(content).digest())
    return digest.hexdigest()


def _is_face_file(name: str) -> bool:
    """An image file by its suffix, or a face of the export by its name (Training_1.gif too: it must
    be read or refused, not skipped); hidden files and macOS resource forks are not."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    return (base.lower().endswith(_IMAGE_SUFFIXES) or _IMAGE_NAME.match(base) is not None) and not _is_junk(name)


def _is_csv_name(name: str) -> bool:
    """Whether a file in a folder or an archive is named as a CSV, plain or gzip, xz or bz2 compressed."""
    return re.search(r"\.csv(\.(gz|xz|bz2))?$", name.lower()) is not None and not _is_junk(name)


def _is_junk(name: str) -> bool:
    """Hidden files and folders, and macOS resource forks; "." and ".." are path steps, not hidden."""
    parts = name.replace("\\", "/").split("/")
    return any((p.startswith(".") and p not in (".", "..")) or p == "__MACOSX" for p in parts)


# ---------------------------------------------------------------------------------------------
# Image-folder export: <anything>/<train|test>/<emotion>/<Split>_<id>.jpg

_IMAGE_NAME = re.compile(r"^(Training|PublicTest|PrivateTest)_(\d+)\.\w+$")
_WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")  # Pillow's modes of 16- and 32-bit pixels


def _load_image_entries(entries: Iterable[tuple[str, bytes]], path: Path, checksum: str) -> Dataset:
    from PIL import Image, UnidentifiedImageError

    folder_of = {name.lower(): i for i, name in enumerate(EMOTIONS)}
    records, problems, first_seen, coloured = [], _Problems(), {}, []

    def complain(message: str) -> None:
        problems.add(None, None, message)

    for name, content in entries:
        parts = name.replace("\\", "/").split("/")
        match = _IMAGE_NAME.match(parts[-1])
        if len(parts) < 2 or parts[-2].lower() not in folder_of or match is None:
            complain(f"{name}: expected <train|test>/<emotion>/<Training|PublicTest|PrivateTest>_<id>.jpg "
                     f"with emotion one of {', '.join(e.lower() for e in EMOTIONS)}")
            continue
        split_folder = parts[-3].lower() if len(parts) >= 3 else None
        if split_folder in ("train", "test") and (split_folder == "train") != (match.group(1) == "Training"):
            complain(f"{name}: a {match.group(1)} face in the {parts[-3]}/ folder; the export keeps Training faces "
                     "in train/ and PublicTest and PrivateTest faces in test/")
            continue
        # The export reuses an id for different faces in different emotion folders (two in FER2013's
        # Training): a copy is the same id in the same emotion, or the same id and the same bytes
        face = match.group(1), int(match.group(2)), folder_of[parts[-2].lower()]
        same_bytes = (*face[:2], hashlib.sha256(content).digest())
        if (other := first_seen.get(face) or first_seen.get(same_bytes)) is not None:
            complain(f"{name}: a second copy of {other}; keep one")
            continue
        first_seen[face] = first_seen[same_bytes] = name
        try:
            with Image.open(io.BytesIO(content)) as image:
                if image.size != (IMAGE_SIZE, IMAGE_SIZE):  # from the header: a huge image is never decoded
                    complain(f"{name}: image is {image.size[0]}x{image.size[1]}, expected 48x48")
                    continue
                if image.mode in _WIDE_MODES:
                    bits = 16 if image.mode.startswith("I;16") else 32
                    complain(f"{name}: {bits}-bit pixels (Pillow mode {image.mode}); FER2013 faces are 8-bit "
                             "grayscale: save it as 8-bit")
                    continue
                pixels = np.asarray(image.convert("L"))
                if image.mode not in ("L", "1") and _in_colour(image):
                    coloured.append(name)
        except UnidentifiedImageError:  # its message names an in-memory buffer, which tells the user nothing
            complain(f"{name}: not an image file (its bytes are no JPEG, PNG or BMP)")
            continue
        except Image.DecompressionBombError as exc:  # raised before the size is known, by Image.open
            complain(f"{name}: not a 48x48 face ({exc})")
            continue
        # ValueError: a mode Pillow cannot convert, e.g. CIELab; SyntaxError: how Pillow's PNG reader says a
        # chunk is broken (a wrong IDAT length), found only when the pixels are decoded
        except (OSError, ValueError, SyntaxError) as exc:
            complain(f"{name}: not a readable image ({exc})")
            continue
        records.append((SPLITS.index(face[0]), face[1], name, face[2], pixels))
    if not records and not problems.total:
        complain("no face images found: expected train/<emotion>/Training_<id>.jpg and "
                 "test/<emotion>/PublicTest_<id>.jpg, PrivateTest_<id>.jpg")
    if problems.total:
        raise DataFormatError(str(path), problems.kept, problems.total)
    records.sort(key=lambda r: (r[0], r[1], r[3]))  # split, numeric id, label: the CSV's row order
    return Dataset(
        images=np.stack([r[4] for r in records]),
        labels=np.array([r[3] for r in records], dtype=np.int64),
        splits=np.array([r[0] for r in records], dtype=np.int8),
        source=str(path), sha256=checksum, paths=[r[2] for r in records], layout="images",
        # FER2013's faces are grayscale: a colour face is another dataset's, or one edited since
        notes=[f"{len(coloured):,} of the faces are in colour (such as {coloured[0]}): read as grayscale, as "
               "FER2013's are (Pillow's luma, 0.299 R + 0.587 G + 0.114 B)"] if coloured else [],
    )


def _in_colour(image: Any) -> bool:
    """Whether a Pillow image's red, green and blue differ anywhere by more than a JPEG's rounding of a gray face
    saved as RGB (a few levels)."""
    rgb = np.asarray(image.convert("RGB")).astype(np.int16)
    return int(np.abs(rgb - rgb.mean(axis=2, keepdims=True)).max()) > 16


# ---------------------------------------------------------------------------------------------
# CSV: header detection, per-row fields in Python, pixels vectorised with NumPy

_HEADER_HELP = ("expected the columns emotion, Usage and pixels: 'emotion, Usage, pixels' "
                "(icml_face_data.csv) or 'emotion,pixels,Usage' (fer2013.csv)")
_LABELS = {str(i).encode(): i for i in range(len(EMOTIONS))}
_USAGES = {name.encode(): i for i, name in enumerate(SPLITS)}
_EMPTY_FILE = Problem(None, None, "the file is empty: expected a FER2013 CSV with the header 'emotion, Usage, pixels'")
_ROWS_PER_CHUNK = 2048  # bounds the temporaries of the vectorised pass to ~16 MB of text


class _Problems:
    """Collects problems, keeping the first few by their place in the file and counting them all.
    The passes over a file find problems out of line order, so the kept ones are sorted."""

    def __init__(self) -> None:
        self._kept: list[Problem] = []
        self._last_kept_line = 0  # once enough are kept, a problem on a later line will not be
        self.total = 0

    def add(self, line: int | None, column: int | None, message: str) -> None:
        self.total += 1
        self._kept.append(Problem(line, column, message))
        if len(self._kept) in (_MAX_PROBLEMS_KEPT, 2 * _MAX_PROBLEMS_KEPT):
            self._kept = self.kept
            self._last_kept_line = self._kept[-1].line or 0

    def counted_only(self, line: int) -> bool:
        """True, with the problem counted, when a problem on `line` cannot be among the kept ones: the
        caller then spares the work of describing it."""
        if len(self._kept) < _MAX_PROBLEMS_KEPT or line <= self._last_kept_line:
            return False
        self.total += 1
        return True

    @property
    def kept(self) -> list[Problem]:
        return sorted(self._kept, key=lambda p: (p.line or 0, p.column or 0))[:_MAX_PROBLEMS_KEPT]


def _parse_csv(raw: bytes, name: str, checksum: str) -> Dataset:
    start = 3 if raw.startswith(b"\xef\xbb\xbf") else 0
    if not raw[start:start + 65536].strip() and not raw[start:].strip():  # avoid copying a big file
        raise DataFormatError(name, [_EMPTY_FILE])
    _reject_binary(raw, start, name)

    header_end = raw.find(b"\n", start)
    if header_end < 0 and b"\r" in raw[start:start + 65536].rstrip(b"\r"):
        raise DataFormatError(name, [Problem(1, None, "the lines end in a carriage return alone (\\r, as old Mac "
                                                      "programs wrote them): save the file with LF or CRLF line ends")])
    header_end = len(raw) if header_end < 0 else header_end
    columns = [c.strip().strip(b'"').strip().lower() for c in raw[start:header_end].rstrip(b"\r").split(b",")]
    order = _column_order(columns, raw[start:header_end], name)

    problems = _Problems()
    line_starts, pix_starts, pix_ends, labels, splits, rows_lines = [], [], [], [], [], []
    find = raw.find
    pos, line_no, size = header_end + 1, 1, len(raw)
    while pos < size:
        line_no += 1
        end = find(b"\n", pos)
        nxt = end + 1
        if end < 0:
            end = nxt = size
        stop = end - 1 if end > pos and raw[end - 1] == 13 else end  # drop the \r of CRLF
        c1 = find(b",", pos, stop)
        if c1 < 0 and not raw[pos:stop].strip():
            pos = nxt
            continue  # blank lines carry no data
        c2 = find(b",", c1 + 1, stop) if c1 >= 0 else -1
        if c2 < 0 or find(b",", c2 + 1, stop) >= 0:
            fields = raw.count(b",", pos, stop) + 1
            problems.add(line_no, None, f"has {fields} field{'s' if fields != 1 else ''}, expected 3 "
                                        "(emotion, Usage, pixels)" + _truncation_hint(end >= size))
            pos = nxt
            continue
        bounds = ((pos, c1), (c1 + 1, c2), (c2 + 1, stop))
        (la, lb), (ua, ub), (pa, pb) = (bounds[i] for i in order)
        label_text = raw[la:lb].strip().strip(b'"')
        label = _LABELS.get(label_text)
        usage = _USAGES.get(raw[ua:ub].strip().strip(b'"'))
        if label is None and label_text.lower() == b"emotion":  # files joined, each with its header
            problems.add(line_no, _column(raw, pos, la), "the header line again, inside the data (two files "
                                                         "joined?): keep only the first header line")
            pos = nxt
            continue
        if label is None:
            problems.add(line_no, _column(raw, pos, la), _bad_label(raw[la:lb]))
        if usage is None:
            problems.add(line_no, _column(raw, pos, ua), f"unknown Usage {_show(raw[ua:ub])}: expected Training, "
                                                "PublicTest or PrivateTest")
        pa, pb = _strip_field(raw, pa, pb)
        if label is None or usage is None:
            pos = nxt
            continue
        line_starts.append(pos)
        pix_starts.append(pa)
        pix_ends.append(pb)
        labels.append(label)
        splits.append(usage)
        rows_lines.append(line_no)
        pos = nxt

    images = _parse_pixels(raw, np.array(line_starts), np.array(pix_starts), np.array(pix_ends),
                           np.array(rows_lines), problems, ends_with_newline=raw.endswith(b"\n"))
    if problems.total:
        raise DataFormatError(name, problems.kept, problems.total)
    if not labels:
        raise DataFormatError(name, [Problem(None, None, "the file has a header but no rows of faces")])
    notes = []
    if raw[-1:].isdigit():  # no line break after the last number: it may have lost digits to a cut
        notes.append(f"the file does not end with a line break, as FER2013's files do: if it was cut short (an "
                     f"interrupted download), the last face (line {rows_lines[-1]}) may have lost pixel digits")
    return Dataset(images=images, labels=np.array(labels, dtype=np.int64), splits=np.array(splits, dtype=np.int8),
                   source=name, sha256=checksum, lines=np.array(rows_lines, dtype=np.int64), layout="csv",
                   notes=notes)


def _reject_binary(raw: bytes, start: int, name: str) -> None:
    head = raw[start:start + 65536]
    if head[:2] in (b"\xff\xfe", b"\xfe\xff") or _looks_utf16(head):
        raise DataFormatError(name, [Problem(None, None, "the file is UTF-16 text: save it as UTF-8 (or plain ASCII), "
                                                         "as Kaggle's file is")])
    bad = next((i for i, b in enumerate(head) if b < 9 or 13 < b < 32 or b == 127), None)
    what = "is binary data: this is not a text CSV. Expected FER2013's icml_face_data.csv or fer2013.csv (plain, " \
           ".gz, .xz, .bz2 or .zip) or the image-folder export (a folder, .zip or .tar[.gz|.xz])"
    if bad is None:
        try:
            head.decode("utf-8")
            return
        except UnicodeDecodeError as exc:
            bad = exc.start
            what = "is not UTF-8 text (the file was saved in another encoding?): save it as UTF-8"
    line = head.count(b"\n", 0, bad) + 1
    column = _column(head, head.rfind(b"\n", 0, bad) + 1, bad)
    raise DataFormatError(name, [Problem(line, column, f"byte 0x{head[bad]:02x} {what}")])


def _looks_utf16(head: bytes) -> bool:
    """UTF-16 text without a BOM: every other byte 0, the others printable ASCII (not any binary)."""
    if len(head) < 64:
        return False
    text_bytes = set(range(32, 127)) | {9, 10, 13}
    return any(not any(head[zeros::2]) and set(head[1 - zeros::2]) <= text_bytes for zeros in (0, 1))


def _column_order(columns: list[bytes], header: bytes, name: str) -> tuple[int, int, int]:
    wanted = (b"emotion", b"usage", b"pixels")
    if sorted(columns) == sorted(wanted):
        return tuple(columns.index(w) for w in wanted)
    if columns and columns[0][:1].isdigit():
        message = f"missing header: line 1 starts with data; {_HEADER_HELP}"
    else:
        shown = _show(header.rstrip(b"\r"))
        message = f"unknown header {shown}: {_HEADER_HELP}"
        separated = {b";": "semicolons (as Excel saves a CSV where the comma is the decimal mark)", b"\t": "tabs"}
        if how := next((how for sep, how in separated.items() if sorted(
                field.strip(b' "').lower() for field in header.rstrip(b"\r").split(sep)) == sorted(wanted)), None):
            message = f"header {shown}: its columns are separated by {how}; save the file comma-separated, as " \
                      "Kaggle's is"
        elif b"usage" not in columns and b"pixels" in columns:
            message += " (Kaggle's train.csv/test.csv lack the Usage column that gives the splits)"
    raise DataFormatError(name, [Problem(1, None, message)])


def _strip_field(raw: bytes, a: int, b: int) -> tuple[int, int]:
    """Narrow [a, b) past surrounding spaces and one pair of quotes."""
    while a < b and raw[a] in b" \t":
        a += 1
    while b > a and raw[b - 1] in b" \t":
        b -= 1
    if b - a >= 2 and raw[a] == 34 and raw[b - 1] == 34:
        a, b = a + 1, b - 1
    return a, b


def _bad_label(text: bytes) -> str:
    value = text.strip().strip(b'"')
    kinds = ", ".join(f"{i} {e}" for i, e in enumerate(EMOTIONS))
    number = re.fullmatch(rb"(-?)0*(\d+)", value)
    if number and not number[1] and number[2] in _LABELS:
        return f"emotion {_show(value)} has a leading zero: write {number[2].decode()} ({kinds})"
    if number:
        return f"emotion {_show(value, quote=False)} is outside 0-6 ({kinds})"
    return f"emotion {_show(text)} is not an integer 0-6 ({kinds})"


def _show(text: bytes, limit: int = 40, quote: bool = True) -> str:
    """Text from the file for a message: quoted, and cut short (a bad field may be megabytes long)."""
    shown = text.decode("utf-8", "replace")
    shown = shown if len(shown) <= limit else f"{shown[:limit]}... ({len(shown):,} characters)"
    return repr(shown) if quote else shown


def _truncation_hint(at_end: bool) -> str:
    return "; the file ends in the middle of this row: it looks truncated (download it again)" if at_end else ""


def _pair_table() -> np.ndarray:
    """Value of the two bytes before a number's last digit, indexed by tens << 8 | hundreds.

    Bytes are digit values (ASCII - 48): 0-9 for digits, anything else for separators. A hundreds
    digit counts only when the tens is a digit too (else it belongs to the previous number).
    """
    low = np.arange(65536) & 0xFF
    high = np.arange(65536) >> 8
    table = np.where(high < 10, 10 * high + np.where(low < 10, 100 * low, 0), 0)
    return table.astype(np.uint16)


_PAIR_VALUE = _pair_table()
_PAD = 3  # leading separators, so that looking two bytes back from any number stays in bounds


def _parse_pixels(raw: bytes, line_starts: np.ndarray, pix_starts: np.ndarray, pix_ends: np.ndarray,
                  rows_lines: np.ndarray, problems: _Problems, ends_with_newline: bool) -> np.ndarray:
    """Parse each row's pixel field (raw[pix_starts[i]:pix_ends[i]]) into images, vectorised.

    A chunk of rows is copied into a uint8 array with the bytes between pixel fields blanked to
    spaces. The last digit of each number is where a digit is followed by a non-digit; its value
    is that digit plus a table lookup of the two bytes before it. The common path makes a handful
    of passes over the text; the slow path that locates problems runs only for a bad file.
    """
    n_rows = len(pix_starts)
    images = np.empty((n_rows, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    buffer = np.frombuffer(raw, dtype=np.uint8)
    chunks = [(r0, min(r0 + _ROWS_PER_CHUNK, n_rows)) for r0 in range(0, n_rows, _ROWS_PER_CHUNK)]
    longest = max((int(pix_ends[r1 - 1] - pix_starts[r0]) + _PAD for r0, r1 in chunks), default=0)
    # Buffers reused by every chunk: fresh 16 MB arrays would cost a page fault per 4 kB.
    work_buf = np.empty(longest, dtype=np.uint8)
    digit_buf, flag_buf = np.empty(longest, dtype=bool), np.empty(longest, dtype=bool)
    for r0, r1 in chunks:
        base = int(pix_starts[r0]) - _PAD  # chunk position k is raw offset base + k
        size = int(pix_ends[r1 - 1]) - base
        work, is_digit, flags = work_buf[:size], digit_buf[:size], flag_buf[:size]
        work[:_PAD] = 240
        np.subtract(buffer[base + _PAD:base + size], np.uint8(48), out=work[_PAD:])
        # digits are now 0-9, a space 240, anything else another value
        seg_starts, seg_ends = pix_starts[r0:r1] - base, pix_ends[r0:r1] - base
        for gap_start, gap_end in zip(seg_ends[:-1].tolist(), seg_starts[1:].tolist()):
            work[gap_start:gap_end] = 240
        np.less(work, 10, out=is_digit)
        np.equal(work, 240, out=flags)
        n_digits = np.count_nonzero(is_digit)
        bad_rows = set()  # rows already reported for a bad character: their pixel count means nothing
        if n_digits + np.count_nonzero(flags) != size:
            bad_rows = _report_bad_characters(raw, np.flatnonzero(~is_digit & (work != 240)) + base, r0,
                                              line_starts, pix_starts, rows_lines, problems)
        last_digit = flags
        np.greater(is_digit[:-1], is_digit[1:], out=last_digit[:-1])
        last_digit[-1] = is_digit[-1]
        # Positions count from _PAD, so the bytes 1, 2 and 3 before a number's end are contiguous
        # views gathered with the same index (no index arithmetic, no strided gathers).
        ends = np.flatnonzero(last_digit[_PAD:])
        tens, hundreds = work[_PAD - 1:][ends], work[_PAD - 2:][ends]
        values = work[_PAD:][ends] + _PAIR_VALUE[(tens.astype(np.uint16) << 8) | hundreds]
        counts = np.searchsorted(ends, seg_ends - _PAD) - np.searchsorted(ends, seg_starts - _PAD)
        for row in np.flatnonzero(counts != N_PIXELS):
            i = r0 + row
            if i in bad_rows:
                continue
            at_end = i == n_rows - 1 and not ends_with_newline
            problems.add(int(rows_lines[i]), None,
                         f"has {counts[row]} pixel values, expected {N_PIXELS} (48x48)" + _truncation_hint(at_end))
        has_tens = tens < 10
        digits_read = len(ends) + np.count_nonzero(has_tens) + np.count_nonzero(has_tens & (hundreds < 10))
        longer = digits_read != n_digits  # some number has 4+ digits
        if longer or values.max(initial=0) > 255:  # the masks cost a good full CSV 1.45 s instead of 1.03
            over = values > 255
            suspect = over
            if longer:
                four_or_more = has_tens & (hundreds < 10) & (work[ends] < 10)
                # exactly four digits, the first a 0 ("0042"): the three read are the value
                padded = four_or_more & (work[ends] == 0) & (work[np.maximum(ends - 1, 0)] >= 10)
                suspect = over | (four_or_more & ~padded)
            if suspect.any():
                _report_out_of_range(raw, ends[suspect] + base + _PAD, over[suspect], r0, line_starts, pix_starts,
                                     rows_lines, problems)
        if (counts == N_PIXELS).all():
            images[r0:r1] = values.reshape(r1 - r0, IMAGE_SIZE, IMAGE_SIZE)
    return images


_WORD_STOPS = b' \t\r\n,"'
_STOP_ADVICE = {  # a byte that ends a word but may not stand in the pixels: what it is, what to do
    9: "a tab: separate the pixel values with single spaces",
    13: "a carriage return (\\r) inside the line: end the lines with LF or CRLF",
    34: "a quote (\"): quote the whole pixels field, at both ends, or not at all",
}


def _column(raw: bytes, line_start: int, offset: int) -> int:
    """The 1-based column of raw[offset] as an editor counts it: characters, not bytes."""
    before = raw[line_start:offset]
    return len(before) + 1 if before.isascii() else len(before.decode("utf-8", "replace")) + 1


def _word_at(raw: bytes, offset: int) -> tuple[int, bytes]:
    """The word around raw[offset] (up to whitespace, a comma or a quote), and where it starts."""
    left = offset
    while left > 0 and raw[left - 1] not in _WORD_STOPS:
        left -= 1
    right = offset
    while right < len(raw) and raw[right] not in _WORD_STOPS:
        right += 1
    return left, raw[left:right]


def _first_per_row(offsets: np.ndarray, r0: int, line_starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows of sorted raw `offsets` within the chunk from row r0, and where each row's offsets begin."""
    rows = r0 + np.searchsorted(line_starts[r0:r0 + _ROWS_PER_CHUNK], offsets, side="right") - 1
    return rows, np.flatnonzero(np.diff(rows, prepend=-1))


def _pixel_number(raw: bytes, pixels_start: int, word_start: int) -> str:
    """Which pixel of its row the word at `word_start` is, for the message: the column alone is a
    character position, which does not say it."""
    return f"pixel {len(raw[pixels_start:word_start].split()) + 1} of {N_PIXELS}"


def _report_bad_characters(raw: bytes, offsets: np.ndarray, r0: int, line_starts: np.ndarray, pix_starts: np.ndarray,
                           rows_lines: np.ndarray, problems: _Problems) -> set[int]:
    """One problem per row (the first bad byte): a file of tab-separated pixels has millions."""
    rows, firsts = _first_per_row(offsets, r0, line_starts)
    for i, offset in zip(rows[firsts].tolist(), offsets[firsts].tolist()):
        line = int(rows_lines[i])
        if problems.counted_only(line):
            continue
        byte = raw[offset]
        if byte in _STOP_ADVICE:  # name the byte, not the number beside it
            before = len(raw[int(pix_starts[i]):offset].split())
            where = "before pixel 1" if before == 0 else f"after pixel {before} of {N_PIXELS}"
            problems.add(line, _column(raw, int(line_starts[i]), offset), f"{where}, {_STOP_ADVICE[byte]}")
            continue
        left, word = _word_at(raw, offset)
        problems.add(line, _column(raw, int(line_starts[i]), left),
                     f"pixel value {_show(word)} is not an integer 0-255 ({_pixel_number(raw, int(pix_starts[i]), left)})")
    return set(rows[firsts].tolist())


def _report_out_of_range(raw: bytes, ends: np.ndarray, over: np.ndarray, r0: int, line_starts: np.ndarray,
                         pix_starts: np.ndarray, rows_lines: np.ndarray, problems: _Problems) -> None:
    """One problem per row, at its first value over 255. `ends` are the last digits of the numbers
    that may be (`over`: their last three digits alone are; the others have 4+ digits)."""
    def too_big(j: int) -> bool:  # a number (not "3.500", reported as a bad character) and no leading zeros alone:
        # up to three digits past its zeros, its value is that of its last three, which `over` judged
        word = _word_at(raw, int(ends[j]))[1]
        return word.isdigit() and (bool(over[j]) or len(word.lstrip(b"0")) > 3)

    rows, firsts = _first_per_row(ends, r0, line_starts)
    for k, start in enumerate(firsts.tolist()):
        stop = int(firsts[k + 1]) if k + 1 < len(firsts) else len(ends)
        first = next((j for j in range(start, stop) if too_big(j)), None)
        if first is None:
            continue  # only leading zeros
        i, line = int(rows[first]), int(rows_lines[rows[first]])
        if problems.counted_only(line):
            continue
        left, word = _word_at(raw, int(ends[first]))
        problems.add(line, _column(raw, int(line_starts[i]), left),
                     f"pixel value {_show(word, 12, quote=False)} is outside 0-255 "
                     f"({_pixel_number(raw, int(pix_starts[i]), left)})")


# ---------------------------------------------------------------------------------------------
# Cache: parsed arrays keyed by the data file's sha256; a stat index avoids re-hashing


def _stat_key(path: Path, files: list[tuple[str, Path]] | None) -> str:
    """A file's or a folder's identity without reading it (`files`: the folder's `_folder_files`, None
    for a file). The change time is in it because a program can set the modification time back after
    a same-size edit, but not the change time."""
    path = path.resolve()
    if files is not None:
        digest = hashlib.sha256()
        for rel, file in files:
            try:
                st = file.stat()
            except OSError:  # a broken link: it changes the key too, and the load that follows names it
                st = file.lstat()
            digest.update(f"{rel}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}\n".encode("utf-8", "surrogateescape"))
        return f"dir:{path}:{digest.hexdigest()}"
    st = path.stat()
    return f"file:{path}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}"


class _Cache:
    """Folders `<sha256>-v<version>/` of .npy arrays, plus `index.json` mapping a file's identity
    (`_stat_key`: path, size, modification and change times, inode) to its sha256, so that a cached
    load need not hash the file again."""

    def __init__(self, root: Path):
        self.root = root

    def _index(self) -> dict[str, str]:
        try:
            index = read_json(self.root / "index.json")
        except (OSError, ValueError):
            return {}
        return index if isinstance(index, dict) else {}

    def _folder(self, checksum: str) -> Path:
        return self.root / f"{checksum}-v{CACHE_VERSION}"

    def get(self, stat_key: str) -> Dataset | None:
        checksum = self._index().get(stat_key)
        return self.get_by_sha(checksum) if checksum else None

    def get_by_sha(self, checksum: str) -> Dataset | None:
        folder = self._folder(checksum)
        try:
            meta = read_json(folder / "meta.json")
            arrays = {name: np.load(folder / f"{name}.npy", allow_pickle=False) for name in meta["arrays"]}
            return Dataset(images=arrays["images"], labels=arrays["labels"], splits=arrays["splits"],
                           source=meta["source"], sha256=checksum, lines=arrays.get("lines"), paths=meta.get("paths"),
                           layout=meta["layout"], notes=meta["notes"], from_cache=True)
        except (OSError, ValueError, KeyError, TypeError):
            return None  # missing or damaged: parse the file again

    def remember(self, stat_key: str, checksum: str) -> None:
        try:
            index = self._index()
            index[stat_key] = checksum
            write_json(self.root / "index.json", index)
        except OSError:
            pass  # a read-only cache only costs speed

    def put(self, stat_key: str, dataset: Dataset) -> str | None:
        """Keep `dataset`; the reason when the cache cannot be written (a read-only cache only costs speed)."""
        arrays = {"images": dataset.images, "labels": dataset.labels, "splits": dataset.splits}
        if dataset.lines is not None:
            arrays["lines"] = dataset.lines
        meta = {"source": dataset.source, "layout": dataset.layout, "arrays": list(arrays), "paths": dataset.paths,
                "notes": dataset.notes}
        folder = self._folder(dataset.sha256)
        tmp = None
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=self.root))
            for name, array in arrays.items():
                np.save(tmp / f"{name}.npy", array)
            write_json(tmp / "meta.json", meta)
            if folder.exists():
                shutil.rmtree(folder)  # a stale or damaged copy of the same checksum
            os.replace(tmp, folder)  # the folder appears whole or not at all
        except OSError as exc:
            if tmp is not None:  # None: the cache folder itself cannot be made
                shutil.rmtree(tmp, ignore_errors=True)
            return "it is a file" if self.root.is_file() else exc.strerror or str(exc)
        self.remember(stat_key, dataset.sha256)
        return None


# ---------------------------------------------------------------------------------------------
# `ferkit data`: what the user sees first


def summarize(path: str | os.PathLike, out_dir: str | os.PathLike, seed: int = 0, cache: bool = True) -> dict:
    """Load `path`, then write summary.json, samples.png and class_balance.png into `out_dir`.

    Example: ``ferkit data icml_face_data.csv --out runs/data``
    """
    from ferkit import visualize
    from ferkit.config import check_seed

    check_seed(seed)
    require_outside(path, out_dir)
    dataset = load(path, cache=cache)
    out = output_folder(out_dir)
    require_own_files(out, {"summary.json": json_with("faces_sha256", "counts")}, "ferkit data")
    counts = dataset.counts()
    sizes = [sum(counts[split]) for split in SPLITS]
    notes = list(dataset.notes)
    if sizes != list(FER2013_COUNTS.values()):
        published = ", ".join(f"{n:,} {split}" for split, n in FER2013_COUNTS.items())
        notes.append(f"FER2013 has {published} faces; this file has {', '.join(f'{n:,}' for n in sizes)}: a subset, "
                     "or a file cut short?")
    if empty := [split for split in SPLITS if not sum(counts[split])]:
        notes.append(f"no {' and no '.join(empty)} faces: train needs Training and PublicTest, evaluate PrivateTest")
    if missing := [name for i, name in enumerate(EMOTIONS) if not sum(counts[split][i] for split in SPLITS)]:
        notes.append(f"no {', '.join(missing)} face in any split")
    for split in SPLITS:  # a class missing from one split only: never learnt (Training) or never scored
        if sum(counts[split]) and (absent := [name for i, name in enumerate(EMOTIONS)
                                              if not counts[split][i] and name not in missing]):
            notes.append(f"no {', '.join(absent)} face in {split}" +
                         (": a model trained on this file is never shown one" if split == "Training" else ""))
    summary = {
        "source": str(path),
        "sha256": dataset.sha256,
        "faces_sha256": dataset.faces_sha256,  # what runs record as data_faces_sha256: equal for every copy
        "layout": dataset.layout,
        "rows": len(dataset),
        "classes": list(EMOTIONS),
        "counts": counts,
        "load_seconds": round(dataset.load_seconds, 4),
        "from_cache": dataset.from_cache,
        "notes": notes,
    }
    write_json(out / "summary.json", summary)
    train = dataset.indices("Training")
    pool = train if len(train) else np.arange(len(dataset))
    title = None if len(train) else "faces of every split (this data has no Training split), a row per emotion"
    visualize.sample_grid(dataset.images[pool], dataset.labels[pool], out / "samples.png", seed=seed,
                          **({"title": title} if title else {}))
    visualize.class_balance(counts, out / "class_balance.png")
    return summary


def counts_table(counts: dict[str, list[int]]) -> str:
    """The per-split class counts as a plain-text table."""
    width = max(len(e) for e in EMOTIONS) + 2
    header = "split".ljust(12) + "".join(e.rjust(width) for e in EMOTIONS) + "total".rjust(9)
    rows = [header]
    for split, values in counts.items():
        rows.append(split.ljust(12) + "".join(str(v).rjust(width) for v in values) + str(sum(values)).rjust(9))
    return "\n".join(rows)
