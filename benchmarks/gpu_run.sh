#!/usr/bin/env bash
# One complete GPU check for the device machine (PyTorch present, no network, no pip install):
#   cp ../shared/fer2013/fer2013_images.tar.xz .data/   # here, once; .data/ is git-ignored
#   then on the device:  bash benchmarks/gpu_run.sh      (with .data carried; results under $OUT)
# 1. throughput of the gpu profile (eager vs torch.compile), 2. one gpu-profile CNN sized to about
# 8 minutes of training, with snapshots at 2, 4 and 8 minutes, 3. PrivateTest accuracy of each
# snapshot and of the best checkpoint, with and without TTA.
set -euo pipefail
export PYTHONPATH=src PYTHONUNBUFFERED=1 FERKIT_CACHE=/tmp/ferkit-cache
OUT=${OUT:-runs/gpu}
DATA=${DATA:-.data/fer2013_images.tar.xz}
MINUTES=${MINUTES:-8}
mkdir -p "$OUT"
python3 -m ferkit data "$DATA" --out "$OUT/data" | tee "$OUT/log.txt"
python3 benchmarks/bench_train.py --profile gpu --steps "${BENCH_STEPS:-30}" | tee -a "$OUT/log.txt"
rate=$(grep -oP '^cnn .*train\s+\K[0-9]+' "$OUT/log.txt" | head -1)
epochs=$(python3 -c "print(max(1, int($MINUTES * 60 * $rate * 0.85 / 28709)))")
echo "gpu profile: $rate img/s -> $epochs epochs for about $MINUTES minutes" | tee -a "$OUT/log.txt"
python3 -m ferkit train "$DATA" --out "$OUT/cnn" --profile gpu --set epochs="$epochs" \
    --set snapshot_minutes=2,4,8 ${EXTRA:-} 2>&1 | grep -v 'step/s' | tee -a "$OUT/log.txt"
for which in best at_2min at_4min at_8min; do
    [ -f "$OUT/cnn/checkpoints/$which.pt" ] || continue
    python3 -m ferkit evaluate "$OUT/cnn" --checkpoint "$which" | tee -a "$OUT/log.txt"
    python3 -m ferkit evaluate "$OUT/cnn" --checkpoint "$which" --tta | tee -a "$OUT/log.txt"
done
