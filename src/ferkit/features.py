"""What the network sees: activation maps, Grad-CAM, class-selective channels and a 2-D map of the
penultimate features, for a trained CNN run on PrivateTest.

The computations are plain functions on a model and a batch (`activation_maps`, `grad_cam`,
`choose_faces`, `class_channel_stats`, `embed_2d`); `features(run_dir, data, out)` runs them and
writes the figures, `features.json` (which faces were used, as CSV lines or image paths, and the
numbers behind every figure) and `embedding.csv` (the 2-D coordinates of every PrivateTest face).

Everything works on `forward_features` (the last convolutional block's maps) and `forward_head`,
the interface every model of the registry has, so no hooks are needed.

Example: ``ferkit features runs/cnn --data icml_face_data.csv --out runs/cnn/features``
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ferkit import data as fdata
from ferkit.config import check_seed
from ferkit.data import EMOTIONS
from ferkit.errors import FerkitError
from ferkit.evaluate import require_trained_on, run_data_path
from ferkit.fileio import output_folder, read_json, require_outside, write_csv, write_json
from ferkit.models import has_conv_layers, preprocess
from ferkit.visualize import plt, save

IMAGE_SIZE = fdata.IMAGE_SIZE
SPLIT = "PrivateTest"
OVERLAY_CMAP = "jet"
OVERLAY_ALPHA = 0.45
CHANNEL_CMAP = "viridis"
EMOTION_COLOURS = ("#d62728", "#8c564b", "#9467bd", "#2ca02c", "#1f77b4", "#ff7f0e", "#7f7f7f")


# ---------------------------------------------------------------------------------------------
# Computations: plain functions of a model and a batch


def require_cnn(model: nn.Module, name: str | None = None) -> None:
    """Raise a FerkitError unless `model` has convolutional layers (the MLP has none)."""
    if not has_conv_layers(model):
        name = name or type(model).__name__.lower()
        raise FerkitError(f"the {name} model has no convolutional layers: features needs a CNN run")


def _as_input(model: nn.Module, x: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 faces (B, 48, 48) are preprocessed; float input (B, 1, H, W) or (B, H, W) is used as is."""
    x = torch.as_tensor(x)
    if x.dtype == torch.uint8:
        x = preprocess(x)
    elif x.dim() == 3:
        x = x.unsqueeze(1)
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    # no channels-last copy for a channels-last model: with one grey channel both layouts are the same memory
    return x.float().to(device)


def _check_maps(maps: torch.Tensor) -> torch.Tensor:
    if maps.dim() != 4:
        raise FerkitError(f"forward_features returned shape {tuple(maps.shape)}, not (B, C, h, w) maps: "
                          "features needs a model whose last block is convolutional")
    return maps


def activation_maps(model: nn.Module, x: torch.Tensor | np.ndarray) -> torch.Tensor:
    """The last convolutional block's maps (B, C, h, w) for faces `x` (uint8 or preprocessed), in eval mode."""
    require_cnn(model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return _check_maps(model.forward_features(_as_input(model, x))).float()
    finally:
        model.train(was_training)


def upsample(maps: torch.Tensor, size: int = IMAGE_SIZE) -> torch.Tensor:
    """Bilinear upsampling of (B, h, w) or (B, C, h, w) maps to size x size."""
    squeeze = maps.dim() == 3
    if squeeze:
        maps = maps.unsqueeze(1)
    out = F.interpolate(maps.float(), size=(size, size), mode="bilinear", align_corners=False)
    return out[:, 0] if squeeze else out


def mean_activation_map(maps: torch.Tensor, size: int = IMAGE_SIZE) -> torch.Tensor:
    """The channel-mean of (B, C, h, w) maps, bilinearly upsampled to (B, size, size)."""
    return upsample(maps.mean(dim=1), size)


def grad_cam(model: nn.Module, x: torch.Tensor | np.ndarray, class_idx: int | Sequence[int] | torch.Tensor,
             size: int | None = None) -> torch.Tensor:
    """Grad-CAM on forward_features' output, upsampled (bilinear) to the input size: (B, H, W), >= 0.

    The weight of channel k for class c is the spatial mean of d logit_c / d A_k; the map is
    ReLU(sum_k weight_k A_k). `class_idx` is one class for all faces or one per face.
    """
    require_cnn(model)
    x = _as_input(model, x)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            maps = _check_maps(model.forward_features(x)).float()
        with torch.enable_grad():
            maps = maps.detach().requires_grad_(True)
            logits = model.forward_head(maps)
            idx = torch.as_tensor(class_idx, device=logits.device).long().reshape(-1)
            if idx.numel() == 1:
                idx = idx.expand(len(logits))
            if idx.numel() != len(logits):
                raise ValueError(f"class_idx has {idx.numel()} entries for {len(logits)} faces")
            score = logits.gather(1, idx[:, None]).sum()
            (grads,) = torch.autograd.grad(score, maps)
    finally:
        model.train(was_training)
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * maps.detach()).sum(dim=1))
    return upsample(cam, size or x.shape[-1]).clamp_min(0)


@torch.no_grad()
def scan(model: nn.Module, images: np.ndarray, batch_size: int = 256) -> dict[str, np.ndarray]:
    """One pass over uint8 faces: logits (N, K), per-channel spatial mean activation (N, C) and the
    penultimate features `forward_head(maps, pre_logits=True)` (N, D)."""
    require_cnn(model)
    was_training = model.training
    model.eval()
    logits, channel_means, penultimate = [], [], []
    try:
        for start in range(0, len(images), batch_size):
            maps = _check_maps(model.forward_features(_as_input(model, images[start:start + batch_size]))).float()
            channel_means.append(maps.mean(dim=(2, 3)).cpu())
            penultimate.append(model.forward_head(maps, pre_logits=True).float().reshape(len(maps), -1).cpu())
            logits.append(model.forward_head(maps).float().cpu())
    finally:
        model.train(was_training)
    return {"logits": torch.cat(logits).numpy(), "channel_means": torch.cat(channel_means).numpy(),
            "penultimate": torch.cat(penultimate).numpy()}


def choose_faces(labels: np.ndarray, preds: np.ndarray, n: int, seed: int = 0,
                 num_classes: int = len(EMOTIONS)) -> dict[int, list[int]]:
    """Up to `n` positions per class: half (rounded up) correctly classified, the rest wrongly
    classified, each part topped up from the other when it runs short; correct ones first."""
    rng = np.random.default_rng(seed)
    chosen = {}
    for k in range(num_classes):
        right = np.flatnonzero((labels == k) & (preds == k))
        wrong = np.flatnonzero((labels == k) & (preds != k))
        n_wrong = min(len(wrong), n // 2)
        n_right = min(len(right), n - n_wrong)
        n_wrong = min(len(wrong), n - n_right)
        picked_right = np.sort(rng.choice(right, size=n_right, replace=False)) if n_right else np.array([], int)
        picked_wrong = np.sort(rng.choice(wrong, size=n_wrong, replace=False)) if n_wrong else np.array([], int)
        chosen[k] = [int(i) for i in np.concatenate([picked_right, picked_wrong])]
    return chosen


def class_channel_stats(channel_means: np.ndarray, labels: np.ndarray, per_class: int = 3,
                        num_classes: int = len(EMOTIONS)) -> dict[str, Any]:
    """Mean activation of every channel per class, and the channels most selective for each class.

    Selectivity of channel c for class k is z = (mean over class k - mean over all faces) / std over
    all faces; 0 for a channel that does not vary. `top[k]` lists class k's `per_class` most selective
    channels (a channel may serve several classes); `channels` is their union in class order,
    `selected_for` the first class that picked each one.
    """
    channel_means = np.asarray(channel_means, dtype=np.float64)
    overall = channel_means.mean(axis=0)
    spread = channel_means.std(axis=0)
    class_mean = np.full((num_classes, channel_means.shape[1]), np.nan)
    counts = np.bincount(labels, minlength=num_classes)
    for k in range(num_classes):
        if counts[k]:
            class_mean[k] = channel_means[labels == k].mean(axis=0)
    # a spread under a millionth of the mean is rounding (activations are float32, 7 digits), not variation:
    # dividing by it would make a constant channel look selective
    varies = spread > 1e-6 * np.abs(overall)
    z = (class_mean - overall) / np.where(varies, spread, np.inf)
    top: dict[int, list[int]] = {}
    channels, selected_for = [], []
    for k in range(num_classes):
        if not counts[k]:
            continue
        top[k] = [int(c) for c in np.argsort(-z[k], kind="stable")[:per_class]]
        for c in top[k]:
            if c not in channels:
                channels.append(c)
                selected_for.append(k)
    return {"channels": channels, "selected_for": selected_for, "top": top, "class_mean": class_mean, "z": z,
            "overall_mean": overall, "overall_std": spread, "counts": counts}


def embed_2d(features: np.ndarray, seed: int = 0, method: str = "tsne") -> tuple[np.ndarray, str]:
    """2-D coordinates of feature vectors: standardise, PCA to 50, then t-SNE (or PCA only)."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    if method not in ("tsne", "pca"):
        raise FerkitError(f"unknown embedding {method!r}: use tsne or pca")
    x = np.asarray(features, dtype=np.float64)
    n = len(x)
    if n < 3:
        return np.zeros((n, 2)), "none (fewer than 3 faces)"
    x = StandardScaler().fit_transform(x)
    # standardised, a feature that varies has unit spread and a constant one none (or rounding's); with none
    # varying (a dead last layer), t-SNE's PCA start divides by their zero spread, and its NaNs crash the process
    if x.std(axis=0).max() < 0.5:
        return np.zeros((n, 2)), "none (the features are the same for every face)"
    dims = min(50, x.shape[1], n - 1)
    reduced = PCA(n_components=dims, random_state=seed).fit_transform(x)
    if method == "pca" or n < 10 or dims < 2:
        coords = reduced[:, :2] if dims >= 2 else np.column_stack([reduced[:, 0], np.zeros(n)])
        return coords, f"PCA of the standardised features (first two of {dims} components)"
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    perplexity = float(min(30.0, (n - 1) / 3))
    # One thread: on a busy machine OpenMP's spin-waits are pathological (2 threads on 2 shared
    # cores: 41 s instead of 0.15 s for 42 faces, 63 s instead of 25 s for the 3,589 test faces)
    with threadpool_limits(limits=1):
        coords = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(reduced)
    return coords, f"t-SNE (perplexity {perplexity:.3g}) of PCA-{dims} of the standardised features"


def peak(map2d: np.ndarray) -> dict[str, float]:
    """Where a 2-D map is largest: pixel row y and column x (0-based), and the value there."""
    y, x = np.unravel_index(int(np.argmax(map2d)), map2d.shape)
    return {"y": int(y), "x": int(x), "value": float(map2d[y, x])}


def _normalised(map2d: np.ndarray) -> np.ndarray:
    """A map scaled to [0, 1] by its maximum (an all-zero map stays zero)."""
    top = float(map2d.max())
    return map2d / top if top > 0 else np.zeros_like(map2d)


# ---------------------------------------------------------------------------------------------
# Figures


def _blank(ax: plt.Axes) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def _face(ax: plt.Axes, image: np.ndarray, overlay: np.ndarray | None = None, vmax: float = 1.0, *,
          gid: str) -> None:
    """A grey face, optionally with a map drawn over it; the face is always ax.images[0]. `gid` names the
    panel (its id in an SVG; the tests find panels by it)."""
    ax.imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    if overlay is not None:
        ax.imshow(overlay, cmap=OVERLAY_CMAP, vmin=0, vmax=vmax, alpha=OVERLAY_ALPHA, interpolation="bilinear")
    _blank(ax)
    ax.set_gid(gid)


def _colorbar(fig: plt.Figure, mappable, label: str, rect: Sequence[float]) -> None:
    cax = fig.add_axes(list(rect))
    bar = fig.colorbar(mappable, cax=cax)
    bar.set_label(label, fontsize=8)
    bar.ax.tick_params(labelsize=7)


def _unit_mappable(cmap: str, vmax: float = 1.0):
    return plt.cm.ScalarMappable(norm=plt.Normalize(0, vmax), cmap=cmap)


def _zero_note(cam: np.ndarray) -> str:
    return "" if cam.max() > 0 else "\n(zero: no positive evidence)"


def _origin_label(row: dict[str, Any]) -> str:
    return f"line {row['line']}" if "line" in row else Path(row["path"]).name


def faces_figure(emotion: int, rows: list[dict[str, Any]], images: np.ndarray, mean_maps: np.ndarray,
                 cams_true: np.ndarray, cams_pred: np.ndarray, path: Path) -> Path:
    """Columns: the chosen faces of one emotion. Rows: the face, the channel-mean activation of the
    last conv layer, Grad-CAM for the true class, Grad-CAM for the predicted class."""
    name = EMOTIONS[emotion]
    cols = max(1, len(rows))
    fig, axes = plt.subplots(4, cols, figsize=(1.45 * cols + 1.4, 6.6), squeeze=False)
    fig.subplots_adjust(left=0.16, right=0.86, top=0.86, bottom=0.02, wspace=0.08, hspace=0.32)
    row_names = ("face", "mean activation\n(last conv layer)", "Grad-CAM\ntrue class", "Grad-CAM\npredicted class")
    for r, label in enumerate(row_names):
        axes[r, 0].set_ylabel(label, fontsize=8)
    if not rows:
        _no_faces(axes, name)
    for j, row in enumerate(rows):
        origin = _origin_label(row)
        mark = "correct" if row["correct"] else "wrong"
        _face(axes[0, j], images[j], gid=f"face:{j}")
        axes[0, j].set_title(f"{origin}\npred {row['pred']} ({row['prob_pred']:.2f})\n{mark}", fontsize=7,
                             color="black" if row["correct"] else "#b00000")
        _face(axes[1, j], images[j], _normalised(mean_maps[j]), gid=f"mean:{j}")
        _face(axes[2, j], images[j], _normalised(cams_true[j]), gid=f"cam_true:{j}")
        axes[2, j].set_title(f"{row['true']}" + _zero_note(cams_true[j]), fontsize=7)
        _face(axes[3, j], images[j], _normalised(cams_pred[j]), gid=f"cam_pred:{j}")
        axes[3, j].set_title(f"{row['pred']}" + (" (= true)" if row["correct"] else "") + _zero_note(cams_pred[j]),
                             fontsize=7)
    _colorbar(fig, _unit_mappable(OVERLAY_CMAP), "map / its maximum on the face", (0.88, 0.08, 0.02, 0.6))
    fig.suptitle(f"{name}: what the last conv layer sees ({SPLIT})", fontsize=10)
    return save(fig, path)


def _no_faces(axes: np.ndarray, emotion_name: str) -> None:
    """Blank panels that say the split has no faces of this emotion (possible on small data)."""
    for ax in axes.ravel():
        _blank(ax)
    axes[0, 0].text(0.5, 0.5, f"no {SPLIT} faces\nof {emotion_name}", ha="center", va="center", fontsize=9,
                    transform=axes[0, 0].transAxes)


def channels_figure(emotion: int, rows: list[dict[str, Any]], images: np.ndarray, channel_maps: np.ndarray,
                    path: Path) -> Path:
    """A row per chosen face of one emotion: the face, then its strongest channels of the last conv
    layer (bilinearly upsampled), on one colour scale."""
    name = EMOTIONS[emotion]
    k = channel_maps.shape[1] if len(rows) else 1
    nrows = max(1, len(rows))
    fig, axes = plt.subplots(nrows, k + 1, figsize=(1.15 * (k + 1) + 1.0, 1.35 * nrows + 0.7), squeeze=False)
    fig.subplots_adjust(left=0.02, right=0.88, top=1 - 0.55 / (1.35 * nrows + 0.7), bottom=0.02, wspace=0.08,
                        hspace=0.45)
    vmax = float(channel_maps.max()) if len(rows) and channel_maps.size and channel_maps.max() > 0 else 1.0
    if not rows:
        _no_faces(axes, name)
    for j, row in enumerate(rows):
        _face(axes[j, 0], images[j], gid=f"face:{j}")
        axes[j, 0].set_title(f"{_origin_label(row)}\npred {row['pred']}", fontsize=7,
                             color="black" if row["correct"] else "#b00000")
        for i, channel in enumerate(row["top_channels"]):
            ax = axes[j, i + 1]
            ax.imshow(channel_maps[j, i], cmap=CHANNEL_CMAP, vmin=0, vmax=vmax, interpolation="bilinear")
            _blank(ax)
            ax.set_gid(f"channel:{j}:{channel['channel']}")
            ax.set_title(f"ch {channel['channel']}: {channel['mean_activation']:.2g}", fontsize=7)
    _colorbar(fig, _unit_mappable(CHANNEL_CMAP, vmax), "activation", (0.90, 0.1, 0.015, 0.75))
    fig.suptitle(f"{name}: the {k} strongest channels of the last conv layer per face "
                 "(title: channel, mean activation)", fontsize=9)
    return save(fig, path)


def overview_figure(per_emotion: list[dict[str, Any]], path: Path) -> Path:
    """A row per emotion: a correctly classified face with its Grad-CAM, and a misclassified one with
    Grad-CAM for the true and for the predicted class. `per_emotion[k]` holds "right": (row, image,
    cam) and "wrong": (row, image, cam_true, cam_pred), either None when the emotion has no such face."""
    n = len(per_emotion)
    fig, axes = plt.subplots(n, 6, figsize=(8.6, 1.42 * n + 1.0), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 1, 0.18, 1, 1, 1]})
    fig.subplots_adjust(left=0.1, right=0.87, top=1 - 1.0 / (1.42 * n + 1.0), bottom=0.01, wspace=0.12,
                        hspace=0.42)
    for ax in axes.ravel():
        _blank(ax)
    headers = {0: "CORRECT\n", 1: "Grad-CAM\n", 3: "MISCLASSIFIED\n", 4: "Grad-CAM\n", 5: "Grad-CAM\n"}
    for k, entry in enumerate(per_emotion):
        axes[k, 0].set_ylabel(EMOTIONS[k], fontsize=9, rotation=0, ha="right", va="center")
        if entry.get("right") is not None:
            row, image, cam = entry["right"]
            _face(axes[k, 0], image, gid=f"right_face:{k}")
            axes[k, 0].set_title(f"{_origin_label(row)} ({row['prob_pred']:.2f})", fontsize=6.5)
            _face(axes[k, 1], image, _normalised(cam), gid=f"right_cam:{k}")
            axes[k, 1].set_title(row["pred"] + _zero_note(cam), fontsize=6.5)
        else:
            axes[k, 0].text(0.5, 0.5, "none", ha="center", va="center", fontsize=7, transform=axes[k, 0].transAxes)
        if entry.get("wrong") is not None:
            row, image, cam_true, cam_pred = entry["wrong"]
            _face(axes[k, 3], image, gid=f"wrong_face:{k}")
            axes[k, 3].set_title(f"{_origin_label(row)}", fontsize=6.5)
            _face(axes[k, 4], image, _normalised(cam_true), gid=f"wrong_cam_true:{k}")
            axes[k, 4].set_title("true: " + row["true"] + _zero_note(cam_true), fontsize=6.5)
            _face(axes[k, 5], image, _normalised(cam_pred), gid=f"wrong_cam_pred:{k}")
            axes[k, 5].set_title(f"pred: {row['pred']} ({row['prob_pred']:.2f})" + _zero_note(cam_pred),
                                 fontsize=6.5, color="#b00000")
        else:
            axes[k, 3].text(0.5, 0.5, "none", ha="center", va="center", fontsize=7, transform=axes[k, 3].transAxes)
        axes[k, 2].axis("off")
    for c, header in headers.items():  # the first row's titles carry the column headers
        title = axes[0, c].title
        axes[0, c].set_title(header + title.get_text(), fontsize=6.5, color=title.get_color())
    _colorbar(fig, _unit_mappable(OVERLAY_CMAP), "map / its maximum on the face", (0.89, 0.1, 0.02, 0.7))
    fig.suptitle(f"Where the network looks: Grad-CAM of the last conv layer on {SPLIT} faces\n"
                 "(faces: CSV line or file, predicted probability; maps: the class each map is for)", fontsize=9)
    return save(fig, path)


def class_channels_figure(stats: dict[str, Any], path: Path, n_faces: int) -> Path:
    """Heat maps of classes x selected channels: mean activation, and its selectivity (z)."""
    channels, selected_for = stats["channels"], stats["selected_for"]
    per_class = max((len(v) for v in stats["top"].values()), default=0)
    means = stats["class_mean"][:, channels]
    z = stats["z"][:, channels]
    width = max(5.0, 0.42 * len(channels) + 2.6)
    fig, axes = plt.subplots(2, 1, figsize=(width, 6.4))
    fig.subplots_adjust(hspace=0.55)
    labels = [f"ch {c}" for c in channels]
    zmax = float(np.nanmax(np.abs(z))) if np.isfinite(z).any() and np.nanmax(np.abs(z)) > 0 else 1.0
    panels = (
        (axes[0], means, "viridis", None, None, "mean activation",
         f"Mean activation per emotion (true label) over {SPLIT} ({n_faces} faces)"),
        (axes[1], z, "RdBu_r", -zmax, zmax, "(emotion mean - mean of all faces)\n/ SD over all faces",
         "Selectivity: how far above the average face each emotion drives the channel"),
    )
    for ax, values, cmap, vmin, vmax, bar_label, title in panels:
        shown = np.ma.masked_invalid(values)
        im = ax.imshow(shown, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto", interpolation="nearest")
        bar = fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
        bar.set_label(bar_label, fontsize=7)
        bar.ax.tick_params(labelsize=7)
        ax.set_yticks(range(len(EMOTIONS)), EMOTIONS, fontsize=8)
        ax.set_xticks(range(len(channels)), labels, rotation=90, fontsize=7)
        for tick, k in zip(ax.get_xticklabels(), selected_for):
            tick.set_color(EMOTION_COLOURS[k])
        for k, picked in stats["top"].items():  # box each emotion's most selective channels
            for c in picked:
                col = channels.index(c)
                ax.add_patch(plt.Rectangle((col - 0.5, k - 0.5), 1, 1, fill=False, edgecolor="black",
                                           linewidth=1.2))
        if len(channels) <= 24:
            finite = values[np.isfinite(values)]
            mid = (np.nanmin(finite) + np.nanmax(finite)) / 2 if finite.size else 0
            for (r, c), v in np.ndenumerate(values):
                if np.isfinite(v):
                    light = (v < mid) if cmap == "viridis" else (abs(v) < 0.6 * zmax)
                    dark_cell = light if cmap == "viridis" else not light
                    ax.text(c, r, f"{v:.2g}" if cmap == "viridis" else f"{v:.1f}", ha="center", va="center",
                            fontsize=5.5, color="white" if dark_cell else "black")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(f"last-conv-layer channel (boxed: the {per_class} most selective for that emotion)",
                      fontsize=7)
    return save(fig, path)


def top_faces_figure(entries: list[dict[str, Any]], images: np.ndarray, maps: np.ndarray, path: Path) -> Path:
    """A row per channel: the faces that excite it most, its upsampled map drawn over each."""
    nrows = max(1, len(entries))
    m = images.shape[1] if len(entries) else 1
    fig, axes = plt.subplots(nrows, m, figsize=(1.2 * m + 2.2, 1.4 * nrows + 0.6), squeeze=False)
    fig.subplots_adjust(left=0.2, right=0.86, top=1 - 0.6 / (1.4 * nrows + 0.6), bottom=0.02, wspace=0.06,
                        hspace=0.35)
    for r, entry in enumerate(entries):
        vmax = float(maps[r].max()) if maps[r].max() > 0 else 1.0
        for j, face in enumerate(entry["faces"]):
            _face(axes[r, j], images[r, j], maps[r, j], vmax=vmax, gid=f"top:{entry['channel']}:{j}")
            axes[r, j].set_title(f"{face['true']} ({face['activation']:.2g})", fontsize=7)
        for j in range(len(entry["faces"]), m):
            axes[r, j].axis("off")
        emotions = entry["selected_for"]
        axes[r, 0].set_ylabel(f"ch {entry['channel']}\nmost selective\nfor " + ",\n".join(emotions), fontsize=8,
                              rotation=0, ha="right", va="center",
                              color=EMOTION_COLOURS[EMOTIONS.index(emotions[0])] if len(emotions) == 1 else "black")
    if not entries:
        _blank(axes[0, 0])
    _colorbar(fig, _unit_mappable(OVERLAY_CMAP), "activation / the row's maximum", (0.88, 0.1, 0.02, 0.7))
    fig.suptitle(f"The {SPLIT} faces that excite each channel most (title: true emotion, mean activation)",
                 fontsize=9)
    return save(fig, path)


def embedding_figure(coords: np.ndarray, labels: np.ndarray, preds: np.ndarray, method: str, accuracy: float,
                     path: Path) -> Path:
    """Two scatter plots of the 2-D map: coloured by true emotion and by predicted emotion."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.6))
    fig.subplots_adjust(wspace=0.08, bottom=0.16)
    for ax, colour_by, title in ((axes[0], labels, "coloured by true emotion"),
                                 (axes[1], preds, "coloured by predicted emotion")):
        for k, name in enumerate(EMOTIONS):
            mask = colour_by == k
            ax.scatter(coords[mask, 0], coords[mask, 1], s=5, alpha=0.65, color=EMOTION_COLOURS[k], linewidths=0,
                       label=f"{name} ({int(mask.sum())})")
        for k, name in enumerate(EMOTIONS):  # emotion names at the median of the true class
            mask = labels == k
            if mask.any():
                x, y = np.median(coords[mask], axis=0)
                ax.text(x, y, name, fontsize=8, fontweight="bold", ha="center", va="center", color="black",
                        bbox={"boxstyle": "round,pad=0.2", "facecolor": "white", "alpha": 0.7, "linewidth": 0})
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(title, fontsize=10)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=len(EMOTIONS), fontsize=8, markerscale=3, frameon=False,
               title="emotion (faces of that true emotion); names mark each true emotion's median", title_fontsize=8)
    fig.suptitle(f"Penultimate features of all {len(labels)} {SPLIT} faces: {method}\n"
                 f"accuracy {accuracy:.3f} (no TTA); emotions that overlap are the ones the network confuses", fontsize=10)
    return save(fig, path)


# ---------------------------------------------------------------------------------------------
# The command


def _json_safe(value: Any) -> Any:
    """Arrays to lists, NaN to null (JSON has no NaN), rounded to 6 significant digits."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return _json_safe(value.tolist())
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return None if not np.isfinite(value) else float(f"{value:.6g}")
    return value


MAX_FACES_PER_EMOTION = 16  # --n 1000 made figures 53,000 pixels wide and a 109 MB report.html


def features(run_dir: str | os.PathLike, data: str | os.PathLike | None, out: str | os.PathLike, n: int = 4,
             seed: int = 0, top_k: int = 6, channels_per_class: int = 3, faces_per_channel: int = 6,
             embedding: str = "tsne", device: str = "cpu", batch_size: int = 256, threads: int = 0) -> dict[str, Any]:
    """Write what a CNN run's last conv layer sees on PrivateTest into `out`; return features.json.

    `data` None means the data file the run was trained on (run.json). `n` faces per emotion, 1 to
    16 (correct and wrong ones, chosen with `seed`), the `top_k` strongest channels of each,
    `channels_per_class` selective channels per emotion, `faces_per_channel` faces that excite
    each; `embedding` is tsne or pca. `threads` > 0 sets torch's CPU threads for
    the call (1 is much faster on a machine that other jobs keep busy); 0 leaves torch's default.
    An earlier features.json in `out` is removed first and the new one written last.

    Example: ``ferkit features runs/cnn --data icml_face_data.csv --n 4 --out runs/cnn/features``
    """
    if threads < 0:
        raise FerkitError(f"--threads {threads}: use a positive number of threads, or 0 for torch's choice")
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _features(run_dir, data, out, n, seed, top_k, channels_per_class, faces_per_channel, embedding,
                         device, batch_size)
    finally:
        torch.set_num_threads(previous)


def _require_own_or_none(out: Path, run: Path) -> None:
    """Stop before the features of another run are replaced: a study's, say, which its report and `ferkit run`
    read as its own CNN's. This run's earlier features (of an older checkpoint) may be; a features.json from
    before `run_folder` was recorded cannot say whose it is, and is replaced as it was."""
    try:
        recorded = read_json(out / "features.json")
    except (OSError, ValueError):
        return
    owner = recorded.get("run_folder") if isinstance(recorded, dict) else None
    if isinstance(owner, str) and owner != os.path.realpath(run):
        raise FerkitError(f"--out {out}: holds the features of another run ({owner}); name another folder (such as "
                          f"{run / 'features'}), or delete that one if it is no longer wanted")


def _features(run_dir: str | os.PathLike, data: str | os.PathLike | None, out: str | os.PathLike, n: int, seed: int,
              top_k: int, channels_per_class: int, faces_per_channel: int, embedding: str, device: str,
              batch_size: int) -> dict[str, Any]:
    from ferkit.train import load_run_model, pick_device

    started = time.perf_counter()
    if not 1 <= n <= MAX_FACES_PER_EMOTION:
        raise FerkitError(f"--n {n}: use 1 to {MAX_FACES_PER_EMOTION} faces per emotion (each figure puts them in one "
                          "row)")
    check_seed(seed)
    run = Path(run_dir)
    out = output_folder(out, create=False)  # refused before the work, made when there is something to write
    _require_own_or_none(out, run)
    target = pick_device(device)
    model, checkpoint, checkpoint_sha = load_run_model(run, device=target)  # the checksum of the model read
    require_cnn(model, checkpoint.get("model_name"))
    model = model.to(memory_format=torch.channels_last)  # about 1.7x faster convolutions on a CPU
    data_path = run_data_path(run, data)
    require_outside(data_path, out)
    dataset = fdata.load(data_path)
    require_trained_on(dataset, checkpoint, run)
    rows = dataset.indices(SPLIT)
    if len(rows) == 0:
        raise FerkitError(f"{dataset.source} has no {SPLIT} rows: features are drawn on {SPLIT}")
    output_folder(out)
    # features.json is written last: a run interrupted after some figures must not leave a previous
    # run's JSON beside them (the report would take the new figures for the old numbers)
    (out / "features.json").unlink(missing_ok=True)
    seconds: dict[str, float] = {}

    def origin(i: int) -> dict[str, Any]:
        return {dataset.origin_column: dataset.origins([i])[0]}

    # one pass over the whole split
    tick = time.perf_counter()
    images = dataset.images[rows]
    labels = dataset.labels[rows].astype(np.int64)
    scanned = scan(model, images, batch_size)
    probs = torch.softmax(torch.from_numpy(scanned["logits"]), dim=1).numpy()
    preds = probs.argmax(1)
    accuracy = float((preds == labels).mean())
    channel_means = scanned["channel_means"]
    layer_shape = list(activation_maps(model, images[:1]).shape[1:])
    seconds["scan"] = time.perf_counter() - tick

    # the chosen faces: activation maps and Grad-CAM
    tick = time.perf_counter()
    chosen = choose_faces(labels, preds, n, seed)
    figures: list[str] = []
    faces_json: list[dict[str, Any]] = []
    overview: list[dict[str, Any]] = [{} for _ in EMOTIONS]
    per_emotion = []
    for k in range(len(EMOTIONS)):
        pos = np.array(chosen[k], dtype=int)
        face_rows: list[dict[str, Any]] = []
        if len(pos):
            faces_u8 = images[pos]
            maps = activation_maps(model, faces_u8)
            mean_maps = mean_activation_map(maps).cpu().numpy()
            cams_true = grad_cam(model, faces_u8, labels[pos]).cpu().numpy()
            cams_pred = grad_cam(model, faces_u8, preds[pos]).cpu().numpy()
            strength = maps.mean(dim=(2, 3))
            top = torch.argsort(strength, dim=1, descending=True)[:, :top_k]
            channel_maps = upsample(torch.stack([maps[j, top[j]] for j in range(len(pos))])).cpu().numpy()
            for j, p in enumerate(pos):
                i = int(rows[p])
                face_rows.append({
                    **origin(i), "index": i, "emotion": EMOTIONS[k], "true": EMOTIONS[int(labels[p])],
                    "pred": EMOTIONS[int(preds[p])], "correct": bool(preds[p] == labels[p]),
                    "prob_true": float(probs[p, labels[p]]), "prob_pred": float(probs[p, preds[p]]),
                    "top_channels": [{"channel": int(c), "mean_activation": float(strength[j, c])} for c in top[j]],
                    "mean_activation_peak": peak(mean_maps[j]),
                    "gradcam_true_peak": peak(cams_true[j]),
                    "gradcam_pred_peak": peak(cams_pred[j]),
                    "figures": [f"faces_{EMOTIONS[k].lower()}.png", f"channels_{EMOTIONS[k].lower()}.png"],
                })
            right = next((j for j, r in enumerate(face_rows) if r["correct"]), None)
            wrong = next((j for j, r in enumerate(face_rows) if not r["correct"]), None)
            for j in (right, wrong):
                if j is not None:
                    face_rows[j]["figures"].append("overview.png")
            overview[k] = {
                "right": None if right is None else (face_rows[right], faces_u8[right], cams_true[right]),
                "wrong": None if wrong is None else (face_rows[wrong], faces_u8[wrong], cams_true[wrong],
                                                     cams_pred[wrong])}
        else:
            faces_u8 = np.zeros((0, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
            mean_maps = cams_true = cams_pred = np.zeros((0, IMAGE_SIZE, IMAGE_SIZE))
            channel_maps = np.zeros((0, 0, IMAGE_SIZE, IMAGE_SIZE))
        per_emotion.append((k, face_rows, faces_u8, mean_maps, cams_true, cams_pred, channel_maps))
        faces_json.extend(face_rows)
    seconds["gradcam"] = time.perf_counter() - tick

    # channels per emotion and the faces that excite them
    tick = time.perf_counter()
    stats = class_channel_stats(channel_means, labels, channels_per_class)
    top_entries, top_images, top_maps = [], [], []
    m = min(faces_per_channel, len(rows))
    firsts: dict[int, list[int]] = {}  # the most selective channel of each emotion -> the emotions
    for k, picked in stats["top"].items():
        firsts.setdefault(picked[0], []).append(k)
    for c, ks in firsts.items():
        best = np.argsort(-channel_means[:, c], kind="stable")[:m]
        maps = activation_maps(model, images[best])[:, c]
        top_images.append(images[best])
        top_maps.append(upsample(maps).cpu().numpy())
        top_entries.append({"channel": int(c), "selected_for": [EMOTIONS[k] for k in ks], "faces": [
            {**origin(int(rows[p])), "index": int(rows[p]), "true": EMOTIONS[int(labels[p])],
             "pred": EMOTIONS[int(preds[p])], "activation": float(channel_means[p, c])} for p in best]})
    seconds["channels"] = time.perf_counter() - tick

    # the 2-D map of the penultimate features
    tick = time.perf_counter()
    coords, method = embed_2d(scanned["penultimate"], seed=seed, method=embedding)
    seconds["embedding"] = time.perf_counter() - tick

    # figures and files
    tick = time.perf_counter()
    for k, face_rows, faces_u8, mean_maps, cams_true, cams_pred, channel_maps in per_emotion:
        name = EMOTIONS[k].lower()
        faces_figure(k, face_rows, faces_u8, mean_maps, cams_true, cams_pred, out / f"faces_{name}.png")
        channels_figure(k, face_rows, faces_u8, channel_maps, out / f"channels_{name}.png")
        figures += [f"faces_{name}.png", f"channels_{name}.png"]
    overview_figure(overview, out / "overview.png")
    class_channels_figure(stats, out / "class_channels.png", len(rows))
    top_faces_figure(top_entries, np.array(top_images), np.array(top_maps), out / "top_faces.png")
    embedding_figure(coords, labels, preds, method, accuracy, out / "embedding.png")
    figures += ["overview.png", "class_channels.png", "top_faces.png", "embedding.png"]
    _write_embedding_csv(out / "embedding.csv", dataset, rows, labels, preds, coords)
    seconds["figures"] = time.perf_counter() - tick
    seconds["total"] = time.perf_counter() - started

    channels = stats["channels"]
    result = {
        "run": str(run), "run_folder": os.path.realpath(run), "model": checkpoint.get("model_name"),
        "checkpoint_epoch": checkpoint.get("epoch"),
        "checkpoint_sha256": checkpoint_sha,
        "data": dataset.source, **dataset.checksums(), "split": SPLIT, "faces": len(rows),
        "accuracy": accuracy, "seed": seed, "n": n,
        "row_key": dataset.origin_column,
        "layer": {"name": "forward_features (last convolutional block)", "shape": layer_shape},
        "maps": "activation and Grad-CAM maps are bilinearly upsampled to 48x48; peaks are 0-based pixel "
                "(y = row, x = column); Grad-CAM weights are the spatial means of d logit / d features",
        "chosen": faces_json,
        "class_channels": {
            "figure": "class_channels.png",
            "description": f"the {channels_per_class} most selective channels per emotion (faces grouped by their "
                           f"true label), over {len(rows)} faces",
            "classes": list(EMOTIONS), "class_counts": stats["counts"],
            "channels": channels, "selected_for": [EMOTIONS[k] for k in stats["selected_for"]],
            "top_per_class": {EMOTIONS[k]: v for k, v in stats["top"].items()},
            "mean_activation": stats["class_mean"][:, channels], "z": stats["z"][:, channels],
            "overall_mean": stats["overall_mean"][channels], "overall_std": stats["overall_std"][channels],
            "all_channels_mean_activation": stats["class_mean"],
        },
        "top_faces": {"figure": "top_faces.png",
                      "description": f"the {m} faces with the highest mean activation of each channel",
                      "channels": top_entries},
        "embedding": {"figure": "embedding.png", "csv": "embedding.csv", "method": method,
                      "description": f"{method}; accuracy {accuracy:.3f}",
                      "features": "forward_head(forward_features(x), pre_logits=True)",
                      "dimensions": int(scanned["penultimate"].shape[1]),
                      "class_medians": {EMOTIONS[k]: np.median(coords[labels == k], axis=0)
                                        for k in range(len(EMOTIONS)) if (labels == k).any()}},
        "figures": figures,
        "seconds": seconds,
    }
    result = _json_safe(result)
    write_json(out / "features.json", result)
    return result


def _write_embedding_csv(path: Path, dataset: fdata.Dataset, rows: np.ndarray, labels: np.ndarray,
                         preds: np.ndarray, coords: np.ndarray) -> None:
    write_csv(path, [dataset.origin_column, "true", "pred", "true_name", "pred_name", "x", "y"],
              ([where, int(t), int(p), EMOTIONS[int(t)], EMOTIONS[int(p)], f"{x:.5g}", f"{y:.5g}"]
               for where, t, p, (x, y) in zip(dataset.origins(rows), labels, preds, coords)))
