"""Shared fixtures: small generated FER2013-style datasets (never rows of the real one)."""

from __future__ import annotations

import io
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ferkit.data import SPLITS

FOLDERS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "fer2013"


def learnable_faces(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Noisy faces whose class sets their brightness and stripe spacing: a tiny CNN learns this in
    a few epochs (under flips and shifts too), so tests can check that training really learns."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 7, n)
    rows = np.arange(48)[:, None]
    images = np.empty((n, 48, 48), dtype=np.uint8)
    for i, label in enumerate(labels):
        stripes = 40 * ((rows // (label + 1)) % 2)
        noise = rng.integers(0, 40, (48, 48))
        images[i] = np.clip(25 * label + stripes + noise, 0, 255)
    return images, labels


def write_fer_csv(path: Path, images: np.ndarray, labels: np.ndarray, usages: list[str]) -> Path:
    """Kaggle's icml_face_data.csv layout."""
    lines = ["emotion, Usage, pixels"]
    for image, label, usage in zip(images, labels, usages):
        lines.append(f"{label},{usage}," + " ".join(map(str, image.ravel())))
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class Faces:
    images: np.ndarray  # (N, 48, 48) uint8
    labels: np.ndarray  # (N,) int, 0-6
    splits: np.ndarray  # (N,) int, index into SPLITS; sorted, as in the CSV
    ids: np.ndarray  # (N,) the numeric id of the image-folder export, increasing within a split

    def __len__(self) -> int:
        return len(self.labels)


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def export_entries(faces: Faces, prefix: str = "") -> list[tuple[str, bytes]]:
    """The image-folder export: train/<emotion>/Training_<id>.png, test/<emotion>/PublicTest_<id>.png..."""
    entries = []
    for image, label, split, face_id in zip(faces.images, faces.labels, faces.splits, faces.ids):
        top = "train" if split == 0 else "test"
        entries.append((f"{prefix}{top}/{FOLDERS[label]}/{SPLITS[split]}_{face_id}.png", png_bytes(image)))
    return entries


def write_export(dest: Path, faces: Faces, kind: str, prefix: str = "", seed: int = 0) -> Path:
    """Write the export as a folder, .zip, .tar, .tar.gz or .tar.xz; archive members in random order."""
    entries = export_entries(faces, prefix)
    entries = [entries[i] for i in np.random.default_rng(seed).permutation(len(entries))]
    if kind == "folder":
        for name, content in entries:
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            (dest / name).write_bytes(content)
    elif kind == "zip":
        with zipfile.ZipFile(dest, "w") as archive:
            for name, content in entries:
                archive.writestr(name, content)
    else:
        mode = {"tar": "w", "tar.gz": "w:gz", "tar.xz": "w:xz"}[kind]
        with tarfile.open(dest, mode) as archive:
            for name, content in entries:
                info = tarfile.TarInfo(name)
                info.size = len(content)
                archive.addfile(info, io.BytesIO(content))
    return dest


@pytest.fixture(scope="session")
def tiny_csv(tmp_path_factory) -> Path:
    """240 training, 60 validation and 60 test faces of the learnable kind."""
    images, labels = learnable_faces(360)
    usages = ["Training"] * 240 + ["PublicTest"] * 60 + ["PrivateTest"] * 60
    return write_fer_csv(tmp_path_factory.mktemp("data") / "tiny.csv", images, labels, usages)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Keep every test's dataset cache out of the user's ~/.cache."""
    monkeypatch.setenv("FERKIT_CACHE", str(tmp_path_factory.getbasetemp() / "ferkit-cache"))


@pytest.fixture
def saved_figures(monkeypatch) -> list:
    """The figures that ferkit.visualize.save is given, kept (open) instead of written; closed afterwards.
    ferkit.features holds its own reference to save, replaced too."""
    from ferkit import features, visualize

    figures: list = []

    def keep(fig, path):
        figures.append(fig)
        return Path(path)

    monkeypatch.setattr(visualize, "save", keep)
    monkeypatch.setattr(features, "save", keep)
    yield figures
    visualize.plt.close("all")
