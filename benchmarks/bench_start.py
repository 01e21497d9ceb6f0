"""How an untrained network starts: loss, logit spread and gradient norm on real training faces.

    python benchmarks/bench_start.py DATA [--faces 512]

The gpu profile's runs sat near chance for their first 10 epochs on an H200 (benchmarks/RESULTS.md).
This prints, for each profile's CNN at its initial weights (seed 0), the training-mode loss on the
first N training faces (ln 7 = 1.95 is what uniform predictions score), the spread of the logits,
the size of the features the classifier sees, and the gradient norm; plus two what-ifs: the gpu
network with its classifier zeroed, and the gpu structure at the widths of the CPU stand-in used to
study its first epochs.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from ferkit import config
from ferkit import data as fdata
from ferkit.models import get_model, preprocess


def start_figures(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    model.train()
    features = model.forward_features(images)
    logits = model.forward_head(features)
    loss = F.cross_entropy(logits, labels, label_smoothing=0.1)
    loss.backward()
    grad_norm = torch.sqrt(sum((p.grad ** 2).sum() for p in model.parameters() if p.grad is not None))
    pooled = model.forward_head(features, pre_logits=True)
    return {"loss": loss.item(), "logit_std": logits.std().item(), "pooled_rms": pooled.pow(2).mean().sqrt().item(),
            "grad_norm": grad_norm.item()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data")
    parser.add_argument("--faces", type=int, default=512)
    args = parser.parse_args()
    dataset = fdata.load(args.data)
    rows = dataset.indices("Training")[:args.faces]
    images = preprocess(torch.from_numpy(dataset.images[rows]))
    labels = torch.from_numpy(dataset.labels[rows]).long()

    gpu = config.resolve("gpu").model_kwargs()
    cases = {
        "cpu profile": (config.resolve("cpu").model_kwargs(), False),
        "gpu profile": (gpu, False),
        "gpu profile, classifier zeroed": (gpu, True),
        "gpu structure, widths 16-128": (dict(gpu, widths=[16, 32, 64, 128]), False),
    }
    print(f"{args.faces} training faces, seed 0; uniform predictions score a loss of 1.95")
    print(f"{'network':32s}  {'loss':>6s}  {'logit sd':>8s}  {'pooled rms':>10s}  {'grad norm':>9s}")
    for name, (kwargs, zero_head) in cases.items():
        torch.manual_seed(0)
        model = get_model("cnn", **kwargs)
        if zero_head:
            torch.nn.init.zeros_(model.classifier.weight)
            torch.nn.init.zeros_(model.classifier.bias)
        f = start_figures(model, images, labels)
        print(f"{name:32s}  {f['loss']:6.3f}  {f['logit_std']:8.2f}  {f['pooled_rms']:10.2f}  {f['grad_norm']:9.2f}")


if __name__ == "__main__":
    main()
