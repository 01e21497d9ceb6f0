"""Denormal float32 values in the first training steps of the CPU stand-in for the gpu network.

    python benchmarks/count_denormals.py [--steps 30] [--blocks resnet,branch_relu]

On the 2-core EPYC the `resnet` block trained about 6% slower than `branch_relu` in fresh processes,
and flushing denormals (`torch.set_flush_denormal(True)`) seemed to close the gap
(benchmarks/RESULTS.md). This looks for the denormals themselves. For each block it trains the
untrained stand-in (the gpu profile at widths 16-128, seed 0) with ferkit's own training step on
random faces, as `bench_train.py` times it (`bench_train.training_steps`), and counts the denormal
values (non-zero, below float32's smallest normal number, 1.18e-38) in every layer's output and
output gradient in every step, and in
every parameter, gradient and momentum after every optimizer step. It prints those counts and the
smallest non-zero magnitude of each. Counting takes minutes: every value of every step is checked.
"""

from __future__ import annotations

import argparse
import warnings
from typing import Any

import torch

from bench_train import training_steps  # this folder: Python puts a script's own folder on its path
from ferkit import config

SMALLEST_NORMAL = torch.finfo(torch.float32).tiny


def count_denormals(block: str, steps: int) -> dict[str, tuple[int, int, float]]:
    """{where: (denormal values, values checked, smallest non-zero magnitude)} over `steps` training steps."""
    cfg = config.resolve(profile="gpu", overrides=["widths=16,32,64,128", f"residual_block={block}"], model="cnn")
    counts: dict[str, list[Any]] = {}

    def count(where: str, tensor: torch.Tensor | None) -> None:
        if tensor is None or not tensor.is_floating_point():
            return
        magnitudes = tensor.detach().abs()
        nonzero = magnitudes[magnitudes != 0]
        seen = counts.setdefault(where, [0, 0, float("inf")])
        seen[0] += int((nonzero < SMALLEST_NORMAL).sum())
        seen[1] += tensor.numel()
        if nonzero.numel():
            seen[2] = min(seen[2], float(nonzero.min()))

    torch.manual_seed(cfg.seed)
    model, optimizer, run = training_steps(cfg, torch.device("cpu"))
    for module in model.modules():
        if isinstance(module, torch.nn.ReLU):
            module.inplace = False  # backward hooks refuse in-place outputs; the values are the same
        if not list(module.children()):
            kind = type(module).__name__
            module.register_forward_hook(lambda m, inputs, output, k=kind: count(f"output {k}", output))
            module.register_full_backward_hook(lambda m, grad_in, grad_out, k=kind: count(f"output grad {k}", grad_out[0]))
    # the first conv's input needs no gradient: its hook sees the output's, which is what is counted
    warnings.filterwarnings("ignore", message="Full backward hook is firing")

    def after_step(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        for parameter in model.parameters():
            count("parameter", parameter)
            count("parameter grad", parameter.grad)
            count("momentum", opt.state.get(parameter, {}).get("momentum_buffer"))

    optimizer.register_step_post_hook(after_step)
    run(steps)
    return {where: tuple(seen) for where, seen in sorted(counts.items())}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--blocks", default="resnet,branch_relu", help="comma-separated: resnet, branch_relu")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.steps} steps; "
          f"float32's smallest normal number {SMALLEST_NORMAL:.3g}")
    for block in args.blocks.split(","):
        for where, (denormal, checked, smallest) in count_denormals(block, args.steps).items():
            print(f"{block:12s} {where:24s} denormal {denormal:4d} of {checked:13d}  smallest non-zero {smallest:.2e}")


if __name__ == "__main__":
    main()
