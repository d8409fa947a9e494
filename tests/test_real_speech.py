"""train/real_speech.py: the pocketsphinx source package's speech, from a stand-in archive of the
same layout (no download in tests)."""
from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
import soundfile as sf

from train import real_speech

ROOT = "pocketsphinx-5.1.1/test/data"


def wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def tone(seconds: float, rate: int, freq: float = 220.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def fake_sdist(path, drop: str | None = None):
    files = {
        "librivox/transcription": b"<s> he was not an ill disposed young man </s> (ss-0880)\n"
                                  b"<s> he might even have been made amiable himself </s> (ss-0930)\n",
        "librivox/ss-0880.wav": wav_bytes(tone(0.5, 16000), 16000),
        "librivox/ss-0930.wav": wav_bytes(tone(0.5, 16000), 16000),
        "librivox/ss-0930.json": b"{}",
        "cards/cards.transcription": b"<s> ten of clubs  </s> (001)\n",
        "cards/001.wav": wav_bytes(tone(0.25, 8000), 8000),          # resampled to 16 kHz
        "goforward.raw": (tone(0.5, 16000) * 32767).astype("<i2").tobytes(),
        "forever/input_2_16k.wav": wav_bytes(tone(0.5, 16000), 16000),
        "tidigits/dhd.2934z.raw": (tone(0.25, 16000) * 32767).astype("<i2").tobytes(),
        "null.wav": b"RIFF",
    }
    with tarfile.open(path, "w:gz") as tar:
        for rel, data in files.items():
            if rel == drop:
                continue
            info = tarfile.TarInfo(f"{ROOT}/{rel}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_sphinx_transcriptions_parse_with_or_without_sentence_marks():
    text = "<s> ten of clubs  </s> (001)\n<s> Four Queen of clubs </s> (002)\nfive five (004)\n\n(bad\n"
    assert real_speech.parse_transcription(text) == {"001": "ten of clubs", "002": "four queen of clubs",
                                                     "004": "five five"}


def test_the_transcribed_clips_are_kept_as_16khz_wavs_with_a_manifest(tmp_path):
    records = real_speech.extract_pocketsphinx(fake_sdist(tmp_path / "ps.tar.gz"), tmp_path / "out")
    texts = {r["path"]: r["text"] for r in records}
    assert texts == {
        "goforward.wav": "go forward ten meters",
        "forever/input_2_16k.wav": "feels like these days go on forever",
        "tidigits/dhd.2934z.wav": "two nine three four zero",
        "librivox/ss-0880.wav": "he was not an ill disposed young man",
        "librivox/ss-0930.wav": "he might even have been made amiable himself",
        "cards/001.wav": "ten of clubs",
    }
    manifest = [json.loads(line) for line in (tmp_path / "out" / real_speech.MANIFEST).read_text().splitlines()]
    assert manifest == records
    raw, rate = sf.read(tmp_path / "out" / "goforward.wav", dtype="float32")
    assert rate == 16000 and np.abs(raw - tone(0.5, 16000)).max() < 2e-4      # headerless PCM16 read right
    card, rate = sf.read(tmp_path / "out" / "cards" / "001.wav", dtype="float32")
    assert rate == 16000 and abs(len(card) - 4000) <= 2                        # 0.25 s at 8 kHz -> 16 kHz
    # evaluate's real-speech set picks the group up, names relative to it.
    real = {name: text for name, _, text in real_speech.real_recordings(tmp_path / "out")
            if name.startswith("pocketsphinx/")}
    assert real["pocketsphinx/librivox/ss-0880"] == "he was not an ill disposed young man"
    assert len(real) == 6


def test_an_archive_without_the_expected_clip_is_named(tmp_path):
    with pytest.raises(ValueError, match="test/data/goforward.raw not found"):
        real_speech.extract_pocketsphinx(fake_sdist(tmp_path / "ps.tar.gz", drop="goforward.raw"), tmp_path)


def test_command_line_with_a_local_archive_and_with_a_missing_one(tmp_path, capsys):
    real_speech.main(["--sdist", str(fake_sdist(tmp_path / "ps.tar.gz")), "--dest", str(tmp_path / "d")])
    assert "6 clips, 2.5 s of real speech" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        real_speech.main(["--sdist", str(tmp_path / "nope.tar.gz"), "--dest", str(tmp_path / "d")])
    assert "nope.tar.gz: no such file" in capsys.readouterr().err
    (tmp_path / "broken.tar.gz").write_bytes(b"not a tar")
    with pytest.raises(SystemExit):
        real_speech.main(["--sdist", str(tmp_path / "broken.tar.gz"), "--dest", str(tmp_path / "d")])
    assert "Traceback" not in capsys.readouterr().err
