"""The latency-controlled encoder: chunked batches, streams fed in arbitrary pieces, and the offline encoder
agree where they must, and differ where the look-ahead is all the future a frame may see."""

from __future__ import annotations

import dataclasses
import sys

import pytest
import torch

from asr.encoder import EncoderConfig, PyramidalBLSTMEncoder
from asr.lc_blstm import EncoderStream, LCBLSTMEncoder


def _config(**kw: int) -> EncoderConfig:
    base = dict(input_dim=16, conv_channels=8, hidden_size=8, num_layers=3, pyramid_layers=1, dropout=0.0)
    return EncoderConfig(**{**base, "chunk_frames": 3, "lookahead_frames": 2, **kw})  # type: ignore[arg-type]


def _pair(cfg: EncoderConfig) -> tuple[LCBLSTMEncoder, PyramidalBLSTMEncoder]:
    torch.manual_seed(0)
    lc = LCBLSTMEncoder(cfg).eval()
    offline = PyramidalBLSTMEncoder(dataclasses.replace(cfg, chunk_frames=0, lookahead_frames=0)).eval()
    offline.load_state_dict(lc.state_dict())
    return lc, offline


def _streamed(lc: LCBLSTMEncoder, feats: torch.Tensor, seed: int) -> torch.Tensor:
    """``feats (T, F)`` pushed in random pieces, encoded whenever a chunk is ready."""
    gen = torch.Generator().manual_seed(seed)
    s, outs, t = lc.new_stream(), [], 0
    while t < feats.size(0):
        n = int(torch.randint(1, 20, (), generator=gen))
        s.push(feats[t : t + n])
        t += n
        while lc.ready(s):
            outs += lc.step([s])
    s.finish()
    while lc.ready(s):
        outs += lc.step([s])
    return torch.cat(outs)


X = torch.randn(3, 137, 16, generator=torch.Generator().manual_seed(1))
LENGTHS = torch.tensor([137, 100, 57])


@pytest.mark.parametrize("conv, pyramid", [(8, 1), (8, 2), (0, 1), (0, 0)])
def test_streamed_pieces_equal_chunked_batch(conv: int, pyramid: int) -> None:
    lc, _ = _pair(_config(conv_channels=conv, pyramid_layers=pyramid))
    enc, lengths = lc(X, LENGTHS)
    for b in range(3):
        streamed = _streamed(lc, X[b, : LENGTHS[b]], seed=b)
        assert streamed.shape[0] == lengths[b]
        torch.testing.assert_close(streamed, enc[b, : lengths[b]], atol=1e-5, rtol=1e-5)


def test_one_window_over_the_whole_utterance_is_the_offline_encoder() -> None:
    lc, offline = _pair(_config(chunk_frames=100, lookahead_frames=0))
    enc, lengths = lc(X, LENGTHS)
    ref, ref_lengths = offline(X, LENGTHS)
    assert lengths.tolist() == ref_lengths.tolist()
    for b in range(3):
        torch.testing.assert_close(enc[b, : lengths[b]], ref[b, : lengths[b]], atol=1e-5, rtol=1e-5)


def test_a_chunk_sees_only_its_look_ahead_of_the_future() -> None:
    lc, offline = _pair(_config())
    enc, _ = lc(X[:1], LENGTHS[:1])
    ref, _ = offline(X[:1], LENGTHS[:1])
    assert not torch.allclose(enc, ref, atol=1e-3)  # truncated backward context changes the frames
    # changing the audio beyond chunk 0's window leaves chunk 0 alone, and changes later chunks
    later = X[:1].clone()
    later[:, 40:] += 1.0  # past window 0: 3 + 2 encoder frames = 20 feature frames, + 3
    changed, _ = lc(later, LENGTHS[:1])
    torch.testing.assert_close(changed[:, :3], enc[:, :3])
    assert not torch.allclose(changed[:, 6:], enc[:, 6:], atol=1e-3)


def test_forward_state_is_carried_across_chunks() -> None:
    lc, _ = _pair(_config())
    s = lc.new_stream()
    s.push(X[0])
    first = lc.step([s])[0]
    second = lc.step([s])[0]
    fresh = lc.new_stream()  # the same audio as chunk 1, without chunk 0's state
    fresh.push(X[0])
    lc.step([fresh])
    fresh.state = None
    assert not torch.allclose(lc.step([fresh])[0], second, atol=1e-4)
    assert first.shape == second.shape == (3, 16)


def test_step_ahead_adds_the_look_ahead_frames_and_keeps_the_chunks() -> None:
    """The provisional frames are the window's look-ahead seen as if it were part of the chunk: window 0 of
    chunk 3 + look-ahead 2 is a 5-frame chunk without look-ahead. The chunks (and so the carried state) are
    the ones ``step`` gives."""
    lc, _ = _pair(_config())
    whole = LCBLSTMEncoder(_config(chunk_frames=5, lookahead_frames=0)).eval()
    whole.load_state_dict(lc.state_dict())
    expected, _ = whole(X[:1], LENGTHS[:1])
    a, b = lc.new_stream(), lc.new_stream()
    a.push(X[0])
    b.push(X[0])
    chunk, provisional = (x[0] for x in lc.step_ahead([a]))
    assert provisional.shape == (2, 16)
    torch.testing.assert_close(torch.cat([chunk, provisional]), expected[0, :5], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(chunk, lc.step([b])[0])
    for _ in range(3):
        (x,), _ = lc.step_ahead([a])
        torch.testing.assert_close(x, lc.step([b])[0])


@pytest.mark.parametrize("chunk, ahead", [(3, 2), (2, 2), (2, 3)])
def test_forward_provisional_is_the_partials_last_read_before_the_final_one(chunk: int, ahead: int) -> None:
    """Frame by frame, the provisional sequence for training is what a stream's ``step_ahead`` read last
    before encoding the frame for good: the previous window's look-ahead where it reaches, else (the first
    chunk, the end of a chunk longer than the look-ahead) the final encoding."""
    lc, _ = _pair(_config(chunk_frames=chunk, lookahead_frames=ahead))
    enc, early, lengths = lc.forward_provisional(X, LENGTHS)
    torch.testing.assert_close(enc, lc(X, LENGTHS)[0])
    assert early.shape == enc.shape
    assert not torch.allclose(early, enc, atol=1e-3)
    for b in range(3):
        s, read = lc.new_stream(), {}
        s.push(X[b, : LENGTHS[b]])
        s.finish()
        while lc.ready(s):
            start = s.emitted
            (frames,), (provisional,) = lc.step_ahead([s])
            for i, frame in enumerate(frames):
                read.setdefault(start + i, frame)  # a frame never read ahead: its final encoding
            for i, frame in enumerate(provisional):
                read[start + frames.size(0) + i] = frame
        n = int(lengths[b])
        torch.testing.assert_close(
            torch.stack([read[i] for i in range(n)]), early[b, :n], atol=1e-5, rtol=1e-5
        )


def test_many_streams_in_one_step_equal_one_at_a_time() -> None:
    lc, _ = _pair(_config())
    alone = [_streamed(lc, X[b, : LENGTHS[b]], seed=0) for b in range(3)]
    streams = [lc.new_stream() for _ in range(3)]
    for b, s in enumerate(streams):
        s.push(X[b, : LENGTHS[b]])
        s.finish()
    outs: list[list[torch.Tensor]] = [[] for _ in streams]
    while any(lc.ready(s) for s in streams):
        ready = [b for b, s in enumerate(streams) if lc.ready(s)]
        for b, out in zip(ready, lc.step([streams[b] for b in ready]), strict=True):
            outs[b].append(out)
    for b in range(3):
        torch.testing.assert_close(torch.cat(outs[b]), alone[b], atol=1e-5, rtol=1e-5)


def test_buffer_stays_bounded_on_a_long_stream() -> None:
    lc, _ = _pair(_config())
    s = lc.new_stream()
    for _ in range(50):
        s.push(torch.randn(20, 16))
        while lc.ready(s):
            lc.step([s])
    assert s.frames.size(0) < lc.window0 * 2 + 8


def test_config_rejects_look_ahead_without_chunks() -> None:
    with pytest.raises(ValueError, match="lookahead_frames needs chunk_frames"):
        EncoderConfig(lookahead_frames=2)
    with pytest.raises(ValueError, match="chunk_frames > 0"):
        LCBLSTMEncoder(EncoderConfig())


def _front_window_alone(lc: LCBLSTMEncoder, s: EncoderStream) -> torch.Tensor:
    """The stream's next window as one stream's whole buffer through the front end gives it."""
    start, exact = lc._layer0_span(s)
    assert lc.front is not None
    y, _ = lc.front(s.frames[None], torch.tensor([s.frames.size(0)]))
    layer0 = y[0, start:exact][: lc.window0]
    return torch.nn.functional.pad(layer0, (0, 0, 0, lc.window0 - layer0.size(0)))


def test_front_end_of_many_streams_in_one_call_equals_each_alone() -> None:
    """Streams at different places, with buffers of different lengths, some finished: the batched front end
    gives each window what the stream's own buffer alone gives (up to rounding: the convolution's kernels
    differ with the input's shape, as they did before between buffers of different lengths)."""
    lc, _ = _pair(_config())
    streams = [lc.new_stream() for _ in range(5)]
    gen = torch.Generator().manual_seed(3)
    for k, s in enumerate(streams):
        s.push(X[k % 3, : 40 + 13 * k])
        for _ in range(k):  # move on k chunks
            lc.step([s])
        s.push(torch.randn(int(torch.randint(0, 9, (), generator=gen)), 16, generator=gen))
        if k % 2:
            s.finish()
    ready = [s for s in streams if lc.ready(s)]
    assert len(ready) >= 4
    windows, valid, _ = lc._front_windows(ready)
    for j, s in enumerate(ready):
        torch.testing.assert_close(windows[j], _front_window_alone(lc, s), atol=1e-6, rtol=1e-6)
        start, exact = lc._layer0_span(s)
        assert valid[j] == min(lc.window0, exact - start)


@pytest.mark.parametrize("conv", [8, 0])
def test_frames_short_is_exactly_what_ready_waits_for(conv: int) -> None:
    lc, _ = _pair(_config(conv_channels=conv))
    s = lc.new_stream()
    feats = X[0]
    t = 0
    while t + lc.frames_short(s) <= feats.size(0):
        short = lc.frames_short(s)
        if short:
            s.push(feats[t : t + short - 1])
            assert not lc.ready(s) and lc.frames_short(s) == 1
            s.push(feats[t + short - 1 : t + short])
            t += short
        assert lc.ready(s) and lc.frames_short(s) == 0
        lc.step([s])
    s.finish()
    while lc.ready(s):
        assert lc.frames_short(s) == 0
        lc.step([s])
    assert lc.frames_short(s) == sys.maxsize
