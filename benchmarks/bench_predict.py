"""Speed of `ferkit predict` on 640x480 photos: detection + cropping + classification, per image.

    python benchmarks/bench_predict.py RUN_DIR [--photos 40]

Photos are composed in a temporary folder from PrivateTest faces of ../shared/fer2013 (enlarged
to 150 px and pasted onto a 640x480 grey background, 1-3 faces each), so nothing is downloaded
and no derived image is kept. Prints images/s and faces/s end to end (reading the JPEG included)
and how many of the pasted faces were found.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from ferkit.data import load
from ferkit.predict import predict

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "fer2013" / "icml_face_data.csv.xz"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir")
    parser.add_argument("--photos", type=int, default=40)
    parser.add_argument("--data", default=str(SHARED))
    args = parser.parse_args()
    dataset = load(args.data)
    rows = dataset.indices("PrivateTest")
    rng = np.random.default_rng(0)
    pasted = 0
    with tempfile.TemporaryDirectory() as folder:
        for k in range(args.photos):
            photo = np.full((480, 640, 3), 120, np.uint8)
            for slot in range(1 + k % 3):
                face = cv2.resize(dataset.images[rng.choice(rows)], (150, 150), interpolation=cv2.INTER_CUBIC)
                x, y = 30 + 200 * slot, 60 + 120 * (slot % 2)
                photo[y:y + 150, x:x + 150] = face[:, :, None]
                pasted += 1
            cv2.imwrite(str(Path(folder) / f"photo{k:03d}.jpg"), photo, [cv2.IMWRITE_JPEG_QUALITY, 92])
        predict(args.run_dir, [Path(folder) / "photo000.jpg"], progress=False)  # warm-up: model, cascade
        started = time.perf_counter()
        table, _ = predict(args.run_dir, [folder], progress=False)
        seconds = time.perf_counter() - started
    print(f"{args.photos} photos 640x480, {pasted} faces pasted, {len(table)} found: {seconds:.2f} s, "
          f"{args.photos / seconds:.1f} images/s, {len(table) / seconds:.1f} faces/s")


if __name__ == "__main__":
    main()
