#!/usr/bin/env bash
# The GPU check, sized for the device machine (PyTorch present, no network, no pip install; one
# command may run 10 minutes and the machine goes back 30 s after it). Here, once:
#   mkdir -p .data && cp ../shared/fer2013/fer2013_images.tar.xz .data/   # .data/ is git-ignored
# On the device (carry .data), one command of under 10 minutes:
#   RUN=/dev/shm/gpu OUT_DIR=$OUT bash benchmarks/gpu_run.sh
# Stages (STAGES, in this order):
#   bench    the data summary (fills the cache) and eager training/inference speed of the gpu profile,
#            one bench per seed, side by side, so that the speed is the one the seeds will share
#   train    one gpu-profile CNN per seed in SEEDS (default 0), side by side on the one GPU, into
#            $RUN/cnn-s<seed>; epochs sized at the slowest bench's speed to end $EVAL_RESERVE s before $LIMIT
#            (meant as about 6 minutes of training), with snapshots at 2, 4 and 6 minutes; stopped (Ctrl-C,
#            resumable) should they run over. EXTRA adds --set options to every seed, and to the bench, so
#            that the epochs are sized for the network that trains.
#   evaluate PrivateTest accuracy of the best and the last checkpoint and of each snapshot, with and
#            without TTA, for each seed, and PublicTest with TTA of the best; with several seeds, also the
#            ensemble of their best checkpoints. The checkpoints stay on the device, but the packed
#            eval/*/predictions.csv let `ferkit ensemble` combine these runs with others afterwards, here.
#   compile  eager against torch.compile (compilation alone can take minutes: a separate command)
# With OUT_DIR set, the log and the run folder without its checkpoints are packed into it.
# Measured on an H200 (benchmarks/RESULTS.md), one seed: the 30-step reading on a cold GPU was 16% slow
# and the sizing then allowed 2.5 s an epoch, so the run came out at 4.6 minutes; a gpu-profile epoch
# takes 1.64 s of training (about 1.8 s with its checkpoints), so EPOCHS=240 STAGES="train evaluate"
# gives about 6.5 minutes of training inside the guard. How much seeds side by side slow each other
# is not measured yet: give several seeds the bench stage rather than EPOCHS, so the guard is not hit.
# Dry run on a CPU: SEEDS="0 1" BENCH_STEPS=1 EPOCHS=2 EXTRA="--set train_limit=256 --set val_limit=64
#   --set widths=8,16 --set eval_batch_size=64" RUN=/tmp/gpu OUT_DIR=/tmp/gpu-out bash benchmarks/gpu_run.sh
set -uo pipefail
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 FERKIT_CACHE=${FERKIT_CACHE:-/tmp/ferkit-cache}
RUN=${RUN:-runs/gpu}
DATA=${DATA:-.data/fer2013_images.tar.xz}
LIMIT=${LIMIT:-565}  # seconds this script may take: the device's 10 minutes less the packing
EVAL_RESERVE=${EVAL_RESERVE:-75}
STAGES=${STAGES:-bench train evaluate}
SEEDS=${SEEDS:-0}
mkdir -p "$RUN" ${OUT_DIR:+"$OUT_DIR"}
log() { tee -a "$RUN/log.txt" ${OUT_DIR:+"$OUT_DIR/log.txt"}; }  # OUT_DIR's copy survives a kill
stamp() { echo "[$SECONDS s] $*" | log; }

if [[ $STAGES == *bench* ]]; then
    stamp "bench"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | log
    python3 -m ferkit data "$DATA" --out "$RUN/data" | log
    for seed in $SEEDS; do
        python3 benchmarks/bench_train.py --profile gpu --no-compile --models cnn --steps "${BENCH_STEPS:-30}" ${EXTRA:-} | log &
    done
    wait
fi
if [[ $STAGES == *train* ]]; then
    # an epoch takes 28,709 images at the bench's rate plus 0.3 s for validation and the checkpoints (on
    # the H200: 1.8 s of wall clock at 17,700 img/s); 15 s go to starting the process
    rate=$(grep -soP '^cnn .*train\s+\K[0-9]+' "$RUN/log.txt" | sort -n | head -1)
    guard=$((LIMIT - EVAL_RESERVE - SECONDS))
    epochs=${EPOCHS:-$(python3 -c "print(max(1, int(($guard - 15) / (28709 / $rate + 0.3))))")}
    stamp "train: seeds $SEEDS${EXTRA:+ with $EXTRA} at ${rate:-(no bench)} img/s each -> $epochs epochs; stopped after $guard s at most"
    for seed in $SEEDS; do
        timeout -s INT "$guard" python3 -m ferkit train "$DATA" --out "$RUN/cnn-s$seed" --profile gpu \
            --set seed="$seed" --set epochs="$epochs" --set snapshot_minutes=2,4,6 ${EXTRA:-} 2>&1 \
            | tr '\r' '\n' | grep --line-buffered -v -E '^train cnn|^\s*$' | sed -u "s/^/s$seed /" | log &
    done
    wait
fi
if [[ $STAGES == *evaluate* ]]; then
    stamp "evaluate"
    # one process for all checkpoints: each `ferkit evaluate` would pay the CUDA start again
    python3 - $(for seed in $SEEDS; do echo "$RUN/cnn-s$seed"; done) <<'EOF' | log
import sys
from pathlib import Path

from ferkit.evaluate import ensemble, evaluate
from ferkit.train import read_history

runs = [Path(arg) for arg in sys.argv[1:] if (Path(arg) / "checkpoints" / "best.pt").exists()]
histories = {run: read_history(run / "history.csv") for run in runs}
print("run       checkpoint  epoch  train s  tta    PrivateTest acc  macro F1  weighted F1")
for which in ("best", "last", "at_2min", "at_4min", "at_6min"):  # the headline first, should time run out
    for run in runs:
        if not (run / "checkpoints" / f"{which}.pt").exists():
            continue
        for tta in (False, True):
            m = evaluate(run, tta=tta, checkpoint=which)
            seconds = sum(row["seconds"] for row in histories[run][:m["epoch"]])
            print(f"{run.name:8s}  {which:10s}  {m['epoch']:5d}  {seconds:7.1f}  {m['tta']:5s}  "
                  f"{m['accuracy']:15.4f}  {m['macro_f1']:8.4f}  {m['weighted_f1']:11.4f}")
for run in runs:  # PublicTest predictions too, to choose ensemble members honestly once back
    m = evaluate(run, split="val", tta=True)
    print(f"{run.name:8s}  best        {m['epoch']:5d}  PublicTest, TTA: accuracy {m['accuracy']:.4f}  "
          f"macro F1 {m['macro_f1']:.4f}")
if len(runs) > 1:
    m = ensemble(runs, runs[0].parent / "ensemble", tta=True)
    print(f"ensemble of {len(runs)} best checkpoints, TTA: accuracy {m['accuracy']:.4f}  "
          f"macro F1 {m['macro_f1']:.4f}  weighted F1 {m['weighted_f1']:.4f}")
EOF
fi
if [[ $STAGES == *compile* ]]; then
    stamp "compile"
    python3 benchmarks/bench_train.py --profile gpu --models cnn --steps "${BENCH_STEPS:-30}" ${EXTRA:-} | log
fi
stamp "done"
if [[ -n ${OUT_DIR:-} ]]; then  # created at the start, for the log
    for seed in $SEEDS; do
        [ -f "$RUN/cnn-s$seed/history.csv" ] && cp "$RUN/cnn-s$seed/history.csv" "$OUT_DIR/history-s$seed.csv"
    done
    tar czf "$OUT_DIR/run.tgz" --exclude=checkpoints -C "$(dirname "$RUN")" "$(basename "$RUN")"
fi
