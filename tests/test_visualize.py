"""What the evaluation figures say: the learning curves' loss panel and the row-normalised confusion matrix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ferkit import config, train, visualize
from ferkit.data import EMOTIONS

HISTORY = [{"epoch": e, "train_loss": 1.5 - e / 10, "train_acc": 0.5, "val_loss": 1.2, "val_acc": 0.55,
            "val_macro_f1": 0.5, "lr": 0.05, "seconds": 10.0} for e in (1, 2, 3)]


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_loss_panel_says_the_training_loss_is_label_smoothed(tmp_path, saved_figures, smoothing):
    # A label-smoothed training loss sits above the plain validation loss even without any fit gap
    # (on the study run: 1.170 train, 1.027 validation, 1.230 validation with the same smoothing)
    visualize.learning_curves(HISTORY, tmp_path / "c.png", best_epoch=2, label_smoothing=smoothing)
    title = saved_figures[0].axes[0].get_title()
    assert ("label smoothing 0.1" in title) is bool(smoothing)
    assert "augmented" in title
    assert all(float(t).is_integer() for t in saved_figures[0].axes[0].get_xticks())  # whole epochs


def test_loss_panel_names_class_weights_and_a_validation_limit(tmp_path, saved_figures):
    visualize.learning_curves(HISTORY, tmp_path / "c.png", augmented=False, class_weighted=True, val_limit=500)
    title = saved_figures[0].axes[0].get_title()
    assert "class weights" in title and "augmented" not in title
    assert saved_figures[0].axes[0].get_legend_handles_labels()[1][1] == "validation (first 500 PublicTest faces)"


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


def test_row_normalised_matrix_marks_a_class_without_faces(tmp_path, saved_figures):
    matrix = np.diag([5, 0, 3, 4, 2, 6, 7])
    matrix[0, 2] = 1
    visualize.confusion_matrices(matrix, tmp_path / "m.png")
    ax = next(a for a in saved_figures[0].axes if a.get_title() == "row-normalised (recall)")
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


# ---------------------------------------------------------------------------------------------
# What each figure shows (a mutation pass over visualize.py found these unchecked)


def test_save_writes_the_format_its_name_asks_for_and_returns_the_path(tmp_path):
    for name, magic in (("f.png", b"\x89PNG"), ("f.pdf", b"%PDF"), ("f", b"\x89PNG")):
        fig, _ = visualize.plt.subplots()
        assert visualize.save(fig, tmp_path / name) == tmp_path / name
        assert (tmp_path / name).read_bytes().startswith(magic), name


def test_sample_grid_shows_distinct_faces_of_each_row_s_class(tmp_path, saved_figures):
    labels = np.repeat(np.arange(7), [12, 3, 12, 12, 12, 12, 12])  # Disgust: fewer faces than columns
    images = np.repeat(np.arange(len(labels), dtype=np.uint8), 48 * 48).reshape(-1, 48, 48)  # face i is grey i
    visualize.sample_grid(images, labels, tmp_path / "s.png", per_class=8)
    visualize.sample_grid(images, labels, tmp_path / "s0.png", per_class=8, seed=0)

    def faces_in(fig) -> list:  # each cell's face, by its grey level; None for an empty cell
        return [int(ax.images[0].get_array()[0, 0]) if ax.images else None for ax in fig.axes]

    cells = faces_in(saved_figures[0])
    for row in range(7):
        faces = cells[row * 8:(row + 1) * 8]
        drawn = [face for face in faces if face is not None]
        assert len(drawn) == len(set(drawn)) == (3 if row == 1 else 8)
        assert all(labels[face] == row for face in drawn)
        assert faces[:len(drawn)] == drawn  # the faces first, then the empty cells
    assert faces_in(saved_figures[1]) == cells  # seed 0 unless given
    ax = saved_figures[0].axes[0]
    assert (ax.images[0].norm.vmin, ax.images[0].norm.vmax) == (0, 255)
    assert saved_figures[0].axes[8 + 7].spines["left"].get_visible() is False  # an empty cell has no frame


def test_class_balance_bars_and_their_labels(tmp_path, saved_figures):
    visualize.class_balance({"Training": [30, 10, 20, 40, 0, 0, 0], "PrivateTest": [1, 0, 1, 1, 0, 0, 1]},
                            tmp_path / "b.png")
    ax = saved_figures[0].axes[0]
    bars = ax.patches
    assert len(bars) == 14  # two splits of 7 classes: PublicTest is not drawn
    centres = [bar.get_x() + bar.get_width() / 2 for bar in bars]
    assert np.allclose(centres[:7], np.arange(7) - 0.2) and np.allclose(centres[7:], np.arange(7) + 0.2)
    assert all(bar.get_width() == pytest.approx(0.4) for bar in bars)
    texts = [t.get_text() for t in ax.texts]
    assert texts[:2] == ["30\n30%", "10\n10%"] and texts[7:9] == ["1", "0"]  # shares on the first split only
    assert ax.texts[0].xy == pytest.approx((centres[0], 30))
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["Training (100)", "PrivateTest (4)"]
    assert ax.get_title() == "Class balance per split"  # Sad, Surprise and Neutral are empty, not rare
    visualize.class_balance({"Training": [100, 5, 100, 100, 100, 100, 100]}, tmp_path / "c.png")
    assert "(Disgust is rare" in saved_figures[1].axes[0].get_title()  # 5 of 605: under 5%
    visualize.class_balance({"PublicTest": [1] * 7}, tmp_path / "d.png")  # no Training counts: nothing rare
    assert saved_figures[2].axes[0].get_title() == "Class balance per split"
    visualize.class_balance({"Training": [5, 19, 19, 19, 19, 19, 0], "PublicTest": [1, 0, 0, 0, 0, 0, 0]},
                            tmp_path / "e.png")
    assert saved_figures[3].axes[0].get_title() == "Class balance per split"  # 5 of 100 is not under 5%
    assert saved_figures[3].axes[0].texts[7].get_text() == "1"
    visualize.class_balance({"Training": [1, 0, 0, 0, 0, 0, 40]}, tmp_path / "f.png")
    assert "(Angry is rare" in saved_figures[4].axes[0].get_title()  # one face is rare too
    visualize.class_balance({"Training": [1, 0, 0, 0, 0, 0, 0]}, tmp_path / "g.png")
    assert saved_figures[5].axes[0].texts[0].get_text() == "1\n100%"


def test_confusion_matrices_recall_colours_and_title(tmp_path, saved_figures):
    matrix = np.diag([1, 2, 3, 4, 5, 6, 7])
    matrix[0, 1] = 3  # Angry: 1 of 4 right
    visualize.confusion_matrices(matrix, tmp_path / "m.png", title="a run")
    fig = saved_figures[0]
    counts, recall = (ax for ax in fig.axes if ax.get_title())
    assert len(fig.axes) == 4 and fig._suptitle.get_text() == "a run"  # two panels, two colour bars
    angry = [t.get_text() for t in recall.texts][:7]
    assert angry[:2] == ["0.25", "0.75"]
    assert [t.get_text() for t in recall.texts][7 + 1] == "1.00"  # Disgust: 2 of 2
    colours = {t.get_text(): t.get_color() for t in counts.texts}
    assert colours["7"] == "white" and colours["1"] == "black"  # dark cells get white text
    assert counts.images[0].norm.vmin == 0
    visualize.confusion_matrices(matrix, tmp_path / "n.png")
    assert saved_figures[1]._suptitle is None


def test_confusion_panel_shares_per_true_class():
    fig, ax = visualize.plt.subplots()
    counts = np.zeros((7, 7), int)
    counts[0, :2] = [3, 1]  # Angry: 75% and 25%
    counts[3, 3] = 10
    counts[4, 5] = 1  # Sad: one face, taken for Surprise
    im = visualize.confusion_panel(ax, counts, row_totals=True)
    assert (im.norm.vmin, im.norm.vmax) == (0, 1)
    assert [t.get_text() for t in ax.texts] == ["3\n75%", "1\n25%", "10\n100%", "1\n100%"]  # empty cells: nothing
    assert [t.get_color() for t in ax.texts] == ["white", "black", "white", "white"]
    assert [t.get_text() for t in ax.get_yticklabels()][:4] == ["Angry (4)", "Disgust (0)", "Fear (0)", "Happy (10)"]
    assert ax.get_ylabel() == "true" and ax.texts[0].get_fontsize() == 7
    visualize.plt.close(fig)


def test_curve_notes_read_the_saved_config():
    assert visualize.curve_notes({}) == {"augmented": True, "label_smoothing": 0.0, "class_weighted": False,
                                         "val_limit": 0}
    assert visualize.curve_notes({"augment": False, "label_smoothing": 0.1, "imbalance": "weighted_loss",
                                  "val_limit": 500}) == {"augmented": False, "label_smoothing": 0.1,
                                                         "class_weighted": True, "val_limit": 500}
    assert visualize.curve_notes({"imbalance": "sampler", "label_smoothing": None, "val_limit": None})[
        "class_weighted"] is False


def test_learning_curves_defaults_and_title(tmp_path, saved_figures):
    visualize.learning_curves(HISTORY, tmp_path / "c.png")
    fig = saved_figures[0]
    assert len(fig.axes) == 2 and fig._suptitle is None
    assert fig.axes[0].get_title() == "loss (train loss is on augmented batches)"  # no smoothing nor weights
    assert fig.axes[0].get_legend_handles_labels()[1] == ["train", "validation (PublicTest)"]  # no best epoch
    visualize.learning_curves(HISTORY, tmp_path / "d.png", best_epoch=2, title="run r")
    assert saved_figures[1]._suptitle.get_text() == "run r"
    assert saved_figures[1].axes[1].get_legend_handles_labels()[1][-1] == "best epoch 2"
