"""What the evaluation figures say: the learning curves' loss panel and the row-normalised confusion matrix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ferkit import config, train, visualize
from ferkit.data import EMOTIONS

HISTORY = [{"epoch": e, "train_loss": 1.5 - e / 10, "train_acc": 0.5, "val_loss": 1.2, "val_acc": 0.55,
            "val_macro_f1": 0.5, "lr": 0.05, "seconds": 10.0} for e in (1, 2, 3)]


def _capture(monkeypatch) -> list:
    figures = []
    monkeypatch.setattr(visualize, "save", lambda fig, path: figures.append(fig) or Path(path))
    return figures


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_loss_panel_says_the_training_loss_is_label_smoothed(tmp_path, monkeypatch, smoothing):
    # A label-smoothed training loss sits above the plain validation loss even without any fit gap
    # (on the study run: 1.170 train, 1.027 validation, 1.230 validation with the same smoothing)
    figures = _capture(monkeypatch)
    visualize.learning_curves(HISTORY, tmp_path / "c.png", best_epoch=2, label_smoothing=smoothing)
    title = figures[0].axes[0].get_title()
    assert ("label smoothing 0.1" in title) is bool(smoothing)
    assert "augmented" in title
    assert all(float(t).is_integer() for t in figures[0].axes[0].get_xticks())  # whole epochs


def test_loss_panel_names_class_weights_and_a_validation_limit(tmp_path, monkeypatch):
    figures = _capture(monkeypatch)
    visualize.learning_curves(HISTORY, tmp_path / "c.png", augmented=False, class_weighted=True, val_limit=500)
    title = figures[0].axes[0].get_title()
    assert "class weights" in title and "augmented" not in title
    assert figures[0].axes[0].get_legend_handles_labels()[1][1] == "validation (first 500 PublicTest faces)"


def test_training_and_evaluation_pass_the_loss_of_the_run(tiny_csv, tmp_path, monkeypatch):
    from ferkit.evaluate import evaluate

    calls = []
    real = visualize.learning_curves
    monkeypatch.setattr(visualize, "learning_curves", lambda *a, **k: calls.append(k) or real(*a, **k))
    run = tmp_path / "r"
    train.train(tiny_csv, run, config.resolve(overrides={"widths": "8,16", "batch_size": 32, "eval_batch_size": 64,
                                                         "threads": 1, "epochs": 1, "train_limit": 64,
                                                         "label_smoothing": 0.2, "val_limit": 30}), progress=False)
    evaluate(run, split="test", device="cpu")
    assert [(k["label_smoothing"], k["val_limit"]) for k in calls] == [(0.2, 30), (0.2, 30)]


def test_row_normalised_matrix_marks_a_class_without_faces(tmp_path, monkeypatch):
    figures = _capture(monkeypatch)
    matrix = np.diag([5, 0, 3, 4, 2, 6, 7])
    matrix[0, 2] = 1
    visualize.confusion_matrices(matrix, tmp_path / "m.png")
    ax = next(a for a in figures[0].axes if a.get_title() == "row-normalised (recall)")
    disgust = [t.get_text() for t in ax.texts if round(t.get_position()[1]) == EMOTIONS.index("Disgust")]
    angry = [t.get_text() for t in ax.texts if round(t.get_position()[1]) == 0]
    assert disgust == ["-"] * 7  # no recall at all, not a recall of 0.00
    assert angry[:3] == ["0.83", "0.00", "0.17"]
    assert [t.get_text() for t in ax.get_yticklabels()][1] == "Disgust (none)"


def test_feature_figures_say_the_emotions_are_the_true_labels(tmp_path, monkeypatch):
    from ferkit import features

    figures = []
    monkeypatch.setattr(features, "save", lambda fig, path: figures.append(fig) or Path(path))
    rng = np.random.default_rng(0)
    labels, preds = np.arange(21) % 7, rng.integers(0, 7, 21)
    features.embedding_figure(rng.normal(size=(21, 2)), labels, preds, "PCA", 0.5, tmp_path / "e.png")
    legend = figures[0].legends[0]
    assert "true emotion" in legend.get_title().get_text()  # its counts are of the true labels
    assert "no TTA" in figures[0]._suptitle.get_text()
    stats = features.class_channel_stats(rng.random((21, 5)), labels, per_class=2)
    features.class_channels_figure(stats, tmp_path / "c.png", 21)
    assert "true label" in figures[1].axes[0].get_title()
