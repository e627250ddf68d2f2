"""Latency-controlled BLSTM (LC-BLSTM): the pyramidal encoder, listening as the audio arrives.

Zhang et al. 2016 (arXiv:1510.08983), applied to every layer of :class:`~asr.encoder.PyramidalBLSTMEncoder`
with the same weights: time is cut into *chunks* of ``chunk_frames`` encoder frames, and each chunk is
encoded from a *window*, the chunk plus ``lookahead_frames`` frames of the future:

* the forward direction runs over the chunk from the state it had at the end of the previous chunk, and
  carries its state at the chunk's end to the next one; over the look-ahead it runs on from there, but that
  state is thrown away;
* the backward direction runs over the whole window from a zero state;
* each layer's window is the previous layer's output over the same window (pyramid layers halve it).

So every frame is encoded exactly once, as part of one chunk, from audio that ends ``lookahead_frames``
after the chunk: the latency is the chunk plus the look-ahead, whatever the utterance's length. Where
one window covers the whole utterance the output is the offline encoder's.

:class:`LCBLSTMEncoder` encodes whole batches this way (training and offline evaluation of a streaming
model); :meth:`LCBLSTMEncoder.step` encodes the next chunk of many streams in one call, each stream's
position and carried state in its own :class:`EncoderStream`. The two give the same frames
(``tests/test_lc_blstm.py``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from asr import precision, whisper_stream
from asr.encoder import EncoderConfig, PyramidalBLSTMEncoder
from asr.whisper_encoder import WhisperFrontEnd
from asr.whisper_stream import WhisperStream


def _run(
    lstm: nn.LSTM, x: Tensor, state: tuple[Tensor, Tensor] | None, reverse: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """One direction of a one-layer bidirectional ``lstm`` over ``x (N, T, D)``: ``(out, h, c)``."""
    sfx = "_reverse" if reverse else ""
    params = [getattr(lstm, f"{n}_l0{sfx}") for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    if state is None:
        zeros = x.new_zeros(1, x.size(0), lstm.hidden_size)
        state = (zeros, zeros)
    dtype = x.dtype
    if not lstm.training and not torch.is_grad_enabled():  # inference: the products in its precision
        low = precision.recurrent_dtype(x.device)
        if low != dtype:
            params = list(precision.cast_weights(lstm, f"l0{sfx}", params, low))
            x, state = x.to(low), (state[0].to(low), state[1].to(low))
    # torch.lstm is the ATen op behind nn.LSTM (one layer, one direction, batch first, no dropout).
    out, h, c = torch.lstm(x, state, params, True, 1, 0.0, lstm.training, False, True)
    return out.to(dtype), h.to(dtype), c.to(dtype)


def _flip_valid(x: Tensor, lengths: Tensor) -> Tensor:
    """Reverse each row of ``x (N, T, D)`` within its first ``lengths[n]`` steps; padding stays put."""
    if bool((lengths == x.size(1)).all()):  # no padding (a stream's chunk steps, mostly): a plain flip
        return x.flip(1)
    t = torch.arange(x.size(1), device=x.device)[None, :]
    idx = torch.where(t < lengths[:, None], lengths[:, None] - 1 - t, t)
    return x.gather(1, idx[:, :, None].expand_as(x))


def lc_layer(
    lstm: nn.LSTM,
    windows: Tensor,
    valid: Tensor,
    chunk: int,
    state: tuple[Tensor, Tensor] | None,
    ahead: bool = True,
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """One LC-BLSTM layer over ``windows (B, K, W, D)``: K consecutive windows of each of B sequences,
    each ``chunk`` frames plus ``W - chunk`` look-ahead frames, ``valid (B, K)`` of them real.

    ``state``: the forward direction's ``(h, c)``, each ``(1, B, H)``, before window 0 (None: zeros).
    Returns ``(B, K, W, 2H)`` and the forward state after the last chunk; without ``ahead`` only the chunks'
    frames, ``(B, K, chunk, 2H)`` (the last layer: nothing reads its look-ahead, so the forward direction
    does not run over it)."""
    b, k, w, d = windows.shape
    fwd_chunks, heads = [], []
    for i in range(k):  # the forward direction carries its state from chunk to chunk
        out, h, c = _run(lstm, windows[:, i, :chunk], state, reverse=False)
        fwd_chunks.append(out)
        heads.append((h, c))
        state = (h, c)
    fwd = torch.stack(fwd_chunks, 1)  # (B, K, chunk, H)
    if w > chunk and ahead:  # the look-ahead: on from each chunk's end state, all windows in one call
        h0 = torch.cat([h for h, _ in heads], 1)  # (1, K * B, H), window-major like ``ahead``
        c0 = torch.cat([c for _, c in heads], 1)
        la_in = windows[:, :, chunk:].transpose(0, 1).reshape(k * b, w - chunk, d)
        la, _, _ = _run(lstm, la_in, (h0, c0), reverse=False)
        fwd = torch.cat([fwd, la.view(k, b, w - chunk, -1).transpose(0, 1)], 2)
    flat = windows.reshape(b * k, w, d)
    lengths = valid.reshape(b * k)
    bwd, _, _ = _run(lstm, _flip_valid(flat, lengths), None, reverse=True)
    bwd = _flip_valid(bwd, lengths).view(b, k, w, -1)[:, :, : fwd.size(2)]
    assert state is not None
    return torch.cat([fwd, bwd], -1), state


def _bucket(n: int) -> int:
    """Rows a chunk step of ``n`` streams runs: the next power of two. On a CPU the LSTMs are oneDNN
    primitives compiled per input shape; with a few shapes of batch they stay in its cache (a server of
    chunk-streaming models keeps 128, ``server.app.primitive_cache_capacity``) instead of being compiled
    again at every step, which costs more than a small step's arithmetic."""
    return 1 << max(n - 1, 0).bit_length()


def _pyramid(windows: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """``(B, K, W, C) -> (B, K, W/2, 2C)`` within each window (W is even), valid frames halved."""
    b, k, w, c = windows.shape
    return windows.reshape(b, k, w // 2, 2 * c), torch.div(valid, 2, rounding_mode="floor")


@dataclass
class EncoderStream:
    """One stream's place in :meth:`LCBLSTMEncoder.step`.

    ``frames``: normalised feature frames from feature index ``consumed`` on (the encoded ones the
    convolutional front end still needs as left context, then the new ones); ``state``: each layer's
    forward ``(h, c)``; ``emitted``: encoder frames produced so far; ``finished``: no more features come;
    ``front``: with a Whisper front end, its stream (which then holds the features instead of ``frames``)."""

    frames: Tensor
    consumed: int = 0
    state: list[tuple[Tensor, Tensor]] | None = None
    emitted: int = 0
    finished: bool = False
    front: WhisperStream | None = None

    def push(self, feats: Tensor) -> None:
        """Append normalised feature frames ``(T, n_mels)``."""
        if self.finished:
            raise RuntimeError("push() after finish(): the stream's features have ended")
        if self.front is not None:
            self.front.push(feats)
        else:
            self.frames = torch.cat([self.frames, feats.to(self.frames)], 0)

    def finish(self) -> None:
        self.finished = True
        if self.front is not None:
            self.front.finished = True

    def features_from(self, frame: int) -> Tensor:
        """The feature frames held from feature index ``frame`` on (those not encoded yet among them)."""
        if self.front is not None:
            return self.front.frames_from(frame)
        return self.frames[max(frame - self.consumed, 0) :]


class LCBLSTMEncoder(PyramidalBLSTMEncoder):
    """The pyramidal encoder with latency control; same parameters, so offline weights load as they are."""

    def __init__(self, config: EncoderConfig) -> None:
        if config.chunk_frames <= 0:
            raise ValueError("LCBLSTMEncoder needs encoder.chunk_frames > 0; 0 means the offline encoder")
        super().__init__(config)
        self.scale = 2**config.pyramid_layers  # layer-0 frames per encoder frame
        self.front_scale = 2 if self.front is not None else 1  # feature frames per layer-0 frame

    # -- whole batches -------------------------------------------------------------------------------------
    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        out_lengths = self.config.output_lengths(lengths)
        if bool((out_lengths <= 0).any()):
            return super().forward(x, lengths)  # raises the offline encoder's error
        out = self._all_windows(x, lengths, ahead=False)
        return self._chunks(out, out_lengths), out_lengths

    def forward_provisional(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`forward`, and each frame as a stream's partials read it before it is encoded for good:
        ``(enc, provisional, lengths)``. A frame of chunk ``k >= 1`` that the look-ahead of window ``k - 1``
        covers comes from there (what :meth:`step_ahead` returns, with less future than its final
        encoding); the others, the first chunk's among them, are their final encoding. A loss on
        ``provisional`` teaches the encoder to read the look-ahead well, so that words show in partials a
        look-ahead sooner."""
        out_lengths = self.config.output_lengths(lengths)
        if bool((out_lengths <= 0).any()):
            super().forward(x, lengths)  # raises the offline encoder's error
        out = self._all_windows(x, lengths, ahead=True)
        chunk = self.config.chunk_frames
        m = min(chunk, self.config.lookahead_frames)
        read_ahead = torch.cat([out[:, :-1, chunk : chunk + m], out[:, 1:, m:chunk]], 2)  # chunks 1..K-1
        early = torch.cat([out[:, :1, :chunk], read_ahead], 1)
        return self._chunks(out, out_lengths), self._chunks(early, out_lengths), out_lengths

    def _all_windows(self, x: Tensor, lengths: Tensor, ahead: bool) -> Tensor:
        """Every window of the whole batch, ``(B, K, chunk + look-ahead, D)`` with ``ahead``, else without
        the last layer's look-ahead ``(B, K, chunk, D)``."""
        early = None
        if isinstance(self.front, WhisperFrontEnd) and self.config.early_lookahead:
            x, early, lengths = self.front.forward_early(x, lengths, self.lookahead0)
        elif self.front is not None:
            x, lengths = self.front(x, lengths)
        c0 = self.config.chunk_frames * self.scale
        w0 = c0 + self.config.lookahead_frames * self.scale
        k = -(-x.size(1) // c0)
        pad = (0, 0, 0, k * c0 + w0 - c0 - x.size(1))
        windows = nn.functional.pad(x, pad).unfold(1, w0, c0).transpose(2, 3)  # (B, K, W, D)
        if early is not None:  # the look-ahead's frames as a stream reads them (see _early_states)
            t = torch.arange(x.size(1), device=x.device)
            read = torch.where(self._early_states(t)[None, :, None], early, x)
            read_windows = nn.functional.pad(read, pad).unfold(1, w0, c0).transpose(2, 3)
            windows = torch.cat([windows[:, :, :c0], read_windows[:, :, c0:]], 2)
        starts = torch.arange(k, device=lengths.device) * c0
        valid = (lengths[:, None] - starts[None, :]).clamp(0, w0)
        return self._windows(windows, valid, None, ahead=ahead)[0]

    @property
    def lookahead0(self) -> int:
        """Layer-0 frames of look-ahead."""
        return self.config.lookahead_frames * self.scale

    def _early(self, chunk_end: int) -> bool:
        """Whether the look-ahead after layer-0 frame ``chunk_end`` is encoded early: with
        ``early_lookahead``, where it lies in the first 30 s window of Whisper states (chunks are its
        attention blocks there; past it, they no longer line up, and the look-ahead waits for its block)."""
        return self.config.early_lookahead and chunk_end + self.lookahead0 <= whisper_stream.WINDOW_STATES

    def _early_states(self, t: Tensor) -> Tensor:
        """Which layer-0 frames ``t`` a look-ahead reads early: the first ``lookahead0`` of each block whose
        look-ahead is early (:meth:`_early`)."""
        offset = t % (self.config.chunk_frames * self.scale)
        return (offset < self.lookahead0) & (t - offset + self.lookahead0 <= whisper_stream.WINDOW_STATES)

    def _chunks(self, out: Tensor, out_lengths: Tensor) -> Tensor:
        """The chunks' frames of ``out (B, K, >= chunk, D)`` end to end, ``(B, max(out_lengths), D)``."""
        chunk = self.config.chunk_frames
        b, k = out.shape[:2]
        return out[:, :, :chunk].reshape(b, k * chunk, -1)[:, : int(out_lengths.max())]

    def _windows(
        self,
        windows: Tensor,
        valid: Tensor,
        states: list[tuple[Tensor, Tensor]] | None,
        ahead: bool = False,
    ) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        """All layers over ``windows``; the last layer's look-ahead frames only with ``ahead``."""
        chunk = self.config.chunk_frames * self.scale
        new_states = []
        for i, lstm in enumerate(self.layers):
            if 1 <= i <= self.config.pyramid_layers:
                windows, valid = _pyramid(windows, valid)
                chunk //= 2
            assert isinstance(lstm, nn.LSTM)
            last = i == len(self.layers) - 1
            state0 = None if states is None else states[i]
            windows, state = lc_layer(lstm, windows, valid, chunk, state0, ahead=ahead or not last)
            new_states.append(state)
            windows = self.dropout(windows)
        return windows, new_states

    # -- streams -------------------------------------------------------------------------------------------
    def new_stream(self) -> EncoderStream:
        front = whisper_stream.new_stream(self.front) if isinstance(self.front, WhisperFrontEnd) else None
        return EncoderStream(frames=next(self.parameters()).new_zeros(0, self.config.input_dim), front=front)

    def ready(self, stream: EncoderStream) -> bool:
        """Whether :meth:`step` would encode a chunk of ``stream`` now."""
        if stream.front is not None and stream.finished:
            total = whisper_stream.total_states(stream.front)
            assert total is not None
            return stream.emitted < total // self.scale
        if stream.finished:
            return stream.emitted < int(
                self.config.output_lengths(torch.tensor(stream.consumed + stream.frames.size(0)))
            )
        return self.frames_short(stream) == 0

    def frames_short(self, stream: EncoderStream) -> int:
        """Feature frames ``stream`` needs beyond those it holds before :meth:`ready` (0: ready now;
        ``sys.maxsize`` for a finished stream that is not ready: no more chunks come)."""
        if stream.finished:
            return 0 if self.ready(stream) else sys.maxsize
        if stream.front is not None:
            assert isinstance(self.front, WhisperFrontEnd)
            end = stream.emitted * self.scale + self.window0
            chunk_end = end - self.lookahead0
            if not self._early(chunk_end):
                return whisper_stream.frames_short(self.front, stream.front, end)
            return max(  # the chunk's block whole, the look-ahead's frames only
                whisper_stream.frames_short(self.front, stream.front, chunk_end),
                whisper_stream.frames_short(self.front, stream.front, end, whole_blocks=False),
            )
        start = stream.emitted * self.scale - stream.consumed // self.front_scale
        end = start + self.window0  # one past the window's last layer-0 frame
        # with the front end, layer-0 frame j is exact once the buffer holds features to 2j+3 (_layer0_span)
        need = 2 * end + 2 if self.front is not None else end
        return max(need - stream.frames.size(0), 0)

    @property
    def window0(self) -> int:
        """Layer-0 frames in a window: the chunk and its look-ahead."""
        return (self.config.chunk_frames + self.config.lookahead_frames) * self.scale

    def _layer0_span(self, s: EncoderStream) -> tuple[int, int]:
        """Where the stream's next window starts among the layer-0 frames its buffer yields, and how many of
        those frames are exact (the same as the whole utterance's front end would give)."""
        n = s.frames.size(0)
        start = s.emitted * self.scale - s.consumed // self.front_scale
        if self.front is None:
            return start, n
        if s.finished:
            return start, (n - 1) // 2 + 1 if n else 0
        # layer-0 frame j needs features 2j-3 .. 2j+3: only those whose reach ends inside the buffer are exact
        return start, max((n - 2) // 2, 0)

    @torch.no_grad()
    def step(self, streams: list[EncoderStream]) -> list[Tensor]:
        """Encode the next chunk of each of ``streams`` (all :meth:`ready`) in one batched call.

        Returns each stream's new encoder frames ``(n, D)``: ``chunk_frames`` of them, fewer at the end of a
        finished stream; its state, position and buffer move on."""
        return self._step(streams, ahead=False)[0]

    @torch.no_grad()
    def step_ahead(self, streams: list[EncoderStream]) -> tuple[list[Tensor], list[Tensor]]:
        """:meth:`step`, and also each stream's *provisional* frames ``(m, D)``: the top layer's output over
        the look-ahead (up to ``lookahead_frames``), which the next chunk will encode again with more
        future. They are what a recognizer can read ``lookahead_frames`` sooner (partials, endpoints); the
        last layer's forward direction runs on over the look-ahead for them, nothing else is extra."""
        return self._step(streams, ahead=True)

    def _step(self, streams: list[EncoderStream], ahead: bool) -> tuple[list[Tensor], list[Tensor]]:
        batch, valid, sizes = self._front_windows(streams)
        states = self._stacked_states(streams, batch)
        rows = _bucket(len(streams))
        if rows > len(streams):  # idle rows, so that the LSTMs see few shapes (see _bucket)
            extra = rows - len(streams)
            batch = nn.functional.pad(batch, (0, 0, 0, 0, 0, extra))
            valid = valid + [self.window0] * extra
            states = [
                (nn.functional.pad(h, (0, 0, 0, extra)), nn.functional.pad(c, (0, 0, 0, extra)))
                for h, c in states
            ]
        out, new_states = self._windows(
            batch[:, None], torch.tensor(valid, device=batch.device)[:, None], states, ahead=ahead
        )
        results, provisional = [], []
        for j, s in enumerate(streams):
            s.state = [(h[:, j : j + 1], c[:, j : j + 1]) for h, c in new_states]
            s.emitted += sizes[j]
            results.append(out[j, 0, : sizes[j]])
            provisional.append(out[j, 0, sizes[j] : valid[j] // self.scale])
            self._drop_encoded(s)
        return results, provisional

    def _stacked_states(self, streams: list[EncoderStream], like: Tensor) -> list[tuple[Tensor, Tensor]]:
        zeros = like.new_zeros(1, 1, self.config.hidden_size)
        per_stream = [s.state or [(zeros, zeros)] * len(self.layers) for s in streams]
        return [
            (torch.cat([p[i][0] for p in per_stream], 1), torch.cat([p[i][1] for p in per_stream], 1))
            for i in range(len(self.layers))
        ]

    def _front_windows(self, streams: list[EncoderStream]) -> tuple[Tensor, list[int], list[int]]:
        """The streams' next windows of layer-0 frames ``(N, W0, D)``, how many frames of each are real, and
        how many encoder frames each yields. The front end runs once for all of them, each over the features
        its window reaches (they are zero-padded to the longest, and it masks the padding): every frame is
        the one the stream's own buffer alone would give."""
        w0 = self.window0
        if isinstance(self.front, WhisperFrontEnd):
            return self._stack_windows(self._whisper_windows(streams))
        spans = [self._layer0_span(s) for s in streams]
        if self.front is None:
            layer0 = [s.frames[start:exact] for s, (start, exact) in zip(streams, spans, strict=True)]
        else:
            # layer-0 frames start .. start+w0-1 reach features up to 2(start+w0)+1 (see _layer0_span)
            feats = [s.frames[: 2 * (start + w0) + 2] for s, (start, _) in zip(streams, spans, strict=True)]
            lengths = torch.tensor([f.size(0) for f in feats], device=feats[0].device)
            y, _ = self.front(nn.utils.rnn.pad_sequence(feats, batch_first=True), lengths)
            layer0 = [y[j, start : min(exact, start + w0)] for j, (start, exact) in enumerate(spans)]
        return self._stack_windows(layer0)

    def _whisper_windows(self, streams: list[EncoderStream]) -> list[Tensor]:
        """The Whisper states of each stream's next window (fewer at the end of a finished stream): its
        chunk's block encoded for good, and its look-ahead's, or with ``early_lookahead`` their first
        states as their own audio gives them (:func:`asr.whisper_stream.peek`)."""
        assert isinstance(self.front, WhisperFrontEnd)
        fronts = [s.front for s in streams if s.front is not None]
        c0 = self.config.chunk_frames * self.scale
        ends = [s.emitted * self.scale + c0 for s in streams]
        # the look-ahead's block too where it is due, or (lookahead_block_when_arrived) where its audio is all
        # there: step encodes whole blocks only as far as the frames reach
        whole = self.config.lookahead_block_when_arrived
        want = [a if self._early(a) and not whole else a + self.lookahead0 for a in ends]
        whisper_stream.step(self.front, fronts, want)
        # early where the chunk's block is encoded, its look-ahead's not (a finished stream may end first)
        early = [self._early(a) and f.encoded == a for f, a in zip(fronts, ends, strict=True)]
        ahead = [f for f, e in zip(fronts, early, strict=True) if e]
        peeked = iter(whisper_stream.peek(self.front, ahead, self.lookahead0) if ahead else [])
        windows = []
        for f, a, e in zip(fronts, ends, early, strict=True):
            assert f.out is not None
            start = a - c0 - f.out_start
            window = f.out[start : start + self.window0]
            windows.append(torch.cat([window[:c0], next(peeked)], 0) if e else window)
        return windows

    def _stack_windows(self, layer0: list[Tensor]) -> tuple[Tensor, list[int], list[int]]:
        w0 = self.window0
        valid = [min(w0, x.size(0)) for x in layer0]
        pads = zip(layer0, valid, strict=True)
        windows = torch.stack([nn.functional.pad(x[:w0], (0, 0, 0, w0 - v)) for x, v in pads])
        sizes = [min(self.config.chunk_frames, v // self.scale) for v in valid]
        return windows, valid, sizes

    def _drop_encoded(self, s: EncoderStream) -> None:
        """Drop the features no later window needs (the front end keeps 4 frames of left context, from an
        even feature index, so that its output is exact from the next window's first frame on)."""
        if s.front is not None:
            s.front.take(s.emitted * self.scale)
            return
        first = s.emitted * self.scale * self.front_scale
        keep_from = max(first - 4, 0) if self.front is not None else first
        drop = max(keep_from - s.consumed, 0)
        s.frames = s.frames[drop:]
        s.consumed += drop
