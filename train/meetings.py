"""Synthetic 'meetings' for diarization tests: held-out voices taking turns, with RTTM reference.

Clips of the test split (held-out voices speaking held-out sentences, see train/synth.py)
are laid out on one timeline: 2-4 speakers (distinct source voices), turns of one or two
utterances, pauses of 0.2-1.5 s between turns and, on about 15% of turn changes, an
overlap of 0.2-1.0 s where the next speaker starts before the previous one stops.

Writes, per meeting, NAME.wav (16 kHz mono PCM16), NAME.rttm (one SPEAKER line per
utterance: start and duration of its speech) and NAME.json (utterances with start, end,
speaker, text) into --out (default ~/.cache/wavlm-stream/meetings).

Usage: python -m train.meetings [--count 40] [--manifest ~/.cache/wavlm-stream/data/test.jsonl]
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np
import soundfile as sf

from decoders import turns
from train import CACHE
from train.data import Clip, load_audio, read_manifest

SR = 16000


def speech_bounds(x: np.ndarray, threshold_db: float = -40.0) -> tuple[int, int]:
    """First and last sample of speech (20 ms frames within threshold_db of the clip's peak frame)."""
    frame = SR // 50
    n = len(x) // frame
    if n == 0:
        return 0, len(x)
    energy = (x[: n * frame].reshape(n, frame) ** 2).mean(axis=1) + 1e-12
    db = 10 * np.log10(energy / energy.max())
    active = np.flatnonzero(db > threshold_db)
    return int(active[0] * frame), int(min(len(x), (active[-1] + 1) * frame))


def make_meeting(by_speaker: dict[str, list[Clip]], rng: random.Random, name: str,
                 n_turns: tuple[int, int] = (10, 18)) -> tuple[np.ndarray, list[dict]]:
    """One meeting: (audio (N,) float32, utterances [{"start","end","speaker","text"}]) in seconds."""
    # Distinct source voices, so speakers differ by more than a pitch offset.
    voices: dict[str, list[str]] = {}
    for spk in by_speaker:
        voices.setdefault(spk.split("_p")[0], []).append(spk)
    k = rng.randint(2, min(4, len(voices)))
    speakers = [rng.choice(voices[v]) for v in rng.sample(sorted(voices), k)]
    labels = {s: f"spk{i}" for i, s in enumerate(speakers)}
    pieces, utterances = [], []
    t = rng.uniform(0.3, 1.0)  # seconds: where the next utterance's speech starts
    prev = None
    for _ in range(rng.randint(*n_turns)):
        spk = rng.choice([s for s in speakers if s != prev])
        for _ in range(rng.choice((1, 1, 2))):
            clip = rng.choice(by_speaker[spk])
            x = load_audio(clip.path)
            a, b = speech_bounds(x)
            x = x[a:b] * np.float32(10 ** (rng.uniform(-6, 0) / 20))
            pieces.append((int(t * SR), x))
            utterances.append({"start": round(t, 3), "end": round(t + len(x) / SR, 3), "speaker": labels[spk],
                               "source_speaker": spk, "text": clip.text})
            t += len(x) / SR + rng.uniform(0.15, 0.5)  # pause within a turn
        prev = spk
        if rng.random() < 0.15:
            t -= rng.uniform(0.2, 1.0) + 0.5  # overlap: the next speaker starts before this one stops
            t = max(t, utterances[-1]["start"] + 0.5)
        else:
            t += rng.uniform(0.05, 1.0)
    total = max(p + len(x) for p, x in pieces) + int(0.5 * SR)
    audio = np.zeros(total, dtype=np.float32)
    for p, x in pieces:
        audio[p:p + len(x)] += x
    audio *= np.float32(0.9 / max(1e-6, float(np.abs(audio).max())))
    return audio, utterances


def write_rttm(path: Path, name: str, utterances: list[dict]) -> None:
    """The reference turns of one meeting (utterances with start, end, speaker) as an RTTM file."""
    with open(path, "w") as f:
        turns.write_rttm([(u["start"], u["end"], u["speaker"]) for u in utterances], name, f)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manifest", type=Path, default=CACHE / "data" / "test.jsonl")
    ap.add_argument("--out", type=Path, default=CACHE / "meetings")
    ap.add_argument("--count", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    by_speaker: dict[str, list[Clip]] = {}
    for c in read_manifest(args.manifest):
        by_speaker.setdefault(c.speaker, []).append(c)
    args.out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    for i in range(args.count):
        name = f"meeting_{i:02d}"
        audio, utts = make_meeting(by_speaker, rng, name)
        sf.write(args.out / f"{name}.wav", audio, SR, subtype="PCM_16")
        write_rttm(args.out / f"{name}.rttm", name, utts)
        with open(args.out / f"{name}.json", "w") as f:
            json.dump({"audio": f"{name}.wav", "sample_rate": SR, "utterances": utts}, f, indent=1)
        n_spk = len({u["speaker"] for u in utts})
        print(f"{name}: {len(audio) / SR:.1f} s, {n_spk} speakers, {len(utts)} utterances")


if __name__ == "__main__":
    main()
