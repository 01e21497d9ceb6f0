"""The model registry, the two model families (a VGG-style CNN and an MLP on raw pixels) and the
layer table that describes an architecture.

Every model takes (B, 1, 48, 48) float images (normalised by `preprocess`) and exposes
`forward_features(x)` (the last convolutional block's maps, or the hidden vector of the MLP) and
`forward_head(features, pre_logits=False)`, so that feature figures need no hooks; `num_features` is
the width of `forward_head(features, pre_logits=True)`.
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
        conv = nn.Conv2d(cin, cout, 3, padding=1)
        # He et al.'s (2015) init for ReLU: PyTorch's default has a third of its variance, so that each
        # conv-ReLU shrinks the signal about 2.4-fold, which nothing restores without batch norm: through
        # the cpu profile's 8 convs the logits barely depend on the face and the first conv's gradient
        # is 1e-4 of its weights, and the network never leaves the majority class
        nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
        nn.init.zeros_(conv.bias)
        layers = [conv]
    else:
        layers = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)


def _nested(layers: nn.Module) -> str:
    """The leaf layers of `layers` written as one function of x: conv-BN-ReLU reads ReLU(BN(conv(x)))."""
    short = {nn.Conv2d: "conv", nn.BatchNorm2d: "BN"}
    text = "x"
    for layer in layers.modules():
        if next(layer.children(), None) is None:
            text = f"{short.get(type(layer), type(layer).__name__)}({text})"
    return text


class BasicBlock(nn.Module):
    """He et al.'s basic block, ReLU(x + conv-BN-ReLU-conv-BN), its last batch norm (or conv) starting
    at zero so that the block begins as the identity (Goyal et al. 2017)."""

    def __init__(self, channels: int, batch_norm: bool = True):
        super().__init__()
        self.branch = nn.Sequential(_conv_bn(channels, channels, batch_norm),
                                    _conv_bn(channels, channels, batch_norm, relu=False))
        nn.init.zeros_(self.branch[-1][-1].weight)  # its bias is zero already: batch norm's, or `_conv_bn`'s
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(x + self.branch(x))

    def formula(self) -> str:
        return f"ReLU(x + {_nested(self.branch)})"


class AddedBranch(nn.Sequential):
    """The "branch_relu" block, x + conv-BN-ReLU-conv-BN-ReLU. A Sequential, so that its parameters
    keep the names they had in earlier checkpoints."""

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.branch(x)

    def formula(self) -> str:
        return f"x + {_nested(self)}"


class ResidualStage(nn.Module):
    """`depth` 3x3 conv-BN-ReLU layers; with `residual`, the first sets the width and the other pairs
    get an identity shortcut (so `depth` is odd), in one of two blocks: "branch_relu", an `AddedBranch`
    (every block adds a non-negative signal, and the untrained deep network starts far from uniform
    predictions), or "resnet", a `BasicBlock`."""

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
            self.blocks = nn.ModuleList(AddedBranch(_conv_bn(cout, cout, batch_norm), _conv_bn(cout, cout, batch_norm))
                                        for _ in range((depth - 1) // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.entry(x)
        for block in self.blocks:
            x = block(x)
        return x


@register_model("cnn")
class CNN(nn.Module):
    """VGG-style: stages of 3x3 conv-BN-ReLU (with `residual`, pairs of them after each stage's first
    in residual blocks), 2x2 max-pool between stages, then global average and max pooling, dropout
    (when p > 0) and a linear classifier."""

    # The defaults are the cpu profile's (`TrainConfig`); training always passes every argument.
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


# ---------------------------------------------------------------------------------------------
# The layer table: what the report shows of an architecture


def layer_table(model: nn.Module, input_shape: Sequence[int] = (1, 1, 48, 48)) -> list[dict[str, Any]]:
    """One row per call of a leaf module, in call order: name, type, detail, input and output shape,
    parameters (counted at a module's first call only), and the residual block it lies in (`block`: the
    name and `formula()` of the outermost module with a `formula`, or None): the sum of a shortcut has
    no module, so it shows only there. Recorded with forward hooks; identities (a switched-off dropout or
    batch norm) compute nothing and get no row."""
    rows: list[dict[str, Any]] = []
    counted: set[int] = set()
    # parents come before their children here, so the first block a name lies in is the outermost
    blocks = {name: module.formula() for name, module in model.named_modules()
              if callable(getattr(module, "formula", None))}

    def hook(name: str, module: torch.nn.Module, inputs: tuple, output: Any) -> None:
        first = inputs[0] if inputs and torch.is_tensor(inputs[0]) else None
        params = 0 if id(module) in counted else sum(p.numel() for p in module.parameters(recurse=False))
        counted.add(id(module))
        rows.append({"name": name, "type": type(module).__name__, "detail": _describe(module),
                     "input": tuple(first.shape) if first is not None else None,
                     "output": tuple(output.shape) if torch.is_tensor(output) else None,
                     "parameters": int(params), "absorbable": _absorbable(module), "block": _block_of(name, blocks)})

    handles = [module.register_forward_hook(lambda m, i, o, name=name: hook(name, m, i, o))
               for name, module in model.named_modules()
               if next(module.children(), None) is None and not isinstance(module, torch.nn.Identity)]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(tuple(input_shape)))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return rows


def _block_of(name: str, blocks: dict[str, str]) -> tuple[str, str] | None:
    return next(((block, formula) for block, formula in blocks.items() if name.startswith(f"{block}.")), None)


def _describe(module: nn.Module) -> str:
    def pair(v: Any) -> str:
        v = v if isinstance(v, tuple) else (v, v)
        return f"{v[0]}×{v[1]}"

    if isinstance(module, nn.Conv2d):
        extra = f", stride {module.stride[0]}" if module.stride != (1, 1) else ""
        return f"{module.in_channels}->{module.out_channels}, {pair(module.kernel_size)}{extra}"
    if isinstance(module, nn.Linear):
        return f"{module.in_features}->{module.out_features}"
    if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
        return pair(module.kernel_size)
    if isinstance(module, nn.modules.dropout._DropoutNd):
        return f"p={module.p:g}"
    return ""


def _absorbable(module: nn.Module) -> bool:
    """Shape-keeping helpers that a compact table folds into the layer before them."""
    return isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)) or \
        type(module).__module__ == "torch.nn.modules.activation"


def compact_layers(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fold BatchNorm/activation/dropout into the layer before them (same output shape), a residual
    block into one row that gives its formula and its convs, mark shape changes made in forward()
    without a module (e.g. global pooling), and collapse runs of identical blocks into one row "× k"."""
    blocks: list[dict[str, Any]] = []
    previous_output = None
    for row in rows:
        if previous_output is not None and row["input"] is not None and row["input"] != previous_output:
            blocks.append({"name": "", "layer": "(function in forward(), no module)", "output": row["input"],
                           "parameters": 0, "open": False, "count": 1})
        label = row["type"] + (f" {row['detail']}" if row["detail"] else "")
        last = blocks[-1] if blocks else None
        if row["block"]:
            name, formula = row["block"]
            if last is None or last["name"] != name:
                blocks.append({"name": name, "output": None, "parameters": 0, "open": False, "count": 1, "convs": []})
            block = blocks[-1]
            block["parameters"] += row["parameters"]
            block["output"] = row["output"]
            if row["type"] == "Conv2d" and row["detail"] not in block["convs"]:
                block["convs"].append(row["detail"])
            block["layer"] = formula + (f"; conv {'; '.join(block['convs'])}" if block["convs"] else "")
        elif row["absorbable"] and last is not None and last["open"] and row["output"] == last["output"]:
            last["layer"] += f" + {row['type']}" + (f" {row['detail']}" if row["type"].startswith("Dropout") else "")
            last["parameters"] += row["parameters"]
        else:
            blocks.append({"name": row["name"], "layer": label, "output": row["output"],
                           "parameters": row["parameters"], "open": not row["absorbable"], "count": 1})
        previous_output = row["output"]
    collapsed: list[dict[str, Any]] = []
    for block in blocks:
        last = collapsed[-1] if collapsed else None
        if last is not None and last["layer"] == block["layer"] and last["output"] == block["output"] \
                and last["unit"] == block["parameters"] and block["name"]:
            last["count"] += 1
            last["parameters"] += block["parameters"]
        else:
            collapsed.append(dict(block, unit=block["parameters"]))
    return collapsed
