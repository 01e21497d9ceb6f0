"""Tests of `ferkit compare`: the statistics against statsmodels, scipy and sklearn, then the whole
comparison on a tiny generated dataset with a tiny model trained in a few seconds."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import cohen_kappa_score, f1_score

from ferkit import cli, compare as cmp, config, label, train
from ferkit.data import EMOTIONS, SPLITS, load
from ferkit.errors import FerkitError
from ferkit.evaluate import compute_metrics, macro_f1

from conftest import Faces, write_export, write_fer_csv

statsmodels = pytest.importorskip("statsmodels", reason="statsmodels is a dev dependency: pip install -e .[dev]")
from statsmodels.stats.contingency_tables import mcnemar  # noqa: E402
from statsmodels.stats.proportion import proportion_confint  # noqa: E402


# ---------------------------------------------------------------------------------------------
# Statistics


@pytest.mark.parametrize("k, n", [(0, 1), (1, 1), (0, 10), (10, 10), (7, 20), (55, 100), (333, 1000), (1, 3)])
def test_wilson_interval_matches_statsmodels(k, n):
    low, high = cmp.wilson_interval(k, n)
    ref_low, ref_high = proportion_confint(k, n, alpha=0.05, method="wilson")
    assert low == pytest.approx(ref_low, abs=1e-12) and high == pytest.approx(ref_high, abs=1e-12)
    assert 0 <= low <= k / n <= high <= 1


def test_wilson_interval_known_value_and_bad_input():
    # at the ends the Wilson interval has a closed form: 0 of n -> (0, z^2 / (n + z^2)), n of n -> (n / (n + z^2), 1)
    z2 = 1.959963984540054 ** 2
    assert cmp.wilson_interval(0, 10) == pytest.approx((0.0, z2 / (10 + z2)))
    assert cmp.wilson_interval(10, 10) == pytest.approx((10 / (10 + z2), 1.0))
    assert cmp.wilson_interval(55, 100) == pytest.approx((0.4524, 0.6439), abs=1e-4)  # worked by hand
    with pytest.raises(ValueError):
        cmp.wilson_interval(0, 0)
    with pytest.raises(ValueError):
        cmp.wilson_interval(5, 4)


@pytest.mark.parametrize("seed", range(5))
def test_macro_f1_matches_sklearn_over_the_classes_present(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 60))
    y_true = rng.choice([0, 2, 3, 5, 6], size=n)  # 1 and 4 absent from the truth
    y_pred = np.where(rng.random(n) < 0.5, y_true, rng.integers(0, 7, size=n))
    expected = f1_score(y_true, y_pred, labels=np.unique(y_true), average="macro", zero_division=0)
    assert macro_f1(y_true, y_pred) == pytest.approx(expected, abs=1e-12)
    assert compute_metrics(y_true, y_pred)["macro_f1"] == macro_f1(y_true, y_pred)
    idx = rng.integers(0, n, size=(6, n))
    batch = cmp._macro_f1_resampled(y_true, y_pred, idx)
    for row, value in zip(idx, batch):
        t, p = y_true[row], y_pred[row]
        assert value == pytest.approx(f1_score(t, p, labels=np.unique(t), average="macro", zero_division=0), abs=1e-12)


def test_macro_f1_edge_cases():
    assert macro_f1(np.array([3, 3, 3]), np.array([3, 3, 3])) == 1.0
    assert macro_f1(np.array([3]), np.array([4])) == 0.0
    metrics = compute_metrics(np.array([3, 3, 0]), np.array([3, 3, 1]))
    assert metrics["macro_f1"] == 0.5 and metrics["macro_f1_classes"] == ["Angry", "Happy"]


def test_bootstrap_is_seeded_paired_and_brackets_the_estimate():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 7, size=200)
    good = np.where(rng.random(200) < 0.7, y_true, rng.integers(0, 7, size=200))
    poor = np.where(rng.random(200) < 0.3, y_true, rng.integers(0, 7, size=200))
    first = cmp.bootstrap(y_true, {"good": good, "poor": poor}, resamples=500, seed=3, chunk=128)
    again = cmp.bootstrap(y_true, {"good": good, "poor": poor}, resamples=500, seed=3)
    other = cmp.bootstrap(y_true, {"good": good, "poor": poor}, resamples=500, seed=4)
    for name in ("good", "poor"):
        for metric in ("accuracy", "macro_f1"):
            assert first[name][metric].shape == (500,)
            assert np.array_equal(first[name][metric], again[name][metric])  # chunking does not matter either
            assert not np.array_equal(first[name][metric], other[name][metric])
    low, high = cmp.percentile_interval(first["good"]["accuracy"])
    assert low < np.mean(good == y_true) < high
    low, high = cmp.percentile_interval(first["good"]["macro_f1"])
    assert low < macro_f1(y_true, good) < high
    # paired: the same resamples for both, so one predictor copied gives identical draws
    twin = cmp.bootstrap(y_true, {"a": good, "b": good.copy()}, resamples=50, seed=1)
    assert np.array_equal(twin["a"]["macro_f1"], twin["b"]["macro_f1"])
    # the accuracy samples are the fractions correct of resamples drawn by default_rng(seed)
    idx = np.random.default_rng(3).integers(0, 200, size=(128, 200))
    assert np.allclose(first["good"]["accuracy"][:128], (good[idx] == y_true[idx]).mean(axis=1))


def test_bootstrap_edges_one_face_one_resample_and_a_class_seen_once():
    one = cmp.bootstrap([3], {"a": [3], "b": [4]}, resamples=1)
    assert (one["a"]["accuracy"].tolist(), one["a"]["macro_f1"].tolist()) == ([1.0], [1.0])
    assert (one["b"]["accuracy"].tolist(), one["b"]["macro_f1"].tolist()) == ([0.0], [0.0])
    for faces, resamples in (([], 5), ([3], 0)):
        with pytest.raises(ValueError, match="at least one face and one resample"):
            cmp.bootstrap(faces, {"a": faces}, resamples=resamples)
    y_true, y_pred = np.array([0, 1, 1, 2]), np.array([1, 1, 1, 2])
    by_default, seeded = (cmp.bootstrap(y_true, {"a": y_pred}, resamples=40, **kw)["a"]["macro_f1"]
                          for kw in ({}, {"seed": 0}))
    assert np.array_equal(by_default, seeded)
    # Angry and Surprise are each the truth of one face: they count in the macro average like Disgust
    expected = f1_score(y_true, y_pred, labels=[0, 1, 2], average="macro", zero_division=0)
    assert cmp._macro_f1_resampled(y_true, y_pred, np.array([[0, 1, 2, 3]]))[0] == pytest.approx(expected)


@pytest.mark.parametrize("both, first_only, second_only, neither", [
    (10, 0, 0, 5), (10, 5, 1, 4), (50, 12, 3, 8), (3, 0, 7, 1), (0, 20, 20, 0), (40, 1, 0, 2), (5, 30, 9, 2),
])
def test_mcnemar_exact_matches_statsmodels(both, first_only, second_only, neither):
    first = np.array([1] * both + [1] * first_only + [0] * second_only + [0] * neither, bool)
    second = np.array([1] * both + [0] * first_only + [1] * second_only + [0] * neither, bool)
    result = cmp.mcnemar_exact(first, second)
    assert (result["both_correct"], result["only_first_correct"], result["only_second_correct"],
            result["both_wrong"]) == (both, first_only, second_only, neither)
    reference = mcnemar([[both, first_only], [second_only, neither]], exact=True)
    assert result["p_value"] == pytest.approx(reference.pvalue, rel=1e-9, abs=1e-15)


def test_mcnemar_known_value():
    # 9 discordant pairs split 8 to 1: p = 2 * P(X <= 1 | Bin(9, 1/2)) = 2 * 10 / 512
    first = np.array([1] * 8 + [0] * 1, bool)
    assert cmp.mcnemar_exact(first, ~first)["p_value"] == pytest.approx(20 / 512)


def test_kappa_matches_sklearn_and_is_none_where_undefined():
    rng = np.random.default_rng(2)
    a = rng.integers(0, 7, size=80)
    b = np.where(rng.random(80) < 0.6, a, rng.integers(0, 7, size=80))
    assert cmp.kappa(a, b) == pytest.approx(cohen_kappa_score(a, b))
    assert cmp.kappa(a, a) == pytest.approx(1.0)
    assert cmp.kappa([2, 2, 2], [2, 2, 2]) is None


# ---------------------------------------------------------------------------------------------
# The comparison end to end


def write_csv(path: Path, seed: int = 0, private: int = 40) -> np.ndarray:
    """A FER2013 CSV: 64 Training, 32 PublicTest and `private` PrivateTest random faces; returns the labels."""
    rng = np.random.default_rng(seed)
    splits = np.concatenate([np.full(64, 0), np.full(32, 1), np.full(private, 2)])
    labels = rng.integers(0, len(EMOTIONS), size=len(splits))
    images = rng.integers(0, 256, size=(len(splits), 48, 48), dtype=np.uint8)
    write_fer_csv(path, images, labels, [SPLITS[s] for s in splits])
    return labels


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A tiny dataset, a model trained on it for one epoch, and 15 of a 20-face sample labelled."""
    from ferkit.train import train

    root = tmp_path_factory.mktemp("compare")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FERKIT_CACHE", str(root / "cache"))
        data = root / "fer.csv"
        truth = write_csv(data)
        cfg = config.resolve(overrides={"epochs": 1, "train_limit": 64, "val_limit": 32, "batch_size": 32,
                                        "widths": "4,8", "eval_batch_size": 64, "device": "cpu"})
        train(data, root / "run", cfg, progress=False)
        labels_csv = root / "labels.csv"
        session = label.LabelSession.open(data, labels_csv, n=20, seed=1)
        lines = session.origins
        human = []
        for k in range(15):  # right on the even faces, a fixed wrong answer on the odd ones
            true = int(truth[lines[k] - 2])
            answer = true if k % 2 == 0 else (true + 1 + k % 5) % 7
            session.answer(k, answer, 0.5 + k / 10)
            human.append(answer)
        yield {"root": root, "data": data, "run": root / "run", "labels": labels_csv, "truth": truth,
               "lines": lines[:15], "human": np.array(human)}


@pytest.fixture(autouse=True)
def _private_cache(request, tmp_path, monkeypatch):
    cache = request.getfixturevalue("study")["root"] / "cache" if "study" in request.fixturenames \
        else tmp_path / "cache"
    monkeypatch.setenv("FERKIT_CACHE", str(cache))


def test_compare_end_to_end(study, tmp_path, capsys):
    from ferkit.evaluate import evaluate

    out = tmp_path / "cmp"
    result = cmp.compare(study["run"], study["labels"], out, data=study["data"], resamples=400, seed=0)
    y_true = study["truth"][np.array(study["lines"]) - 2]
    human = study["human"]
    assert (result["n"], result["sample_n"], result["complete"]) == (15, 20, False)
    assert result["human"]["correct"] == int(np.sum(human == y_true)) == 8
    assert result["human"]["accuracy"] == pytest.approx(8 / 15)
    assert result["human"]["accuracy_ci95"] == pytest.approx(list(proportion_confint(8, 15, method="wilson")))
    assert result["human"]["macro_f1"] == pytest.approx(
        f1_score(y_true, human, labels=np.unique(y_true), average="macro", zero_division=0))
    assert result["macro_f1_classes"] == [EMOTIONS[i] for i in np.unique(y_true)]
    for who in ("human", "cnn"):
        low, high = result[who]["macro_f1_ci95"]
        assert 0 <= low <= high <= 1
        assert np.array(result[who]["confusion_matrix"]).sum() == 15

    # The CNN's answers are the run's own predictions on those faces (as `ferkit evaluate` makes them).
    evaluate(study["run"], data=study["data"], out=tmp_path / "eval", device="cpu")
    with open(tmp_path / "eval" / "predictions.csv", newline="") as f:
        evaluated = {int(r["line"]): int(r["pred"]) for r in csv.DictReader(f)}
    with open(out / "faces.csv", newline="") as f:
        faces = list(csv.DictReader(f))
    assert [int(r["line"]) for r in faces] == study["lines"]
    cnn = np.array([EMOTIONS.index(r["cnn"]) for r in faces])
    assert cnn.tolist() == [evaluated[line] for line in study["lines"]]
    assert [r["human"] for r in faces] == [EMOTIONS[h] for h in human]
    assert result["cnn"]["accuracy"] == pytest.approx(np.mean(cnn == y_true))

    assert result["kappa"]["human_vs_truth"] == pytest.approx(cohen_kappa_score(human, y_true))
    assert result["kappa"]["human_vs_cnn"] == pytest.approx(cohen_kappa_score(human, cnn))
    human_right, cnn_right = human == y_true, cnn == y_true
    table = [[int(np.sum(human_right & cnn_right)), int(np.sum(human_right & ~cnn_right))],
             [int(np.sum(~human_right & cnn_right)), int(np.sum(~human_right & ~cnn_right))]]
    assert result["mcnemar"]["p_value"] == pytest.approx(mcnemar(table, exact=True).pvalue)
    assert result["mcnemar"]["human_correct_cnn_wrong"] == table[0][1]
    assert result["disagreements"] == int(np.sum(human != cnn))
    assert result["agreement_human_cnn"] == pytest.approx(np.mean(human == cnn))
    seconds = 0.5 + np.arange(15) / 10  # as the study fixture answered
    assert result["human_seconds"] == pytest.approx(
        {"mean": seconds.mean(), "median": np.median(seconds), "total": seconds.sum()})
    assert result["model"]["tta"] == "none"  # TTA only when asked
    difference = result["difference"]["accuracy"]["human_minus_cnn"]
    assert difference == pytest.approx(np.mean(human_right) - np.mean(cnn_right))

    assert json.loads((out / "comparison.json").read_text()) == json.loads(json.dumps(result))
    from ferkit.train import checkpoint_sha256  # what lets `report --compare` tell whose model this is
    assert result["model"]["checkpoint_sha256"] == checkpoint_sha256(study["run"])
    for name in ("confusion_matrices.png", "disagreements.png"):
        with Image.open(out / name) as image:
            assert image.format == "PNG" and image.size[0] > 300

    # The command line gives the same numbers for the same bootstrap seed.
    assert cli.main(["compare", str(study["run"]), str(study["labels"]), "--data", str(study["data"]),
                     "--out", str(tmp_path / "cli"), "--bootstrap", "400", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "human accuracy 0.533" in printed and "McNemar exact" in printed
    again = json.loads((tmp_path / "cli" / "comparison.json").read_text())
    assert again["human"] == json.loads(json.dumps(result["human"]))
    assert again["cnn"] == json.loads(json.dumps(result["cnn"]))


def test_compare_refuses_no_answers_and_other_data(study, tmp_path, capsys):
    empty = tmp_path / "empty.csv"
    label.LabelSession.open(study["data"], empty, n=5, seed=0)
    with pytest.raises(FerkitError, match="no answers"):
        cmp.compare(study["run"], empty, tmp_path / "out", data=study["data"])
    assert not (tmp_path / "out").exists()  # a refused comparison leaves no empty folder behind
    with pytest.raises(FerkitError, match="--bootstrap 0: use at least 1 resample"):
        cmp.compare(study["run"], study["labels"], tmp_path / "out", data=study["data"], resamples=0)
    assert cli.main(["compare", str(study["run"]), str(empty), "--data", str(study["data"]),
                     "--out", str(tmp_path / "out")]) == 2
    assert "no answers" in capsys.readouterr().err

    other = tmp_path / "other.csv"
    write_csv(other, seed=9)
    with pytest.raises(FerkitError, match="than the data whose faces .*labels.csv labels .*pass the file that was labelled"):
        cmp.compare(study["run"], study["labels"], tmp_path / "out", data=other)  # labels of fer.csv
    labels_other = tmp_path / "labels-other.csv"
    session = label.LabelSession.open(other, labels_other, n=3, seed=0)
    session.answer(0, 1, 1.0)
    with pytest.raises(FerkitError, match="other faces, labels or splits than the data the run .* was trained on"):
        cmp.compare(study["run"], labels_other, tmp_path / "out", data=other)

    missing = tmp_path / "nolabels.csv"
    with pytest.raises(FerkitError, match="no such file"):
        cmp.compare(study["run"], missing, tmp_path / "out", data=study["data"])
    assert load(study["data"]).sha256 == json.loads(label.sidecar_path(study["labels"]).read_text())["data_sha256"]


def test_compare_finds_the_labelled_data_without_data(study, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the sidecar's path is absolute: found from any working folder
    result = cmp.compare(study["run"], study["labels"], tmp_path / "out", resamples=1)
    assert result["data"]["path"] == str(study["data"]) and result["n"] == 15
    assert result["bootstrap"] == {"resamples": 1, "seed": 0, "confidence": 0.95}  # one resample is enough to run


def test_compare_without_data_names_the_files_it_looked_for(study, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(study["run"], run)
    labels_csv = tmp_path / "labels.csv"
    shutil.copy(study["labels"], labels_csv)
    shutil.copy(label.sidecar_path(study["labels"]), label.sidecar_path(labels_csv))
    gone = str(tmp_path / "moved.csv")
    for path, keys in ((label.sidecar_path(labels_csv), ("data",)), (run / "run.json", ("data", "path"))):
        record = json.loads(path.read_text())
        (record[keys[0]] if len(keys) == 2 else record)[keys[-1]] = gone
        path.write_text(json.dumps(record))
    with pytest.raises(FerkitError, match=f"labelled from \\({gone} and {gone} no longer exist\\); pass --data"):
        cmp.compare(run, labels_csv, tmp_path / "out")
    (run / "run.json").write_text(json.dumps(dict(json.loads((study["run"] / "run.json").read_text()))))
    assert cmp.compare(run, labels_csv, tmp_path / "out", resamples=20)["n"] == 15  # the run's file, as recorded


def test_compare_accepts_a_copy_of_the_labelled_faces(study, tmp_path):
    import gzip

    packed = tmp_path / "fer.csv.gz"
    packed.write_bytes(gzip.compress(study["data"].read_bytes()))
    copy = cmp.compare(study["run"], study["labels"], tmp_path / "copy", data=packed, resamples=50)
    original = cmp.compare(study["run"], study["labels"], tmp_path / "original", data=study["data"], resamples=50)
    assert copy["human"] == original["human"] and copy["cnn"] == original["cnn"]


def test_compare_accepts_the_image_export_of_the_labelled_csv(study, tmp_path):
    """Refused before: "the sample is recorded by line, but the data is an image-folder export"."""
    dataset = load(study["data"])
    ids = np.zeros(len(dataset), int)
    for split in range(len(SPLITS)):
        ids[dataset.splits == split] = np.arange(np.sum(dataset.splits == split))
    (tmp_path / "export").mkdir()
    export = write_export(tmp_path / "export", Faces(dataset.images, dataset.labels, dataset.splits, ids), "folder")
    copy = cmp.compare(study["run"], study["labels"], tmp_path / "copy", data=export, resamples=50)
    original = cmp.compare(study["run"], study["labels"], tmp_path / "original", data=study["data"], resamples=50)
    assert copy["human"] == original["human"] and copy["cnn"] == original["cnn"]
    with open(tmp_path / "copy" / "faces.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["path"] for row in rows] == load(export).origins(label.read_labels(study["labels"], dataset).rows)


def test_compare_never_writes_over_the_labels(study, tmp_path):
    import shutil

    folder = tmp_path / "study"
    folder.mkdir()
    labels = folder / "faces.csv"  # the name of a file compare writes
    shutil.copy(study["labels"], labels)
    shutil.copy(label.sidecar_path(study["labels"]), label.sidecar_path(labels))
    before = labels.read_bytes()
    with pytest.raises(FerkitError, match="its faces.csv, which compare writes, is the labels"):
        cmp.compare(study["run"], labels, folder, data=study["data"], resamples=50)
    assert labels.read_bytes() == before
    result = cmp.compare(study["run"], labels, folder / "out", data=study["data"], resamples=50)
    assert result["model"]["checkpoint_sha256"] == train.checkpoint_sha256(study["run"])


def test_disagreement_figure_when_they_always_agree(tmp_path):
    path = cmp.disagreement_figure(np.zeros((0, 48, 48), np.uint8), np.zeros(0, int), np.zeros(0, int),
                                   np.zeros(0, int), [], tmp_path / "d.png", total=12)
    with Image.open(path) as image:
        assert image.format == "PNG"


def disagreements(count: int, total: int = 20, **kw):
    """The disagreement figure of `count` faces, the k-th of grey level k."""
    images = np.repeat(np.arange(count, dtype=np.uint8), 48 * 48).reshape(count, 48, 48)
    truth, human, cnn = np.zeros(count, int), np.zeros(count, int), np.ones(count, int)
    return cmp.disagreement_figure(images, truth, human, cnn, list(range(100, 100 + count)), Path("d.png"),
                                   total=total, **kw)


def test_disagreement_figure_shows_each_face_as_recorded(saved_figures):
    disagreements(0, total=12)
    assert saved_figures.pop().axes[0].texts[0].get_text() == "the human and the CNN agree on all 12 faces"
    disagreements(1)
    (fig,) = saved_figures
    (ax,) = fig.axes  # one face is one panel
    assert ax.get_title() == "#100 truth Angry\nhuman Angry (right)\nCNN Disgust (wrong)"
    assert (ax.images[0].norm.vmin, ax.images[0].norm.vmax) == (0, 255)  # grey levels as stored, not stretched
    assert fig._suptitle.get_text().startswith("The 1 of 20 faces where the human and the CNN disagree (#")

    disagreements(10)
    panels = saved_figures[1].axes
    assert len(panels) == 16 and [ax.axison for ax in panels] == [True] * 10 + [False] * 6  # two rows of 8
    assert [ax.get_title().split()[0] for ax in panels[:10]] == [f"#{i}" for i in range(100, 110)]
    assert "(the first" not in saved_figures[1]._suptitle.get_text()


def test_disagreement_figure_says_how_many_it_leaves_out(saved_figures):
    disagreements(10, limit=3)
    panels = saved_figures[0].axes
    assert len(panels) == 3  # one row as wide as the faces shown
    assert saved_figures[0]._suptitle.get_text().startswith("The 10 of 20 faces where the human and the CNN disagree "
                                                    "(the first 3 shown)")
    disagreements(10, limit=0, network="MLP")  # a count, not "they agree"
    said = saved_figures[1].axes[0].texts[0].get_text()
    assert said == "the human and the MLP disagree on 10 of 20 faces (none shown)"


def test_confusion_figure_sets_the_two_matrices_side_by_side(saved_figures):
    human, cnn = np.eye(7, dtype=int) * 3, np.ones((7, 7), int)
    cmp.confusion_figure(human, cnn, Path("c.png"), titles=("human: 1.000", "CNN: 0.143"), suptitle="on 21 faces")
    (fig,) = saved_figures
    left, right, colorbar = fig.axes
    titles = (left.get_title(), right.get_title(), fig._suptitle.get_text())
    assert titles == ("human: 1.000", "CNN: 0.143", "on 21 faces")
    assert [t.get_text() for t in left.get_yticklabels()][:2] == ["Angry (3)", "Disgust (3)"]  # row totals
    assert [t.get_text() for t in right.get_yticklabels()][:2] == ["Angry (7)", "Disgust (7)"]
    assert colorbar.get_ylabel() == "share of the true class"


def test_every_recorded_number_is_the_statistic_it_names(study, tmp_path, monkeypatch):
    from ferkit.evaluate import evaluate

    shown = {}
    figure = cmp.disagreement_figure
    monkeypatch.setattr(cmp, "disagreement_figure",
                        lambda images, truth, human, cnn, index, path, **kw: shown.update(
                            images=images, truth=truth, human=human, cnn=cnn, index=list(index))
                        or figure(images, truth, human, cnn, index, path, **kw))
    # the study's one-epoch CNN may answer one class only, where every kappa with it is 0: record the pairs
    monkeypatch.setattr(cmp, "kappa", lambda a, b: sorted([np.asarray(a).tolist(), np.asarray(b).tolist()]))
    result = cmp.compare(study["run"], study["labels"], tmp_path / "cmp", data=study["data"], tta=True,
                         resamples=300, seed=5)
    dataset = load(study["data"])
    rows = label.read_labels(study["labels"], dataset).rows
    y_true, human = dataset.labels[rows], study["human"]
    evaluated = evaluate(study["run"], data=study["data"], tta=True, out=tmp_path / "eval", device="cpu")
    assert result["model"]["tta"] == evaluated["tta"] != "none"  # --tta reaches the CNN
    with open(tmp_path / "eval" / "predictions.csv", newline="") as f:
        by_line = {int(r["line"]): int(r["pred"]) for r in csv.DictReader(f)}
    cnn = np.array([by_line[line] for line in study["lines"]])

    boot = cmp.bootstrap(y_true, {"human": human, "cnn": cnn}, resamples=300, seed=5)
    for who, answers in (("human", human), ("cnn", cnn)):
        assert result[who]["macro_f1_ci95"] == pytest.approx(np.percentile(boot[who]["macro_f1"], [2.5, 97.5]))
    for metric in ("accuracy", "macro_f1"):
        diff = boot["human"][metric] - boot["cnn"][metric]
        assert result["difference"][metric]["ci95"] == pytest.approx(np.percentile(diff, [2.5, 97.5]))
    assert result["difference"]["macro_f1"]["human_minus_cnn"] == pytest.approx(
        macro_f1(y_true, human) - macro_f1(y_true, cnn))
    pairs = {"human_vs_truth": (human, y_true), "cnn_vs_truth": (cnn, y_true), "human_vs_cnn": (human, cnn)}
    assert result["kappa"] == {key: sorted([a.tolist(), b.tolist()]) for key, (a, b) in pairs.items()}

    with open(tmp_path / "cmp" / "faces.csv", newline="") as f:
        faces = list(csv.DictReader(f))
    seconds = [0.5 + k / 10 for k in range(15)]  # as the study fixture answered
    assert [(int(r["human_correct"]), int(r["cnn_correct"]), float(r["seconds"])) for r in faces] == [
        (int(h == t), int(c == t), pytest.approx(s)) for h, c, t, s in zip(human, cnn, y_true, seconds)]

    apart = np.flatnonzero(human != cnn)  # the figure shows the faces where they disagree, in sample order
    assert shown["index"] == apart.tolist()
    assert np.array_equal(shown["images"], dataset.images[rows[apart]])
    assert (shown["truth"].tolist(), shown["human"].tolist(), shown["cnn"].tolist()) == (
        y_true[apart].tolist(), human[apart].tolist(), cnn[apart].tolist())


def test_an_mlp_run_is_named_mlp_not_cnn(study, tmp_path, capsys, monkeypatch):
    from ferkit.cli import main
    from ferkit.train import train

    cfg = config.resolve(overrides={"model": "mlp", "hidden": "8", "epochs": 1, "train_limit": 64, "val_limit": 32,
                                    "batch_size": 32, "device": "cpu"})
    train(study["data"], tmp_path / "mlp", cfg, progress=False)
    drawn = []
    monkeypatch.setattr(cmp, "confusion_figure", lambda *a, titles, suptitle, **k: drawn.append((titles, suptitle)))
    assert main(["compare", str(tmp_path / "mlp"), str(study["labels"]), "--out", str(tmp_path / "cmp"),
                 "--data", str(study["data"]), "--bootstrap", "20"]) == 0
    out = capsys.readouterr().out
    assert "  MLP   accuracy" in out and "human-MLP" in out and "CNN" not in out
    (panels, suptitle), = drawn
    assert panels[1].startswith("MLP: accuracy") and suptitle.startswith("Human versus MLP on the same 15")


def test_a_comparison_cut_short_leaves_no_earlier_numbers_beside_its_figures(study, tmp_path, monkeypatch):
    out = tmp_path / "cmp"
    cmp.compare(study["run"], study["labels"], out, data=study["data"], resamples=20, seed=0)
    assert (out / "comparison.json").exists()

    def cut_short(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cmp, "disagreement_figure", cut_short)
    with pytest.raises(KeyboardInterrupt):
        cmp.compare(study["run"], study["labels"], out, data=study["data"], resamples=20, seed=1)
    assert not (out / "comparison.json").exists()  # report would take the new figures for the old numbers
