"""Listener: optional convolutional front end, then a pyramidal bidirectional LSTM.

Each pyramid layer halves the time axis by concatenating neighbour frames before its BiLSTM, as in
Listen, Attend and Spell (Chan et al. 2016). Padded frames never influence valid ones: inputs are
masked before every convolution and the LSTMs run on packed sequences.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from asr.features import lengths_to_mask
from asr.whisper_encoder import WhisperEncoderConfig, WhisperFrontEnd

FRONTENDS = ("conv", "whisper")


@dataclass(frozen=True)
class EncoderConfig:
    input_dim: int = 80
    conv_channels: int = 32  # 0 disables the convolutional front end
    hidden_size: int = 256  # per direction
    num_layers: int = 3
    pyramid_layers: int = 1  # layers 1..pyramid_layers halve time (layer 0 never does)
    dropout: float = 0.1
    # Streaming (latency-controlled BLSTM, asr.lc_blstm): chunks of this many encoder frames, each encoded
    # with lookahead_frames of future; 0 = offline, the whole utterance at once.
    chunk_frames: int = 0
    lookahead_frames: int = 0
    # Streaming over a Whisper front end: encode the look-ahead's states from their own audio (the first
    # lookahead_frames of the next attention block read each other and the blocks before, not the whole
    # block), so that a chunk waits for its look-ahead's audio only, not for the whole next block. A
    # decoding choice as much as a training one: the same weights decode either way (asr.lc_blstm).
    early_lookahead: bool = False
    # ... except where a stream's next block has all arrived when its chunk is encoded (the stream is behind,
    # or its audio came in long pieces): that block is encoded whole and the look-ahead read from it, as
    # without early_lookahead, instead of its first states twice. So a loaded server catches up at the late
    # look-ahead's cost, and no stream waits longer for it. Streams only (whole utterances read the look-ahead
    # early): what a stream gives then depends on when its audio arrived.
    lookahead_block_when_arrived: bool = False
    # "conv": ConvFrontEnd with conv_channels (0: none); "whisper": Whisper's encoder (asr.whisper_encoder) of
    # these sizes (tiny's by default) over Whisper log-mel features (features.kind: whisper; streaming, with
    # chunk_frames: whisper-causal, and its attention block-causal in chunks, asr.whisper_stream)
    frontend: str = "conv"
    whisper_width: int = 384
    whisper_heads: int = 6
    whisper_layers: int = 4

    def __post_init__(self) -> None:
        if self.frontend not in FRONTENDS:
            raise ValueError(f"encoder.frontend must be one of {list(FRONTENDS)}, got {self.frontend!r}")
        if self.chunk_frames < 0 or self.lookahead_frames < 0:
            raise ValueError(
                "chunk_frames and lookahead_frames must be >= 0, "
                f"got {self.chunk_frames} and {self.lookahead_frames}"
            )
        if self.lookahead_frames and not self.chunk_frames:
            raise ValueError("lookahead_frames needs chunk_frames > 0 (streaming); set both or neither")
        if self.early_lookahead and not (
            self.frontend == "whisper" and 0 < self.lookahead_frames < self.chunk_frames
        ):
            raise ValueError(
                "early_lookahead needs a streaming Whisper front end with 0 < lookahead_frames < chunk_frames"
                f" (got frontend {self.frontend!r}, chunk {self.chunk_frames}, look-ahead "
                f"{self.lookahead_frames}); without it a chunk waits for the whole next block"
            )
        if self.lookahead_block_when_arrived and not self.early_lookahead:
            raise ValueError("lookahead_block_when_arrived needs early_lookahead (without it, it always is)")
        if not 0 <= self.pyramid_layers < self.num_layers:
            raise ValueError(
                f"pyramid_layers must be in [0, num_layers - 1] = [0, {self.num_layers - 1}], "
                f"got {self.pyramid_layers}"
            )

    @property
    def streaming(self) -> bool:
        return self.chunk_frames > 0

    @property
    def output_dim(self) -> int:
        return 2 * self.hidden_size

    @property
    def whisper(self) -> WhisperEncoderConfig | None:
        if self.frontend != "whisper":
            return None
        # streaming: blocks of one chunk, in the front end's 20 ms states (asr.whisper_stream)
        block = self.chunk_frames * 2**self.pyramid_layers
        return WhisperEncoderConfig(
            self.input_dim, self.whisper_width, self.whisper_heads, self.whisper_layers, block
        )

    @property
    def halves_in_front(self) -> bool:
        """Whether the front end halves time (both kinds do, when present)."""
        return self.frontend == "whisper" or self.conv_channels > 0

    @property
    def subsampling(self) -> int:
        """Total time reduction from input frames to encoder frames."""
        return (2 if self.halves_in_front else 1) * 2**self.pyramid_layers

    def output_lengths(self, lengths: Tensor) -> Tensor:
        if self.halves_in_front:
            lengths = torch.div(lengths - 1, 2, rounding_mode="floor") + 1
        for _ in range(self.pyramid_layers):
            lengths = torch.div(lengths, 2, rounding_mode="floor")
        return lengths


class ConvFrontEnd(nn.Module):
    """Two 3x3 convolutions: time /2, frequency /4. ``(B, T, F) -> (B, ceil(T/2), C * F/4)``."""

    def __init__(self, input_dim: int, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, stride=(2, 2), padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=(1, 2), padding=1)
        self.out_dim = channels * ((((input_dim - 1) // 2 + 1) - 1) // 2 + 1)

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        x = x * lengths_to_mask(lengths, x.size(1))[:, :, None]
        x = torch.relu(self.conv1(x.unsqueeze(1)))  # (B, C, T/2, F/2)
        lengths = torch.div(lengths - 1, 2, rounding_mode="floor") + 1
        x = x * lengths_to_mask(lengths, x.size(2))[:, None, :, None]
        x = torch.relu(self.conv2(x))  # (B, C, T/2, F/4)
        b, c, t, f = x.shape
        return x.permute(0, 2, 1, 3).reshape(b, t, c * f), lengths


def pyramid_concat(x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
    """``(B, T, C) -> (B, T//2, 2C)``: neighbour frames concatenated; an odd last frame is dropped."""
    b, t, c = x.shape
    t2 = t // 2
    x = x[:, : 2 * t2].reshape(b, t2, 2 * c)
    return x, torch.div(lengths, 2, rounding_mode="floor")


class PyramidalBLSTMEncoder(nn.Module):
    """``(B, T, input_dim)`` features with lengths -> ``(B, T', 2 * hidden)`` with lengths."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.front: ConvFrontEnd | WhisperFrontEnd | None = None
        if config.whisper is not None:
            self.front = WhisperFrontEnd(config.whisper)
        elif config.conv_channels:
            self.front = ConvFrontEnd(config.input_dim, config.conv_channels)
        in_dim = self.front.out_dim if self.front is not None else config.input_dim
        layers = []
        for i in range(config.num_layers):
            if 1 <= i <= config.pyramid_layers:
                in_dim *= 2
            layers.append(nn.LSTM(in_dim, config.hidden_size, batch_first=True, bidirectional=True))
            in_dim = 2 * config.hidden_size
        self.layers = nn.ModuleList(layers)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        if bool((self.config.output_lengths(lengths) <= 0).any()):
            raise ValueError(
                f"input too short for the encoder: {lengths.tolist()} feature frames; "
                f"each utterance needs at least {self.config.subsampling} frames "
                f"({self.config.subsampling * 10} ms of audio)"
            )
        if self.front is not None:
            x, lengths = self.front(x, lengths)
        for i, lstm in enumerate(self.layers):
            if 1 <= i <= self.config.pyramid_layers:
                x, lengths = pyramid_concat(x, lengths)  # (B, T, C) -> (B, T/2, 2C)
            packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
            out, _ = lstm(packed)
            x, _ = pad_packed_sequence(out, batch_first=True, total_length=x.size(1))
            x = self.dropout(x)
        return x, lengths
