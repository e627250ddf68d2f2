"""bfloat16 and int8 recurrent products (asr.precision): the modes, the weight casts and packs, and decoding
that agrees with float32. The rest of the suite runs in float32 (conftest.py)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from asr import precision, whisper_stream
from asr.checkpoint import load_model, with_chunk_ms
from asr.decoder import LOW_PRECISION_ROWS, AttentionDecoder, DecoderConfig
from asr.encoder import EncoderConfig
from asr.lc_blstm import LCBLSTMEncoder
from asr.online import OnlineRecognizer
from asr.stream_state import StreamOptions
from asr.streaming import RecognizerConfig
from asr.whisper_encoder import WhisperEncoderConfig, WhisperFrontEnd
from tests.conftest import silence


@pytest.fixture
def mode() -> Iterator[None]:
    before = precision.mode()
    yield
    precision.set_mode(before)


def test_modes_and_dtypes(mode: None) -> None:
    cpu = torch.device("cpu")
    precision.set_mode("float32")
    assert precision.recurrent_dtype(cpu) == torch.float32
    precision.set_mode("bfloat16")
    assert precision.recurrent_dtype(cpu) == torch.bfloat16
    precision.set_mode("auto")
    assert precision.recurrent_dtype(cpu) in (torch.float32, torch.bfloat16)
    precision.set_mode("int8")
    assert precision.recurrent_dtype(cpu) in (torch.float32, torch.bfloat16)  # the encoder's, as auto
    with pytest.raises(ValueError, match="one of auto, float32, bfloat16, int8, got 'fp16'"):
        precision.set_mode("fp16")


@pytest.mark.parametrize(
    ("amx", "avx512_bf16", "native"), [(True, False, True), (False, True, True), (False, False, False)]
)
def test_auto_uses_bfloat16_where_the_cpu_multiplies_it_natively(
    mode: None, monkeypatch: pytest.MonkeyPatch, amx: bool, avx512_bf16: bool, native: bool
) -> None:
    """AMX tiles (Intel) or AVX-512 BF16 (AMD Zen 4, Intel Cooper Lake): either makes ``auto`` bfloat16."""
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    precision._native_bf16.cache_clear()
    try:
        precision.set_mode("auto")
        expected = torch.bfloat16 if native else torch.float32
        assert precision.recurrent_dtype(torch.device("cpu")) == expected
    finally:
        precision._native_bf16.cache_clear()


def test_a_streaming_whisper_front_end_runs_in_bfloat16_where_the_lstms_do(mode: None) -> None:
    """A block-causal front end's products in bfloat16 (its states a little off float32's, as in training
    under autocast; an offline front end stays float32), its output float32; never under autograd, and a
    stream's blocks still give the whole utterance's states."""
    torch.manual_seed(0)
    front = WhisperFrontEnd(WhisperEncoderConfig(n_mels=8, width=32, heads=2, layers=2, block=4)).eval()
    mel = torch.randn(1, 40, 8, generator=torch.Generator().manual_seed(1))
    lengths = torch.tensor([40])
    precision.set_mode("float32")
    with torch.no_grad():
        exact, _ = front(mel, lengths)
    precision.set_mode("bfloat16")
    with torch.no_grad():
        low, _ = front(mel, lengths)
        s = whisper_stream.new_stream(front)
        s.push(mel[0, :23])
        whisper_stream.step(front, [s], [10**9])
        s.push(mel[0, 23:])
        s.finished = True
        whisper_stream.step(front, [s], [10**9])
    assert low.dtype == torch.float32 and not torch.equal(low, exact)
    offline = WhisperFrontEnd(dataclasses.replace(front.config, block=0))
    with torch.no_grad():
        assert isinstance(front.autocast(), torch.autocast)
        assert not isinstance(offline.autocast(), torch.autocast)
    torch.testing.assert_close(low, exact, atol=0.1, rtol=0.05)
    assert s.out is not None
    torch.testing.assert_close(s.out, low[0], atol=0.05, rtol=0.05)
    with torch.no_grad():
        assert isinstance(precision.transformer_autocast(torch.device("cpu")), torch.autocast)
    assert not isinstance(precision.transformer_autocast(torch.device("cpu")), torch.autocast)  # autograd
    precision.set_mode("float32")
    with torch.no_grad():
        assert not isinstance(precision.transformer_autocast(torch.device("cpu")), torch.autocast)


def test_a_stream_runs_on_a_bfloat16_copy_with_autocasts_arithmetic(mode: None) -> None:
    """Streams encode on a bfloat16 copy of the front end, without autocast's cast of every weight at every
    call: the same states to the bit as autocast gives. The copy is made once and again after the weights
    change; in float32 the front end runs itself."""
    torch.manual_seed(0)
    front = WhisperFrontEnd(WhisperEncoderConfig(n_mels=8, width=32, heads=2, layers=2, block=4)).eval()
    mel = torch.randn(37, 8, generator=torch.Generator().manual_seed(2))

    def streamed(cast: bool) -> torch.Tensor:
        s = whisper_stream.new_stream(front)
        with torch.no_grad():
            for a in range(0, 37, 9):
                s.push(mel[a : a + 9])
                if cast:
                    whisper_stream.step(front, [s], [10**9])
                else:  # the arithmetic before the copy: autocast over the front end itself
                    with front.autocast():
                        rows = [(s, n) for n in [whisper_stream._plan(front, s, 10**9)] if n]
                        if rows:
                            whisper_stream._encode(front, rows)
        assert s.out is not None
        return s.out

    precision.set_mode("float32")
    with torch.no_grad():
        assert front.cast() is front
    precision.set_mode("bfloat16")
    with torch.no_grad():
        copy = front.cast()
        assert copy is not front and copy.conv1.weight.dtype == torch.bfloat16
        assert front.cast() is copy  # made once
        assert front.conv1.weight.dtype == torch.float32 and "_cast" not in dict(front.named_modules())
    assert torch.equal(streamed(cast=True), streamed(cast=False))
    with torch.no_grad():
        front.blocks[0].qkv.weight.mul_(0.5)
        again = front.cast()
    assert again is not copy
    assert torch.equal(again.blocks[0].qkv.weight, front.blocks[0].qkv.weight.bfloat16())


needs_int8 = pytest.mark.skipif(
    not precision._quantized_engine(), reason="this PyTorch has no quantized CPU engine (fbgemm, x86)"
)


@needs_int8
def test_int8_steps_by_mode(mode: None) -> None:
    cpu = torch.device("cpu")
    for name, expected in (("float32", False), ("bfloat16", False), ("int8", True), ("auto", True)):
        precision.set_mode(name)
        assert precision.int8_steps(cpu) is expected, name


@needs_int8
def test_int8_linear_is_close_to_float32() -> None:
    torch.manual_seed(0)
    w, b, x = torch.randn(64, 40) * 0.1, torch.randn(64), torch.randn(10, 40)
    exact = x @ w.t() + b
    out = precision.int8_linear(x, precision.quantize_linear(w, b))
    assert out.dtype == torch.float32 and out.shape == exact.shape
    err = float((out - exact).abs().max() / exact.abs().max())
    assert 0 < err < 0.03  # 8-bit weights, 7-bit inputs: close, and not float32 itself


def test_weights_are_cast_once_and_again_when_they_change() -> None:
    lstm = torch.nn.LSTM(4, 3)
    params = [lstm.weight_ih_l0, lstm.weight_hh_l0]
    first = precision.cast_weights(lstm, "l0", params, torch.bfloat16)
    assert all(t.dtype == torch.bfloat16 for t in first)
    assert precision.cast_weights(lstm, "l0", params, torch.bfloat16)[0] is first[0]  # cached
    with torch.no_grad():
        lstm.weight_ih_l0.add_(1.0)
    again = precision.cast_weights(lstm, "l0", params, torch.bfloat16)
    assert again[0] is not first[0]
    torch.testing.assert_close(again[0].float(), lstm.weight_ih_l0.detach(), atol=0.02, rtol=0.01)
    assert precision.cast_weights(lstm, "l0", params, torch.float32)[0] is lstm.weight_ih_l0  # no copy


def test_bfloat16_steps_stay_close_to_float32(mode: None) -> None:
    """The decoder's step (of a batch large enough for bfloat16) and a streaming encoder's chunk step, each
    in both formats: outputs within bfloat16's rounding, in float32."""
    torch.manual_seed(0)
    dec = AttentionDecoder(9, 6, DecoderConfig(embed_dim=8, hidden_size=16, attention_dim=8), 8, 8).eval()
    enc_cfg = EncoderConfig(
        input_dim=8,
        conv_channels=0,
        hidden_size=16,
        num_layers=2,
        pyramid_layers=1,
        chunk_frames=2,
        lookahead_frames=1,
    )
    encoder = LCBLSTMEncoder(enc_cfg).eval()
    rows = LOW_PRECISION_ROWS  # fewer stay float32
    memory_in, lengths = torch.randn(rows, 11, 6), torch.randint(4, 12, (rows,))
    feats = torch.randn(2, 24, 8)

    def run() -> tuple[torch.Tensor, ...]:
        with torch.inference_mode():
            memory, state = dec.prepare(memory_in, lengths)
            for _ in range(2):  # the first step's LSTM input is all zeros but for the token
                logits, state = dec.step(torch.arange(rows) % 8, state, memory)
            streams = [encoder.new_stream() for _ in range(2)]
            for s, x in zip(streams, feats, strict=True):
                s.push(x)
            frames = encoder.step(streams)
        return logits, state.h, state.attention, *frames

    precision.set_mode("float32")
    exact = run()
    precision.set_mode("bfloat16")
    low = run()
    for a, b in zip(exact, low, strict=True):
        assert b.dtype == torch.float32
        torch.testing.assert_close(b, a, atol=0.05, rtol=0.05)
        assert not torch.equal(a, b) or a.abs().max() == 0  # bfloat16 did run


@needs_int8
def test_int8_decoder_steps_stay_close_to_float32(mode: None) -> None:
    """A beam's decoder step (fewer rows than bfloat16 takes) on 8-bit weights: close to float32, and
    repacked when the weights change."""
    torch.manual_seed(0)
    dec = AttentionDecoder(9, 6, DecoderConfig(embed_dim=8, hidden_size=16, attention_dim=8), 8, 8).eval()
    memory_in, lengths = torch.randn(10, 11, 6), torch.randint(4, 12, (10,))

    def run() -> tuple[torch.Tensor, ...]:
        with torch.inference_mode():
            memory, state = dec.prepare(memory_in, lengths)
            for _ in range(2):  # the first step's LSTM input is all zeros but for the token
                logits, state = dec.step(torch.arange(10) % 8, state, memory)
        return logits, state.h, state.attention

    precision.set_mode("float32")
    exact = run()
    precision.set_mode("int8")
    low = run()
    for a, b in zip(exact, low, strict=True):
        torch.testing.assert_close(b, a, atol=0.05, rtol=0.05)
    assert not torch.equal(exact[0], low[0])  # int8 did run
    with torch.no_grad():
        dec.cells[0].weight_ih.mul_(2.0)
    precision.set_mode("float32")
    changed = run()
    precision.set_mode("int8")
    torch.testing.assert_close(run()[0], changed[0], atol=0.05, rtol=0.05)


@pytest.mark.parametrize("low", ["bfloat16", pytest.param("int8", marks=needs_int8)])
def test_the_streaming_model_hears_the_same_in_low_precision(
    mode: None, speech: list[np.ndarray], low: str
) -> None:
    """The bundled streaming model over two utterances: the same finals in float32 and ``low``. (Finals
    searched whole: a growing search, whose early steps attend over the frames heard so far, can tip between
    near-equal hypotheses on numbers this close, as on the first of these: "THE OL WERE ORED" in float32 and
    "THE LAW WERE OUT" on 8-bit weights. Run with the 160 ms chunks the weights were trained with: at the
    bundled 80 ms the first utterance's "LOW" in float32 tips to "LAW" on 8-bit weights.)"""
    model = with_chunk_ms(load_model("streaming", device="cpu"), 160)
    audio = np.concatenate([silence(0.3), speech[0], silence(1.2), speech[1], silence(1.2)])

    def finals() -> list[str]:
        rec = OnlineRecognizer(model, RecognizerConfig(growing_finals=False))
        s = rec.create_stream(StreamOptions())
        rec.accept_audio(s, audio)
        rec.input_finished(s)
        while rec.is_ready(s):
            rec.decode_streams([s])
        return [r.text for r in rec.pop_results(s) if r.is_final]

    precision.set_mode("float32")
    exact = finals()
    precision.set_mode(low)
    assert finals() == exact
    assert len(exact) == 2 and all(exact)
