"""Export a trained model to ONNX. The exported graph takes what the user has, grayscale pixels
0-255 as float (B, 1, 48, 48), and returns the 7 class probabilities (preprocessing and softmax
are inside it)."""

from __future__ import annotations

import glob
import os
from pathlib import Path

import torch
from torch import nn

from ferkit.errors import FerkitError
from ferkit.fileio import atomic_path, output_file, read_json, same_file, write_json
from ferkit.models import preprocess


class Probabilities(nn.Module):
    """pixels (B, 1, 48, 48) in 0..255 -> probabilities (B, 7)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(preprocess(pixels)), dim=1)


def export_onnx(run_or_checkpoint: str | os.PathLike, onnx_path: str | os.PathLike, opset: int = 17) -> Path:
    """Write the run's best model (or the given checkpoint file's) as ONNX (dynamic batch size) plus a
    JSON sidecar: model_file (the ONNX file's name), classes, model, epoch, data_sha256, data_faces_sha256
    and ferkit_version. A .json of that name that is no earlier sidecar, the sidecar of another model file
    (model.onnx's, for model.bin), or a run's own file, is refused.

    Example: ``ferkit export runs/study/cnn --onnx model.onnx``
    """
    from ferkit.train import load_model

    if Path(onnx_path).suffix.lower() == ".json":
        raise FerkitError(f"--onnx {onnx_path}: the model's .json sidecar takes this name; name the model .onnx")
    target = output_file(onnx_path, "--onnx")
    sidecar = output_file(target.with_suffix(".json"), "--onnx's sidecar")
    if same_file(target, run_or_checkpoint):  # the export replaced the checkpoint it was made of: the model was lost
        raise FerkitError(f"--onnx {onnx_path}: is the checkpoint to export; name the model .onnx")
    if sidecar.exists() and not _is_sidecar(sidecar):
        raise FerkitError(f"--onnx {onnx_path}: the model's sidecar {sidecar} would replace a file that is no ferkit "
                          "export's sidecar; name the model otherwise or move that file")
    if sidecar.exists() and (other := _described_elsewhere(sidecar, target)):
        raise FerkitError(f"--onnx {onnx_path}: its sidecar {sidecar} {other}; replaced, it would leave that model "
                          f"beside a description of this one: name the model otherwise (e.g. {target.stem}-2"
                          f"{target.suffix}) or remove that export")
    model, checkpoint = load_model(run_or_checkpoint)
    wrapped = Probabilities(model).eval()
    example = torch.zeros(1, 1, 48, 48)
    try:
        with atomic_path(target) as tmp:
            # dynamo=False: the TorchScript exporter (no longer the default since torch 2.9, still shipped), as the
            # torch.export-based one would add the onnxscript package to the install
            torch.onnx.export(wrapped, (example,), str(tmp), input_names=["pixels"], output_names=["probabilities"],
                              dynamic_axes={"pixels": {0: "batch"}, "probabilities": {0: "batch"}},
                              opset_version=opset, dynamo=False)
    except ImportError as exc:
        raise FerkitError(f"ONNX export needs the onnx package ({exc}): pip install onnx") from None
    write_json(target.with_suffix(".json"), {
        "model_file": target.name,  # model.onnx and model.bin share model.json: it says which it describes
        "input": "pixels: float32 (batch, 1, 48, 48), grayscale 0-255",
        "output": "probabilities: float32 (batch, 7)",
        "classes": checkpoint["classes"], "model": checkpoint["model_name"], "epoch": checkpoint["epoch"],
        "data_sha256": checkpoint["data_sha256"], "data_faces_sha256": checkpoint.get("data_faces_sha256"),
        "ferkit_version": checkpoint.get("ferkit_version"),
    })
    return target


def _is_sidecar(path: Path) -> bool:
    """Whether `path` is the .json an earlier export wrote (which a new export may replace)."""
    try:
        record = read_json(path)
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and {"input", "output", "classes", "model"} <= record.keys()


def _described_elsewhere(sidecar: Path, target: Path) -> str | None:
    """How the earlier sidecar `sidecar` describes a model file other than `target` (which its export
    would leave beside a sidecar of another model), or None when it is `target`'s own."""
    named = read_json(sidecar).get("model_file")
    if isinstance(named, str):  # a sidecar whose model file is gone describes nothing left: replaced
        theirs = sidecar.parent / named
        return f"describes {named}" if theirs.exists() and not same_file(theirs, target) else None
    # an older sidecar names no file: it is taken as `target`'s unless another model file of its name lies beside it
    others = sorted(p.name for p in sidecar.parent.glob(glob.escape(sidecar.stem) + "*") if p != sidecar and
                    p.with_suffix(".json") == sidecar and p.is_file() and not same_file(p, target))
    return f"may describe {', '.join(others)} (an older ferkit's, it names no model file)" if others else None
