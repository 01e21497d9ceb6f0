"""Tests of `ferkit label`: the sample, labels.csv and its sidecar, the HTTP server, and the page
itself in a real headless Chromium driven by Playwright.

The browser test needs Debian's `chromium` (apt-get install -y chromium) and the `playwright`
package (pip install playwright; its own browser download is neither needed nor used); it skips
with the reason when either is missing. Every test makes its own small random FER2013 CSV.
"""

from __future__ import annotations

import csv
import http.client
import io
import json
import math
import os
import re
import select
import shutil
import subprocess
import sys
import threading
import time
import types
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ferkit import cli, label
from ferkit.data import EMOTIONS, SPLITS, load
from ferkit.errors import FerkitError

from conftest import Faces, write_export, write_fer_csv

CHROMIUM = os.environ.get("FERKIT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
STATE_KEYS = {"n", "next", "answered", "done", "emotions", "answers"}


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Parsed datasets are cached in the test's own folder, never ~/.cache (subprocesses inherit it)."""
    monkeypatch.setenv("FERKIT_CACHE", str(tmp_path / "cache"))


# ---------------------------------------------------------------------------------------------
# Generated data and small helpers


def write_csv(path: Path, counts=(("Training", 5), ("PublicTest", 3), ("PrivateTest", 30)), seed: int = 0,
              labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A FER2013 CSV (icml layout) of random faces; returns (images, labels, splits) in row order."""
    rng = np.random.default_rng(seed)
    splits = np.concatenate([np.full(k, SPLITS.index(name)) for name, k in counts])
    images = rng.integers(0, 256, size=(len(splits), 48, 48), dtype=np.uint8)
    labels = rng.integers(0, len(EMOTIONS), size=len(splits)) if labels is None else labels
    write_fer_csv(path, images, labels, [SPLITS[s] for s in splits])
    return images, labels, splits


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def answers_in(path: Path) -> dict[int, int]:
    return {int(row["index"]): int(row["human_label"]) for row in read_csv_rows(path)}


def request(url: str, method: str = "GET", body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One request with urllib; 4xx and 5xx replies are returned, not raised."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as reply:
            return reply.status, dict(reply.headers), reply.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def raw_get(server: label.LabelServer, path: str) -> tuple[int, bytes]:
    """GET `path` exactly as written (no client-side normalisation of dots or escapes)."""
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        conn.endheaders()
        reply = conn.getresponse()
        return reply.status, reply.read()
    finally:
        conn.close()


def post_answer(url: str, index, label_, seconds=1.0, **extra) -> tuple[int, dict]:
    payload = dict({"index": index, "label": label_, "seconds": seconds}, **extra)
    status, _, body = request(url + "api/answer", "POST", json.dumps(payload).encode(),
                              {"Content-Type": "application/json"})
    return status, json.loads(body)


@contextmanager
def running(data: Path, out: Path, **kwargs):
    """An in-process server on a free port, shut down afterwards."""
    server = label.make_server(data, out, port=0, **kwargs)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.fixture
def data(tmp_path) -> Path:
    path = tmp_path / "fer.csv"
    write_csv(path)
    return path


# ---------------------------------------------------------------------------------------------
# The sample and the session


def test_sample_is_private_test_chosen_and_ordered_by_the_seed(data):
    dataset = load(data)
    rows = label.sample_rows(dataset, 10, seed=7)
    assert rows.tolist() == np.random.default_rng(7).choice(dataset.indices("PrivateTest"), 10, replace=False).tolist()
    assert set(dataset.splits[rows]) == {SPLITS.index("PrivateTest")}
    assert len(set(rows.tolist())) == 10
    assert label.sample_rows(dataset, 10, seed=7).tolist() == rows.tolist()
    assert label.sample_rows(dataset, 10, seed=8).tolist() != rows.tolist()
    with pytest.raises(FerkitError, match="only 30 PrivateTest"):
        label.sample_rows(dataset, 31, seed=0)
    with pytest.raises(FerkitError, match="at least one"):
        label.sample_rows(dataset, 0, seed=0)


def test_answers_are_written_at_once_and_can_be_changed(data, tmp_path):
    out = tmp_path / "labels.csv"
    session = label.LabelSession.open(data, out, n=6, seed=3)
    assert read_csv_rows(out) == []  # the header is there from the start
    assert out.read_text().splitlines()[0] == "index,line,usage,human,human_label,seconds"
    meta = json.loads(label.sidecar_path(out).read_text())
    dataset = load(data)
    rows = label.sample_rows(dataset, 6, seed=3)
    assert (meta["seed"], meta["n"], meta["data_sha256"]) == (3, 6, dataset.sha256)
    assert meta["sample"] == dataset.lines[rows].tolist()

    session.answer(0, 3, 1.25)
    assert answers_in(out) == {0: 3}
    session.answer(1, 0, 0.5)
    session.answer(2, 6, 2.0)
    session.answer(1, 4, 0.75)  # changed
    table = read_csv_rows(out)
    assert [(r["index"], r["line"], r["usage"], r["human"], r["human_label"], r["seconds"]) for r in table] == [
        ("0", str(dataset.lines[rows[0]]), "PrivateTest", "Happy", "3", "1.250"),
        ("1", str(dataset.lines[rows[1]]), "PrivateTest", "Sad", "4", "0.750"),
        ("2", str(dataset.lines[rows[2]]), "PrivateTest", "Neutral", "6", "2.000"),
    ]
    with pytest.raises(label.AnswerError) as ahead:
        session.answer(4, 1, 1.0)  # face 3 is on screen
    assert ahead.value.status == 409
    assert session.state()["next"] == 3 and session.state()["answers"] == [3, 4, 6, None, None, None]
    assert not list(tmp_path.glob(".labels.csv.*"))  # no temporary file left behind


def test_resume_restores_the_answers_and_refuses_another_sample(data, tmp_path):
    out = tmp_path / "labels.csv"
    first = label.LabelSession.open(data, out, n=5, seed=2)
    first.answer(0, 1, 1.0)
    first.answer(1, 2, 1.0)
    again = label.LabelSession.open(data, out)  # n and seed come from the sidecar
    assert again.state()["answers"] == [1, 2, None, None, None]
    assert again.origins == first.origins
    assert label.LabelSession.open(data, out, n=5, seed=2).state()["next"] == 2

    with pytest.raises(FerkitError, match="--seed 2"):
        label.LabelSession.open(data, out, n=5, seed=3)
    with pytest.raises(FerkitError, match="--n 5"):
        label.LabelSession.open(data, out, n=6, seed=2)
    other = tmp_path / "other.csv"
    write_csv(other, seed=1)
    with pytest.raises(FerkitError, match=f"other faces, labels or splits than the data whose faces {out} labels "
                                          f"\\({data.resolve()}, sha256 .*resume with that file, or choose another --out"):
        label.LabelSession.open(other, out)

    side = label.sidecar_path(out)
    recorded = side.read_text()
    side.write_text(json.dumps(dict(json.loads(recorded), version=label.SIDECAR_VERSION + 1)))
    with pytest.raises(FerkitError, match="written by a newer ferkit .*upgrade ferkit"):
        label.LabelSession.open(data, out)
    side.write_text(recorded)

    orphan = tmp_path / "orphan.csv"
    orphan.write_text("index,line,usage,human,human_label,seconds\n")
    with pytest.raises(FerkitError, match="does not"):
        label.LabelSession.open(data, orphan)

    broken = out.read_text().replace("Disgust", "Angry")
    out.write_text(broken)
    with pytest.raises(FerkitError, match="line 2"):
        label.LabelSession.open(data, out)


def test_a_negative_seed_is_refused_before_the_server_starts(data, tmp_path, capsys):
    assert cli.main(["label", str(data), "--out", str(tmp_path / "labels.csv"), "--seed", "-1", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "--seed -1 must be in [0, 2**32)" in err and "Traceback" not in err
    assert not (tmp_path / "labels.csv").exists()


def test_main_refuses_a_different_data_file_without_a_traceback(data, tmp_path, capsys):
    out = tmp_path / "labels.csv"
    label.LabelSession.open(data, out, n=4, seed=0)
    other = tmp_path / "other.csv"
    write_csv(other, seed=5)
    assert cli.main(["label", str(other), "--out", str(out), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "other faces, labels or splits than the data whose faces" in err and "Traceback" not in err


def test_export_with_truth(data, tmp_path, capsys):
    images, labels_, splits = write_csv(data)
    out = tmp_path / "labels.csv"
    session = label.LabelSession.open(data, out, n=5, seed=4)
    for k, answer in enumerate([0, 3, 5]):
        session.answer(k, answer, 1.0 + k)
    truth_csv = tmp_path / "truth.csv"
    assert cli.main(["label", str(data), "--out", str(out), "--export-with-truth", str(truth_csv)]) == 0
    assert "3 answers" in capsys.readouterr().out
    table = read_csv_rows(truth_csv)
    assert list(table[0]) == ["index", "line", "usage", "human", "human_label", "seconds", "true", "true_label",
                              "correct"]
    for row, answer in zip(table, [0, 3, 5]):
        truth = int(labels_[int(row["line"]) - 2])  # line 2 is the first data row
        assert (int(row["human_label"]), int(row["true_label"]), row["true"]) == (answer, truth, EMOTIONS[truth])
        assert row["correct"] == str(int(answer == truth))
    os.link(data, tmp_path / "hard-link.csv")
    for kept in (out, label.sidecar_path(out), data, tmp_path / "hard-link.csv"):
        with pytest.raises(FerkitError, match="other than the data, the labels and their sidecar"):
            label.export_with_truth(data, out, kept)
    assert len(load(data).labels) == len(labels_)  # the data file is whole


def test_hand_edited_labels_saved_with_a_bom_or_odd_seconds(data, tmp_path):
    out = tmp_path / "labels.csv"
    session = label.LabelSession.open(data, out, n=4, seed=0)
    session.answer(0, 1, 1.5)
    good = out.read_text()
    out.write_text("\ufeff" + good, encoding="utf-8")  # Excel's "CSV UTF-8"
    assert label.LabelSession.open(data, out).state()["answers"][0] == 1
    header, row = good.splitlines()
    for seconds in ("nan", "inf", "-3", "1" + "0" * 40):
        out.write_text(f"{header}\n{row.rsplit(',', 1)[0]},{seconds}\n")
        shown = seconds if len(seconds) < 24 else "10000000000000000000... (41 characters)"
        with pytest.raises(FerkitError, match=re.escape(f"line 2: seconds {shown} must be between 0 and 604800")):
            label.read_labels(out, load(data))


def test_a_copy_whose_lines_moved_maps_the_answers_to_the_faces_that_were_labelled(data, tmp_path):
    """Equal faces, other line numbers (a blank line after the header): the answers follow the faces, not
    the lines. A version-1 sidecar recorded lines only, so it is read with the labelled file alone."""
    out = tmp_path / "labels.csv"
    session = label.LabelSession.open(data, out, n=5, seed=1)
    for k in range(5):
        session.answer(k, k, 1.0)
    header, rest = data.read_text().split("\n", 1)
    copy = tmp_path / "copy.csv"
    copy.write_text(header + "\n\n" + rest)
    original, moved = load(data), load(copy)
    assert moved.faces_sha256 == original.faces_sha256 and moved.lines[0] == original.lines[0] + 1
    labelled = label.read_labels(out, original)
    again = label.read_labels(out, moved)
    np.testing.assert_array_equal(moved.images[again.rows], original.images[labelled.rows])
    assert again.origins == [line + 1 for line in labelled.origins]  # the lines of the file read, where the truth is
    export = tmp_path / "truth.csv"
    label.export_with_truth(copy, out, export)
    with open(export, newline="") as f:
        table = list(csv.DictReader(f))
    assert [(int(r["line"]), int(r["true_label"])) for r in table] == [
        (int(moved.lines[row]), int(moved.labels[row])) for row in again.rows]

    side = label.sidecar_path(out)
    meta = json.loads(side.read_text())
    del meta["rows"]
    side.write_text(json.dumps(dict(meta, version=1)))
    np.testing.assert_array_equal(label.read_labels(out, original).rows, labelled.rows)
    with pytest.raises(FerkitError, match="written by an older ferkit, it names its faces by line only.*pass the file "
                                          "that was labelled"):
        label.read_labels(out, moved)
    side.write_text(json.dumps(dict(meta, rows=labelled.rows[:4].tolist() + [int(original.indices("Training")[0])])))
    with pytest.raises(FerkitError, match="its rows are not 5 PrivateTest rows of the data"):
        label.read_labels(out, original)


def test_sample_sizes_at_the_edges(data):
    dataset = load(data)
    assert len(label.sample_rows(dataset, 1, seed=0)) == 1
    every = label.sample_rows(dataset, 30, seed=0)  # all 30 PrivateTest faces, in the seed's order
    assert sorted(every.tolist()) == dataset.indices("PrivateTest").tolist()


def test_session_defaults_and_a_newer_sidecar(data, tmp_path):
    out = tmp_path / "labels.csv"
    label.LabelSession.open(data, out, n=5)
    meta = json.loads(label.sidecar_path(out).read_text())
    assert (meta["version"], meta["seed"]) == (2, 0)  # --seed 0 unless given
    meta["version"] = 3
    label.sidecar_path(out).write_text(json.dumps(meta))
    with pytest.raises(FerkitError, match=r"written by a newer ferkit \(sidecar version 3, this one reads 2\)"):
        label.LabelSession.open(data, out)


@pytest.mark.parametrize("change", [
    {"format": "something-else"},  # every key there, but not ours
    {"seed": None},  # a key missing (None: removed below)
    {"sample": "abcde"},  # as long as n, but not a list
    {"n": 6},  # n and the sample disagree
])
def test_a_sidecar_that_is_not_one_is_refused(data, tmp_path, change):
    out = tmp_path / "labels.csv"
    label.LabelSession.open(data, out, n=5, seed=0)
    meta = json.loads(label.sidecar_path(out).read_text())
    meta.update(change)
    label.sidecar_path(out).write_text(json.dumps({k: v for k, v in meta.items() if v is not None}))
    with pytest.raises(FerkitError, match="not a ferkit labels sidecar"):
        label.read_labels(out, load(data))


def test_labels_csv_read_at_its_edges(data, tmp_path):
    out = tmp_path / "labels.csv"
    session = label.LabelSession.open(data, out, n=4, seed=0)
    dataset = load(data)
    assert len(label.read_labels(out, dataset).rows) == 0  # no answers yet: no rows
    header = out.read_text().splitlines()[0]

    def row(index, human_label=1, seconds="1.000"):
        origin = session.origins[index] if index < 4 else session.origins[0]
        name = EMOTIONS[human_label] if human_label < 7 else "Angry"
        return f"{index},{origin},PrivateTest,{name},{human_label},{seconds}"

    out.write_text(f"{header}\n{row(0, seconds='0.000')}\n\n{row(1, 2, '604800')}\n")  # a blank line between
    labels = label.read_labels(out, dataset)
    assert labels.index.tolist() == [0, 1] and labels.seconds.tolist() == [0.0, 604800.0]
    for text, message in ((f"{header}\n{row(4)}\n", "line 2: index 4 is outside the sample of 4 faces"),
                          (f"{header}\n{row(0, 7)}\n", "line 2: human 'Angry' and human_label '7' do not name"),
                          ("x", "expected the columns")):
        out.write_text(text)
        with pytest.raises(FerkitError, match=message):
            label.read_labels(out, dataset)


def test_short_keeps_24_characters_whole():
    assert label._short("9" * 24) == "9" * 24
    assert label._short("9" * 25) == "9" * 20 + "... (25 characters)"


def test_answers_at_the_edges_and_done_after_the_last(data, tmp_path):
    out = tmp_path / "labels.csv"
    session = label.LabelSession.open(data, out, n=2, seed=0)
    session.answer(0, 1, 0.0)
    assert not session.state()["done"]
    state = session.answer(1, 2, label.MAX_SECONDS)  # a week on one face is still an answer
    assert (state["done"], state["next"], state["answered"]) == (True, 2, 2)
    assert [r["seconds"] for r in read_csv_rows(out)] == ["0.000", "604800.000"]
    assert math.copysign(1, label._parse_answer({"index": 0, "label": 1, "seconds": -0.0})[2]) == 1  # not "-0.000"


def test_refused_starts_make_no_folder(data, tmp_path):
    with pytest.raises(FerkitError, match="only 30"):
        label.LabelSession.open(data, tmp_path / "new" / "labels.csv", n=31, seed=0)
    assert not (tmp_path / "new").exists()
    with pytest.raises(FerkitError, match="no such file"):
        label.export_with_truth(data, tmp_path / "none.csv", tmp_path / "other" / "truth.csv")
    assert not (tmp_path / "other").exists()


def test_a_refused_server_leaves_no_lock_file_but_keeps_that_of_labels_begun(data, tmp_path):
    out = tmp_path / "labels"
    out.mkdir()
    for n, message in ((0, "--n 0: label at least one face"), (31, "only 30")):
        with pytest.raises(FerkitError, match=message):
            label.make_server(data, out / "labels.csv", n=n, seed=0, port=0)
        assert list(out.iterdir()) == []
    label.make_server(data, out / "labels.csv", n=3, seed=0, port=0).server_close()
    with pytest.raises(FerkitError, match="was started with --n 3, not 4"):
        label.make_server(data, out / "labels.csv", n=4, seed=0, port=0)
    assert (out / "labels.csv.lock").exists()  # the lock of a labels file stays beside it, as the docs say


def test_a_refused_server_leaves_no_folder(data, tmp_path):
    """The lock made --out's new folders, which a refusal (a mistyped data path) left behind, empty."""
    (tmp_path / "kept").mkdir()
    for dataset, out in ((data, tmp_path / "new" / "deeper" / "labels.csv"),
                         (tmp_path / "no-such.csv", tmp_path / "kept" / "new" / "labels.csv")):
        with pytest.raises(FerkitError, match="only 30|no such file"):
            label.make_server(dataset, out, n=31, seed=0, port=0)
    assert not (tmp_path / "new").exists() and list((tmp_path / "kept").iterdir()) == []


def test_labels_without_a_sidecar(data, tmp_path):
    out = tmp_path / "labels.csv"
    out.write_bytes(b"")  # an empty file (made by hand, or by a start that failed) is no answers
    assert label.LabelSession.open(data, out, n=3, seed=0).state()["answered"] == 0
    other = tmp_path / "other.csv"
    other.write_bytes(b"\n")
    with pytest.raises(FerkitError, match="exists but other.csv.json"):
        label.LabelSession.open(data, other, n=3, seed=0)


def test_a_body_that_never_comes_does_not_hold_a_thread_forever(data, tmp_path, monkeypatch):
    import socket

    assert 0 < label._Handler.timeout <= 120  # the standard library's default is None: wait forever
    monkeypatch.setattr(label._Handler, "timeout", 0.5)  # the same mechanism, quicker
    with running(data, tmp_path / "labels.csv", n=3, seed=0) as server:
        host, port = server.server_address[:2]
        with socket.create_connection((host, port), timeout=10) as client:
            client.sendall(f"POST /api/answer HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                           "Content-Length: 100\r\n\r\n{".encode())
            started = time.monotonic()
            while client.recv(4096):  # whatever the server says, it then closes the connection
                pass
            assert time.monotonic() - started < 5


def raw_post(server: label.LabelServer, headers: dict[str, str], body: bytes) -> tuple[int, str]:
    """POST /api/answer with exactly these headers (no Content-Length unless given); the reply's status and error.
    The reply is read until the server closes the connection, which it does after every request."""
    import socket

    host, port = server.server_address[:2]
    lines = ["POST /api/answer HTTP/1.1", f"Host: {host}:{port}", *(f"{k}: {v}" for k, v in headers.items())]
    with socket.create_connection((host, port), timeout=10) as client:
        client.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        reply = b""
        while chunk := client.recv(65536):
            reply += chunk
    head, _, payload = reply.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(payload).get("error", "")


def test_answers_as_posted_byte_by_byte(data, tmp_path):
    out = tmp_path / "labels.csv"
    with running(data, out, n=3, seed=0) as server:
        as_json = {"Content-Type": "application/json"}
        assert raw_post(server, as_json, b"{}") == (411, "send a Content-Length")
        assert raw_post(server, {**as_json, "Content-Length": "abc"}, b"") == (400, "bad Content-Length 'abc'")
        status, error = raw_post(server, {**as_json, "Content-Length": "0"}, b"")
        assert status == 400 and error.startswith("the body is not JSON")
        status, error = raw_post(server, {**as_json, "Content-Length": "5000"}, b"x" * 5000)
        assert (status, error) == (413, "the answer is over 4096 bytes")
        largest = b'{"index": 0, "label": 1, "seconds": 1}'.ljust(label.MAX_BODY)  # JSON allows the spaces
        assert raw_post(server, {**as_json, "Content-Length": str(label.MAX_BODY)}, largest) == (200, "")
        answer = b'{"index": 1, "label": 2, "seconds": 1}'
        charset = {"Content-Type": "application/json; charset=utf-8", "Content-Length": str(len(answer))}
        assert raw_post(server, charset, answer) == (200, "")
    assert answers_in(out) == {0: 1, 1: 2}


def test_a_refused_host_stops_the_request_there(data, tmp_path):
    out = tmp_path / "labels.csv"
    with running(data, out, n=3, seed=0) as server:
        status, _, _ = request(server.url + "api/answer", "POST", b'{"index": 0, "label": 1, "seconds": 1}',
                               {"Content-Type": "application/json", "Host": "evil.example"})
        assert status == 421
        time.sleep(0.3)  # a handler that went on after its 421 would have saved the answer by now
        assert server.session.state()["answered"] == 0 and answers_in(out) == {}


def test_a_server_beyond_loopback(data, tmp_path):
    with running(data, tmp_path / "a.csv", n=3, seed=0, host="0.0.0.0") as server:
        assert server.url == f"http://127.0.0.1:{server.server_address[1]}/"  # an address a browser can open
        status, _, _ = request(server.url + "api/state", headers={"Host": "my-laptop.local"})
        assert status == 200  # reached by the machine's name: no DNS-rebinding check off loopback
    with running(data, tmp_path / "b.csv", n=3, seed=0, host="127.0.0.2") as server:
        assert server.url == f"http://127.0.0.2:{server.server_address[1]}/"


def test_serve_says_where_the_page_is(data, tmp_path, monkeypatch):
    monkeypatch.setattr(label.LabelServer, "serve_forever", lambda self, *a, **k: None)
    for host, everywhere in (("0.0.0.0", True), ("127.0.0.1", False)):
        said = []
        label.serve(data, tmp_path / f"{host}.csv", n=3, host=host, port=0, announce=said.append)
        assert said[0].startswith(f"labelling 3 PrivateTest faces of {data} (seed 0); 0 answered so far")
        assert said[1].startswith("open http://127.0.0.1:")
        assert ("(listening on all interfaces)" in said[1]) is everywhere
    flushed = []  # printed at once: the address must show even when the output goes to a pipe (| tee)
    monkeypatch.setattr("builtins.print", lambda *args, **kw: flushed.append(kw.get("flush")))
    label.serve(data, tmp_path / "printed.csv", n=3, port=0)
    assert flushed == [True, True]


def test_the_highest_port_is_a_port(data, tmp_path):
    try:
        label.make_server(data, tmp_path / "labels.csv", n=3, seed=0, port=65535).server_close()
    except FerkitError as exc:  # in use here: the refusal is the system's, not ferkit's range check
        assert "--port" not in str(exc)


def test_the_host_header_as_browsers_send_it(data, tmp_path):
    with running(data, tmp_path / "labels.csv", n=3, seed=0) as server:
        port = server.server_address[1]
        for header in (f"127.0.0.1:{port}", f"localhost:{port}", f"LocalHost:{port}"):
            assert server.allowed_host(header), header
        for header in (f"localhost:{port + 1}", f"evil.example:{port}", "localhost", None):
            assert not server.allowed_host(header), header
    on_80 = types.SimpleNamespace(server_address=("127.0.0.1", 80))  # browsers leave out the default port
    assert label.LabelServer.allowed_host(on_80, "localhost") and label.LabelServer.allowed_host(on_80, "127.0.0.1:80")
    assert not label.LabelServer.allowed_host(on_80, "evil.example")


def test_image_folder_data_is_labelled_by_path(tmp_path):
    root = tmp_path / "export"
    rng = np.random.default_rng(0)
    for k in range(6):
        for split, folder in (("PrivateTest", "test"), ("Training", "train")):
            target = root / folder / EMOTIONS[k % 7].lower() / f"{split}_{k + 1}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (48, 48), dtype=np.uint8)).save(target)
    out = tmp_path / "labels.csv"
    session = label.LabelSession.open(root, out, n=4, seed=0)
    session.answer(0, 2, 1.0)
    row = read_csv_rows(out)[0]
    assert list(row) == ["index", "path", "usage", "human", "human_label", "seconds"]
    assert row["path"].startswith("test/") and "PrivateTest_" in row["path"]


# ---------------------------------------------------------------------------------------------
# The HTTP server


def test_page_state_and_faces(data, tmp_path):
    out = tmp_path / "labels.csv"
    dataset = load(data)
    rows = label.sample_rows(dataset, 5, seed=1)
    with running(data, out, n=5, seed=1) as server:
        status, headers, page = request(server.url)
        assert status == 200 and headers["Content-Type"].startswith("text/html")
        assert "default-src 'none'" in headers["Content-Security-Policy"]
        assert b"image-rendering: pixelated" in page
        status, _, body = request(server.url + "api/state")
        state = json.loads(body)
        assert status == 200 and set(state) == STATE_KEYS
        assert state == {"n": 5, "next": 0, "answered": 0, "done": False, "emotions": list(EMOTIONS),
                         "answers": [None] * 5}
        for k in range(5):
            status, headers, png = request(f"{server.url}face/{k}.png")
            assert status == 200 and headers["Content-Type"] == "image/png"
            with Image.open(io.BytesIO(png)) as image:
                assert image.size == (48, 48) and image.mode == "L"
                assert np.array_equal(np.asarray(image), dataset.images[rows[k]])
        status, headers, body = request(server.url + "face/0.png", method="HEAD")
        assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0


def test_the_server_never_sends_the_truth(tmp_path):
    """Two files that differ only in their labels give byte-identical replies to every request."""
    first, second = tmp_path / "a.csv", tmp_path / "b.csv"
    _, labels_, _ = write_csv(first)
    write_csv(second, labels=(labels_ + 1) % len(EMOTIONS))
    replies = []
    for data, name in ((first, "a"), (second, "b")):
        with running(data, tmp_path / f"labels-{name}.csv", n=6, seed=9) as server:
            got = [post_answer(server.url, 0, 2)[1], post_answer(server.url, 1, 5)[1]]
            for path in ["", "index.html", "api/state"] + [f"face/{k}.png" for k in range(6)]:
                status, headers, body = request(server.url + path)
                assert status == 200
                got.append(body)
            replies.append(got)
    assert replies[0] == replies[1]


@pytest.mark.parametrize("method, path, body, headers, status, message", [
    ("POST", "api/answer", b"{not json", {}, 400, "not JSON"),
    ("POST", "api/answer", b"\xff\xfe", {}, 400, "not JSON"),
    ("POST", "api/answer", b"[1, 2]", {}, 400, "JSON object"),
    ("POST", "api/answer", b'{"index": 0, "label": 7, "seconds": 1}', {}, 400, "label 7 is out of range"),
    ("POST", "api/answer", b'{"index": 0, "label": -1, "seconds": 1}', {}, 400, "out of range"),
    ("POST", "api/answer", b'{"index": 0, "label": "3", "seconds": 1}', {}, 400, "label must be an integer"),
    ("POST", "api/answer", b'{"index": 0, "label": true, "seconds": 1}', {}, 400, "label must be an integer"),
    ("POST", "api/answer", b'{"index": 0.5, "label": 1, "seconds": 1}', {}, 400, "index must be an integer"),
    ("POST", "api/answer", b'{"index": 5, "label": 1, "seconds": 1}', {}, 400, "index 5 is out of range"),
    ("POST", "api/answer", b'{"index": -1, "label": 1, "seconds": 1}', {}, 400, "out of range"),
    ("POST", "api/answer", b'{"index": 2, "label": 1, "seconds": 1}', {}, 409, "not on screen yet"),
    ("POST", "api/answer", b'{"index": 0, "label": 1}', {}, 400, "seconds must be a number"),
    ("POST", "api/answer", b'{"index": 0, "label": 1, "seconds": -2}', {}, 400, "seconds"),
    ("POST", "api/answer", b'{"index": 0, "label": 1, "seconds": 1e400}', {}, 400, "seconds"),
    ("POST", "api/answer", b'{"index": 0, "label": 1, "seconds": 604801}', {}, 400, "seconds 604801.0 must be between"),
    ("POST", "api/answer", b'{"index": 0, "label": 1, "seconds": 1' + b"0" * 400 + b"}", {}, 400,
     "seconds must be between 0 and 604800"),
    ("POST", "api/answer", b'{"index": 0, "label": 1' + b"0" * 300 + b', "seconds": 1}', {}, 400,
     "label 10000000000000000000... (301 characters) is out of range"),
    ("POST", "api/answer", b'{"index": 0, "label": 1, "seconds": 1, "truth": 3}', {}, 400, "unknown field"),
    ("POST", "api/answer", b"x" * 5000, {}, 413, "over"),
    ("GET", "api/answer", None, {}, 405, "POST"),
    ("POST", "api/state", b"{}", {}, 405, "read-only"),
    ("POST", "face/0.png", b"{}", {}, 405, "read-only"),
    ("PUT", "api/answer", b"{}", {}, 405, "not supported"),
    ("DELETE", "face/0.png", None, {}, 405, "not supported"),
    ("POST", "labels.csv", b"{}", {}, 404, "no such page"),
    ("POST", "api/answer", b'{"index": 0, "label": 1, "seconds": 1}', {"Content-Type": "text/plain"}, 415,
     "application/json"),
    ("POST", "api/answer", b'{"index": 0, "label": 1, "seconds": 1}',
     {"Content-Type": "application/x-www-form-urlencoded"}, 415, "application/json"),
    ("POST", "api/answer", b'{"index": 0, "label": 1, "seconds": 1}', {"Origin": "http://evil.example"}, 403,
     "labelling page only"),
    ("POST", "api/answer", b'{"index": 0, "label": 1, "seconds": 1}', {"Host": "evil.example"}, 421, "open the page"),
    ("GET", "api/state", None, {"Host": "rebound.example:8765"}, 421, "open the page"),
])
def test_malformed_requests_get_a_4xx_and_a_json_message(data, tmp_path, method, path, body, headers, status,
                                                         message):
    out = tmp_path / "labels.csv"
    with running(data, out, n=5, seed=0) as server:
        before = out.read_bytes()
        headers = {"Content-Type": "application/json", **headers}
        got, reply_headers, reply = request(server.url + path, method, body, headers)
        assert got == status
        assert reply_headers["Content-Type"].startswith("application/json")
        assert message in json.loads(reply)["error"]
        assert out.read_bytes() == before
        assert post_answer(server.url, 0, 1)[0] == 200  # the server is still fine


def test_only_the_page_and_the_sampled_faces_are_served(data, tmp_path):
    out = tmp_path / "labels.csv"
    (tmp_path / "secret.txt").write_text("TOP-SECRET-CONTENT")
    with running(data, out, n=5, seed=0) as server:
        assert raw_get(server, "/face/4.png")[0] == 200
        for path in ["/face/../../etc/passwd", "/face/..%2f..%2fetc%2fpasswd", "/face/%2e%2e/%2e%2e/etc/passwd",
                     "/../labels.csv", "/labels.csv", "/labels.csv.json", "/secret.txt", "/face/5.png",
                     "/face/999.png", "/face/-1.png", "/face/01.png", "/face/1e2.png", "/face/0.png/../../secret.txt",
                     "/face/0.jpg", "/face/", "/face", "//etc/passwd", "/static/../../secret.txt", "/favicon.ico",
                     "/api", "/api/state/../../secret.txt", "/face/99999999999999999999.png"]:
            status, body = raw_get(server, path)
            assert status == 404, path
            assert "error" in json.loads(body), path
            assert b"TOP-SECRET" not in body and b"root:" not in body
        status, _, body = request(server.url + "face/999.png")
        assert status == 404 and "no face 999" in json.loads(body)["error"]


def test_concurrent_answers_keep_labels_csv_whole(data, tmp_path):
    out = tmp_path / "labels.csv"
    n = 20
    with running(data, out, n=n, seed=0) as server:
        errors: list[str] = []
        stop = threading.Event()

        def reader() -> None:  # the file is always complete: never a half row or a missing header
            while not stop.is_set():
                text = out.read_text()
                rows = list(csv.reader(io.StringIO(text)))
                if not text.endswith("\n") or rows[0][0] != "index" or any(len(r) != 6 for r in rows):
                    errors.append(f"torn file: {text!r}")

        def worker(seed: int) -> None:
            rng = np.random.default_rng(seed)
            for _ in range(12):
                state = json.loads(request(server.url + "api/state")[2])
                index = int(rng.integers(0, min(state["next"], n - 1) + 1))
                status, reply = post_answer(server.url, index, int(rng.integers(0, 7)), float(rng.random()))
                if status not in (200, 409):  # 409: another thread's face moved on meanwhile
                    errors.append(f"{status}: {reply}")

        threads = [threading.Thread(target=worker, args=(s,)) for s in range(12)]
        watcher = threading.Thread(target=reader)
        watcher.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stop.set()
        watcher.join()
        assert errors == []
        state = json.loads(request(server.url + "api/state")[2])
        on_disk = answers_in(out)
        assert on_disk == {k: a for k, a in enumerate(state["answers"]) if a is not None}
        assert sorted(on_disk) == list(range(len(on_disk))) and len(on_disk) == state["next"] > 0
    assert not list(tmp_path.glob(".labels.csv.*"))


def test_one_server_per_labels_file(data, tmp_path):
    out = tmp_path / "labels.csv"
    with running(data, out, n=4, seed=0) as server:
        with pytest.raises(FerkitError, match="already serving"):
            label.make_server(data, out, port=0)
        assert post_answer(server.url, 0, 5)[0] == 200
        # an export written in the lock's place let a second server lock the new file and serve beside this one
        with pytest.raises(FerkitError, match="the labels and their sidecar or lock"):
            label.export_with_truth(data, out, f"{out}.lock")
        with pytest.raises(FerkitError, match="already serving"):
            label.make_server(data, out, port=0)
    with running(data, out) as server:  # the lock went with the first server; the answer stayed
        assert json.loads(request(server.url + "api/state")[2])["answers"][0] == 5


def test_a_busy_port_is_a_clear_error(data, tmp_path):
    with running(data, tmp_path / "a.csv", n=3, seed=0) as server:
        port = server.server_address[1]
        with pytest.raises(FerkitError, match="--port"):
            label.make_server(data, tmp_path / "b.csv", n=3, seed=0, port=port)
    assert not (tmp_path / "b.csv").exists() and not (tmp_path / "b.csv.json").exists()  # nothing half-begun


@pytest.mark.parametrize("port, host, message", [(99999, "127.0.0.1", "--port 99999: use a port from 1 to 65535"),
                                                 (0, "no-such-host.invalid", "cannot listen on no-such-host"),
                                                 (0, "::1", "--host ::1: the labelling server listens on IPv4 only")])
def test_a_port_or_host_that_cannot_be_used_leaves_no_files(data, tmp_path, port, host, message):
    with pytest.raises(FerkitError, match=message):
        label.make_server(data, tmp_path / "c.csv", n=3, seed=0, host=host, port=port)
    assert not (tmp_path / "c.csv").exists() and not (tmp_path / "c.csv.json").exists()


def test_a_labels_file_edited_by_hand_must_still_match_its_sample(data, tmp_path):
    out = tmp_path / "labels.csv"
    session = label.LabelSession.open(data, out, n=4, seed=0)
    session.answer(0, 1, 1.0)
    session.answer(1, 2, 1.0)
    good = out.read_text()
    header, first, second = good.splitlines()
    wrong_line = second.replace(f",{session.origins[1]},", f",{session.origins[2]},", 1)
    for text, message in ((good + first + "\n", "line 4: face 0 is labelled twice"),
                          (f"{header}\n{first}\n{wrong_line}\n",
                           f"line 3: face 1 is line {session.origins[1]} of the sample, not {session.origins[2]}")):
        out.write_text(text)
        with pytest.raises(FerkitError, match=message):
            label.LabelSession.open(data, out)
        with pytest.raises(FerkitError, match=message):
            label.read_labels(out, load(data))


def test_an_answer_the_disk_refuses_is_not_kept(data, tmp_path, monkeypatch):
    out = tmp_path / "labels.csv"
    session = label.LabelSession.open(data, out, n=4, seed=0)
    session.answer(0, 1, 1.0)

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(label, "write_csv", full_disk)
    with pytest.raises(OSError):
        session.answer(1, 2, 1.0)
    with pytest.raises(OSError):
        session.answer(0, 6, 1.0)
    # the page is told what the file holds: no answer that is not on disk
    assert session.state()["answers"] == [1, None, None, None] and session.state()["next"] == 1
    assert answers_in(out) == {0: 1}


def test_a_second_server_is_refused_while_the_first_still_loads_the_data(data, tmp_path, monkeypatch):
    """Two servers started together on a new --out each wrote, and locked, their own sidecar."""
    out = tmp_path / "labels.csv"
    open_session = label.LabelSession.open.__func__
    second = []

    def open_slowly(cls, *args, **kwargs):
        if not second:  # the second command arrives while the first is busy here
            second.append("tried")
            with pytest.raises(FerkitError, match="another `ferkit label` is already serving"):
                label.make_server(data, out, n=4, seed=1, port=0)
        return open_session(cls, *args, **kwargs)

    monkeypatch.setattr(label.LabelSession, "open", classmethod(open_slowly))
    with running(data, out, n=4, seed=0) as server:
        assert post_answer(server.url, 0, 5)[0] == 200
    assert second == ["tried"] and answers_in(out) == {0: 5}
    assert label._read_meta(out)["seed"] == 0


def test_the_data_given_as_the_labels_is_named_as_such(data, tmp_path):
    """It was told that data.csv.json, a sidecar it never had, was missing."""
    with pytest.raises(FerkitError, match="not a labels file of `ferkit label` \\(whose header begins index,line or "
                                          "index,path\\)"):
        label.read_labels(data, load(data))
    out = tmp_path / "labels.csv"
    label.LabelSession.open(data, out, n=3, seed=0)
    label.sidecar_path(out).unlink()  # labels that lost their sidecar are still told so
    with pytest.raises(FerkitError, match="labels.csv.json: missing; it records which faces"):
        label.read_labels(out, load(data))


def test_labels_given_as_their_folder_are_named_as_such(data, tmp_path):
    """It was told that FOLDER.json, the sidecar of the folder, was missing."""
    out = tmp_path / "study" / "labels.csv"
    label.LabelSession.open(data, out, n=3, seed=0)
    with pytest.raises(FerkitError, match="study: is a folder; give the labels CSV .*such as .*labels.csv"):
        label.read_labels(out.parent, load(data))


def test_a_field_over_the_csv_limit_is_a_message_not_a_traceback(data, tmp_path):
    out = tmp_path / "labels.csv"
    label.LabelSession.open(data, out, n=3, seed=0).answer(0, 1, 1.0)
    out.write_text(out.read_text() + "x" * 200_000 + "\n")
    with pytest.raises(FerkitError, match="labels.csv: line 3: field larger than field limit"):
        label.read_labels(out, load(data))


def image_export_of(data: Path, dest: Path) -> Path:
    """The image-folder export of the faces of the CSV `data`, in its rows' order."""
    dataset = load(data)
    ids = np.zeros(len(dataset), int)
    for split in range(len(SPLITS)):
        ids[dataset.splits == split] = np.arange(np.sum(dataset.splits == split))
    dest.mkdir()
    return write_export(dest, Faces(dataset.images, dataset.labels, dataset.splits, ids), "folder")


def test_the_image_export_of_the_labelled_csv_follows_the_answers(data, tmp_path):
    """The same faces in the other layout were refused ("the sample is recorded by line"), though the
    sidecar's rows name them in both."""
    out = tmp_path / "labels.csv"
    session = label.LabelSession.open(data, out, n=5, seed=1)
    for k in range(3):
        session.answer(k, k, 1.0)
    export = image_export_of(data, tmp_path / "export")
    original, copy = load(data), load(export)
    assert copy.faces_sha256 == original.faces_sha256 and copy.origin_column == "path"
    labelled, again = label.read_labels(out, original), label.read_labels(out, copy)
    np.testing.assert_array_equal(again.rows, labelled.rows)
    assert again.origin_column == "path" and again.origins == copy.origins(labelled.rows)
    truth = tmp_path / "truth.csv"
    label.export_with_truth(export, out, truth)
    assert [(r["path"], int(r["true_label"])) for r in read_csv_rows(truth)] == [
        (copy.paths[row], int(copy.labels[row])) for row in labelled.rows]
    before = out.read_text()
    resumed = label.LabelSession.open(export, out)  # the labels keep the lines of the file that was labelled
    assert resumed.state()["answered"] == 3
    resumed.answer(1, 1, 1.0)
    assert out.read_text() == before


def test_labels_are_kept_out_of_an_image_folder_dataset(tmp_path):
    """labels.csv (or an export of it) written into the export made the next load refuse the folder."""
    data = tmp_path / "fer.csv"
    write_csv(data)
    export = image_export_of(data, tmp_path / "export")
    for out in (export / "labels.csv", export / "test" / "new" / "labels.csv"):
        with pytest.raises(FerkitError, match="is inside the image folder"):
            label.make_server(export, out, n=3, seed=0, port=0)
        with pytest.raises(FerkitError, match="is inside the image folder"):
            label.LabelSession.open(export, out, n=3, seed=0)
    out = tmp_path / "labels.csv"
    label.LabelSession.open(export, out, n=3, seed=0).answer(0, 1, 1.0)
    with pytest.raises(FerkitError, match="--export-with-truth .* is inside the image folder"):
        label.export_with_truth(export, out, export / "truth.csv")
    assert sorted(p.name for p in export.iterdir()) == ["test", "train"] and not (export / "test" / "new").exists()
    assert len(load(export)) == len(load(data))


def test_a_sidecar_removed_while_serving_is_written_again(data, tmp_path):
    out = tmp_path / "labels.csv"
    with running(data, out, n=4, seed=0) as server:
        meta = label._read_meta(out)
        label.sidecar_path(out).unlink()
        assert post_answer(server.url, 0, 5)[0] == 200
    assert label._read_meta(out) == meta and answers_in(out) == {0: 5}


# ---------------------------------------------------------------------------------------------
# The page in a real browser


def _browser_or_skip():
    if not (os.path.exists(CHROMIUM) or shutil.which(CHROMIUM)):
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install -y chromium (or set FERKIT_CHROMIUM)")
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed: pip install playwright (no `playwright install` needed)")
    return sync_playwright, expect


def _start_cli(args: list[str]) -> tuple[subprocess.Popen, str]:
    """`python -m ferkit label ARGS --port 0` in a subprocess; returns it and the address it prints."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # Unbuffered bytes: a raw pipe's readline takes no more than one line, so select() stays truthful.
    proc = subprocess.Popen([sys.executable, "-m", "ferkit", "label", *args, "--port", "0"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=0)
    seen, deadline = [], time.monotonic() + 30
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if ready:
            line = proc.stdout.readline().decode(errors="replace")
            if not line:
                break
            seen.append(line)
            if match := re.search(r"open (http://\S+)", line):
                return proc, match.group(1)
        elif proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError("the server did not print its address:\n" + "".join(seen)
                         + proc.stdout.read().decode(errors="replace"))


def test_labelling_in_a_real_browser(data, tmp_path):
    sync_playwright, expect = _browser_or_skip()
    out = tmp_path / "labels.csv"
    args = [str(data), "--n", "8", "--seed", "5", "--out", str(out)]
    dataset = load(data)
    sample_lines = dataset.lines[label.sample_rows(dataset, 8, seed=5)].tolist()
    api_replies: list[dict] = []
    procs: list[subprocess.Popen] = []
    try:
        proc, url = _start_cli(args)
        procs.append(proc)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1000, "height": 900})
            page.set_default_timeout(10_000)

            def keep(response) -> None:
                if "/api/" in response.url and response.ok:
                    api_replies.append(response.json())

            page.on("response", keep)
            progress = page.locator("#progress")

            def chosen(label_: int):
                return expect(page.locator(f"#label-{label_}")).to_have_class(re.compile(r"\bchosen\b"))

            page.goto(url)
            expect(progress).to_have_text("Face 1 of 8")
            expect(page.locator("#buttons button")).to_have_count(7)
            expect(page.locator("#label-3")).to_contain_text("Happy")
            page.click("#label-3")  # Happy, by mouse
            expect(progress).to_have_text("Face 2 of 8")
            page.keyboard.press("5")  # Sad, by key
            expect(progress).to_have_text("Face 3 of 8")
            page.click("#label-6")  # Neutral
            expect(progress).to_have_text("Face 4 of 8")
            page.keyboard.press("1")  # Angry
            expect(progress).to_have_text("Face 5 of 8")
            page.keyboard.press("Backspace")  # back to face 4: Angry is marked; change it to Surprise
            expect(progress).to_have_text("Face 4 of 8")
            chosen(0)
            page.keyboard.press("6")
            expect(progress).to_have_text("Face 5 of 8")
            page.click("#back")
            expect(progress).to_have_text("Face 4 of 8")
            chosen(5)
            page.keyboard.press("ArrowLeft")
            expect(progress).to_have_text("Face 3 of 8")
            chosen(6)
            page.keyboard.press("ArrowRight")
            page.keyboard.press("ArrowRight")
            page.keyboard.press("ArrowRight")  # no further than the face on screen
            expect(progress).to_have_text("Face 5 of 8")
            assert answers_in(out) == {0: 3, 1: 4, 2: 6, 3: 5}

            page.reload()
            expect(progress).to_have_text("Face 5 of 8")
            expect(page.locator("#answered")).to_have_text("(4 answered)")
            page.wait_for_function("() => document.getElementById('face').naturalWidth === 48")
            look = page.evaluate("""() => { const img = document.getElementById('face');
                return {rendering: getComputedStyle(img).imageRendering, width: img.getBoundingClientRect().width,
                        natural: img.naturalWidth, src: img.getAttribute('src')}; }""")
            assert look["rendering"] == "pixelated" and look["width"] >= 400 and look["natural"] == 48
            assert look["src"] == "/face/4.png"

            procs[0].kill()  # SIGKILL: no chance to clean up
            procs[0].wait(10)
            page.keyboard.press("2")  # the server is gone: the page says so and stays on the face
            expect(page.locator("#message")).to_contain_text("Not saved")
            expect(progress).to_have_text("Face 5 of 8")
            assert answers_in(out) == {0: 3, 1: 4, 2: 6, 3: 5}

            proc, url = _start_cli(args)  # the same command again resumes
            procs.append(proc)
            page.goto(url)
            expect(progress).to_have_text("Face 5 of 8")
            page.keyboard.press("2")  # Disgust
            expect(progress).to_have_text("Face 6 of 8")
            page.click("#label-2")  # Fear
            expect(progress).to_have_text("Face 7 of 8")
            page.keyboard.press("7")  # Neutral
            expect(progress).to_have_text("Face 8 of 8")
            page.keyboard.press("4")  # Happy
            expect(progress).to_have_text("Done: 8 of 8")
            expect(page.locator("#done")).to_be_visible()
            expect(page.locator("#done")).to_contain_text("All 8 faces are labelled")
            expect(page.locator("#face")).to_be_hidden()
            page.keyboard.press("Backspace")  # even at the end, the last answer can change
            expect(progress).to_have_text("Face 8 of 8")
            chosen(3)
            page.keyboard.press("5")  # Sad
            expect(progress).to_have_text("Done: 8 of 8")
            text = page.content()
            browser.close()
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(10)
            proc.stdout.close()

    expected = [3, 4, 6, 5, 1, 2, 6, 4]
    table = read_csv_rows(out)
    assert [int(r["index"]) for r in table] == list(range(8))
    assert [int(r["line"]) for r in table] == sample_lines
    assert [r["usage"] for r in table] == ["PrivateTest"] * 8
    assert [int(r["human_label"]) for r in table] == expected
    assert [r["human"] for r in table] == [EMOTIONS[k] for k in expected]
    assert all(0 <= float(r["seconds"]) < 60 for r in table)
    # Nothing the page received names the truth or a model's guess.
    assert api_replies and all(set(reply) == STATE_KEYS for reply in api_replies)
    assert api_replies[-1]["answers"] == expected
    assert not re.search(r"truth|true_label|\bpred", text, re.IGNORECASE)
