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

    for register in _EXTRA_COMMANDS:
        register(command)
    return parser


_EXTRA_COMMANDS: list[Callable] = []


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
