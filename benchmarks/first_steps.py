"""The training loss of every step of a short run: how the first epochs behave on few faces.

    python benchmarks/first_steps.py DATA --out /tmp/steps-1024 --set train_limit=1024 --set epochs=2 \
        --set val_limit=256
    python benchmarks/first_steps.py DATA --out /tmp/steps-all --set epochs=1   # the full data's warmup epoch

Trains with `ferkit.train.train` (the cpu profile and the `--set` keys given) and records the cross
entropy of every training step, as the run computes it, then prints the first `--show` of them and the
run's history.csv. A smoke run on 1,024 faces warms up over 8 steps only, and its first epoch's loss
looks broken (benchmarks/RESULTS.md): this shows where the loss jumps.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import ferkit.train
from ferkit import config


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data")
    parser.add_argument("--out", required=True, help="a new run folder")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config keys, as in training")
    parser.add_argument("--show", type=int, default=80, help="how many steps' losses to print")
    args = parser.parse_args()
    losses: list[float] = []
    cross_entropy = torch.nn.functional.cross_entropy

    def recorded(*inputs, **options):
        loss = cross_entropy(*inputs, **options)
        losses.append(float(loss.detach().mean()))  # the weighted loss asks for one value per face: their mean
        return loss

    # torch.nn.functional itself: only the training step calls cross_entropy (validation takes nll_loss)
    ferkit.train.F.cross_entropy = recorded
    cfg = config.resolve(overrides=args.set)
    ferkit.train.train(args.data, args.out, cfg, progress=False)
    print("step losses:", " ".join(f"{loss:.2f}" for loss in losses[:args.show]))
    print((Path(args.out) / "history.csv").read_text(), end="")


if __name__ == "__main__":
    main()
