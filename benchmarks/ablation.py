"""Which training tricks help? One short run per trick switched off (or on), judged on PublicTest.

    python benchmarks/ablation.py ../shared/fer2013/icml_face_data.csv.xz --out runs/ablation
    python benchmarks/ablation.py DATA --out runs/ablation --only baseline,no_dropout --epochs 8

Every variant changes one config key of a shared base and is trained from the same seed. The base is
the cpu profile, shortened by default to a 0.30 M-parameter VGG and 8 epochs so that the first 15
variants fit in about 110 minutes on a 2-core Xeon (an epoch takes 19 s on the faster 2-core EPYC), with the class-weighted loss and dropout 0.3 that were the defaults
when they were measured. Each variant is its own run folder under --out; a finished one is read
back, an interrupted one resumed, so the script can be stopped and started again.

Printed per variant: the best PublicTest accuracy, the PublicTest macro F1 of that same checkpoint,
the last epoch's accuracy (best minus last is what early stopping keeps), and the training minutes.
The baseline's second seed shows how large a difference has to be before it means anything. The
test-time augmentation rows evaluate the baseline's best checkpoint three ways. PrivateTest is
never read: the choices made from this table (class-imbalance handling by macro F1 among them) use
validation data only.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

from ferkit import config, data
from ferkit.fileio import read_json, write_json
from ferkit.train import load_model, pick_device, predict_proba, read_history, train

# name -> (what it tests, overrides relative to the base)
VARIANTS: dict[str, tuple[str, dict[str, object]]] = {
    "baseline": ("the cpu profile, weighted loss (the default then)", {}),
    "seed_1": ("baseline, another seed (noise floor)", {"seed": 1}),
    "no_augment": ("no augmentation at all", {"augment": False}),
    "no_batch_norm": ("no batch norm (conv bias instead)", {"batch_norm": False}),
    "no_batch_norm_lr_0.01": ("no batch norm, peak lr 0.01 (default 0.05)", {"batch_norm": False, "lr": 0.01}),
    "no_dropout": ("dropout 0 (base 0.3)", {"dropout": 0.0}),
    "no_weight_decay": ("weight decay 0 (default 5e-4)", {"weight_decay": 0.0}),
    "no_norm_bias_decay": ("no weight decay on batch-norm parameters and biases", {"decay_norm_and_bias": False}),
    "no_label_smoothing": ("label smoothing 0 (default 0.1)", {"label_smoothing": 0.0}),
    "constant_lr": ("constant learning rate (default warm-up + cosine)", {"schedule": "constant"}),
    "onecycle": ("one-cycle schedule (default warm-up + cosine)", {"schedule": "onecycle"}),
    "imbalance_none": ("plain loss, no imbalance handling", {"imbalance": "none"}),
    "imbalance_power_1": ("weighted loss, weights (max/size)^1 (default ^0.5)", {"imbalance_power": 1.0}),
    "imbalance_sampler": ("weighted sampler (max/size)^0.5 instead of weighted loss", {"imbalance": "sampler"}),
    "mixup": ("mixup, alpha 0.2", {"mixup": 0.2}),
    "cutmix": ("cutmix, alpha 1.0", {"cutmix": 1.0}),
    "ema": ("moving average of the weights, decay 0.998 per step", {"ema": 0.998}),
}


def run_variant(data_path: str, out: Path, base: dict[str, object], overrides: dict[str, object]) -> dict:
    """Train (or resume, or read back) one variant; return its run.json."""
    info_path = out / "run.json"
    if info_path.exists() and "finished" in read_json(info_path):
        return read_json(info_path)
    if (out / "checkpoints" / "last.pt").exists():
        return train(data_path, out, resume=True)
    return train(data_path, out, config.resolve(profile="cpu", overrides={**base, **overrides}))


def summarize(out: Path) -> dict[str, float]:
    history = read_history(out / "history.csv")
    best = max(history, key=lambda row: row["val_acc"])  # the first maximum, as training picks it
    return {"val_acc": best["val_acc"], "val_macro_f1": best["val_macro_f1"], "best_epoch": int(best["epoch"]),
            "last_val_acc": history[-1]["val_acc"], "minutes": sum(row["seconds"] for row in history) / 60}


def tta_rows(data_path: str, run: Path) -> dict[str, dict[str, float]]:
    """The baseline's best checkpoint on PublicTest without TTA, with flip, with flip + 4 shifted crops."""
    from sklearn.metrics import f1_score

    dataset = data.load(data_path)
    device = pick_device("auto")
    model, checkpoint = load_model(run, device=device)
    rows = dataset.indices("PublicTest")[:checkpoint["config"]["val_limit"] or None]
    model = model.to(memory_format=torch.channels_last)
    results = {}
    for mode in ("none", "flip", "crops"):
        pred = predict_proba(model, dataset.images[rows], device, 512, tta=mode).argmax(1)
        truth = dataset.labels[rows]
        results[mode] = {"val_acc": float((pred == truth).mean()),
                         "val_macro_f1": float(f1_score(truth, pred, average="macro", labels=range(7), zero_division=0))}
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("--out", default="runs/ablation")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--widths", default="16,32,64,128")
    parser.add_argument("--only", help="comma-separated variant names (default: all)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra base overrides for every variant (e.g. train_limit=512 for a dry run)")
    args = parser.parse_args()

    # The weighted loss and dropout 0.3 were the defaults when the table in benchmarks/RESULTS.md was
    # measured (this ablation and its full-budget checks changed both); pinning them keeps the table.
    base: dict[str, object] = {"epochs": args.epochs, "widths": args.widths, "imbalance": "weighted_loss",
                               "dropout": 0.3}
    base.update(item.split("=", 1) for item in args.set)
    names = args.only.split(",") if args.only else list(VARIANTS)
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")

    root = Path(args.out)
    results = {}
    for name in names:
        print(f"== {name}: {VARIANTS[name][0]}", flush=True)
        run_variant(args.data, root / name, base, VARIANTS[name][1])
        results[name] = summarize(root / name)
    tta = tta_rows(args.data, root / "baseline") if "baseline" in names else {}
    write_json(root / "ablation.json", {"base": base, "variants": results, "tta": tta})

    print(f"\n{platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; base: cpu profile + {base}")
    reference = results.get("baseline")
    print("| variant | what changes | PublicTest acc (best epoch) | Δ acc | macro F1 | Δ F1 | last-epoch acc | minutes |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, row in results.items():
        delta_acc = f"{100 * (row['val_acc'] - reference['val_acc']):+.2f}" if reference else ""
        delta_f1 = f"{100 * (row['val_macro_f1'] - reference['val_macro_f1']):+.2f}" if reference else ""
        print(f"| {name} | {VARIANTS[name][0]} | {row['val_acc']:.4f} ({row['best_epoch']}) | {delta_acc} | "
              f"{row['val_macro_f1']:.4f} | {delta_f1} | {row['last_val_acc']:.4f} | {row['minutes']:.1f} |")
    for mode, row in tta.items():
        print(f"| baseline, TTA {mode} | evaluation only | {row['val_acc']:.4f} | | {row['val_macro_f1']:.4f} | | | |")
    print(json.dumps({"results": str(root / "ablation.json")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
