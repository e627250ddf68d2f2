"""Export the newest weights of a training run as an fp16 model checkpoint, split for the transfer limit."""
import sys
from pathlib import Path

from asr.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint

run, out = Path(sys.argv[1]), Path(sys.argv[2])
src = next(p for p in (run / "final.pt", run / "best.pt", run / "last.pt") if p.exists())
ckpt = load_checkpoint(src)
model = model_from_checkpoint(ckpt)
extra = {k: v for k, v in ckpt.get("extra", {}).items() if k != "train"}
extra["source"] = src.name
save_checkpoint(model, out / "model.pt", extra=extra, half=True)
print("exported", src)
