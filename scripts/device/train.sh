#!/usr/bin/env bash
# Train the bundled model on a lent GPU machine (no network there), in calls of at most ~9 minutes.
#
# Before the first call, here: `bash scripts/device/pack.sh` (CATHY=1 for cathy too) makes
#   .devdata/  a copy of the training audio: speechocean762/train/ + the WAVE files it lists [+ cathy/]
#   .whl/      x86-64 cp312 wheels of what the GPU image lacks (soundfile, jiwer, soxr, ...)
# Then run `CONFIG=... bash scripts/device/train.sh [asr train options]` there with .devdata and .whl carried;
# CONFIG defaults to configs/default.yaml (from scratch, needs cathy); a fine-tuning config such as
# configs/finetune-so762-stage5.yaml with `--set init_from=models/default.pt` needs speechocean762 alone.
# With a lent task's 15 device minutes, run configs/finetune-so762-gpu.yaml (from models/default.pt, one call).
# Each call trains for MINUTES (default 8.5) and pauses cleanly; run it again on the same warm machine to
# continue (`asr train --resume`). The newest weights come back in $OUT as fp16, split under 16 MB a file:
#   cat model.pt.part-* > models/default.pt
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
DATA=${DATA:-.devdata}  # or a copy left on the warm machine by an earlier call (then carry the model instead)
if [ ! -f exp/data/so762/train.jsonl ]; then
  python3 scripts/device/run_asr.py data prepare kaldi "$DATA/speechocean762/train" exp/data/so762 --valid-speakers 8
  if [ -d "$DATA/cathy" ]; then python3 scripts/device/run_asr.py data prepare arctic "$DATA/cathy" exp/data/cathy; fi
fi
CONFIG=${CONFIG:-configs/default.yaml}
OUTDIR=${OUTDIR:-exp/default}
python3 scripts/device/run_asr.py train "$CONFIG" --out "$OUTDIR" --resume \
  --max-minutes "${MINUTES:-8.5}" "$@" 2>&1 | grep --line-buffered -v -i warn | tee "$OUT/train.log"
cp "$OUTDIR/metrics.jsonl" "$OUT/" 2>/dev/null
python3 scripts/device/export.py "$OUTDIR" "$OUT" && split -b 15M "$OUT/model.pt" "$OUT/model.pt.part-" && rm "$OUT/model.pt"
ls -la "$OUT"
