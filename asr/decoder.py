"""Speller: an LSTM decoder with location-aware attention (Chorowski et al. 2015).

At step ``i``: ``s_i = LSTM(s_{i-1}, [embed(y_{i-1}); c_{i-1}])``, the attention reads ``s_i``, the
encoder states and a convolution of the previous attention weights (the location feature) to give
``alpha_i`` and the context ``c_i``; the output distribution comes from ``[s_i; c_i]``.
The decoder state is data (:class:`DecoderState`), so beam search can reorder and expand it freely.

Decoding steps a few rows at a time, where ``nn.LSTMCell`` and ``nn.Conv1d`` spend their time on memory
traffic and call overhead rather than arithmetic: outside autograd, :meth:`AttentionDecoder.step` runs the
same arithmetic on weights repacked once for it (:class:`_StepWeights`): each LSTM layer's two matrices as one
input-major ``(in + H, 4H)`` matrix (a 10-row step on the 1.3k x 2k layer takes 0.8 ms instead of 1.9 on a
Xeon core), the location filter as a matrix applied to sliding windows of the previous weights, and the
attention energies computed in place, through a sigmoid rather than tanh (the same function, scaled and
shifted, and several times cheaper on the CPU).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from asr import precision
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
    """Encoder output prepared for attention, one row per utterance. A step of ``N`` rows over a memory of
    ``B`` rows reads it as ``N / B`` consecutive hypotheses of each utterance (a beam), so a beam's rows
    share their utterance's memory rather than each reading a copy."""

    enc: Tensor  # (B, T, D)
    proj: Tensor  # (B, T, A) encoder projection, computed once
    mask: Tensor  # (B, T) True on valid frames

    def index_select(self, index: Tensor) -> Memory:
        return Memory(self.enc[index], self.proj[index], self.mask[index])


class DecoderState(NamedTuple):
    h: Tensor  # (L, N, H)
    c: Tensor  # (L, N, H)
    context: Tensor  # (N, D)
    attention: Tensor  # (N, T) previous attention weights

    def index_select(self, index: Tensor) -> DecoderState:
        return DecoderState(self.h[:, index], self.c[:, index], self.context[index], self.attention[index])

    def where(self, keep: Tensor, new: DecoderState) -> DecoderState:
        """``new``'s rows where ``keep (N,)`` is True, this state's elsewhere."""
        return DecoderState(
            torch.where(keep[None, :, None], new.h, self.h),
            torch.where(keep[None, :, None], new.c, self.c),
            torch.where(keep[:, None], new.context, self.context),
            torch.where(keep[:, None], new.attention, self.attention),
        )


LOW_PRECISION_ROWS = 32  # decoder steps of at least this many hypotheses use asr.precision's format


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

    def forward(
        self,
        memory: Memory,
        query: Tensor,
        prev: Tensor,
        location: tuple[Tensor, Tensor, Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """``query (N, H)``, ``prev (N, T)`` -> context ``(N, D)``, weights ``(N, T)``; the rows are ``N / B``
        hypotheses of each of the memory's ``B`` utterances, in blocks. ``location``: the location filter and
        twice its projection as matrices, ``(kernel, channels)`` and ``(channels, A)``, and the energy's
        weights ``(A, 1)`` and bias ``(1,)`` for a sigmoid in place of tanh (:class:`_StepWeights`); the
        energies are then computed in place, in one ``(N, T, A)`` buffer."""
        n, t = prev.shape
        b = memory.enc.size(0)
        if n % b:
            raise ValueError(f"{n} decoder rows do not split into blocks for {b} utterances")
        g = n // b
        query = self.dec_proj(query).view(b, g, 1, -1)
        if location is None:
            loc = self.loc_proj(self.loc_conv(prev.unsqueeze(1)).transpose(1, 2))  # (N, T, A)
            e = self.score(torch.tanh(memory.proj[:, None] + query + loc.view(b, g, t, -1)))
        else:
            # w . tanh(h) + b = 2w . sigmoid(2h) + (b - sum w): the same energies, and sigmoid is several
            # times cheaper than tanh on the (N, T, A) buffer (0.4 against 2.5 ns an element on a Zen 4 core)
            conv, proj2, w2, b2 = location
            k = conv.size(0)
            windows = F.pad(prev, (k // 2, k // 2)).unfold(1, k, 1).reshape(-1, k)  # (N * T, kernel)
            hidden = (windows @ conv @ proj2).view(b, g, t, -1)  # (B, g, T, A): twice the location term
            hidden.add_(memory.proj[:, None], alpha=2).add_(query, alpha=2).sigmoid_()
            e = torch.addmm(b2, hidden.view(-1, hidden.size(-1)), w2).view(b, g, t, 1)
        e = e.view(b, g, t).masked_fill(~memory.mask[:, None], float("-inf"))
        weights = torch.softmax(self.sharpening * e, dim=2)  # (B, g, T)
        context = torch.bmm(weights, memory.enc).view(n, -1)  # each utterance's frames read once
        return context, weights.view(n, t)


class AttentionDecoder(nn.Module):
    packed_steps = True  # outside autograd, step with the repacked weights (False: the modules, for checks)

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
        fast = self.packed_steps and not self.training and not torch.is_grad_enabled()
        packed = self._step_weights() if fast else None
        hs, cs = [], []
        if packed is None:
            x = torch.cat([self.embed(tokens), state.context], dim=1)
        else:  # layer 0's embedding product is a table lookup
            x, extra = state.context, packed.token_gates[tokens]
        for i, cell in enumerate(self.cells):
            if packed is None:
                h, c = cell(x, (state.h[i], state.c[i]))
            else:
                h, c = packed.cell(i, x, state.h[i], state.c[i], extra if i == 0 else None)
            hs.append(h)
            cs.append(c)
            x = self.dropout(h)
        location = None if packed is None else packed.location
        context, weights = self.attention(memory, hs[-1], state.attention, location)
        logits = self.output(self.dropout(torch.cat([hs[-1], context], dim=1)))
        return logits, DecoderState(torch.stack(hs), torch.stack(cs), context, weights)

    def _step_weights(self) -> _StepWeights:
        """The repacked weights for steps outside autograd, rebuilt when a weight has changed."""
        key = _StepWeights.key(self)
        cached: _StepWeights | None = getattr(self, "_packed", None)
        if cached is None or cached.source != key:
            cached = _StepWeights.build(self, key)
            object.__setattr__(self, "_packed", cached)  # a cache, not a submodule or a buffer
        return cached

    def forward(
        self, enc: Tensor, enc_lengths: Tensor, ys_in: Tensor, limits: Tensor | None = None
    ) -> Tensor:
        """Teacher forcing: ``ys_in (B, U)`` starting with <sos> -> logits ``(B, U, V)``.

        ``limits (B, U)``: the encoder frames each step may attend to (at most ``enc_lengths``), as a search
        over frames that are still arriving has them (:mod:`asr.training.triggered`); the initial attention
        is spread over the first step's frames, as :meth:`prepare` spreads it over a growing search's."""
        if limits is None:
            memory, state = self.prepare(enc, enc_lengths)
        else:
            memory, state = self.prepare(enc, limits[:, 0])
            memory = memory._replace(mask=lengths_to_mask(enc_lengths, enc.size(1)))
            frames = torch.arange(enc.size(1), device=enc.device)
        full = memory
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
            if limits is not None:
                memory = full._replace(mask=full.mask & (frames[None] < limits[:, u, None]))
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


class _StepWeights(NamedTuple):
    """An :class:`AttentionDecoder`'s weights repacked for decoding steps (see the module's docstring);
    ``source`` identifies the weights they were made from (storage and in-place version of each)."""

    source: tuple[object, ...]
    # per layer: ([W_ih W_hh]^T (in + H, 4H), b_ih + b_hh (4H,)); layer 0's ``in`` is the context only
    cells: list[tuple[Tensor, Tensor]]
    token_gates: Tensor  # (V, 4H): each token's embedding through layer 0's input weights
    low: list[tuple[Tensor, Tensor]]  # ``cells`` in the precision of large batches (asr.precision)
    int8: list[object]  # ``cells`` on 8-bit weights (asr.precision.quantize_linear); [] when off
    # loc_conv (kernel, channels) and 2 loc_proj (channels, A) as matrices; the energy's 2 w (A, 1), b - sum w
    location: tuple[Tensor, Tensor, Tensor, Tensor]

    @staticmethod
    def key(decoder: AttentionDecoder) -> tuple[object, ...]:
        # read attribute by attribute: a step asks for this every time, and walking the modules'
        # parameters() took 0.2 ms of a 1.1 ms step (a beam of 8 over 100 frames)
        cells: list[Tensor] = []
        for cell in decoder.cells:
            assert isinstance(cell, nn.LSTMCell)
            weights = (cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)
            cells += [t for t in weights if t is not None]
        params: list[Tensor] = [
            decoder.embed.weight,
            *cells,
            decoder.attention.loc_conv.weight,
            decoder.attention.loc_proj.weight,
            decoder.attention.score.weight,
            decoder.attention.score.bias,
        ]
        device = params[0].device
        formats = (precision.recurrent_dtype(device), precision.int8_steps(device))
        return (*formats, *precision.weights_key(params))

    @staticmethod
    @torch.no_grad()
    def build(decoder: AttentionDecoder, source: tuple[object, ...]) -> _StepWeights:
        dtype = source[0]  # the LSTM products' of large batches (asr.precision)
        assert isinstance(dtype, torch.dtype)
        cells = []
        e = decoder.config.embed_dim
        token_gates = decoder.embed.weight.new_zeros(0)
        for i, cell in enumerate(decoder.cells):
            assert isinstance(cell, nn.LSTMCell)
            zeros = cell.weight_ih.new_zeros(cell.weight_ih.size(0))
            w_ih, b = cell.weight_ih, cell.bias_ih + cell.bias_hh if cell.bias else zeros
            if i == 0:  # the embedding's columns become a table of each token's gates (with the biases)
                token_gates = decoder.embed.weight @ w_ih[:, :e].t() + b
                w_ih, b = w_ih[:, e:], zeros
            cells.append((torch.cat([w_ih, cell.weight_hh], dim=1).t().contiguous(), b))
        low = [(w.to(dtype), b.to(dtype)) for w, b in cells]
        int8 = [precision.quantize_linear(w.t(), b) for w, b in cells] if source[1] else []
        att = decoder.attention
        conv = att.loc_conv.weight[:, 0, :].t().contiguous()  # (kernel, channels)
        w, bias = att.score.weight[0], att.score.bias
        location = (conv, 2 * att.loc_proj.weight.t(), 2 * w[:, None], bias - w.sum())
        return _StepWeights(source, cells, token_gates.contiguous(), low, int8, location)

    def cell(
        self, i: int, x: Tensor, h: Tensor, c: Tensor, extra: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """``nn.LSTMCell`` layer ``i``'s step (gates in its order: input, forget, cell, output), ``extra``
        added to its gates (layer 0: the tokens' rows of ``token_gates``). On 8-bit weights where
        :func:`asr.precision.int8_steps` says so; else in the precision of large batches from
        ``LOW_PRECISION_ROWS`` rows on (a lone beam stays in the weights' own: on a Xeon core bfloat16 only
        pays from a few dozen rows, bench/decoder_step.py)."""
        xh = torch.cat([x, h], dim=1)
        if self.int8:
            gates = precision.int8_linear(xh, self.int8[i]).to(x.dtype)
        else:
            w, b = self.low[i] if x.size(0) >= LOW_PRECISION_ROWS else self.cells[i]
            gates = torch.addmm(b, xh.to(w.dtype), w).to(x.dtype)
        if extra is not None:
            gates = gates + extra
        gi, gf, gg, go = gates.chunk(4, dim=1)
        c = torch.sigmoid(gf) * c + torch.sigmoid(gi) * torch.tanh(gg)
        return torch.sigmoid(go) * torch.tanh(c), c
