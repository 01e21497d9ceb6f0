"""The `ferkit` command: a thin layer over the Python API; each sub-command calls one function."""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from ferkit.errors import FerkitError


def _cmd_data(args: argparse.Namespace) -> None:
    from ferkit.data import counts_table, summarize

    summary = summarize(args.path, args.out, seed=args.seed, cache=not args.no_cache)
    print(f"{summary['source']}: {summary['rows']:,} faces, sha256 {summary['sha256'][:16]}..., "
          f"loaded in {summary['load_seconds']:.2f} s{' (cache)' if summary['from_cache'] else ''}")
    print(counts_table(summary["counts"]))
    print(f"wrote {args.out}/summary.json, samples.png, class_balance.png")


def _cmd_train(args: argparse.Namespace) -> None:
    from ferkit import config
    from ferkit.train import train

    if args.resume:
        if args.config or args.set or args.model or args.profile:
            raise FerkitError("--resume continues the run with its saved config.yaml; drop --model/--profile/"
                              "--config/--set")
        info = train(args.data, args.out, resume=True)
    else:
        cfg = config.resolve(profile=args.profile or _auto_profile(), config_file=args.config, overrides=args.set,
                             model=args.model)
        info = train(args.data, args.out, cfg)
    print(f"best epoch {info['best_epoch']} of {info['epochs_run']}; {info['train_seconds']:.0f} s of training; "
          f"run in {args.out}")


def _auto_profile() -> str:
    import torch

    return "gpu" if torch.cuda.is_available() else "cpu"


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from ferkit.evaluate import evaluate

    metrics = evaluate(args.run_dir, split=args.split, tta=args.tta, data=args.data, out=args.out, device=args.device)
    _print_metrics(metrics)


def _cmd_ensemble(args: argparse.Namespace) -> None:
    from ferkit.evaluate import ensemble

    metrics = ensemble(args.run_dirs, args.out, split=args.split, tta=args.tta, data=args.data, device=args.device)
    for member in metrics["members"]:
        print(f"  {member['run']}: accuracy {member['accuracy']:.4f}, macro F1 {member['macro_f1']:.4f}")
    _print_metrics(metrics)


def _print_metrics(metrics: dict) -> None:
    print(f"{metrics['name']} on {metrics['split']} ({metrics['n']} faces, TTA {metrics['tta']}): "
          f"accuracy {metrics['accuracy']:.4f}, macro F1 {metrics['macro_f1']:.4f}, "
          f"weighted F1 {metrics['weighted_f1']:.4f}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ferkit", description="Facial-expression recognition on FER2013.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Callable, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(handler=handler)
        return p

    p = command("data", _cmd_data, "load and validate a dataset; write its summary, sample faces and class balance")
    p.add_argument("path", help="icml_face_data.csv or fer2013.csv (plain, .gz, .xz, .zip) or the image-folder export")
    p.add_argument("--out", required=True, help="folder for summary.json, samples.png, class_balance.png")
    p.add_argument("--seed", type=int, default=0, help="which sample faces to show")
    p.add_argument("--no-cache", action="store_true", help="parse the file even if a cached copy exists")

    p = command("train", _cmd_train, "train a model on Training, validating on PublicTest every epoch")
    p.add_argument("data", help="the dataset file or folder")
    p.add_argument("--out", required=True, help="the run folder (config, checkpoints, history, figures)")
    p.add_argument("--model", choices=None, help="cnn (default) or mlp")
    p.add_argument("--profile", choices=("cpu", "gpu"), help="model size and schedule (default: gpu if CUDA is present)")
    p.add_argument("--config", help="a YAML file of config keys")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one config key (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")

    for name, handler, text in (("evaluate", _cmd_evaluate, "evaluate a run's best checkpoint"),
                                ("ensemble", _cmd_ensemble, "average the probabilities of several runs")):
        p = command(name, handler, text)
        if name == "evaluate":
            p.add_argument("run_dir")
            p.add_argument("--out", help="folder for the files (default RUN_DIR/eval/SPLIT[-tta])")
        else:
            p.add_argument("run_dirs", nargs="+")
            p.add_argument("--out", required=True)
        p.add_argument("--split", choices=("test", "val"), default="test", help="test = PrivateTest, val = PublicTest")
        p.add_argument("--tta", action="store_true", help="test-time augmentation (the run's tta setting)")
        p.add_argument("--data", help="the dataset (default: the file the run was trained on)")
        p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except FerkitError as exc:
        print(f"ferkit {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nferkit {args.command}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return 0
