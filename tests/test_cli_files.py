"""``wavlm-stream transcribe`` on every kind of file a user may hand it.

Complements tests/test_cli.py (which covers 16/8/48/44.1/22.05 kHz WAV in several sample
types, garbage and empty files, a truncated WAV, a missing checkpoint): codecs (FLAC, Ogg
Vorbis/Opus, MP3, AIFF, mu-law, 24-bit), extreme rates and channel counts, a directory, an
unreadable file, special files, non-finite or out-of-range float samples, silence, one
sample, odd file names, an unwritable --rttm path, and (slow) a very long file. Every case
ends in correct output (exit 0, JSON lines whose finals cover the file) or exit 2 with one
``error: ...`` line naming the problem, never a traceback, and never non-JSON on stdout.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import soundfile as sf

from checkpoints import write_ctc_checkpoint
from stream.cli import main

ARGS = ["--json", "--no-speakers", "--no-beam", "--chunk-ms", "320", "--left-ms", "640", "--right-ms", "160"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return str(write_ctc_checkpoint(tmp_path_factory.mktemp("cli_files") / "ckpt", hidden=16, layers=1, heads=2,
                                    conv_dim=8, seed=2))


def speech_like(seconds: float, rate: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    """float64 (n, channels) in [-1, 1]: noise bursts with pauses."""
    rng = np.random.default_rng(seed)
    n = max(1, int(seconds * rate))
    step = max(1, rate // 5)
    env = np.repeat(rng.uniform(0, 0.5, n // step + 1) * (rng.random(n // step + 1) > 0.3), step)[:n]
    return (rng.standard_normal((n, channels)) * env[:, None]).clip(-1, 1)


def transcribe(capsys, path, ckpt, *extra):
    code = main(["transcribe", str(path), "--model", ckpt, *ARGS, *extra])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def assert_events(out: str, seconds: float | None = None) -> list[dict]:
    """stdout is JSON lines of events; finals are in time order within the file."""
    events = [json.loads(line) for line in out.splitlines()]
    assert all(e["type"] in ("partial", "final", "speaker_change") for e in events)
    finals = [e for e in events if e["type"] == "final"]
    assert [f["segment"] for f in finals] == list(range(len(finals)))
    ends = [f["end"] for f in finals]
    assert ends == sorted(ends)
    if seconds is not None:
        assert all(0 <= f["start"] <= f["end"] <= seconds + 0.05 for f in finals)
    return events


def assert_user_error(code, out, err, *needles):
    assert code == 2, (code, err)
    assert out == ""
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, (needle, err)


# -- formats that must work --------------------------------------------------------------


@pytest.mark.parametrize("fmt,subtype,rate,channels", [
    ("FLAC", "PCM_16", 16000, 1),
    ("FLAC", "PCM_24", 96000, 2),
    ("OGG", "VORBIS", 44100, 2),
    ("OGG", "OPUS", 48000, 1),
    ("MP3", "MPEG_LAYER_III", 22050, 1),
    ("AIFF", "PCM_16", 11025, 1),
    ("WAV", "ULAW", 8000, 1),
    ("WAV", "ALAW", 8000, 1),
    ("WAV", "PCM_16", 8000, 1),
    ("WAV", "PCM_24", 32000, 1),
    ("WAV", "PCM_32", 16000, 1),
    ("WAV", "FLOAT", 192000, 1),
    ("WAV", "PCM_16", 4000, 1),
    ("WAV", "PCM_16", 16000, 8),
    ("WAVEX", "PCM_16", 48000, 6),
])
def test_codecs_rates_and_channels(tmp_path, capsys, ckpt, fmt, subtype, rate, channels):
    ext = {"OGG": "ogg", "MP3": "mp3", "AIFF": "aiff", "FLAC": "flac"}.get(fmt, "wav")
    path = tmp_path / f"a.{ext}"
    try:
        sf.write(str(path), speech_like(2.0, rate, channels), rate, format=fmt, subtype=subtype)
    except (sf.LibsndfileError, ValueError, TypeError) as e:  # libsndfile built without this codec
        pytest.skip(f"cannot write {fmt}/{subtype}: {e}")
    code, out, err = transcribe(capsys, path, ckpt)
    assert code == 0, err
    events = assert_events(out, seconds=2.2)
    assert any(e["type"] == "final" for e in events)


def test_same_audio_in_8_and_16_khz_and_16_bit_and_float_give_well_formed_output(tmp_path, capsys, ckpt):
    x = speech_like(3.0, 16000, seed=4)
    outs = {}
    for name, rate, subtype, data in [("16k-int", 16000, "PCM_16", x), ("16k-double", 16000, "DOUBLE", x),
                                       ("8k", 8000, "PCM_16", x[::2])]:
        path = tmp_path / f"{name}.wav"
        sf.write(str(path), data, rate, subtype=subtype)
        code, out, err = transcribe(capsys, path, ckpt)
        assert code == 0, err
        outs[name] = [e for e in assert_events(out, 3.1) if e["type"] == "final"]
    assert outs["16k-int"] and outs["16k-double"] and outs["8k"]


def test_silence_and_one_sample_and_odd_names(tmp_path, capsys, ckpt):
    cases = {"silence.wav": np.zeros((16000 * 2, 1)), "one sample.wav": np.array([[0.25]]),
             "ünïcødé 名前 $(x).wav": speech_like(1.0, 16000)}
    for name, data in cases.items():
        path = tmp_path / name
        sf.write(str(path), data, 16000)
        code, out, err = transcribe(capsys, path, ckpt)
        assert code == 0, (name, err)
        assert_events(out)


def test_float_samples_slightly_over_full_scale_still_work(tmp_path, capsys, ckpt):
    path = tmp_path / "hot.wav"
    sf.write(str(path), speech_like(2.0, 16000) * 3.0, 16000, subtype="FLOAT")   # peaks near 1.5
    code, out, err = transcribe(capsys, path, ckpt)
    assert code == 0, err
    assert_events(out, 2.1)


# -- inputs that must give one clear error line -----------------------------------------


@pytest.mark.parametrize("bad,needle", [(np.nan, "NaN"), (np.inf, "infinite"), (1e30, "[-1, 1]")])
def test_float_file_with_bad_samples_is_named(tmp_path, capsys, ckpt, bad, needle):
    data = speech_like(2.0, 16000, seed=1).astype(np.float32)
    data[20000, 0] = bad
    path = tmp_path / "bad.wav"
    sf.write(str(path), data, 16000, subtype="FLOAT")
    code = main(["transcribe", str(path), "--model", ckpt, *ARGS])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    assert code == 2 and err.startswith("error: ") and needle in err and "bad.wav" in err, err
    for line in out.splitlines():          # what was transcribed before the bad block is still JSON
        json.loads(line)


def test_a_directory(tmp_path, capsys, ckpt):
    assert_user_error(*transcribe(capsys, tmp_path, ckpt), "directory")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_a_file_without_read_permission(tmp_path, capsys, ckpt):
    path = tmp_path / "locked.wav"
    sf.write(str(path), speech_like(1.0, 16000), 16000)
    path.chmod(0)
    assert_user_error(*transcribe(capsys, path, ckpt), "locked.wav")


def test_special_files_and_dangling_links(tmp_path, capsys, ckpt):
    link = tmp_path / "dangling.wav"
    link.symlink_to(tmp_path / "nowhere.wav")
    assert_user_error(*transcribe(capsys, link, ckpt), "not found")
    assert_user_error(*transcribe(capsys, "/dev/null", ckpt), "cannot read audio file")


@pytest.mark.parametrize("ext,content", [
    ("flac", b"fLaC" + bytes(100)),                            # a FLAC magic with a broken stream header
    ("ogg", b"OggS" + os.urandom(300)),
    ("mp3", b"ID3\x03\x00\x00\x00\x00\x00\x00" + bytes(50)),  # an ID3 tag and no frames
    ("wav", b"RIFF\xff\xff\xff\xffWAVEfmt \x10\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00"),  # 0 channels
])
def test_corrupt_files_of_each_container(tmp_path, capsys, ckpt, ext, content):
    path = tmp_path / f"bad.{ext}"
    path.write_bytes(content)
    code, out, err = transcribe(capsys, path, ckpt)
    if code == 0:                          # libsndfile found some audio in it: the output is well formed
        assert_events(out)
    else:
        assert_user_error(code, out, err, "bad." + ext)


def test_truncated_flac_keeps_what_was_transcribed(tmp_path, capsys, ckpt):
    path = tmp_path / "t.flac"
    sf.write(str(path), speech_like(4.0, 16000, seed=3), 16000, format="FLAC")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    code, out, err = transcribe(capsys, path, ckpt)
    if code == 0:
        assert_events(out, 4.1)
    else:
        assert code == 2 and err.startswith("error: ")
        assert_events(out, 4.1)                # finals of the part before the damage


def test_unwritable_rttm_path_is_a_clear_error(tmp_path, capsys, ckpt):
    path = tmp_path / "a.wav"
    sf.write(str(path), speech_like(1.0, 16000), 16000)
    code = main(["transcribe", str(path), "--model", ckpt, *ARGS, "--rttm", str(tmp_path / "no" / "such" / "x.rttm")])
    _, err = capsys.readouterr()
    last = err.strip().splitlines()[-1]     # (after a warning that the RTTM will be empty)
    assert code == 2 and last.startswith("error: ") and "x.rttm" in last and "Traceback" not in err


# -- very long files ----------------------------------------------------------------------


def _long_file(path, minutes: float, rate: int = 16000):
    """Write a long file block by block (never the whole signal in memory)."""
    with sf.SoundFile(str(path), "w", rate, 1, subtype="PCM_16") as f:
        for k in range(int(minutes * 6)):
            f.write(speech_like(10.0, rate, seed=k))


def test_a_long_file(tmp_path, capsys, ckpt):
    path = tmp_path / "long.wav"
    _long_file(path, 1.0)
    code, out, err = transcribe(capsys, path, ckpt)
    assert code == 0, err
    finals = [e for e in assert_events(out, 60.1) if e["type"] == "final"]
    assert finals and finals[-1]["end"] > 50     # the end of the file is transcribed too


@pytest.mark.slow
def test_a_very_long_file(tmp_path, capsys, ckpt):
    """30 minutes at 8 kHz (resampled all the way): output covers the whole file."""
    path = tmp_path / "very_long.wav"
    _long_file(path, 30.0, rate=8000)
    code, out, err = transcribe(capsys, path, ckpt)
    assert code == 0, err
    finals = [e for e in assert_events(out, 30 * 60 + 0.1) if e["type"] == "final"]
    assert finals[-1]["end"] > 30 * 60 - 15
    assert max(f["end"] - f["start"] for f in finals) <= 15.0 + 0.05    # max_segment_s holds all along


# -- standard input ------------------------------------------------------------------------


def _cli(*argv, **kwargs):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    return subprocess.Popen([sys.executable, "-m", "stream.cli", *argv], cwd=root, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, **kwargs)


def test_audio_piped_into_stdin_gives_what_the_file_gives(tmp_path, capsys, ckpt):
    path = tmp_path / "a.wav"
    sf.write(str(path), speech_like(3.0, 22050, seed=4), 22050, subtype="PCM_16")
    assert main(["transcribe", str(path), "--model", ckpt, *ARGS]) == 0
    from_file = assert_events(capsys.readouterr()[0], 3.05)
    with open(path, "rb") as audio:
        proc = _cli("transcribe", "-", "--model", ckpt, *ARGS, stdin=audio)
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    from_pipe = assert_events(out.decode(), 3.05)
    def finals(events):     # everything but the latency, which is wall-clock
        return [{k: v for k, v in e.items() if k != "latency"} for e in events if e["type"] == "final"]
    assert finals(from_pipe) == finals(from_file) and finals(from_file)


def _wav_header_only() -> bytes:
    import io

    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(0), 16000, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


@pytest.mark.parametrize("stdin_bytes,needle", [
    (b"", "cannot read audio from standard input"),
    (b"plain text, not audio\n" * 20, "raw PCM is not enough"),
    (_wav_header_only(), "standard input holds no audio"),
])
def test_stdin_without_an_audio_header_is_one_clear_error(tmp_path, ckpt, stdin_bytes, needle):
    import subprocess

    proc = _cli("transcribe", "-", "--model", ckpt, *ARGS, stdin=subprocess.PIPE)
    out, err = proc.communicate(stdin_bytes, timeout=120)
    assert proc.returncode == 2 and out == b"", err
    assert err.decode().startswith("error: ") and needle in err.decode() and b"Traceback" not in err


def test_ctrl_c_on_a_live_pipe_keeps_what_was_heard(tmp_path, ckpt, ctrl_c_raises):
    """A live pipe (arecord/ffmpeg into ``transcribe -``) stopped with Ctrl-C while the writer still
    holds it open: the run ends at once, the finals of what was heard are printed and written to
    --subtitles, and the exit status is 130."""
    import io
    import signal
    import subprocess
    import time

    header_and_audio = io.BytesIO()
    sf.write(header_and_audio, speech_like(3.0, 16000, seed=5), 16000, format="WAV", subtype="PCM_16")
    subtitles = tmp_path / "live.srt"
    proc = _cli("transcribe", "-", "--model", ckpt, *ARGS, "--subtitles", str(subtitles), stdin=subprocess.PIPE)
    proc.stdin.write(header_and_audio.getvalue()[:44 + 2 * 16000 * 2])     # the header and 2 s; the pipe stays open
    proc.stdin.flush()
    first = proc.stdout.readline()                     # the engine is running on the pipe's audio
    assert json.loads(first)["type"] in ("partial", "final")
    time.sleep(3)                                      # it has read all 2 s and waits on the pipe for more
    proc.send_signal(signal.SIGINT)
    # The writer keeps the pipe open, as a live arecord would: Ctrl-C alone must end the run, not the
    # writer's next block or its end (a read waiting on the pipe must not hold the exit up).
    proc.wait(timeout=60)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 130 and b"Traceback" not in err, err.decode()
    finals = [e for e in map(json.loads, [first, *out.splitlines()]) if e["type"] == "final" and e["text"]]
    assert finals and subtitles.read_text().count("-->") >= 1
