"""Figures: sample faces, class balance, confusion matrices, learning curves, each written as one PNG;
`confusion_panel` draws one confusion matrix on an axis, for the compare and report figures."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")  # figures are files; no display is needed or wanted
import matplotlib.ticker  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ferkit.data import EMOTIONS, SPLITS  # noqa: E402
from ferkit.fileio import atomic_path  # noqa: E402


def save(fig: plt.Figure, path: str | os.PathLike, dpi: int = 150) -> Path:
    """Write `fig` atomically in the format its suffix names (PNG without one) and close it."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path


def sample_grid(images: np.ndarray, labels: np.ndarray, path: str | os.PathLike, per_class: int = 8,
                seed: int = 0, title: str = "FER2013 training faces, a row per emotion") -> Path:
    """A row per emotion of `per_class` random faces of that class, labelled."""
    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(len(EMOTIONS), per_class, figsize=(per_class * 0.9 + 1.2, len(EMOTIONS) * 0.95))
    for row, name in enumerate(EMOTIONS):
        pool = np.flatnonzero(labels == row)
        chosen = rng.choice(pool, size=min(per_class, len(pool)), replace=False) if len(pool) else []
        for col in range(per_class):
            ax = axes[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            if col < len(chosen):
                ax.imshow(images[chosen[col]], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            else:  # not axis("off"): that would hide the row's label too, when a class has no face at all
                for spine in ax.spines.values():
                    spine.set_visible(False)
        label = f"{row} {name}" if len(pool) else f"{row} {name}\n(none)"
        axes[row, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=10)
    fig.suptitle(title, fontsize=11)
    return save(fig, path)


def class_balance(counts: dict[str, Sequence[int]], path: str | os.PathLike) -> Path:
    """Grouped bars of per-split class counts, each bar labelled with its count and share."""
    fig, ax = plt.subplots(figsize=(9, 3.6))
    x = np.arange(len(EMOTIONS))
    names = [s for s in SPLITS if s in counts]
    width = 0.8 / max(1, len(names))
    for i, split in enumerate(names):
        values = np.asarray(counts[split])
        bars = ax.bar(x + (i - (len(names) - 1) / 2) * width, values, width, label=f"{split} ({values.sum():,})")
        share = values / max(1, values.sum())
        for bar, value, frac in zip(bars, values, share):
            ax.annotate(f"{value}\n{frac:.0%}" if i == 0 else f"{value}", (bar.get_x() + bar.get_width() / 2, value),
                        ha="center", va="bottom", fontsize=6)
    ax.set_xticks(x, EMOTIONS)
    ax.set_ylabel("faces")
    training = np.asarray(counts.get("Training", [0] * len(EMOTIONS)))
    rare = [name for name, n in zip(EMOTIONS, training) if 0 < n < 0.05 * training.sum()]
    ax.set_title("Class balance per split" + (f" ({', '.join(rare)} {'is' if len(rare) == 1 else 'are'} rare: "
                                              "weigh it in training)" if rare else ""))
    ax.legend(fontsize=8)
    ax.margins(y=0.18)
    return save(fig, path)


def confusion_matrices(matrix: np.ndarray, path: str | os.PathLike, title: str = "") -> Path:
    """Counts and row-normalised (recall) confusion matrices side by side."""
    matrix = np.asarray(matrix)
    totals = matrix.sum(axis=1)
    normalised = matrix / np.maximum(1, totals[:, None])
    # a class without faces has no recall: its row-normalised cells are "-", not 0.00 (which reads as recall 0)
    rows = [name if total else f"{name} (none)" for name, total in zip(EMOTIONS, totals)]
    fig, axes = plt.subplots(1, 2, figsize=(11.5, 4.6))
    fig.subplots_adjust(wspace=0.5)  # room for the second panel's row names beside the first one's colour bar
    for ax, data, fmt, name in ((axes[0], matrix, "d", "counts"), (axes[1], normalised, ".2f", "row-normalised (recall)")):
        im = ax.imshow(data, cmap="Blues", vmin=0)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        for (r, c), v in np.ndenumerate(data):
            text = "-" if data is normalised and not totals[r] else format(v, fmt)
            ax.text(c, r, text, ha="center", va="center", fontsize=7,
                    color="white" if v > data.max() * 0.6 else "black")
        ax.set_xticks(range(len(EMOTIONS)), EMOTIONS, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(EMOTIONS)), rows, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(name, fontsize=10)
    if title:
        fig.suptitle(title, fontsize=11)
    return save(fig, path)


def confusion_panel(ax: Any, counts: np.ndarray, xlabel: str = "predicted", row_totals: bool = False,
                    fontsize: float = 8) -> Any:
    """One confusion matrix (rows: truth) on `ax`, coloured by the share of the true class on a 0-1
    scale, each non-empty cell showing its count and share; returns the image for a colour bar."""
    counts = np.asarray(counts)
    share = counts / np.maximum(1, counts.sum(axis=1, keepdims=True))
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for (r, c), count in np.ndenumerate(counts):
        if count:
            ax.text(c, r, f"{count}\n{share[r, c]:.0%}", ha="center", va="center", fontsize=fontsize - 1,
                    linespacing=1.1, color="white" if share[r, c] > 0.55 else "black")
    rows = [f"{name} ({int(counts[i].sum())})" for i, name in enumerate(EMOTIONS)] if row_totals else EMOTIONS
    ax.set_xticks(range(len(EMOTIONS)), EMOTIONS, rotation=40, ha="right", fontsize=fontsize)
    ax.set_yticks(range(len(EMOTIONS)), rows, fontsize=fontsize)
    ax.set_xlabel(xlabel, fontsize=fontsize + 0.5)
    ax.set_ylabel("true", fontsize=fontsize + 0.5)
    return im


def curve_notes(config: dict[str, Any]) -> dict[str, Any]:
    """What learning_curves says about how a run measured its curves, from the run's config (as saved)."""
    return {"augmented": bool(config.get("augment", True)), "label_smoothing": float(config.get("label_smoothing") or 0),
            "class_weighted": config.get("imbalance") == "weighted_loss", "val_limit": int(config.get("val_limit") or 0)}


def learning_curves(history: list[dict[str, float]], path: str | os.PathLike, best_epoch: int | None = None,
                    title: str = "", augmented: bool = True, mark: str = "best epoch {epoch}",
                    label_smoothing: float = 0.0, class_weighted: bool = False, val_limit: int = 0) -> Path:
    """Loss and accuracy per epoch on training and validation, `best_epoch` marked (labelled by `mark`:
    the best, or the evaluated checkpoint's epoch); `augmented` says
    whether the training batches were augmented (the loss panel says so, as it explains the gap).
    `label_smoothing` and `class_weighted` describe the training loss (the validation loss is the plain
    cross-entropy, so a smoothed training loss sits above it with no over- or under-fitting), and
    `val_limit` > 0 says that validation used only the first faces of PublicTest."""
    epochs = [row["epoch"] for row in history]
    validation = f"validation (first {val_limit} PublicTest faces)" if val_limit else "validation (PublicTest)"
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")  # room for a two-line panel title
    for ax, key, label in ((axes[0], "loss", "loss"), (axes[1], "acc", "accuracy")):
        ax.plot(epochs, [row[f"train_{key}"] for row in history], label="train", marker=".")
        ax.plot(epochs, [row[f"val_{key}"] for row in history], label=validation, marker=".")
        if best_epoch is not None:
            ax.axvline(best_epoch, color="gray", linestyle="--", linewidth=1, label=mark.replace("{epoch}", str(best_epoch)))
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))  # epochs are whole numbers
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    terms = ([f"label smoothing {label_smoothing:g}"] if label_smoothing else []) + \
        (["class weights"] if class_weighted else [])
    loss_title = "loss (train loss is on augmented batches)" if augmented else "loss"
    if terms:
        loss_title = (f"loss (train loss{' is on augmented batches' if augmented else ''} with {' and '.join(terms)};\n"
                      f"the validation loss is plain cross-entropy)")
    axes[0].set_title(loss_title, fontsize=9)
    axes[1].set_title("accuracy", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=11)
    return save(fig, path)
