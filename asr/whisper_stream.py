"""Whisper's encoder as a stream: each block of states encoded once, as its audio arrives.

A :class:`~asr.whisper_encoder.WhisperFrontEnd` with ``config.block = B`` attends block-causally: a state
reads the states of its own block of ``B`` and of the blocks before it in its 30 s window. So a stream can
encode a block as soon as the log-mel frames under it (and one after it, the convolutions' reach) have
arrived, keep every layer's keys and values, and never encode it again: :func:`step` does that for many
streams in one batched call, each stream's place in its own :class:`WhisperStream`. The states are the ones
the whole utterance gives (``tests/test_whisper_stream.py``), 30 s windows included: at a window's end the
keys and values are dropped and the positions start again, as :meth:`WhisperFrontEnd.forward` does.

Each block's attention reads every earlier state of its window, so a block costs more the later it comes,
up to the window's 1500 states; the recognizer ends utterances long before that (``max_segment_seconds``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from asr.whisper_encoder import WINDOW_STATES, AttentionBlock, WhisperFrontEnd, block_mask

WINDOW_FRAMES = 2 * WINDOW_STATES


@dataclass
class WhisperStream:
    """One stream's place in :func:`step`.

    ``mel``: its log-mel frames from window-local frame ``base`` on (the ones before are no longer needed;
    ``base`` is negative for frames of the window before, kept until they are taken);
    ``states``: states encoded in the current window, the ``window``-th; ``keys``/``values``: each layer's
    buffer ``(heads, >= states, head width)``, its first ``states`` filled; ``out``: encoded states not yet
    taken, the first of them global state ``out_start``; ``finished``: no more frames come."""

    mel: Tensor
    base: int = 0
    states: int = 0
    window: int = 0
    keys: list[Tensor] = field(default_factory=list)
    values: list[Tensor] = field(default_factory=list)
    out: Tensor | None = None
    out_start: int = 0
    finished: bool = False

    @property
    def present(self) -> int:
        """Window-local frames received."""
        return self.base + self.mel.size(0)

    @property
    def encoded(self) -> int:
        """Global states encoded."""
        return self.window * WINDOW_STATES + self.states

    def push(self, mel: Tensor) -> None:
        if self.finished:
            raise RuntimeError("push() after finish(): the stream's frames have ended")
        self.mel = torch.cat([self.mel, mel.to(self.mel)], 0)

    def frames_from(self, frame: int) -> Tensor:
        """The frames held from global frame ``frame`` on."""
        return self.mel[max(frame - self.window * WINDOW_FRAMES - self.base, 0) :]

    def take(self, upto: int) -> None:
        """Drop the encoded states before global state ``upto`` from ``out``, and the frames before global
        frame ``2 * upto`` that the next states do not read either."""
        if self.out is not None and upto > self.out_start:
            self.out = self.out[upto - self.out_start :]
            self.out_start = upto
        drop = min(2 * upto - self.window * WINDOW_FRAMES, 2 * self.states - 2) - self.base
        if drop > 0:
            self.mel, self.base = self.mel[drop:], self.base + drop


def new_stream(front: WhisperFrontEnd) -> WhisperStream:
    weight = front.conv1.weight
    return WhisperStream(mel=weight.new_zeros(0, front.config.n_mels))


def total_states(s: WhisperStream) -> int | None:
    """All the global states a finished stream has (None while frames may still come)."""
    if not s.finished:
        return None
    return s.window * WINDOW_STATES + min((s.present + 1) // 2, WINDOW_STATES)


def _block_end(local: int, block: int) -> int:
    """The end of the block that holds window-local state ``local - 1``."""
    return min(-(-local // block) * block, WINDOW_STATES)


def frames_short(front: WhisperFrontEnd, s: WhisperStream, want: int, whole_blocks: bool = True) -> int:
    """Log-mel frames ``s`` needs beyond those it holds before :func:`step` can encode its states up to
    global state ``want`` (0: it can now, or it is finished); without ``whole_blocks``, before the frames
    under those states have arrived (what :func:`peek` reads)."""
    if s.finished or want <= s.encoded:
        return 0
    window = min(want - s.window * WINDOW_STATES, WINDOW_STATES)
    end = _block_end(window, front.config.block) if whole_blocks else window
    need = min(2 * end + 1, WINDOW_FRAMES)  # state j reads frames 2j-2 .. 2j+2; 3000 is the next window's
    return max(need - s.present, 0)


def _plan(front: WhisperFrontEnd, s: WhisperStream, want: int) -> int:
    """How many states of its current window ``s`` encodes towards global state ``want`` now: whole blocks
    (a finished stream's or a window's last may be short), as far as its frames reach."""
    block = front.config.block
    target = min(want - s.window * WINDOW_STATES, WINDOW_STATES)
    if target <= s.states:
        return 0
    if s.finished:
        ready = min((s.present + 1) // 2, WINDOW_STATES)
    elif s.present >= WINDOW_FRAMES:
        ready = WINDOW_STATES
    else:
        ready = (max(s.present - 1, 0) // 2) // block * block  # whole blocks whose frames have all arrived
    return max(min(_block_end(target, block), ready) - s.states, 0)


@torch.no_grad()
def step(front: WhisperFrontEnd, streams: list[WhisperStream], want: list[int]) -> None:
    """Encode blocks of each of ``streams`` until it has ``want`` global states (as far as its frames
    reach), all streams in one batched call per 30 s window crossed; the new states go to ``out``."""
    while True:
        rows = [(s, n) for s, w in zip(streams, want, strict=True) if (n := _plan(front, s, w)) > 0]
        if not rows:
            return
        _encode(front.cast(), rows)
        for s, _ in rows:
            if s.states == WINDOW_STATES:  # the window is full: the next starts afresh
                s.window, s.states, s.keys, s.values = s.window + 1, 0, [], []
                s.base -= WINDOW_FRAMES  # the frames not taken yet stay, before the new window's first


@torch.no_grad()
def peek(front: WhisperFrontEnd, streams: list[WhisperStream], count: int) -> list[Tensor]:
    """Each stream's next ``count`` states (fewer at the end of a finished stream) as the frames under them
    give them: they read each other and the states encoded before them, not the rest of their block
    (offline: :func:`asr.whisper_encoder.early_mask`). Nothing is kept; :func:`step` encodes them again
    with their whole block. Each stream's encoded states must end on a block boundary, ``count`` states
    before its window's end, with their frames arrived (:func:`frames_short` without ``whole_blocks``)."""
    rows = []
    for s in streams:
        left = count if not s.finished else min(count, min((s.present + 1) // 2, WINDOW_STATES) - s.states)
        if s.states % front.config.block or s.states + count > WINDOW_STATES:
            raise ValueError(f"cannot peek {count} states after state {s.states} of a window")
        rows.append((s, max(left, 0)))
    out = [front.ln_post.weight.new_zeros(0, front.config.width) for _ in streams]
    live = [j for j, (_, m) in enumerate(rows) if m > 0]
    if live:
        encoded = _encode(front.cast(), [rows[j] for j in live], keep=False)
        for j, y in zip(live, encoded, strict=True):
            out[j] = y
    return out


def _conv(front: WhisperFrontEnd, rows: list[tuple[WhisperStream, int]], n: int) -> Tensor:
    """The convolutions over each row's next states: ``(N, n, width)``. New states ``a .. a+k-1`` read
    frames ``2a-2 .. 2a+2k``; frames outside the window's received ones are silence, and so are the first
    convolution's outputs there, as in :meth:`WhisperFrontEnd._window`."""
    span = 2 * n + 3
    mels, limits = [], []
    for s, _ in rows:
        first = 2 * s.states - 2  # window-local
        lo = first - s.base
        x = s.mel[max(lo, 0) : lo + span]
        x = F.pad(x, (0, 0, max(-lo, 0), span - x.size(0) - max(-lo, 0)))
        mels.append(x)
        limits.append((first, min(s.present, WINDOW_FRAMES)))
    mel = torch.stack(mels).transpose(1, 2).to(front.conv1.weight.dtype)  # (N, n_mels, span)
    starts = torch.tensor([f for f, _ in limits], device=mel.device)[:, None]
    ends = torch.tensor([e for _, e in limits], device=mel.device)[:, None]
    at = starts + torch.arange(span, device=mel.device)[None]  # window-local frame of each column
    mel = mel.masked_fill(((at < 0) | (at >= ends))[:, None], 0.0)
    y = F.gelu(F.conv1d(mel, front.conv1.weight, front.conv1.bias))  # outputs at frames first+1 ..
    at = at[:, 1:-1]
    y = y.masked_fill(((at < 0) | (at >= ends))[:, None], 0.0)
    return F.gelu(F.conv1d(y, front.conv2.weight, front.conv2.bias, stride=2)).transpose(1, 2)


def _held(buffers: list[Tensor], layer: int, new: Tensor, held: int) -> Tensor:
    """Layer ``layer``'s keys (or values) of a stream, ``held`` of them before ``new (heads, m, head width)``
    written after them: a view of its buffer, which doubles when full (so that a state is copied a bounded
    number of times, not at every step)."""
    need = held + new.size(1)
    if len(buffers) <= layer:
        buffers.append(new.new_empty(new.size(0), max(need, 64), new.size(2)))
    elif buffers[layer].size(1) < need:
        grown = new.new_empty(new.size(0), max(need, 2 * buffers[layer].size(1)), new.size(2))
        grown[:, :held] = buffers[layer][:, :held]
        buffers[layer] = grown
    buffers[layer][:, held:need] = new
    return buffers[layer][:, :need]


def _encode(front: WhisperFrontEnd, rows: list[tuple[WhisperStream, int]], keep: bool = True) -> list[Tensor]:
    """Encode the next ``k`` states of each row ``(stream, k)``: the projections and MLPs of all rows in one
    batch, the attention row by row over its own keys (no padding to the longest history). ``keep``: they
    join the stream (its keys, values and ``out``); else they are only returned (their keys are written past
    the stream's states, where its next encoding writes its own)."""
    n = max(k for _, k in rows)
    x = _conv(front, rows, n)
    pos = [front.positions[s.states : s.states + n] for s, _ in rows]  # short at a window's end: padding
    x = x + torch.stack([F.pad(p, (0, 0, 0, n - p.size(0))) for p in pos]).to(x.dtype)
    block = front.config.block
    causal = block_mask(n, block, x.device)
    for i, layer in enumerate(front.blocks):
        assert isinstance(layer, AttentionBlock)
        q, k, v = layer.project(x)
        attended = []
        for j, (s, m) in enumerate(rows):
            keys = _held(s.keys, i, k[j, :, :m], s.states)
            values = _held(s.values, i, v[j, :, :m], s.states)
            # a row's new states start on a block boundary: within one block they read every key
            mask = None
            if m > block:
                past = causal.new_ones(m, s.states)
                mask = torch.cat([past, causal[:m, :m]], 1)
            a = F.scaled_dot_product_attention(q[j : j + 1, :, :m], keys[None], values[None], attn_mask=mask)
            attended.append(F.pad(a[0], (0, 0, 0, n - m)))
        x = layer.finish(x, torch.stack(attended))
    y = front.ln_post(x).float()
    if not keep:
        return [y[j, :m] for j, (_, m) in enumerate(rows)]
    for j, (s, m) in enumerate(rows):
        if s.out is None or s.out.size(0) == 0:
            s.out, s.out_start = y[j, :m], s.encoded
        else:
            s.out = torch.cat([s.out, y[j, :m]], 0)
        s.states += m
    return []
