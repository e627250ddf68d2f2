"""``asr transcribe`` end to end: local mode and against the real server, every format, resume, failures."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from client_support import ServerThread, parse_cues, tiny_checkpoint

import asr
from client.cli import main
from client.formats import FORMATS

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pt")


@pytest.fixture(scope="module")
def server(checkpoint: Path) -> Iterator[ServerThread]:
    with ServerThread(asr.load_model(checkpoint, device="cpu")) as srv:
        yield srv


@pytest.fixture
def audio_dir(speech_dir: Path, tmp_path: Path) -> Path:
    """utt0..3 spread over a nested tree, plus a transcript file that must be ignored."""
    d = tmp_path / "audio"
    (d / "sub" / "deeper").mkdir(parents=True)
    shutil.copy(speech_dir / "utt0.wav", d / "a.wav")
    shutil.copy(speech_dir / "utt1.wav", d / "sub" / "b.wav")
    shutil.copy(speech_dir / "utt2.wav", d / "sub" / "deeper" / "c.wav")
    (d / "notes.txt").write_text("not audio\n")
    return d


@pytest.fixture(autouse=True)
def _no_token_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ASR_TOKEN", raising=False)


EXPECTED = ["a", "sub/b", "sub/deeper/c"]


def outputs(out: Path, fmt: str) -> list[str]:
    return sorted(p.relative_to(out).as_posix().removesuffix(f".{fmt}") for p in out.rglob(f"*.{fmt}"))


def check_output(path: Path, fmt: str) -> None:
    text = path.read_text()
    if fmt in ("srt", "vtt"):
        cues = parse_cues(text, fmt)
        assert cues, f"{path} has no cues"
    elif fmt == "json":
        assert json.loads(text)["text"]
    elif fmt == "jsonl":
        [line] = text.splitlines()
        assert json.loads(line)["id"].endswith(".wav")
    else:
        assert text.strip() and text.endswith("\n")


@pytest.mark.parametrize("fmt", FORMATS)
def test_local_every_format_mirrors_the_tree(
    fmt: str, audio_dir: Path, checkpoint: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    rc = main(
        [
            "transcribe",
            str(audio_dir),
            "--model",
            str(checkpoint),
            "-f",
            fmt,
            "-o",
            str(out),
            "--method",
            "greedy" if fmt != "json" else "beam",
            "--beam",
            "2",
        ]
    )
    assert rc == 0
    assert outputs(out, fmt) == EXPECTED
    for p in out.rglob(f"*.{fmt}"):
        check_output(p, fmt)
    assert not [p for p in out.rglob(".*")], "temporary files were left behind"


def test_resume_skips_done_files(
    audio_dir: Path, checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    args = [
        "transcribe",
        str(audio_dir),
        "--model",
        str(checkpoint),
        "-f",
        "srt",
        "-o",
        str(out),
        "--method",
        "greedy",
    ]
    assert main(args) == 0
    (out / "a.srt").write_text("SENTINEL")  # a finished output must not be redone
    (out / "sub" / "b.srt").unlink()  # as if the batch had been killed before this one
    capsys.readouterr()
    assert main(args) == 0
    assert (out / "a.srt").read_text() == "SENTINEL"
    check_output(out / "sub" / "b.srt", "srt")
    assert "skipping 2" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0
    check_output(out / "a.srt", "srt")


def test_a_corrupt_file_fails_alone(
    audio_dir: Path, checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (audio_dir / "sub" / "broken.wav").write_bytes(b"RIFF" + os.urandom(200))
    (audio_dir / "empty.flac").write_bytes(b"")
    out = tmp_path / "out"
    rc = main(["transcribe", str(audio_dir), "--model", str(checkpoint), "-f", "txt", "-o", str(out)])
    assert rc == 1
    assert outputs(out, "txt") == EXPECTED
    err = capsys.readouterr().err
    assert "broken.wav" in err and "empty.flac" in err and "2 of 5" in err
    assert "Traceback" not in err


def test_jsonl_file_resumes_by_id_and_drops_a_torn_line(
    audio_dir: Path, checkpoint: Path, tmp_path: Path
) -> None:
    target = tmp_path / "all.jsonl"
    args = [
        "transcribe",
        str(audio_dir),
        "--model",
        str(checkpoint),
        "-f",
        "jsonl",
        "-o",
        str(target),
        "--method",
        "greedy",
    ]
    assert main(args) == 0
    lines = target.read_text().splitlines()
    kept = [line for line in lines if json.loads(line)["id"] != "sub/b.wav"]
    target.write_text("\n".join(kept) + '\n{"id": "sub/b.wav", "te')  # killed in the middle of a record
    assert main(args) == 0
    records = [json.loads(line) for line in target.read_text().splitlines()]  # every line parses
    assert sorted(r["id"] for r in records) == ["a.wav", "sub/b.wav", "sub/deeper/c.wav"]


def test_jsonl_appended_to_stdout_resumes(audio_dir: Path, checkpoint: Path, tmp_path: Path) -> None:
    target = tmp_path / "stdout.jsonl"
    cmd = [
        sys.executable,
        "-m",
        "client.cli",
        "transcribe",
        str(audio_dir),
        "--model",
        str(checkpoint),
        "-f",
        "jsonl",
        "--method",
        "greedy",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for _ in range(2):
        with open(target, "a") as f:
            proc = subprocess.run(
                cmd, stdout=f, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT, timeout=120
            )
        assert proc.returncode == 0, proc.stderr
    assert "skipping 3" in proc.stderr
    assert len(target.read_text().splitlines()) == 3


def test_stdout_formats(audio_dir: Path, checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = ["--model", str(checkpoint), "--method", "greedy"]
    assert main(["transcribe", str(audio_dir / "a.wav"), *model]) == 0
    one = capsys.readouterr().out
    assert one.strip() and "\t" not in one
    assert main(["transcribe", str(audio_dir / "a.wav"), *model, "-f", "vtt"]) == 0
    parse_cues(capsys.readouterr().out, "vtt")
    assert main(["transcribe", str(audio_dir), *model]) == 0
    rows = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert sorted(r[0] for r in rows) == ["a.wav", "sub/b.wav", "sub/deeper/c.wav"]
    assert main(["transcribe", str(audio_dir), *model, "-f", "srt"]) == 2  # several subtitles need -o
    assert "-o DIR" in capsys.readouterr().err


def test_usage_errors_are_one_line(
    audio_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["transcribe", str(audio_dir), "--model", str(tmp_path / "missing.pt")]) == 1
    assert main(["transcribe", str(tmp_path / "nothing-here")]) == 1
    assert main(["transcribe", str(audio_dir), "--model", "x", "--ctc-weight", "3", "--server", "h:1"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 4, err
    greedy_nbest = ["--method", "greedy", "--alternatives", "3", "--model", str(tmp_path / "missing.pt")]
    assert main(["transcribe", str(audio_dir), *greedy_nbest]) == 2  # refused before the model loads
    assert "--alternatives must be 1" in capsys.readouterr().err


def test_help_has_examples(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("transcribe", "stream"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        assert "examples:" in capsys.readouterr().out


def test_remote_mode(
    server: ServerThread, audio_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (audio_dir / "bad.wav").write_bytes(b"garbage" * 50)
    out = tmp_path / "out"
    rc = main(
        [
            "transcribe",
            str(audio_dir),
            "--server",
            server.target,
            "--jobs",
            "3",
            "-f",
            "vtt",
            "-o",
            str(out),
            "--progress",
        ]
    )
    assert rc == 1
    assert outputs(out, "vtt") == EXPECTED
    for p in out.rglob("*.vtt"):
        check_output(p, "vtt")
    err = capsys.readouterr().err
    assert "bad.wav" in err and "decode" in err and "Traceback" not in err
    assert "RTF" in err  # the progress bar


def test_remote_auth_and_server_down_stop_the_batch(
    checkpoint: Path, audio_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with ServerThread(asr.load_model(checkpoint, device="cpu"), token="tok") as srv:
        assert main(["transcribe", str(audio_dir), "--server", srv.target]) == 1
        err = capsys.readouterr().err
        assert "bearer token" in err and len(err.strip().splitlines()) == 1, err
        assert main(["transcribe", str(audio_dir), "--server", srv.target, "--token", "tok"]) == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["transcribe", str(audio_dir), "--server", f"127.0.0.1:{port}", "--retries", "1"]) == 1
    err = capsys.readouterr().err
    assert f"127.0.0.1:{port}" in err and len(err.strip().splitlines()) == 1, err


def test_folder_walk_names_and_collisions(
    speech_dir: Path, checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "tree"
    (d / ".cache").mkdir(parents=True)
    (d / "real").mkdir()
    shutil.copy(speech_dir / "utt0.wav", d / ".cache" / "junk.wav")  # under a hidden folder: left out
    shutil.copy(speech_dir / "utt1.wav", d / "real" / "y.wav")
    (d / "alias.wav").symlink_to(d / "real" / "y.wav")  # a link and its target each get their output
    out = tmp_path / "out"
    base = ["--model", str(checkpoint), "--method", "greedy", "-o", str(out)]
    assert main(["transcribe", str(d), *base]) == 0
    assert outputs(out, "txt") == ["alias", "real/y"]
    # a.wav and a.mp3 would both write a.txt: refused before anything is transcribed
    shutil.copy(speech_dir / "utt2.wav", d / "real" / "y.flac")
    capsys.readouterr()
    assert main(["transcribe", str(d), *base, "-o", str(tmp_path / "out2")]) == 2
    err = capsys.readouterr().err
    assert "would both write" in err and "y.txt" in err, err
    assert not (tmp_path / "out2").exists()


def test_remote_batch_stops_at_once_when_interrupted(
    monkeypatch: pytest.MonkeyPatch, audio_dir: Path
) -> None:
    """Closing the results early (what Ctrl-C does) cancels the requests in flight instead of waiting."""
    import threading
    import time

    from client import transcribe_cli
    from client.cli import build_parser

    released = threading.Event()  # set when the channel closes: the calls in flight end

    class SlowClient:
        def __enter__(self) -> SlowClient:
            return self

        def __exit__(self, *exc: object) -> None:
            self.close()

        def close(self) -> None:
            released.set()

        def recognize(self, path: Path, config: object) -> object:
            if path.name != "a.wav":  # the first file is quick, the others hang until the channel closes
                released.wait(20)
            raise OSError("cancelled")

    monkeypatch.setattr(transcribe_cli, "make_client", lambda args: SlowClient())
    args = build_parser().parse_args(["transcribe", str(audio_dir), "--server", "h:1", "--jobs", "2"])
    items, _ = transcribe_cli.collect([str(audio_dir)], (".wav",))
    results = transcribe_cli.run_remote(args, items)
    assert next(results).item.path.name == "a.wav"
    t0 = time.monotonic()
    results.close()  # the consumer stops while two requests are in flight
    assert released.is_set() and time.monotonic() - t0 < 5


def test_tta_speeds_local_and_remote(
    server: ServerThread, audio_dir: Path, checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wav = str(audio_dir / "a.wav")
    local = ["transcribe", wav, "--model", str(checkpoint), "--beam", "2"]
    assert main([*local, "--tta-speeds", "0.9,1.1"]) == 0
    assert capsys.readouterr().out.strip()
    assert main([*local, "--tta-speeds", "1.0"]) == 1
    assert "leave out 1.0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main([*local, "--tta-speeds", "fast"])
    assert exit_info.value.code == 2 and "'fast'" in capsys.readouterr().err
    remote = ["transcribe", wav, "--server", server.target, "--beam", "2"]
    assert main([*remote, "--tta-speeds", "0.9,1.1"]) == 0
    assert capsys.readouterr().out.strip()
    assert main([*remote, "--tta-speeds", "3"]) == 1  # INVALID_ARGUMENT from the server, for this file
    assert "tta_speeds" in capsys.readouterr().err
