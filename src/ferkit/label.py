"""Humans versus the CNN, part 1: label PrivateTest faces by hand in a local web page.

``ferkit label DATA --n 100 --seed 0 --out labels.csv`` samples `n` PrivateTest faces with
``numpy.random.default_rng(seed)`` (the order is part of the sample), serves a page on 127.0.0.1
(`--host` to change it) that shows one face at a time (48x48, upscaled without smoothing) with
seven emotion buttons (keys 1-7), a way back to change an answer (Backspace, the left arrow or
the Back button) and the progress. The page never learns the true label or any model's guess: the server does not hold them.

Every answer rewrites ``labels.csv`` at once (a temporary file synced to disk, then an atomic
rename, synced too), so a closed tab, a killed server or a power cut loses at most the face on
screen. One server at a time serves a labels file: it holds a lock on ``labels.csv.lock``, which
stays beside it (the system lets go of the lock when the server ends, however it ends). The
sample (data checksum, seed, n and the faces in order) lives in the sidecar ``labels.csv.json``;
running the same command again resumes where it stopped; other data (other faces, labels or
splits; a copy of the same faces in another file is fine), another seed or n is refused.
``labels.csv`` columns: index, line (or path for image-folder data), usage, human,
human_label, seconds (how long the face was on screen before the answer that stands); a copy saved
with a BOM (Excel's CSV UTF-8) still reads. ``--export-with-truth`` never writes over the data, the
labels or their sidecar.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

import numpy as np

from ferkit import data as fdata
from ferkit.config import check_seed
from ferkit.data import EMOTIONS
from ferkit.errors import FerkitError
from ferkit.fileio import hold_lock, output_file, read_json, require_outside, same_file, write_csv, write_json

SPLIT = "PrivateTest"
SIDECAR_FORMAT = "ferkit-labels"
SIDECAR_VERSION = 2  # 2: the sample's rows too, which every copy of the same faces shares
DEFAULT_N = 100
DEFAULT_SEED = 0
DEFAULT_PORT = 8765
MAX_BODY = 4096  # bytes of one POST /api/answer
MAX_SECONDS = 7 * 24 * 3600.0
_FACE_PATH = re.compile(r"/face/(0|[1-9][0-9]{0,8})\.png")


def sidecar_path(labels_csv: str | os.PathLike) -> Path:
    """The sample's description beside the labels: ``labels.csv`` -> ``labels.csv.json``."""
    return Path(str(labels_csv) + ".json")


def sample_rows(dataset: fdata.Dataset, n: int, seed: int) -> np.ndarray:
    """`n` PrivateTest rows of `dataset`, chosen and ordered by ``default_rng(seed)``."""
    pool = dataset.indices(SPLIT)
    if n < 1:
        raise FerkitError(f"--n {n}: label at least one face")
    if not len(pool):
        raise FerkitError(f"{dataset.source}: no {SPLIT} faces to label")
    if n > len(pool):
        raise FerkitError(f"--n {n}: {dataset.source} has only {len(pool)} {SPLIT} faces")
    return np.random.default_rng(seed).choice(pool, size=n, replace=False)


def _columns(origin_column: str) -> list[str]:
    return ["index", origin_column, "usage", "human", "human_label", "seconds"]


# ---------------------------------------------------------------------------------------------
# The sidecar and labels.csv on disk


def _starts_as_labels(labels_csv: Path) -> bool:
    """Whether the file's first line is the header `ferkit label` writes."""
    try:
        with open(labels_csv, encoding="utf-8-sig", errors="replace", newline="") as f:  # as _read_answers reads
            first = f.readline(1000).rstrip("\r\n")
    except OSError:
        return True  # unreadable: the message about its sidecar stands
    return first in (",".join(_columns("line")), ",".join(_columns("path")))


def _read_meta(labels_csv: Path) -> dict[str, Any]:
    side = sidecar_path(labels_csv)
    try:
        meta = read_json(side)
    except FileNotFoundError:
        if not _starts_as_labels(labels_csv):  # the data, or an --export-with-truth file, given as the labels
            raise FerkitError(f"{labels_csv}: not a labels file of `ferkit label` (whose header begins "
                              f"{','.join(_columns('line')[:2])} or {','.join(_columns('path')[:2])}); give the "
                              "labels.csv that `ferkit label DATA --out labels.csv` wrote") from None
        raise FerkitError(f"{side}: missing; it records which faces {labels_csv.name} labels (data checksum, "
                          "seed, n): keep it beside the labels") from None
    except (OSError, ValueError) as exc:
        raise FerkitError(f"{side}: cannot read it as a ferkit labels sidecar ({exc})") from None
    if isinstance(meta, dict) and isinstance(meta.get("version"), int) and meta["version"] > SIDECAR_VERSION:
        raise FerkitError(f"{side}: written by a newer ferkit (sidecar version {meta['version']}, this one reads "
                          f"{SIDECAR_VERSION}); upgrade ferkit")
    keys = ("data_sha256", "seed", "n", "sample", "origin_column")
    if not isinstance(meta, dict) or meta.get("format") != SIDECAR_FORMAT or any(k not in meta for k in keys) \
            or not isinstance(meta["sample"], list) or len(meta["sample"]) != meta["n"]:
        raise FerkitError(f"{side}: not a ferkit labels sidecar (expected format {SIDECAR_FORMAT!r} with "
                          f"{', '.join(keys)})")
    return meta


def _rows_of_sample(meta: dict[str, Any], dataset: fdata.Dataset, side: Path) -> np.ndarray:
    """The rows of `dataset` that the sample labels: those recorded (sidecar version 2), else, for an older
    sidecar and the labelled file itself, those at the recorded lines (or paths)."""
    pool = dataset.indices(SPLIT)
    if "rows" in meta:
        # Rows, not lines: a copy of the same faces may have other line numbers (a blank line added, say), or
        # be the image-folder export of the labelled CSV (or the reverse), whose faces come in the same rows
        rows = meta["rows"]
        if not isinstance(rows, list) or len(rows) != meta["n"] or not all(type(r) is int for r in rows) \
                or not np.isin(rows, pool).all():
            raise FerkitError(f"{side}: its rows are not {meta['n']} {SPLIT} rows of the data")
        return np.array(rows, dtype=np.int64)
    column = dataset.origin_column
    if meta["origin_column"] != column:
        raise FerkitError(f"{side}: the sample is recorded by {meta['origin_column']}, but the data is "
                          f"{'an image-folder export' if column == 'path' else 'a CSV'}; pass the file that was "
                          f"labelled ({meta.get('data')})")
    if meta["data_sha256"] != dataset.sha256:
        raise FerkitError(f"{side}: written by an older ferkit, it names its faces by {meta['origin_column']} only, "
                          f"which another copy of the faces may number otherwise; pass the file that was labelled "
                          f"({meta.get('data')}, sha256 {str(meta['data_sha256'])[:12]}...)")
    where = {origin: int(row) for origin, row in zip(dataset.origins(pool), pool)}
    try:
        return np.array([where[origin] for origin in meta["sample"]], dtype=np.int64)
    except (KeyError, TypeError):
        raise FerkitError(f"{side}: its sample names faces that are not {SPLIT} faces of the data") from None


def _short(value: object) -> str:
    """A number as typed for a message, cut short: a hand-edited file or a request may hold thousands of digits."""
    text = str(value)
    return text if len(text) <= 24 else f"{text[:20]}... ({len(text)} characters)"


def _read_answers(labels_csv: Path, origin_column: str, origins: list) -> dict[int, tuple[int, float]]:
    """{index: (label, seconds)} from labels.csv, every row checked against the sample."""
    if not labels_csv.exists() or labels_csv.stat().st_size == 0:
        return {}
    try:
        text = labels_csv.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise FerkitError(f"{labels_csv}: cannot read it ({exc})") from None
    reader = csv.reader(io.StringIO(text))
    try:
        records = list(reader)
    except csv.Error as exc:  # a field over csv's 128 KiB limit, say: a broken edit, or not a labels file
        raise FerkitError(f"{labels_csv}: line {reader.line_num}: {exc}; give the labels.csv that `ferkit label` "
                          "wrote") from None
    header = records[0] if records else None
    if header != _columns(origin_column):
        raise FerkitError(f"{labels_csv}: expected the columns {','.join(_columns(origin_column))}, "
                          f"found {','.join(header or [])}")
    answers: dict[int, tuple[int, float]] = {}
    for line_no, row in enumerate(records[1:], start=2):
        if not row:
            continue

        def bad(message: str) -> FerkitError:
            return FerkitError(f"{labels_csv}: line {line_no}: {message}")

        if len(row) != 6:
            raise bad(f"has {len(row)} fields, expected 6")
        try:
            index, label, seconds = int(row[0]), int(row[4]), float(row[5])
        except ValueError:
            raise bad("index and human_label must be integers, seconds a number") from None
        if not (math.isfinite(seconds) and 0 <= seconds <= MAX_SECONDS):
            raise bad(f"seconds {_short(row[5])} must be between 0 and {MAX_SECONDS:.0f}")
        if not 0 <= index < len(origins):
            raise bad(f"index {_short(index)} is outside the sample of {len(origins)} faces")
        if index in answers:
            raise bad(f"face {index} is labelled twice")
        if str(origins[index]) != row[1]:
            raise bad(f"face {index} is {origin_column} {origins[index]} of the sample, not {row[1]}")
        if not 0 <= label < len(EMOTIONS) or row[3] != EMOTIONS[label]:
            raise bad(f"human {row[3]!r} and human_label {row[4]!r} do not name the same emotion")
        answers[index] = (label, seconds)
    return answers


@dataclass
class Labels:
    """The answered faces of a labels.csv, in sample order, mapped onto a dataset's rows."""

    index: np.ndarray  # (k,) positions in the sample
    rows: np.ndarray  # (k,) rows of the dataset
    human: np.ndarray  # (k,) int64, index into EMOTIONS
    seconds: np.ndarray  # (k,) float
    origin_column: str  # "line" or "path": the dataset's, which a copy in the other layout names otherwise
    origins: list  # (k,) the line (or path) of each face in the dataset read, which a copy may number otherwise
    meta: dict[str, Any]  # the sidecar

    def __len__(self) -> int:
        return len(self.index)


def _require_labelled_data(dataset: fdata.Dataset, meta: dict[str, Any], labels_csv: Path, todo: str) -> None:
    """Stop unless `dataset` is the labelled file, or a copy of its faces (compressed, re-saved)."""
    fdata.require_recorded(dataset, meta, f"whose faces {labels_csv} labels", meta.get("data"), todo=todo)


def read_labels(labels_csv: str | os.PathLike, dataset: fdata.Dataset) -> Labels:
    """Read labels.csv and its sidecar, check they belong to `dataset`, map the faces to its rows."""
    labels_csv = Path(labels_csv)
    if not labels_csv.exists():
        raise FerkitError(f"{labels_csv}: no such file; label faces with `ferkit label DATA --out {labels_csv}`")
    if labels_csv.is_dir():  # else its sidecar, FOLDER.json, would be reported missing
        raise FerkitError(f"{labels_csv}: is a folder; give the labels CSV that `ferkit label` wrote (such as "
                          f"{labels_csv / 'labels.csv'})")
    meta = _read_meta(labels_csv)
    _require_labelled_data(dataset, meta, labels_csv, "pass the file that was labelled")
    side = sidecar_path(labels_csv)
    sample = _rows_of_sample(meta, dataset, side)
    answers = _read_answers(labels_csv, meta["origin_column"], meta["sample"])
    index = np.array(sorted(answers), dtype=np.int64)
    rows = sample[index] if len(index) else np.zeros(0, np.int64)
    return Labels(index=index, rows=rows, human=np.array([answers[i][0] for i in index], dtype=np.int64),
                  seconds=np.array([answers[i][1] for i in index], dtype=np.float64),
                  origin_column=dataset.origin_column, origins=dataset.origins(rows), meta=meta)


def export_with_truth(data: str | os.PathLike, labels_csv: str | os.PathLike, out: str | os.PathLike) -> int:
    """Write the answers of `labels_csv` joined with the true labels of `data` to `out`; returns their count.

    Example: ``ferkit label icml_face_data.csv --out labels.csv --export-with-truth labels_truth.csv``
    """
    # the lock too: a new file in its place would let a second server lock it while the first still serves
    if any(same_file(out, kept) for kept in (data, labels_csv, sidecar_path(labels_csv), f"{labels_csv}.lock")):
        raise FerkitError(f"--export-with-truth {out}: choose a file other than the data, the labels and their "
                          "sidecar or lock")
    output_file(out, "--export-with-truth", create_folder=False)
    require_outside(data, out, "--export-with-truth")  # a CSV in an image-folder export stops its next load
    dataset = fdata.load(data)
    labels = read_labels(labels_csv, dataset)
    truths = dataset.labels[labels.rows].astype(int)
    write_csv(out, _columns(labels.origin_column) + ["true", "true_label", "correct"],
              ([int(labels.index[k]), labels.origins[k], SPLIT, EMOTIONS[human], human,
                _format_seconds(labels.seconds[k]), EMOTIONS[truth], truth, int(truth == human)]
               for k, (human, truth) in enumerate(zip(labels.human.astype(int).tolist(), truths.tolist()))))
    return len(labels)


def _format_seconds(seconds: float) -> str:
    return f"{seconds:.3f}"


# ---------------------------------------------------------------------------------------------
# The labelling session: the sample, the answers and labels.csv, all changes under one lock


class AnswerError(Exception):
    """An answer the session refuses; `status` is the HTTP status the server replies with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class LabelSession:
    """The faces to label (pixels and origin only: never the true label) and the answers so far."""

    def __init__(self, labels_csv: Path, meta: dict[str, Any], images: np.ndarray,
                 answers: dict[int, tuple[int, float]]):
        self.labels_csv = labels_csv
        self.meta = meta
        self.origin_column: str = meta["origin_column"]
        self.origins: list = list(meta["sample"])
        self._images = images  # (n, 48, 48) uint8, in sample order
        self._answers = dict(answers)
        self._pngs: dict[int, bytes] = {}
        self._lock = threading.Lock()

    @classmethod
    def open(cls, data: str | os.PathLike, labels_csv: str | os.PathLike, n: int | None = None,
             seed: int | None = None) -> LabelSession:
        """Start a new sample in `labels_csv`, or resume the one recorded beside it."""
        labels_csv = output_file(labels_csv, "--out", create_folder=False)
        require_outside(data, labels_csv)  # in an image-folder export, labels.csv would stop the next load of it
        side = sidecar_path(labels_csv)
        dataset = fdata.load(data)
        if side.exists():
            meta = _read_meta(labels_csv)
            _require_labelled_data(dataset, meta, labels_csv, "resume with that file, or choose another --out")
            for name, given in (("n", n), ("seed", seed)):
                if given is not None and given != meta[name]:
                    raise FerkitError(f"{labels_csv} was started with --{name} {meta[name]}, not {given}: resume "
                                      f"with --{name} {meta[name]} (or leave it out), or choose another --out")
            rows = _rows_of_sample(meta, dataset, side)
        else:
            if labels_csv.exists() and labels_csv.stat().st_size > 0:
                raise FerkitError(f"{labels_csv} exists but {side.name} (which faces it labels: data checksum, seed, "
                                  "n) does not: move the file away or choose another --out")
            n = DEFAULT_N if n is None else n
            seed = DEFAULT_SEED if seed is None else seed
            check_seed(seed)
            rows = sample_rows(dataset, n, seed)
            meta = {
                # absolute: compare finds the file from any working folder
                "format": SIDECAR_FORMAT, "version": SIDECAR_VERSION, "data": str(Path(data).resolve()),
                **dataset.checksums(), "layout": dataset.layout, "split": SPLIT, "seed": int(seed), "n": int(n),
                "origin_column": dataset.origin_column, "sample": dataset.origins(rows), "rows": rows.tolist(),
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
            write_json(side, meta)
        answers = _read_answers(labels_csv, meta["origin_column"], meta["sample"])
        session = cls(labels_csv, meta, np.ascontiguousarray(dataset.images[rows]), answers)
        if not labels_csv.exists():
            session._write(session._answers)  # the header: the user sees at once where answers go
        return session

    @property
    def n(self) -> int:
        return len(self.origins)

    def _next(self) -> int:
        return next((k for k in range(self.n) if k not in self._answers), self.n)

    def state(self) -> dict[str, Any]:
        """What the page may know: the emotion names, the progress and the human's own answers."""
        with self._lock:
            return self._state()

    def _state(self) -> dict[str, Any]:
        following = self._next()
        return {"n": self.n, "next": following, "answered": len(self._answers), "done": following >= self.n,
                "emotions": list(EMOTIONS),
                "answers": [self._answers[k][0] if k in self._answers else None for k in range(self.n)]}

    def face_png(self, index: int) -> bytes:
        """Face `index` of the sample as a 48x48 grayscale PNG (no metadata)."""
        if not 0 <= index < self.n:
            raise AnswerError(HTTPStatus.NOT_FOUND, f"no face {_short(index)}: the sample has faces 0 to {self.n - 1}")
        with self._lock:
            png = self._pngs.get(index)
        if png is None:
            from PIL import Image

            buffer = io.BytesIO()
            Image.fromarray(self._images[index], mode="L").save(buffer, format="PNG")
            png = buffer.getvalue()
            with self._lock:
                self._pngs[index] = png
        return png

    def answer(self, index: int, label: int, seconds: float) -> dict[str, Any]:
        """Record (or change) the answer for face `index`, rewrite labels.csv, return the new state."""
        if not 0 <= label < len(EMOTIONS):
            raise AnswerError(HTTPStatus.BAD_REQUEST, f"label {_short(label)} is out of range: use 0 to {len(EMOTIONS) - 1}")
        if not 0 <= index < self.n:
            raise AnswerError(HTTPStatus.BAD_REQUEST, f"index {_short(index)} is out of range: the sample has faces 0 to "
                                                      f"{self.n - 1}")
        if not (math.isfinite(seconds) and 0 <= seconds <= MAX_SECONDS):
            raise AnswerError(HTTPStatus.BAD_REQUEST, f"seconds {seconds} must be between 0 and {MAX_SECONDS:.0f}")
        with self._lock:
            following = self._next()
            if index > following and index not in self._answers:
                raise AnswerError(HTTPStatus.CONFLICT, f"face {_short(index)} is not on screen yet: the current face is "
                                                       f"{following}")
            answers = dict(self._answers)
            answers[index] = (int(label), float(seconds))
            self._write(answers)  # raises before anything changes if the disk refuses
            self._answers = answers
            return self._state()

    def _write(self, answers: dict[int, tuple[int, float]]) -> None:
        if not sidecar_path(self.labels_csv).exists():  # removed while serving: labels.csv is useless without it
            write_json(sidecar_path(self.labels_csv), self.meta)
        write_csv(self.labels_csv, _columns(self.origin_column),
                  ([k, self.origins[k], SPLIT, EMOTIONS[label], label, _format_seconds(seconds)]
                   for k, (label, seconds) in sorted(answers.items())))


# ---------------------------------------------------------------------------------------------
# The web server: its page, the faces of the sample and two JSON endpoints; nothing else


class LabelServer(ThreadingHTTPServer):
    daemon_threads = True
    session: LabelSession
    _lock_file: Any = None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        shown = "127.0.0.1" if host in ("", "0.0.0.0") else host
        return f"http://{shown}:{port}/"

    def allowed_host(self, header: str | None) -> bool:
        """On a loopback address only requests for 127.0.0.1 or localhost (any case) and the server's port
        (none means 80) are answered (DNS rebinding)."""
        host, port = self.server_address[:2]
        if not str(host).startswith("127."):
            return True
        name, _, given_port = (header or "").lower().rpartition(":") if ":" in (header or "") \
            else ((header or "").lower(), "", "80")
        return name in (host, "localhost", "127.0.0.1") and given_port == str(port)

    def server_close(self) -> None:
        super().server_close()
        if self._lock_file is not None:
            self._lock_file.close()  # releases the lock
            self._lock_file = None


class _Handler(BaseHTTPRequestHandler):
    server: LabelServer
    server_version = "ferkit-label"
    sys_version = ""
    timeout = 60  # seconds a connection may stall (a body shorter than its Content-Length)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass  # the terminal shows the address and errors, not every request

    # -- replies

    def _send(self, status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: Any, extra: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json; charset=utf-8", extra)

    def _error(self, status: int, message: str, extra: dict[str, str] | None = None) -> None:
        self._json(status, {"error": message, "status": int(status)}, extra)

    def _route(self) -> str:
        return urlsplit(self.path).path

    # -- methods

    def _host_refused(self) -> bool:
        if self.server.allowed_host(self.headers.get("Host")):
            return False
        self._error(HTTPStatus.MISDIRECTED_REQUEST, "open the page at " + self.server.url)
        return True

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self._host_refused():
            return
        path = self._route()
        if path in ("/", "/index.html"):
            self._send(HTTPStatus.OK, PAGE.encode(), "text/html; charset=utf-8", {"Content-Security-Policy": _CSP})
        elif path == "/api/state":
            self._json(HTTPStatus.OK, self.server.session.state())
        elif (match := _FACE_PATH.fullmatch(path)) is not None:
            try:
                png = self.server.session.face_png(int(match.group(1)))
            except AnswerError as exc:
                return self._error(exc.status, str(exc))
            self._send(HTTPStatus.OK, png, "image/png")
        elif path == "/api/answer":
            self._error(HTTPStatus.METHOD_NOT_ALLOWED, "POST an answer to /api/answer", {"Allow": "POST"})
        else:
            self._error(HTTPStatus.NOT_FOUND, f"no such page: {path[:200]}")

    def do_HEAD(self) -> None:  # noqa: N802
        self.do_GET()

    def do_POST(self) -> None:  # noqa: N802
        if self._host_refused():
            return
        path = self._route()
        if path != "/api/answer":
            if path in ("/", "/index.html", "/api/state") or _FACE_PATH.fullmatch(path):
                return self._error(HTTPStatus.METHOD_NOT_ALLOWED, f"{path} is read-only", {"Allow": "GET"})
            return self._error(HTTPStatus.NOT_FOUND, f"no such page: {path[:200]}")
        origin = self.headers.get("Origin")
        if origin is not None and urlsplit(origin).netloc != self.headers.get("Host"):
            return self._error(HTTPStatus.FORBIDDEN, "answers come from the labelling page only")
        if (self.headers.get("Content-Type") or "").split(";")[0].strip().lower() != "application/json":
            # a JSON content type also makes browsers ask before another site's page may post here
            return self._error(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "send the answer as application/json")
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            return self._error(HTTPStatus.LENGTH_REQUIRED, "send a Content-Length")
        try:
            length = int(length_text)
            if length < 0:
                raise ValueError
        except ValueError:
            return self._error(HTTPStatus.BAD_REQUEST, f"bad Content-Length {length_text[:40]!r}")
        if length > MAX_BODY:  # the unread body goes with the connection: an HTTP/1.0 server closes each one
            return self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"the answer is over {MAX_BODY} bytes")
        try:
            body = json.loads(self.rfile.read(length).decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return self._error(HTTPStatus.BAD_REQUEST, "the body is not JSON: send {\"index\": k, \"label\": 0-6, "
                                                       "\"seconds\": s}")
        try:
            index, label, seconds = _parse_answer(body)
            state = self.server.session.answer(index, label, seconds)
        except AnswerError as exc:
            return self._error(exc.status, str(exc))
        except OSError as exc:
            return self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"cannot write the labels file ({exc.strerror}); "
                                                                 "the answer is not saved")
        self._json(HTTPStatus.OK, state)

    def _not_allowed(self) -> None:
        self._error(HTTPStatus.METHOD_NOT_ALLOWED, f"{self.command} is not supported here",
                    {"Allow": "GET, HEAD, POST"})

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed  # noqa: N815


def _parse_answer(body: Any) -> tuple[int, int, float]:
    if not isinstance(body, dict):
        raise AnswerError(HTTPStatus.BAD_REQUEST, "send a JSON object {\"index\": k, \"label\": 0-6, \"seconds\": s}")
    unknown = set(body) - {"index", "label", "seconds"}
    if unknown:
        raise AnswerError(HTTPStatus.BAD_REQUEST, f"unknown field(s): {', '.join(sorted(map(str, unknown)))[:200]}")
    for key in ("index", "label"):
        if not isinstance(body.get(key), int) or isinstance(body.get(key), bool):
            raise AnswerError(HTTPStatus.BAD_REQUEST, f"{key} must be an integer")
    seconds = body.get("seconds")
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool):
        raise AnswerError(HTTPStatus.BAD_REQUEST, "seconds must be a number")
    try:
        seconds = float(seconds) + 0.0  # + 0.0: -0.0 is written as 0.000
    except OverflowError:
        raise AnswerError(HTTPStatus.BAD_REQUEST, f"seconds must be between 0 and {MAX_SECONDS:.0f}") from None
    return body["index"], body["label"], seconds


def make_server(data: str | os.PathLike, labels_csv: str | os.PathLike, n: int | None = None,
                seed: int | None = None, host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> LabelServer:
    """Bind the server, then open (or resume) the labelling session; call ``serve_forever()`` on it.
    Binding first means that a port or host that cannot be used leaves no session files behind; the
    lock is taken next, before the session writes anything."""
    if not 0 <= port <= 65535:
        raise FerkitError(f"--port {port}: use a port from 1 to 65535, or 0 to pick a free one")
    if ":" in host:
        raise FerkitError(f"--host {host}: the labelling server listens on IPv4 only; use 127.0.0.1 (the default), "
                          "or 0.0.0.0 for every interface")
    try:
        server = LabelServer((host, port), _Handler)
    except OSError as exc:
        raise FerkitError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); pass another --port "
                          "(0 picks a free one), or another --host") from None
    made = False
    new_folders: list[Path] = []  # deepest first: those the lock is about to make
    try:
        # on labels.csv.lock, not on the sidecar, which a starting session writes: two servers started
        # together would each have locked a sidecar of its own
        labels_csv = output_file(labels_csv, "--out", create_folder=False)
        require_outside(data, labels_csv)  # before the lock, which would be made in the image folder
        lock = Path(f"{labels_csv}.lock")
        made = not lock.exists()
        new_folders = [folder for folder in Path(os.path.abspath(labels_csv)).parents if not folder.exists()]
        server._lock_file = hold_lock(lock, f"another `ferkit label` is already serving {labels_csv}: use its page, "
                                            "or stop it first")
        server.session = LabelSession.open(data, labels_csv, n=n, seed=seed)
    except BaseException:
        if made and server._lock_file is not None and not labels_csv.exists():  # refused before any labelling
            lock.unlink(missing_ok=True)
            for folder in new_folders:  # a mistyped data path left `--out new/labels.csv`'s folder behind
                try:
                    folder.rmdir()
                except OSError:  # not empty: the session began to write in it
                    break
        server.server_close()  # also releases the lock
        raise
    return server


def serve(data: str | os.PathLike, labels_csv: str | os.PathLike, n: int | None = None, seed: int | None = None,
          host: str = "127.0.0.1", port: int = DEFAULT_PORT, announce: Callable[[str], None] | None = None) -> None:
    """Serve the labelling page until interrupted; every answer is in `labels_csv` as soon as it is given.

    Example: ``ferkit label icml_face_data.csv --n 100 --seed 0 --out labels.csv``
    """
    say = announce or (lambda text: print(text, flush=True))
    server = make_server(data, labels_csv, n=n, seed=seed, host=host, port=port)
    try:
        state = server.session.state()
        say(f"labelling {state['n']} {SPLIT} faces of {data} (seed {server.session.meta['seed']}); "
            f"{state['answered']} answered so far; answers go to {labels_csv}")
        say(f"open {server.url} in a browser" + (" (listening on all interfaces)" if host in ("", "0.0.0.0") else "")
            + "; Ctrl-C stops, and the same command resumes")
        server.serve_forever()
    finally:
        server.server_close()


# ---------------------------------------------------------------------------------------------
# The page: one self-contained HTML file; it asks the server for the state and the faces only

_CSP = ("default-src 'none'; img-src 'self'; connect-src 'self'; script-src 'unsafe-inline'; "
        "style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ferkit: which emotion is this?</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 0; background: #f3f3f3; color: #222;
         display: flex; flex-direction: column; align-items: center; }
  header { margin: 14px 0 4px; font-size: 16px; color: #555; }
  #progress { font-weight: 600; color: #222; }
  [hidden] { display: none !important; }
  main { display: flex; flex-direction: column; align-items: center; }
  #bar { width: min(60vh, 92vw); height: 6px; background: #ddd; border-radius: 3px; margin: 6px 0 12px; }
  #bar > div { height: 100%; width: 0; background: #3b7ddd; border-radius: 3px; }
  #face { width: min(60vh, 92vw); height: min(60vh, 92vw); display: block; background: #000;
          image-rendering: crisp-edges; image-rendering: pixelated; }
  #buttons { display: flex; flex-wrap: wrap; gap: 8px; justify-content: center; margin: 14px 8px 6px;
             max-width: 960px; }
  button { font-size: 17px; padding: 10px 14px; border: 1px solid #999; border-radius: 6px; background: #fff;
           cursor: pointer; }
  button:disabled { opacity: 0.4; cursor: default; }
  button.chosen { background: #3b7ddd; border-color: #3b7ddd; color: #fff; }
  kbd { font-family: ui-monospace, monospace; font-size: 13px; padding: 0 4px; border: 1px solid #bbb;
        border-radius: 3px; margin-right: 4px; }
  button.chosen kbd { border-color: #fff; }
  #nav { margin: 6px; display: flex; gap: 12px; }
  #message { min-height: 1.4em; color: #b00020; margin: 6px; }
  .help { color: #777; font-size: 13px; margin: 4px 8px 16px; text-align: center; }
  #done { text-align: center; }
</style>
</head>
<body>
<header><span id="progress">Loading...</span> <span id="answered"></span></header>
<div id="bar"><div></div></div>
<main id="labelling" hidden>
  <img id="face" alt="the face to label" width="48" height="48">
  <div id="buttons"></div>
</main>
<section id="done" hidden>
  <h1 id="done-title">All faces are labelled</h1>
  <p>Thank you. Every answer is saved; you can close this tab.</p>
</section>
<div id="nav">
  <button id="back" type="button" disabled>&larr; Back</button>
  <button id="forward" type="button" disabled>Forward &rarr;</button>
</div>
<p id="message" role="alert"></p>
<p class="help">Keys 1&ndash;7 answer. Backspace or &larr; goes back one face to change its answer;
  &rarr; returns to the faces already answered. Each answer is saved at once.</p>
<script>
"use strict";
let state = null, cursor = 0, shownAt = 0, busy = false;
const $ = (id) => document.getElementById(id);

function setMessage(text) { $("message").textContent = text || ""; }

function buildButtons() {
  const box = $("buttons");
  box.textContent = "";
  state.emotions.forEach((name, i) => {
    const button = document.createElement("button");
    button.type = "button";
    button.id = "label-" + i;
    button.dataset.label = String(i);
    const key = document.createElement("kbd");
    key.textContent = String(i + 1);
    button.append(key, document.createTextNode(name));
    button.addEventListener("click", () => { button.blur(); answer(i); });
    box.appendChild(button);
  });
}

function show(k) {
  cursor = Math.max(0, Math.min(k, state.n));
  const done = cursor >= state.n;
  $("labelling").hidden = done;
  $("done").hidden = !done;
  $("done-title").textContent = "All " + state.n + " faces are labelled";
  $("progress").textContent = done ? "Done: " + state.n + " of " + state.n
                                   : "Face " + (cursor + 1) + " of " + state.n;
  $("answered").textContent = "(" + state.answered + " answered)";
  $("bar").firstElementChild.style.width = (100 * state.answered / state.n) + "%";
  $("back").disabled = cursor === 0;
  $("forward").disabled = done || cursor >= state.next;
  if (done) return;
  const img = $("face");
  shownAt = performance.now();
  img.onload = () => { shownAt = performance.now(); };
  img.src = "/face/" + cursor + ".png";
  document.querySelectorAll("#buttons button").forEach((button) => {
    button.classList.toggle("chosen", state.answers[cursor] === Number(button.dataset.label));
  });
}

async function answer(label) {
  if (busy || state === null || cursor >= state.n || label < 0 || label >= state.emotions.length) return;
  busy = true;
  const index = cursor;
  const seconds = Math.round(Math.max(0, performance.now() - shownAt)) / 1000;
  try {
    const reply = await fetch("/api/answer", {
      method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({index: index, label: label, seconds: seconds}),
    });
    const body = await reply.json();
    if (!reply.ok) {
      setMessage("Not saved: " + (body.error || ("error " + reply.status)));
      return;
    }
    state = body;
    setMessage("");
    show(index + 1);
  } catch (error) {
    setMessage("Not saved: the server does not answer. Start `ferkit label` again, then reload this page.");
  } finally {
    busy = false;
  }
}

function back() { if (!busy && state !== null && cursor > 0) show(cursor - 1); }
function forward() { if (!busy && state !== null && cursor < state.next) show(cursor + 1); }

document.addEventListener("keydown", (event) => {
  if (event.ctrlKey || event.metaKey || event.altKey || state === null) return;
  if (event.key >= "1" && event.key <= "9" && Number(event.key) <= state.emotions.length) {
    event.preventDefault();
    if (!event.repeat) answer(Number(event.key) - 1);
  } else if (event.key === "Backspace" || event.key === "ArrowLeft") {
    event.preventDefault();
    back();
  } else if (event.key === "ArrowRight") {
    event.preventDefault();
    forward();
  }
});
$("back").addEventListener("click", (event) => { event.currentTarget.blur(); back(); });
$("forward").addEventListener("click", (event) => { event.currentTarget.blur(); forward(); });

async function start() {
  try {
    const reply = await fetch("/api/state", {cache: "no-store"});
    state = await reply.json();
  } catch (error) {
    setMessage("The server does not answer. Start `ferkit label` again, then reload this page.");
    return;
  }
  buildButtons();
  show(state.next);
}
start();
</script>
</body>
</html>
"""
