"""Training throughput and inference latency, measured on whatever device is present.

    python benchmarks/bench_train.py                 # cpu profile on the CPU
    python benchmarks/bench_train.py --profile gpu   # on a CUDA GPU: eager vs torch.compile too
    python benchmarks/bench_train.py --profile gpu --no-compile --models cnn   # eager only: seconds, not minutes
    python benchmarks/bench_train.py --profile gpu --set residual_block=resnet   # config keys, as in training
    python benchmarks/bench_train.py --cpu-compile --models cnn   # on the CPU: eager vs torch.compile too

Prints images/s of full training steps (ferkit's `train_one_epoch`: augmentation, forward, backward,
optimizer, weight average) after a warm-up, evaluation images/s (eager float32 forward passes,
batch 512, no TTA), and the latency of classifying one face. Random pixels suffice: speed does not
depend on what the faces show. `--set` takes every config key; the network, the training step, the
optimizer, `channels_last` and `device` follow it as training does, while `compile` and `imbalance`
do not apply (the bench times eager and, on CUDA or with `--cpu-compile`, compiled steps itself, over a
fixed order of faces).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from typing import Callable

import torch

from ferkit import config
from ferkit.errors import FerkitError
from ferkit.models import count_parameters, get_model, preprocess
from ferkit.train import WeightAverage, make_optimizer, pick_device, train_one_epoch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def training_steps(cfg: config.TrainConfig, device: torch.device, compile_model: bool = False
                   ) -> tuple[torch.nn.Module, torch.optim.Optimizer, Callable[[int], None]]:
    """The network as `cfg` builds it (not compiled), its optimizer, and `run(count)`, which trains `count` of
    ferkit's own training steps (`train_one_epoch`) on random faces; `count_denormals.py` and
    `profile_blocks.py` watch the same steps."""
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = get_model(cfg.model, **cfg.model_kwargs()).to(device).to(memory_format=memory_format)
    forward = torch.compile(model) if compile_model else model
    average = WeightAverage(model) if cfg.ema else None  # training pays for the weight average too
    optimizer = make_optimizer(model, cfg)
    images = torch.randint(0, 256, (cfg.batch_size * 4, 1, 48, 48), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 7, (cfg.batch_size * 4,), device=device)
    generator = torch.Generator(device=device).manual_seed(0)
    model.train()

    def run(count: int) -> None:
        order = torch.arange(cfg.batch_size * 4, device=device).repeat(-(-count // 4))
        train_one_epoch(forward, optimizer, images, labels, order, range(count), count, cfg, generator,
                        average=average)

    return model, optimizer, run


def train_throughput(cfg: config.TrainConfig, device: torch.device, steps: int, compile_model: bool) -> float:
    """Training images/s of ferkit's own training step (`train_one_epoch`), on random faces."""
    _, _, run = training_steps(cfg, device, compile_model)
    run(5)  # warm-up (and compilation)
    _sync(device)
    started = time.perf_counter()
    run(steps)
    _sync(device)
    return steps * cfg.batch_size / (time.perf_counter() - started)


@torch.no_grad()
def inference(cfg: config.TrainConfig, device: torch.device) -> tuple[float, float]:
    model = get_model(cfg.model, **cfg.model_kwargs()).to(device).eval().to(memory_format=torch.channels_last)
    batch = preprocess(torch.randint(0, 256, (512, 48, 48), dtype=torch.uint8, device=device))
    batch = batch.contiguous(memory_format=torch.channels_last)
    for _ in range(3):
        model(batch)
    _sync(device)
    started = time.perf_counter()
    for _ in range(5):
        model(batch)
    _sync(device)
    rate = 5 * 512 / (time.perf_counter() - started)
    one = batch[:1]
    latencies = []
    for _ in range(200):
        started = time.perf_counter()
        model(one)
        _sync(device)
        latencies.append(time.perf_counter() - started)
    return rate, statistics.median(latencies) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--profile", default="cpu", choices=("cpu", "gpu"))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--models", default="cnn,mlp", help="comma-separated: cnn, mlp")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile comparison on CUDA")
    parser.add_argument("--cpu-compile", action="store_true",
                        help="compare torch.compile on the CPU too (it needs a C++ compiler; about 40 s of compiling)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, as `ferkit train --set` does (repeatable)")
    args = parser.parse_args()
    try:  # a bad key stops here, before minutes of benchmarking
        configs = {model: config.resolve(profile=args.profile, overrides=args.set, model=model)
                   for model in args.models.split(",")}
    except FerkitError as exc:
        parser.error(str(exc))
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(next(iter(configs.values())).device)
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"device {device} ({name}), torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    for model, cfg in configs.items():
        params = count_parameters(get_model(cfg.model, **cfg.model_kwargs()))
        eager = train_throughput(cfg, device, args.steps, compile_model=False)
        line = f"{model:4s} {params / 1e6:6.2f} M params  train {eager:9.0f} img/s (batch {cfg.batch_size}, eager)"
        if model == "cnn" and (args.cpu_compile if device.type == "cpu" else not args.no_compile):
            compiled = train_throughput(cfg, device, args.steps, compile_model=True)
            line += f"  {compiled:9.0f} img/s compiled ({compiled / eager:.2f}x)"
        rate, latency = inference(cfg, device)
        print(f"{line}  eval {rate:9.0f} img/s  one image {latency:.2f} ms")


if __name__ == "__main__":
    main()
