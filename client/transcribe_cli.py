"""``asr transcribe PATH...``: batch transcription of files and folders, locally or on a server.

Outputs are written atomically (a temporary file, then a rename), so a killed batch never leaves a half file
and running the same command again resumes where it stopped: inputs whose output exists are skipped (unless
``--overwrite``); a single JSONL file, or stdout appended to a file, skips the ids it already holds.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from client import errors
from client.audio import AUDIO_EXTENSIONS, audio_duration
from client.cli import CLIError
from client.formats import EXTENSIONS, FORMATS, render
from client.types import Alternative, RecognitionConfig, Segment, Transcript, WordInfo

if TYPE_CHECKING:
    from asr.transcribe import Transcript as LocalTranscript

DESCRIPTION = """\
Transcribe audio files and folders, locally or on a server.

Outputs are written atomically (a temporary file, then a rename), so a killed batch never leaves half a file,
and running the same command again resumes where it stopped: inputs whose output exists are skipped (unless
--overwrite); a single JSONL file, or stdout appended to a file, skips the ids it already holds. A file that
fails is reported and the others go on; the exit code is 1 when any input failed.
"""

EXAMPLES = """\
examples:
  asr transcribe speech.wav                          text of one file, bundled model
  asr transcribe audio/ --format srt -o subs/        a folder, recursively, one .srt per file
  asr transcribe audio/ --format jsonl -o all.jsonl  one JSON line per file; rerun to resume
  asr transcribe audio/ --format jsonl >> all.jsonl  the same through stdout
  asr transcribe audio/ --server localhost:50051 --jobs 8 --format vtt -o subs/
  asr transcribe a.flac --model exp/run1/best.pt --method greedy --format json
  asr transcribe call.wav --phrase Kubernetes --phrase "New York"    hints: names to favour
"""

# Errors that would hit every file the same way: stop the batch instead of failing each file.
FATAL = (errors.Unauthenticated, errors.PermissionDenied, errors.Unavailable)


@dataclass(frozen=True)
class Item:
    path: Path
    id: str  # path relative to the folder it was found in (or the file name); names its output and record


@dataclass(frozen=True)
class Outcome:
    item: Item
    transcript: Transcript | None
    error: Exception | None
    seconds: float  # audio duration


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "transcribe",
        help="transcribe files and folders, locally or on a server",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="audio files and folders (searched recursively)")
    out = p.add_argument_group("output")
    out.add_argument("-f", "--format", choices=FORMATS, default="txt", help="output format (default: txt)")
    out.add_argument(
        "-o", "--output", metavar="DIR|FILE.jsonl",
        help="folder for one output per input, mirroring relative paths; with --format jsonl a .jsonl path "
        "collects all records in one file. Default: stdout",
    )
    out.add_argument("--overwrite", action="store_true", help="redo inputs whose output already exists")
    out.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=None,
        help="progress bar on stderr (default: when stderr is a terminal)",
    )
    out.add_argument(
        "--extensions", default=",".join(AUDIO_EXTENSIONS),
        help="file extensions picked up in folders (default: %(default)s)",
    )
    where = p.add_argument_group("local mode (default)")
    where.add_argument(
        "-m", "--model", help="model name (models/NAME.pt) or checkpoint; remote: a name the server lists"
    )
    where.add_argument("--device", help="cpu, cuda, cuda:1... (default: cuda when available)")
    where.add_argument("--batch-size", type=int, default=16, help="recordings decoded together (default: 16)")
    remote = p.add_argument_group("remote mode")
    remote.add_argument("-s", "--server", metavar="HOST:PORT", help="transcribe on this server instead")
    remote.add_argument("-j", "--jobs", type=int, default=4, help="concurrent requests (default: 4)")
    add_connection_args(remote)
    dec = p.add_argument_group("decoding")
    dec.add_argument("--method", choices=("greedy", "beam"), help="decoding method (default: beam)")
    dec.add_argument("--beam", type=int, help="beam size")
    dec.add_argument("--ctc-weight", type=float, help="CTC weight in joint decoding, in [0, 1]")
    dec.add_argument("--alternatives", type=int, default=1, help="n-best per segment (json, jsonl)")
    dec.add_argument(
        "--tta-speeds", type=speed_list, default=(), metavar="S1,S2",
        help="test-time augmentation: also decode the audio played at these speeds and let the views vote "
        "(e.g. 0.9,1.1: about 5x the decoding time; beam only)",
    )
    dec.add_argument("--lm", metavar="PATH", help="local mode: language model from 'asr lm train'")
    dec.add_argument(
        "--lm-weight", type=float,
        help="language model weight in beam search (default with --lm: 0.3); remote: of the server's LM",
    )
    add_phrase_args(dec)
    p.set_defaults(func=run)


def speed_list(text: str) -> tuple[float, ...]:
    """``"0.9,1.1"`` -> ``(0.9, 1.1)`` for ``--tta-speeds``; the range is checked where it decodes."""
    try:
        return tuple(float(x) for x in text.split(",")) if text.strip() else ()
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of speeds such as 0.9,1.1") from None


def add_phrase_args(group: Any) -> None:
    group.add_argument(
        "--phrase", action="append", default=[], metavar="TEXT",
        help="a phrase hint: a name or term to favour (repeat the flag for several)",
    )
    group.add_argument("--phrases", metavar="FILE", help="phrase hints, one per line")
    group.add_argument(
        "--phrase-boost", type=float, help="score per token of a completed hint (0..10; default 1)"
    )


def phrases_from_args(args: argparse.Namespace) -> tuple[str, ...]:
    phrases = list(args.phrase)
    if args.phrases:
        try:
            lines = Path(args.phrases).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise CLIError(f"cannot read --phrases {args.phrases}: {exc.strerror or exc}", code=1) from exc
        phrases += [line.strip() for line in lines if line.strip()]
    return tuple(phrases)


def add_connection_args(
    group: Any,
    *,
    timeout: float | None = 300.0,
    timeout_help: str = "seconds per request (default: 300)",
) -> None:
    """Options shared by every command that talks to a server; ``timeout`` is ``--timeout``'s default."""
    group.add_argument(
        "--token", default=os.environ.get("ASR_TOKEN"), help="bearer token (default: $ASR_TOKEN)"
    )
    group.add_argument("--tls", action="store_true", help="connect with TLS (system roots unless --ca)")
    group.add_argument("--ca", metavar="PEM", help="CA certificate to trust (implies --tls)")
    group.add_argument("--cert", metavar="PEM", help="client certificate for mutual TLS (with --key)")
    group.add_argument("--key", metavar="PEM", help="client private key for mutual TLS")
    group.add_argument("--timeout", type=float, default=timeout, help=timeout_help)
    group.add_argument("--retries", type=int, default=3, help="retries when the server is unavailable")


def make_client(args: argparse.Namespace) -> Any:
    from client.sdk import Client

    if bool(args.cert) != bool(args.key):
        raise CLIError("--cert and --key go together (mutual TLS)")
    return Client(
        args.server, tls=args.tls, root_certificates=args.ca, client_certificate=args.cert,
        client_key=args.key, token=args.token, timeout=args.timeout, retries=args.retries,
    )


# ------------------------------------------------------------------------------------------------------------
# Inputs and outputs


def collect(paths: list[str], extensions: tuple[str, ...]) -> tuple[list[Item], list[str]]:
    """Files named on the command line (any extension) and audio files found under folders, sorted.

    Hidden files and everything under hidden folders (``.git``, ``.cache``...) are left out. A file reached
    again through another argument is transcribed once; inside one folder every name is kept (a symlink and
    the file it points to each get their output)."""
    items: list[Item] = []
    missing: list[str] = []
    seen: set[Path] = set()
    for arg in paths:
        root = Path(arg)
        if root.is_dir():
            found = sorted(
                p for p in root.rglob("*")
                if p.is_file()
                and p.suffix.lower() in extensions
                and not any(part.startswith(".") for part in p.relative_to(root).parts)
            )
            pairs = [(p, p.relative_to(root).as_posix()) for p in found]
        elif root.is_file():
            pairs = [(root, root.name)]
        else:
            missing.append(arg)
            continue
        keys = {p.resolve() for p, _ in pairs}
        items.extend(Item(p, rel) for p, rel in pairs if p.resolve() not in seen)
        seen |= keys
    return items, missing


def output_path(out_dir: Path, item: Item, fmt: str) -> Path:
    return out_dir / Path(item.id).with_suffix(EXTENSIONS[fmt])


def write_atomic(path: Path, text: str) -> None:
    """Write a temporary file beside ``path`` and rename it over: readers never see half a file.

    The file gets the usual permissions (0666 less the umask), not ``mkstemp``'s owner-only 0600.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "x", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def jsonl_ids(path: Path) -> set[str]:
    """Ids of the complete records in a JSONL file (a torn last line from a killed run is ignored)."""
    ids: set[str] = set()
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(rec, dict) and isinstance(rec.get("id"), str):
                    ids.add(rec["id"])
    except OSError:
        pass
    return ids


def _stdout_file() -> Path | None:
    """The regular file stdout is redirected to (``>> all.jsonl``), if any, to read its records back."""
    try:
        fd = sys.stdout.fileno()
        if stat.S_ISREG(os.fstat(fd).st_mode):
            link = Path(f"/proc/self/fd/{fd}")
            return link if link.exists() else None
    except (OSError, ValueError, AttributeError):
        pass
    return None


class Sink:
    """Where results go: one file per input, one JSONL file, or stdout."""

    def __init__(self, args: argparse.Namespace, n_inputs: int) -> None:
        self.fmt: str = args.format
        self.overwrite: bool = args.overwrite
        self.out_dir: Path | None = None
        self.stream: IO[str] | None = None
        self.done_ids: set[str] = set()
        self._own_stream = False
        self.multi = n_inputs > 1
        target = Path(args.output) if args.output else None
        if target is not None and not (self.fmt == "jsonl" and target.suffix == ".jsonl"):
            if target.is_file():
                raise CLIError(f"--output {target} is a file; give a folder (or a .jsonl file for jsonl)")
            self.out_dir = target
            return
        if self.fmt in ("srt", "vtt", "json") and self.multi:
            raise CLIError(
                f"--format {self.fmt} for several inputs needs an output folder (-o DIR), or use jsonl"
            )
        if target is not None:  # one JSONL file for all records
            if not self.overwrite:
                self.done_ids = jsonl_ids(target)
            target.parent.mkdir(parents=True, exist_ok=True)
            self.stream = open(target, "w" if self.overwrite else "a", encoding="utf-8")  # noqa: SIM115
            self._own_stream = True
            self._drop_torn_line(target)
        else:
            self.stream = sys.stdout
            redirected = _stdout_file()
            if self.fmt == "jsonl" and redirected is not None and not self.overwrite:
                self.done_ids = jsonl_ids(redirected)
                self._drop_torn_line(redirected)

    def _drop_torn_line(self, path: Path) -> None:
        """A run killed mid-write may leave a partial last line: cut it off so the file stays valid JSONL."""
        assert self.stream is not None
        try:
            data = path.read_bytes()
        except OSError:
            return
        if data and not data.endswith(b"\n"):
            self.stream.flush()
            os.ftruncate(self.stream.fileno(), data.rfind(b"\n") + 1)

    def is_done(self, item: Item) -> bool:
        if self.overwrite:
            return False
        if self.out_dir is not None:
            return output_path(self.out_dir, item, self.fmt).exists()
        return item.id in self.done_ids

    def write(self, item: Item, transcript: Transcript) -> None:
        text = render(self.fmt, transcript, item.id)
        if self.out_dir is not None:
            write_atomic(output_path(self.out_dir, item, self.fmt), text)
            return
        assert self.stream is not None
        if self.fmt == "txt" and self.multi:
            text = f"{item.id}\t{transcript.text}\n"
        self.stream.write(text)  # one write per record: a kill leaves at most one torn line
        self.stream.flush()

    def close(self) -> None:
        if self._own_stream and self.stream is not None:
            self.stream.close()


# ------------------------------------------------------------------------------------------------------------
# Engines: each yields one Outcome per item, in any order.


def recognition_config(args: argparse.Namespace) -> RecognitionConfig:
    return RecognitionConfig(
        model=args.model if args.server and args.model else "",
        max_alternatives=args.alternatives,
        method=args.method,
        beam_size=args.beam,
        ctc_weight=args.ctc_weight,
        lm_weight=args.lm_weight,
        phrases=phrases_from_args(args),
        phrase_boost=args.phrase_boost,
        tta_speeds=args.tta_speeds,
    )


def run_remote(args: argparse.Namespace, items: list[Item]) -> Iterator[Outcome]:
    if args.jobs < 1:
        raise CLIError(f"--jobs must be at least 1, got {args.jobs}")
    if args.lm:
        raise CLIError("--lm is for local mode; a server decodes with its own LM (asr serve --lm)")
    config = recognition_config(args)
    with make_client(args) as client, ThreadPoolExecutor(args.jobs) as pool:

        def one(item: Item) -> Outcome:
            try:
                t = client.recognize(item.path, config)
                return Outcome(item, t, None, t.duration)
            except FATAL:
                raise
            except (errors.ASRError, OSError, ValueError) as exc:
                return Outcome(item, None, exc, audio_duration(item.path))

        pending: set[Future[Outcome]] = set()
        queue = iter(items)
        try:
            # Keep at most 2 x jobs requests in flight, so a huge folder does not read every file up front.
            for item in queue:
                pending.add(pool.submit(one, item))
                if len(pending) >= 2 * args.jobs:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for f in done:
                        yield f.result()
            while pending:  # the rest as they finish, not in submission order
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in done:
                    yield f.result()
        finally:
            if pending:  # stopped early (Ctrl-C, or the consumer closed): do not wait for requests in flight
                for f in pending:
                    f.cancel()
                client.close()  # the running calls end now, CANCELLED
                pool.shutdown(wait=False, cancel_futures=True)


def from_local(t: LocalTranscript, model: str = "local") -> Transcript:
    words = tuple(WordInfo(w.word, w.start, w.end, w.confidence) for w in t.words)
    alts = tuple(
        Alternative(a.text, a.confidence, words if i == 0 else ()) for i, a in enumerate(t.alternatives)
    ) or (Alternative(t.text, 0.0, words),)
    return Transcript(t.text, (Segment(0.0, t.duration, alts),), t.duration, model=model)


def run_local(args: argparse.Namespace, items: list[Item]) -> Iterator[Outcome]:
    import asr
    from asr.audio import SAMPLE_RATE, AudioError
    from asr.transcribe import transcribe_batch

    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.method == "greedy" and args.alternatives > 1:  # as a server answers it
        raise CLIError(
            f"--alternatives must be 1 with --method greedy (one best path), got {args.alternatives}"
        )
    from asr.biasing import check_phrases
    from asr.lm_cli import lm_from_args

    model = asr.load_model(args.model, device=args.device)
    name = Path(args.model).stem if args.model else "default"  # as `asr models` and a server name it
    lm, lm_weight = lm_from_args(args, model)
    phrases = phrases_from_args(args)
    check_phrases(model.tokenizer, phrases)  # a hint the model cannot spell stops the batch before it starts
    options = asr.DecodingOptions(
        method=args.method or "beam",
        beam_size=args.beam or 10,
        ctc_weight=0.3 if args.ctc_weight is None else args.ctc_weight,
        nbest=args.alternatives,
        lm_weight=lm_weight,
        phrases=phrases,
        phrase_boost=asr.DecodingOptions.phrase_boost if args.phrase_boost is None else args.phrase_boost,
        tta_speeds=args.tta_speeds,
    )
    for k in range(0, len(items), args.batch_size):
        batch = items[k : k + args.batch_size]
        loaded = []
        for item in batch:
            try:
                loaded.append((item, asr.load_audio(item.path)))
            except (AudioError, OSError) as exc:
                yield Outcome(item, None, exc, 0.0)
        if not loaded:
            continue
        try:
            results = transcribe_batch(
                model, [w for _, w in loaded], options, batch_size=args.batch_size, lm=lm
            )
        except Exception:  # isolate the recording that breaks the batch
            for item, wave in loaded:
                try:
                    t = transcribe_batch(model, [wave], options, lm=lm)[0]
                    yield Outcome(item, from_local(t, name), None, len(wave) / SAMPLE_RATE)
                except Exception as exc:
                    yield Outcome(item, None, exc, len(wave) / SAMPLE_RATE)
            continue
        for (item, wave), t in zip(loaded, results, strict=True):
            yield Outcome(item, from_local(t, name), None, len(wave) / SAMPLE_RATE)


# ------------------------------------------------------------------------------------------------------------


def _progress_bar(args: argparse.Namespace, total: int) -> Any:
    show = args.progress if args.progress is not None else sys.stderr.isatty()
    if not show:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="file", file=sys.stderr, dynamic_ncols=True)


def run(args: argparse.Namespace) -> int:
    extensions = tuple(e if e.startswith(".") else f".{e}" for e in args.extensions.lower().split(",") if e)
    items, missing = collect(args.paths, extensions)
    for arg in missing:
        print(f"asr transcribe: {arg}: error: no such file or folder", file=sys.stderr)
    if not items and not missing:
        raise CLIError(f"no audio files ({', '.join(extensions)}) under {' '.join(args.paths)}", code=1)
    sink = Sink(args, len(items))
    outputs: dict[str, Path] = {}
    for it in items:  # one output per input: a.wav and a.mp3 would both write a.txt
        name = str(output_path(sink.out_dir, it, args.format)) if sink.out_dir else it.id
        if name in outputs:
            raise CLIError(
                f"{it.path} and {outputs[name]} would both write {name}; transcribe them apart "
                "(or into one JSONL file: -f jsonl)"
            )
        outputs[name] = it.path
    todo = [it for it in items if not sink.is_done(it)]
    skipped = len(items) - len(todo)
    if skipped:
        print(f"asr transcribe: skipping {skipped} file(s) done before (--overwrite redoes)", file=sys.stderr)
    failed = len(missing)
    audio_seconds = 0.0
    start = time.monotonic()
    bar = _progress_bar(args, len(todo))
    def log(message: str) -> None:
        if bar is not None:
            bar.write(message, file=sys.stderr)  # above the bar, which stays at the bottom
        else:
            print(message, file=sys.stderr)

    try:
        engine = run_remote if args.server else run_local
        for outcome in engine(args, todo) if todo else ():
            audio_seconds += outcome.seconds
            if outcome.transcript is not None:
                sink.write(outcome.item, outcome.transcript)
            else:
                failed += 1
                log(f"asr transcribe: {outcome.item.path}: error: {outcome.error}")
            if bar is not None:
                elapsed = time.monotonic() - start
                rtf = elapsed / audio_seconds if audio_seconds else 0.0
                bar.set_postfix_str(f"audio {audio_seconds / 3600:.3f} h, RTF {rtf:.3f}", refresh=False)
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        sink.close()
    if failed:
        print(f"asr transcribe: {failed} of {len(items) + len(missing)} input(s) failed", file=sys.stderr)
        return 1
    return 0
