"""Self-describing checkpoints: round trip, half precision, and clear errors for bad files."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from asr.checkpoint import load_checkpoint, load_model, resolve_model_path, save_checkpoint
from asr.decoder import DecoderConfig
from asr.decoding import DecodingOptions
from asr.encoder import EncoderConfig
from asr.features import FeatureConfig
from asr.model import ASRModel, ModelConfig
from asr.tokenizer import CharTokenizer, SentencePieceTokenizer
from asr.transcribe import Transcriber


def tiny_model(tokenizer: CharTokenizer | SentencePieceTokenizer | None = None) -> Transcriber:
    torch.manual_seed(0)
    config = ModelConfig(
        features=FeatureConfig(n_mels=16),
        encoder=EncoderConfig(input_dim=16, conv_channels=4, hidden_size=8, num_layers=2, dropout=0.0),
        decoder=DecoderConfig(
            embed_dim=8, hidden_size=8, attention_dim=8, location_channels=2, location_kernel=3
        ),
    )
    model = Transcriber(config, tokenizer or CharTokenizer.default())
    model.cmvn.set_stats(torch.randn(16) * 100, torch.rand(16) * 1e4 + 1e4, 100)
    return model.eval()


def outputs(model: ASRModel, waves: torch.Tensor) -> torch.Tensor:
    lengths = torch.full((waves.size(0),), waves.size(1))
    with torch.no_grad():
        enc, _ = model.encode(*model.features(waves, lengths))
        return model.ctc_log_probs(enc)


def test_round_trip_gives_identical_outputs(tmp_path: Path) -> None:
    model = tiny_model()
    path = tmp_path / "m.pt"
    save_checkpoint(model, path, extra={"step": 7})
    loaded = load_model(path, device="cpu")
    assert not loaded.training
    assert loaded.config == model.config
    assert loaded.tokenizer.pieces == model.tokenizer.pieces  # type: ignore[union-attr]
    assert load_checkpoint(path)["extra"] == {"step": 7}
    waves = torch.randn(2, 8000) * 0.1
    torch.testing.assert_close(outputs(loaded, waves), outputs(model, waves), atol=0, rtol=0)
    audio = waves[0].numpy()
    opts = DecodingOptions(beam_size=2, max_length_ratio=0.3)
    assert loaded.transcribe(audio, opts).text == model.transcribe(audio, opts).text
    assert list(tmp_path.iterdir()) == [path]  # no temporary files left behind


def test_half_precision_checkpoint(tmp_path: Path) -> None:
    model = tiny_model()
    full, half = tmp_path / "full.pt", tmp_path / "half.pt"
    save_checkpoint(model, full)
    save_checkpoint(model, half, half=True)
    assert half.stat().st_size < 0.7 * full.stat().st_size
    state = load_checkpoint(half)["state_dict"]
    assert state["ctc.weight"].dtype == torch.float16
    assert state["cmvn.istd"].dtype == torch.float32  # statistics keep full precision
    loaded = load_model(half, device="cpu")
    assert loaded.ctc.weight.dtype == torch.float32
    waves = torch.randn(2, 8000) * 0.1
    torch.testing.assert_close(outputs(loaded, waves), outputs(model, waves), atol=2e-2, rtol=0)


def test_sentencepiece_model_travels_in_the_checkpoint(tmp_path: Path) -> None:
    tok = SentencePieceTokenizer.train(["hello world", "good morning to you"] * 10, vocab_size=20)
    model = tiny_model(tok)
    save_checkpoint(model, tmp_path / "bpe.pt")
    loaded = load_model(tmp_path / "bpe.pt", device="cpu")
    assert loaded.tokenizer.encode("hello") == tok.encode("hello")


def test_bad_checkpoints_raise_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        load_model(tmp_path / "missing.pt")
    with pytest.raises(FileNotFoundError, match="Known models"):
        resolve_model_path("no-such-model-name")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00garbage" * 50)
    with pytest.raises(ValueError, match="could not read checkpoint"):
        load_model(corrupt)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(ValueError, match="not a las-asr checkpoint"):
        load_model(foreign)
    newer = tmp_path / "newer.pt"
    torch.save({"format": "las-asr", "version": 99}, newer)
    with pytest.raises(ValueError, match="version 99"):
        load_model(newer)
    incomplete = tmp_path / "incomplete.pt"
    torch.save({"format": "las-asr", "version": 1}, incomplete)
    with pytest.raises(ValueError, match="lacks"):
        load_model(incomplete)
    pickled = tmp_path / "pickled.pt"
    torch.save({"format": "las-asr", "version": 1, "x": np.dtype("float32")}, pickled)
    with pytest.raises(ValueError, match="could not read"):  # weights_only refuses arbitrary objects
        load_checkpoint(pickled)


def test_mismatched_weights_are_refused(tmp_path: Path) -> None:
    model = tiny_model()
    path = tmp_path / "m.pt"
    save_checkpoint(model, path)
    ckpt = load_checkpoint(path)
    ckpt["config"]["encoder"]["hidden_size"] = 16
    torch.save(ckpt, path)
    with pytest.raises(ValueError, match="do not match its config"):
        load_model(path, device="cpu")
    ckpt["config"]["encoder"]["hidden_size"] = 8
    ckpt["config"]["encoder"]["pyramid_layers"] = 5
    torch.save(ckpt, path)
    with pytest.raises(ValueError, match="pyramid_layers"):
        load_model(path, device="cpu")


def test_transcribe_too_short_and_mixed_batches() -> None:
    """Audio too short to encode gives an empty transcript, also when batched with normal audio."""
    model = tiny_model()
    opts = DecodingOptions(method="greedy")
    blip = np.zeros(300, dtype=np.float32)
    assert model.transcribe(blip, opts).text == ""
    normal = (np.random.default_rng(0).standard_normal(16000) * 0.1).astype(np.float32)
    alone = model.transcribe(normal, opts)
    both = model.transcribe_batch([blip, normal], opts)
    assert both[0].text == "" and both[0].duration == pytest.approx(300 / 16000)
    assert both[1].text == alone.text and both[1].duration == pytest.approx(1.0)
    with pytest.raises(ValueError, match="empty"):
        model.transcribe(np.zeros(0, dtype=np.float32))


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_files_get_the_usual_permissions(tmp_path: Path, umask_022: None) -> None:
    """Atomic writes must not leave mkstemp's owner-only 0600 on checkpoints or transcripts."""
    from client.transcribe_cli import write_atomic

    save_checkpoint(tiny_model(), tmp_path / "m.pt")
    write_atomic(tmp_path / "a.txt", "hello\n")
    for name in ("m.pt", "a.txt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "m.pt"]  # no temporary file left


def test_with_early_lookahead_reads_the_look_ahead_early_with_the_same_weights() -> None:
    """The bundled streaming model (early look-ahead) and its weights waiting for Whisper's whole next block:
    the same weights; the chunks' frames change (the look-ahead is read from more of the next block), and a
    model that is not a streaming Whisper one says what the setting needs."""
    from asr.checkpoint import with_early_lookahead

    shipped = load_model("streaming", device="cpu")
    enc = shipped.config.encoder
    assert enc.early_lookahead and enc.lookahead_block_when_arrived  # --early-lookahead auto, session 41
    assert with_early_lookahead(shipped, True, block_when_arrived=True) is shipped
    early = with_early_lookahead(shipped, True)
    assert early.config.encoder.early_lookahead and not early.config.encoder.lookahead_block_when_arrived
    model = with_early_lookahead(early, False)
    assert not model.config.encoder.early_lookahead and not model.training
    for k, v in model.state_dict().items():
        torch.testing.assert_close(early.state_dict()[k], v)
    waves = torch.randn(1, 16000) * 0.1
    assert not torch.allclose(outputs(early, waves), outputs(model, waves))
    with pytest.raises(ValueError, match=r"early_lookahead needs a streaming Whisper front end"):
        with_early_lookahead(tiny_model(), True)
    with pytest.raises(ValueError, match=r"lookahead_block_when_arrived needs early_lookahead"):
        with_early_lookahead(early, False, block_when_arrived=True)


def test_with_chunk_ms_reruns_a_streaming_model_with_another_chunk() -> None:
    """The chunk shapes no weight: the same weights encode 80 ms chunks (their look-ahead unchanged), the
    encoding of a frame then depending only on its window, so it differs from the 160 ms encoding; a
    non-streaming model, a size that is not whole frames, and the model's own size are handled."""
    from asr.checkpoint import with_chunk_ms

    offline = tiny_model()
    with pytest.raises(ValueError, match=r"chunk-streaming models only"):
        with_chunk_ms(offline, 80)
    enc = offline.config.encoder
    config = ModelConfig(
        offline.config.features,
        EncoderConfig(**{**enc.__dict__, "chunk_frames": 4, "lookahead_frames": 2}),
        offline.config.decoder,
    )
    model = Transcriber(config, offline.tokenizer)
    model.load_state_dict(offline.state_dict())
    model.eval()
    shift = round(config.encoder_frame_shift * 1000)
    assert with_chunk_ms(model, 4 * shift) is model
    small = with_chunk_ms(model, 2 * shift)
    assert (small.config.encoder.chunk_frames, small.config.encoder.lookahead_frames) == (2, 2)
    assert not small.training and small.device == model.device
    for k, v in model.state_dict().items():
        torch.testing.assert_close(small.state_dict()[k], v)
    waves = torch.randn(1, 16000) * 0.1
    assert not torch.allclose(outputs(small, waves), outputs(model, waves))
    for bad in (0, shift + 1, 3 * shift // 2):
        with pytest.raises(ValueError, match=r"multiple of the encoder's"):
            with_chunk_ms(model, bad)
