#!/usr/bin/env bash
# One complete GPU check for the device machine (PyTorch present, no network, no pip install):
#   cp ../shared/fer2013/fer2013_images.tar.xz .data/   # here, once; .data/ is git-ignored
#   then on the device:  RUN=runs/gpu bash benchmarks/gpu_run.sh; cp -r runs/gpu "$OUT"   (carry .data)
# 1. bench: throughput of the gpu profile (eager vs torch.compile); 2. train: one gpu-profile CNN
# sized to about $MINUTES minutes of training, with snapshots at 2, 4 and 8 minutes; 3. evaluate:
# PrivateTest accuracy of each snapshot and of the best checkpoint, with and without TTA.
# All three take about MINUTES + 2 minutes; where one command may run only 10 minutes, run them as
# two commands on the same warm machine (runs/ survives between calls there):
#   STAGES="bench train" RUN=runs/gpu bash benchmarks/gpu_run.sh
#   STAGES=evaluate RUN=runs/gpu bash benchmarks/gpu_run.sh; cp -r runs/gpu "$OUT"
# Dry run on a CPU: BENCH_STEPS=1 MINUTES=1 EPOCHS=1 EXTRA="--set train_limit=256 --set val_limit=64
#   --set widths=8,16 --set eval_batch_size=64" RUN=/tmp/gpu bash benchmarks/gpu_run.sh
set -euo pipefail
export PYTHONPATH=src PYTHONUNBUFFERED=1 FERKIT_CACHE=/tmp/ferkit-cache
RUN=${RUN:-runs/gpu}
DATA=${DATA:-.data/fer2013_images.tar.xz}
MINUTES=${MINUTES:-8}
STAGES=${STAGES:-bench train evaluate}
mkdir -p "$RUN"
log() { tee -a "$RUN/log.txt"; }

if [[ $STAGES == *bench* ]]; then
    python3 -m ferkit data "$DATA" --out "$RUN/data" | log
    python3 benchmarks/bench_train.py --profile gpu --steps "${BENCH_STEPS:-30}" | log
fi
if [[ $STAGES == *train* ]]; then
    # epochs for about MINUTES of training at the measured eager rate (validation takes the rest)
    rate=$(grep -oP '^cnn .*train\s+\K[0-9]+' "$RUN/log.txt" | head -1)
    epochs=${EPOCHS:-$(python3 -c "print(max(1, int($MINUTES * 60 * $rate * 0.85 / 28709)))")}
    echo "gpu profile: $rate img/s -> $epochs epochs for about $MINUTES minutes" | log
    python3 -m ferkit train "$DATA" --out "$RUN/cnn" --profile gpu --set epochs="$epochs" \
        --set snapshot_minutes=2,4,8 ${EXTRA:-} 2>&1 | grep -v 'step/s' | log
fi
if [[ $STAGES == *evaluate* ]]; then
    for which in best at_2min at_4min at_8min; do
        [ -f "$RUN/cnn/checkpoints/$which.pt" ] || continue
        python3 -m ferkit evaluate "$RUN/cnn" --checkpoint "$which" | log
        python3 -m ferkit evaluate "$RUN/cnn" --checkpoint "$which" --tta | log
    done
fi
