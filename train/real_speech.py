"""Real recordings with transcripts that a machine here can assemble offline, for evaluation only.

Three sources, each used where present:

* ``asterisk``: the Asterisk English prompts (Debian's asterisk-core-sounds-en-wav: one
  speaker, Allison Smith, 8 kHz telephone speech; transcripts in the package's
  core-sounds-en.txt).
* ``alsa``: the ALSA channel-test voice (alsa-utils: "front left", ...).
* ``pocketsphinx``: the speech in the test data of pocketsphinx's source package on PyPI
  (``POCKETSPHINX_SDIST``; PyPI is reachable where the model hub is not): five LibriVox
  clips of *Sense and Sensibility* read by one volunteer, five spoken card names and three
  more speakers' phrases and digits, 16 kHz, 13 clips, several microphones. Transcripts are
  the package's own (its ``transcription`` files, and the phrases its tests assert).
  ``python -m train.real_speech`` downloads the source package (34 MB, ``pip download``)
  and keeps just these clips under ``POCKETSPHINX_DIR``; nothing of it is committed.

Usage: python -m train.real_speech [--dest DIR] [--sdist pocketsphinx-5.1.1.tar.gz]
"""
from __future__ import annotations

import argparse
import gzip
import io
import json
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from train import CACHE
from train.text import normalise

ASTERISK_DIR = Path("/usr/share/asterisk/sounds/en_US_f_Allison")
ASTERISK_TEXT = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")
ALSA_DIR = Path("/usr/share/sounds/alsa")
POCKETSPHINX_DIR = CACHE / "real" / "pocketsphinx"
POCKETSPHINX_SDIST = "pocketsphinx==5.1.1"
MANIFEST = "transcripts.jsonl"

#: Transcription files of the package's test data (Sphinx format: ``<s> text </s> (utterance id)``),
#: by the folder whose ``<id>.wav`` files they transcribe.
TRANSCRIPTIONS = {"librivox": "librivox/transcription", "cards": "cards/cards.transcription"}
#: Clips whose words the package's own tests assert (or, for TIDIGITS, the file name spells:
#: z = zero), with their format: raw files are 16 kHz 16-bit mono without a header.
FIXED_CLIPS = {
    "goforward.raw": "go forward ten meters",                    # cython/test/decoder_test.py
    "forever/input_2_16k.wav": "feels like these days go on forever",   # cython/test/alignment_test.py
    "tidigits/dhd.2934z.raw": "two nine three four zero",
}


def parse_transcription(text: str) -> dict[str, str]:
    """Sphinx transcription lines ``<s> words </s> (id)`` -> {id: words}."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"^\s*(?:<s>)?\s*(.*?)\s*(?:</s>)?\s*\(([^()]+)\)\s*$", line)
        if m and m.group(1):
            out[m.group(2)] = " ".join(m.group(1).lower().split())
    return out


def extract_pocketsphinx(sdist: Path, dest: Path) -> list[dict]:
    """Keep the transcribed speech of a pocketsphinx source package (.tar.gz) under ``dest``.

    Writes ``dest/<folder>/<name>.wav`` (16 kHz mono PCM16) and ``dest/transcripts.jsonl``
    (``{"path": relative wav path, "text": transcript}`` per clip); returns those records.
    Raises ValueError naming what the archive lacks.
    """
    with tarfile.open(sdist, "r:gz") as tar:
        members = {m.name.split("/test/data/", 1)[1]: m for m in tar.getmembers()
                   if m.isfile() and "/test/data/" in m.name}

        def read(rel: str) -> bytes:
            if rel not in members:
                raise ValueError(f"{sdist.name}: test/data/{rel} not found: not a pocketsphinx source package "
                                 f"of the layout {POCKETSPHINX_SDIST} has")
            return tar.extractfile(members[rel]).read()

        wanted = dict(FIXED_CLIPS)
        for folder, transcription in TRANSCRIPTIONS.items():
            transcripts = parse_transcription(read(transcription).decode())
            wanted.update({f"{folder}/{uid}.wav": text for uid, text in sorted(transcripts.items())})
        records = []
        for rel, text in wanted.items():
            data = read(rel)
            if rel.endswith(".raw"):
                audio = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768
            else:
                audio = mono_16k(io.BytesIO(data))
            out = Path(rel).with_suffix(".wav")
            (dest / out).parent.mkdir(parents=True, exist_ok=True)
            sf.write(dest / out, audio, 16000, subtype="PCM_16")
            records.append({"path": str(out), "text": text})
    with open(dest / MANIFEST, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    return records


def download_pocketsphinx_sdist(directory: Path) -> Path:
    """``pip download`` the pinned source package into ``directory``; returns the archive."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet",
           "-d", str(directory), POCKETSPHINX_SDIST]
    done = subprocess.run(cmd, capture_output=True, text=True)
    archives = sorted(directory.glob("pocketsphinx-*.tar.gz"))
    if done.returncode != 0 or not archives:
        raise RuntimeError(f"pip download {POCKETSPHINX_SDIST} failed (PyPI unreachable?): "
                           f"{done.stderr.strip()[-500:]}")
    return archives[0]


def real_recordings(pocketsphinx_dir: Path = POCKETSPHINX_DIR) -> list[tuple[str, np.ndarray, str]]:
    """[(group/name, 16 kHz float32 wave, normalised transcript)] of the recordings present here."""
    items = []
    if ASTERISK_TEXT.exists() and ASTERISK_DIR.exists():
        with gzip.open(ASTERISK_TEXT, "rt", encoding="utf-8", errors="replace") as f:
            for line in f:
                m = re.match(r"^([\w/-]+): (.+)$", line.strip())
                if not m or "[" in m.group(2):
                    continue
                path = ASTERISK_DIR / f"{m.group(1)}.wav"
                # Transcripts that name digits, symbols or abbreviations are skipped, as in training text.
                text = " ".join(filter(None, (normalise(p) if len(p.split()) >= 4 else _short(p)
                                              for p in re.split(r"(?<=[.!?])\s+", m.group(2)))))
                if path.exists() and text and len(text.split()) >= 3 and "None" not in text:
                    items.append((f"asterisk/{m.group(1)}", path, text))
    if ALSA_DIR.exists():
        for path in sorted(ALSA_DIR.glob("*_*.wav")):
            items.append((f"alsa/{path.stem}", path, path.stem.replace("_", " ").lower()))
    manifest = pocketsphinx_dir / MANIFEST
    if manifest.exists():
        for line in manifest.read_text().splitlines():
            rec = json.loads(line)
            items.append((f"pocketsphinx/{Path(rec['path']).with_suffix('')}", pocketsphinx_dir / rec["path"],
                          rec["text"]))
    return [(name, mono_16k(str(path)), text) for name, path, text in items]


def mono_16k(source) -> np.ndarray:
    """A sound file (path or file object) as 16 kHz mono float32."""
    x, rate = sf.read(source, dtype="float32", always_2d=True)
    x = x.mean(axis=1)
    return x if rate == 16000 else soxr.resample(x, rate, 16000).astype(np.float32)


def _short(phrase: str) -> str | None:
    """Normalise a short phrase (under the 4-word minimum of training text) or None."""
    s = normalise(phrase + " x x x x")
    return None if s is None else s[: -len(" x x x x")]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dest", type=Path, default=POCKETSPHINX_DIR)
    ap.add_argument("--sdist", type=Path, default=None,
                    help=f"a {POCKETSPHINX_SDIST} source archive already on disk (default: pip download it)")
    args = ap.parse_args(argv)
    if args.sdist is not None and not args.sdist.is_file():
        ap.error(f"--sdist {args.sdist}: no such file")
    args.dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        sdist = args.sdist or download_pocketsphinx_sdist(Path(tmp))
        try:
            records = extract_pocketsphinx(sdist, args.dest)
        except (ValueError, tarfile.TarError, OSError) as e:
            ap.error(str(e))
    seconds = sum(sf.info(str(args.dest / r["path"])).duration for r in records)
    print(f"{len(records)} clips, {seconds:.1f} s of real speech -> {args.dest} "
          f"(python -m train.evaluate reads them as the 'pocketsphinx' group)")


if __name__ == "__main__":
    main()
