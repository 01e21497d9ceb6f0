"""Tests of `ferkit.features` and the `ferkit features` command.

A tiny CNN is trained for one epoch on a small generated dataset (random faces); the command runs
once on it and every test reads what it wrote. Grad-CAM is also checked on a hand-built model whose
logits look at one image quadrant only.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import time
from pathlib import Path

import matplotlib.colors
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ferkit import cli
from ferkit import config as configs
from ferkit import features as ffeatures
from ferkit.data import EMOTIONS, SPLITS
from ferkit.errors import FerkitError
from ferkit.features import (activation_maps, choose_faces, class_channel_stats, embed_2d, features, grad_cam,
                             mean_activation_map)
from ferkit.fileio import sha256_file
from ferkit.train import load_model, predict_proba, train

from conftest import write_fer_csv

PER_CLASS_TEST = 6  # PrivateTest faces per emotion in the generated data
N = 2  # faces per emotion drawn by the command
FIGURES = [f"{kind}_{name.lower()}.png" for name in EMOTIONS for kind in ("faces", "channels")] + \
    ["overview.png", "class_channels.png", "top_faces.png", "embedding.png"]


def make_csv(path: Path, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A FER2013 CSV (header 'emotion, Usage, pixels'): 64 Training, 32 PublicTest and 6 PrivateTest
    faces per emotion. Returns images, labels and splits in file order (row i is on line i + 2)."""
    rng = np.random.default_rng(seed)
    labels = np.concatenate([rng.integers(0, 7, 64), rng.integers(0, 7, 32),
                             np.repeat(np.arange(7), PER_CLASS_TEST)[rng.permutation(7 * PER_CLASS_TEST)]])
    splits = np.repeat([0, 1, 2], [64, 32, 7 * PER_CLASS_TEST])
    images = rng.integers(0, 256, size=(len(labels), 48, 48), dtype=np.uint8)
    # a bright blob whose place depends on the emotion, so that the model has something to see
    for i, label in enumerate(labels):
        y, x = 6 + 5 * int(label), 6 + 4 * int(label)
        images[i, y:y + 10, x:x + 10] = 255
    write_fer_csv(path, images, labels, [SPLITS[s] for s in splits])
    return images, labels, splits


def tiny_train(csv_path: Path, run_dir: Path, **extra) -> None:
    overrides = {"epochs": 1, "train_limit": 64, "val_limit": 32, "batch_size": 32, "eval_batch_size": 64,
                 **({"widths": "4,8"} if extra.get("model", "cnn") == "cnn" else {}), **extra}
    train(csv_path, run_dir, configs.resolve(overrides=overrides), progress=False)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Data, a trained tiny CNN, and one run of `ferkit features` with every figure's images recorded."""
    root = tmp_path_factory.mktemp("features")
    drawn: dict[str, dict[str, list[np.ndarray]]] = {}
    real_save = ffeatures.save
    real_embed = ffeatures.embed_2d
    embedded: dict[str, np.ndarray] = {}

    def recording_embed(features, *args, **kwargs):
        coords, method = real_embed(features, *args, **kwargs)
        embedded.update(features=np.array(features), coords=np.array(coords))
        return coords, method

    def recording_save(fig, path, *args, **kwargs):
        drawn[Path(path).name] = {ax.get_gid(): [np.asarray(im.get_array()) for im in ax.images]
                                  for ax in fig.axes if ax.get_gid()}
        return real_save(fig, path, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FERKIT_CACHE", str(root / "cache"))
        mp.setattr(ffeatures, "save", recording_save)
        mp.setattr(ffeatures, "embed_2d", recording_embed)
        csv_path = root / "faces.csv"
        images, labels, splits = make_csv(csv_path)
        run = root / "run"
        tiny_train(csv_path, run)
        out = root / "features"
        threads = torch.get_num_threads()
        started = time.perf_counter()
        code = cli.main(["features", str(run), "--data", str(csv_path), "--n", str(N), "--seed", "3",
                         "--threads", "1", "--out", str(out)])
        wall = time.perf_counter() - started
        assert code == 0
        assert torch.get_num_threads() == threads  # --threads holds for the call only
    model, _ = load_model(run)
    result = json.loads((out / "features.json").read_text(encoding="utf-8"))
    return {"root": root, "csv": csv_path, "images": images, "labels": labels, "splits": splits, "run": run,
            "out": out, "result": result, "drawn": drawn, "model": model, "embedded": embedded, "wall": wall}


# ---------------------------------------------------------------------------------------------
# The command's files


def test_writes_every_figure_and_the_numbers(world):
    out, result = world["out"], world["result"]
    for name in FIGURES:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert sorted(result["figures"]) == sorted(FIGURES)
    test_rows = np.flatnonzero(world["splits"] == 2)
    assert result["faces"] == len(test_rows) and result["split"] == "PrivateTest"
    from ferkit.train import checkpoint_sha256  # what lets `report --features` tell whose model this is
    assert result["checkpoint_sha256"] == checkpoint_sha256(world["run"]) and len(result["data_faces_sha256"]) == 64
    assert result["row_key"] == "line"
    assert result["layer"]["shape"] == [8, 24, 24]  # widths 4,8: one pool, 8 channels at 24x24
    # the embedding covers every PrivateTest face, by its CSV line, with finite coordinates
    with open(out / "embedding.csv", newline="", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    assert [int(r["line"]) for r in table] == (test_rows + 2).tolist()
    assert [int(r["true"]) for r in table] == world["labels"][test_rows].tolist()
    assert np.isfinite([[float(r["x"]), float(r["y"])] for r in table]).all()
    assert "t-SNE" in result["embedding"]["method"]
    # per-class channel numbers: 7 classes x the selected channels, each emotion contributes
    cc = result["class_channels"]
    assert np.array(cc["mean_activation"]).shape == (7, len(cc["channels"]))
    assert np.array(cc["all_channels_mean_activation"]).shape == (7, 8)
    assert list(cc["top_per_class"]) == list(EMOTIONS)
    assert all(len(top) == 3 and set(top) <= set(cc["channels"]) for top in cc["top_per_class"].values())
    assert len(cc["channels"]) == len(set(cc["channels"])) <= 8
    # the top faces: one row per channel that is some emotion's most selective, every emotion covered
    entries = result["top_faces"]["channels"]
    assert sorted(e for entry in entries for e in entry["selected_for"]) == sorted(EMOTIONS)
    for entry in entries:
        assert all(cc["top_per_class"][e][0] == entry["channel"] for e in entry["selected_for"])
    for entry in result["top_faces"]["channels"]:
        acts = [face["activation"] for face in entry["faces"]]
        assert acts == sorted(acts, reverse=True) and len(acts) == 6


def test_chosen_faces_are_right_and_mixed(world):
    """n faces per emotion, from PrivateTest, labelled and predicted as the model does, with both
    correct and wrong ones wherever the emotion has both."""
    result, labels, splits = world["result"], world["labels"], world["splits"]
    chosen = result["chosen"]
    rows = np.array([c["line"] for c in chosen]) - 2
    assert (splits[rows] == 2).all()
    probs = predict_proba(world["model"], world["images"][rows])
    assert [c["pred"] for c in chosen] == [EMOTIONS[p] for p in probs.argmax(1)]
    assert [c["true"] for c in chosen] == [EMOTIONS[k] for k in labels[rows]]
    test_rows = np.flatnonzero(splits == 2)
    all_preds = predict_proba(world["model"], world["images"][test_rows]).argmax(1)
    for k, name in enumerate(EMOTIONS):
        mine = [c for c in chosen if c["emotion"] == name]
        assert len(mine) == N and all(c["true"] == name for c in mine)
        n_right = int(((labels[test_rows] == k) & (all_preds == k)).sum())
        if 0 < n_right < PER_CLASS_TEST:
            assert {c["correct"] for c in mine} == {True, False}, name
        assert all(len(c["top_channels"]) == 6 for c in mine)
        for c in mine:  # the face's strongest channels, strongest first
            strengths = [t["mean_activation"] for t in c["top_channels"]]
            assert strengths == sorted(strengths, reverse=True), c


def test_overlays_are_drawn_on_the_recorded_face(world):
    """Under every overlay lies the dataset image of the CSV line recorded in features.json, and the
    overlay is that face's own map (recomputed here)."""
    model, images, result, drawn = world["model"], world["images"], world["result"], world["drawn"]
    for name in EMOTIONS:
        mine = [c for c in result["chosen"] if c["emotion"] == name]
        panels = drawn[f"faces_{name.lower()}.png"]
        for j, face in enumerate(mine):
            image = images[face["line"] - 2]  # line 1 is the header
            for kind in ("face", "mean", "cam_true", "cam_pred"):
                np.testing.assert_array_equal(panels[f"{kind}:{j}"][0], image)
            true_k, pred_k = EMOTIONS.index(face["true"]), EMOTIONS.index(face["pred"])
            cam = grad_cam(model, image[None], true_k)[0].numpy()
            np.testing.assert_allclose(panels[f"cam_true:{j}"][1], cam / cam.max() if cam.max() > 0 else cam,
                                       atol=1e-5)
            cam_pred = grad_cam(model, image[None], pred_k)[0].numpy()
            # the recorded peak holds the map's maximum (batched and single-face passes differ in the last
            # float bits, so on a plateau of the upsampled map another pixel may tie)
            peak = face["gradcam_pred_peak"]
            assert cam_pred[peak["y"], peak["x"]] == pytest.approx(cam_pred.max(), rel=1e-5, abs=1e-7)
            mean_map = mean_activation_map(activation_maps(model, image[None]))[0].numpy()
            np.testing.assert_allclose(panels[f"mean:{j}"][1], mean_map / mean_map.max(), atol=1e-5)
            np.testing.assert_array_equal(drawn[f"channels_{name.lower()}.png"][f"face:{j}"][0], image)
    # the overview: per emotion, the first correct and the first wrong face chosen, where there is one
    overview = drawn["overview.png"]
    shown = [c for c in result["chosen"] if "overview.png" in c["figures"]]
    for k, name in enumerate(EMOTIONS):
        mine = [c for c in result["chosen"] if c["emotion"] == name]
        for kind, correct in (("right", True), ("wrong", False)):
            first = next((c for c in mine if c["correct"] is correct), None)
            assert (f"{kind}_face:{k}" in overview) is (first is not None)
            if first is not None:
                assert first in shown
                for panel in (("face", "cam") if correct else ("face", "cam_true", "cam_pred")):
                    np.testing.assert_array_equal(overview[f"{kind}_{panel}:{k}"][0], images[first["line"] - 2])
    assert any(key.startswith("wrong_face") for key in overview)
    for entry in result["top_faces"]["channels"]:
        for j, face in enumerate(entry["faces"]):
            np.testing.assert_array_equal(drawn["top_faces.png"][f"top:{entry['channel']}:{j}"][0],
                                          images[face["line"] - 2])


# ---------------------------------------------------------------------------------------------
# The computations


def test_activation_maps_and_grad_cam_shapes(world):
    model, images = world["model"], world["images"][:5]
    maps = activation_maps(model, images)
    assert maps.shape == (5, 8, 24, 24) and (maps >= 0).all()  # after ReLU
    assert mean_activation_map(maps).shape == (5, 48, 48)
    cams = grad_cam(model, images, [0, 1, 2, 3, 4])
    assert cams.shape == (5, 48, 48)
    # one class for all faces equals that class per face; uint8 and preprocessed input agree
    from ferkit.models import preprocess

    np.testing.assert_allclose(grad_cam(model, images, 3), grad_cam(model, preprocess(torch.from_numpy(images)),
                                                                    [3] * 5), atol=1e-6)
    assert not model.training


class QuadrantNet(nn.Module):
    """Channel 0 of the features detects bright pixels, channel 1 dark ones (1x1 convolutions, then
    8x8 average pooling to 6x6 maps). Class 0's logit is channel 0 averaged over the top-right
    quadrant of the maps only, class 1's is channel 1 over the bottom-left quadrant only; the other
    classes see nothing."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1)
        with torch.no_grad():  # preprocessed grey 128 is 0, white 2, black -2
            self.conv.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
            self.conv.bias.fill_(-1.0)
        self.pool = nn.AvgPool2d(8)

    def forward_features(self, x):
        return self.pool(F.relu(self.conv(x)))  # (B, 2, 6, 6)

    def forward_head(self, features, pre_logits=False):
        top_right = features[:, 0, :3, 3:].mean(dim=(1, 2))
        bottom_left = features[:, 1, 3:, :3].mean(dim=(1, 2))
        pooled = torch.stack([top_right, bottom_left], 1)
        if pre_logits:
            return pooled
        return torch.cat([pooled, torch.zeros(len(features), 5)], 1)


def test_grad_cam_lights_up_the_region_the_class_looks_at():
    """A bright square in the top-right quadrant, a dark one in the bottom-left: Grad-CAM for the
    class that reads bright pixels in the top-right lights up the top-right square, and the other
    class's map the bottom-left one (top-right vs bottom-left also catches a transposed map)."""
    rng = np.random.default_rng(0)
    x = rng.integers(118, 139, size=(4, 48, 48)).astype(np.uint8)  # grey with a little noise
    for i in range(4):
        y0, x0 = 2 + 3 * i, 2 + 3 * i  # a different place inside the quadrant per face
        x[i, y0:y0 + 12, 24 + x0:24 + x0 + 12] = 255
        x[i, 24 + y0:24 + y0 + 12, x0:x0 + 12] = 0
    model = QuadrantNet().eval()

    def share(cams: torch.Tensor, ys: slice, xs: slice) -> np.ndarray:
        return (cams[:, ys, xs].sum(dim=(1, 2)) / cams.sum(dim=(1, 2))).numpy()

    upper, lower = slice(0, 24), slice(24, 48)
    cam0 = grad_cam(model, x, 0)
    cam1 = grad_cam(model, x, 1)
    assert cam0.shape == (4, 48, 48)
    assert (share(cam0, upper, lower) > 0.9).all()  # rows 0-23, columns 24-47: top-right
    assert (share(cam1, lower, upper) > 0.9).all()  # bottom-left
    for i in range(4):  # the peak lies on the square
        y0 = x0 = 2 + 3 * i
        y, x_ = np.unravel_index(int(cam0[i].argmax()), (48, 48))
        assert y0 - 4 <= y < y0 + 16 and 24 + x0 - 4 <= x_ < 24 + x0 + 16
        y, x_ = np.unravel_index(int(cam1[i].argmax()), (48, 48))
        assert 24 + y0 - 4 <= y < 24 + y0 + 16 and x0 - 4 <= x_ < x0 + 16
    mixed = grad_cam(model, x, [0, 1, 0, 1])
    np.testing.assert_allclose(mixed[::2], cam0[::2])
    np.testing.assert_allclose(mixed[1::2], cam1[1::2])
    assert grad_cam(model, x, 4).abs().max() == 0  # a class that looks nowhere
    assert not model.training


def test_choose_faces_mixes_correct_and_wrong_and_follows_the_seed():
    labels = np.array([0] * 10 + [1] * 3 + [2] * 2)
    preds = np.array([0] * 6 + [3] * 4 + [1] * 3 + [5] * 2)
    chosen = choose_faces(labels, preds, n=4, seed=1)
    assert [labels[i] for i in chosen[0]] == [0] * 4
    assert [preds[i] == 0 for i in chosen[0]] == [True, True, False, False]  # correct first
    assert sorted(chosen[1]) == [10, 11, 12]  # only 3 faces, all correct
    assert sorted(chosen[2]) == [13, 14]  # only wrong ones
    assert chosen[3] == [] and chosen[6] == []
    assert choose_faces(labels, preds, n=4, seed=1) == chosen
    assert any(choose_faces(labels, preds, n=4, seed=s)[0] != chosen[0] for s in range(2, 8))
    odd = choose_faces(labels, preds, n=3, seed=0)[0]
    assert [preds[i] == 0 for i in odd] == [True, True, False]


def test_class_channel_stats_finds_the_selective_channel():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(7), 20)
    acts = rng.random((len(labels), 10))
    acts[labels == 2, 7] += 3.0  # channel 7 fires for Fear
    acts[:, 9] += 10.0  # channel 9 is strong for everyone: large but not selective
    stats = class_channel_stats(acts, labels, per_class=2)
    assert stats["top"][2][0] == 7
    assert 9 not in stats["top"][2]
    assert stats["class_mean"].shape == (7, 10)
    np.testing.assert_allclose(stats["class_mean"][2, 7], acts[labels == 2, 7].mean())
    assert all(len(top) == 2 for top in stats["top"].values())
    assert sorted(stats["channels"]) == sorted({c for top in stats["top"].values() for c in top})
    # an emotion without faces is left out, and its means are missing, not zero
    stats = class_channel_stats(acts[labels != 5], labels[labels != 5], per_class=2)
    assert 5 not in stats["top"] and np.isnan(stats["class_mean"][5]).all()


def test_embed_2d_shapes_and_pca_fallback():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(40, 16))
    coords, method = embed_2d(feats, seed=0)
    assert coords.shape == (40, 2) and "t-SNE" in method
    coords, method = embed_2d(feats, method="pca")
    assert coords.shape == (40, 2) and method.startswith("PCA")
    with pytest.raises(FerkitError, match="unknown embedding"):
        embed_2d(feats, method="umap")


def test_float_faces_without_a_channel_axis_and_upsampling_that_keeps_each_cell_over_its_pixels():
    from ferkit.features import scan, upsample
    from ferkit.models import preprocess

    x = np.random.default_rng(4).integers(0, 256, size=(3, 48, 48)).astype(np.uint8)
    model = QuadrantNet().eval()
    np.testing.assert_array_equal(activation_maps(model, preprocess(torch.from_numpy(x))[:, 0]),
                                  activation_maps(model, x))  # (B, 48, 48) floats: one channel added
    # a 6x6 map's hot cell (2, 3) covers face pixels 16-23 x 24-31: upsampled, its peak is their centre
    cells = torch.zeros(1, 6, 6)
    cells[0, 2, 3] = 1.0
    up = upsample(cells)[0].numpy()
    assert up.shape == (48, 48) and up[19, 27] == up[20, 28] == up.max()
    np.testing.assert_allclose(up[12:28, 20:36], up[12:28, 20:36][::-1, ::-1])  # symmetric about that centre
    # the mean map averages the channels: channels at 1, 2 and 3 everywhere average 2 everywhere
    levels = torch.arange(1.0, 4.0).view(1, 3, 1, 1).expand(2, 3, 6, 6)
    assert torch.equal(mean_activation_map(levels), torch.full((2, 48, 48), 2.0))
    # scan: channel means and the penultimate features (not the logits) of every face
    with torch.no_grad():
        maps = model.forward_features(preprocess(torch.from_numpy(x)))
        pooled = model.forward_head(maps, pre_logits=True)
    scanned = scan(model, x, batch_size=2)
    np.testing.assert_allclose(scanned["channel_means"], maps.mean(dim=(2, 3)), rtol=1e-6)
    np.testing.assert_allclose(scanned["penultimate"], pooled, rtol=1e-6)
    assert scanned["logits"].shape == (3, 7)


def test_maps_drawn_relative_to_their_maximum_and_a_model_named_by_its_class():
    np.testing.assert_array_equal(ffeatures._normalised(np.array([[0.0, 0.5], [2.0, 1.0]])), [[0, 0.25], [1, 0.5]])
    with np.errstate(all="raise"):  # no evidence at all: an empty overlay, not 0 / 0
        assert (ffeatures._normalised(np.zeros((48, 48))) == 0).all()
    with pytest.raises(FerkitError, match="^the sequential model has no convolutional layers"):
        ffeatures.require_cnn(nn.Sequential(nn.Flatten(), nn.Linear(48 * 48, 7)))


def test_choose_faces_never_picks_a_face_twice():
    labels = np.zeros(40, int)
    preds = np.where(np.arange(40) < 20, 0, 3)  # 20 right, 20 wrong
    for seed in range(20):
        chosen = choose_faces(labels, preds, n=16, seed=seed)[0]
        assert len(chosen) == len(set(chosen)) == 16


def test_class_channel_stats_with_a_constant_channel_and_a_class_missing_in_the_middle():
    rng = np.random.default_rng(2)
    labels = np.repeat([0, 1, 2, 3, 4, 6], 10)  # no Surprise (5): Neutral after it still gets its channels
    acts = rng.random((len(labels), 5))
    acts[:, 3] = 0.7  # a channel that never varies selects no class: its z is 0, not NaN nor rounding / rounding
    acts[:, 4] = 0.0  # nor does a dead one
    stats = class_channel_stats(acts, labels, per_class=2)
    assert sorted(stats["top"]) == [0, 1, 2, 3, 4, 6]
    assert (stats["z"][[0, 1, 2, 3, 4, 6]][:, 3:] == 0).all()


def test_embed_2d_on_few_faces_or_few_dimensions():
    rng = np.random.default_rng(3)
    coords, method = embed_2d(rng.normal(size=(2, 16)))
    assert np.array_equal(coords, np.zeros((2, 2))) and method == "none (fewer than 3 faces)"
    coords, method = embed_2d(rng.normal(size=(3, 16)))  # t-SNE needs 10: PCA, of n - 1 components at most
    assert coords.shape == (3, 2) and method == "PCA of the standardised features (first two of 2 components)"
    coords, method = embed_2d(rng.normal(size=(5, 16)))
    assert coords.shape == (5, 2) and method == "PCA of the standardised features (first two of 4 components)"
    one = rng.normal(size=(6, 1))
    coords, method = embed_2d(one)  # one feature: its standardised value (up to sign), then zeros
    standardised = (one[:, 0] - one.mean()) / one.std()
    assert np.allclose(np.abs(coords[:, 0]), np.abs(standardised)) and (coords[:, 1] == 0).all()
    coords, _ = embed_2d(rng.normal(size=(6, 2)))
    assert (coords[:, 1] != 0).all()  # two features: both PCA components
    assert embed_2d(rng.normal(size=(10, 4)))[1] == "t-SNE (perplexity 3) of PCA-4 of the standardised features"
    assert embed_2d(rng.normal(size=(20, 2)))[1].endswith("of PCA-2 of the standardised features")


def test_embed_2d_of_features_that_are_the_same_for_every_face():
    """A network whose last conv layer is dead gives every face the same features: t-SNE's PCA start
    divided by their zero spread, and its NaNs crashed the process (a segmentation fault)."""
    for n, value in ((40, 0.0), (40, 0.3), (5, 0.0)):
        coords, method = embed_2d(np.full((n, 16), value))
        assert np.array_equal(coords, np.zeros((n, 2))) and method == "none (the features are the same for every face)"


def test_embed_2d_runs_t_sne_on_one_thread(monkeypatch):
    import threadpoolctl

    asked = []
    real = threadpoolctl.threadpool_limits
    monkeypatch.setattr(threadpoolctl, "threadpool_limits",
                        lambda limits=None, **kw: asked.append(limits) or real(limits=limits, **kw))
    _, method = embed_2d(np.random.default_rng(0).normal(size=(40, 16)))
    assert asked == [1]
    assert method == "t-SNE (perplexity 13) of PCA-16 of the standardised features"  # perplexity (n - 1) / 3


def test_json_safe_rounds_and_turns_nan_into_null():
    value = {"a": np.array([np.nan, 1.234567891]), "b": (np.int64(7), np.float32(0.5)), "c": [float("inf"), "x"]}
    assert ffeatures._json_safe(value) == {"a": [None, 1.23457], "b": [7, 0.5], "c": [None, "x"]}


def test_features_takes_1_to_16_faces_per_emotion(tmp_path):
    for n in (0, 17):
        with pytest.raises(FerkitError, match=f"--n {n}: use 1 to 16 faces per emotion"):
            ffeatures.features(tmp_path / "no-run", None, tmp_path / "out", n=n)
    for n in (1, 16):  # accepted: what stops these is the missing run
        with pytest.raises(FerkitError) as caught:
            ffeatures.features(tmp_path / "no-run", None, tmp_path / "out", n=n)
        assert "--n" not in str(caught.value)


# ---------------------------------------------------------------------------------------------
# Models without convolutions


def test_mlp_run_raises_the_clear_error(world, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FERKIT_CACHE", str(world["root"] / "cache"))
    run = tmp_path / "mlp"
    tiny_train(world["csv"], run, model="mlp", hidden="16")
    message = "the mlp model has no convolutional layers: features needs a CNN run"
    with pytest.raises(FerkitError) as caught:
        ffeatures.features(run, world["csv"], tmp_path / "out")
    assert str(caught.value) == message
    assert not (tmp_path / "out").exists()
    assert cli.main(["features", str(run), "--data", str(world["csv"]), "--out", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err
    mlp, _ = load_model(run)
    for fn in (lambda: activation_maps(mlp, world["images"][:2]), lambda: grad_cam(mlp, world["images"][:2], 0)):
        with pytest.raises(FerkitError, match="no convolutional layers"):
            fn()


def test_grad_cam_is_the_gradient_weighted_sum_of_the_maps():
    """For QuadrantNet, d logit_0 / d A_0 is 1/9 on the 9 top-right cells of the 6x6 maps and 0
    elsewhere, so channel 0 weighs 1/36 and channel 1 nothing: the map is ReLU(A_0 / 36), upsampled."""
    from ferkit.features import upsample
    from ferkit.models import preprocess

    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, size=(3, 48, 48)).astype(np.uint8)
    model = QuadrantNet().eval()
    with torch.no_grad():
        maps = model.forward_features(preprocess(torch.from_numpy(x)))
    np.testing.assert_allclose(grad_cam(model, x, 0), upsample(F.relu(maps[:, 0] / 36)), rtol=1e-5, atol=1e-7)


def test_recorded_numbers_belong_to_their_faces(world):
    """Each chosen face's probabilities are those of the face on its CSV line; the 2-D map is computed
    from the penultimate features of the PrivateTest faces in file order, and each embedding.csv row
    holds its own face's coordinates."""
    from ferkit.features import scan

    result, images, model = world["result"], world["images"], world["model"]
    chosen = result["chosen"]
    probs = predict_proba(model, images[[c["line"] - 2 for c in chosen]])
    for c, p in zip(chosen, probs):
        assert c["prob_true"] == pytest.approx(p[EMOTIONS.index(c["true"])], abs=1e-5)
        assert c["prob_pred"] == pytest.approx(p.max(), abs=1e-5)
    test_rows = np.flatnonzero(world["splits"] == 2)
    embedded = world["embedded"]
    np.testing.assert_allclose(embedded["features"], scan(model, images[test_rows])["penultimate"], atol=1e-4)
    with open(world["out"] / "embedding.csv", newline="", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    np.testing.assert_allclose([[float(r["x"]), float(r["y"])] for r in table], embedded["coords"],
                               rtol=1e-4, atol=1e-4)


def test_recorded_accuracy_correctness_channels_medians_and_seconds(world):
    result, images, model = world["result"], world["images"], world["model"]
    test_rows = np.flatnonzero(world["splits"] == 2)
    preds = predict_proba(model, images[test_rows]).argmax(1)
    assert result["accuracy"] == pytest.approx(np.mean(preds == world["labels"][test_rows]), abs=1e-6)
    for face in result["chosen"]:
        assert face["correct"] is (face["true"] == face["pred"])
        strength = activation_maps(model, images[face["line"] - 2][None])[0].mean(dim=(1, 2)).numpy()
        recorded = [(t["channel"], t["mean_activation"]) for t in face["top_channels"]]
        np.testing.assert_allclose([value for _, value in recorded], strength[[c for c, _ in recorded]], rtol=1e-4)
        assert min(value for _, value in recorded) >= np.sort(strength)[-6] - 1e-6  # the face's 6 strongest
    with open(world["out"] / "embedding.csv", newline="", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    coords, truth = np.array([[float(r["x"]), float(r["y"])] for r in table]), np.array([int(r["true"]) for r in table])
    medians = result["embedding"]["class_medians"]
    assert list(medians) == list(EMOTIONS)
    for k, name in enumerate(EMOTIONS):
        np.testing.assert_allclose(medians[name], np.median(coords[truth == k], axis=0), rtol=1e-4, atol=1e-4)
    seconds = result["seconds"]
    parts = [seconds[key] for key in ("scan", "gradcam", "channels", "embedding", "figures")]
    assert all(part >= 0 for part in parts) and sum(parts) <= seconds["total"] <= world["wall"]


def train_with_test_faces(folder: Path, private_labels: list[int], seed: int) -> Path:
    """A tiny run trained on 64 Training and 32 PublicTest random faces, beside PrivateTest faces of
    `private_labels` (none, or too few for the usual data); returns the run folder."""
    rng = np.random.default_rng(seed)
    labels = np.concatenate([rng.integers(0, 7, 96), np.asarray(private_labels, int)])
    images = rng.integers(0, 256, size=(len(labels), 48, 48), dtype=np.uint8)
    splits = np.repeat([0, 1, 2], [64, 32, len(private_labels)])
    write_fer_csv(folder / "faces.csv", images, labels, [SPLITS[s] for s in splits])
    tiny_train(folder / "faces.csv", folder / "run")
    return folder / "run"


def test_features_on_a_single_test_face(tmp_path, monkeypatch):
    """One PrivateTest face: the six other emotions have no faces to show, the 2-D map needs three."""
    run = train_with_test_faces(tmp_path, [3], seed=5)
    set_threads = []
    real_set_threads = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda k: set_threads.append(k) or real_set_threads(k))
    result = ffeatures.features(run, None, tmp_path / "out", n=1)
    assert set_threads == [torch.get_num_threads()]  # threads=0 by default: torch's own, restored as found
    assert (result["faces"], result["seed"], result["n"]) == (1, 0, 1)
    assert [(face["line"], face["true"]) for face in result["chosen"]] == [(98, "Happy")]  # after 96 faces
    assert result["embedding"]["method"] == "none (fewer than 3 faces)"
    assert list(result["embedding"]["class_medians"]) == ["Happy"]
    assert list(result["class_channels"]["top_per_class"]) == ["Happy"]
    assert sorted(result["figures"]) == sorted(FIGURES)
    assert json.loads((tmp_path / "out" / "features.json").read_text(encoding="utf-8")) == result


def test_features_refuse_to_replace_another_runs_and_replace_their_own(world, tmp_path, monkeypatch):
    """`ferkit features r3 --out study/features` replaced a study's features with another run's, which its
    report then refused and `ferkit run` took for done."""
    monkeypatch.setenv("FERKIT_CACHE", str(world["root"] / "cache"))
    assert world["result"]["run_folder"] == os.path.realpath(world["run"])
    other, folder = tmp_path / "other", tmp_path / "features"
    shutil.copytree(world["run"], other)
    shutil.copytree(world["out"], folder)
    before = (folder / "features.json").read_bytes()
    with pytest.raises(FerkitError, match="--out .*features: holds the features of another run \\(.*run\\); name "
                                          "another folder \\(such as .*other/features\\)"):
        features(other, world["csv"], folder, n=1, embedding="pca")
    assert (folder / "features.json").read_bytes() == before
    assert features(world["run"], world["csv"], folder, n=1, embedding="pca")["n"] == 1  # its own: replaced


def test_features_refuses_data_without_test_faces(tmp_path):
    run = train_with_test_faces(tmp_path, [], seed=6)
    with pytest.raises(FerkitError, match="faces.csv has no PrivateTest rows: features are drawn on PrivateTest"):
        ffeatures.features(run, None, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_class_channel_stats_z_scores_and_the_first_class_to_pick_each_channel():
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(7), [5, 30, 8, 12, 20, 9, 16])  # unbalanced: the overall mean is over faces
    acts = rng.random((len(labels), 9))
    acts[labels == 0, 6] += 2.0  # Angry's channel is 6: `channels` starts with it, not in channel order
    acts[labels == 2, 4] += 2.0  # channel 4 serves Fear and Sad: Fear, the first, picks it
    acts[labels == 4, 4] += 2.0
    stats = class_channel_stats(acts, labels, per_class=2)
    overall, spread = acts.mean(axis=0), acts.std(axis=0)
    class_mean = np.array([acts[labels == k].mean(axis=0) for k in range(7)])
    np.testing.assert_allclose(stats["overall_mean"], overall)
    np.testing.assert_allclose(stats["overall_std"], spread)
    np.testing.assert_allclose(stats["z"], (class_mean - overall) / spread)
    assert stats["top"][0][0] == 6 and stats["top"][2][0] == 4 and stats["top"][4][0] == 4
    assert stats["channels"][0] == 6 and stats["selected_for"][stats["channels"].index(4)] == 2
    assert len(stats["channels"]) == len(stats["selected_for"])
    for c, k in zip(stats["channels"], stats["selected_for"]):
        assert c in stats["top"][k] and not any(c in stats["top"][j] for j in range(k))


def test_channel_numbers_and_top_faces_are_those_of_the_scanned_faces(world):
    result, labels = world["result"], world["labels"]
    rows = np.flatnonzero(world["splits"] == 2)
    scanned = ffeatures.scan(world["model"], world["images"][rows])
    means = scanned["channel_means"].astype(np.float64)
    preds, y = scanned["logits"].argmax(1), labels[rows]
    class_mean = np.array([means[y == k].mean(axis=0) for k in range(7)])
    overall, spread = means.mean(axis=0), means.std(axis=0)
    cc = result["class_channels"]
    assert cc["class_counts"] == np.bincount(y, minlength=7).tolist()
    channels = cc["channels"]
    close = dict(rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(cc["all_channels_mean_activation"], class_mean, **close)
    np.testing.assert_allclose(cc["mean_activation"], class_mean[:, channels], **close)
    np.testing.assert_allclose(cc["overall_mean"], overall[channels], **close)
    np.testing.assert_allclose(cc["overall_std"], spread[channels], **close)
    z = (class_mean - overall) / np.where(spread > 0, spread, np.inf)
    np.testing.assert_allclose(cc["z"], z[:, channels], **close)
    for entry in result["top_faces"]["channels"]:
        c = entry["channel"]
        best = np.argsort(-means[:, c], kind="stable")[:len(entry["faces"])]
        np.testing.assert_allclose([f["activation"] for f in entry["faces"]], means[best, c], **close)
        assert [f["line"] for f in entry["faces"]] == (rows[best] + 2).tolist()
        assert [f["true"] for f in entry["faces"]] == [EMOTIONS[k] for k in y[best]]
        assert [f["pred"] for f in entry["faces"]] == [EMOTIONS[k] for k in preds[best]]


def test_n_is_bounded_and_a_rerun_cut_short_leaves_no_earlier_json(world, tmp_path, monkeypatch):
    monkeypatch.setenv("FERKIT_CACHE", str(world["root"] / "cache"))
    for n in (0, ffeatures.MAX_FACES_PER_EMOTION + 1):
        with pytest.raises(FerkitError, match=f"--n {n}: use 1 to {ffeatures.MAX_FACES_PER_EMOTION} faces"):
            ffeatures.features(world["run"], world["csv"], tmp_path / "never", n=n)
    out = tmp_path / "features"
    shutil.copytree(world["out"], out)

    def cut_short(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ffeatures, "overview_figure", cut_short)
    with pytest.raises(KeyboardInterrupt):
        ffeatures.features(world["run"], world["csv"], out, n=2, seed=7)
    assert not (out / "features.json").exists()  # the new figures are not filed under the old numbers


def test_the_recorded_checksum_is_that_of_the_checkpoint_read_while_training_replaces_it(world, tmp_path, monkeypatch):
    """A run still training may write a new best.pt while features works: the record keeps the model it read."""
    monkeypatch.setenv("FERKIT_CACHE", str(world["root"] / "cache"))
    run = tmp_path / "run"
    shutil.copytree(world["run"], run)
    read = sha256_file(run / "checkpoints" / "best.pt")
    real_embed = ffeatures.embed_2d

    def embed_while_a_new_best_is_saved(*args, **kwargs):
        checkpoint = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
        checkpoint["epoch"] += 1
        torch.save(checkpoint, run / "checkpoints" / "best.pt")
        return real_embed(*args, **kwargs)

    monkeypatch.setattr(ffeatures, "embed_2d", embed_while_a_new_best_is_saved)
    result = ffeatures.features(run, world["csv"], tmp_path / "features", n=1, threads=1, embedding="pca")
    assert result["checkpoint_sha256"] == read != sha256_file(run / "checkpoints" / "best.pt")


# ---------------------------------------------------------------------------------------------
# The figures, drawn from given numbers


def panel(fig, gid: str):
    return next(ax for ax in fig.axes if ax.get_gid() == gid)


def colour_bars(fig) -> list:
    """The colour bars' mappables, in the order the figure drew them."""
    return [ax._colorbar.mappable for ax in fig.axes if hasattr(ax, "_colorbar")]


def grid_panels(fig) -> list:
    """The figure's panels, in the order drawn, without the axes of its colour bars."""
    return [ax for ax in fig.axes if not hasattr(ax, "_colorbar")]


def colour_scale(mappable) -> tuple:
    """An image's or a colour bar's colour map and range: (name, vmin, vmax)."""
    return (mappable.get_cmap().name, *mappable.get_clim())


def assert_blank(ax) -> None:
    """No ticks, no frame."""
    assert not ax.get_xticks().size and not ax.get_yticks().size
    assert not any(spine.get_visible() for spine in ax.spines.values())


def face_row(line: int, true: str, pred: str, prob: float = 0.5) -> dict:
    return {"line": line, "true": true, "pred": pred, "prob_pred": prob, "correct": true == pred}


def assert_face_panel(ax, face: np.ndarray, overlay: np.ndarray | None = None, vmax: float = 1.0) -> None:
    """A grey face at its stored levels, and over it the map in jet, from 0 to `vmax`, half transparent;
    no ticks, no frame."""
    grey = ax.images[0]
    np.testing.assert_array_equal(grey.get_array(), face)
    assert (colour_scale(grey), grey.get_interpolation()) == (("gray", 0, 255), "nearest")
    assert len(ax.images) == (1 if overlay is None else 2)
    if overlay is not None:
        shown = ax.images[1]
        np.testing.assert_allclose(shown.get_array(), overlay)
        assert (colour_scale(shown), shown.get_alpha(), shown.get_interpolation()) == \
            ((ffeatures.OVERLAY_CMAP, 0, vmax), ffeatures.OVERLAY_ALPHA, "bilinear")
    assert_blank(ax)


def test_faces_figure_draws_each_map_over_its_face_relative_to_its_maximum(saved_figures, tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 48, 48), dtype=np.uint8)
    mean_maps = rng.random((2, 48, 48)) * 5
    cams_true = np.stack([np.zeros((48, 48)), np.pad(np.ones((8, 8)), 20) * 3])  # zero, and zero around a square
    cams_pred = np.stack([rng.random((48, 48)), np.zeros((48, 48))])
    rows = [face_row(7, "Happy", "Happy", 0.871), face_row(9, "Happy", "Sad", 0.4)]
    assert ffeatures.faces_figure(3, rows, images, mean_maps, cams_true, cams_pred, tmp_path / "f.png") == \
        tmp_path / "f.png"
    fig = saved_figures[0]
    for j in range(2):
        assert_face_panel(panel(fig, f"face:{j}"), images[j])
        assert_face_panel(panel(fig, f"mean:{j}"), images[j], mean_maps[j] / mean_maps[j].max())
        for name, maps in (("cam_true", cams_true), ("cam_pred", cams_pred)):
            top = maps[j].max()
            assert_face_panel(panel(fig, f"{name}:{j}"), images[j], maps[j] / top if top else maps[j])
    titles = {gid: (panel(fig, gid).get_title(), panel(fig, gid).title.get_color())
              for gid in ("face:0", "face:1", "cam_true:0", "cam_true:1", "cam_pred:0", "cam_pred:1")}
    assert titles == {"face:0": ("line 7\npred Happy (0.87)\ncorrect", "black"),
                      "face:1": ("line 9\npred Sad (0.40)\nwrong", "#b00000"),
                      "cam_true:0": ("Happy\n(zero: no positive evidence)", "black"),
                      "cam_true:1": ("Happy", "black"),
                      "cam_pred:0": ("Happy (= true)", "black"),
                      "cam_pred:1": ("Sad\n(zero: no positive evidence)", "black")}
    assert [colour_scale(bar) for bar in colour_bars(fig)] == [(ffeatures.OVERLAY_CMAP, 0, 1)]
    assert fig._suptitle.get_text() == "Happy: what the last conv layer sees (PrivateTest)"
    assert fig.get_size_inches()[0] == pytest.approx(1.45 * 2 + 1.4)
    assert not any(ax.texts for ax in fig.axes)


@pytest.mark.parametrize("faces", [0, 1])
def test_faces_figure_of_one_face_or_none(saved_figures, tmp_path, faces):
    images, maps = np.zeros((faces, 48, 48), np.uint8), np.ones((faces, 48, 48))
    ffeatures.faces_figure(1, [face_row(3, "Disgust", "Fear")] * faces, images, maps, maps, maps, tmp_path / "f.png")
    fig = saved_figures[0]
    grid = grid_panels(fig)
    assert len(grid) == 4  # a column of four panels
    assert [ax.get_ylabel() for ax in grid] == ["face", "mean activation\n(last conv layer)", "Grad-CAM\ntrue class",
                                                "Grad-CAM\npredicted class"]
    texts = [t.get_text() for t in grid[0].texts]
    assert texts == ([] if faces else ["no PrivateTest faces\nof Disgust"])
    assert [len(ax.images) for ax in grid] == ([1, 2, 2, 2] if faces else [0] * 4)


def overview_entry(k: int, right: bool, wrong: bool, rng) -> dict:
    def image():
        return rng.integers(0, 256, (48, 48), dtype=np.uint8)

    name, other = EMOTIONS[k], EMOTIONS[(k + 1) % 7]
    return {"right": (face_row(10 + k, name, name, 0.9), image(), rng.random((48, 48))) if right else None,
            "wrong": (face_row(20 + k, name, other, 0.6), image(), rng.random((48, 48)), np.zeros((48, 48)))
            if wrong else None}


def test_overview_figure_heads_the_first_row_only_and_says_none_where_a_face_is_missing(saved_figures, tmp_path):
    rng = np.random.default_rng(1)
    entries = [overview_entry(k, right=k != 2, wrong=k != 4, rng=rng) for k in range(7)]
    ffeatures.overview_figure(entries, tmp_path / "o.png")
    fig = saved_figures[0]
    axes = np.array(grid_panels(fig)).reshape(7, 6)
    assert axes[0, 0].get_title() == "CORRECT\nline 10 (0.90)"
    assert axes[0, 1].get_title() == "Grad-CAM\nAngry"
    assert axes[0, 3].get_title() == "MISCLASSIFIED\nline 20"
    assert axes[0, 4].get_title() == "Grad-CAM\ntrue: Angry"
    assert (axes[0, 5].get_title(), axes[0, 5].title.get_color()) == \
        ("Grad-CAM\npred: Disgust (0.60)\n(zero: no positive evidence)", "#b00000")
    assert axes[1, 0].get_title() == "line 11 (0.90)" and axes[1, 3].get_title() == "line 21"
    assert [ax.axison for ax in axes[:, 2]] == [False] * 7  # the gap between the two halves
    assert all(ax.axison for ax in axes[:, [0, 1, 3, 4, 5]].ravel())
    widths = [ax.get_position(original=True).width for ax in axes[0]]  # the grid cells, before aspect
    assert widths[2] == pytest.approx(0.18 * widths[0]) and widths[:2] + widths[3:] == pytest.approx([widths[0]] * 5)
    for k, entry in enumerate(entries):
        assert (axes[k, 0].get_ylabel(), axes[k, 0].yaxis.label.get_rotation()) == (EMOTIONS[k], 0)
        if entry["right"] is not None:
            row, image, cam = entry["right"]
            assert panel(fig, f"right_cam:{k}") is axes[k, 1]
            assert_face_panel(axes[k, 1], image, cam / cam.max())
        else:
            (none,) = axes[k, 0].texts
            assert none.get_text() == "none" and none.get_transform() == axes[k, 0].transAxes
            assert not axes[k, 0].images
        if entry["wrong"] is not None:
            row, image, cam_true, _ = entry["wrong"]
            assert_face_panel(panel(fig, f"wrong_face:{k}"), image)
            assert_face_panel(panel(fig, f"wrong_cam_true:{k}"), image, cam_true / cam_true.max())
        else:
            (none,) = axes[k, 3].texts
            assert none.get_text() == "none" and none.get_transform() == axes[k, 3].transAxes
            assert not axes[k, 3].images
    assert [colour_scale(bar) for bar in colour_bars(fig)] == [(ffeatures.OVERLAY_CMAP, 0, 1)]


@pytest.mark.parametrize("z_scale", [1.0, 0.1, 0.0])
def test_class_channels_figure_boxes_each_emotions_channels_on_both_panels(saved_figures, tmp_path, z_scale):
    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(7), 5)
    stats = class_channel_stats(rng.random((35, 16)) + (1 if z_scale else 0), labels, per_class=2)
    stats["z"] = stats["z"] * z_scale  # all zero: the selectivity scale is ±1
    channels = stats["channels"]
    ffeatures.class_channels_figure(stats, tmp_path / "c.png", n_faces=35)
    fig = saved_figures[0]
    assert fig.get_size_inches()[0] == pytest.approx(max(5.0, 0.42 * len(channels) + 2.6))
    means_bar, z_bar = colour_bars(fig)
    zmax = float(np.abs(stats["z"][:, channels]).max()) or 1.0
    assert colour_scale(z_bar) == ("RdBu_r", -zmax, zmax)
    assert means_bar.get_cmap().name == "viridis"
    means_ax, z_ax = grid_panels(fig)
    np.testing.assert_allclose(means_ax.images[0].get_array(), stats["class_mean"][:, channels])
    np.testing.assert_allclose(z_ax.images[0].get_array(), stats["z"][:, channels])
    assert means_ax.get_title().startswith("Mean activation per emotion (true label) over PrivateTest (35 faces)")
    for ax in (means_ax, z_ax):
        boxes = {(patch.get_x(), patch.get_y()) for patch in ax.patches}
        assert boxes == {(channels.index(c) - 0.5, k - 0.5) for k, picked in stats["top"].items() for c in picked}
        assert all((patch.get_width(), patch.get_height(), patch.get_fill()) == (1, 1, False) for patch in ax.patches)
        assert ax.get_xlabel() == "last-conv-layer channel (boxed: the 2 most selective for that emotion)"
        assert [t.get_text() for t in ax.get_xticklabels()] == [f"ch {c}" for c in channels]


def test_channels_figure_shares_one_scale_across_faces_and_channels(saved_figures, tmp_path):
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (2, 48, 48), dtype=np.uint8)
    channel_maps = rng.random((2, 3, 48, 48)) * np.array([0.2, 0.5])[:, None, None, None]
    channel_maps[0, 0, :4] = 0  # a zero somewhere, and a largest value under 1: the scale is 0 to that value
    rows = [dict(face_row(4, "Sad", "Sad"), top_channels=[{"channel": c, "mean_activation": 0.1234 * c}
                                                         for c in (5, 1, 7)]),
            dict(face_row(8, "Sad", "Angry"), top_channels=[{"channel": c, "mean_activation": 2.0} for c in (0, 2, 3)])]
    ffeatures.channels_figure(4, rows, images, channel_maps, tmp_path / "c.png")
    fig = saved_figures[0]
    vmax = channel_maps.max()
    for j, row in enumerate(rows):
        face = panel(fig, f"face:{j}")
        assert_face_panel(face, images[j])
        assert (face.get_title(), face.title.get_color()) == \
            (f"line {row['line']}\npred {row['pred']}", "black" if row["correct"] else "#b00000")
        for i, channel in enumerate(row["top_channels"]):
            ax = panel(fig, f"channel:{j}:{channel['channel']}")
            (shown,) = ax.images
            np.testing.assert_array_equal(shown.get_array(), channel_maps[j, i])
            assert (colour_scale(shown), shown.get_interpolation()) == ((ffeatures.CHANNEL_CMAP, 0, vmax), "bilinear")
            assert ax.get_title() == f"ch {channel['channel']}: {channel['mean_activation']:.2g}"
            assert_blank(ax)
    assert [colour_scale(bar) for bar in colour_bars(fig)] == [(ffeatures.CHANNEL_CMAP, 0, vmax)]
    assert fig._suptitle.get_text().startswith("Sad: the 3 strongest channels of the last conv layer per face")
    assert not any(ax.texts for ax in fig.axes)


@pytest.mark.parametrize("faces", [0, 1])
def test_channels_figure_of_zero_maps_or_no_face(saved_figures, tmp_path, faces):
    rows = [dict(face_row(4, "Fear", "Fear"), top_channels=[{"channel": 0, "mean_activation": 0.0}])] * faces
    ffeatures.channels_figure(2, rows, np.zeros((faces, 48, 48), np.uint8), np.zeros((faces, 1, 48, 48)),
                              tmp_path / "c.png")
    fig = saved_figures[0]
    grid = grid_panels(fig)
    assert len(grid) == 2  # the face and one channel, or two blank panels
    assert [colour_scale(bar)[1:] for bar in colour_bars(fig)] == [(0, 1)]  # no activation: the scale stays 0 to 1
    assert [t.get_text() for t in grid[0].texts] == ([] if faces else ["no PrivateTest faces\nof Fear"])
    if faces:
        assert colour_scale(panel(fig, "channel:0:0").images[0])[1:] == (0, 1)


def test_top_faces_figure_scales_each_row_by_its_own_maximum(saved_figures, tmp_path):
    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, (2, 3, 48, 48), dtype=np.uint8)
    maps = rng.random((2, 3, 48, 48)) * np.array([0.5, 0.0])[:, None, None, None]  # the second row: all zero
    maps[0, 1, :4] = 0  # a zero somewhere, and a largest value under 1: the row's scale is 0 to that value
    entries = [{"channel": 6, "selected_for": ["Happy"],
                "faces": [{"true": "Happy", "activation": 1.2345}, {"true": "Sad", "activation": 0.5},
                          {"true": "Fear", "activation": 0.25}]},
               {"channel": 2, "selected_for": ["Angry", "Neutral"],
                "faces": [{"true": "Angry", "activation": 0.0}]}]
    ffeatures.top_faces_figure(entries, images, maps, tmp_path / "t.png")
    fig = saved_figures[0]
    for r, entry in enumerate(entries):
        vmax = maps[r].max() or 1.0
        for j, face in enumerate(entry["faces"]):
            ax = panel(fig, f"top:{entry['channel']}:{j}")
            assert_face_panel(ax, images[r, j], maps[r, j], vmax=vmax)
            assert ax.get_title() == f"{face['true']} ({face['activation']:.2g})"
    grid = np.array(grid_panels(fig)).reshape(2, 3)
    assert [ax.axison for ax in grid.ravel()] == [True, True, True, True, False, False]  # no face, no frame
    assert (grid[0, 0].get_ylabel(), grid[0, 0].yaxis.label.get_color(), grid[0, 0].yaxis.label.get_rotation()) == \
        ("ch 6\nmost selective\nfor Happy", ffeatures.EMOTION_COLOURS[3], 0)
    assert (grid[1, 0].get_ylabel(), grid[1, 0].yaxis.label.get_color()) == \
        ("ch 2\nmost selective\nfor Angry,\nNeutral", "black")
    assert [colour_scale(bar) for bar in colour_bars(fig)] == [(ffeatures.OVERLAY_CMAP, 0, 1)]


def test_top_faces_figure_without_channels(saved_figures, tmp_path):
    ffeatures.top_faces_figure([], np.zeros((0, 0, 48, 48), np.uint8), np.zeros((0, 0, 48, 48)), tmp_path / "t.png")
    (ax,) = grid_panels(saved_figures[0])
    assert not ax.images
    assert_blank(ax)


def test_embedding_figure_colours_by_truth_then_by_prediction(saved_figures, tmp_path):
    rng = np.random.default_rng(5)
    labels = np.array([0, 0, 3, 3, 3, 6, 6, 0])  # no Disgust, Fear, Sad or Surprise
    preds = np.array([0, 3, 3, 3, 6, 6, 1, 0])
    coords = rng.normal(size=(8, 2))
    ffeatures.embedding_figure(coords, labels, preds, "PCA", 0.625, tmp_path / "e.png")
    fig = saved_figures[0]
    truth_ax, pred_ax = fig.axes
    for ax, colour_by, title in ((truth_ax, labels, "coloured by true emotion"),
                                 (pred_ax, preds, "coloured by predicted emotion")):
        assert ax.get_title() == title
        assert len(ax.collections) == 7
        for k, points in enumerate(ax.collections):
            np.testing.assert_array_equal(points.get_offsets(), coords[colour_by == k])
            assert points.get_label() == f"{EMOTIONS[k]} ({(colour_by == k).sum()})"
            assert list(points.get_linewidths()) == [0]
            np.testing.assert_allclose(points.get_facecolor()[0][:3],
                                       matplotlib.colors.to_rgb(ffeatures.EMOTION_COLOURS[k]))
        names = {t.get_text(): t.get_position() for t in ax.texts}  # at the true class's median, both panels
        assert all(t.get_bbox_patch().get_linewidth() == 0 for t in ax.texts)
        assert names.keys() == {"Angry", "Happy", "Neutral"}
        for k in (0, 3, 6):
            np.testing.assert_allclose(names[EMOTIONS[k]], np.median(coords[labels == k], axis=0))
    (legend,) = fig.legends
    assert not legend.get_frame_on()
    assert [t.get_text() for t in legend.get_texts()] == [f"{name} ({(labels == k).sum()})"
                                                          for k, name in enumerate(EMOTIONS)]
    assert fig._suptitle.get_text().startswith("Penultimate features of all 8 PrivateTest faces: PCA\naccuracy 0.625")


def test_class_channels_figure_writes_each_value_in_a_colour_its_cell_shows(saved_figures, tmp_path):
    stats = {"channels": [0, 1], "selected_for": [0, 1], "top": {0: [0, 1], 1: [1]},
             "class_mean": np.array([[0.0, 1.5], [4.0, 2.0]] + [[np.nan, np.nan]] * 5),  # 5 classes absent
             "z": np.array([[-2.0, 0.5], [1.2, 1.1]] + [[np.nan, np.nan]] * 5)}
    ffeatures.class_channels_figure(stats, tmp_path / "c.png", n_faces=4)
    means_ax, z_ax = grid_panels(saved_figures[0])
    cells = {ax: {(t.get_position(), t.get_text(), t.get_color()) for t in ax.texts} for ax in (means_ax, z_ax)}
    # viridis is dark below the middle of the values (2.0); RdBu_r is dark from 0.6 of its range (1.2) on
    assert cells[means_ax] == {((0, 0), "0", "white"), ((1, 0), "1.5", "white"), ((0, 1), "4", "black"),
                               ((1, 1), "2", "black")}
    assert cells[z_ax] == {((0, 0), "-2.0", "white"), ((1, 0), "0.5", "black"), ((0, 1), "1.2", "white"),
                           ((1, 1), "1.1", "black")}
    assert z_ax.images[0].get_clim() == (-2.0, 2.0)  # the largest finite |z|: absent classes are NaN
    assert z_ax.get_xlabel() == "last-conv-layer channel (boxed: the 2 most selective for that emotion)"


@pytest.mark.parametrize("n_channels", [24, 25])
def test_class_channels_figure_writes_the_values_of_24_channels_at_most(saved_figures, tmp_path, n_channels):
    rng = np.random.default_rng(6)
    stats = class_channel_stats(rng.random((70, 40)), np.repeat(np.arange(7), 10), per_class=6)
    stats["channels"], stats["selected_for"] = stats["channels"][:n_channels], stats["selected_for"][:n_channels]
    stats["top"] = {k: [c for c in picked if c in stats["channels"]] for k, picked in stats["top"].items()}
    ffeatures.class_channels_figure(stats, tmp_path / "c.png", n_faces=70)
    means_ax, z_ax = grid_panels(saved_figures[0])
    assert len(means_ax.texts) == len(z_ax.texts) == (7 * 24 if n_channels == 24 else 0)


def test_a_taller_figure_keeps_the_same_band_for_its_title(saved_figures, tmp_path):
    """Each row adds the same height, and the band above the panels, where the title goes, stays as high
    in inches (a fraction of the height would crowd the title of a one-row figure)."""
    def channels(n):
        rows = [dict(face_row(4, "Sad", "Sad"), top_channels=[{"channel": 0, "mean_activation": 1.0}])] * n
        ffeatures.channels_figure(4, rows, np.zeros((n, 48, 48), np.uint8), np.ones((n, 1, 48, 48)), tmp_path / "c")

    def overview(n):
        ffeatures.overview_figure([overview_entry(k, True, True, np.random.default_rng(k)) for k in range(n)],
                                  tmp_path / "o")

    def top_faces(n):
        entries = [{"channel": c, "selected_for": ["Sad"], "faces": [{"true": "Sad", "activation": 1.0}]}
                   for c in range(n)]
        ffeatures.top_faces_figure(entries, np.zeros((n, 1, 48, 48), np.uint8), np.ones((n, 1, 48, 48)),
                                   tmp_path / "t")

    for draw, row_height, band in ((channels, 1.35, 0.55), (overview, 1.42, 1.0), (top_faces, 1.4, 0.6)):
        saved_figures.clear()
        draw(1)
        draw(4)
        (_, short), (_, tall) = (fig.get_size_inches() for fig in saved_figures)
        assert tall - short == pytest.approx(3 * row_height)
        bands = [(1 - fig.subplotpars.top) * fig.get_size_inches()[1] for fig in saved_figures]
        assert bands == pytest.approx([band] * 2)
        ffeatures.plt.close("all")
