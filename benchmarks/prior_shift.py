"""Would undoing the class balancing at prediction time raise accuracy? Scored on saved predictions.

    python benchmarks/prior_shift.py runs/cnn/eval/val-tta runs/cnn-s1/eval/val-tta

The sampler draws class c in proportion to n_c * w_c, where w_c = (largest class / n_c) ** power
is the run's `class_weights`, and the weighted loss weighs it the same way. So a balanced run learns
p(c | x) under the class prior n_c * w_c instead of the data's n_c. Bayes' rule takes it back:
p_data(c | x) is proportional to p(c | x) / w_c. Only this correction is scored. It has no free
parameter, so nothing is tuned on the split it is scored on. Since it predicts the rare classes
less often, one would expect accuracy to rise and macro F1 to fall; benchmarks/RESULTS.md has what
it measured. Each argument is an evaluation folder of a run
(`RUN/eval/<split>[-tta]`, as `ferkit evaluate` or `gpu_run.sh` leave it), whose `run.json` and
`config.yaml` sit two levels up. Nothing is trained or predicted here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from ferkit import config
from ferkit.data import EMOTIONS
from ferkit.evaluate import compute_metrics
from ferkit.fileio import read_json


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", help="evaluation folders holding predictions.csv")
    args = parser.parse_args()

    print("| evaluation folder | balancing | accuracy | corrected | Δ | macro F1 | corrected | Δ |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for folder in map(Path, args.folders):
        run = folder.parent.parent
        imbalance = config.load(run / "config.yaml").imbalance
        weights = np.asarray(read_json(run / "run.json")["class_weights"]) if imbalance != "none" else np.ones(len(EMOTIONS))
        predictions = pd.read_csv(folder / "predictions.csv")
        probabilities = predictions[list(EMOTIONS)].to_numpy()
        truth = predictions["true"].to_numpy()
        before = compute_metrics(truth, probabilities.argmax(1))
        after = compute_metrics(truth, (probabilities / weights).argmax(1))
        print(f"| {folder} | {imbalance} | {before['accuracy']:.4f} | {after['accuracy']:.4f} | "
              f"{100 * (after['accuracy'] - before['accuracy']):+.2f} | {before['macro_f1']:.4f} | "
              f"{after['macro_f1']:.4f} | {100 * (after['macro_f1'] - before['macro_f1']):+.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
