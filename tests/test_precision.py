"""bfloat16 recurrent products (asr.precision): the mode, the weight casts, and decoding that agrees with
float32. The rest of the suite runs in float32 (conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from asr import precision
from asr.checkpoint import load_model
from asr.decoder import LOW_PRECISION_ROWS, AttentionDecoder, DecoderConfig
from asr.encoder import EncoderConfig
from asr.lc_blstm import LCBLSTMEncoder
from asr.online import OnlineRecognizer
from asr.stream_state import StreamOptions
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
    with pytest.raises(ValueError, match="precision must be one of auto, float32, bfloat16, got 'fp16'"):
        precision.set_mode("fp16")


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


def test_the_streaming_model_hears_the_same_in_bfloat16(mode: None, speech: list[np.ndarray]) -> None:
    """The bundled streaming model over two utterances: the same finals in both formats."""
    model = load_model("streaming", device="cpu")
    audio = np.concatenate([silence(0.3), speech[0], silence(1.2), speech[1], silence(1.2)])

    def finals() -> list[str]:
        rec = OnlineRecognizer(model)
        s = rec.create_stream(StreamOptions())
        rec.accept_audio(s, audio)
        rec.input_finished(s)
        while rec.is_ready(s):
            rec.decode_streams([s])
        return [r.text for r in rec.pop_results(s) if r.is_final]

    precision.set_mode("float32")
    exact = finals()
    precision.set_mode("bfloat16")
    assert finals() == exact
    assert len(exact) == 2 and all(exact)
