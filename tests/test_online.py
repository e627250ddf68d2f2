"""asr.online without the server: partials that grow chunk by chunk, blank endpoints, each chunk encoded once,
finals equal to offline decoding of the same utterance by the chunked model.

The model is the bundled streaming model (since session 36 the default's network over a block-causal
Whisper front end) with its own 160 ms chunks and 80 ms look-ahead: real speech, real blanks.
(tests/test_whisper_stream.py tests the Whisper front end's streaming itself.)
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
from collections.abc import Callable

import numpy as np
import pytest
import torch
from conftest import silence, tiny_model

from asr import ASRModel, Transcriber, load_model
from asr.alignment import voiced_span
from asr.audio import SAMPLE_RATE
from asr.decoding import DecodingOptions
from asr.endpointing import EndpointConfig
from asr.growing_search import UtteranceSearch
from asr.online import CATCH_UP_CHUNKS, FinalPass, OnlineRecognizer, OnlineStream, _spliced, make_recognizer
from asr.streaming import Recognizer, RecognizerConfig, StreamOptions, StreamResult
from asr.tokenizer import CharTokenizer
from asr.transcribe import decode_encoded, transcribe
from asr.word_lm import WordLM

CHUNK = SAMPLE_RATE // 10  # 100 ms messages
OPTS = StreamOptions(decoding=DecodingOptions(beam_size=4))
CONFIRMED = dataclasses.replace(OPTS, lookahead_results=False)  # partials from encoded chunks only


def chunked(model: ASRModel, chunk: int = 4, lookahead: int = 2) -> Transcriber:
    """``model`` with these chunk sizes; its look-ahead read as whole-utterance encoding reads it, whenever
    the audio arrives (not ``lookahead_block_when_arrived``), so that streams equal their batch encoding."""
    enc = dataclasses.replace(
        model.config.encoder,
        chunk_frames=chunk,
        lookahead_frames=lookahead,
        lookahead_block_when_arrived=False,
    )
    out = Transcriber(dataclasses.replace(model.config, encoder=enc), model.tokenizer)
    out.load_state_dict(model.state_dict())
    return out.eval()


@pytest.fixture(scope="module")
def model() -> Transcriber:
    return chunked(load_model("streaming", device="cpu"))


def feed(
    rec: Recognizer, s: OnlineStream, audio: np.ndarray, chunk: int = CHUNK
) -> list[tuple[float, StreamResult]]:
    """Real-time-like: accept a message, decode when ready; each result with the stream time it came at
    (``inf``: after the end of input)."""
    out: list[tuple[float, StreamResult]] = []
    for i in range(0, len(audio), chunk):
        rec.accept_audio(s, audio[i : i + chunk])
        while rec.is_ready(s):
            rec.decode_streams([s])
        out += [(min(i + chunk, len(audio)) / SAMPLE_RATE, r) for r in rec.pop_results(s)]
    rec.input_finished(s)
    while rec.is_ready(s):
        rec.decode_streams([s])
    out += [(float("inf"), r) for r in rec.pop_results(s)]
    assert s.is_done
    return out


def speech_end(audio: np.ndarray) -> float:
    """Seconds at which the voice in ``audio`` ends."""
    return voiced_span(audio)[1]


def feed_split(
    rec: OnlineRecognizer,
    s: OnlineStream,
    audio: np.ndarray,
    finals_call: Callable[[], None],
    chunks_call: Callable[[], None],
    finals: list[StreamResult] | None = None,
) -> list[str]:
    """Real-time-like, as a server with a finals lane calls the recognizer: ``finals_call()`` whenever the
    stream has a final due, else ``chunks_call()``; the finals' texts (and the finals, to ``finals``)."""
    out: list[str] = []
    for i in range(0, len(audio) + CHUNK, CHUNK):
        if i < len(audio):
            rec.accept_audio(s, audio[i : i + CHUNK])
        else:
            rec.input_finished(s)
        while rec.is_ready(s):
            (finals_call if rec.has_final(s) else chunks_call)()
        done = [r for r in rec.pop_results(s) if r.is_final]
        out += [r.text for r in done]
        if finals is not None:
            finals += done
    return out


@pytest.fixture(scope="module")
def conversation(speech: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([silence(0.6), speech[3], silence(1.5), speech[2], silence(1.5)])


GREEDY = RecognizerConfig(searched_partials=False)  # partials from greedy CTC alone


@pytest.fixture(scope="module")
def streamed(model: Transcriber, conversation: np.ndarray) -> tuple[OnlineRecognizer, list]:
    rec = OnlineRecognizer(model, GREEDY)
    return rec, feed(rec, rec.create_stream(CONFIRMED), conversation)


@pytest.fixture(scope="module")
def streamed_ahead(model: Transcriber, conversation: np.ndarray) -> list[tuple[float, StreamResult]]:
    rec = OnlineRecognizer(model, GREEDY)
    return feed(rec, rec.create_stream(OPTS), conversation)


def test_partials_grow_chunk_by_chunk_before_the_final(streamed: tuple[OnlineRecognizer, list]) -> None:
    _, results = streamed
    finals = [r for _, r in results if r.is_final]
    assert [f.utterance for f in finals] == [0, 1]
    for k in (0, 1):
        mine = [(t, r) for t, r in results if r.utterance == k]
        partials = [r for _, r in mine if not r.is_final]
        assert len(partials) >= 3 and mine[-1][1].is_final
        for a, b in itertools.pairwise(partials):  # greedy CTC extended, never redone
            assert b.text.startswith(a.text) and len(b.text) > len(a.text) and a.end < b.end
        assert all(r.stability < 1.0 for r in partials) and mine[-1][1].stability == 1.0
        assert all(t < float("inf") for t, _ in mine)  # all before the input ended, the final too


def test_searched_partials_show_the_growing_search_words_before_the_final(
    model: Transcriber, speech: list[np.ndarray]
) -> None:
    """With growing finals, partials show the words the search has read (attention and CTC prefix scores)
    in place of greedy CTC's: before each final, the last partial agrees with the final on at least as many
    leading words as greedy CTC's did, on more for some utterance; the finals are the same. All four
    utterances: where greedy CTC already spells a final's words (round 2 of the streaming model does on
    two of them), the search has nothing to correct."""
    audio = np.concatenate([silence(0.6)] + [x for u in speech for x in (u, silence(1.5))])
    rec = OnlineRecognizer(model, GREEDY)
    greedy = feed(rec, rec.create_stream(CONFIRMED), audio)
    rec = OnlineRecognizer(model)
    searched = feed(rec, rec.create_stream(CONFIRMED), audio)
    finals = [r.text for _, r in greedy if r.is_final]
    assert [r.text for _, r in searched if r.is_final] == finals

    def agreed(results: list[tuple[float, StreamResult]], k: int) -> int:
        last = [r.text for _, r in results if r.utterance == k and not r.is_final][-1].split()
        return next(
            (i for i, (a, b) in enumerate(zip(last, finals[k].split(), strict=False)) if a != b), len(last)
        )

    gains = [agreed(searched, k) - agreed(greedy, k) for k in range(len(finals))]
    assert min(gains) >= 0 and max(gains) > 0, gains
    assert len([r for _, r in searched if not r.is_final]) >= len([r for _, r in greedy if not r.is_final])


def test_spliced_partials_join_the_search_words_to_greedy_ctc_at_a_word() -> None:
    tok = CharTokenizer.default()
    e = tok.encode
    assert _spliced(tok, e("THANK Y"), e("TANKO VERI MA")) == e("THANK VERI MA")
    space = [tok.space_id]
    assert _spliced(tok, e("THANK YOU") + space, e("TANKO VERI MA")) == e("THANK YOU MA")
    assert _spliced(tok, e("THAN"), e("TANKO VE")) == e("TANKO VE")  # no finished word yet
    # greedy CTC split a word the search reads as one: joined at the greedy word start nearest by count
    assert _spliced(tok, e("ALPENTHE") + space, e("UKE THE GO")) == e("ALPENTHE GO")
    # greedy CTC has no later word: the tokens the search has not read yet follow the whole hypothesis
    assert _spliced(tok, e("THANK YOU VE"), e("TANKOVERI")) == e("THANK YOU VE")
    assert _spliced(tok, e("THANK YOU VE"), e("TANKOVERIMATS")) == e("THANK YOU VES")
    assert _spliced(tok, [], e("TA")) == e("TA")


def test_lookahead_partials_come_sooner_and_finals_are_the_same(
    streamed: tuple[OnlineRecognizer, list], streamed_ahead: list[tuple[float, StreamResult]]
) -> None:
    """Greedy CTC over the provisional look-ahead frames shows what a partial from encoded chunks only will
    show, as soon or sooner (and it may change there); the finals do not read the look-ahead."""
    _, confirmed = streamed
    finals = [r.text for _, r in confirmed if r.is_final]
    assert finals == [r.text for _, r in streamed_ahead if r.is_final]
    ahead = [(t, r) for t, r in streamed_ahead if not r.is_final]
    sooner = 0
    for t, r in confirmed:
        if r.is_final:
            continue
        shown = [u for u, a in ahead if a.utterance == r.utterance and a.text.startswith(r.text)]
        assert shown and min(shown) <= t, f"{r.text!r} at {t} s"
        sooner += min(shown) < t
    assert sooner >= 2


def test_blank_endpoint_ends_the_utterance_sooner_than_the_energy_rule(
    model: Transcriber, speech: list[np.ndarray]
) -> None:
    audio = np.concatenate([silence(0.5), speech[3], silence(2.0)])
    end = 0.5 + speech_end(speech[3])

    def final_at(blank_ms: int, ahead: bool = False) -> float:
        rec = OnlineRecognizer(model)
        endpoint = EndpointConfig(blank_ms=blank_ms, silence_ms=800)
        opts = dataclasses.replace(OPTS, endpoint=endpoint, lookahead_results=ahead)
        return next(t for t, r in feed(rec, rec.create_stream(opts), audio) if r.is_final)

    by_blanks, by_energy = final_at(240), final_at(0)
    assert by_energy - end >= 0.8  # the energy rule waits for its silence
    assert by_blanks - end < 0.6  # the model hears the speech end: blanks + look-ahead + one message
    assert by_energy - by_blanks >= 0.3
    assert final_at(240, ahead=True) <= by_blanks  # blanks read in the look-ahead count


def test_blanks_end_an_utterance_only_where_the_vad_hears_no_speech(
    model: Transcriber, speech: list[np.ndarray]
) -> None:
    """A steady hum after the speech: the model hears no words in it (blanks), the energy VAD hears sound.
    The blank run ends the utterance only once the hum stops (``blank_quiet_ms``), unless told not to
    ask the VAD."""
    t = np.arange(int(1.5 * SAMPLE_RATE)) / SAMPLE_RATE
    hum = (0.05 * np.sin(2 * np.pi * 150 * t)).astype(np.float32)
    end = 0.5 + speech_end(speech[3])
    voiced = speech[3][: round(speech_end(speech[3]) * SAMPLE_RATE)]  # the hum starts as the voice stops
    audio = np.concatenate([silence(0.5), voiced, hum, silence(2.0)])
    hum_end = end + 1.5

    def first_final(quiet: bool) -> tuple[float, StreamResult]:
        rec = OnlineRecognizer(model)
        endpoint = EndpointConfig(blank_ms=240, silence_ms=800, blank_quiet_ms=160 if quiet else 0)
        opts = dataclasses.replace(OPTS, endpoint=endpoint)
        return next((t, r) for t, r in feed(rec, rec.create_stream(opts), audio) if r.is_final)

    at, final = first_final(quiet=False)
    assert at - end < 0.8 and final.end < hum_end - 0.5  # cut in the hum
    at, final = first_final(quiet=True)
    assert at > hum_end and final.end >= hum_end - 0.1  # the hum stayed in the utterance


def test_each_chunk_is_encoded_once(
    streamed: tuple[OnlineRecognizer, list], conversation: np.ndarray
) -> None:
    rec, _ = streamed
    frames = len(conversation) / rec.samples_per_frame
    # every encoder frame of the stream once (utterances start where the last one's encoder stopped), but
    # the silence the gate dropped unencoded; only the end of input loses the few frames the front end
    # cannot fill
    assert frames - 3 <= rec.frames_encoded + rec.frames_skipped <= frames
    assert rec.frames_skipped * rec.frame_ms >= 1500  # of the 3.6 s of silence around the two sentences
    chunk = rec.encoder.config.chunk_frames
    assert rec.chunk_steps <= frames / chunk + 20  # whole chunks, but for the last of each utterance


def test_a_stream_behind_catches_up_a_few_chunks_per_call_until_its_input_ends(
    model: Transcriber, speech: list[np.ndarray]
) -> None:
    """A second of audio at once: a call encodes up to ``CATCH_UP_CHUNKS`` chunks of it, the stream that
    keeps up only its one (it is in the first step alone); the stream stays ready while it is behind; after
    ``input_finished`` one call encodes the rest."""
    rec = OnlineRecognizer(model)
    sizes: list[int] = []
    step = rec.encoder._step
    rec.encoder._step = lambda streams, ahead: sizes.append(len(streams)) or step(streams, ahead)  # type: ignore[method-assign]
    behind, live = rec.create_stream(OPTS), rec.create_stream(OPTS)
    rec.accept_audio(behind, speech[0][:SAMPLE_RATE])
    sent = 0
    while not rec.is_ready(live):  # the audio its first chunk step needs (a Whisper front: whole blocks)
        rec.accept_audio(live, speech[1][sent : sent + CHUNK])
        sent += CHUNK
    rec.decode_streams([behind, live])
    assert sizes == [2] + [1] * (CATCH_UP_CHUNKS - 1)
    assert rec.is_ready(behind) and not rec.is_ready(live)
    rec.decode_streams([behind])
    assert CATCH_UP_CHUNKS < rec.chunk_steps <= 2 * CATCH_UP_CHUNKS
    rec.input_finished(behind)
    rec.decode_streams([behind])
    assert not rec.is_ready(behind) and behind.is_done


@pytest.mark.parametrize("blank_ms", [0, 240])
@pytest.mark.parametrize("growing", [True, False])
def test_a_server_can_split_chunk_steps_from_finals(
    model: Transcriber, speech: list[np.ndarray], blank_ms: int, growing: bool
) -> None:
    """As a server with a finals lane calls it: a stream with a final due goes to ``interims=False`` calls,
    which decode its finals and encode no chunk until its input has ended; the others to ``finals=False``
    calls (chunk steps), which leave the finals of the utterances they close, and the finals thread grows
    the searches when it is idle (``grow_pending``, which gives way when told a final waits). An energy
    endpoint after a blank endpoint, in an utterance where nothing was heard, is no final due. The finals
    end where those of undivided calls end. Where an utterance starts after an energy endpoint depends on
    where the encoder was when the VAD's end was heard (a chunk later in undivided calls here), so only the
    first final's text must be the same: the second's may read a chunk more of leading silence (round 2 of
    the streaming model reads "GOD MORNING" as "GOD MARNING" then)."""
    audio = np.concatenate([silence(0.3), speech[0], silence(1.2), speech[1], silence(1.2)])
    opts = dataclasses.replace(OPTS, endpoint=EndpointConfig(blank_ms=blank_ms))
    config = RecognizerConfig(growing_finals=growing)
    rec = OnlineRecognizer(model, config)
    undivided = [r for _, r in feed(rec, rec.create_stream(opts), audio) if r.is_final]
    whole = [r.text for r in undivided]
    assert rec.finals_grown == (2 if growing else 0)
    rec = OnlineRecognizer(model, config)
    s = rec.create_stream(opts)
    finals_calls = 0

    def finals_call() -> None:
        nonlocal finals_calls
        assert s.closed or s.open.tokens or s.input_done
        steps = rec.chunk_steps
        rec.decode_streams([s], interims=False)
        assert rec.chunk_steps == steps or s.input_done
        assert not s.closed
        finals_calls += 1

    def chunks_call() -> None:
        rec.decode_streams([s], finals=False)
        if growing and s.open.tokens:
            assert rec.has_growth()
            assert rec.grow_pending(10.0, stop=lambda: True) == 0  # a final waits: nothing grown
            assert rec.has_growth()
        rec.grow_pending(10.0, stop=lambda: False)
        assert not rec.has_growth()

    finals: list[StreamResult] = []
    split = feed_split(rec, s, audio, finals_call, chunks_call, finals)
    assert len(split) == len(whole) == 2 and split[0] == whole[0]
    assert [r.end for r in finals] == pytest.approx([r.end for r in undivided])
    assert rec.finals_grown == (2 if growing else 0)
    assert 2 <= finals_calls <= 3  # one per final, and the end of input


def test_a_search_that_falls_behind_is_dropped_and_its_final_searched_whole(
    model: Transcriber, speech: list[np.ndarray]
) -> None:
    """With ``growing_lag_ms`` (a server's setting), a final whose search was never grown, or lags by more
    than that, is the whole search's, batched; one whose search kept up is the growing search's."""
    audio = np.concatenate([silence(0.3), speech[0], silence(1.2), speech[1], silence(1.2)])

    def finals(config: RecognizerConfig, grow_every: int) -> tuple[list[str], OnlineRecognizer]:
        rec = OnlineRecognizer(model, config)
        s = rec.create_stream(OPTS)
        calls = 0

        def chunks_call() -> None:
            nonlocal calls
            rec.decode_streams([s], finals=False)
            calls += 1
            if grow_every and calls % grow_every == 0:
                rec.grow_pending(10.0)

        out = feed_split(rec, s, audio, lambda: rec.decode_streams([s], interims=False), chunks_call)
        return out, rec

    whole, _ = finals(RecognizerConfig(growing_finals=False), 0)
    grown, _ = finals(RecognizerConfig(), 1)
    lagged = RecognizerConfig(growing_lag_ms=160)  # one chunk
    kept_up, rec = finals(lagged, 1)
    assert kept_up == grown and (rec.finals_grown, rec.finals_whole) == (2, 0)
    never, rec = finals(lagged, 0)
    assert never == whole and (rec.finals_grown, rec.finals_whole) == (0, 2)
    behind, rec = finals(lagged, 6)  # grown every sixth chunk: dropped once it lags
    assert behind == whole and rec.finals_whole == 2
    with pytest.raises(ValueError, match="growing_lag_ms"):
        RecognizerConfig(growing_lag_ms=-1)


def test_streams_share_one_encoder_step_per_chunk(model: Transcriber, speech: list[np.ndarray]) -> None:
    audios = [np.concatenate([silence(0.3), speech[i], silence(0.8)]) for i in (0, 1, 2)]
    alone = []
    for a in audios:
        rec = OnlineRecognizer(model)
        alone.append([r.text for _, r in feed(rec, rec.create_stream(OPTS), a)])
    rec = OnlineRecognizer(model)
    sizes: list[int] = []
    step = rec.encoder._step
    rec.encoder._step = lambda streams, ahead: sizes.append(len(streams)) or step(streams, ahead)  # type: ignore[method-assign]
    streams = [rec.create_stream(OPTS) for _ in audios]
    texts: list[list[str]] = [[] for _ in audios]
    n = max(len(a) for a in audios)
    for i in range(0, n + CHUNK, CHUNK):
        for s, a in zip(streams, audios, strict=True):
            if i < len(a):
                rec.accept_audio(s, a[i : i + CHUNK])
            else:
                rec.input_finished(s)
        rec.decode_streams(list(streams))
        for k, s in enumerate(streams):
            texts[k] += [r.text for r in rec.pop_results(s)]
    assert texts == alone
    assert max(sizes) == 3 and sum(sizes) > 2 * len(sizes)  # mostly all three streams in one call


def same_speech(a: list[str], b: list[str]) -> bool:
    """Finals of the same utterances cut a little apart (an energy cut a real-time stream learns of later,
    up to a chunk, its look-ahead and a message): each pair nearly the same text. The next utterance's
    audio then starts elsewhere, and a Whisper front end's blocks with it, so its first word may differ;
    audio lost at a cut or at the end would cost whole words."""
    if len(a) != len(b):
        return False
    return all(difflib.SequenceMatcher(None, x, y).ratio() > 0.85 for x, y in zip(a, b, strict=True))


def words(ws: tuple) -> list[tuple[str, float, float]]:
    return [(w.word, round(w.start, 4), round(w.end, 4)) for w in ws]


@pytest.mark.parametrize("growing", [True, False])
def test_finals_equal_offline_decoding_of_the_utterance(
    model: Transcriber, streamed: tuple[OnlineRecognizer, list], conversation: np.ndarray, growing: bool
) -> None:
    """Each final is the offline decoding of its utterance's audio: the whole beam search of the chunked
    encoder's frames, or with growing finals, a growing search given those frames chunk by chunk, each
    chunk's token limit from greedy CTC (so a final depends on its audio only, not on when its search
    grew)."""
    rec, results = streamed
    if not growing:
        rec = OnlineRecognizer(model, RecognizerConfig(growing_finals=False))
        results = feed(rec, rec.create_stream(CONFIRMED), conversation)
    chunk = model.config.encoder.chunk_frames
    for f in [r for _, r in results if r.is_final]:
        start = round(f.start * SAMPLE_RATE)
        n = (round(f.end * SAMPLE_RATE) - start) // rec.samples_per_frame
        wave = torch.from_numpy(conversation[start:])[None]
        feats, lengths = model.features(wave, torch.tensor([wave.size(1)]))
        enc, _ = model.encode(feats, lengths)  # the chunked encoder over the rest of the stream
        seg = conversation[start : round(f.end * SAMPLE_RATE)]
        found = None
        if growing:
            labels = model.ctc_log_probs(enc[:, :n])[0].argmax(-1).tolist()
            token_frames = [t for t, x in enumerate(labels) if x != 0 and (t == 0 or x != labels[t - 1])]
            search = UtteranceSearch(model, OPTS.decoding, None, (), None)
            found = [search.finish(list(enc[0, :n].split(chunk)), token_frames, n)]
            assert search.started  # it searched before its last chunk
        want = decode_encoded(
            model,
            enc[:, :n],
            torch.tensor([n]),
            OPTS.decoding,
            offsets=[f.start],
            durations=[len(seg) / SAMPLE_RATE],
            voiced=[voiced_span(seg)],
            found=found,
        )[0]
        assert [a.text for a in f.alternatives] == [a.text for a in want.alternatives]
        assert [a.score for a in f.alternatives] == pytest.approx(
            [a.score for a in want.alternatives], abs=1e-4
        )
        assert words(f.words) == words(want.words)
        for p in [r for _, r in results if r.utterance == f.utterance and not r.is_final]:
            m = (round(p.end * SAMPLE_RATE) - start) // rec.samples_per_frame
            greedy = decode_encoded(model, enc[:, :m], torch.tensor([m]), DecodingOptions(method="greedy"))
            assert p.text == greedy[0].text  # partials: greedy CTC over the utterance so far
    assert "VERY" in next(r.text for _, r in results if r.is_final)  # "THANK YOU VERY MUCH", heard


@pytest.fixture(scope="module")
def default_model() -> Transcriber:
    return load_model("default", device="cpu")


def test_a_final_model_decodes_each_utterance_again_for_its_final(
    model: Transcriber,
    default_model: Transcriber,
    streamed: tuple[OnlineRecognizer, list],
    conversation: np.ndarray,
) -> None:
    """Two passes: the streaming model's chunks give the same partials and cuts, and the final model (the
    offline default, whose Whisper front end cannot stream) decodes each utterance's audio for its final:
    its transcript of that audio, words timed from the stream start, no growing search."""
    rec = OnlineRecognizer(model, GREEDY, final_model=default_model)
    results = feed(rec, rec.create_stream(CONFIRMED), conversation)
    one_pass = streamed[1]
    assert [r.text for _, r in results if not r.is_final] == [r.text for _, r in one_pass if not r.is_final]
    finals = [r for _, r in results if r.is_final]
    assert [(f.start, f.end) for f in finals] == [(f.start, f.end) for _, f in one_pass if f.is_final]
    assert rec.finals_grown == 0 and len(finals) == 2
    for f in finals:
        seg = conversation[round(f.start * SAMPLE_RATE) : round(f.end * SAMPLE_RATE)]
        want = transcribe(default_model, seg, OPTS.decoding)
        assert [a.text for a in f.alternatives] == [a.text for a in want.alternatives]
        assert f.words and [w.word for w in f.words] == [w.word for w in want.words]
        for w, v in zip(f.words, want.words, strict=True):
            assert w.start == pytest.approx(v.start + f.start, abs=1e-3)
            assert w.end == pytest.approx(v.end + f.start, abs=1e-3)
    assert "THANK" in finals[0].text


def test_finals_cut_by_blank_endpoints_are_decoded_after_their_sentence_so_far(
    model: Transcriber, speech: list[np.ndarray]
) -> None:
    """Pauses shorter than the energy rule's silence: blank endpoints cut the sentence into utterances, and
    each final is decoded over the sentence's utterances so far (the decoder's input holds their frames),
    their finals' words forced as its transcript's start, and says the words after them. The energy
    endpoint ends the sentence; with ``final_context_seconds=0`` each utterance is decoded alone."""
    voiced = []
    for a in speech:
        lo, hi = voiced_span(a)
        voiced.append(a[round(lo * SAMPLE_RATE) : round(hi * SAMPLE_RATE)])
    sentence = [silence(0.5), voiced[0], silence(0.45), voiced[2], silence(0.3), voiced[1]]
    audio = np.concatenate([*sentence, silence(1.5), voiced[3], silence(1.5)])
    opts = dataclasses.replace(OPTS, endpoint=EndpointConfig(blank_ms=240, silence_ms=800))

    forced: list[str] = []  # what each final's decoding was made to start with

    def run(context_s: float) -> tuple[list[StreamResult], list[int]]:
        rec = OnlineRecognizer(model, RecognizerConfig(final_context_seconds=context_s))
        decoded: list[int] = []  # encoder frames each final was decoded from
        final_results = rec._final_results
        forced.clear()

        def spy(pieces, word_times, opts, enc, lengths, short=None, prefixes=None, found=None):  # type: ignore[no-untyped-def]
            decoded.extend(lengths.tolist())
            forced.extend(model.tokenizer.decode(p) for p in prefixes)
            return final_results(pieces, word_times, opts, enc, lengths, short, prefixes, found)

        rec._final_results = spy  # type: ignore[method-assign]
        return [r for _, r in feed(rec, rec.create_stream(opts), audio) if r.is_final], decoded

    alone, alone_frames = run(0.0)
    assert not any(forced)
    finals, frames = run(10.0)
    assert [(f.start, f.end) for f in finals] == [(f.start, f.end) for f in alone]  # the same cuts
    first_sentence = sum(f.end <= len(np.concatenate(sentence)) / SAMPLE_RATE + 0.3 for f in finals)
    assert 2 <= first_sentence < len(finals)
    own = alone_frames  # each utterance's own frames
    assert frames[:first_sentence] == list(itertools.accumulate(own[:first_sentence]))
    assert frames[first_sentence:] == own[first_sentence : len(own)]  # a new sentence, no context
    for f in finals:
        assert all(f.start <= w.start < w.end <= f.end + 0.05 for w in f.words), (f.start, f.end, f.words)
        assert f.text == " ".join(w.word for w in f.words)
    assert finals[0].text == alone[0].text  # nothing before it
    so_far = [" ".join(f.text for f in finals[:k] if f.text) for k in range(first_sentence)]
    assert [p.strip() for p in forced[:first_sentence]] == so_far
    assert not any(forced[first_sentence:])


def test_silence_waits_unencoded_and_each_utterance_starts_its_lead_before_the_speech(
    model: Transcriber, speech: list[np.ndarray]
) -> None:
    """``RecognizerConfig.silence_gate``: while the energy VAD hears no speech, nothing is encoded; an
    utterance starts ``pre_speech_ms`` before the speech the VAD heard (on an encoder frame), however fast
    its audio came; without the gate every chunk of silence is encoded."""
    audio = np.concatenate([silence(2.0), speech[2], silence(2.0), speech[3], silence(1.0)])
    opts = dataclasses.replace(OPTS, endpoint=EndpointConfig(pre_speech_ms=300))
    gated, ungated = OnlineRecognizer(model), OnlineRecognizer(model, RecognizerConfig(silence_gate=False))
    for rec in (gated, ungated):
        s = rec.create_stream(opts)
        for i in range(0, round(1.5 * SAMPLE_RATE), CHUNK):  # the first 1.5 s: silence
            rec.accept_audio(s, audio[i : i + CHUNK])
            while rec.is_ready(s):
                rec.decode_streams([s])
        assert (rec.frames_encoded == 0) is (rec is gated)
    assert ungated.frames_encoded * ungated.frame_ms >= 1000

    s = gated.create_stream(opts)
    finals = [r for _, r in feed(gated, s, audio) if r.is_final]
    onsets = [a / SAMPLE_RATE for a, _ in (voiced_span(w) for w in (speech[2], speech[3]))]
    speech_starts = [2.0 + onsets[0], 4.0 + len(speech[2]) / SAMPLE_RATE + onsets[1]]
    assert len(finals) == 2 and all(f.text for f in finals)
    frame = gated.frame_ms / 1000
    for f, at in zip(finals, speech_starts, strict=True):
        assert f.start == pytest.approx(round(f.start / frame) * frame)  # on an encoder frame
        assert at - 0.3 - 2 * frame <= f.start <= at - 0.3 + 0.06  # the VAD's onset is within a frame or two
    assert s.skipped_samples / SAMPLE_RATE >= 3.0  # of the 5 s of silence
    # sent at once, the same utterances
    at_once = gated.create_stream(opts)
    gated.accept_audio(at_once, audio)
    gated.input_finished(at_once)
    while not at_once.is_done:
        gated.decode_streams([at_once])
    assert [(r.start, r.text) for r in gated.pop_results(at_once) if r.is_final] == [
        (f.start, f.text) for f in finals
    ]


def test_silence_and_noise_give_nothing(model: Transcriber) -> None:
    rec = OnlineRecognizer(model)
    noise = (np.random.default_rng(0).standard_normal(4 * SAMPLE_RATE) * 1e-3).astype(np.float32)
    s = rec.create_stream(OPTS)
    assert feed(rec, s, np.concatenate([silence(1.0), noise])) == []
    assert s.idle_restarts >= 5  # no utterance keeps a long lead of silence
    assert rec.frames_encoded == 0  # the gate: no speech heard, nothing encoded, at the end of input too
    assert sum(len(a) for a in s.audio) < SAMPLE_RATE


def test_input_finished_flushes_the_last_utterance(model: Transcriber, speech: list[np.ndarray]) -> None:
    rec = OnlineRecognizer(model)
    results = feed(
        rec, rec.create_stream(OPTS), np.concatenate([silence(0.3), speech[0][: -SAMPLE_RATE // 10]])
    )
    finals = [r for t, r in results if r.is_final]
    assert len(finals) == 1 and finals[0].text


def test_the_end_of_input_arriving_while_features_are_computed_waits_for_its_samples(
    model: Transcriber, speech: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a server the last audio and the end of input come on the event loop's thread while a model thread
    computes the stream's features: the encoder must not end before those last samples are in it (it once
    did, and the next round's push failed: "push() after finish()")."""
    audio = np.concatenate([silence(0.3), speech[0], silence(0.3)])
    ref = OnlineRecognizer(model)
    whole = feed(ref, ref.create_stream(OPTS), audio)
    rec = OnlineRecognizer(model)
    s = rec.create_stream(OPTS)
    cut = len(audio) - SAMPLE_RATE // 2
    rec.accept_audio(s, audio[:cut])
    features = rec._features

    def meanwhile(samples: list[np.ndarray]) -> list[torch.Tensor]:
        if not s.input_done:  # the other thread's turn, between the take and the push
            rec.accept_audio(s, audio[cut:])
            rec.input_finished(s)
        return features(samples)

    monkeypatch.setattr(rec, "_features", meanwhile)
    while rec.is_ready(s):
        rec.decode_streams([s])
    assert s.is_done
    finals = [r.text for r in rec.pop_results(s) if r.is_final]
    assert finals == [r.text for _, r in whole if r.is_final]


def test_the_end_of_input_during_a_waiting_final_keeps_the_last_audio(
    model: Transcriber, speech: list[np.ndarray]
) -> None:
    """A server's finals-only call on a stream whose input has just ended, with its last samples not yet
    encoded (the call encodes no chunks while an earlier final waits): the last utterance must wait for
    them, not end where the encoder stood (it once did, dropping the end of the audio)."""
    audio = np.concatenate([speech[0], silence(1.2), speech[1], silence(0.3)])
    ref = OnlineRecognizer(model)
    whole = [r.text for _, r in feed(ref, ref.create_stream(OPTS), audio) if r.is_final]
    rec = OnlineRecognizer(model)
    s = rec.create_stream(OPTS)
    head = len(speech[0]) + int(1.2 * SAMPLE_RATE) + len(speech[1]) // 3
    rec.accept_audio(s, audio[:head])  # at once: the silence is heard before the encoder reaches it
    while rec.is_ready(s) and not rec.has_final(s):  # chunk steps only, until the first final is due
        rec.decode_streams([s], finals=False)
    assert s.closed, "the first utterance should be closed, its final waiting"
    while rec.encoder.ready(s.open.encoder):  # the chunks a model lane would go on encoding meanwhile
        rec.decode_streams([s], finals=False)
    rec.accept_audio(s, audio[head:])
    rec.input_finished(s)
    rec.decode_streams([s], interims=False)  # the finals lane
    while rec.is_ready(s):
        rec.decode_streams([s])
    assert s.is_done
    assert same_speech([r.text for r in rec.pop_results(s) if r.is_final], whole)


@pytest.mark.parametrize("seed", range(12))
def test_any_order_of_a_servers_calls_gives_the_same_finals(
    model: Transcriber, speech: list[np.ndarray], seed: int
) -> None:
    """A server interleaves audio messages of any size, the end of input, chunk steps (the model lane),
    finals-only calls (the finals lane) and idle growing as its threads and the network happen to run them:
    every order ends the stream with the finals of the plain real-time feed, over the same audio. (Their
    words may differ a little after the first: an utterance starts where the encoder stood when the one
    before it was cut, or where it dropped the silence after it, and that depends on the order; the LSTM's
    forward state starts there.)"""
    audio = np.concatenate([silence(0.2), speech[0], silence(1.2), speech[1], silence(0.3)])
    ref = OnlineRecognizer(model)
    whole = [r for _, r in feed(ref, ref.create_stream(OPTS), audio) if r.is_final]
    rng = np.random.default_rng(seed)
    weights = rng.dirichlet(np.ones(4))  # each schedule favours some calls: a busy lane, a fast sender...
    rec = OnlineRecognizer(model)
    s = rec.create_stream(OPTS)
    sent, finals = 0, []
    for _ in range(100_000):
        if s.is_done:
            break
        op = rng.choice(4, p=weights)
        if op == 0 and sent < len(audio):
            n = int(rng.integers(SAMPLE_RATE // 50, SAMPLE_RATE))  # 20 ms to 1 s
            rec.accept_audio(s, audio[sent : sent + n])
            sent += n
            if sent >= len(audio):
                rec.input_finished(s)
        elif op == 1 and rec.is_ready(s) and not rec.has_final(s):
            rec.decode_streams([s], finals=False)
        elif op == 2 and rec.has_final(s):
            rec.decode_streams([s], interims=False)
        elif op == 3:
            rec.grow_pending(1.0)
        finals += [r for r in rec.pop_results(s) if r.is_final]
    assert s.is_done
    assert len(finals) == len(whole) and finals[0].text == whole[0].text
    for a, b in zip(finals, whole, strict=True):
        assert abs(a.start - b.start) <= 0.4 and abs(a.end - b.end) <= 0.4, (a, b)


def test_a_beam_cap_searches_whole_finals_with_the_smaller_beam(
    model: Transcriber, conversation: np.ndarray
) -> None:
    """``decode_streams(beam_cap=...)``, a server's finals that are behind: finals searched whole are those of
    the smaller beam; a cap at or above the stream's beam changes nothing."""
    whole = dataclasses.replace(OPTS, growing_finals=False, decoding=DecodingOptions(beam_size=8))
    small = dataclasses.replace(whole, decoding=DecodingOptions(beam_size=1))

    def finals(opts: StreamOptions, cap: int) -> list[str]:
        rec = OnlineRecognizer(model)
        s = rec.create_stream(opts)
        return feed_split(
            rec,
            s,
            conversation,
            lambda: rec.decode_streams([s], interims=False, beam_cap=cap),
            lambda: rec.decode_streams([s], finals=False),
        )

    capped, one, full = finals(whole, 1), finals(small, 0), finals(whole, 0)
    assert capped == one != full and finals(whole, 8) == full
    assert DecodingOptions(beam_size=8, nbest=3).capped(2) == DecodingOptions(beam_size=2, nbest=2)
    assert DecodingOptions(beam_size=8).capped(0) == DecodingOptions(beam_size=8)
    assert DecodingOptions(method="greedy").capped(2) == DecodingOptions(method="greedy")


def test_single_utterance_stops_after_its_final(model: Transcriber, speech: list[np.ndarray]) -> None:
    rec = OnlineRecognizer(model)
    s = rec.create_stream(dataclasses.replace(OPTS, single_utterance=True))
    audio = np.concatenate([silence(0.3), speech[0], silence(1.0), speech[1], silence(1.0)])
    finals = [r for _, r in feed(rec, s, audio) if r.is_final]
    assert len(finals) == 1 and finals[0].end_of_single_utterance and s.ended


def test_offline_streams_on_a_chunked_model_equal_transcribe(
    model: Transcriber, speech: list[np.ndarray]
) -> None:
    rec = make_recognizer(model)
    assert isinstance(rec, OnlineRecognizer)
    s = rec.create_offline_stream(speech[1], OPTS)
    rec.decode_streams([s])
    assert [r.text for r in rec.pop_results(s)] == [transcribe(model, speech[1], OPTS.decoding).text]


def test_options_and_models_are_checked() -> None:
    with pytest.raises(ValueError, match="blank_ms"):
        EndpointConfig(blank_ms=-1)
    with pytest.raises(ValueError, match="chunked encoder"):
        OnlineRecognizer(tiny_model())
    assert type(make_recognizer(tiny_model())) is Recognizer
    assert isinstance(make_recognizer(chunked(tiny_model())), OnlineRecognizer)
    with pytest.raises(ValueError, match="for chunk-streaming models"):
        make_recognizer(tiny_model(), final_model=tiny_model())


@pytest.mark.parametrize("blank_ms", [0, 240])
def test_audio_sent_at_once_cuts_where_real_time_audio_does(
    model: Transcriber, conversation: np.ndarray, streamed: tuple[OnlineRecognizer, list], blank_ms: int
) -> None:
    """A client faster than real time (a file sent whole): the energy VAD runs ahead of the encoder, and no
    audio after a cut is lost, the input having ended before the last chunk was encoded."""
    opts = dataclasses.replace(OPTS, endpoint=dataclasses.replace(OPTS.endpoint, blank_ms=blank_ms))
    rec = OnlineRecognizer(model)
    paced = [r for _, r in feed(rec, rec.create_stream(opts), conversation) if r.is_final]
    s = rec.create_stream(opts)
    rec.accept_audio(s, conversation)
    rec.input_finished(s)
    while not s.is_done:
        rec.decode_streams([s])
    at_once = [r for r in rec.pop_results(s) if r.is_final]
    assert len(paced) >= 2  # two sentences; blank endpoints may cut one at a pause
    assert same_speech([r.text for r in at_once], [r.text for r in paced]), (at_once, paced)
    # a real-time stream learns of an energy endpoint silence_ms after the speech, when its encoder has passed
    # the cut that audio sent at once gets: up to a chunk, its look-ahead and a message later
    for a, p in zip(at_once, paced, strict=True):
        assert abs(a.start - p.start) <= 0.4 and abs(a.end - p.end) <= 0.4, (a, p)


def test_finals_past_the_second_pass_budget_are_the_streaming_models_own(
    model: Transcriber, default_model: Transcriber, conversation: np.ndarray
) -> None:
    """``second_pass_budget_ms``: a final whose second pass is expected to end past the budget (its batch's
    audio times the second pass's measured seconds per second of audio) is the streaming model's own, from
    its growing search as without a final model (a budget keeps that search on); within the budget, or
    before any second pass was timed, the final model decodes it."""
    one_pass = OnlineRecognizer(model, GREEDY)
    own = [r.text for _, r in feed(one_pass, one_pass.create_stream(CONFIRMED), conversation) if r.is_final]
    budget = dataclasses.replace(GREEDY, second_pass_budget_ms=300)
    rec = OnlineRecognizer(model, budget, final_model=default_model)
    rec.second_pass_rate = 1.0  # as if the second pass took as long as the audio: past any 300 ms budget
    finals = [r.text for _, r in feed(rec, rec.create_stream(CONFIRMED), conversation) if r.is_final]
    assert finals == own and len(finals) == 2
    assert (rec.finals_over_budget, rec.finals_second_pass, rec.finals_grown) == (2, 0, 2)
    roomy = dataclasses.replace(GREEDY, second_pass_budget_ms=60_000)
    fast = OnlineRecognizer(model, roomy, final_model=default_model)  # untimed, then timed within budget
    two_pass = [r.text for _, r in feed(fast, fast.create_stream(CONFIRMED), conversation) if r.is_final]
    assert (fast.finals_over_budget, fast.finals_second_pass) == (0, 2)
    assert fast.second_pass_rate > 0 and two_pass != own
    with pytest.raises(ValueError, match="second_pass_budget_ms must be >= 0"):
        RecognizerConfig(second_pass_budget_ms=-1)


def test_a_final_pass_decodes_with_the_final_models_own_lm_and_weights(
    model: Transcriber, default_model: Transcriber, conversation: np.ndarray
) -> None:
    """``FinalPass(model, lm, ctc_weight, lm_weight)``: the second pass decodes each utterance's audio as the
    final model would offline with its own settings (``asr.model_decoding``), whatever the stream's
    weights."""
    words = {"THANK": 5.0, "YOU": 9.0, "THE": 20.0}
    lm = WordLM.from_counts(words, {("THANK", "YOU"): 4.0}, default_model.tokenizer)
    own = FinalPass(default_model, lm, 0.5, 0.3)
    rec = OnlineRecognizer(model, GREEDY, final_model=own)
    finals = [r for _, r in feed(rec, rec.create_stream(CONFIRMED), conversation) if r.is_final]
    assert len(finals) == 2 and rec.finals_second_pass == 2
    theirs = dataclasses.replace(OPTS.decoding, ctc_weight=0.5, lm_weight=0.3)
    for f in finals:
        seg = conversation[round(f.start * SAMPLE_RATE) : round(f.end * SAMPLE_RATE)]
        assert f.text == transcribe(default_model, seg, theirs, lm=lm).text
    assert own.options(OPTS.decoding) == theirs
    assert FinalPass(default_model).options(OPTS.decoding) == OPTS.decoding  # no settings: the stream's
