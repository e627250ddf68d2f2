#!/usr/bin/env bash
# Pack what scripts/device/train.sh needs on a lent GPU machine, here, within the device tool's 64 MiB:
#   .devdata/  the training audio: speechocean762/train/ and the WAVE files it lists (33 MiB); with CATHY=1,
#              cathy/ too (27 MiB more)
#   .whl/      cp312 x86-64 wheels of what the GPU image lacks (soundfile, cffi, pycparser, jiwer, rapidfuzz,
#              click, soxr)
# and print what would travel. The tracked tree already holds models/default.pt (18 MB), so with cathy the
# total passes 64 MiB: then move models/default.pt aside for the call (train.sh does not read it), or leave
# cathy out, as stages 2-6 did. Both folders are git-ignored.
#   bash scripts/device/pack.sh [SHARED_DATA]      (default ../shared/data)
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${1:-../shared/data}
[ -f "$DATA/speechocean762/train/wav.scp" ] || { echo "no $DATA/speechocean762/train/wav.scp: give the shared data folder" >&2; exit 2; }
rm -rf .devdata && mkdir -p .devdata/speechocean762/train
cp "$DATA"/speechocean762/train/{wav.scp,text,utt2spk,spk2utt} .devdata/speechocean762/train/
# only the recordings the training split lists (never test/)
(cd "$DATA/speechocean762" && awk '{print $2}' train/wav.scp | tar -cf - -T -) | tar -xf - -C .devdata/speechocean762
if [ "${CATHY:-0}" = 1 ]; then
  mkdir -p .devdata/cathy && cp -r "$DATA/cathy/data" .devdata/cathy/
fi
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform any -d .whl soundfile cffi pycparser jiwer rapidfuzz click soxr
tree=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
carried=$(du -sb .devdata .whl | awk '{s += $1} END {print s}')
total=$((tree + carried))
python3 -c "import sys; t, c = (int(a) / 2**20 for a in sys.argv[1:]); print(f'tracked tree {t:.1f} MiB + .devdata and .whl {c:.1f} MiB = {t + c:.1f} MiB of 64')" "$tree" "$carried"
[ "$total" -le $((64 * 1048576)) ] || { echo "over the 64 MiB the device tool carries: see this script's header" >&2; exit 1; }
