"""What would today's fit_minutes guard have done with runs already trained? Replayed on their epoch times.

    python benchmarks/guard_replay.py runs/guard-narrow-onecycle-s1 runs/guard-narrow-onecycle-s2

Each run's `history.csv` holds the seconds of every epoch it trained, and its `run.json` the minutes and
the epochs the run was sized to (before any cut). The replay walks those epochs through
`ferkit.train.epochs_within_budget`, as the guard does after every epoch, and prints the epochs it
would have kept and the seconds they took. Where it would keep more epochs than the run trained, the
seconds of those extra epochs are unknown: the replay prints how many, and the time with each at the
run's mean epoch, marked as such. Only the guard's arithmetic is replayed: nothing is trained, and the
accuracy the other epochs would have given is not known.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ferkit import config
from ferkit.fileio import read_json
from ferkit.train import epochs_within_budget, guard_least, read_history, sized_epochs


def replay(run: Path) -> dict:
    """The guard's decisions over the run's recorded epoch times: the epochs after each, and the outcome."""
    fitted = read_json(run / "run.json")["fit_minutes"]
    changes = fitted.get("shortened", [])
    sized = sized_epochs(fitted)
    schedule = config.load(run / "config.yaml").schedule
    seconds = [row["seconds"] for row in read_history(run / "history.csv")]
    planned, decisions, epoch = sized, [], 0
    while epoch < min(planned, len(seconds)):
        epoch += 1
        if epoch < planned:
            kept, _ = epochs_within_budget(fitted["minutes"], seconds[:epoch], planned,
                                           least=guard_least(schedule, epoch), sized=sized)
            if kept != planned:
                decisions.append((epoch, planned, kept))
                planned = kept
    missing = max(0, planned - len(seconds))
    mean = sum(seconds) / len(seconds)
    return {"run": run.name, "minutes": fitted["minutes"], "sized": sized, "trained": len(seconds),
            "trained_seconds": sum(seconds), "recorded_changes": [(c["after_epoch"], c["from_epochs"], c["epochs"])
                                                                  for c in changes],
            "replayed_changes": decisions, "replayed_epochs": planned, "unrecorded_epochs": missing,
            "replayed_seconds": sum(seconds[:planned]) + missing * mean}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders trained with fit_minutes")
    for run in parser.parse_args().runs:
        r = replay(run)
        extra = f" (+{r['unrecorded_epochs']} not recorded, each at the run's mean)" if r["unrecorded_epochs"] else ""
        print(f"{r['run']}: {r['minutes']:g} minutes, sized to {r['sized']}; trained {r['trained']} epochs in "
              f"{r['trained_seconds'] / 60:.1f} min, changes {r['recorded_changes'] or 'none'}; replayed: "
              f"{r['replayed_epochs']} epochs{extra}, {r['replayed_seconds'] / 60:.1f} min, changes "
              f"{r['replayed_changes'] or 'none'}")


if __name__ == "__main__":
    main()
