"""Where the CPU's time goes in a training step of each residual block, under the torch profiler.

    python benchmarks/profile_blocks.py [--steps 15] [--blocks resnet,branch_relu]

For each block it builds the CPU stand-in for the gpu network (the gpu profile at widths 16-128, seed 0),
trains 5 warm-up steps and 20 timed ones with ferkit's own training step on random faces
(`bench_train.training_steps`), then profiles `--steps` more. It prints each block's images/s and total self CPU
time, and the operators whose self time differs most between the first two blocks. All in one process:
the slower `resnet` steps seen in fresh processes (benchmarks/RESULTS.md) need fresh processes to show.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from bench_train import training_steps  # this folder: Python puts a script's own folder on its path
from ferkit import config


def profile_block(block: str, steps: int) -> tuple[float, dict[str, float]]:
    """(images/s over 20 steps, {operator: self CPU seconds over `steps` profiled steps})."""
    cfg = config.resolve(profile="gpu", overrides=["widths=16,32,64,128", f"residual_block={block}", "batch_size=128"],
                         model="cnn")
    torch.manual_seed(cfg.seed)
    _, _, run = training_steps(cfg, torch.device("cpu"))
    run(5)
    started = time.perf_counter()
    run(20)
    rate = 20 * cfg.batch_size / (time.perf_counter() - started)
    with profile(activities=[ProfilerActivity.CPU]) as profiled:
        run(steps)
    return rate, {event.key: event.self_cpu_time_total / 1e6 for event in profiled.key_averages()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--blocks", default="resnet,branch_relu", help="comma-separated: resnet, branch_relu")
    args = parser.parse_args()
    blocks = args.blocks.split(",")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.steps} profiled steps")
    times = {}
    for block in blocks:
        rate, times[block] = profile_block(block, args.steps)
        print(f"{block:12s} {rate:6.0f} img/s  self CPU {sum(times[block].values()):6.2f} s")
    if len(blocks) < 2:
        return
    first, second = (times[block] for block in blocks[:2])
    differs = sorted(set(first) | set(second), key=lambda op: -abs(first.get(op, 0) - second.get(op, 0)))
    print(f"\n{'operator':45s} {blocks[0]:>12s} {blocks[1]:>12s}  (self CPU s)")
    for op in differs[:12]:
        print(f"{op:45s} {first.get(op, 0):12.3f} {second.get(op, 0):12.3f}")


if __name__ == "__main__":
    main()
