"""Speller: an LSTM decoder with location-aware attention (Chorowski et al. 2015).

At step ``i``: ``s_i = LSTM(s_{i-1}, [embed(y_{i-1}); c_{i-1}])``, the attention reads ``s_i``, the
encoder states and a convolution of the previous attention weights (the location feature) to give
``alpha_i`` and the context ``c_i``; the output distribution comes from ``[s_i; c_i]``.
The decoder state is data (:class:`DecoderState`), so beam search can reorder and expand it freely.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from asr.features import lengths_to_mask


@dataclass(frozen=True)
class DecoderConfig:
    embed_dim: int = 256
    hidden_size: int = 512
    num_layers: int = 1
    attention_dim: int = 256
    location_channels: int = 10
    location_kernel: int = 31  # odd, so the location filter is centred on each frame
    attention_sharpening: float = 2.0
    dropout: float = 0.1
    label_smoothing: float = 0.1
    sampling_prob: float = 0.0  # scheduled sampling: chance of feeding back the model's own prediction

    def __post_init__(self) -> None:
        if self.location_kernel % 2 == 0:
            raise ValueError(f"location_kernel must be odd, got {self.location_kernel}")
        if not 0.0 <= self.sampling_prob < 1.0:
            raise ValueError(f"sampling_prob must be in [0, 1), got {self.sampling_prob}")


class Memory(NamedTuple):
    """Encoder output prepared for attention; rows may be repeated per hypothesis."""

    enc: Tensor  # (N, T, D)
    proj: Tensor  # (N, T, A) encoder projection, computed once
    mask: Tensor  # (N, T) True on valid frames

    def index_select(self, index: Tensor) -> Memory:
        return Memory(self.enc[index], self.proj[index], self.mask[index])


class DecoderState(NamedTuple):
    h: Tensor  # (L, N, H)
    c: Tensor  # (L, N, H)
    context: Tensor  # (N, D)
    attention: Tensor  # (N, T) previous attention weights

    def index_select(self, index: Tensor) -> DecoderState:
        return DecoderState(self.h[:, index], self.c[:, index], self.context[index], self.attention[index])


class LocationAwareAttention(nn.Module):
    def __init__(self, enc_dim: int, dec_dim: int, config: DecoderConfig) -> None:
        super().__init__()
        a = config.attention_dim
        self.enc_proj = nn.Linear(enc_dim, a)
        self.dec_proj = nn.Linear(dec_dim, a, bias=False)
        self.loc_conv = nn.Conv1d(
            1,
            config.location_channels,
            config.location_kernel,
            padding=config.location_kernel // 2,
            bias=False,
        )
        self.loc_proj = nn.Linear(config.location_channels, a, bias=False)
        self.score = nn.Linear(a, 1)
        self.sharpening = config.attention_sharpening

    def forward(self, memory: Memory, query: Tensor, prev: Tensor) -> tuple[Tensor, Tensor]:
        """``query (N, H)``, ``prev (N, T)`` -> context ``(N, D)``, weights ``(N, T)``."""
        loc = self.loc_conv(prev.unsqueeze(1)).transpose(1, 2)  # (N, T, channels)
        e = self.score(torch.tanh(memory.proj + self.dec_proj(query).unsqueeze(1) + self.loc_proj(loc)))
        e = e.squeeze(2).masked_fill(~memory.mask, float("-inf"))
        weights = torch.softmax(self.sharpening * e, dim=1)
        context = torch.bmm(weights.unsqueeze(1), memory.enc).squeeze(1)
        return context, weights


class AttentionDecoder(nn.Module):
    def __init__(
        self, vocab_size: int, enc_dim: int, config: DecoderConfig, sos_id: int, eos_id: int
    ) -> None:
        super().__init__()
        self.config = config
        self.vocab_size = vocab_size
        self.sos_id, self.eos_id = sos_id, eos_id
        self.embed = nn.Embedding(vocab_size, config.embed_dim)
        self.cells = nn.ModuleList(
            nn.LSTMCell(config.embed_dim + enc_dim if i == 0 else config.hidden_size, config.hidden_size)
            for i in range(config.num_layers)
        )
        self.attention = LocationAwareAttention(enc_dim, config.hidden_size, config)
        self.dropout = nn.Dropout(config.dropout)
        self.output = nn.Linear(config.hidden_size + enc_dim, vocab_size)

    def prepare(self, enc: Tensor, enc_lengths: Tensor) -> tuple[Memory, DecoderState]:
        """Project the encoder output once and build the initial state (uniform attention)."""
        mask = lengths_to_mask(enc_lengths, enc.size(1))
        memory = Memory(enc, self.attention.enc_proj(enc), mask)
        n, h = enc.size(0), self.config.hidden_size
        zeros = enc.new_zeros(self.config.num_layers, n, h)
        prev = mask.to(enc.dtype) / enc_lengths.clamp_min(1).to(enc.dtype)[:, None]
        return memory, DecoderState(zeros, zeros.clone(), enc.new_zeros(n, enc.size(2)), prev)

    def step(self, tokens: Tensor, state: DecoderState, memory: Memory) -> tuple[Tensor, DecoderState]:
        """One step: previous tokens ``(N,)`` -> logits ``(N, V)`` and the next state."""
        x = torch.cat([self.embed(tokens), state.context], dim=1)
        hs, cs = [], []
        for i, cell in enumerate(self.cells):
            h, c = cell(x, (state.h[i], state.c[i]))
            hs.append(h)
            cs.append(c)
            x = self.dropout(h)
        context, weights = self.attention(memory, hs[-1], state.attention)
        logits = self.output(self.dropout(torch.cat([hs[-1], context], dim=1)))
        return logits, DecoderState(torch.stack(hs), torch.stack(cs), context, weights)

    def forward(self, enc: Tensor, enc_lengths: Tensor, ys_in: Tensor) -> Tensor:
        """Teacher forcing: ``ys_in (B, U)`` starting with <sos> -> logits ``(B, U, V)``."""
        memory, state = self.prepare(enc, enc_lengths)
        p = self.config.sampling_prob if self.training else 0.0
        outputs: list[Tensor] = []
        tokens = ys_in[:, 0]
        for u in range(ys_in.size(1)):
            if u > 0:
                tokens = ys_in[:, u]
                if p > 0:
                    own = outputs[-1].argmax(-1)
                    use_own = torch.rand(tokens.shape, device=tokens.device) < p
                    tokens = torch.where(use_own, own, tokens)
            logits, state = self.step(tokens, state, memory)
            outputs.append(logits)
        return torch.stack(outputs, dim=1)

    def loss(self, logits: Tensor, ys_out: Tensor) -> tuple[Tensor, Tensor]:
        """Label-smoothed cross entropy summed over tokens and averaged over utterances, and accuracy.

        ``ys_out (B, U)`` is padded with -1.
        """
        b = logits.size(0)
        loss = F.cross_entropy(
            logits.reshape(-1, self.vocab_size).float(),
            ys_out.reshape(-1),
            ignore_index=-1,
            label_smoothing=self.config.label_smoothing,
            reduction="sum",
        )
        valid = ys_out != -1
        correct = (logits.argmax(-1) == ys_out) & valid
        acc = correct.sum().float() / valid.sum().clamp_min(1)
        return loss / b, acc
