"""The model registry and the two model families: a VGG-style CNN and an MLP on raw pixels.

Every model takes (B, 1, 48, 48) float images (normalised by `preprocess`) and exposes
`forward_features(x)` (the last convolutional block's maps, or the hidden vector of the MLP) and
`forward_head(features, pre_logits=False)`, so that feature figures need no hooks.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, Callable

import torch
from torch import nn

from ferkit.config import RESIDUAL_BLOCKS, residual_depth_message
from ferkit.errors import FerkitError

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def add(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = builder
        return builder

    return add


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def get_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered model `name`; unknown names list the known ones."""
    if name not in _REGISTRY:
        raise FerkitError(f"unknown model {name!r}: known models are {', '.join(list_models())}")
    builder = _REGISTRY[name]
    try:  # only a wrong argument is the caller's mistake; any other TypeError is a bug, with its traceback
        inspect.signature(builder).bind(**kwargs)
    except TypeError as exc:
        raise FerkitError(f"model {name!r}: {exc}") from None
    return builder(**kwargs)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


PIXEL_CENTER, PIXEL_SCALE = 128.0, 64.0  # (x - center) / scale: about zero mean and unit spread on FER2013


def preprocess(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 48, 48) or (B, 1, H, W) -> float (B, 1, H, W) scaled to about zero mean, unit spread."""
    if images.dim() == 3:
        images = images.unsqueeze(1)
    return (images.float() - PIXEL_CENTER) / PIXEL_SCALE


def _dropout(p: float) -> nn.Module:
    # p=0 is an Identity, not a Dropout(0), so the layer table lists no dropout that does nothing;
    # neither holds parameters, so checkpoints load either way
    return nn.Dropout(p) if p else nn.Identity()


def _conv_bn(cin: int, cout: int, batch_norm: bool = True, relu: bool = True) -> nn.Sequential:
    if not batch_norm:  # the ablation without batch norm: the conv gets its bias back
        layers = [nn.Conv2d(cin, cout, 3, padding=1)]
    else:
        layers = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """He et al.'s basic block, ReLU(x + conv-BN-ReLU-conv-BN), its last batch norm (or conv) starting
    at zero so that the block begins as the identity (Goyal et al. 2017)."""

    def __init__(self, channels: int, batch_norm: bool = True):
        super().__init__()
        self.branch = nn.Sequential(_conv_bn(channels, channels, batch_norm),
                                    _conv_bn(channels, channels, batch_norm, relu=False))
        last = self.branch[-1][-1]
        nn.init.zeros_(last.weight)
        if last.bias is not None:
            nn.init.zeros_(last.bias)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(x + self.branch(x))


class ResidualStage(nn.Module):
    """`depth` 3x3 conv-BN-ReLU layers; with `residual`, the first sets the width and the other pairs
    get an identity shortcut (so `depth` is odd), in one of two blocks: "branch_relu" adds two conv-BN-ReLU layers to its input (every block adds a
    non-negative signal, and the untrained deep network starts far from uniform predictions), or
    "resnet", a `BasicBlock`."""

    def __init__(self, cin: int, cout: int, depth: int, residual: bool, batch_norm: bool = True,
                 residual_block: str = "branch_relu"):
        super().__init__()
        if residual_block not in RESIDUAL_BLOCKS:
            raise FerkitError(f"unknown residual_block {residual_block!r}: use one of {', '.join(RESIDUAL_BLOCKS)}")
        if residual and depth % 2 == 0:
            raise FerkitError(residual_depth_message(depth))
        self.entry = _conv_bn(cin, cout, batch_norm)
        if not residual:
            self.blocks = nn.ModuleList(_conv_bn(cout, cout, batch_norm) for _ in range(depth - 1))
        elif residual_block == "resnet":
            self.blocks = nn.ModuleList(BasicBlock(cout, batch_norm) for _ in range((depth - 1) // 2))
        else:
            self.blocks = nn.ModuleList(nn.Sequential(_conv_bn(cout, cout, batch_norm), _conv_bn(cout, cout, batch_norm))
                                        for _ in range((depth - 1) // 2))
        self.add_input = residual and residual_block == "branch_relu"  # a BasicBlock adds its own input

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.entry(x)
        for block in self.blocks:
            x = x + block(x) if self.add_input else block(x)
        return x


@register_model("cnn")
class CNN(nn.Module):
    """VGG-style: stages of 3x3 conv-BN-ReLU, 2x2 max-pool between stages, then global average
    and max pooling, dropout (when p > 0) and a linear classifier. The defaults are the cpu profile's
    (`TrainConfig`), which training always passes in full."""

    def __init__(self, widths: Sequence[int] = (16, 32, 96, 192), depth: int = 2, residual: bool = False,
                 dropout: float = 0.0, batch_norm: bool = True, num_classes: int = 7,
                 residual_block: str = "branch_relu"):
        super().__init__()
        self.config = {"widths": list(widths), "depth": depth, "residual": residual, "dropout": dropout,
                       "batch_norm": batch_norm, "num_classes": num_classes, "residual_block": residual_block}
        stages, cin = [], 1
        for i, width in enumerate(widths):
            if i:
                stages.append(nn.MaxPool2d(2))
            stages.append(ResidualStage(cin, width, depth, residual, batch_norm, residual_block))
            cin = width
        self.features = nn.Sequential(*stages)
        self.dropout = _dropout(dropout)
        self.classifier = nn.Linear(2 * cin, num_classes)
        self.num_features = 2 * cin

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # (B, C, 48 / 2**(stages-1), same)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        pooled = torch.cat([features.mean(dim=(2, 3)), features.amax(dim=(2, 3))], dim=1)  # (B, 2C)
        if pre_logits:
            return pooled
        return self.classifier(self.dropout(pooled))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model("mlp")
class MLP(nn.Module):
    """Fully connected layers on the flattened 48x48 pixels: the baseline without convolutions."""

    def __init__(self, hidden: Sequence[int] = (1024, 512), dropout: float = 0.0, batch_norm: bool = True,
                 num_classes: int = 7):
        super().__init__()
        self.config = {"hidden": list(hidden), "dropout": dropout, "batch_norm": batch_norm, "num_classes": num_classes}
        layers, cin = [nn.Flatten()], 48 * 48
        for width in hidden:
            norm = nn.BatchNorm1d(width) if batch_norm else nn.Identity()
            layers += [nn.Linear(cin, width), norm, nn.ReLU(inplace=True), _dropout(dropout)]
            cin = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(cin, num_classes)
        self.num_features = cin

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # (B, hidden[-1]): no spatial maps

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return features if pre_logits else self.classifier(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def has_conv_layers(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())
