"""Whisper's encoder as a stream (asr.whisper_stream): block by block it gives the states that the
block-causal encoder gives the whole utterance, 30 s windows and many streams in one call included, and the
chunked listener over it streams as the log-mel one does."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from conftest import silence
from test_online import feed

from asr import Transcriber, load_model, whisper_stream
from asr.audio import SAMPLE_RATE
from asr.decoding import DecodingOptions
from asr.encoder import EncoderConfig
from asr.features import FeatureConfig
from asr.lc_blstm import EncoderStream, LCBLSTMEncoder
from asr.model import ModelConfig
from asr.online import OnlineRecognizer
from asr.streaming import RecognizerConfig, StreamOptions
from asr.transcribe import decode_encoded
from asr.whisper_encoder import (
    CAUSAL_FLOOR,
    WhisperEncoderConfig,
    WhisperFrontEnd,
    WhisperLogMel,
    block_mask,
    early_mask,
)

TINY = WhisperEncoderConfig(n_mels=8, width=16, heads=2, layers=2, block=4)


def _front(config: WhisperEncoderConfig = TINY) -> WhisperFrontEnd:
    torch.manual_seed(0)
    return WhisperFrontEnd(config).eval()


def _streamed(front: WhisperFrontEnd, mel: torch.Tensor, seed: int, piece: int = 20) -> torch.Tensor:
    """``mel (T, n_mels)`` pushed in random pieces; after each, every state the frames allow."""
    gen = torch.Generator().manual_seed(seed)
    s, t = whisper_stream.new_stream(front), 0
    while t < mel.size(0):
        n = int(torch.randint(1, piece, (), generator=gen))
        s.push(mel[t : t + n])
        t += n
        whisper_stream.step(front, [s], [10**9])
    s.finished = True
    whisper_stream.step(front, [s], [10**9])
    assert s.out is not None and s.out_start == 0
    return s.out


def test_block_mask_lets_a_state_read_its_block_and_those_before() -> None:
    m = block_mask(6, 2)
    assert m[0].tolist() == [True, True, False, False, False, False]
    assert m[3].tolist() == [True, True, True, True, False, False]
    copies, early = early_mask(8, 4, 2)  # the states, then copies of each block's first 2
    assert copies.tolist() == [0, 1, 4, 5] and early.shape == (12, 12)
    assert early[4].tolist() == [True] * 8 + [False] * 4  # the states never read a copy
    assert early[10].tolist() == [True] * 4 + [False] * 6 + [True] * 2  # block 1's copy: block 0, copies


@pytest.mark.parametrize("frames", [57, 64, 9])
def test_streamed_blocks_equal_the_whole_utterance(frames: int) -> None:
    front = _front()
    mel = torch.randn(frames, 8, generator=torch.Generator().manual_seed(frames))
    whole, states = front(mel[None], torch.tensor([frames]))
    streamed = _streamed(front, mel, seed=frames)
    assert streamed.size(0) == int(states)
    torch.testing.assert_close(streamed, whole[0], atol=1e-5, rtol=1e-5)


def test_a_block_never_reads_the_future_and_full_attention_does() -> None:
    mel = torch.randn(40, 8, generator=torch.Generator().manual_seed(3))
    later = mel.clone()
    later[24:] += 1.0  # frames of states 12.. (blocks 3..); state 7 reads frames up to 16
    blocked = _front()
    a, _ = blocked(mel[None], torch.tensor([40]))
    b, _ = blocked(later[None], torch.tensor([40]))
    torch.testing.assert_close(a[:, :8], b[:, :8])
    full = _front(dataclasses.replace(TINY, block=0))
    a, _ = full(mel[None], torch.tensor([40]))
    b, _ = full(later[None], torch.tensor([40]))
    assert not torch.allclose(a[:, :8], b[:, :8], atol=1e-4)


def test_streams_past_a_30_s_window_restart_as_the_whole_utterance_does() -> None:
    front = _front(dataclasses.replace(TINY, layers=1, block=8))
    mel = torch.randn(3061, 8, generator=torch.Generator().manual_seed(4))
    whole, states = front(mel[None], torch.tensor([3061]))
    streamed = _streamed(front, mel, seed=4, piece=200)
    assert streamed.size(0) == int(states) == 1531
    torch.testing.assert_close(streamed, whole[0], atol=1e-5, rtol=1e-5)


def test_many_streams_in_one_call_equal_each_alone() -> None:
    front = _front()
    mels = [torch.randn(n, 8, generator=torch.Generator().manual_seed(n)) for n in (30, 51, 17)]
    streams = [whisper_stream.new_stream(front) for _ in mels]
    starts = [0, 14, 28]  # the streams start and reach their ends at different times
    for t in range(0, 90, 7):  # pieces of 7 frames
        for s, mel, start in zip(streams, mels, starts, strict=True):
            if start <= t < start + mel.size(0):
                s.push(mel[t - start : t - start + 7])
            elif t >= start + mel.size(0):
                s.finished = True
        whisper_stream.step(front, streams, [10**9] * 3)
    for s, mel in zip(streams, mels, strict=True):
        whole, _ = front(mel[None], torch.tensor([mel.size(0)]))
        assert s.out is not None
        torch.testing.assert_close(s.out, whole[0], atol=1e-5, rtol=1e-5)


def test_frames_short_is_what_the_next_block_needs() -> None:
    front = _front()
    s = whisper_stream.new_stream(front)
    assert whisper_stream.frames_short(front, s, 1) == 9  # block 0 (states 0-3) reads frames up to 8
    s.push(torch.randn(8, 8))
    whisper_stream.step(front, [s], [1])
    assert s.out is None and whisper_stream.frames_short(front, s, 1) == 1
    s.push(torch.randn(1, 8))
    whisper_stream.step(front, [s], [1])
    assert s.out is not None and s.out.size(0) == 4 and whisper_stream.frames_short(front, s, 4) == 0


def test_causal_log_mel_frames_read_their_own_samples_only() -> None:
    lm = WhisperLogMel(80, causal=True)
    wave = torch.randn(1, 16000, generator=torch.Generator().manual_seed(5)) * 0.1
    whole, n = lm(wave, torch.tensor([16000]))
    assert int(n) == 1 + (16000 - 400) // 160
    head, _ = lm(wave[:, : 400 + 49 * 160], torch.tensor([400 + 49 * 160]))  # frames 0..49
    tail, _ = lm(wave[:, 50 * 160 :], torch.tensor([16000 - 50 * 160]))  # frames 50..
    torch.testing.assert_close(torch.cat([head, tail], 1), whole)
    silence, _ = lm(torch.zeros(1, 4000), torch.tensor([4000]))
    assert torch.allclose(silence, torch.full_like(silence, (CAUSAL_FLOOR + 4) / 4))


def _whisper_listener(
    chunk: int, ahead: int, early: bool = False, when_arrived: bool = False
) -> LCBLSTMEncoder:
    cfg = EncoderConfig(
        input_dim=8, hidden_size=8, num_layers=2, pyramid_layers=1, dropout=0.0, frontend="whisper",
        whisper_width=16, whisper_heads=2, whisper_layers=2 if early else 1, chunk_frames=chunk,
        lookahead_frames=ahead, early_lookahead=early, lookahead_block_when_arrived=when_arrived,
    )  # fmt: skip
    torch.manual_seed(0)
    return LCBLSTMEncoder(cfg).eval()


@pytest.mark.parametrize(
    "chunk, ahead, early, frames",
    # past 30 s (3000 frames), blocks of 8 states no longer line up with the chunks: the look-ahead of
    # (4, 1) is early up to the window's end, that of (4, 3) stops before the window's short last block
    [(2, 4, False, 93), (3, 2, False, 93), (3, 2, True, 93), (4, 1, True, 3100), (4, 3, True, 3100)],
)
def test_chunked_listener_over_whisper_streams_as_its_batch_encoding(
    chunk: int, ahead: int, early: bool, frames: int
) -> None:
    lc = _whisper_listener(chunk, ahead, early)
    assert isinstance(lc.front, WhisperFrontEnd) and lc.front.config.block == 2 * chunk
    x = torch.randn(2, frames, 8, generator=torch.Generator().manual_seed(6))
    lengths = torch.tensor([frames, 2 * frames // 3])
    enc, out_lengths = lc(x, lengths)
    for b in range(2):
        gen = torch.Generator().manual_seed(b)
        s, outs, t = lc.new_stream(), [], 0
        while t < int(lengths[b]):
            n = int(torch.randint(1, 15 if frames < 1000 else 200, (), generator=gen))
            s.push(x[b, t : min(t + n, int(lengths[b]))])
            t += n
            outs += _ready_chunks(lc, s)
        s.finish()
        streamed = torch.cat(outs + _ready_chunks(lc, s))
        assert streamed.size(0) == int(out_lengths[b])
        torch.testing.assert_close(streamed, enc[b, : out_lengths[b]], atol=1e-5, rtol=1e-5)
        assert s.front is not None and s.front.mel.size(0) <= 2 * lc.window0 + 8  # frames do not pile up


def test_an_early_look_ahead_reads_its_own_audio_only_and_waits_for_no_more() -> None:
    """Chunks of 4 frames (blocks of 8 states), look-ahead 1 frame (2 states): the first chunk waits for
    the frames under 10 states, not under the whole next block's 16, and its look-ahead frame is the same
    whatever audio comes after it (the block's later states do not change it)."""
    waits: dict[bool, int] = {}
    lc = None
    for early in (False, True):
        lc = _whisper_listener(4, 1, early)
        s = lc.new_stream()
        x = torch.randn(60, 8, generator=torch.Generator().manual_seed(3))
        pushed = 0
        while not lc.ready(s):
            assert lc.frames_short(s) > 0
            s.push(x[pushed : pushed + 1])
            pushed += 1
        waits[early] = pushed
    assert waits == {False: 2 * 16 + 1, True: 2 * 10 + 1}
    assert lc is not None
    x = torch.randn(1, 60, 8, generator=torch.Generator().manual_seed(4))
    other = x.clone()
    other[:, 21:] = torch.randn(1, 39, 8, generator=torch.Generator().manual_seed(5))
    ahead = [lc.step_ahead([_pushed(lc, y[0, :21])])[1][0] for y in (x, other)]
    torch.testing.assert_close(ahead[0], ahead[1])
    _, provisional, _ = lc.forward_provisional(torch.cat([x, other]), torch.tensor([60, 60]))
    torch.testing.assert_close(provisional[0, 4], provisional[1, 4])  # chunk 1's first frame, read early


def test_a_look_ahead_whose_block_has_arrived_is_read_from_the_whole_block(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``lookahead_block_when_arrived``: a stream stepped as soon as each chunk is ready reads its look-ahead
    early (the early batch encoding); one whose audio is all there before its steps (a stream that is
    behind) never peeks and gives the late batch encoding, at the late look-ahead's cost."""
    lc = _whisper_listener(4, 1, early=True, when_arrived=True)
    x = torch.randn(1, 93, 8, generator=torch.Generator().manual_seed(8))
    early, _ = lc(x, torch.tensor([93]))
    late_lc = _whisper_listener(4, 1, early=True)
    late_lc.config = dataclasses.replace(late_lc.config, early_lookahead=False)  # the same weights, late
    late, _ = late_lc(x, torch.tensor([93]))
    assert not torch.allclose(early, late, atol=1e-4)  # the two readings differ: the test can tell them apart
    peeks = []
    real_peek = whisper_stream.peek
    monkeypatch.setattr(whisper_stream, "peek", lambda *a: peeks.append(1) or real_peek(*a))

    def streamed(behind: bool) -> torch.Tensor:
        """Frame by frame, each chunk encoded once it is ready; or (``behind``) all at once, then encoded."""
        s, outs = lc.new_stream(), []
        for piece in [x[0]] if behind else x[0].split(1):
            s.push(piece)
            if behind:
                s.finish()  # the stream's last (short) block has arrived too
            outs += _ready_chunks(lc, s)
        s.finish()
        return torch.cat(outs + _ready_chunks(lc, s))

    torch.testing.assert_close(streamed(behind=False), early[0], atol=1e-5, rtol=1e-5)
    assert peeks
    peeks.clear()
    torch.testing.assert_close(streamed(behind=True), late[0], atol=1e-5, rtol=1e-5)
    assert not peeks
    with pytest.raises(ValueError, match="lookahead_block_when_arrived needs early_lookahead"):
        dataclasses.replace(late_lc.config, lookahead_block_when_arrived=True)


def _ready_chunks(lc: LCBLSTMEncoder, s: EncoderStream) -> list[torch.Tensor]:
    """Encode ``s``'s chunks while one is ready."""
    out: list[torch.Tensor] = []
    while lc.ready(s):
        out += lc.step([s])
    return out


def _pushed(lc: LCBLSTMEncoder, x: torch.Tensor) -> EncoderStream:
    s = lc.new_stream()
    s.push(x)
    assert lc.ready(s)
    return s


def test_features_from_gives_back_the_frames_not_encoded() -> None:
    lc = _whisper_listener(2, 4)
    x = torch.randn(70, 8, generator=torch.Generator().manual_seed(7))
    s = lc.new_stream()
    s.push(x)
    lc.step([s])  # 2 encoder frames = 8 feature frames
    torch.testing.assert_close(s.features_from(8), x[8:])


def test_a_streaming_whisper_model_reads_causal_frames() -> None:
    enc = {"frontend": "whisper", "chunk_frames": 2, "lookahead_frames": 4}
    ModelConfig.from_dict({"features": {"kind": "whisper-causal"}, "encoder": enc})
    with pytest.raises(ValueError, match="whisper-causal"):
        ModelConfig.from_dict({"features": {"kind": "whisper"}, "encoder": enc})
    with pytest.raises(ValueError, match="whisper-causal"):
        ModelConfig.from_dict({"features": {"kind": "whisper-causal"}, "encoder": {"frontend": "whisper"}})
    assert FeatureConfig(kind="whisper-causal").frame_samples == 400


def test_a_recognizer_streams_the_default_weights_block_by_block(speech: list[np.ndarray]) -> None:
    """The bundled default's weights run as a streaming Whisper model (block-causal, causal frames, 160 ms
    chunks, 80 ms look-ahead; untrained that way): each final is the offline decoding of its utterance's
    audio by the same chunked model, and partials come before the input ends."""
    base = load_model("default", device="cpu")
    enc = dataclasses.replace(base.config.encoder, chunk_frames=4, lookahead_frames=2)
    config = dataclasses.replace(base.config, encoder=enc, features=FeatureConfig(kind="whisper-causal"))
    model = Transcriber(config, base.tokenizer)
    model.load_state_dict(base.state_dict())
    model.eval()
    audio = np.concatenate([silence(0.5), speech[3], silence(1.5), speech[2], silence(1.5)])
    rec = OnlineRecognizer(model, RecognizerConfig(growing_finals=False, searched_partials=False))
    opts = StreamOptions(decoding=DecodingOptions(beam_size=4), lookahead_results=False)
    results = feed(rec, rec.create_stream(opts), audio)
    finals = [r for _, r in results if r.is_final]
    assert len(finals) == 2 and any(t < len(audio) / SAMPLE_RATE for t, r in results if not r.is_final)
    for f in finals:
        start = round(f.start * SAMPLE_RATE)
        n = (round(f.end * SAMPLE_RATE) - start) // rec.samples_per_frame
        wave = torch.from_numpy(audio[start:])[None]
        feats, lengths = model.features(wave, torch.tensor([wave.size(1)]))
        frames, _ = model.encode(feats, lengths)  # the chunked encoder over the rest of the stream
        want = decode_encoded(model, frames[:, :n], torch.tensor([n]), opts.decoding)[0]
        assert f.text == want.text and f.text
