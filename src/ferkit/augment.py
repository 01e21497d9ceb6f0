"""Augmentation of whole batches on the device: one affine warp (shift, rotation, zoom, flip, and
optionally a smaller random crop), random erasing, and optional mixup/cutmix. No per-image Python, no
DataLoader workers."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ferkit.config import TrainConfig


def random_affine(x: torch.Tensor, cfg: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    """Warp each image of x (B, 1, H, W) by its own random shift, rotation, zoom and flip; with
    `cfg.train_crop`, keep a square of that many pixels at a random place of each warped image, at the
    same pixel scale (B, 1, train_crop, train_crop)."""
    b, _, h, w = x.shape
    device = x.device

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.rand(b, generator=generator, device=device) * (high - low) + low

    angle = uniform(-cfg.max_rotate, cfg.max_rotate) * (math.pi / 180)
    scale = 1.0 / uniform(1 - cfg.max_scale, 1 + cfg.max_scale)  # grid scale: < 1 zooms in
    flip = torch.where(torch.rand(b, generator=generator, device=device) < 0.5, -1.0, 1.0) if cfg.flip \
        else torch.ones(b, device=device)
    shift_x = uniform(-cfg.max_shift, cfg.max_shift) * (2 / w)  # grid units span 2 across the image
    shift_y = uniform(-cfg.max_shift, cfg.max_shift) * (2 / h)
    out_h, out_w = h, w
    if cfg.train_crop:  # drawn last, so that the draws above stay those of a run without a crop
        out_h = out_w = cfg.train_crop
        shift_x = shift_x + uniform(-1, 1) * ((w - out_w) / w)  # the crop's centre: anywhere it fits
        shift_y = shift_y + uniform(-1, 1) * ((h - out_h) / h)
    # grid units span 2 across the output, so a crop's spans shrink by crop/size to keep the pixel scale
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.stack([torch.stack([cos * flip * (out_w / w), -sin * (out_h / h), shift_x], 1),
                         torch.stack([sin * flip * (out_w / w), cos * (out_h / h), shift_y], 1)], 1)  # (B, 2, 3)
    grid = F.affine_grid(theta, [b, x.shape[1], out_h, out_w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_erase(x: torch.Tensor, prob: float, generator: torch.Generator,
                 area: tuple[float, float] = (0.02, 0.2)) -> torch.Tensor:
    """Set one random rectangle per chosen image to zero (the mean after normalisation)."""
    b, _, h, w = x.shape
    device = x.device
    rand = lambda: torch.rand(b, generator=generator, device=device)  # noqa: E731
    chosen = rand() < prob
    frac = rand() * (area[1] - area[0]) + area[0]
    aspect = torch.exp((rand() - 0.5) * math.log(9))  # 1/3 .. 3
    eh = (torch.sqrt(frac * aspect) * h).clamp(1, h)
    ew = (torch.sqrt(frac / aspect) * w).clamp(1, w)
    top = rand() * (h - eh)
    left = rand() * (w - ew)
    rows = torch.arange(h, device=device).view(1, h, 1)
    cols = torch.arange(w, device=device).view(1, 1, w)
    inside = (rows >= top.view(b, 1, 1)) & (rows < (top + eh).view(b, 1, 1)) & \
             (cols >= left.view(b, 1, 1)) & (cols < (left + ew).view(b, 1, 1)) & chosen.view(b, 1, 1)
    return x.masked_fill(inside.unsqueeze(1), 0.0)


def mix(x: torch.Tensor, targets: torch.Tensor, cfg: TrainConfig,
        generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup or cutmix (one per batch, at random when both are on) on one-hot `targets` (B, C)."""
    modes = [m for m, alpha in (("mixup", cfg.mixup), ("cutmix", cfg.cutmix)) if alpha > 0]
    if not modes:
        return x, targets
    pick = int(torch.randint(len(modes), (1,), generator=generator, device=generator.device))
    alpha = cfg.mixup if modes[pick] == "mixup" else cfg.cutmix
    lam = _beta(alpha, generator)
    perm = torch.randperm(x.shape[0], generator=generator, device=generator.device).to(x.device)
    if modes[pick] == "mixup":
        return lam * x + (1 - lam) * x[perm], lam * targets + (1 - lam) * targets[perm]
    _, _, h, w = x.shape
    cut_h, cut_w = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
    cy = int(torch.randint(h, (1,), generator=generator, device=generator.device))
    cx = int(torch.randint(w, (1,), generator=generator, device=generator.device))
    y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
    x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
    mixed = x.clone()
    mixed[:, :, y0:y1, x0:x1] = x[perm][:, :, y0:y1, x0:x1]
    lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)
    return mixed, lam * targets + (1 - lam) * targets[perm]


def _beta(alpha: float, generator: torch.Generator) -> float:
    """A Beta(alpha, alpha) draw fixed by the seeded torch generator (torch.distributions takes none)."""
    seed = int(torch.randint(2**31 - 1, (1,), generator=generator, device=generator.device))
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def augment_batch(x: torch.Tensor, cfg: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    """The geometric and erasing augmentation of a normalised float batch (B, 1, H, W)."""
    if not cfg.augment:
        return x
    x = random_affine(x, cfg, generator)
    if cfg.erase_prob > 0:
        x = random_erase(x, cfg.erase_prob, generator)
    return x
