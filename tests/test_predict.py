"""The model at work: faces found in composed photos, crops classified as in training, ONNX export,
and `ferkit run` end to end on small generated data."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ferkit import config, train
from ferkit.cli import main
from ferkit.data import EMOTIONS, load
from ferkit.errors import FerkitError

from conftest import SHARED


@pytest.fixture(scope="module")
def tiny_run(tiny_csv, tmp_path_factory):
    run = tmp_path_factory.mktemp("predict") / "cnn"
    cfg = config.resolve(overrides={"epochs": 1, "widths": "8,16", "batch_size": 32, "threads": 1})
    train.train(tiny_csv, run, cfg, progress=False)
    return run


def save_turned(upright: np.ndarray, path: Path, mode: str | None = None) -> None:
    """Save `upright` as a camera does: stored turned, with the EXIF orientation (6) that turns it back to show."""
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to show
    Image.fromarray(upright, mode).transpose(Image.Transpose.ROTATE_90).save(path, exif=exif)


def annotated_names(folder: Path) -> list[str]:
    """The annotated copies in `folder`, without the hidden record predict keeps there."""
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def test_no_detect_crops_match_the_training_pipeline(tiny_run, tiny_csv, tmp_path):
    import cv2

    from ferkit.predict import predict

    dataset = load(tiny_csv)
    rows = dataset.indices("PrivateTest")[:5]
    for k, row in enumerate(rows):
        cv2.imwrite(str(tmp_path / f"face{k}.png"), dataset.images[row])
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 this is no jpeg")
    table, messages = predict(tiny_run, [tmp_path, tmp_path / "notes.txt"], detect=False, progress=False)
    assert len(table) == 5
    assert any("broken.jpg" in m and "not a readable image" in m for m in messages)
    assert any("notes.txt" in m for m in messages)
    model, _ = train.load_model(tiny_run)
    expected = train.predict_proba(model, dataset.images[rows])
    got = table.sort_values("file")[list(EMOTIONS)].to_numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert set(table["emotion"]) <= set(EMOTIONS)


@pytest.mark.skipif(not (SHARED / "icml_face_data.csv.xz").exists(), reason="the shared FER2013 file is absent")
def test_faces_are_found_where_they_were_put(tiny_run, tmp_path):
    """Real FER2013 faces, enlarged and pasted onto a 640x480 background at known places."""
    import cv2

    from ferkit.predict import detect_faces, face_detector, predict

    dataset = load(SHARED / "icml_face_data.csv.xz")
    detector = face_detector()
    blank = np.full((480, 640), 120, np.uint8)

    def enlarged(row: int) -> np.ndarray:
        return cv2.resize(dataset.images[row], (150, 150), interpolation=cv2.INTER_CUBIC)

    def alone(row: int) -> bool:
        canvas = blank.copy()
        canvas[160:310, 240:390] = enlarged(row)
        return len(detect_faces(canvas, detector)) == 1

    chosen = [int(r) for r in dataset.indices("PrivateTest")[:30] if alone(int(r))][:3]
    assert len(chosen) == 3
    places = [(20, 40), (240, 300), (470, 60)]  # top-left corners (x, y)
    photo = np.stack([blank] * 3, axis=2)
    for row, (x, y) in zip(chosen, places):
        photo[y:y + 150, x:x + 150] = enlarged(row)[:, :, None]
    cv2.imwrite(str(tmp_path / "group.jpg"), photo, [cv2.IMWRITE_JPEG_QUALITY, 95])
    cv2.imwrite(str(tmp_path / "empty.png"), blank)
    table, messages = predict(tiny_run, [tmp_path / "group.jpg", tmp_path / "empty.png"],
                              out=tmp_path / "faces.csv", annotate=tmp_path / "annotated", progress=False)
    assert any("empty.png" in m and "no face" in m for m in messages)
    centres = table.assign(cx=table.x + table.width / 2, cy=table.y + table.height / 2)[["cx", "cy"]].to_numpy()
    for x, y in places:
        distance = np.hypot(centres[:, 0] - (x + 75), centres[:, 1] - (y + 75)).min()
        assert distance < 30, f"no face box near the face put at {(x, y)}"
    assert len(pd.read_csv(tmp_path / "faces.csv")) == len(table)
    assert (tmp_path / "annotated" / "group.jpg").exists()


def test_onnx_export_matches_pytorch(tiny_run, tiny_csv, tmp_path):
    import onnxruntime
    import torch

    from ferkit.export import Probabilities

    assert main(["export", str(tiny_run), "--onnx", str(tmp_path / "model.onnx")]) == 0
    sidecar = json.loads((tmp_path / "model.json").read_text())
    assert sidecar["classes"] == list(EMOTIONS)
    images = load(tiny_csv).images[:8]
    pixels = images[:, None].astype(np.float32)
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"))
    onnx_probs = session.run(None, {"pixels": pixels})[0]
    model, _ = train.load_model(tiny_run)
    with torch.no_grad():
        torch_probs = Probabilities(model).eval()(torch.from_numpy(pixels)).numpy()
    np.testing.assert_allclose(onnx_probs, torch_probs, atol=1e-4)
    np.testing.assert_allclose(onnx_probs, train.predict_proba(model, images), atol=1e-4)


def test_predict_cli_reports_bad_inputs(tiny_run, tmp_path, capsys):
    (tmp_path / "bad.png").write_bytes(b"garbage")
    assert main(["predict", str(tiny_run), str(tmp_path / "bad.png")]) == 2
    err = capsys.readouterr().err
    assert "bad.png: not a readable image, skipped" in err and "no face was classified" in err
    assert main(["predict", str(tiny_run), str(tmp_path / "bad.png"), "--out", str(tmp_path / "f.csv")]) == 2
    assert "0 face(s)" not in capsys.readouterr().out and not (tmp_path / "f.csv").exists()  # nothing written
    assert main(["predict", str(tiny_run), str(tmp_path / "bad.png"), str(tmp_path / "missing.jpg")]) == 2
    err = capsys.readouterr().err  # a mistyped name stops it before any work
    assert "missing.jpg: no such file or folder (nothing was classified)" in err and "bad.png" not in err
    assert "Traceback" not in err


def test_predict_takes_one_path_as_one_input(tiny_run, tiny_csv, tmp_path):
    from PIL import Image

    from ferkit.predict import predict

    face = tmp_path / "face.png"
    Image.fromarray(load(tiny_csv).images[0]).save(face)
    table, messages = predict(tiny_run, str(face), detect=False, progress=False)  # a str, not a list
    assert len(table) == 1 and messages == []


def test_a_photo_given_twice_is_classified_once(tiny_run, tiny_csv, tmp_path):
    from PIL import Image

    from ferkit.predict import predict

    (tmp_path / "photos").mkdir()
    for i in range(2):
        Image.fromarray(load(tiny_csv).images[i]).save(tmp_path / "photos" / f"face{i}.png")
    twice = [tmp_path / "photos" / "face1.png", tmp_path / "photos", tmp_path / "photos" / ".." / "photos" / "face1.png"]
    table, _ = predict(tiny_run, twice, detect=False, progress=False)
    assert list(table["file"]) == [str(tmp_path / "photos" / "face1.png"), str(tmp_path / "photos" / "face0.png")]


def test_a_photo_whose_name_is_not_utf8_is_classified_and_its_name_written_back_as_it_is(tiny_run, tiny_csv, tmp_path):
    """Names unzipped from a Windows archive: cv2.imread crashed the process on them."""
    from PIL import Image

    from ferkit.predict import predict

    name = b"caf\xe9.png"  # Latin-1 e-acute: not UTF-8
    photos = tmp_path / "photos"
    photos.mkdir()
    try:
        Image.fromarray(load(tiny_csv).images[0]).save(photos / os.fsdecode(name))
    except (OSError, UnicodeError):
        pytest.skip("this file system takes only UTF-8 names")
    Image.fromarray(load(tiny_csv).images[0]).save(photos / "plain.png")
    out = tmp_path / "faces.csv"
    table, messages = predict(tiny_run, [photos], out=out, annotate=tmp_path / "annotated", detect=False,
                              progress=False)
    assert messages == [] and len(table) == 2
    np.testing.assert_array_equal(table.iloc[0][list(EMOTIONS)], table.iloc[1][list(EMOTIONS)])
    assert os.fsencode(photos / os.fsdecode(name)) in out.read_bytes()
    assert os.fsencode(tmp_path / "annotated" / os.fsdecode(b"caf\xe9.jpg")) in map(
        os.fsencode, (tmp_path / "annotated").iterdir())


def test_the_emotion_is_the_most_probable_one_and_tta_is_applied(tiny_run, tiny_csv, tmp_path):
    import cv2

    from ferkit.predict import predict

    dataset = load(tiny_csv)
    rows = dataset.indices("PrivateTest")[:6]
    for k, row in enumerate(rows):
        cv2.imwrite(str(tmp_path / f"face{k}.png"), dataset.images[row])
    model, _ = train.load_model(tiny_run)
    expected = {mode: train.predict_proba(model, dataset.images[rows], tta=mode) for mode in ("none", "flip")}
    assert not np.allclose(expected["none"], expected["flip"], atol=1e-4)  # else TTA could not be told apart
    for tta, mode in ((False, "none"), (True, "flip")):
        table, _ = predict(tiny_run, tmp_path, detect=False, tta=tta, progress=False)
        table = table.sort_values("file")
        probs = table[list(EMOTIONS)].to_numpy()
        np.testing.assert_allclose(probs, expected[mode], atol=1e-5)
        assert list(table["emotion"]) == [EMOTIONS[i] for i in probs.argmax(1)]


@pytest.mark.slow
def test_run_end_to_end_and_resume(tiny_csv, tmp_path, capsys):
    out = tmp_path / "study"
    tiny = ["epochs=2", "widths=4,8", "batch_size=32", "threads=1"]
    args = ["run", str(tiny_csv), "--out", str(out), "--profile", "cpu"]
    for item in tiny:
        args += ["--set", item, "--mlp-set", item.replace("widths=4,8", "hidden=32")]
    assert main(args) == 0
    record = json.loads((out / "pipeline.json").read_text())
    assert all(stage["done"] for stage in record["stages"].values()) and len(record["stages"]) == 7
    cnn_tta = json.loads((out / "cnn" / "eval" / "test-tta" / "metrics.json").read_text())
    mlp_tta = json.loads((out / "mlp" / "eval" / "test-tta" / "metrics.json").read_text())
    assert record["results"] == {
        "cnn_test_accuracy_tta": cnn_tta["accuracy"], "cnn_test_macro_f1_tta": cnn_tta["macro_f1"],
        "mlp_test_accuracy_tta": mlp_tta["accuracy"], "mlp_test_macro_f1_tta": mlp_tta["macro_f1"],
        "cnn_tta": "flip", "mlp_tta": "flip"}
    assert cnn_tta["tta"] == "flip" and mlp_tta["tta"] == "flip"
    assert json.loads((out / "mlp" / "eval" / "test" / "metrics.json").read_text())["tta"] == "none"
    # the MLP baseline trains without augmentation, the CNN with it
    assert config.load(out / "cnn" / "config.yaml").augment and not config.load(out / "mlp" / "config.yaml").augment
    for path in ("data/summary.json", "cnn/eval/test-tta/metrics.json", "mlp/eval/test/metrics.json",
                 "features/features.json", "report/report.pdf"):
        assert (out / path).exists(), path
    capsys.readouterr()
    assert main(args) == 0  # a second run skips every finished stage
    assert capsys.readouterr().out.count("done already, skipped") == 7
    # other settings would be ignored by the finished stages: refused, not silently skipped
    assert main([a.replace("epochs=2", "epochs=3") for a in args]) == 2
    assert f"{out / 'cnn'} was started with other settings: epochs 2 (now 3)" in capsys.readouterr().err
    assert main(args + ["--set", "model=mlp"]) == 2
    assert "--set model=mlp: this stage of the study trains the cnn" in capsys.readouterr().err


class BoxesDetector:
    """Stands in for OpenCV's cascade: finds the boxes (x, y, width, height) it is given."""

    def __init__(self, boxes):
        self.boxes = boxes

    def detectMultiScale(self, gray, **kwargs):
        return np.array(self.boxes)


def test_a_cut_photo_is_skipped_with_its_reason_and_no_library_noise(tiny_run, tiny_csv, tmp_path, capfd):
    """OpenCV reads a cut JPEG as a whole photo, grey below the cut; a cut TIFF makes it log errors."""
    from PIL import Image

    from ferkit.predict import predict

    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8))
    (tmp_path / "photos").mkdir()
    for name in ("whole.jpg", "cut.jpg", "cut.tiff"):
        photo.save(tmp_path / "photos" / name)
    for name in ("cut.jpg", "cut.tiff"):
        path = tmp_path / "photos" / name
        path.write_bytes(path.read_bytes()[:path.stat().st_size * 2 // 3])
    table, messages = predict(tiny_run, tmp_path / "photos", detect=False, progress=False)
    assert list(table["file"]) == [str(tmp_path / "photos" / "whole.jpg")]
    assert messages == [f"{tmp_path / 'photos' / 'cut.jpg'}: the JPEG ends before its image does (an interrupted "
                        "download or copy?), so its lower part is missing, skipped",
                        f"{tmp_path / 'photos' / 'cut.tiff'}: not a readable image, skipped"]
    assert "imread" not in capfd.readouterr().err


def test_detected_faces_are_cropped_with_the_margin_largest_first():
    from ferkit.predict import detect_faces, to_face

    ys, xs = np.mgrid[0:200, 0:300]
    gray = ((xs * 7 + ys * 3) % 251).astype(np.uint8)  # every crop of it looks different
    boxes = [(0, 0, 40, 40), (150, 50, 80, 100), (260, 170, 40, 30), (200, 120, 60, 50)]  # x, y, width, height
    faces = detect_faces(gray, BoxesDetector(boxes), margin=0.15)
    # grown by 15% of the width and height on every side, clipped to the photo; largest first
    expected = [(138, 35, 104, 130), (191, 113, 78, 64), (0, 0, 46, 46), (254, 166, 46, 34)]
    assert [f.box for f in faces] == expected
    for face, (x, y, w, h) in zip(faces, expected):
        assert face.crop.shape == (48, 48) and face.crop.dtype == np.uint8
        np.testing.assert_array_equal(face.crop, to_face(gray[y:y + h, x:x + w]))


def test_a_large_crop_is_shrunk_by_averaging_as_a_photo_would_be():
    """Each of the 48x48 pixels is the mean of the 10x10 block of a 480x480 crop that it covers: sampling a few
    pixels instead would turn fine detail (here noise) into noise of its own."""
    from ferkit.predict import to_face

    gray = np.random.default_rng(0).integers(0, 256, (480, 480)).astype(np.uint8)
    block_means = gray.reshape(48, 10, 48, 10).mean(axis=(1, 3))
    assert np.abs(to_face(gray).astype(float) - block_means).max() <= 1


def test_photos_without_a_face_are_named_and_a_small_one_gets_the_advice_to_skip_detection(tiny_run, tmp_path):
    from PIL import Image

    from ferkit.predict import predict

    Image.new("L", (100, 100), 128).save(tmp_path / "crop.png")  # as small as a face that was cut out already
    Image.new("L", (640, 480), 128).save(tmp_path / "wall.png")
    with pytest.raises(FerkitError) as raised:
        predict(tiny_run, [tmp_path / "crop.png", tmp_path / "wall.png"], out=tmp_path / "faces.csv", progress=False)
    assert str(raised.value).splitlines() == [
        "no face was classified, so nothing was written:",
        f"  {tmp_path / 'crop.png'}: no face found (a crop this small is maybe a face already: --no-detect "
        "classifies it whole)",
        f"  {tmp_path / 'wall.png'}: no face found"]
    assert not (tmp_path / "faces.csv").exists()


def test_colour_photos_of_any_shape_and_suffix_are_read_as_training_faces(tiny_run, tmp_path, monkeypatch):
    """Colour is turned grey as OpenCV's BGR order says, a crop keeps its width and height in the table,
    an upper-case suffix counts, and each annotated photo gets its own faces' boxes."""
    import cv2

    from ferkit.predict import predict, to_face

    rng = np.random.default_rng(0)
    photos = {"A.PNG": (40, 60), "b.png": (70, 50)}  # name: (height, width)
    expected = []
    (tmp_path / "photos").mkdir()
    for name, (h, w) in photos.items():
        bgr = np.zeros((h, w, 3), np.uint8)
        bgr[..., 0] = rng.integers(200, 256, (h, w))  # blue
        bgr[..., 1] = rng.integers(0, 256, (h, w))
        bgr[..., 2] = rng.integers(0, 30, (h, w))  # little red
        cv2.imwrite(str(tmp_path / "photos" / name), bgr)
        expected.append(to_face(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)))
    drawn = []
    real_rectangle = cv2.rectangle
    monkeypatch.setattr(cv2, "rectangle", lambda img, p1, p2, *a, **k: drawn.append((p1, p2)) or
                        real_rectangle(img, p1, p2, *a, **k))
    table, messages = predict(tiny_run, tmp_path / "photos", detect=False, annotate=tmp_path / "boxes", progress=False)
    assert messages == [] and [Path(p).name for p in table["file"]] == list(photos)
    assert table[["x", "y", "width", "height"]].values.tolist() == [[0, 0, w, h] for h, w in photos.values()]
    model, _ = train.load_model(tiny_run)
    np.testing.assert_allclose(table[list(EMOTIONS)].to_numpy(), train.predict_proba(model, np.stack(expected)),
                               atol=1e-5)
    assert drawn == [((0, 0), (w, h)) for h, w in photos.values()]


def test_photos_of_the_same_name_get_an_annotated_copy_each(tiny_run, tmp_path):
    import cv2

    from ferkit.predict import predict

    for folder, value in (("a", 40), ("b", 200)):
        (tmp_path / folder).mkdir()
        cv2.imwrite(str(tmp_path / folder / "face.png"), np.full((48, 48, 3), value, np.uint8))
    predict(tiny_run, [tmp_path / "a", tmp_path / "b"], detect=False, annotate=tmp_path / "boxes", progress=False)
    assert annotated_names(tmp_path / "boxes") == ["face.jpg", "face_.jpg"]
    # names that differ in case alone are one file on macOS and Windows
    (tmp_path / "b" / "face.png").rename(tmp_path / "b" / "Face.png")
    predict(tiny_run, [tmp_path / "a", tmp_path / "b"], detect=False, annotate=tmp_path / "cased", progress=False)
    assert annotated_names(tmp_path / "cased") == ["Face_.jpg", "face.jpg"]
    # a folder keeps track of every copy it was given: a later run may replace any of them, not just the last run's
    predict(tiny_run, tmp_path / "a", detect=False, annotate=tmp_path / "cased", progress=False)
    predict(tiny_run, [tmp_path / "a", tmp_path / "b"], detect=False, annotate=tmp_path / "cased", progress=False)


def test_the_label_of_a_box_at_the_top_of_a_photo_is_written_inside_it(tiny_run, tmp_path):
    import cv2

    from ferkit.predict import predict

    cv2.imwrite(str(tmp_path / "face.png"), np.full((200, 200, 3), 128, np.uint8))
    predict(tiny_run, tmp_path / "face.png", detect=False, annotate=tmp_path / "boxes", progress=False)  # box: all
    below_the_edge = cv2.imread(str(tmp_path / "boxes" / "face.jpg"))[4:40, 4:-4].astype(int)
    blue, green, red = below_the_edge[..., 0], below_the_edge[..., 1], below_the_edge[..., 2]
    assert ((green > 160) & (red < 100) & (blue < 100)).sum() > 30  # the label's green strokes


def test_annotated_copies_never_replace_or_join_the_photos(tiny_run, tiny_csv, tmp_path, capsys):
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(load(tiny_csv).images[0]).save(photos / "face.jpg")
    original = (photos / "face.jpg").read_bytes()
    for annotate, given in ((photos, photos), (photos / "boxes", photos), (photos, photos / "face.jpg")):
        assert main(["predict", str(tiny_run), str(given), "--no-detect", "--annotate", str(annotate)]) == 2
        err = capsys.readouterr().err
        assert f"--annotate {annotate}: this folder" in err and "pick" in err
    assert (photos / "face.jpg").read_bytes() == original and not (photos / "boxes").exists()
    assert main(["predict", str(tiny_run), str(photos), "--no-detect", "--annotate", str(tmp_path / "boxes")]) == 0
    assert (tmp_path / "boxes" / "face.jpg").exists()


def test_export_refuses_a_json_name_or_a_json_no_export_wrote_and_replaces_its_own_sidecar(tiny_run, tmp_path, capsys):
    for name in ("model.json", "MODEL.JSON"):
        assert main(["export", str(tiny_run), "--onnx", str(tmp_path / name)]) == 2
        assert "the model's .json sidecar takes this name; name the model .onnx" in capsys.readouterr().err
        assert not (tmp_path / name).exists()
    (tmp_path / "notes.json").write_text("my notes, not JSON")  # unreadable as JSON is no sidecar either
    assert main(["export", str(tiny_run), "--onnx", str(tmp_path / "notes.onnx")]) == 2
    assert "would replace a file that is no ferkit export's sidecar" in capsys.readouterr().err
    assert (tmp_path / "notes.json").read_text() == "my notes, not JSON"
    for _ in range(2):  # an export replaces its own earlier sidecar, which names the checkpoint's epoch
        assert main(["export", str(tiny_run), "--onnx", str(tmp_path / "model.onnx")]) == 0
    assert json.loads((tmp_path / "model.json").read_text())["epoch"] == train.load_model(tiny_run)[1]["epoch"]


def test_no_output_replaces_a_photo_or_a_runs_own_files(tiny_run, tiny_csv, tmp_path, capsys):
    """--annotate into an album, --out naming a photo, and an export named after the run's files."""
    import shutil

    from PIL import Image

    from ferkit.predict import predict

    (tmp_path / "album").mkdir()
    (tmp_path / "other").mkdir()
    Image.fromarray(load(tiny_csv).images[0]).save(tmp_path / "album" / "holiday.jpg")
    Image.fromarray(load(tiny_csv).images[1]).save(tmp_path / "other" / "holiday.png")
    album = (tmp_path / "album" / "holiday.jpg").read_bytes()
    with pytest.raises(FerkitError, match="album: already holds holiday.jpg, which the annotated copies would replace"):
        predict(tiny_run, tmp_path / "other", detect=False, annotate=tmp_path / "album", progress=False)
    assert (tmp_path / "album" / "holiday.jpg").read_bytes() == album
    for _ in range(2):  # a rerun replaces its own copies
        predict(tiny_run, tmp_path / "other", detect=False, annotate=tmp_path / "boxes", progress=False)
    for out, message in ((tmp_path / "table.jpg", "names an image, but --out is the CSV table"),
                         (tmp_path / "other" / "holiday.png", "names an image")):
        with pytest.raises(FerkitError, match=message):
            predict(tiny_run, tmp_path / "other", out=out, detect=False, progress=False)
    scan = tmp_path / "scan"  # a photo without a suffix, given by name, is classified: --out must not replace it
    Image.fromarray(load(tiny_csv).images[0]).save(scan, format="PNG")
    with pytest.raises(FerkitError, match="--out .*scan: is one of the photos to classify; name the CSV otherwise"):
        predict(tiny_run, scan, out=scan, detect=False, progress=False)
    assert Image.open(scan).format == "PNG"
    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy)
    record = (copy / "run.json").read_bytes()
    with pytest.raises(FerkitError, match="is the training run's own history.csv"):
        predict(copy, tmp_path / "other", out=copy / "history.csv", detect=False, progress=False)
    assert main(["export", str(copy), "--onnx", str(copy / "run.onnx")]) == 2
    assert "is the training run's own run.json" in capsys.readouterr().err
    assert (copy / "run.json").read_bytes() == record
    (tmp_path / "notes.json").write_text("{}")
    assert main(["export", str(copy), "--onnx", str(tmp_path / "notes.onnx")]) == 2
    assert "would replace a file that is no ferkit export's sidecar" in capsys.readouterr().err


def test_a_tiff_opencv_cannot_read_is_read_upright_by_pillow(tiny_run, tmp_path):
    from ferkit.predict import read_photo

    rng = np.random.default_rng(0)
    upright = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    save_turned(upright, tmp_path / "rot6.tif")
    image, problem = read_photo(tmp_path / "rot6.tif")
    assert problem is None
    np.testing.assert_array_equal(image[:, :, ::-1], upright)


def test_the_sidecar_names_the_faces_and_tta_none_is_said(tiny_csv, tmp_path):
    from ferkit.data import load as load_data
    from ferkit.export import export_onnx
    from ferkit.predict import predict

    run = tmp_path / "run"
    train.train(tiny_csv, run, config.resolve(overrides={"epochs": 1, "widths": "4,8", "tta": "none",
                                                         "train_limit": 64}), progress=False)
    export_onnx(run, tmp_path / "m.onnx")
    sidecar = json.loads((tmp_path / "m.json").read_text())
    assert sidecar["data_faces_sha256"] == load_data(tiny_csv).faces_sha256 and sidecar["ferkit_version"]
    from PIL import Image

    Image.fromarray(load_data(tiny_csv).images[0]).save(tmp_path / "face.png")
    _, messages = predict(run, tmp_path / "face.png", detect=False, tta=True, progress=False)
    assert messages == ["--tta: this run's tta setting is none, so each face was classified once"]


def test_a_transparent_photo_is_read_on_white_as_a_viewer_shows_it(tmp_path):
    from PIL import Image

    from ferkit.predict import read_photo

    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)  # what hides under the transparent pixels
    alpha = np.zeros((20, 30), dtype=np.uint8)
    alpha[:, 10:20], alpha[:, 20:] = 255, 128
    Image.fromarray(np.dstack([colours, alpha]), "RGBA").save(tmp_path / "cut-out.png")
    image, problem = read_photo(tmp_path / "cut-out.png")
    rgb = image[:, :, ::-1].astype(int)
    assert problem is None and image.shape == (20, 30, 3)
    assert (rgb[:, :10] == 255).all()  # fully transparent: white, whatever colour was stored
    np.testing.assert_array_equal(rgb[:, 10:20], colours[:, 10:20])
    assert np.abs(rgb[:, 20:] - (colours[:, 20:].astype(int) * 128 + 255 * 127) / 255).max() <= 1
    grey = Image.fromarray(colours[:, :, 0], "L").convert("P")
    grey.info["transparency"] = int(np.asarray(grey)[0, 0])  # a palette image with a transparent colour
    grey.save(tmp_path / "palette.png", transparency=grey.info["transparency"])
    image, _ = read_photo(tmp_path / "palette.png")
    assert (image[np.asarray(Image.open(tmp_path / "palette.png")) == grey.info["transparency"]] == 255).all()
    Image.fromarray(colours).save(tmp_path / "opaque.png")  # an opaque photo is read as it was
    np.testing.assert_array_equal(read_photo(tmp_path / "opaque.png")[0][:, :, ::-1], colours)
    save_turned(np.dstack([colours, np.full((20, 30), 255, np.uint8)]), tmp_path / "turned.png", "RGBA")
    np.testing.assert_array_equal(read_photo(tmp_path / "turned.png")[0][:, :, ::-1], colours)  # upright, as shown


def test_decoder_warnings_name_their_photo_instead_of_going_to_stderr(tiny_run, tmp_path, capfd):
    import struct
    import zlib

    from PIL import Image

    from ferkit.predict import predict

    rng = np.random.default_rng(0)
    (tmp_path / "photos").mkdir()
    Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(tmp_path / "photos" / "a.jpg")
    damaged = bytearray((tmp_path / "photos" / "a.jpg").read_bytes())
    damaged[len(damaged) // 2:len(damaged) // 2 + 20] = bytes(20)  # garbage inside the picture's data
    (tmp_path / "photos" / "a.jpg").write_bytes(damaged)
    Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(tmp_path / "photos" / "b.png")
    png = (tmp_path / "photos" / "b.png").read_bytes()
    profile = b"bogus\x00\x00" + zlib.compress(b"not a colour profile")
    chunk = struct.pack(">I", len(profile)) + b"iCCP" + profile + struct.pack(">I", zlib.crc32(b"iCCP" + profile))
    (tmp_path / "photos" / "b.png").write_bytes(png[:33] + chunk + png[33:])  # after the 8-byte signature and IHDR
    Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(tmp_path / "photos" / "c.png")
    capfd.readouterr()
    table, messages = predict(tiny_run, tmp_path / "photos", detect=False, progress=False)
    assert len(table) == 3 and len(messages) == 2
    assert messages[0].startswith(f"{tmp_path / 'photos' / 'a.jpg'}: the image decoder warned (Corrupt JPEG data")
    assert messages[1].startswith(f"{tmp_path / 'photos' / 'b.png'}: the image decoder warned (libpng warning: iCCP")
    assert messages[1].endswith("); classified as read, check the photo")
    assert capfd.readouterr().err == ""


def test_a_transparent_16_bit_grayscale_photo_keeps_its_greys(tmp_path):
    """Pillow reads a 16-bit grayscale PNG as I;16, whose convert() clipped every value above 255 to
    white: with a transparent grey (which sent it to Pillow) the whole photo came out white."""
    from PIL import Image

    from ferkit.predict import read_photo

    values = np.linspace(0, 65535, 20 * 30).reshape(20, 30).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png", transparency=0)
    image, problem = read_photo(tmp_path / "deep.png")
    assert problem is None and image.shape == (20, 30, 3)
    assert image[0, 0].tolist() == [255, 255, 255]  # the transparent grey: on white
    np.testing.assert_array_equal(image[:, :, 0].ravel()[1:], (values.ravel()[1:] >> 8).astype(np.uint8))


def test_no_output_replaces_the_checkpoint_it_is_made_with(tiny_run, tiny_csv, tmp_path, capsys):
    """A checkpoint copied out of its run is protected by nothing else: the CSV or the ONNX took its place."""
    import shutil

    from PIL import Image

    checkpoint = tmp_path / "best.pt"
    shutil.copy(tiny_run / "checkpoints" / "best.pt", checkpoint)
    original = checkpoint.read_bytes()
    Image.fromarray(load(tiny_csv).images[0]).save(tmp_path / "face.png")
    assert main(["predict", str(checkpoint), str(tmp_path / "face.png"), "--no-detect", "--out", str(checkpoint)]) == 2
    assert "is the checkpoint to classify with; name the CSV otherwise" in capsys.readouterr().err
    assert main(["export", str(checkpoint), "--onnx", str(tmp_path / "." / "best.pt")]) == 2
    assert "is the checkpoint to export; name the model .onnx" in capsys.readouterr().err
    assert checkpoint.read_bytes() == original and not (tmp_path / "best.json").exists()


def test_a_file_name_that_is_not_utf8_is_printed_as_its_bytes_on_a_strict_stdout(tiny_run, tiny_csv, tmp_path,
                                                                                 monkeypatch):
    """Under a UTF-8 locale (not C.UTF-8) stdout is strict: printing such a name raised UnicodeEncodeError."""
    import io
    import sys

    from PIL import Image

    name = os.fsdecode(b"caf\xe9.png")
    try:
        Image.fromarray(load(tiny_csv).images[0]).save(tmp_path / name)
    except (OSError, UnicodeError):
        pytest.skip("this file system takes only UTF-8 names")
    for args, expected in ((["predict", str(tiny_run), str(tmp_path / name), "--no-detect"], tmp_path / name),
                           (["export", str(tiny_run), "--onnx", str(tmp_path / "caf\udce9.onnx")],
                            tmp_path / "caf\udce9.onnx")):
        stdout = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict")
        monkeypatch.setattr(sys, "stdout", stdout)
        assert main(args) == 0
        stdout.flush()
        assert os.fsencode(expected) in stdout.buffer.getvalue()


def test_a_photo_larger_than_opencv_reads_is_skipped_not_a_traceback(tiny_run, tiny_csv, tmp_path):
    """A header of more than 2^30 pixels (a huge panorama, or a damaged file) made cv2.imdecode raise."""
    import struct
    import zlib

    from PIL import Image

    from ferkit.predict import predict

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    (tmp_path / "photos").mkdir()
    header = struct.pack(">IIBBBBB", 40000, 30000, 8, 0, 0, 0, 0)  # 1.2 gigapixels, grey
    (tmp_path / "photos" / "huge.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(
        b"IDAT", zlib.compress(b"\x00" + bytes(16))) + chunk(b"IEND", b""))
    Image.fromarray(load(tiny_csv).images[0]).save(tmp_path / "photos" / "face.png")
    table, messages = predict(tiny_run, tmp_path / "photos", detect=False, progress=False)
    assert list(table["file"]) == [str(tmp_path / "photos" / "face.png")]
    assert messages == [f"{tmp_path / 'photos' / 'huge.png'}: not a readable image, skipped"]


def test_annotating_keeps_no_photo_in_memory_until_the_end(tiny_run, tiny_csv, tmp_path, monkeypatch):
    """Every photo was kept whole until the copies were drawn: 36 MB for each of 12 megapixels, so a few hundred
    photos took more memory than a laptop has. Each is read again when drawn; one changed meanwhile is said."""
    import gc
    import weakref

    from PIL import Image

    from ferkit import predict as predict_module

    (tmp_path / "photos").mkdir()
    for i in range(4):
        Image.fromarray(load(tiny_csv).images[i]).save(tmp_path / "photos" / f"face{i}.png")
    read, alive = [], []
    real_read, real_classify = predict_module.read_photo, train.predict_as_trained

    def reading(path):
        image, note = real_read(path)
        if image is not None:
            read.append(weakref.ref(image))
        return image, note

    def classifying(*args, **kwargs):
        gc.collect()
        alive.append(sum(ref() is not None for ref in read))
        (tmp_path / "photos" / "face3.png").unlink()  # removed before its copy is drawn
        return real_classify(*args, **kwargs)

    monkeypatch.setattr(predict_module, "read_photo", reading)
    monkeypatch.setattr(train, "predict_as_trained", classifying)
    table, messages = predict_module.predict(tiny_run, tmp_path / "photos", detect=False,
                                             annotate=tmp_path / "boxes", progress=False)
    assert len(table) == 4 and alive == [1]  # the last photo read, still named by the loop
    assert annotated_names(tmp_path / "boxes") == ["face0.jpg", "face1.jpg", "face2.jpg"]
    assert messages == [f"{tmp_path / 'photos' / 'face3.png'}: changed or removed while it was classified, so it has "
                        "no annotated copy"]


def test_a_folder_s_hidden_files_and_macos_resource_forks_are_not_photos(tiny_run, tiny_csv, tmp_path):
    """A Mac's zip unzips with __MACOSX/._NAME files (each was "not a readable image"), and a drive's
    .Trash-1000/ holds deleted photos (they were classified); a hidden file given by name is a photo."""
    from PIL import Image

    from ferkit.predict import find_images

    photos = tmp_path / "photos"
    for name in ("face.png", ".face.png", ".Trash-1000/files/old.png", "__MACOSX/photos/._face.png"):
        (photos / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(load(tiny_csv).images[0]).save(photos / name, format="PNG")
    hidden = tmp_path / ".album"
    hidden.mkdir()
    Image.fromarray(load(tiny_csv).images[0]).save(hidden / "face.png")
    files, missing, notes = find_images([photos, photos / ".face.png", hidden])
    assert files == [photos / "face.png", photos / ".face.png", hidden / "face.png"] and missing == notes == []


def test_inputs_given_as_a_generator_are_checked_against_annotate_too(tiny_run, tiny_csv, tmp_path):
    """The --annotate check read the inputs a second time: a generator was spent, and the check passed."""
    from PIL import Image

    from ferkit.predict import predict

    (tmp_path / "photos").mkdir()
    Image.fromarray(load(tiny_csv).images[0]).save(tmp_path / "photos" / "face.png")
    with pytest.raises(FerkitError, match="this folder is or lies in"):
        predict(tiny_run, (p for p in [tmp_path / "photos"]), detect=False, annotate=tmp_path / "photos" / "boxes",
                progress=False)
    assert not (tmp_path / "photos" / "boxes").exists()


def test_a_folder_s_links_are_followed_once_and_a_broken_one_is_said(tiny_run, tiny_csv, tmp_path, capsys):
    """rglob followed no linked folder and passed by a broken link without a word: their photos went unclassified."""
    from PIL import Image

    from ferkit.predict import predict

    photos, given = tmp_path / "photos", tmp_path / "given"
    photos.mkdir()
    given.mkdir()
    for i in range(2):
        Image.fromarray(load(tiny_csv).images[i]).save(photos / f"face{i}.png")
    Image.fromarray(load(tiny_csv).images[2]).save(given / "a.png")
    (given / "b.jpg").symlink_to(tmp_path / "nowhere" / "b.jpg")
    (given / "album").symlink_to(tmp_path / "nowhere" / "album")  # maybe a folder of photos once
    (given / "notes.txt").symlink_to(tmp_path / "nowhere" / "notes.txt")  # no photo: not worth a word
    (given / "more").symlink_to(photos, target_is_directory=True)
    (given / "again.png").symlink_to(photos / "face0.png")  # a photo reached twice is read once
    (photos / "loop").symlink_to(given, target_is_directory=True)  # given/more/loop/more/loop/... never ends
    table, messages = predict(tiny_run, given, detect=False, progress=False)
    assert list(table["file"]) == [str(given / "a.png"), str(given / "again.png"), str(given / "more" / "face1.png")]
    assert messages == [f"{given / 'album'}: a broken link (to {tmp_path / 'nowhere' / 'album'}), skipped",
                        f"{given / 'b.jpg'}: a broken link (to {tmp_path / 'nowhere' / 'b.jpg'}), skipped"]
    assert main(["predict", str(tiny_run), str(given), "--no-detect"]) == 0
    assert f"{given / 'b.jpg'}: a broken link" in capsys.readouterr().err


def test_a_folder_of_annotated_copies_is_not_searched_for_photos(tiny_run, tiny_csv, tmp_path):
    """Annotating photos given as files into a subfolder of theirs is allowed; the next search of their folder read
    the annotated copies, boxes and labels drawn, as photos."""
    from PIL import Image

    from ferkit.predict import predict

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        Image.fromarray(load(tiny_csv).images[i]).save(photos / f"face{i}.png")
    predict(tiny_run, [photos / "face0.png", photos / "face1.png"], detect=False, annotate=photos / "ann",
            progress=False)
    assert annotated_names(photos / "ann") == ["face0.jpg", "face1.jpg"]
    table, messages = predict(tiny_run, photos, detect=False, progress=False)
    assert list(table["file"]) == [str(photos / "face0.png"), str(photos / "face1.png")]
    assert messages == [f"{photos / 'ann'}: holds ferkit's annotated copies (.ferkit-annotated.json), passed by"]
    table, _ = predict(tiny_run, photos / "ann", detect=False, progress=False)  # given itself, it is searched
    assert len(table) == 2


def test_export_never_replaces_the_sidecar_of_another_model_file(tiny_run, tmp_path, capsys):
    """model.onnx and model.bin share model.json: the second export described itself beside the first model."""
    assert main(["export", str(tiny_run), "--onnx", str(tmp_path / "model.onnx")]) == 0
    sidecar = (tmp_path / "model.json").read_text()
    assert json.loads(sidecar)["model_file"] == "model.onnx"
    assert main(["export", str(tiny_run), "--onnx", str(tmp_path / "model.bin")]) == 2
    err = capsys.readouterr().err
    assert f"--onnx {tmp_path / 'model.bin'}: its sidecar {tmp_path / 'model.json'} describes model.onnx" in err
    assert (tmp_path / "model.json").read_text() == sidecar and not (tmp_path / "model.bin").exists()
    assert main(["export", str(tiny_run), "--onnx", str(tmp_path / "model.onnx")]) == 0  # its own: replaced
    (tmp_path / "model.onnx").rename(tmp_path / "gone.onnx")  # a sidecar whose model is gone describes nothing
    assert main(["export", str(tiny_run), "--onnx", str(tmp_path / "model.bin")]) == 0
    assert json.loads((tmp_path / "model.json").read_text())["model_file"] == "model.bin"
    (tmp_path / "model.bin").unlink()
    (tmp_path / "gone.onnx").rename(tmp_path / "model.onnx")
    older = {k: v for k, v in json.loads(sidecar).items() if k != "model_file"}  # written before it named its file
    (tmp_path / "model.json").write_text(json.dumps(older))
    assert main(["export", str(tiny_run), "--onnx", str(tmp_path / "model.bin")]) == 2  # model.onnx lies beside it
    assert "may describe model.onnx" in capsys.readouterr().err
    assert main(["export", str(tiny_run), "--onnx", str(tmp_path / "model.onnx")]) == 0
    assert json.loads((tmp_path / "model.json").read_text())["model_file"] == "model.onnx"
    (tmp_path / "model.json").write_text(json.dumps(older))
    (tmp_path / "model.onnx").unlink()  # no model file beside it: nothing it could describe is left
    assert main(["export", str(tiny_run), "--onnx", str(tmp_path / "model.bin")]) == 0
    assert json.loads((tmp_path / "model.json").read_text())["model_file"] == "model.bin"


def test_a_run_without_its_best_checkpoint_gets_advice_predict_and_export_can_follow(tiny_run, tiny_csv, tmp_path,
                                                                                     capsys):
    """The advice was "--checkpoint NAME", an option of evaluate that neither command has."""
    import shutil

    from PIL import Image

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "checkpoints" / "best.pt").unlink()
    Image.fromarray(load(tiny_csv).images[0]).save(tmp_path / "face.png")
    last = run / "checkpoints" / "last.pt"
    for args in (["predict", str(run), str(tmp_path / "face.png"), "--no-detect"],
                 ["predict", str(run / "checkpoints" / "best.pt"), str(tmp_path / "face.png"), "--no-detect"],
                 ["export", str(run), "--onnx", str(tmp_path / "m.onnx")]):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err
        assert f"{run / 'checkpoints' / 'best.pt'}: no checkpoint here; this run has last: give the file of one " \
               f"(such as {last}), or to `ferkit evaluate` its name (--checkpoint last)" in err
    assert main(["predict", str(last), str(tmp_path / "face.png"), "--no-detect"]) == 0  # the advice, followed
    assert main(["export", str(last), "--onnx", str(tmp_path / "m.onnx")]) == 0


def test_a_folder_without_images_is_named(tiny_run, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no photo")
    assert main(["predict", str(tiny_run), str(tmp_path / "empty"), "--no-detect"]) == 2
    assert f"{tmp_path / 'empty'}: no images in this folder (searched" in capsys.readouterr().err
    assert main(["predict", str(tiny_run), str(tmp_path / "empty"), str(tmp_path / "notes")]) == 2
    assert f"{tmp_path / 'empty'}, {tmp_path / 'notes'}: no images in these folders" in capsys.readouterr().err
