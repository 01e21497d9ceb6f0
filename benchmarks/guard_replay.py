"""What would today's fit_minutes guard have done with runs already trained? Replayed on their epoch times.

    python benchmarks/guard_replay.py runs/guard-narrow-onecycle-s1 runs/guard-narrow-onecycle-s2
    python benchmarks/guard_replay.py --first 3.3 2.5 1.64 [--minutes 7.5 --start 1.7 --rest 1.64]

Each run's `history.csv` holds the seconds of every epoch it trained, and its `run.json` the minutes and
the epochs the run was sized to (before any cut). The replay walks those epochs through
`ferkit.train.epochs_within_budget`, as the guard does after every epoch, and prints the epochs it
would have kept and the seconds they took. Where it would keep more epochs than the run trained, the
seconds of those extra epochs are unknown: the replay prints how many, and the time with each at the
run's mean epoch, marked as such. Only the guard's arithmetic is replayed: nothing is trained, and the
accuracy the other epochs would have given is not known.

With `--first`, made-up runs instead: a cosine run whose warmup covers its first epoch, read at `--start` s an
epoch by the timing at the start, whose first epoch takes each `--first` s (a GPU's also builds kernels and
tunes cuDNN) and every later one `--rest` s. For each it prints the epochs trained and their seconds with
today's ceiling (`guard_ceiling`: the start's count where that is more) and with the one before 2026-11-30
evening (the count the first epoch's own time allowed).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ferkit import config
from ferkit.fileio import read_json
from ferkit.train import (epochs_that_fit, epochs_within_budget, guard_ceiling, guard_least, read_history,
                          sized_epochs)


def walk(minutes: float, seconds: list[float], planned: int, schedule: str, ceiling: int
         ) -> tuple[int, list[tuple[int, int, int]]]:
    """The guard's decisions over epochs that took `seconds`: the epochs planned at the end, and each change as
    (after epoch, planned before, planned after)."""
    decisions, epoch = [], 0
    while epoch < min(planned, len(seconds)):
        epoch += 1
        if epoch < planned:
            kept, _ = epochs_within_budget(minutes, seconds[:epoch], planned, least=guard_least(schedule, epoch),
                                           sized=ceiling)
            if kept != planned:
                decisions.append((epoch, planned, kept))
                planned = kept
    return planned, decisions


def replay(run: Path) -> dict:
    """The guard's decisions over the run's recorded epoch times: the epochs after each, and the outcome."""
    fitted = read_json(run / "run.json")["fit_minutes"]
    changes = fitted.get("shortened", [])
    sized = sized_epochs(fitted)
    schedule = config.load(run / "config.yaml").schedule
    seconds = [row["seconds"] for row in read_history(run / "history.csv")]
    planned, decisions = walk(fitted["minutes"], seconds, sized, schedule, guard_ceiling(fitted))
    missing = max(0, planned - len(seconds))
    mean = sum(seconds) / len(seconds)
    return {"run": run.name, "minutes": fitted["minutes"], "sized": sized, "trained": len(seconds),
            "trained_seconds": sum(seconds), "recorded_changes": [(c["after_epoch"], c["from_epochs"], c["epochs"])
                                                                  for c in changes],
            "replayed_changes": decisions, "replayed_epochs": planned, "unrecorded_epochs": missing,
            "replayed_seconds": sum(seconds[:planned]) + missing * mean}


def made_up(minutes: float, start: float, first: float, rest: float, asked: int, ceiling_at_start: bool
            ) -> tuple[int, float]:
    """(epochs trained, seconds spent) of the made-up cosine run described in the module's docstring."""
    planned = epochs_that_fit(minutes, first, asked)  # sized again by the first epoch's own time
    fitted = {"epochs": planned, "epochs_timed": epochs_that_fit(minutes, start, asked)}  # as run.json records it
    ceiling = guard_ceiling(fitted) if ceiling_at_start else sized_epochs(fitted)
    seconds = [first] + [rest] * (ceiling - 1)  # the guard never plans more epochs than its ceiling
    epochs, _ = walk(minutes, seconds, planned, "cosine", ceiling)
    return epochs, sum(seconds[:epochs])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", type=Path, help="run folders trained with fit_minutes")
    parser.add_argument("--first", type=float, nargs="+", help="made-up runs: the first epoch's seconds")
    parser.add_argument("--minutes", type=float, default=7.5)
    parser.add_argument("--start", type=float, default=1.7)
    parser.add_argument("--rest", type=float, default=1.64)
    parser.add_argument("--asked", type=int, default=400)
    args = parser.parse_args()
    if args.first:
        print(f"{args.minutes:g} minutes, the start's timing {args.start:g} s an epoch, later epochs {args.rest:g} s")
        print("first epoch s   before: epochs  seconds   now: epochs  seconds")
        for first in args.first:
            before = made_up(args.minutes, args.start, first, args.rest, args.asked, ceiling_at_start=False)
            now = made_up(args.minutes, args.start, first, args.rest, args.asked, ceiling_at_start=True)
            print(f"{first:13.2f}   {before[0]:14d}  {before[1]:7.1f}   {now[0]:11d}  {now[1]:7.1f}")
    for run in args.runs:
        r = replay(run)
        extra = f" (+{r['unrecorded_epochs']} not recorded, each at the run's mean)" if r["unrecorded_epochs"] else ""
        print(f"{r['run']}: {r['minutes']:g} minutes, sized to {r['sized']}; trained {r['trained']} epochs in "
              f"{r['trained_seconds'] / 60:.1f} min, changes {r['recorded_changes'] or 'none'}; replayed: "
              f"{r['replayed_epochs']} epochs{extra}, {r['replayed_seconds'] / 60:.1f} min, changes "
              f"{r['replayed_changes'] or 'none'}")


if __name__ == "__main__":
    main()
