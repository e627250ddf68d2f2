"""Session 25 experiment (issue 29, configs/synth-stage24.yaml): a synthetic manifest's speech clips shifted
up by 3-7 semitones (``librosa.effects.pitch_shift``: pitch and formants together, tempo kept), as child-like
voices; non-speech rows are kept as they are.

    python scripts/child_shift.py exp/data/synth/train_1500.jsonl exp/data/synth_child
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf


def main(src: Path, out: Path, seed: int = 25) -> int:
    (out / "audio").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    rows = []
    for line in src.open():
        row = json.loads(line)
        path = Path(row["audio"]) if Path(row["audio"]).is_absolute() else src.parent / row["audio"]
        if row.get("engine") == "nonspeech":
            rows.append({**row, "audio": str(path.resolve())})
            continue
        dst = out / "audio" / f"{row['id']}.flac"
        steps = round(rng.uniform(3.0, 7.0), 2)
        if not dst.exists():  # resumable
            y, sr = sf.read(path, dtype="float32")
            sf.write(dst, np.clip(librosa.effects.pitch_shift(y, sr=sr, n_steps=steps), -1, 1), sr)
        speaker = row["speaker"] + "+child"
        rows.append({**row, "audio": str(dst.resolve()), "child_shift": steps, "speaker": speaker})
    with (out / "train.jsonl").open("w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    print(f"{len(rows)} rows -> {out / 'train.jsonl'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(Path(sys.argv[1]), Path(sys.argv[2])))
