"""Self-describing checkpoints: config, tokenizer, CMVN and weights in one file; loading models by name.

They are read with ``torch.load(weights_only=True)``, so loading one never runs code. :func:`load_model` is
the entry point of the recognition API: it gives a :class:`~asr.transcribe.Transcriber`, the network with
``transcribe()``; :func:`model_from_checkpoint` gives the bare network, as training wants it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor

from asr.encoder import EncoderConfig
from asr.files import atomic_save  # re-exported: training code imports it from here
from asr.model import ASRModel, ModelConfig
from asr.tokenizer import tokenizer_from_dict
from asr.transcribe import Transcriber

FORMAT = "las-asr"
VERSION = 1
MODELS_DIR = Path(os.environ.get("ASR_MODELS_DIR", Path(__file__).resolve().parent.parent / "models"))
DEFAULT_MODEL = "default"

_Model = TypeVar("_Model", bound=ASRModel)


# weights that a half-precision export may store in 8 bits, a scale per output row: the Whisper front end's
# matrices and kernels that stayed frozen at values 8 bits hold exactly (asr.training.whisper_init); the
# ones that trained (e.g. its top layers, fine-tuned) are off that grid and go to fp16 like the rest
INT8_PREFIX = "encoder.front."


def int8_rows(w: Tensor) -> tuple[Tensor, Tensor]:
    """``w`` -> ``(q, scale)``: int8 ``q`` and a float32 scale per output row (dim 0); ``q * scale ~ w``."""
    scale = w.detach().float().abs().flatten(1).amax(dim=1).clamp_min(1e-12) / 127.0
    scale = scale.view(-1, *([1] * (w.dim() - 1)))
    return torch.round(w.detach().float() / scale).clamp(-127, 127).to(torch.int8), scale


def int8_round_trip(w: Tensor) -> Tensor:
    """``w`` as its 8-bit export gives it back."""
    q, scale = int8_rows(w)
    return (q.float() * scale).to(w.dtype)


def on_int8_grid(w: Tensor) -> bool:
    """Whether the 8-bit export holds ``w`` exactly (to float32 rounding): it loses nothing there."""
    return torch.allclose(int8_round_trip(w.detach().float()), w.detach().float(), rtol=1e-5, atol=1e-8)


def checkpoint_dict(
    model: ASRModel, extra: dict[str, Any] | None = None, half: bool = False, int8: Sequence[str] = ()
) -> dict[str, Any]:
    """The checkpoint of ``model``. ``half``: weights in fp16, except the Whisper front end's matrices that
    lie on their 8-bit grid, stored in 8 bits (losslessly), and those under the parameter-name prefixes
    ``int8`` (e.g. ``encoder.front``: a front end whose top layers trained), rounded to 8 bits."""
    state: dict[str, Tensor] = {}
    scales: dict[str, Tensor] = {}
    whisper = half and model.config.encoder.frontend == "whisper"
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        matrix = v.is_floating_point() and v.dim() >= 2
        rounded = half and matrix and any(k.startswith(p + ".") for p in int8)
        if rounded or (whisper and matrix and k.startswith(INT8_PREFIX) and on_int8_grid(v)):
            state[k], scales[k] = int8_rows(v)
        elif half and v.is_floating_point() and not k.startswith("cmvn."):
            state[k] = v.half()
        else:
            state[k] = v
    ckpt = {
        "format": FORMAT,
        "version": VERSION,
        "config": model.config.to_dict(),
        "tokenizer": model.tokenizer.to_dict(),
        "state_dict": state,
        "extra": extra or {},
    }
    if scales:
        ckpt["int8_scales"] = scales  # state_dict[k] * int8_scales[k] is the weight
    return ckpt


def save_checkpoint(
    model: ASRModel,
    path: str | os.PathLike,
    extra: dict[str, Any] | None = None,
    half: bool = False,
    int8: Sequence[str] = (),
) -> None:
    atomic_save(checkpoint_dict(model, extra, half, int8), path)


def resolve_model_path(name_or_path: str | os.PathLike | None) -> Path:
    """``None`` or a bare name -> ``models/NAME.pt``; anything else is a path."""
    name = DEFAULT_MODEL if name_or_path is None else str(name_or_path)
    path = Path(name)
    if path.is_file():
        return path
    candidate = MODELS_DIR / f"{name}.pt"
    if candidate.is_file():
        return candidate
    known = sorted(p.stem for p in MODELS_DIR.glob("*.pt")) if MODELS_DIR.is_dir() else []
    raise FileNotFoundError(
        f"model {name!r} not found: no such file, and no {candidate}. Known models: {known}"
    )


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise ValueError(
            f"could not read checkpoint {path}: it is not a PyTorch checkpoint or it is damaged "
            f"({type(exc).__name__}: {exc}); copy or export it again"
        ) from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} checkpoint (missing or wrong 'format' field)")
    if ckpt.get("version", 0) > VERSION:
        raise ValueError(f"{path} has checkpoint version {ckpt['version']}; this code reads up to {VERSION}")
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any]) -> ASRModel:
    """The network a checkpoint dict describes, with its weights (in float32, on the CPU, in train mode)."""
    return _build(ASRModel, ckpt)


def float_state_dict(ckpt: dict[str, Any]) -> dict[str, Tensor]:
    """A checkpoint's weights in float32, whatever its export stored (fp16, or 8 bits and ``int8_scales``)."""
    state = {k: v.float() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
    for k, scale in ckpt.get("int8_scales", {}).items():
        if k not in state or state[k].dtype != torch.int8:
            raise ValueError(f"checkpoint has an 8-bit scale for {k} but no 8-bit weight; export it again")
        state[k] = state[k].float() * scale.float()
    return state


def _build(cls: type[_Model], ckpt: dict[str, Any]) -> _Model:
    missing = [k for k in ("config", "tokenizer", "state_dict") if k not in ckpt]
    if missing:
        raise ValueError(f"checkpoint lacks {missing}")
    model = cls(ModelConfig.from_dict(ckpt["config"]), tokenizer_from_dict(ckpt["tokenizer"]))
    state = float_state_dict(ckpt)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:  # missing, unexpected or mis-shaped tensors
        raise ValueError(f"checkpoint weights do not match its config: {exc}") from exc
    return model


def load_model(
    name_or_path: str | os.PathLike | None = None, device: str | torch.device | None = None
) -> Transcriber:
    """Load a model by name (``models/NAME.pt``) or path; ``None`` gives the bundled default model.

    The model is put in eval mode on ``device`` (CUDA when available and none is given). It is the network
    (:class:`~asr.model.ASRModel`) with :meth:`~asr.transcribe.Transcriber.transcribe` and
    :meth:`~asr.transcribe.Transcriber.transcribe_batch`.
    """
    path = resolve_model_path(name_or_path)
    model = _build(Transcriber, load_checkpoint(path))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device).eval()


def with_chunk_ms(model: _Model, chunk_ms: int) -> _Model:
    """A chunk-streaming ``model`` run with chunks of ``chunk_ms`` (its look-ahead unchanged), same weights
    and device: the chunk shapes no weight, so a deployment may trade CPU and accuracy for latency without
    a new checkpoint (docs/BENCHMARKS.md, session 29). Over a Whisper front end the chunk is also the block
    its attention reads ahead within (``EncoderConfig.whisper``), which its weights were trained with: other
    chunks cost more accuracy there; an early look-ahead stays early where the chunk is longer than it.
    ``chunk_ms`` must be a whole number of encoder frames; the model's own chunk gives ``model`` back."""
    enc, shift_ms = model.config.encoder, round(model.config.encoder_frame_shift * 1000)
    if not enc.streaming:
        raise ValueError(
            "chunk_ms applies to chunk-streaming models only; this model's encoder is not chunked"
        )
    if chunk_ms < shift_ms or chunk_ms % shift_ms:
        raise ValueError(
            f"chunk_ms must be a positive multiple of the encoder's {shift_ms} ms frames, got {chunk_ms}"
        )
    chunk = chunk_ms // shift_ms
    if chunk == enc.chunk_frames:
        return model
    # a look-ahead as long as the chunk spans Whisper's whole next block: nothing of it to read early
    early = enc.early_lookahead and enc.lookahead_frames < chunk
    when_arrived = early and enc.lookahead_block_when_arrived
    return _with_encoder(
        model,
        replace(enc, chunk_frames=chunk, early_lookahead=early, lookahead_block_when_arrived=when_arrived),
    )


def with_early_lookahead(model: _Model, early: bool, *, block_when_arrived: bool = False) -> _Model:
    """A streaming Whisper ``model`` whose chunks read their look-ahead early (``early``: as soon as the
    look-ahead's own audio has arrived, from the part of Whisper's next block heard so far) or from the
    whole next block (as it was trained, a block later), same weights and device
    (``EncoderConfig.early_lookahead``): a deployment's trade of accuracy for latency
    (docs/BENCHMARKS.md, session 37). With ``block_when_arrived`` (and ``early``), a stream whose next block
    has all arrived reads it whole (``EncoderConfig.lookahead_block_when_arrived``): streams that fall
    behind cost what a late look-ahead costs (session 41). The model's own settings give ``model`` back."""
    enc = model.config.encoder
    if enc.early_lookahead == early and enc.lookahead_block_when_arrived == block_when_arrived:
        return model
    # EncoderConfig says what it needs
    return _with_encoder(
        model, replace(enc, early_lookahead=early, lookahead_block_when_arrived=block_when_arrived)
    )


def _with_encoder(model: _Model, encoder: EncoderConfig) -> _Model:
    """``model``'s weights in a model of another encoder configuration that reads them the same."""
    out = type(model)(replace(model.config, encoder=encoder), model.tokenizer)
    out.load_state_dict(model.state_dict())
    return out.to(model.device).train(model.training)


@dataclass(frozen=True)
class ModelSummary:
    """What a checkpoint says about itself, for listing models without building them."""

    name: str
    path: Path
    size_bytes: int
    parameters: int  # trainable weights (the feature front end and CMVN statistics not counted)
    vocabulary_kind: str  # "char" or "bpe"
    vocabulary_size: int
    is_default: bool = False
    training: dict[str, Any] = field(default_factory=dict)  # epoch, step, validation metrics, ...
    streaming: bool = False  # a chunked encoder (asr.lc_blstm): listens as the audio arrives


def summarize(path: str | os.PathLike) -> ModelSummary:
    """Read a checkpoint's self-description (raises ``ValueError`` for a file that is not one)."""
    path = Path(path)
    ckpt = load_checkpoint(path)
    tokenizer = tokenizer_from_dict(ckpt["tokenizer"])
    weights = sum(
        v.numel() for k, v in ckpt["state_dict"].items() if not k.startswith(("frontend.", "cmvn."))
    )
    return ModelSummary(
        name=path.stem,
        path=path,
        size_bytes=path.stat().st_size,
        parameters=int(weights),
        vocabulary_kind=tokenizer.kind,
        vocabulary_size=tokenizer.vocab_size,
        is_default=path.stem == DEFAULT_MODEL,
        training={k: v for k, v in ckpt.get("extra", {}).items() if isinstance(v, (int, float, str))},
        streaming=ModelConfig.from_dict(ckpt["config"]).encoder.streaming if "config" in ckpt else False,
    )


def available_models(directory: str | os.PathLike = MODELS_DIR) -> list[ModelSummary]:
    """The models that :func:`load_model` finds by name (``DIR/NAME.pt``), the default first.

    A file there that is not a readable checkpoint raises ``ValueError`` naming it.
    """
    paths = sorted(Path(directory).glob("*.pt")) if Path(directory).is_dir() else []
    return sorted((summarize(p) for p in paths), key=lambda m: (not m.is_default, m.name))
