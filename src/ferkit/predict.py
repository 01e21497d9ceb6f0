"""The trained model on the user's own photos: find faces with OpenCV's bundled Haar cascade, crop
each with a margin, convert to 48x48 grayscale as in FER2013, classify, and write one row per face."""

from __future__ import annotations

import os
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ferkit.data import EMOTIONS, IMAGE_SIZE
from ferkit.errors import FerkitError
from ferkit.fileio import atomic_path, output_file, output_folder, read_json, same_file, write_json

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
ANNOTATED = ".ferkit-annotated.json"  # the names of the copies an --annotate folder holds, which a rerun replaces


@dataclass
class Face:
    box: tuple[int, int, int, int]  # x, y, width, height in the photo's pixels
    crop: np.ndarray  # (48, 48) uint8


def _cv2():
    try:
        import cv2
    except ImportError:
        raise FerkitError("predict needs OpenCV: pip install opencv-python-headless") from None
    return cv2


def face_detector() -> Any:  # a cv2.CascadeClassifier
    """OpenCV's frontal-face Haar cascade, shipped inside the opencv-python-headless wheel."""
    cv2 = _cv2()
    detector = cv2.CascadeClassifier(os.path.join(cv2.data.haarcascades, "haarcascade_frontalface_default.xml"))
    if detector.empty():
        raise FerkitError("OpenCV's face cascade could not be loaded; reinstall opencv-python-headless")
    return detector


def to_face(gray: np.ndarray) -> np.ndarray:
    """Any grayscale crop -> 48x48 uint8, area-averaged as a photo would be shrunk."""
    cv2 = _cv2()
    interpolation = cv2.INTER_AREA if min(gray.shape) >= IMAGE_SIZE else cv2.INTER_LINEAR
    return cv2.resize(gray, (IMAGE_SIZE, IMAGE_SIZE), interpolation=interpolation)


def detect_faces(gray: np.ndarray, detector: Any, margin: float = 0.15, min_size: int = 24) -> list[Face]:
    """Faces in a grayscale photo, largest first; each box grown by `margin` on every side (FER2013
    crops show the whole face with a little around it), clipped to the photo."""
    boxes = detector.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(min_size, min_size))
    faces = []
    height, width = gray.shape
    for x, y, w, h in sorted((tuple(int(v) for v in b) for b in boxes), key=lambda b: -b[2] * b[3]):
        pad_x, pad_y = int(w * margin), int(h * margin)
        x0, y0 = max(0, x - pad_x), max(0, y - pad_y)
        x1, y1 = min(width, x + w + pad_x), min(height, y + h + pad_y)
        faces.append(Face((x0, y0, x1 - x0, y1 - y0), to_face(gray[y0:y1, x0:x1])))
    return faces


def read_photo(path: Path) -> tuple[np.ndarray | None, str | None]:
    """A photo as a BGR array (OpenCV's, else Pillow's), turned upright as its EXIF orientation says, a
    transparent one shown on white, and a note: why there is no array (unreadable, or a JPEG cut short),
    or what the image decoder warned of while reading it; None when all went well."""
    cv2 = _cv2()
    image, warnings = None, []
    transparent, cut = _pillow_probe(path)
    if not transparent:  # OpenCV drops the alpha, keeping whatever colour hides under it
        quiet = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # the message below says it once
        try:
            with _decoder_messages() as warnings:
                image = _decode_with_opencv(cv2, path)
        finally:
            cv2.utils.logging.setLogLevel(quiet)
    if cut:  # whether OpenCV decoded its upper part or nothing
        return None, ("the JPEG ends before its image does (an interrupted download or copy?), so its lower part "
                      "is missing")
    if image is None:
        image = _read_with_pillow(path)  # OpenCV fails on some valid files, e.g. a TIFF with an EXIF rotation
    if image is None:
        return None, "not a readable image"
    if warnings:
        return image, f"the image decoder warned ({'; '.join(warnings)}); classified as read, check the photo"
    return image, None


@contextmanager
def _decoder_messages() -> Iterator[list[str]]:
    """Collect what libjpeg and libpng print straight to the process's stderr while OpenCV decodes
    ("Corrupt JPEG data: ...", "libpng warning: ..."), so that predict names the photo they are about
    instead of leaving anonymous lines between its own."""
    messages: list[str] = []
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all (a detached process): nothing to collect
        yield messages
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield messages
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            messages.extend(line.strip() for line in sink.read().decode(errors="replace").splitlines() if line.strip())


def _decode_with_opencv(cv2: Any, path: Path) -> np.ndarray | None:
    """A photo as a BGR array through OpenCV, decoded from its bytes: cv2.imread crashes the process on
    a file name that is not UTF-8 (one unzipped from a Windows archive); None when unreadable."""
    try:
        encoded = np.fromfile(path, np.uint8)
    except OSError:
        return None
    try:
        return cv2.imdecode(encoded, cv2.IMREAD_COLOR) if encoded.size else None
    except cv2.error:  # a header of more than OpenCV's 2^30 pixels raises instead of returning None: one such file
        return None  # ended the whole command with a traceback


def _read_with_pillow(path: Path) -> np.ndarray | None:
    """A photo as a BGR array through Pillow, turned upright and laid on white as an image viewer shows
    it; None when Pillow cannot read it either."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as image:
            rgba = _eight_bit(ImageOps.exif_transpose(image)).convert("RGBA")
            rgb = np.asarray(Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    return np.ascontiguousarray(rgb[:, :, ::-1])


def _eight_bit(image: Any) -> Any:
    """A 16-bit grayscale image (Pillow's I;16 or I, from a PNG) as 8 bits, the top ones as OpenCV
    keeps, and its transparent value as an alpha: Pillow's convert() clips every value above 255 to
    white, which left a transparent 16-bit photo white all over."""
    from PIL import Image

    if image.mode not in ("I", "I;16", "I;16B", "I;16L"):
        return image
    values = np.asarray(image).astype(np.int64)
    gray = Image.fromarray((values >> 8).clip(0, 255).astype(np.uint8), "L")
    if not isinstance(image.info.get("transparency"), int):
        return gray
    return Image.merge("LA", (gray, Image.fromarray(np.where(values == image.info["transparency"], 0, 255)
                                                    .astype(np.uint8), "L")))


def _pillow_probe(path: Path) -> tuple[bool, bool]:
    """What Pillow sees in one opening of the file: whether the image has an alpha channel or a
    transparent colour (from its header), and whether it is a JPEG that ends before its image does.
    OpenCV reads a cut JPEG without a word, its missing rows grey, where a half face would be
    classified; Pillow refuses it. Decoding at 1/8 scale (JPEG's draft mode) reads the whole stream
    in about 20 ms for 12 megapixels."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            transparent = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
            if image.format != "JPEG":
                return transparent, False
            image.draft("L", (max(1, image.width // 8), max(1, image.height // 8)))
            image.load()
    except (ValueError, Image.DecompressionBombError):  # OpenCV may read it: not worth lifting Pillow's guard for
        return False, False
    except OSError as exc:
        return False, "truncated" in str(exc)
    return transparent, False


def find_images(inputs: Iterable[str | os.PathLike]) -> tuple[list[Path], list[str], list[str]]:
    """Files given directly, plus image files found recursively in folders, each once (a photo given
    and also found in a folder given would be two rows of the same faces); what was missing; and what
    a folder's search passed by, with the reason (a broken link, ferkit's own annotated copies)."""
    found: dict[Path, Path] = {}  # resolved -> as given, in the order given
    problems, notes = [], []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files = _search(path, notes)
        elif path.is_file():
            files = [path]
        else:
            problems.append(f"{path}: no such file or folder")
            continue
        for file in files:
            found.setdefault(file.resolve(), file)
    return list(found.values()), problems, notes


def _search(folder: Path, notes: list[str]) -> list[Path]:
    """The image files in `folder` and its subfolders, sorted, hidden ones aside. Links are followed, as
    a file manager shows them (rglob followed no linked folder); a folder reached twice is searched once,
    which also ends a link loop. A folder holding ferkit's annotated copies is passed by: its photos have
    boxes and labels drawn on them. What is passed by for a reason is said in `notes`."""
    files, seen = [], {os.path.realpath(folder)}
    for root, folders, names in os.walk(folder, followlinks=True, onerror=lambda exc: notes.append(
            f"{exc.filename}: cannot be searched ({exc.strerror}), skipped")):
        here, kept = Path(root), []
        for name in sorted(folders):
            sub = here / name
            if _is_hidden(sub.relative_to(folder)) or os.path.realpath(sub) in seen:
                continue
            seen.add(os.path.realpath(sub))
            if (sub / ANNOTATED).is_file():
                notes.append(f"{sub}: holds ferkit's annotated copies ({ANNOTATED}), passed by")
            else:
                kept.append(name)
        folders[:] = kept
        for name in sorted(names):  # the notes in the order a listing shows
            path = here / name
            if _is_hidden(path.relative_to(folder)):
                continue
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
                files.append(path)
            # a broken link with no suffix may have led to a folder of photos; one to notes.txt is no photo
            elif path.is_symlink() and not path.exists() and path.suffix.lower() in (*IMAGE_SUFFIXES, ""):
                notes.append(f"{path}: a broken link (to {os.readlink(path)}), skipped")
    return sorted(files)


def _is_hidden(relative: Path) -> bool:
    """Whether a file found in a folder is hidden or lies in a hidden folder, or is a macOS resource fork
    (__MACOSX/._IMG.jpg, unzipped from a Mac's archive): not the user's photos, as the data loader holds
    too; each was "not a readable image", and a .Trash-1000/ folder's deleted photos were classified."""
    return any(part.startswith(".") or part == "__MACOSX" for part in relative.parts)


def predict(model_or_run: str | os.PathLike, inputs: str | os.PathLike | Iterable[str | os.PathLike],
            out: str | os.PathLike | None = None, annotate: str | os.PathLike | None = None, detect: bool = True,
            tta: bool = False, progress: bool = True) -> tuple[pd.DataFrame, list[str]]:
    """Classify every face in the given photos (or, with detect=False, each image as one face).

    `inputs` is one path or several; a photo reached twice is classified once. Returns the table
    (one row per face) and the messages: skipped files (unreadable, a cut JPEG, a broken link, or
    without a face), a folder of annotated copies passed by, what the image decoder warned of in a
    photo it read, a photo changed before its annotated copy was drawn, and a note when `tta` meets
    a run whose tta is none. A missing input, or an `out` that names an image, a photo given or the
    checkpoint, stops it before any work, and photos without a single face stop it before it writes
    anything. A folder's hidden files are passed by, its links followed.
    Example: ``predict("runs/study/cnn", "photos/", out="faces.csv")``, which is
    ``ferkit predict runs/study/cnn photos/ --out faces.csv``
    """
    from ferkit.train import load_model, predict_as_trained

    cv2 = _cv2()
    if out is not None:  # checked before the photos are read; made only when there is something to write
        output_file(out, "--out", create_folder=False)
        if Path(out).suffix.lower() in IMAGE_SUFFIXES:
            raise FerkitError(f"--out {out}: names an image, but --out is the CSV table of the faces (a photo "
                              "given after --out?); name it .csv")
    if annotate is not None:
        output_folder(annotate, "--annotate", create=False)
    # one path, not an iterable of its characters; a generator as a list, read again by the --annotate check
    inputs = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    files, missing, passed_by = find_images(inputs)
    if missing:
        raise FerkitError("; ".join(missing) + " (nothing was classified)")
    if not files:  # every input was a folder (a file given is always classified): name them
        where = f"{', '.join(map(str, inputs))}: no images in {'this folder' if len(inputs) == 1 else 'these folders'}"
        raise FerkitError(f"{where if inputs else 'no input images given'} (searched recursively for .jpg, .png, ... "
                          "files, hidden ones aside)" + "".join(f"\n  {note}" for note in passed_by))
    if out is not None and any(same_file(out, file) for file in files):
        raise FerkitError(f"--out {out}: is one of the photos to classify; name the CSV otherwise")
    if out is not None and same_file(out, model_or_run):  # the table replaced the checkpoint: the model was lost
        raise FerkitError(f"--out {out}: is the checkpoint to classify with; name the CSV otherwise")
    names = _annotation_names(files) if annotate is not None else {}
    if annotate is not None:
        _require_apart(Path(annotate), inputs, files)
        _require_no_foreign(Path(annotate), names)
    model, checkpoint = load_model(model_or_run)
    messages = passed_by
    detector = face_detector() if detect else None
    rows, crops = [], []
    # each annotated photo's shape and rows; not its pixels, read again when drawn: every photo kept until the end
    # took 36 MB for each 12-megapixel one, and a few hundred photos more memory than a laptop has
    annotations: dict[Path, tuple[tuple[int, ...], list[int]]] = {}
    for path in tqdm(files, desc="photos", unit="img", disable=not progress or len(files) < 2):
        image, note = read_photo(path)
        if image is None:
            messages.append(f"{path}: {note}, skipped")
            continue
        if note:
            messages.append(f"{path}: {note}")
        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        if detect:
            faces = detect_faces(gray, detector)
            if not faces:
                small = " (a crop this small is maybe a face already: --no-detect classifies it whole)" \
                    if max(gray.shape) <= 4 * IMAGE_SIZE else ""
                messages.append(f"{path}: no face found{small}")
                continue
        else:
            faces = [Face((0, 0, gray.shape[1], gray.shape[0]), to_face(gray))]
        first_row = len(rows)
        for number, face in enumerate(faces):
            x, y, w, h = face.box
            rows.append({"file": str(path), "face": number, "x": x, "y": y, "width": w, "height": h})
            crops.append(face.crop)
        if annotate is not None:
            annotations[path] = (image.shape, list(range(first_row, len(rows))))
    if not crops:
        raise FerkitError("no face was classified, so nothing was written:\n  " + "\n  ".join(messages))
    table = pd.DataFrame(rows, columns=["file", "face", "x", "y", "width", "height"])
    probs, mode = predict_as_trained(model, checkpoint, np.stack(crops), tta=tta)
    if tta and mode == "none":
        messages.append("--tta: this run's tta setting is none, so each face was classified once")
    for i, name in enumerate(EMOTIONS):
        table[name] = np.round(probs[:, i], 6)
    table["emotion"] = [EMOTIONS[i] for i in probs.argmax(1)]
    if out is not None:
        with atomic_path(out) as tmp:  # a file name that is not UTF-8 is written back as the bytes it has
            table.to_csv(tmp, index=False, errors="surrogateescape")
    if annotate is not None:
        messages += _annotate(annotations, table, Path(annotate), names)
    return table, messages


def _require_apart(folder: Path, inputs: Iterable[str | os.PathLike], files: list[Path]) -> None:
    """Stop unless the annotated copies can neither replace a photo nor be read as photos next time."""
    target = folder.resolve()
    for item in inputs:  # a folder given is searched recursively, so its subfolders are out too
        path = Path(item).resolve()
        if path.is_dir() and target.is_relative_to(path):
            raise FerkitError(f"--annotate {folder}: this folder is or lies in {item}, whose photos are classified; "
                              "the annotated copies would replace photos of the same name, or be read as photos "
                              "next time: pick a folder outside it")
    # a folder beside or below photos given as files is allowed (refusing it would forbid ~/boxes to ~/photo.jpg):
    # a later search of their folder passes by the copies, which the folder's ANNOTATED names as ferkit's
    if any(file.resolve().parent == target for file in files):
        raise FerkitError(f"--annotate {folder}: this folder holds photos given to classify, which the annotated "
                          "copies would replace: pick another folder")


def _annotation_names(files: list[Path]) -> dict[Path, str]:
    """The annotated copy's file name of each photo: its stem, made unique, as .jpg."""
    names, used = {}, set()
    for path in files:
        name = path.stem
        while name.lower() in used:  # two inputs with the same name from different folders
            name += "_"
        used.add(name.lower())
        names[path] = f"{name}.jpg"
    return names


def _written_before(folder: Path) -> set[str]:
    try:
        return set(read_json(folder / ANNOTATED))
    except (OSError, ValueError, TypeError):
        return set()


def _require_no_foreign(folder: Path, names: dict[Path, str]) -> None:
    """Stop unless every annotated copy's name is free in `folder`, or holds an earlier copy."""
    if not folder.is_dir():
        return
    ours = _written_before(folder)
    taken = sorted(name for name in names.values() if (folder / name).exists() and name not in ours)
    if taken:
        raise FerkitError(f"--annotate {folder}: already holds {', '.join(taken[:3])}{' ...' if len(taken) > 3 else ''}, "
                          "which the annotated copies would replace; pick an empty folder")


def _annotate(annotations: dict[Path, tuple[tuple[int, ...], list[int]]], table: pd.DataFrame, folder: Path,
              names: dict[Path, str]) -> list[str]:
    """Write the annotated copies, each photo read again; returns what kept a copy from being written."""
    cv2 = _cv2()
    output_folder(folder, "--annotate")
    _require_no_foreign(folder, names)  # again: a file may have come meanwhile
    written = _written_before(folder) | {names[path] for path in annotations}
    write_json(folder / ANNOTATED, sorted(written))  # first: a kill below leaves no copy unaccounted for
    messages = []
    for path, (shape, row_numbers) in annotations.items():
        canvas, _ = read_photo(path)  # its decoder's warnings were said at the first reading
        if canvas is None or canvas.shape != shape:
            messages.append(f"{path}: changed or removed while it was classified, so it has no annotated copy")
            continue
        thickness = max(1, round(max(canvas.shape[:2]) / 400))
        for r in row_numbers:
            row = table.iloc[r]
            x, y, w, h = int(row.x), int(row.y), int(row.width), int(row.height)
            label = f"{row.emotion} {row[row.emotion]:.0%}"
            cv2.rectangle(canvas, (x, y), (x + w, y + h), (0, 200, 0), thickness)
            scale = 0.4 * thickness + 0.1
            (_, text_h), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
            # above the box, or inside its top edge when the box touches the photo's top (the text was cut)
            baseline = y - 6 if y - 6 - text_h >= 0 else y + text_h + 6 + thickness
            cv2.putText(canvas, label, (x + (0 if baseline < y else 4), baseline), cv2.FONT_HERSHEY_SIMPLEX, scale,
                        (0, 200, 0), thickness, cv2.LINE_AA)
        target = folder / names[path]
        with atomic_path(target) as tmp:
            ok, encoded = cv2.imencode(".jpg", canvas)
            if not ok:
                raise FerkitError(f"{target}: OpenCV could not encode the annotated photo as JPEG")
            tmp.write_bytes(encoded.tobytes())
    return messages
