"""Property-based tests (hypothesis) over the request space and the audio decoders.

* Any bytes given to the decoders either decode to finite float32 samples or raise ``AudioError`` or
  ``ValueError`` (the server maps both to INVALID_ARGUMENT), never another exception.
* Chunked raw-audio decoding does not depend on where the chunks are cut.
* Any ``RecognitionConfig`` / ``StreamingRecognitionConfig`` (in or out of range, unknown enum values) gets
  OK or INVALID_ARGUMENT from the real server, never INTERNAL or UNKNOWN.

Example counts are small so the file runs in well under 30 s; raise them with ``HYPOTHESIS_PROFILE=long``.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from client_support import ServerThread, tiny_checkpoint
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import asr
from asr.audio import SAMPLE_RATE, AudioError, decode_audio, float_to_pcm16, mulaw_to_float, pcm16_to_float
from asr_grpc import asr_pb2, asr_pb2_grpc
from server.audio import ChunkDecoder, decode_request_audio

settings.register_profile(
    "ci", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
settings.register_profile(
    "long", max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

HEADERS = [b"", b"RIFF\x24\x00\x00\x00WAVEfmt ", b"fLaC", b"OggS\x00\x02", b"ID3\x03\x00", b"\xff\xfb"]
ENCODINGS = st.one_of(st.sampled_from(list(asr_pb2.AudioEncoding.values())), st.integers(-5, 1000))
OK_CODES = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT}


def blobs(max_size: int = 4000) -> st.SearchStrategy[bytes]:
    """Random bytes, sometimes behind a container's magic number so the decoders get past the first check."""
    return st.builds(lambda h, b: h + b, st.sampled_from(HEADERS), st.binary(max_size=max_size))


def check_samples(x: np.ndarray) -> None:
    assert x.dtype == np.float32 and x.ndim == 1
    assert np.isfinite(x).all()


# -- decoders ------------------------------------------------------------------------------------------------


@given(blobs())
def test_decode_audio_raises_only_audio_error(data: bytes) -> None:
    with contextlib.suppress(AudioError):
        check_samples(decode_audio(data))


@given(
    blobs(2000),
    ENCODINGS,
    st.one_of(st.sampled_from([0, 8000, 16000, 44100, 48000]), st.integers(-100, 200_000)),
    st.integers(-2, 10),
)
def test_request_audio_decodes_or_raises_value_error(
    data: bytes, encoding: int, rate: int, channels: int
) -> None:
    with contextlib.suppress(ValueError):  # AudioError is a ValueError; both become INVALID_ARGUMENT
        check_samples(decode_request_audio(data, encoding, rate, channels))


@given(
    st.binary(min_size=0, max_size=3000),
    st.lists(st.integers(0, 3000), max_size=8),
    st.sampled_from(
        [
            (asr_pb2.LINEAR16, 16000, 1),
            (asr_pb2.LINEAR16, 16000, 2),
            (asr_pb2.MULAW, 16000, 1),
            (asr_pb2.LINEAR16, 8000, 1),
            (asr_pb2.MULAW, 8000, 1),
            (asr_pb2.LINEAR16, 44100, 1),
            (asr_pb2.LINEAR16, 8001, 1),  # rates sharing no big factor with 16 kHz
            (asr_pb2.LINEAR16, 47999, 2),
        ]
    ),
)
def test_chunked_decoding_does_not_depend_on_the_cuts(
    data: bytes, cuts: list[int], fmt: tuple[int, int, int]
) -> None:
    whole = ChunkDecoder(*fmt)
    want = np.concatenate([whole.push(data), whole.flush()])
    parts = ChunkDecoder(*fmt)
    bounds = [0, *sorted(c for c in cuts if c <= len(data)), len(data)]
    got = np.concatenate([parts.push(data[a:b]) for a, b in itertools.pairwise(bounds)] + [parts.flush()])
    check_samples(got)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-4)


@given(st.binary(max_size=2000).filter(lambda b: len(b) % 2 == 0))
def test_pcm16_round_trip(data: bytes) -> None:
    x = pcm16_to_float(data)
    check_samples(x)
    assert np.all(np.abs(x) <= 1.0)
    back = pcm16_to_float(float_to_pcm16(x))
    np.testing.assert_allclose(back, x, atol=2 / 32768)
    y = mulaw_to_float(data)
    check_samples(y)
    assert np.all(np.abs(y) <= 1.0)


# -- the request space, through the server -------------------------------------------------------------------


@pytest.fixture(scope="module")
def stub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[asr_pb2_grpc.RecognizerStub]:
    model = asr.load_model(tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pt"), device="cpu")
    with (
        ServerThread(model, max_streams=8, idle_timeout_s=5.0) as srv,
        grpc.insecure_channel(srv.target) as ch,
    ):
        yield asr_pb2_grpc.RecognizerStub(ch)


def _configs(wild: bool) -> st.SearchStrategy[asr_pb2.StreamingRecognitionConfig]:
    """Streaming configs with every field in range (``wild=False``) or anything the types allow."""

    def pick(valid: st.SearchStrategy, anything: st.SearchStrategy) -> st.SearchStrategy:
        return st.one_of(valid, anything) if wild else valid

    int32 = st.integers(-(2**31), 2**31 - 1)
    decoding = st.builds(
        asr_pb2.DecodingConfig,
        method=pick(st.sampled_from([0, 1, 2]), st.integers(-3, 50)),
        beam_size=pick(st.integers(0, 8), int32),
        ctc_weight=pick(st.one_of(st.none(), st.floats(0, 1, width=32)), st.floats(width=32)),
        lm_weight=pick(st.sampled_from([None, 0.0]), st.floats(width=32)),  # this server has no LM
        tta_speeds=pick(
            st.lists(st.sampled_from([0.9, 1.1]), max_size=2, unique=True),
            st.lists(st.floats(width=32), max_size=6),
        ),
    )
    words = st.text(alphabet="abcdefghijklmnopqrstuvwxyz' ", min_size=1, max_size=30).filter(str.strip)
    config = st.builds(
        asr_pb2.RecognitionConfig,
        encoding=pick(st.sampled_from([asr_pb2.LINEAR16, asr_pb2.MULAW]), ENCODINGS),
        sample_rate_hertz=pick(st.sampled_from([8000, 16000, 22050, 48000]), int32),
        audio_channel_count=pick(st.integers(0, 2), st.integers(-3, 12)),
        model=pick(st.sampled_from(["", "tiny"]), st.sampled_from(["nope", "../../etc/passwd", "\u00e9"])),
        max_alternatives=pick(st.integers(0, 1), st.integers(-2, 20)),
        enable_word_time_offsets=st.booleans(),
        enable_word_confidence=st.booleans(),
        decoding=decoding,
        language_code=st.sampled_from(["", "en-US", "xx"]),
        phrases=pick(st.lists(words, max_size=5), st.lists(st.text(max_size=200), max_size=20)),
        phrase_boost=pick(st.one_of(st.none(), st.floats(0, 10, width=32)), st.floats(width=32)),
    )
    endpointing = st.builds(
        asr_pb2.EndpointConfig,
        silence_ms=pick(st.sampled_from([0, 200, 800]), int32),
        max_segment_seconds=pick(st.sampled_from([0.0, 2.0, 20.0]), st.floats(width=32)),
        speech_threshold_db=pick(st.sampled_from([0.0, 5.0, 20.0]), st.floats(width=32)),
    )
    return st.builds(
        asr_pb2.StreamingRecognitionConfig,
        config=config,
        interim_results=st.booleans(),
        single_utterance=st.booleans(),
        endpointing=endpointing,
        interim_interval_ms=pick(st.sampled_from([0, 100, 500]), int32),
    )


streaming_configs = st.one_of(_configs(False), _configs(True))
recognition_configs = streaming_configs.map(lambda sc: sc.config)
SEEN: dict[str, set[grpc.StatusCode]] = {"recognize": set(), "stream": set()}


def _audio(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    return float_to_pcm16((0.1 * rng.standard_normal(SAMPLE_RATE // 4)).astype(np.float32))


def _code(fn: object) -> grpc.StatusCode:
    try:
        fn()  # type: ignore[operator]
    except grpc.RpcError as exc:
        assert exc.code() in OK_CODES, (exc.code(), exc.details())
        return exc.code()
    return grpc.StatusCode.OK


@settings(max_examples=40)
@given(recognition_configs, st.one_of(st.builds(_audio, st.integers(0, 3)), blobs(600)))
def test_any_recognize_config_is_ok_or_invalid(
    stub: asr_pb2_grpc.RecognizerStub, config: asr_pb2.RecognitionConfig, content: bytes
) -> None:
    req = asr_pb2.RecognizeRequest(config=config, audio=asr_pb2.RecognitionAudio(content=content))
    SEEN["recognize"].add(_code(lambda: stub.Recognize(req, timeout=30)))


@settings(max_examples=40)
@given(streaming_configs, st.lists(st.binary(max_size=3000), max_size=3))
def test_any_streaming_config_is_ok_or_invalid(
    stub: asr_pb2_grpc.RecognizerStub, config: asr_pb2.StreamingRecognitionConfig, chunks: list[bytes]
) -> None:
    msgs = [asr_pb2.StreamingRecognizeRequest(streaming_config=config)]
    msgs += [asr_pb2.StreamingRecognizeRequest(audio_content=c) for c in [_audio(0), *chunks]]
    SEEN["stream"].add(_code(lambda: list(stub.StreamingRecognize(iter(msgs), timeout=30))))


def test_the_request_space_reached_both_outcomes() -> None:
    """The generators are not degenerate: both OK and INVALID_ARGUMENT came up (runs after the two above)."""
    if not all(SEEN.values()):
        pytest.skip("run with the property tests above")
    assert SEEN["recognize"] == OK_CODES and SEEN["stream"] == OK_CODES, SEEN
