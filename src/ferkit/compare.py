"""Humans versus the CNN, part 2: both on exactly the faces a person labelled with `ferkit label`.

``ferkit compare RUN_DIR labels.csv --data DATA --out DIR`` runs the run's best checkpoint on the
labelled faces, then writes DIR/comparison.json (accuracy with Wilson 95% intervals, macro F1 with
seeded bootstrap 95% intervals, the paired differences, Cohen's kappa of human vs truth, CNN vs
truth and human vs CNN, McNemar's exact test on the faces where exactly one of the two is right),
confusion_matrices.png (human and CNN side by side), disagreements.png (the faces where they
disagree: face, truth, human, CNN) and faces.csv (one row per face).

Macro F1 here averages the classes present among the labelled faces' true labels (a class absent
from a sample of 100 faces cannot be scored); each bootstrap resample is scored the same way.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ferkit import data as fdata
from ferkit.config import check_seed
from ferkit.data import EMOTIONS
from ferkit.errors import FerkitError
from ferkit.evaluate import macro_f1, recorded_data_path, require_trained_on
from ferkit.fileio import output_folder, read_json, require_outside, same_file, write_csv, write_json

CONFIDENCE = 0.95
DEFAULT_RESAMPLES = 2000
OUTPUT_FILES = ("comparison.json", "confusion_matrices.png", "disagreements.png", "faces.csv")
_K = len(EMOTIONS)


# ---------------------------------------------------------------------------------------------
# Statistics


def wilson_interval(successes: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (scipy's, as statsmodels' proportion_confint 'wilson')."""
    from scipy.stats import binomtest

    if n < 1:
        raise ValueError("the Wilson interval needs n >= 1")
    if not 0 <= successes <= n:
        raise ValueError(f"successes {successes} must be within 0..{n}")
    interval = binomtest(successes, n).proportion_ci(confidence, method="wilson")
    return float(interval.low), float(interval.high)


def _macro_f1_resampled(y_true: np.ndarray, y_pred: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Macro F1 (over the classes present in each resample's truth) of every row of indices `idx` (B, n)."""
    b = idx.shape[0]
    codes = (np.arange(b)[:, None] * (_K * _K) + y_true[idx] * _K + y_pred[idx]).ravel()
    matrices = np.bincount(codes, minlength=b * _K * _K).reshape(b, _K, _K)
    tp = np.diagonal(matrices, axis1=1, axis2=2).astype(np.float64)
    support = matrices.sum(axis=2)
    denominator = support + matrices.sum(axis=1)  # 2 tp + fp + fn
    f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
    present = support > 0
    return (f1 * present).sum(axis=1) / present.sum(axis=1)


def bootstrap(y_true: Sequence[int], predictions: dict[str, Sequence[int]], resamples: int = DEFAULT_RESAMPLES,
              seed: int = 0, chunk: int = 250) -> dict[str, dict[str, np.ndarray]]:
    """Paired bootstrap: the same `resamples` resamples of the faces (``default_rng(seed)``) for every
    predictor; returns {name: {"accuracy": (B,), "macro_f1": (B,)}}."""
    y_true = np.asarray(y_true, np.int64)
    n = len(y_true)
    if n < 1 or resamples < 1:
        raise ValueError("the bootstrap needs at least one face and one resample")
    rng = np.random.default_rng(seed)
    out = {name: {"accuracy": [], "macro_f1": []} for name in predictions}
    preds = {name: np.asarray(p, np.int64) for name, p in predictions.items()}
    for start in range(0, resamples, chunk):
        idx = rng.integers(0, n, size=(min(chunk, resamples - start), n))
        for name, y_pred in preds.items():
            out[name]["accuracy"].append((y_pred[idx] == y_true[idx]).mean(axis=1))
            out[name]["macro_f1"].append(_macro_f1_resampled(y_true, y_pred, idx))
    return {name: {k: np.concatenate(v) for k, v in stats.items()} for name, stats in out.items()}


def percentile_interval(samples: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(samples, [tail, 100 - tail])
    return float(low), float(high)


def mcnemar_exact(first_correct: Sequence[bool], second_correct: Sequence[bool]) -> dict[str, Any]:
    """McNemar's exact test: a two-sided binomial test (p = 1/2) on the discordant pairs."""
    from scipy.stats import binomtest

    a, b = np.asarray(first_correct, bool), np.asarray(second_correct, bool)
    only_first, only_second = int(np.sum(a & ~b)), int(np.sum(~a & b))
    discordant = only_first + only_second
    p_value = float(binomtest(only_first, discordant, 0.5).pvalue) if discordant else 1.0
    return {"both_correct": int(np.sum(a & b)), "only_first_correct": only_first, "only_second_correct": only_second,
            "both_wrong": int(np.sum(~a & ~b)), "discordant": discordant, "p_value": min(1.0, p_value)}


def kappa(first: Sequence[int], second: Sequence[int]) -> float | None:
    """Cohen's kappa; None where it is undefined (both raters give one and the same class)."""
    from sklearn.metrics import cohen_kappa_score

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = float(cohen_kappa_score(np.asarray(first), np.asarray(second), labels=list(range(_K))))
    return None if math.isnan(value) else value


def _scores(y_true: np.ndarray, y_pred: np.ndarray, boot: dict[str, np.ndarray]) -> dict[str, Any]:
    from ferkit.evaluate import compute_metrics

    correct = int(np.sum(y_true == y_pred))
    full = compute_metrics(y_true, y_pred)
    return {
        "correct": correct,
        "accuracy": correct / len(y_true),
        "accuracy_ci95": list(wilson_interval(correct, len(y_true))),
        "accuracy_ci_method": "Wilson score",
        "macro_f1": full["macro_f1"],
        "macro_f1_ci95": list(percentile_interval(boot["macro_f1"])),
        "macro_f1_ci_method": "percentile bootstrap",
        "per_class": full["per_class"],
        "confusion_matrix": full["confusion_matrix"],
    }


# ---------------------------------------------------------------------------------------------
# The comparison


def _resolve_data(labels_csv: Path, run: Path, data: str | os.PathLike | None) -> str:
    """`data` if given, else the file the labels' sidecar names, else the run's data file."""
    if data:
        return str(data)
    from ferkit.label import sidecar_path

    try:
        labelled = read_json(sidecar_path(labels_csv)).get("data")
    except (OSError, ValueError, AttributeError):
        labelled = None
    recorded = [path for path in (labelled, recorded_data_path(run)) if isinstance(path, str)]
    for path in recorded:
        if Path(path).exists():
            return path
    gone = f" ({' and '.join(recorded)} no longer exist{'s' if len(recorded) == 1 else ''})" if recorded else ""
    raise FerkitError(f"cannot find the data file the faces were labelled from{gone}; pass --data PATH")


def compare(run_dir: str | os.PathLike, labels_csv: str | os.PathLike, out: str | os.PathLike,
            data: str | os.PathLike | None = None, device: str = "auto", tta: bool = False,
            resamples: int = DEFAULT_RESAMPLES, seed: int = 0, max_faces_shown: int = 48) -> dict[str, Any]:
    """Compare the human labels in `labels_csv` with the run's best checkpoint on the same faces.

    Example: ``ferkit compare runs/cnn labels.csv --data icml_face_data.csv --out runs/human-vs-cnn``
    """
    from ferkit.label import read_labels, sidecar_path
    from ferkit.train import load_run_model, pick_device, predict_as_trained

    if resamples < 1:
        raise FerkitError(f"--bootstrap {resamples}: use at least 1 resample")
    check_seed(seed)
    output_folder(out, create=False)  # a bad --out stops before the work below
    run, labels_path = Path(run_dir), Path(labels_csv)
    data_path = _resolve_data(labels_path, run, data)
    require_outside(data_path, out)
    for name in OUTPUT_FILES:  # labels saved as OUT/faces.csv were replaced by compare's own
        if any(same_file(Path(out) / name, kept) for kept in (labels_path, sidecar_path(labels_path), data_path)):
            raise FerkitError(f"--out {out}: its {name}, which compare writes, is the labels, their sidecar or the "
                              f"data file; name another folder")
    dataset = fdata.load(data_path)
    labels = read_labels(labels_path, dataset)
    if len(labels) < 1:
        raise FerkitError(f"{labels_path} holds no answers yet: label some faces with `ferkit label` first")
    target = pick_device(device)
    model, checkpoint, checkpoint_sha = load_run_model(run, device=target)
    require_trained_on(dataset, checkpoint, run, todo="compare a run trained on the faces you labelled")
    probs, mode = predict_as_trained(model, checkpoint, dataset.images[labels.rows], target, tta)

    y_true = dataset.labels[labels.rows].astype(np.int64)
    human = labels.human
    cnn = probs.argmax(1).astype(np.int64)
    n = len(y_true)
    boot = bootstrap(y_true, {"human": human, "cnn": cnn}, resamples=resamples, seed=seed)
    differences = {}
    for metric in ("accuracy", "macro_f1"):
        diff = boot["human"][metric] - boot["cnn"][metric]
        point = float(np.mean(human == y_true) - np.mean(cnn == y_true)) if metric == "accuracy" \
            else macro_f1(y_true, human) - macro_f1(y_true, cnn)
        differences[metric] = {"human_minus_cnn": point, "ci95": list(percentile_interval(diff)),
                               "ci_method": "paired percentile bootstrap"}
    test = mcnemar_exact(human == y_true, cnn == y_true)
    mcnemar = {"human_correct_cnn_wrong": test["only_first_correct"],
               "human_wrong_cnn_correct": test["only_second_correct"],
               "both_correct": test["both_correct"], "both_wrong": test["both_wrong"],
               "discordant": test["discordant"], "p_value": test["p_value"],
               "test": "exact two-sided binomial test (p = 1/2) on the discordant faces"}
    sample_n = int(labels.meta["n"])
    result: dict[str, Any] = {
        "n": n,
        "sample_n": sample_n,
        "complete": n == sample_n,
        "labels": str(labels_path),
        "data": {"path": dataset.source, "sha256": dataset.sha256, "faces_sha256": dataset.faces_sha256},
        "sample": {"split": labels.meta.get("split"), "seed": labels.meta.get("seed"), "n": sample_n},
        "model": {"run": str(run), "name": checkpoint.get("model_name"), "epoch": checkpoint.get("epoch"),
                  "checkpoint_sha256": checkpoint_sha, "tta": mode},
        "classes": list(EMOTIONS),
        "macro_f1_classes": [EMOTIONS[i] for i in np.unique(y_true)],
        "human": _scores(y_true, human, boot["human"]),
        "cnn": _scores(y_true, cnn, boot["cnn"]),
        "difference": differences,
        "agreement_human_cnn": float(np.mean(human == cnn)),
        "kappa": {"human_vs_truth": kappa(human, y_true), "cnn_vs_truth": kappa(cnn, y_true),
                  "human_vs_cnn": kappa(human, cnn)},
        "mcnemar": mcnemar,
        "human_seconds": {"mean": float(np.mean(labels.seconds)), "median": float(np.median(labels.seconds)),
                          "total": float(np.sum(labels.seconds))},
        "bootstrap": {"resamples": int(resamples), "seed": int(seed), "confidence": CONFIDENCE},
        "files": list(OUTPUT_FILES),
    }

    destination = output_folder(out)
    # comparison.json is written last: a comparison cut short must not leave an earlier one's numbers beside
    # these figures, where `report` would take them for one set
    (destination / "comparison.json").unlink(missing_ok=True)
    _write_faces_csv(destination / "faces.csv", labels, y_true, human, cnn, probs)
    network = model_label(result)  # the keys say cnn; the figures name what the run trained
    titles = tuple(f"{name}: accuracy {result[key]['accuracy']:.3f}, macro F1 {result[key]['macro_f1']:.3f}"
                   for key, name in (("human", "human"), ("cnn", network)))
    confusion_figure(np.array(result["human"]["confusion_matrix"]), np.array(result["cnn"]["confusion_matrix"]),
                     destination / "confusion_matrices.png", titles=titles,
                     suptitle=f"Human versus {network} on the same {n} PrivateTest faces (rows: truth; cells: count "
                              "and row share)")
    disagree = np.flatnonzero(human != cnn)
    disagreement_figure(dataset.images[labels.rows[disagree]], y_true[disagree], human[disagree], cnn[disagree],
                        [int(i) for i in labels.index[disagree]], destination / "disagreements.png", total=n,
                        limit=max_faces_shown, network=network)
    result["disagreements"] = int(len(disagree))
    write_json(destination / "comparison.json", result)
    return result


def model_label(result: dict[str, Any]) -> str:
    """How messages and figures name the compared network: CNN, or MLP for an MLP run."""
    return str(result.get("model", {}).get("name") or "cnn").upper()


def _write_faces_csv(path: Path, labels, y_true: np.ndarray, human: np.ndarray, cnn: np.ndarray,
                     probs: np.ndarray) -> None:
    write_csv(path, ["index", labels.origin_column, "true", "human", "cnn", "human_correct", "cnn_correct",
                     "cnn_confidence", "seconds"],
              ([int(labels.index[k]), labels.origins[k], EMOTIONS[y_true[k]], EMOTIONS[human[k]], EMOTIONS[cnn[k]],
                int(human[k] == y_true[k]), int(cnn[k] == y_true[k]), f"{float(probs[k, cnn[k]]):.4f}",
                f"{float(labels.seconds[k]):.3f}"] for k in range(len(y_true))))


# ---------------------------------------------------------------------------------------------
# Figures


def confusion_figure(human: np.ndarray, cnn: np.ndarray, path: str | os.PathLike,
                     titles: tuple[str, str] = ("human", "CNN"), suptitle: str = "") -> Path:
    """The two confusion matrices (rows: truth) side by side, coloured by row share, on one scale."""
    from ferkit.visualize import confusion_panel, plt, save

    # wspace: room for the second panel's row names ("Surprise (12)") and "true" beside the first panel
    fig, axes = plt.subplots(1, 2, figsize=(12.5, 5.2), gridspec_kw={"wspace": 0.4})
    for ax, matrix, title in zip(axes, (human, cnn), titles):
        im = confusion_panel(ax, matrix, xlabel="answered", row_totals=True)
        ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=axes, fraction=0.025, pad=0.02, label="share of the true class")
    if suptitle:
        fig.suptitle(suptitle, fontsize=11)
    return save(fig, path)


def disagreement_figure(images: np.ndarray, truth: np.ndarray, human: np.ndarray, cnn: np.ndarray,
                        index: Sequence[int], path: str | os.PathLike, total: int, limit: int = 48,
                        columns: int = 8, network: str = "CNN") -> Path:
    """The faces where human and `network` disagree, each with its truth, the human's and the network's answer."""
    from ferkit.visualize import plt, save

    count = len(truth)
    shown = min(count, max(0, limit))
    if shown == 0:
        fig, ax = plt.subplots(figsize=(6, 1.2))
        ax.axis("off")
        said = f"agree on all {total} faces" if count == 0 else f"disagree on {count} of {total} faces (none shown)"
        ax.text(0.5, 0.5, f"the human and the {network} {said}", ha="center", va="center")
        return save(fig, path)
    cols = min(columns, shown)
    rows = math.ceil(shown / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.6, rows * 2.15), squeeze=False)
    for k, ax in enumerate(axes.ravel()):
        ax.set_xticks([])
        ax.set_yticks([])
        if k >= shown:
            ax.axis("off")
            continue
        ax.imshow(images[k], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        mark = {True: "right", False: "wrong"}
        ax.set_title(f"#{index[k]} truth {EMOTIONS[truth[k]]}\n"
                     f"human {EMOTIONS[human[k]]} ({mark[bool(human[k] == truth[k])]})\n"
                     f"{network} {EMOTIONS[cnn[k]]} ({mark[bool(cnn[k] == truth[k])]})", fontsize=6.5)
    more = f" (the first {shown} shown)" if shown < count else ""
    fig.suptitle(f"The {count} of {total} faces where the human and the {network} disagree{more} "
                 "(#: the face's index in labels.csv)", fontsize=10)
    return save(fig, path)
