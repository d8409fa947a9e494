"""Write the example recordings in examples/ from held-out voices speaking held-out sentences.

examples/single_speaker.wav   one held-out voice (RHVoice bdl), two sentences
examples/two_speakers.wav     an exchange between two held-out voices (RHVoice bdl, pico en-GB)
examples/single_speaker_flite.wav  another held-out voice (flite rms)
Each has a NAME.txt (reference transcript, one utterance a line) and NAME.rttm (who spoke when).

Usage: python -m train.make_examples [--out examples]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

from train.meetings import speech_bounds, write_rttm
from train.synth import sentence_split
from train.text import collect
from train.voices import HELD_OUT, render, voice_by_name

REPO = Path(__file__).resolve().parent.parent
SR = 16000


def _sentences(n_words: tuple[int, int]) -> list[str]:
    return [s for s in collect() if sentence_split(s) == "test" and n_words[0] <= len(s.split()) <= n_words[1]]


def build(out: Path, name: str, turns: list[tuple[str, str]], gap: float = 0.6) -> None:
    """turns: [(voice name, sentence)] spoken one after another with `gap` seconds between them."""
    pieces, utts, t = [], [], 0.4
    with tempfile.TemporaryDirectory() as tmp:
        for i, (voice, text) in enumerate(turns):
            assert voice in HELD_OUT, voice
            path = f"{tmp}/{i}.wav"
            render(voice_by_name(voice), text, path, pad=(0.0, 0.0))
            x, _ = sf.read(path, dtype="float32")
            a, b = speech_bounds(x)
            x = x[a:b] * np.float32(0.5)
            pieces.append((int(t * SR), x))
            utts.append({"start": round(t, 3), "end": round(t + len(x) / SR, 3), "speaker": voice, "text": text})
            t += len(x) / SR + gap
    audio = np.zeros(int((t + 0.4) * SR), dtype=np.float32)
    for p, x in pieces:
        audio[p:p + len(x)] += x
    sf.write(out / f"{name}.wav", audio, SR, subtype="PCM_16")
    (out / f"{name}.txt").write_text("".join(u["text"] + "\n" for u in utts))
    write_rttm(out / f"{name}.rttm", name, utts)
    print(f"{name}: {len(audio) / SR:.1f} s, {(out / f'{name}.wav').stat().st_size // 1024} KiB")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "examples")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    s = _sentences((5, 9))
    build(args.out, "single_speaker", [("rh-bdl", s[0]), ("rh-bdl", s[1])])
    build(args.out, "single_speaker_flite", [("fl-rms", s[2]), ("fl-rms", s[3])])
    # Longer turns (about 3 s each) so a speaker tracker has something to hold on to.
    t = _sentences((9, 12))
    build(args.out, "two_speakers", [("rh-bdl", t[0]), ("pico-gb", t[1]), ("rh-bdl", t[2]), ("pico-gb", t[3])], gap=0.45)


if __name__ == "__main__":
    main()
