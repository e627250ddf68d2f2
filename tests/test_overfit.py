"""End to end on the CPU: a tiny model memorises a few espeak-ng utterances and reads them back."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from asr.audio import load_audio
from asr.decoder import DecoderConfig
from asr.decoding import DecodingOptions
from asr.encoder import EncoderConfig
from asr.features import FeatureConfig
from asr.lm import NGramLM
from asr.model import ModelConfig
from asr.tokenizer import CharTokenizer
from asr.transcribe import Transcriber, transcribe_batch

N_MELS = 40


def cer(ref: str, hyp: str) -> float:
    """Character error rate by Levenshtein distance."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i]
        for j, h in enumerate(hyp, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h)))
        prev = cur
    return prev[-1] / max(1, len(ref))


@pytest.fixture(scope="module")
def trained(speech_dir: Path) -> Iterator[tuple[Transcriber, list[Path], list[str]]]:
    # One thread: this tiny model gains nothing from two, and two threads on a busy 2-core machine can
    # spin-wait on each other for many times the run time.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield train_tiny_model(speech_dir)
    finally:
        torch.set_num_threads(threads)


def train_tiny_model(speech_dir: Path) -> tuple[Transcriber, list[Path], list[str]]:
    torch.manual_seed(0)
    wavs = sorted(speech_dir.glob("utt*.wav"))
    texts = [w.with_suffix(".txt").read_text().strip() for w in wavs]
    tok = CharTokenizer.train(texts)
    config = ModelConfig(
        features=FeatureConfig(n_mels=N_MELS),
        encoder=EncoderConfig(input_dim=N_MELS, conv_channels=8, hidden_size=64, num_layers=2, dropout=0.0),
        decoder=DecoderConfig(
            embed_dim=32,
            hidden_size=64,
            attention_dim=32,
            location_channels=4,
            location_kernel=5,
            dropout=0.0,
            label_smoothing=0.0,
        ),
        ctc_weight=0.5,
    )
    model = Transcriber(config, tok)
    waves = [load_audio(w) for w in wavs]
    lengths = torch.tensor([len(w) for w in waves])
    batch = torch.zeros(len(waves), int(lengths.max()))
    for i, w in enumerate(waves):
        batch[i, : len(w)] = torch.from_numpy(w)
    feats, feat_lengths = model.features(batch, lengths)
    valid = torch.cat([feats[i, : int(n)] for i, n in enumerate(feat_lengths)])
    model.cmvn.set_stats(valid.sum(0), (valid**2).sum(0), valid.size(0))

    ids = [tok.encode(t) for t in texts]
    targets = torch.full((len(ids), max(map(len, ids))), -1, dtype=torch.long)
    for i, seq in enumerate(ids):
        targets[i, : len(seq)] = torch.tensor(seq)
    target_lengths = torch.tensor([len(s) for s in ids])

    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    model.train()
    start = time.monotonic()
    steps = 0
    while steps < 400:  # about 200 steps are enough
        steps += 1
        loss, stats = model(feats, feat_lengths, targets, target_lengths)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        if stats["ctc"] < 0.05 and stats["acc"] == 1.0:
            break
    print(f"trained {steps} steps in {time.monotonic() - start:.1f} s, {stats}")
    model.eval()
    return model, wavs, texts


@pytest.mark.parametrize(
    "options",
    [
        DecodingOptions(method="greedy"),
        DecodingOptions(method="beam", beam_size=4, ctc_weight=0.5),
        DecodingOptions(method="beam", beam_size=3, ctc_weight=0.0),
        DecodingOptions(method="beam", beam_size=3, ctc_weight=1.0),
    ],
    ids=["greedy", "joint", "attention", "ctc"],
)
def test_overfit_reads_back(
    trained: tuple[Transcriber, list[Path], list[str]], options: DecodingOptions
) -> None:
    model, wavs, texts = trained
    results = model.transcribe_batch(list(wavs), options)
    hyps = [r.text for r in results]
    pairs = list(zip(texts, hyps, strict=True))
    assert sum(cer(r, h) for r, h in pairs) == 0.0, pairs
    single = model.transcribe(wavs[0], options)  # path in, one result out
    assert single.text == texts[0]


def test_overfit_word_times(trained: tuple[Transcriber, list[Path], list[str]]) -> None:
    model, wavs, texts = trained
    for wav, text in zip(wavs, texts, strict=True):
        audio = load_audio(wav)
        result = model.transcribe(audio, DecodingOptions(method="greedy"))
        assert [w.word for w in result.words] == text.split()
        assert result.duration == pytest.approx(len(audio) / 16000)
        times = [t for w in result.words for t in (w.start, w.end)]
        assert times == sorted(times)
        assert all(w.start < w.end for w in result.words)
        assert times[0] >= 0.0 and times[-1] <= result.duration + model.config.encoder_frame_shift
        assert all(0.0 <= w.confidence <= 1.0 for w in result.words)
        assert 0.0 <= result.confidence <= 1.0
        alt = result.alternatives[0]
        assert 0.0 <= alt.confidence <= 1.0 and np.isfinite(alt.score)


@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_alternative_confidence_tracks_certainty(
    trained: tuple[Transcriber, list[Path], list[str]], method: str
) -> None:
    model, wavs, _ = trained
    options = DecodingOptions(method=method, beam_size=4)  # type: ignore[arg-type]
    for wav in wavs:  # greedy used to report 1.0 for anything
        result = model.transcribe(wav, options)
        conf = result.alternatives[0].confidence
        assert 0.0 < conf < 1.0
        # the hypothesis' confidence and its words' (mean CTC posterior over their frames) tell the same story
        assert abs(conf - result.confidence) < 0.35, (conf, result.confidence)


def test_long_audio_keeps_its_nbest(trained: tuple[Transcriber, list[Path], list[str]]) -> None:
    model, wavs, texts = trained
    gap = np.zeros(8000, dtype=np.float32)
    audio = np.concatenate([x for w in wavs for x in (load_audio(w), gap)])
    audio = np.tile(audio, int(np.ceil(32 * 16000 / len(audio))))  # over 30 s: decoded in pieces
    result = model.transcribe(audio, DecodingOptions(beam_size=3, nbest=3, ctc_weight=1.0))  # CTC: local
    alts = result.alternatives
    assert len(alts) == 3  # the pieces' n-best lists are combined, not dropped
    assert alts[0].text == result.text and len({a.text for a in alts}) == 3
    assert [a.score for a in alts] == sorted((a.score for a in alts), reverse=True)
    assert all(0.0 <= a.confidence <= 1.0 for a in alts)
    assert result.text.startswith(texts[0].split()[0])  # (a model of 2 s clips garbles 30 s pieces later on)


def test_overfit_bytes_input(trained: tuple[Transcriber, list[Path], list[str]]) -> None:
    model, wavs, texts = trained
    assert model.transcribe(wavs[1].read_bytes(), DecodingOptions(method="greedy")).text == texts[1]


def test_overfit_with_shallow_fusion(trained: tuple[Transcriber, list[Path], list[str]]) -> None:
    model, wavs, texts = trained
    lm = NGramLM.train(texts, model.tokenizer, order=3)
    options = DecodingOptions(beam_size=4, ctc_weight=0.5, lm_weight=0.3)
    results = transcribe_batch(model, list(wavs), options, lm=lm)
    assert [r.text for r in results] == texts
    assert all(r.alternatives[0].score < 0 for r in results)
