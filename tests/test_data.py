"""Tests of the FER2013 loader (`ferkit.data`) and the `ferkit data` command.

Every test makes its own small, random FER2013 data: no row of the real dataset is in the repo.
The two integration tests at the end read the shared files in ../shared/fer2013 and skip cleanly
when they are absent.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import lzma
import os
import shutil
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ferkit import cli
from ferkit.data import (EMOTIONS, FER2013_COUNTS, N_PIXELS, SPLITS, Dataset, counts_table, load, same_data,
                         summarize)
from ferkit.errors import DataFormatError, FerkitError

from conftest import FOLDERS, SHARED, Faces, export_entries, png_bytes, write_export


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Whatever a test loads without cache_dir= is cached in its own tmp folder, never ~/.cache."""
    cache = tmp_path / "env-cache"
    monkeypatch.setenv("FERKIT_CACHE", str(cache))
    return cache


# ---------------------------------------------------------------------------------------------
# Generated data


def make_faces(n: int = 12, seed: int = 0) -> Faces:
    """`n` random faces, every split present, rows ordered by split then id (the CSV's order)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 48, 48), dtype=np.uint8)
    images[0, 0, :3] = (0, 255, 7)  # the extremes and a one-digit value, whatever the seed
    labels = rng.integers(0, len(EMOTIONS), size=n)
    splits = np.sort(np.concatenate([np.arange(3), rng.integers(0, 3, size=n - 3)]))
    # ids of 1 to 4 digits, so that numeric and lexicographic order differ (9 < 10 < 100)
    ids = np.sort(rng.choice(np.arange(1, 5000), size=n, replace=False))
    return Faces(images, labels, splits, ids)


def rows_of(faces: Faces) -> list[list[str]]:
    """[emotion, Usage, pixels] as the text of each CSV field."""
    return [[str(int(label)), SPLITS[int(split)], " ".join(map(str, image.ravel().tolist()))]
            for image, label, split in zip(faces.images, faces.labels, faces.splits)]


ICML_HEADER = "emotion, Usage, pixels"  # Kaggle's icml_face_data.csv, spaces included
FER2013_HEADER = "emotion,pixels,Usage"  # the older fer2013.csv


def fer_csv(rows: list[list[str]], layout: str = "icml", quoted: bool | None = None, newline: str = "\n",
            bom: bool = False, trailing_newline: bool = True, header: str | None = None) -> bytes:
    """A FER2013 CSV of `rows` ([emotion, Usage, pixels] texts) in either layout.

    icml: `emotion, Usage, pixels` / `3,Training,255 0 ...` (pixels unquoted unless quoted=True);
    fer2013: `emotion,pixels,Usage` / `3,"70 80 ...",Training` (pixels quoted unless quoted=False).
    """
    if quoted is None:
        quoted = layout == "fer2013"
    lines = [header if header is not None else (ICML_HEADER if layout == "icml" else FER2013_HEADER)]
    for emotion, usage, pixels in rows:
        pixels = f'"{pixels}"' if quoted else pixels
        lines.append(",".join((emotion, usage, pixels) if layout == "icml" else (emotion, pixels, usage)))
    text = newline.join(lines) + (newline if trailing_newline else "")
    return (b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8")


def write_file(path: Path, raw: bytes, compression: str | None = None) -> Path:
    """Write `raw` as is, or gzip/xz/bz2-compressed, or as the single CSV inside a zip."""
    if compression == "gzip":
        raw = gzip.compress(raw)
    elif compression == "bz2":
        raw = bz2.compress(raw)
    elif compression == "xz":
        raw = lzma.compress(raw, format=lzma.FORMAT_XZ)
    elif compression == "zip":
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("icml_face_data.csv", raw)
        raw = buffer.getvalue()
    path.write_bytes(raw)
    return path


def assert_faces(dataset: Dataset, faces: Faces, lines=None) -> None:
    assert dataset.images.dtype == np.uint8 and dataset.images.shape == (len(faces), 48, 48)
    np.testing.assert_array_equal(dataset.images, faces.images)
    np.testing.assert_array_equal(dataset.labels, faces.labels)
    np.testing.assert_array_equal(dataset.splits, faces.splits)
    if lines is not None:
        np.testing.assert_array_equal(dataset.lines, lines)


def header_lines(n: int) -> np.ndarray:
    """The 1-based line of each of n rows that follow the header directly."""
    return np.arange(2, n + 2)


def cache_entries(cache: Path) -> list[Path]:
    return [p for p in cache.iterdir() if p.name != "index.json"] if cache.exists() else []


# ---------------------------------------------------------------------------------------------
# CSV layouts, compression, encodings


@pytest.mark.parametrize("layout", ["icml", "fer2013"])
@pytest.mark.parametrize("quoted", [False, True])
def test_csv_layouts_quoted_and_unquoted(tmp_path, layout, quoted):
    faces = make_faces(seed=1)
    path = write_file(tmp_path / "faces.csv", fer_csv(rows_of(faces), layout=layout, quoted=quoted))
    dataset = load(path, cache=False)
    assert_faces(dataset, faces, header_lines(len(faces)))
    assert dataset.layout == "csv" and not dataset.from_cache
    assert dataset.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_csv_rows_exactly_as_kaggle_writes_them(tmp_path):
    faces = make_faces(n=3, seed=2)
    raw = fer_csv(rows_of(faces))
    assert raw.startswith(b"emotion, Usage, pixels\n")
    assert raw.split(b"\n")[1].startswith(f"{faces.labels[0]},Training,".encode())
    raw_old = fer_csv(rows_of(faces), layout="fer2013")
    assert raw_old.startswith(b'emotion,pixels,Usage\n')
    assert raw_old.split(b"\n")[1].startswith(f'{faces.labels[0]},"'.encode())
    assert raw_old.split(b"\n")[1].endswith(b'",Training')


@pytest.mark.parametrize("layout", ["icml", "fer2013"])
@pytest.mark.parametrize("compression", ["gzip", "xz", "bz2", "zip"])
def test_csv_compressed(tmp_path, layout, compression):
    faces = make_faces(seed=3)
    suffix = {"gzip": ".csv.gz", "xz": ".csv.xz", "bz2": ".csv.bz2", "zip": ".zip"}[compression]
    path = write_file(tmp_path / f"faces{suffix}", fer_csv(rows_of(faces), layout=layout), compression)
    dataset = load(path, cache=False)
    assert_faces(dataset, faces, header_lines(len(faces)))
    assert dataset.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()  # of the file as given


def test_a_zip_made_on_a_mac_is_read_past_its_resource_forks(tmp_path):
    faces = make_faces(seed=4)
    raw = fer_csv(rows_of(faces))
    path = tmp_path / "fer.zip"
    path.write_bytes(_zip_of([("icml_face_data.csv", raw), ("__MACOSX/._icml_face_data.csv", b"\x00\x05\x16\x07"),
                              (".hidden.csv", raw)]))
    assert_faces(load(path, cache=False), faces)


@pytest.mark.parametrize("archive", ["zip", "tar"])
def test_an_archive_holding_a_compressed_csv_reads_it_as_a_folder_would(tmp_path, archive):
    """A folder counted fer.csv.gz as the data, an archive called it neither a CSV nor images."""
    faces = make_faces(seed=4)
    packed = gzip.compress(fer_csv(rows_of(faces)))
    pack = _zip_of if archive == "zip" else _tar_of
    path = tmp_path / f"fer.{archive}"
    path.write_bytes(pack([("fer/icml_face_data.csv.gz", packed)]))
    assert_faces(load(path, cache=False), faces, header_lines(len(faces)))
    path.write_bytes(pack([("fer/icml_face_data.csv.gz", packed)] + export_entries(make_faces(n=3, seed=21))))
    with pytest.raises(DataFormatError, match=f"the {archive} archive holds 3 face images and "
                                              "fer/icml_face_data.csv.gz: ferkit cannot tell which is the data"):
        load(path, cache=False)


@pytest.mark.parametrize("compression", ["none", "gzip", "xz"])
def test_a_csv_in_a_tar_is_read_as_in_a_zip(tmp_path, compression):
    """icml_face_data.csv.tar.gz: the tar was searched for images alone and called empty."""
    faces = make_faces(seed=4)
    raw = _tar_of([("fer/icml_face_data.csv", fer_csv(rows_of(faces))), ("fer/._icml_face_data.csv", b"\x00\x05")])
    path = write_file(tmp_path / "fer.tar", raw, None if compression == "none" else compression)
    dataset = load(path, cache_dir=tmp_path / "cache")
    assert_faces(dataset, faces, header_lines(len(faces)))
    assert dataset.source == load(path, cache_dir=tmp_path / "cache").source == str(path)  # fresh or cached


def test_spaces_longer_than_the_emptiness_check_reads_are_no_empty_file(tmp_path):
    faces = make_faces(n=3, seed=4)
    path = write_file(tmp_path / "faces.csv", b" " * 70_000 + fer_csv(rows_of(faces)))  # before the header
    assert_faces(load(path, cache=False), faces)


def test_compression_is_found_from_content_not_name(tmp_path):
    faces = make_faces(seed=4)
    path = write_file(tmp_path / "renamed.csv", fer_csv(rows_of(faces)), "gzip")
    assert_faces(load(path, cache=False), faces)


@pytest.mark.parametrize("layout", ["icml", "fer2013"])
@pytest.mark.parametrize("bom", [False, True])
@pytest.mark.parametrize("newline", ["\n", "\r\n"])
@pytest.mark.parametrize("trailing_newline", [True, False])
def test_csv_bom_crlf_and_trailing_newline(tmp_path, layout, bom, newline, trailing_newline):
    faces = make_faces(n=6, seed=5)
    raw = fer_csv(rows_of(faces), layout=layout, bom=bom, newline=newline, trailing_newline=trailing_newline)
    assert raw.endswith(b"\n") == trailing_newline
    dataset = load(write_file(tmp_path / "faces.csv", raw), cache=False)
    assert_faces(dataset, faces, header_lines(len(faces)))


def test_lines_are_csv_line_numbers(tmp_path):
    """Blank lines hold no face but still count: `lines` is what an editor shows."""
    faces = make_faces(n=4, seed=6)
    rows = [",".join(r) for r in rows_of(faces)]
    text = "\n".join([ICML_HEADER, rows[0], "", rows[1], rows[2], "", "", rows[3]]) + "\n"
    dataset = load(write_file(tmp_path / "faces.csv", text.encode()), cache=False)
    assert_faces(dataset, faces, [2, 4, 5, 8])
    assert dataset.origins([2]) == [5]


def test_leading_zeros_and_spaces_around_fields(tmp_path):
    faces = make_faces(n=3, seed=7)
    rows = rows_of(faces)
    rows[0][2] = " ".join(f"{v:03d}" for v in faces.images[0].ravel())  # 007 is 7
    rows[1][1] = f" {rows[1][1]} "
    dataset = load(write_file(tmp_path / "faces.csv", fer_csv(rows)), cache=False)
    assert_faces(dataset, faces)


def test_dataset_helpers(tmp_path):
    faces = make_faces(n=20, seed=8)
    dataset = load(write_file(tmp_path / "faces.csv", fer_csv(rows_of(faces))), cache=False)
    for i, split in enumerate(SPLITS):
        np.testing.assert_array_equal(dataset.indices(split), np.flatnonzero(faces.splits == i))
    np.testing.assert_array_equal(dataset.indices("val"), dataset.indices("PublicTest"))
    counts = dataset.counts()
    assert list(counts) == list(SPLITS)
    for i, split in enumerate(SPLITS):
        assert counts[split] == np.bincount(faces.labels[faces.splits == i], minlength=7).tolist()
    table = counts_table(counts)
    assert "Disgust" in table and str(len(faces.labels[faces.splits == 0])) in table.splitlines()[1]


# ---------------------------------------------------------------------------------------------
# Image-folder export


@pytest.mark.parametrize("kind", ["folder", "zip", "tar", "tar.gz", "tar.xz"])
def test_image_export_matches_csv(tmp_path, kind):
    faces = make_faces(n=16, seed=9)
    dest = tmp_path / {"folder": "images", "zip": "images.zip", "tar": "images.tar", "tar.gz": "images.tar.gz",
                       "tar.xz": "images.tar.xz"}[kind]
    write_export(dest, faces, kind)
    from_images = load(dest, cache=False)
    from_csv = load(write_file(tmp_path / "faces.csv", fer_csv(rows_of(faces))), cache=False)
    assert from_images.layout == "images"
    assert_faces(from_images, faces)
    # the same arrays as the CSV of the same faces, in the same order (split, then numeric id)
    for name in ("images", "labels", "splits"):
        np.testing.assert_array_equal(getattr(from_images, name), getattr(from_csv, name))
    assert from_images.paths == [name for name, _ in export_entries(faces)]


def test_colour_faces_in_the_image_export_are_read_as_grayscale_with_a_note(tmp_path):
    """A colour face is another dataset's, or one edited since: it was greyed without a word."""
    faces = make_faces(n=8, seed=10)
    dest = write_export(tmp_path / "images", faces, "folder")
    assert load(dest, cache=False).notes == []
    paths = sorted(dest.rglob("*.png"))
    gray = np.asarray(Image.open(paths[0]))
    Image.fromarray(np.stack([gray] * 3, axis=2)).save(paths[0])  # an RGB save of a gray face: no note
    assert load(dest, cache=False).notes == []
    tinted = np.stack([gray, gray // 2, gray // 2], axis=2)
    Image.fromarray(tinted).save(paths[1])
    Image.fromarray(tinted).save(paths[2])
    loaded = load(dest, cache=False)
    named = paths[1].relative_to(dest).as_posix()
    assert loaded.notes == [f"2 of the faces are in colour (such as {named}): read as grayscale, as FER2013's are "
                            "(Pillow's luma, 0.299 R + 0.587 G + 0.114 B)"]
    assert load(dest).notes == loaded.notes  # kept by the cache


def test_image_export_under_a_top_folder(tmp_path):
    faces = make_faces(n=8, seed=10)
    dest = write_export(tmp_path / "fer2013_images.tar.xz", faces, "tar.xz", prefix="fer2013/")
    assert_faces(load(dest, cache=False), faces)


@pytest.mark.parametrize("kind", ["tar", "tar.xz", "zip"])
def test_image_export_archived_from_inside_its_folder(tmp_path, kind):
    faces = make_faces(n=8, seed=10)  # `tar -C images -cf images.tar .` names the entries ./train/...
    dest = write_export(tmp_path / f"images.{kind}", faces, kind, prefix="./")
    loaded = load(dest, cache=False)
    assert_faces(loaded, faces)
    assert all(not path.startswith("./") for path in loaded.paths) or kind == "zip"


def test_image_export_sorts_by_numeric_id_not_name(tmp_path):
    faces = make_faces(n=5, seed=11)
    faces.splits[:] = 0
    faces.ids = np.array([9, 10, 99, 100, 1000])
    dataset = load(write_export(tmp_path / "images", faces, "folder"), cache=False)
    assert_faces(dataset, faces)
    assert [Path(p).name for p in dataset.paths] == [f"Training_{i}.png" for i in faces.ids]


def test_image_export_rejects_a_wrong_size_and_a_misplaced_file(tmp_path):
    faces = make_faces(n=4, seed=12)
    root = write_export(tmp_path / "images", faces, "folder")
    (root / "train" / "happy").mkdir(exist_ok=True)
    (root / "train" / "happy" / "Training_77.png").write_bytes(png_bytes(np.zeros((40, 48), np.uint8)))
    (root / "train" / "joy").mkdir()
    (root / "train" / "joy" / "Training_78.png").write_bytes(png_bytes(np.zeros((48, 48), np.uint8)))
    (root / "train" / "happy" / "Training_79.png").write_bytes(b"<html>not an image</html>")
    with pytest.raises(DataFormatError) as info:
        load(root, cache=False)
    message = str(info.value)
    assert str(root) in message and "3 problems" in message
    assert "train/happy/Training_79.png: not an image file (its bytes are no JPEG, PNG or BMP)" in message
    assert "train/happy/Training_77.png: image is 48x40, expected 48x48" in message
    assert "train/joy/Training_78.png: expected <train|test>/<emotion>/" in message


def test_image_export_refuses_a_decompression_bomb_and_a_mode_pillow_cannot_convert(tmp_path, monkeypatch):
    """Both escaped as tracebacks: Pillow's bomb guard fires in Image.open, and a CIELab TIFF fails in convert."""
    faces = make_faces(n=4, seed=12)
    root = write_export(tmp_path / "images", faces, "folder")
    (root / "train" / "happy").mkdir(exist_ok=True)
    (root / "train" / "happy" / "Training_77.png").write_bytes(png_bytes(np.zeros((300, 300), np.uint8)))
    lab = io.BytesIO()
    Image.new("LAB", (48, 48)).save(lab, "TIFF")
    (root / "train" / "happy" / "Training_78.tif").write_bytes(lab.getvalue())
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20_000)  # 300x300 is over twice this: a bomb
    message = _export_problem(root)
    assert "2 problems" in message
    assert "train/happy/Training_77.png: not a 48x48 face (Image size (90000 pixels) exceeds limit" in message
    assert "train/happy/Training_78.tif: not a readable image (conversion from LAB to" in message


def test_an_export_folder_with_names_that_are_not_utf8_loads_and_is_cached(tmp_path):
    """A note unzipped from a Windows archive (Latin-1 name) beside the faces: hashing the names crashed."""
    faces = make_faces(n=4, seed=12)
    root = write_export(tmp_path / "images", faces, "folder")
    try:
        (root / os.fsdecode(b"lisez-moi-\xe9t\xe9.txt")).write_text("les visages")
    except (OSError, UnicodeError):
        pytest.skip("this file system takes only UTF-8 names")
    first = load(root, cache_dir=tmp_path / "cache")
    again = load(root, cache_dir=tmp_path / "cache")
    assert_faces(first, faces)
    assert again.from_cache and again.sha256 == first.sha256


def _export_problem(root: Path) -> str:
    with pytest.raises(DataFormatError) as info:
        load(root, cache=False)
    return str(info.value)


def test_image_export_refuses_copies_and_faces_in_the_wrong_split_folder(tmp_path):
    faces = make_faces(n=6, seed=13)
    root = write_export(tmp_path / "images", faces, "folder")
    first = root / export_entries(faces)[0][0]  # a PublicTest face? no: the first row is Training
    other = FOLDERS[(faces.labels[0] + 1) % 7]
    (root / "train" / other).mkdir(exist_ok=True)
    (root / "train" / other / first.name).write_bytes(first.read_bytes())  # the same file in two emotions
    assert f"train/{other}/{first.name}: a second copy of train/{FOLDERS[faces.labels[0]]}/{first.name}; keep one" \
        in _export_problem(root)
    (root / "train" / other / first.name).unlink()
    Image.fromarray(faces.images[0]).save(first.with_suffix(".bmp"))  # the same face, another format
    assert f"{first.with_suffix('.png').relative_to(root)}: a second copy of" in _export_problem(root)
    first.with_suffix(".bmp").unlink()
    (root / "test" / FOLDERS[faces.labels[0]]).mkdir(parents=True, exist_ok=True)
    first.rename(root / "test" / FOLDERS[faces.labels[0]] / first.name)
    assert "a Training face in the test/ folder" in _export_problem(root)


def test_image_export_keeps_one_id_on_different_faces_of_different_emotions(tmp_path):
    faces = make_faces(n=4, seed=14)  # FER2013's own export does this twice in Training
    faces.splits[:] = 0
    faces.ids[1] = faces.ids[0]
    faces.labels[1] = (faces.labels[0] + 1) % 7
    order = np.lexsort((faces.labels, faces.ids))  # the loader's order: split, id, label
    faces = Faces(faces.images[order], faces.labels[order], faces.splits[order], faces.ids[order])
    assert_faces(load(write_export(tmp_path / "images", faces, "folder"), cache=False), faces)


def test_image_export_refuses_a_png_whose_chunk_is_broken(tmp_path):
    """A wrong IDAT length: Pillow says so with a SyntaxError when it decodes the pixels, which escaped as a
    traceback."""
    faces = make_faces(n=4, seed=14)
    root = write_export(tmp_path / "images", faces, "folder")
    face = root / export_entries(faces)[1][0]
    raw = bytearray(face.read_bytes())
    idat = raw.find(b"IDAT")
    raw[idat - 4:idat] = (int.from_bytes(raw[idat - 4:idat], "big") - 100).to_bytes(4, "big")
    face.write_bytes(bytes(raw))
    assert f"{face.relative_to(root)}: not a readable image (broken PNG file" in _export_problem(root)

def test_image_export_reads_any_image_named_as_a_face_and_refuses_wide_pixels(tmp_path):
    faces = make_faces(n=4, seed=15)
    root = write_export(tmp_path / "images", faces, "folder")
    first = root / export_entries(faces)[0][0]
    first.unlink()
    Image.fromarray(faces.images[0]).save(first.with_suffix(".tif"))  # was skipped without a word
    assert_faces(load(root, cache=False), faces)
    first.with_suffix(".tif").unlink()
    Image.fromarray(faces.images[0].astype(np.uint16) * 257).save(first)  # 16-bit: convert("L") clips
    assert f"{first.relative_to(root)}: 16-bit pixels (Pillow mode I;16)" in _export_problem(root)


def test_image_folder_follows_linked_folders_and_names_broken_links(tmp_path):
    faces = make_faces(n=6, seed=16)
    elsewhere = write_export(tmp_path / "elsewhere", faces, "folder")
    root = tmp_path / "images"
    root.mkdir()
    (root / "train").symlink_to(elsewhere / "train")  # a linked folder: rglob skipped it
    (root / "test").symlink_to(elsewhere / "test")
    (root / "test" / "loop").symlink_to(root)  # a link back up is not followed
    assert_faces(load(root, cache=False), faces)
    (root / "train" / "itself").symlink_to("itself")  # no face name: nothing to read
    assert_faces(load(root), faces)  # and now cached
    broken = root / "train" / FOLDERS[0] / "Training_4999999.png"
    broken.parent.mkdir(exist_ok=True)
    broken.symlink_to(tmp_path / "gone.png")
    with pytest.raises(FerkitError, match="Training_4999999.png: a link to nothing"):
        load(root)  # the cache must not hide it
    broken.unlink()
    os.mkfifo(broken)  # reading it would wait forever
    with pytest.raises(FerkitError, match="Training_4999999.png: not a regular file"):
        load(root)


def test_a_linked_image_in_a_tar_is_read(tmp_path):
    faces = make_faces(n=4, seed=17)
    faces.splits[:] = 0
    dest = write_export(tmp_path / "images.tar", faces, "tar")
    name, _ = export_entries(faces)[0]
    with tarfile.open(dest, "a") as archive:  # a hard link under another face's name
        info = tarfile.TarInfo(name.rsplit("_", 1)[0] + "_99999.png")
        info.type, info.linkname = tarfile.LNKTYPE, name
        archive.addfile(info)
    loaded = load(dest, cache=False)
    assert len(loaded) == 5 and loaded.paths[-1].endswith("_99999.png")
    np.testing.assert_array_equal(loaded.images[-1], faces.images[0])


def test_a_face_named_tar_member_that_is_no_file_is_refused(tmp_path):
    faces = make_faces(n=4, seed=17)
    dest = write_export(tmp_path / "images.tar", faces, "tar")
    with tarfile.open(dest, "a") as archive:
        info = tarfile.TarInfo("train/angry/Training_77778.png")
        info.type, info.linkname = tarfile.SYMTYPE, "../angry"  # a link to a folder
        archive.addfile(info)
    with pytest.raises(DataFormatError, match="Training_77778.png is no file in the archive \\(it links to "):
        load(dest, cache=False)


def test_an_old_tar_without_the_ustar_mark_is_read(tmp_path):
    faces = make_faces(n=4, seed=18)
    raw = bytearray(write_export(tmp_path / "images.tar", faces, "tar").read_bytes())
    raw[257:265] = bytes(8)  # `tar --format=v7` writes no magic and no version
    raw[148:156] = b" " * 8
    raw[148:156] = f"{sum(raw[:512]):06o}\0 ".encode()
    path = tmp_path / "old.tar"
    path.write_bytes(bytes(raw))
    assert_faces(load(path, cache=False), faces)


def test_a_tar_cut_between_two_members_is_called_truncated(tmp_path):
    faces = make_faces(n=6, seed=18)
    whole = write_export(tmp_path / "images.tar", faces, "tar").read_bytes()
    with tarfile.open(fileobj=io.BytesIO(whole)) as archive:
        members = archive.getmembers()
        cut = members[3].offset  # where the fourth member's header starts: tarfile sees an end there
    path = tmp_path / "cut.tar"
    path.write_bytes(whole[:cut])
    with pytest.raises(DataFormatError, match="the tar archive is truncated: it ends without the end-of-archive marker"):
        load(path, cache=False)


@pytest.mark.parametrize("flaw", ["encrypted", "deflate64"])
def test_an_unreadable_zip_member_is_a_data_error(tmp_path, flaw):
    raw = bytearray(_zip_of([("icml_face_data.csv", fer_csv(rows_of(make_faces(n=3, seed=19))))]))
    central = raw.rfind(b"PK\x01\x02")
    if flaw == "encrypted":  # bit 0 of the flags, in the local and the central header
        raw[6] |= 1
        raw[central + 8] |= 1
    else:  # compression method 9, which zipfile cannot read
        raw[8:10] = raw[central + 10:central + 12] = (9).to_bytes(2, "little")
    path = tmp_path / "data.zip"
    path.write_bytes(bytes(raw))
    with pytest.raises(DataFormatError, match="cannot read the zip archive .*extract it with an unzip tool"):
        load(path, cache=False)


@pytest.mark.parametrize("flaw", ["bz2", "lzma", "offset"])
@pytest.mark.parametrize("what", ["csv", "images"])
def test_a_damaged_zip_member_is_a_data_error(tmp_path, flaw, what):
    """Each escaped as a traceback: zipfile's bz2 reader says OSError, its lzma reader LZMAError, and a
    member's offset damaged below the archive's start ValueError (negative seek)."""
    faces = make_faces(n=3, seed=19)
    members = [("icml_face_data.csv", fer_csv(rows_of(faces)))] if what == "csv" else export_entries(faces)
    buffer = io.BytesIO()
    method = {"bz2": zipfile.ZIP_BZIP2, "lzma": zipfile.ZIP_LZMA, "offset": zipfile.ZIP_DEFLATED}[flaw]
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, content in members:
            archive.writestr(name, content)
    raw = bytearray(buffer.getvalue())
    if flaw == "offset":  # the end record places the central directory 1000 bytes later than it lies
        end = raw.rfind(b"PK\x05\x06")
        raw[end + 16:end + 20] = (int.from_bytes(raw[end + 16:end + 20], "little") + 1000).to_bytes(4, "little")
    else:  # garbage in the first member's compressed bytes: bz2's 'BZh9'; lzma's stream, past its 9-byte header
        start = 30 + len(members[0][0]) + (9 if flaw == "lzma" else 0)
        raw[start:start + 8] = b"garbage!"
    path = tmp_path / "data.zip"
    path.write_bytes(bytes(raw))
    with pytest.raises(DataFormatError, match="the zip archive is corrupt \\(.+\\); download it again"):
        load(path, cache=False)


def test_no_output_goes_inside_an_image_folder_dataset(tmp_path, capsys):
    """Its figures would be read as faces by the next load, which would then refuse the folder."""
    root = write_export(tmp_path / "images", make_faces(n=6, seed=19), "folder")
    for argv in (["data", str(root), "--out", str(root)], ["data", str(root), "--out", str(root / "summary")],
                 ["train", str(root), "--out", str(root / "run")], ["run", str(root), "--out", str(root / "study")]):
        assert cli.main(argv) == 2
        assert f"--out {argv[3]}: is inside the image folder {root}" in capsys.readouterr().err
    run = tmp_path / "run"
    assert cli.main(["train", str(root), "--out", str(run), "--set", "epochs=1", "--set", "widths=4,8"]) == 0
    assert cli.main(["evaluate", str(run), "--out", str(root / "eval")]) == 2
    assert "is inside the image folder" in capsys.readouterr().err
    link = tmp_path / "link"
    link.symlink_to(root)  # the same folder by another name
    for argv in (["data", str(link), "--out", str(root / "o")], ["data", str(root), "--out", str(link / "o")]):
        assert cli.main(argv) == 2
        assert "is inside the image folder" in capsys.readouterr().err
    assert sorted(p.name for p in root.iterdir()) == ["test", "train"]
    assert len(load(root, cache=False)) == 6


def test_a_cache_that_cannot_be_written_is_said_once_the_data_is_loaded(tmp_path):
    """FERKIT_CACHE naming a file disabled the cache without a word."""
    faces = make_faces(n=4, seed=19)
    path = write_file(tmp_path / "faces.csv", fer_csv(rows_of(faces)))
    (tmp_path / "notes.txt").write_text("not a folder")
    dataset = load(path, cache_dir=tmp_path / "notes.txt")
    assert_faces(dataset, faces, header_lines(len(faces)))
    assert f"the cache {tmp_path / 'notes.txt'} cannot be written (it is a file), so the file is parsed again at " \
           "every load; set FERKIT_CACHE to a folder you can write in" in dataset.notes
    assert not any("cache" in note for note in load(path, cache_dir=tmp_path / "cache").notes)


def test_a_pipe_or_a_folder_of_data_files_is_refused_with_advice(tmp_path):
    fifo = tmp_path / "data.csv"
    os.mkfifo(fifo)  # reading it would wait for a writer forever
    with pytest.raises(FerkitError, match="not a regular file"):
        load(fifo)
    folder = tmp_path / "downloads"
    folder.mkdir()
    write_file(folder / "icml_face_data.csv", fer_csv(rows_of(make_faces(n=3, seed=19))))
    with pytest.raises(FerkitError, match="holds no face images but icml_face_data.csv: give that file instead"):
        load(folder)


def test_an_export_folder_with_a_csv_beside_the_faces_is_refused_as_an_archive_is(tmp_path):
    """The faces were read and the CSV ignored, where a zip or tar of the same files is refused."""
    faces = make_faces(n=4, seed=19)
    root = write_export(tmp_path / "images", faces, "folder")
    shutil.copy(write_export(tmp_path / "images.tar.xz", faces, "tar.xz"), root / "images.tar.xz")
    assert_faces(load(root, cache=False), faces)  # an archive of the same faces is no other data
    write_file(root / "icml_face_data.csv.gz", fer_csv(rows_of(faces)), "gzip")
    with pytest.raises(FerkitError, match="holds 4 face images and icml_face_data.csv.gz: ferkit cannot tell which "
                                          "is the data; give the CSV itself"):
        load(root, cache=False)


# ---------------------------------------------------------------------------------------------
# Bad input: every case through load() and through the `ferkit data` command


def _row_text(rows, i) -> str:
    return ",".join(rows[i])


def _pixel_column(rows, i, k) -> int:
    """1-based column where pixel k of row i starts, in the icml layout."""
    emotion, usage, pixels = rows[i]
    before = pixels.split(" ")[:k]
    return len(f"{emotion},{usage},") + len(" ".join(before)) + (1 if k else 0) + 1


def _with_pixel(rows, i, k, value) -> list[list[str]]:
    rows = [list(r) for r in rows]
    tokens = rows[i][2].split(" ")
    tokens[k] = value
    rows[i][2] = " ".join(tokens)
    return rows


def _bad_pixel_case(value, what):
    def make(tmp_path):
        rows = rows_of(make_faces(n=4, seed=20))
        rows = _with_pixel(rows, 1, 100, value)
        return (write_file(tmp_path / "bad.csv", fer_csv(rows)),
                3, f"line 3, column {_pixel_column(rows, 1, 100)}: pixel value {what} (pixel 101 of 2304)")
    return make


def _rows_case(edit, line, *fragments, layout="icml", name="bad.csv"):
    def make(tmp_path):
        rows = rows_of(make_faces(n=4, seed=21))
        raw = edit(rows) if edit else fer_csv(rows, layout=layout)
        if isinstance(raw, list):
            raw = fer_csv(raw, layout=layout)
        return (write_file(tmp_path / name, raw), line, *fragments)
    return make


def _set(i, field, value):
    def edit(rows):
        rows = [list(r) for r in rows]
        rows[i][field] = value
        return rows
    return edit


def _too_few(rows):
    rows = [list(r) for r in rows]
    rows[1][2] = rows[1][2].rsplit(" ", 1)[0]
    return rows


def _too_many(rows):
    rows = [list(r) for r in rows]
    rows[1][2] += " 17"
    return rows


def _truncated(rows):
    raw = fer_csv(rows)
    return raw[: len(raw) - 3000]  # cut inside the last row's pixels


def _truncated_stream(compression):
    def make(tmp_path):
        raw = fer_csv(rows_of(make_faces(n=30, seed=22)))
        path = write_file(tmp_path / f"bad.csv.{compression}", raw, {"gz": "gzip", "xz": "xz"}[compression])
        whole = path.read_bytes()
        path.write_bytes(whole[: len(whole) // 2])
        return path, None, f"the {'gzip' if compression == 'gz' else 'xz'} stream ends too early", "truncated"
    return make


def _tab_case(tmp_path):
    rows = rows_of(make_faces(n=4, seed=20))
    column = _pixel_column(rows, 1, 100) - 1  # the space before pixel 101
    tokens = rows[1][2].split(" ")
    rows[1][2] = " ".join(tokens[:100]) + "\t" + " ".join(tokens[100:])
    return (write_file(tmp_path / "bad.csv", fer_csv(rows)), 3,
            f"line 3, column {column}: after pixel 100 of 2304, a tab: separate the pixel values with single spaces")


def _zip_of(members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in members:
            archive.writestr(name, content)
    return buffer.getvalue()


def _tar_of(members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, content in members:
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def _garbage(tmp_path):
    raw = np.random.default_rng(23).bytes(5000)
    assert raw[:2] != b"\x1f\x8b" and raw[:4] != b"PK\x03\x04"  # not a compressed file by chance
    bad = next(i for i, b in enumerate(raw) if b < 9 or 13 < b < 32 or b == 127)  # the first control byte
    return (write_file(tmp_path / "garbage.csv", raw), 1,
            f"line 1, column {bad + 1}: byte 0x{raw[bad]:02x} is binary data: this is not a text CSV")


BAD_INPUTS = {
    "too_few_pixels": _rows_case(_too_few, 3, "line 3: has 2303 pixel values, expected 2304 (48x48)"),
    "too_many_pixels": _rows_case(_too_many, 3, "line 3: has 2305 pixel values, expected 2304"),
    "pixel_256": _bad_pixel_case("256", "256 is outside 0-255"),
    "pixel_minus_1": _bad_pixel_case("-1", "'-1' is not an integer 0-255"),
    "pixel_12.5": _bad_pixel_case("12.5", "'12.5' is not an integer 0-255"),
    "pixel_abc": _bad_pixel_case("abc", "'abc' is not an integer 0-255"),
    "label_7": _rows_case(_set(2, 0, "7"), 4, "line 4, column 1: emotion 7 is outside 0-6"),
    "label_x": _rows_case(_set(2, 0, "x"), 4, "line 4, column 1: emotion 'x' is not an integer 0-6"),
    "label_x_fer2013": _rows_case(_set(2, 0, "x"), 4, "line 4, column 1: emotion 'x' is not an integer",
                                  layout="fer2013"),
    "usage_Train": _rows_case(_set(0, 1, "Train"), 2,
                              "line 2, column 3: unknown Usage 'Train': expected Training, PublicTest or PrivateTest"),
    "missing_header": _rows_case(lambda rows: "\n".join(map(",".join, rows)).encode() + b"\n", 1,
                                 "line 1: missing header", "expected the columns emotion, Usage and pixels"),
    "unknown_header": _rows_case(lambda rows: fer_csv(rows, header="label,split,image"), 1,
                                 "line 1: unknown header 'label,split,image'", "'emotion, Usage, pixels'"),
    "semicolon_header": _rows_case(lambda rows: fer_csv(rows, header="emotion;Usage;pixels").replace(b",", b";"), 1,
                                   "line 1: header 'emotion;Usage;pixels': its columns are separated by semicolons "
                                   "(as Excel", "save the file comma-separated"),
    "tab_header": _rows_case(lambda rows: fer_csv([], header="emotion\tUsage\tpixels"), 1,
                             "line 1: header 'emotion\\tUsage\\tpixels': its columns are separated by tabs"),
    "empty_file": _rows_case(lambda rows: b"", None, "the file is empty", "emotion, Usage, pixels"),
    "header_only": _rows_case(lambda rows: fer_csv([]), None, "has a header but no rows"),
    "truncated_row": _rows_case(_truncated, 5, "line 5: has ", "expected 2304", "looks truncated"),
    "truncated_in_the_fields": _rows_case(lambda rows: fer_csv(rows)[:fer_csv(rows).rfind(b"\n", 0, -1) + 4], 5,
                                          "line 5: has 2 fields, expected 3 (emotion, Usage, pixels); the file ends "
                                          "in the middle of this row: it looks truncated"),
    "truncated_gz": _truncated_stream("gz"),
    "truncated_xz": _truncated_stream("xz"),
    "binary_garbage": _garbage,
    "four_fields": _rows_case(_set(1, 2, "1 2,3"), 3, "line 3: has 4 fields, expected 3 (emotion, Usage, pixels)"),
    "pixel_5000_digits": _bad_pixel_case("9" * 5000, "999999999999... (5,000 characters) is outside 0-255"),
    "pixel_0300": _bad_pixel_case("0300", "0300 is outside 0-255"),
    "pixel_tab": _tab_case,
    "label_03": _rows_case(_set(2, 0, "03"), 4, "line 4, column 1: emotion '03' has a leading zero: write 3"),
    "label_5000_digits": _rows_case(_set(2, 0, "9" * 5000), 4, "line 4, column 1: emotion 9999999999", "(5,000 "
                                    "characters) is outside 0-6"),
    "utf16": _rows_case(lambda rows: fer_csv(rows).decode().encode("utf-16"), None, "the file is UTF-16 text: save "
                        "it as UTF-8"),
    "latin1": _rows_case(lambda rows: fer_csv(rows).replace(b"Training", b"Tr\xe4ining", 1), 2,
                         f"line 2, column {len(rows_of(make_faces(n=4, seed=21))[0][0]) + 4}: byte 0xe4 is not "
                         "UTF-8 text", "save it as UTF-8"),
    "cr_line_ends": _rows_case(lambda rows: fer_csv(rows, newline="\r"), 1, "line 1: the lines end in a carriage "
                               "return alone", "save the file with LF or CRLF line ends"),
    "empty_zip": _rows_case(lambda rows: _zip_of([]), None, "the zip archive is empty", name="bad.zip"),
    "zip_two_csvs": _rows_case(lambda rows: _zip_of([("a.csv", fer_csv(rows)), ("b.csv", fer_csv(rows))]), None,
                               "the zip archive holds a.csv and b.csv: ferkit cannot tell which is the data",
                               name="bad.zip"),
    "pixels_opened_quote": _rows_case(_set(1, 2, '"' + rows_of(make_faces(n=4, seed=21))[1][2]), 3,
                                      f"line 3, column {_pixel_column(rows_of(make_faces(n=4, seed=21)), 1, 0)}: "
                                      "before pixel 1, a quote (\"): quote the whole pixels field, at both ends, or "
                                      "not at all"),  # not read as quoted: its last digit would be lost
    "utf16_without_bom": _rows_case(lambda rows: fer_csv(rows).decode().encode("utf-16-le"), None,
                                    "the file is UTF-16 text: save it as UTF-8"),
    "del_byte": _rows_case(_set(0, 1, "Train\x7fing"), 2, "byte 0x7f is binary data"),
    "zip_csv_and_images": _rows_case(lambda rows: _zip_of([("fer.csv", fer_csv(rows))]
                                                          + export_entries(make_faces(n=3, seed=21))), None,
                                     "the zip archive holds 3 face images and fer.csv", name="bad.zip"),
    # a tar was read for its images alone: its CSV went unseen
    "tar_csv_and_images": _rows_case(lambda rows: _tar_of([("fer/fer.csv", fer_csv(rows))]
                                                          + export_entries(make_faces(n=3, seed=21))), None,
                                     "the tar archive holds 3 face images and fer/fer.csv", name="bad.tar"),
    "tar_two_csvs": _rows_case(lambda rows: _tar_of([("a.csv", fer_csv(rows)), ("b.csv", fer_csv(rows))]), None,
                               "the tar archive holds a.csv and b.csv: ferkit cannot tell which is the data",
                               name="bad.tar"),
    "an_image_given_as_data": _rows_case(lambda rows: png_bytes(np.zeros((48, 48), np.uint8)), None,
                                         "this is a PNG image, not a FER2013 CSV: give the CSV, or the image-folder "
                                         "export", name="face.png"),  # was "line 2: binary data"
    # two downloads joined, each with its header: was "emotion 'emotion' is not an integer 0-6"
    "header_repeated": _rows_case(lambda rows: b"\n".join((lines := fer_csv(rows).split(b"\n"))[:3] + lines[:1]
                                                       + lines[3:]), 4, "line 4, column 1: the header line again, "
                                  "inside the data (two files joined?): keep only the first header line"),
    "tar_of_neither": _rows_case(lambda rows: _tar_of([("README.txt", b"faces")]), None,
                                 "the tar archive holds neither one FER2013 CSV nor the image folders train/ and "
                                 "test/ (it holds 1 files)", name="bad.tar"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_raises_data_format_error(tmp_path, case):
    path, line, *fragments = BAD_INPUTS[case](tmp_path)
    cache = tmp_path / "cache"
    with pytest.raises(DataFormatError) as info:
        load(path, cache_dir=cache)
    error = info.value
    message = str(error)
    assert message.startswith(f"{path}: cannot load this file as FER2013 (1 problem)"), message
    for fragment in fragments:
        assert fragment in message, message
    assert error.problems and error.problems[0].line == line
    assert cache_entries(cache) == []  # a failed load caches nothing


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_cli_prints_one_message(tmp_path, capsys, case):
    path, _line, *fragments = BAD_INPUTS[case](tmp_path)
    out = tmp_path / "out"
    code = cli.main(["data", str(path), "--out", str(out)])
    captured = capsys.readouterr()
    assert code != 0
    err = captured.err
    assert "Traceback" not in err
    assert err.startswith(f"ferkit data: error: {path}: cannot load this file as FER2013"), err
    assert err.count("error:") == 1
    for fragment in fragments:
        assert fragment in err, err
    assert not (out / "summary.json").exists()


def test_cli_missing_file(tmp_path, capsys):
    code = cli.main(["data", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err and "no such file" in err
    assert not (tmp_path / "out" / "summary.json").exists()


def test_several_problems_are_listed_and_counted(tmp_path):
    rows = rows_of(make_faces(n=12, seed=24))
    for i in range(8):
        rows[i][0] = "9"
    path = write_file(tmp_path / "bad.csv", fer_csv(rows))
    with pytest.raises(DataFormatError) as info:
        load(path, cache=False)
    error = info.value
    assert error.total == 8
    lines = str(error).splitlines()
    shown = DataFormatError.shown
    assert lines[0] == f"{path}: cannot load this file as FER2013 (8 problems)"
    assert lines[1:1 + shown] == [f"  line {i + 2}, column 1: {error.problems[i].message}" for i in range(shown)]
    assert lines[1 + shown] == f"  ... and {8 - shown} more"
    assert len(lines) == shown + 2


def test_problems_are_reported_in_line_order(tmp_path):
    rows = rows_of(make_faces(n=6, seed=25))
    rows = _with_pixel(rows, 1, 5, "300")  # found by the pixel pass, after the row pass found line 6
    rows[4][0] = "8"
    with pytest.raises(DataFormatError) as info:
        load(write_file(tmp_path / "bad.csv", fer_csv(rows)), cache=False)
    assert [p.line for p in info.value.problems] == [3, 6]


def test_the_kept_problems_are_the_first_in_the_file_when_a_later_pass_finds_one_earlier_in_a_line(tmp_path):
    """Of 51 problems, the 50 kept are the first by line and column, though the pixel pass finds the
    out-of-range value at the start of the 50th line after the bad character at its end."""
    rows = rows_of(make_faces(n=50, seed=26))
    for i in range(50):
        rows = _with_pixel(rows, i, 2000, "x")
    rows = _with_pixel(rows, 49, 0, "300")
    with pytest.raises(DataFormatError) as info:
        load(write_file(tmp_path / "bad.csv", fer_csv(rows)), cache=False)
    error = info.value
    assert error.total == 51 and len(error.problems) == 50
    assert [p.line for p in error.problems] == list(range(2, 52))
    assert error.problems[-1].message.startswith("pixel value 300 is outside 0-255 (pixel 1 of 2304)")


def test_same_data_needs_a_checksum_that_both_records_hold():
    record = {"data_sha256": "file", "data_faces_sha256": "faces"}
    assert same_data(record, {"data_sha256": "copy", "data_faces_sha256": "faces"})  # a re-saved copy
    assert same_data(record, {"data_sha256": "file"})  # recorded before the faces' checksum was
    assert not same_data({"data_sha256": "file"}, {"data_sha256": "other"})  # two unknowns are not a match
    assert not same_data({"data_sha256": None}, {"data_sha256": None})


def test_columns_count_characters_as_an_editor_does(tmp_path):
    rows = rows_of(make_faces(n=4, seed=31))
    rows[0][0], rows[0][1] = "é", "Trainingx"  # two bytes, one character, before the Usage field
    with pytest.raises(DataFormatError) as info:
        load(write_file(tmp_path / "bad.csv", fer_csv(rows)), cache=False)
    assert [(p.line, p.column) for p in info.value.problems] == [(2, 1), (2, 3)]


def test_problems_beyond_those_kept_are_still_counted(tmp_path):
    from ferkit import data as fdata

    rows = rows_of(make_faces(n=60, seed=26))
    for row in rows:
        row[0] = "9"
    with pytest.raises(DataFormatError) as info:
        load(write_file(tmp_path / "bad.csv", fer_csv(rows)), cache=False)
    error = info.value
    assert (error.total, len(error.problems)) == (60, fdata._MAX_PROBLEMS_KEPT)
    lines = str(error).splitlines()
    assert lines[0].endswith("(60 problems)") and lines[-1] == f"  ... and {60 - DataFormatError.shown} more"


def test_the_problems_kept_are_the_first_in_the_file_whichever_pass_found_them(tmp_path):
    from ferkit import data as fdata

    rows = rows_of(make_faces(n=70, seed=28))
    rows = _with_pixel(rows, 1, 5, "300")  # line 3, found by the pixel pass, after 60 from the row pass
    for row in rows[10:]:
        row[1] = "Train"
    with pytest.raises(DataFormatError) as info:
        load(write_file(tmp_path / "bad.csv", fer_csv(rows)), cache=False)
    lines = [p.line for p in info.value.problems]
    assert info.value.total == 61 and lines == [3] + list(range(12, 12 + fdata._MAX_PROBLEMS_KEPT - 1))


def test_pixels_padded_to_four_digits_load_as_their_values(tmp_path):
    faces = make_faces(n=4, seed=30)
    rows = rows_of(faces)
    for row in rows:
        row[2] = " ".join(f"{int(v):04d}" for v in row[2].split())
    assert_faces(load(write_file(tmp_path / "padded.csv", fer_csv(rows)), cache=False), faces)


def test_binary_with_many_zero_bytes_is_not_called_utf16(tmp_path):
    path = tmp_path / "labels.csv"
    np.save(path.with_suffix(".npy"), np.arange(600))  # int64: a zero in every other byte, and more
    path.write_bytes(path.with_suffix(".npy").read_bytes())
    with pytest.raises(DataFormatError, match="is binary data: this is not a text CSV"):
        load(path, cache=False)


@pytest.mark.parametrize("flaw", ["tabs", "16-bit values"])
def test_a_row_full_of_bad_pixels_is_one_problem(tmp_path, flaw):
    rows = rows_of(make_faces(n=5, seed=29))
    for row in rows:
        row[2] = row[2].replace(" ", "\t") if flaw == "tabs" else " ".join(str(int(v) * 257 + 256)
                                                                            for v in row[2].split())
    with pytest.raises(DataFormatError) as info:
        load(write_file(tmp_path / "bad.csv", fer_csv(rows)), cache=False)
    assert info.value.total == 5 and [p.line for p in info.value.problems] == [2, 3, 4, 5, 6]
    assert ("after pixel 1 of 2304, a tab" if flaw == "tabs" else "is outside 0-255 (pixel 1 of 2304)") \
        in info.value.problems[0].message


@pytest.mark.parametrize("trailing_newline", [True, False])
def test_a_short_last_row_is_called_truncated_only_when_the_file_ends_inside_it(tmp_path, trailing_newline):
    rows = rows_of(make_faces(n=4, seed=27))
    rows[-1][2] = rows[-1][2].rsplit(" ", 1)[0]
    path = write_file(tmp_path / "bad.csv", fer_csv(rows, trailing_newline=trailing_newline))
    with pytest.raises(DataFormatError, match="line 5: has 2303 pixel values") as info:
        load(path, cache=False)
    assert ("looks truncated" in str(info.value)) is not trailing_newline


# ---------------------------------------------------------------------------------------------
# Cache


def test_second_load_comes_from_cache(tmp_path):
    faces = make_faces(seed=30)
    path = write_file(tmp_path / "faces.csv", fer_csv(rows_of(faces)))
    cache = tmp_path / "cache"
    first = load(path, cache_dir=cache)
    second = load(path, cache_dir=cache)
    assert not first.from_cache and second.from_cache
    assert_faces(second, faces, first.lines)
    assert second.sha256 == first.sha256 and second.source == str(path)
    # a copy elsewhere has the same content: found by checksum
    copy = write_file(tmp_path / "copy.csv", path.read_bytes())
    assert load(copy, cache_dir=cache).from_cache


def test_cache_follows_the_environment_variable(tmp_path, _private_cache):
    path = write_file(tmp_path / "faces.csv", fer_csv(rows_of(make_faces(seed=31))))
    assert not load(path).from_cache
    assert len(cache_entries(_private_cache)) == 1
    assert load(path).from_cache


def test_cache_false_writes_nothing(tmp_path, _private_cache):
    path = write_file(tmp_path / "faces.csv", fer_csv(rows_of(make_faces(seed=32))))
    load(path, cache=False)
    assert not _private_cache.exists()


@pytest.mark.parametrize("same_size, mtime_reset", [(False, False), (True, False), (True, True)])
def test_changed_file_is_parsed_again(tmp_path, same_size, mtime_reset):
    faces = make_faces(seed=33)
    path = write_file(tmp_path / "faces.csv", fer_csv(rows_of(faces)))
    before = path.stat()
    cache = tmp_path / "cache"
    load(path, cache_dir=cache)
    if same_size:  # one label changes: same size, new content
        faces.labels[3] = (faces.labels[3] + 1) % 7
    else:
        faces = make_faces(seed=34)
    with open(path, "r+b") as f:  # in place: the same inode
        f.write(fer_csv(rows_of(faces)))
    if mtime_reset:  # as `touch -d` or a copy tool that keeps times would leave it
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    reloaded = load(path, cache_dir=cache)
    assert not reloaded.from_cache
    assert_faces(reloaded, faces)
    assert load(path, cache_dir=cache).from_cache


def test_a_face_changed_in_place_with_its_time_kept_is_parsed_again(tmp_path):
    """As for a file: the change time, which no program can set back, tells the edit."""
    faces = make_faces(n=6, seed=35)
    root = write_export(tmp_path / "images", faces, "folder")
    face = root / export_entries(faces)[2][0]

    def save_bmp(image: np.ndarray) -> None:  # a BMP's size is the same for every 48x48 face
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="BMP")
        face.write_bytes(buffer.getvalue())  # in place: the same inode

    save_bmp(faces.images[2])
    cache = tmp_path / "cache"
    load(root, cache_dir=cache)
    before = face.stat()
    faces.images[2] = 255 - faces.images[2]
    save_bmp(faces.images[2])
    os.utime(face, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert face.stat().st_size == before.st_size
    reloaded = load(root, cache_dir=cache)
    assert not reloaded.from_cache
    assert_faces(reloaded, faces)


def test_changed_image_folder_is_parsed_again(tmp_path):
    faces = make_faces(n=6, seed=35)
    root = write_export(tmp_path / "images", faces, "folder")
    cache = tmp_path / "cache"
    load(root, cache_dir=cache)
    cached = load(root, cache_dir=cache)
    assert cached.from_cache and cached.paths == [n for n, _ in export_entries(faces)]
    assert_faces(cached, faces)
    faces.images[2] = 255 - faces.images[2]
    write_export(root, faces, "folder")
    reloaded = load(root, cache_dir=cache)
    assert not reloaded.from_cache
    assert_faces(reloaded, faces)


def test_failed_load_leaves_no_cache_entry_and_the_fix_loads(tmp_path):
    rows = rows_of(make_faces(seed=36))
    path = write_file(tmp_path / "faces.csv", fer_csv(_with_pixel(rows, 2, 0, "999")))
    cache = tmp_path / "cache"
    with pytest.raises(DataFormatError):
        load(path, cache_dir=cache)
    assert cache_entries(cache) == []
    with pytest.raises(DataFormatError):  # and it fails again, not from some cache
        load(path, cache_dir=cache)
    write_file(path, fer_csv(rows))
    assert not load(path, cache_dir=cache).from_cache


def test_damaged_cache_entry_is_rebuilt(tmp_path):
    faces = make_faces(seed=37)
    path = write_file(tmp_path / "faces.csv", fer_csv(rows_of(faces)))
    cache = tmp_path / "cache"
    load(path, cache_dir=cache)
    (entry,) = cache_entries(cache)
    (entry / "images.npy").write_bytes(b"not an array")
    reloaded = load(path, cache_dir=cache)
    assert not reloaded.from_cache
    assert_faces(reloaded, faces)
    meta = json.loads((entry / "meta.json").read_text())
    del meta["layout"]  # a key missing from meta.json is damage too
    (entry / "meta.json").write_text(json.dumps(meta))
    reloaded = load(path, cache_dir=cache)
    assert not reloaded.from_cache
    assert_faces(reloaded, faces)
    assert load(path, cache_dir=cache).from_cache


@pytest.mark.parametrize("damage", ["index", "meta"])
def test_cache_files_of_the_wrong_shape_are_a_cache_miss(tmp_path, damage):
    faces = make_faces(seed=38)
    path = write_file(tmp_path / "faces.csv", fer_csv(rows_of(faces)))
    cache = tmp_path / "cache"
    load(path, cache_dir=cache)
    (entry,) = cache_entries(cache)
    (cache / "index.json" if damage == "index" else entry / "meta.json").write_text("[1]")
    reloaded = load(path, cache_dir=cache)
    assert reloaded.from_cache is (damage == "index")  # without the index the file is hashed, its entry found
    assert_faces(reloaded, faces)


def test_unusable_cache_folder_only_costs_speed(tmp_path, monkeypatch, capsys):
    faces = make_faces(seed=38)
    path = write_file(tmp_path / "faces.csv", fer_csv(rows_of(faces)))
    (tmp_path / "a-file").write_text("not a folder")
    cache = tmp_path / "a-file" / "cache"  # cannot be created
    for _ in range(2):
        dataset = load(path, cache_dir=cache)
        assert not dataset.from_cache
        assert_faces(dataset, faces)
    monkeypatch.setenv("FERKIT_CACHE", str(cache))
    assert cli.main(["data", str(path), "--out", str(tmp_path / "out")]) == 0
    assert "Traceback" not in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# summarize and the `ferkit data` command


def _assert_png(path: Path) -> None:
    raw = path.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(raw) > 10_000
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert min(image.size) > 200


def test_summarize_writes_summary_and_figures(tmp_path):
    faces = make_faces(n=40, seed=40)
    path = write_file(tmp_path / "faces.csv.gz", fer_csv(rows_of(faces)), "gzip")
    out = tmp_path / "out"
    summary = summarize(path, out)
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == summary
    assert on_disk["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert on_disk["rows"] == len(faces) and on_disk["classes"] == list(EMOTIONS)
    assert list(on_disk["counts"]) == list(SPLITS)
    for i, split in enumerate(SPLITS):
        assert on_disk["counts"][split] == np.bincount(faces.labels[faces.splits == i], minlength=7).tolist()
    assert isinstance(on_disk["load_seconds"], float) and on_disk["load_seconds"] >= 0
    assert on_disk["from_cache"] is False and on_disk["layout"] == "csv"
    _assert_png(out / "samples.png")
    _assert_png(out / "class_balance.png")


def test_cli_data_success(tmp_path, capsys):
    faces = make_faces(n=400, seed=41)  # every class in every split: no note of a missing one
    path = write_file(tmp_path / "faces.csv", fer_csv(rows_of(faces)))
    out = tmp_path / "out"
    assert cli.main(["data", str(path), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    sizes = ", ".join(str(int(np.sum(faces.splits == i))) for i in range(3))
    assert captured.err == ("note: FER2013 has 28,709 Training, 3,589 PublicTest, 3,589 PrivateTest faces; this file "
                            f"has {sizes}: a subset, or a file cut short?\n")
    assert f"{len(faces)} faces" in captured.out and "Neutral" in captured.out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rows"] == len(faces) and not summary["from_cache"] and len(summary["notes"]) == 1
    assert cli.main(["data", str(path), "--out", str(out)]) == 0
    assert "(cache)" in capsys.readouterr().out
    assert json.loads((out / "summary.json").read_text())["from_cache"] is True


@pytest.mark.parametrize("ending, noted", [(b"", True), (b"\n", False), (b'"', False)])
def test_a_file_that_may_have_lost_its_last_digits_is_noted(tmp_path, ending, noted):
    rows = rows_of(make_faces(n=4, seed=42))
    raw = fer_csv(rows, trailing_newline=False, quoted=ending == b'"') + ending.strip(b'"')
    path = write_file(tmp_path / "faces.csv", raw)
    for cached in (False, True):  # the cache keeps the note
        dataset = load(path, cache_dir=tmp_path / "cache")
        assert dataset.from_cache is cached
        assert bool(dataset.notes) is noted
        assert not noted or dataset.notes[0].endswith("the last face (line 5) may have lost pixel digits")


# ---------------------------------------------------------------------------------------------
# Integration: the shared FER2013 files (skipped when absent)

OFFICIAL_COUNTS = {
    "Training": [3995, 436, 4097, 7215, 4830, 3171, 4965],
    "PublicTest": [467, 56, 496, 895, 653, 415, 607],
    "PrivateTest": [491, 55, 528, 879, 594, 416, 626],
}
SHARED_CSV = SHARED / "icml_face_data.csv.xz"
SHARED_IMAGES = SHARED / "fer2013_images.tar.xz"


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory):
    """One cache for the session, so that each shared file is parsed once."""
    return tmp_path_factory.mktemp("shared-cache")


@pytest.fixture(scope="session")
def shared_csv(shared_cache):
    if not SHARED_CSV.exists():
        pytest.skip(f"{SHARED_CSV} is absent")
    return load(SHARED_CSV, cache_dir=shared_cache)


@pytest.mark.slow
def test_shared_csv_has_the_official_counts(shared_csv):
    assert len(shared_csv) == 35887
    assert shared_csv.images.shape == (35887, 48, 48) and shared_csv.images.dtype == np.uint8
    assert shared_csv.counts() == OFFICIAL_COUNTS
    assert [sum(c) for c in OFFICIAL_COUNTS.values()] == list(FER2013_COUNTS.values()) and shared_csv.notes == []
    np.testing.assert_array_equal(shared_csv.lines, np.arange(2, 35887 + 2))
    assert shared_csv.images.size == 35887 * N_PIXELS


@pytest.mark.slow
def test_shared_image_export_equals_the_csv(shared_csv, shared_cache):
    if not SHARED_IMAGES.exists():
        pytest.skip(f"{SHARED_IMAGES} is absent")
    images = load(SHARED_IMAGES, cache_dir=shared_cache)
    assert images.layout == "images"
    np.testing.assert_array_equal(images.labels, shared_csv.labels)
    np.testing.assert_array_equal(images.splits, shared_csv.splits)
    np.testing.assert_array_equal(images.images, shared_csv.images)


def test_faces_checksum_covers_images_labels_and_splits():
    faces = make_faces(seed=40)
    base = Dataset(images=faces.images, labels=faces.labels, splits=faces.splits, source="x", sha256="0")
    for change in ("images", "labels", "splits"):
        arrays = {"images": faces.images.copy(), "labels": faces.labels.copy(), "splits": faces.splits.copy()}
        arrays[change][0] = (arrays[change][0] + 1) % (2 if change == "splits" else 7)
        other = Dataset(**arrays, source="y", sha256="1")  # another file
        assert other.faces_sha256 != base.faces_sha256, change
        assert not other.is_recorded_as(base.checksums()), change


def test_summarize_shows_training_faces_chosen_by_the_seed(tmp_path, monkeypatch):
    from ferkit import visualize

    faces = make_faces(n=40, seed=42)
    path = write_file(tmp_path / "faces.csv", fer_csv(rows_of(faces)))
    calls = []
    monkeypatch.setattr(visualize, "sample_grid", lambda images, labels, path, seed=0, **kw: calls.append(
        (images, labels, seed)) or Path(path))
    assert cli.main(["data", str(path), "--out", str(tmp_path / "out"), "--seed", "7"]) == 0
    (images, labels, seed), = calls
    train = faces.splits == SPLITS.index("Training")
    assert 0 < train.sum() < len(faces.labels)
    np.testing.assert_array_equal(images, faces.images[train])
    np.testing.assert_array_equal(labels, faces.labels[train])
    assert seed == 7


@pytest.mark.parametrize("header, order", [('"emotion","Usage","pixels"', (0, 1, 2)),
                                           ('" Emotion " , "PIXELS", usage', (0, 2, 1))])
def test_every_field_quoted_or_padded_and_any_case_of_the_header(tmp_path, header, order):
    faces = make_faces(n=12, seed=43)
    lines = [header]
    for emotion, usage, pixels in rows_of(faces):
        fields = (f'"{emotion}"', f' "{usage}" ', f'"{pixels}"')
        lines.append(",".join(fields[i] for i in order))
    dataset = load(write_file(tmp_path / "faces.csv", ("\n".join(lines) + "\n").encode()), cache=False)
    np.testing.assert_array_equal(dataset.images, faces.images)
    np.testing.assert_array_equal(dataset.labels, faces.labels)
    np.testing.assert_array_equal(dataset.splits, faces.splits)


def test_summarize_never_replaces_a_summary_json_of_the_users_and_replaces_its_own(tmp_path):
    path = write_file(tmp_path / "faces.csv", fer_csv(rows_of(make_faces(n=30, seed=3))))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "summary.json").write_text('{"my": "own"}')
    with pytest.raises(FerkitError, match="--out .*out: holds summary.json, which `ferkit data` did not write"):
        summarize(path, tmp_path / "out")
    (tmp_path / "out" / "summary.json").unlink()
    summarize(path, tmp_path / "out")
    assert summarize(path, tmp_path / "out")["rows"] == 30


def test_summarize_names_a_class_missing_from_one_split(tmp_path):
    """A file whose Training split has no Disgust face trained a model never shown one, and said nothing."""
    faces = make_faces(n=300, seed=44)
    training = faces.splits == SPLITS.index("Training")
    faces.labels[training & (faces.labels == 1)] = 6
    faces.labels[~training & (faces.labels == 5)] = 4  # and no Surprise outside Training
    assert (faces.labels == 1).any() and (faces.labels == 5).any()
    notes = summarize(write_file(tmp_path / "faces.csv", fer_csv(rows_of(faces))), tmp_path / "out")["notes"]
    assert "no Disgust face in Training: a model trained on this file is never shown one" in notes
    assert "no Surprise face in PublicTest" in notes and "no Surprise face in PrivateTest" in notes
    assert not any("any split" in note for note in notes)


def test_summarize_names_an_absent_split_or_class_and_records_the_faces_checksum(tmp_path, monkeypatch):
    from ferkit import visualize

    faces = make_faces(n=30, seed=44)
    faces.labels[faces.labels == 1] = 2  # no Disgust anywhere
    keep = faces.splits != SPLITS.index("Training")  # and no Training split
    faces = Faces(faces.images[keep], faces.labels[keep], faces.splits[keep], faces.ids[keep])
    path = write_file(tmp_path / "faces.csv", fer_csv(rows_of(faces)))
    titles = []
    real = visualize.sample_grid
    monkeypatch.setattr(visualize, "sample_grid", lambda *a, **k: titles.append(k.get("title")) or real(*a, **k))
    summary = summarize(path, tmp_path / "out")
    assert summary["faces_sha256"] == load(path).faces_sha256
    assert any(note.startswith("no Training faces") for note in summary["notes"])
    assert "no Disgust face in any split" in summary["notes"]
    assert titles == ["faces of every split (this data has no Training split), a row per emotion"]


def test_figures_label_an_empty_class_and_call_rare_only_what_is(tmp_path, monkeypatch):
    from ferkit import visualize

    drawn = {}
    real_save = visualize.save
    monkeypatch.setattr(visualize, "save", lambda fig, path, *a, **k: drawn.setdefault(Path(path).name, fig) and
                        real_save(fig, path, *a, **k))
    labels = np.array([0, 0, 2, 3, 3, 4, 5, 6])  # no Disgust
    visualize.sample_grid(np.zeros((8, 48, 48), np.uint8), labels, tmp_path / "samples.png")
    assert drawn["samples.png"].axes[8].get_ylabel() == "1 Disgust\n(none)"  # row 1, column 0 of 8
    visualize.class_balance({"Training": [10, 0, 10, 10, 10, 10, 10], "PublicTest": [1] * 7,
                             "PrivateTest": [1] * 7}, tmp_path / "even.png")
    visualize.class_balance({"Training": [100, 2, 100, 100, 100, 100, 100], "PublicTest": [1] * 7,
                             "PrivateTest": [1] * 7}, tmp_path / "rare.png")
    assert drawn["even.png"].axes[0].get_title() == "Class balance per split"
    assert drawn["rare.png"].axes[0].get_title() == "Class balance per split (Disgust is rare: weigh it in training)"
