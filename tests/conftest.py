"""Shared fixtures: small generated FER2013-style datasets (never rows of the real one)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

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
