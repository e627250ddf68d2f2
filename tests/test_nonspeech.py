"""Silence and noise decode to nothing: the CTC gate (``DecodingOptions.ctc_gate``) with the bundled model,
in the library and through the real gRPC server."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from client_support import ServerThread

import asr
import asr.transcribe as transcribe_module
from asr.audio import SAMPLE_RATE, load_audio
from asr.decoding import DecodingOptions
from asr_grpc import asr_pb2, asr_pb2_grpc


@pytest.fixture(scope="module")
def bundled() -> asr.transcribe.Transcriber:
    return asr.load_model(device="cpu")


def nonspeech() -> dict[str, np.ndarray]:
    """Generated, so none of it is in any training set."""
    rng = np.random.default_rng(7)
    t = np.arange(10 * SAMPLE_RATE) / SAMPLE_RATE
    brown = np.cumsum(rng.standard_normal(len(t)))
    brown = (brown - np.convolve(brown, np.ones(800) / 800, mode="same")) * 0.002
    return {
        "60 s of digital silence": np.zeros(60 * SAMPLE_RATE, np.float32),
        "quiet hiss": (rng.standard_normal(len(t)) * 0.003).astype(np.float32),
        "loud hiss": (rng.standard_normal(len(t)) * 0.05).astype(np.float32),
        "brown noise": brown.astype(np.float32),
        "mains hum": (0.05 * np.sin(2 * np.pi * 50 * t) + 0.02 * np.sin(2 * np.pi * 150 * t)).astype(
            np.float32
        ),
    }


@pytest.mark.parametrize("name", list(nonspeech()))
def test_bundled_model_hears_no_words_in_silence_and_noise(bundled, name: str) -> None:
    assert bundled.transcribe(nonspeech()[name]).text == ""


@pytest.mark.parametrize("seconds", [2, 3, 5])
def test_digital_silence_is_no_speech_and_never_searched(bundled, seconds: int) -> None:
    """Whisper's log-mel makes one constant frame of digital silence, which the model may read as words
    (the default of session 37: "AN IN THE INDIAN" in 2-5 s of it): it is not searched."""
    out = bundled.transcribe_batch([np.zeros(seconds * SAMPLE_RATE, np.float32)])[0]
    assert out.text == "" and out.confidence == 1.0


def test_speech_still_decodes_with_the_gate(bundled, hello_wav: Path) -> None:
    audio = load_audio(hello_wav)
    gated = bundled.transcribe(audio)
    assert gated.text and gated.text == bundled.transcribe(audio, DecodingOptions(ctc_gate=False)).text


def test_gated_segments_skip_the_search(bundled, hello_wav: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    searched: list[int] = []
    real = transcribe_module.beam_search

    def counting(model, enc, enc_lengths, options, lm=None):  # type: ignore[no-untyped-def]
        searched.append(enc.size(0))
        return real(model, enc, enc_lengths, options, lm=lm)

    monkeypatch.setattr(transcribe_module, "beam_search", counting)
    silence = np.zeros(3 * SAMPLE_RATE, np.float32)
    out = bundled.transcribe_batch([silence, load_audio(hello_wav), silence])
    assert [bool(t.text) for t in out] == [False, True, False]
    assert searched == [1]  # only the speech was searched
    assert out[0].alternatives[0].text == "" and 0.0 < out[0].confidence <= 1.0
    bundled.transcribe_batch([silence], DecodingOptions(ctc_gate=False))
    assert searched == [1, 1]  # without the gate, silence is searched too


def test_recognize_returns_an_empty_transcript_for_a_minute_of_silence(bundled) -> None:
    pcm = np.zeros(60 * SAMPLE_RATE, dtype="<i2").tobytes()
    config = asr_pb2.RecognitionConfig(encoding=asr_pb2.LINEAR16, sample_rate_hertz=SAMPLE_RATE)
    with ServerThread(bundled) as srv:
        import grpc

        with grpc.insecure_channel(srv.target) as channel:
            response = asr_pb2_grpc.RecognizerStub(channel).Recognize(
                asr_pb2.RecognizeRequest(config=config, audio=asr_pb2.RecognitionAudio(content=pcm)),
                timeout=120,
            )
    assert all(alt.transcript == "" for r in response.results for alt in r.alternatives)


def test_silence_found_marks_digital_silence_unless_forced_or_ungated() -> None:
    """The finals of streams share the rule: digital silence gets an empty n-best list without a search,
    except where a forced prefix must be searched or the CTC gate is off."""
    from asr.transcribe import silence_found

    quiet, speech = np.zeros(8000, np.float32), np.full(8000, 0.1, np.float32)
    found = silence_found([quiet, speech, quiet], DecodingOptions(), prefixes=[(), (), (5,)])
    assert found is not None and [f is not None for f in found] == [True, False, False]
    assert found[0] is not None and found[0][0].tokens == ()
    assert silence_found([quiet], DecodingOptions(ctc_gate=False)) is None
    assert silence_found([speech], DecodingOptions()) is None
