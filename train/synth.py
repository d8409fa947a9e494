"""Synthesise the training, dev and test sets (16 kHz mono flac + jsonl manifests).

Split by voice AND by sentence: sentences are assigned to train or held-out by a hash
of their text; dev and test use only held-out voices (train/voices.py HELD_OUT) speaking
held-out sentences; test_seen uses training voices on held-out sentences (to tell voice
generalisation from text generalisation).

Usage: python -m train.synth [--out DIR] [--train N] [--more-voices N] [--jobs 2]
Manifest lines: {"path": "wav/train/rh-alan_p+250/000123.flac" (relative to --out),
"text", "speaker", "voice", "duration", "tempo", "pitch", "reverb"}.
Re-running skips clips that already exist, so an interrupted run can be resumed.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import time
from multiprocessing import Pool
from pathlib import Path

import soundfile as sf

from train import CACHE
from train import text as text_mod
from train.voices import HELD_OUT, MORE_VOICES, PITCH_OFFSETS, SOURCE_VOICES, render, voice_by_name

DEFAULT_OUT = CACHE / "data"


def sentence_split(sentence: str) -> str:
    """'train' for ~95% of sentences, 'dev' / 'test' for the held-out rest (stable hash)."""
    h = int(hashlib.sha1(sentence.encode()).hexdigest(), 16) % 100
    return "train" if h >= 5 else ("dev" if h < 1 else "test")


def speaker_id(voice: str, pitch_offset: int) -> str:
    return f"{voice}_p{pitch_offset:+d}"


def plan(sentences: list[str], n_train: int, n_dev: int, n_test: int, n_test_seen: int, seed: int = 0,
         n_more: int = 0) -> list[dict]:
    """The deterministic list of clips to render.

    ``n_more`` training clips spoken by ``MORE_VOICES`` come after the ``n_train`` others,
    saying the training sentences that follow them (wrapping round), and draw from their own
    random stream: with or without them, every other clip is the same.
    """
    rng = random.Random(seed)
    pools = {"train": [], "dev": [], "test": []}
    for s in sentences:
        pools[sentence_split(s)].append(s)
    for p in pools.values():
        rng.shuffle(p)
    train_voices = [v for v in SOURCE_VOICES if v.name not in HELD_OUT]
    test_voices = [v for v in SOURCE_VOICES if v.name in HELD_OUT]
    jobs = []

    def add(split, voices, texts, n, augment, first=0, rng=rng):
        weights = [v.weight for v in voices]
        for i in range(first, first + n):
            v = rng.choices(voices, weights)[0]
            off = rng.choice(PITCH_OFFSETS)
            # Per-clip jitter around the speaker's pitch and a random tempo: the same
            # speaker does not say every sentence identically.
            pitch = off + rng.uniform(-40, 40)
            tempo = rng.uniform(0.88, 1.12) if augment else rng.uniform(0.95, 1.05)
            reverb = rng.uniform(10, 60) if augment and rng.random() < 0.15 else None
            spk = speaker_id(v.name, off)
            jobs.append(dict(
                split=split, path=f"wav/{split}/{spk}/{i:06d}.flac", text=texts[i % len(texts)],
                speaker=spk, voice=v.name, tempo=round(tempo, 3), pitch=round(pitch, 1),
                reverb=None if reverb is None else round(reverb, 1),
                pad=(round(rng.uniform(0.05, 0.3), 2), round(rng.uniform(0.05, 0.3), 2)),
            ))

    add("dev", test_voices, pools["dev"], n_dev, augment=False)
    add("test", test_voices, pools["test"], n_test, augment=False)
    add("test_seen", train_voices, pools["test"][::-1], n_test_seen, augment=False)
    add("train", train_voices, pools["train"], n_train, augment=True)
    add("train", list(MORE_VOICES), pools["train"], n_more, augment=True, first=n_train,
        rng=random.Random(f"more-voices-{seed}"))
    return jobs


def _render_job(args: tuple[dict, str]) -> dict | None:
    job, out = args
    path = os.path.join(out, job["path"])
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path[:-5] + ".tmp.flac"
        try:
            render(voice_by_name(job["voice"]), job["text"], tmp, tempo=job["tempo"],
                   pitch_cents=job["pitch"], reverb=job["reverb"], pad=tuple(job["pad"]))
        except Exception as e:  # one engine failing on one sentence must not stop the run
            print(f"skip {job['path']}: {e}", flush=True)
            return None
        os.replace(tmp, path)
    rec = {k: job[k] for k in ("path", "text", "speaker", "voice", "tempo", "pitch", "reverb")}
    rec["duration"] = round(sf.info(path).duration, 3)
    rec["split"] = job["split"]
    return rec


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--train", type=int, default=8000,
                    help="training clips: clip i says training sentence i of a fixed shuffled order (they repeat "
                         "after the ~34,300 there are), so a larger N keeps a smaller one's clips and adds new "
                         "sentences (runs 1-11 of train/README.md saw 8,000; runs 13 and 18 16,000; runs 14-15 and "
                         "19 24,000; runs 17 and 20 34,000; runs 22 and 24 (the bundled model) 34,000 with --more-voices 6000)")
    ap.add_argument("--more-voices", type=int, default=0, metavar="N",
                    help="N training clips more, spoken by the 11 MBROLA voices of voices.MORE_VOICES (new "
                         "speakers: their clips train CTC only when a run starts from an export whose speaker "
                         "head does not know them); runs 22 and 24 used 6,000")
    ap.add_argument("--dev", type=int, default=240)
    ap.add_argument("--test", type=int, default=600)
    ap.add_argument("--test-seen", type=int, default=300)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    sent_file = args.out / "sentences.txt"
    if not sent_file.exists():
        text_mod.main([str(sent_file)])
    sentences = sent_file.read_text().split("\n")
    sentences = [s for s in sentences if s]
    jobs = plan(sentences, args.train, args.dev, args.test, args.test_seen, args.seed, args.more_voices)
    t0 = time.time()
    records: dict[str, list[dict]] = {}
    hours = 0.0
    with Pool(args.jobs) as pool:
        for i, rec in enumerate(pool.imap(_render_job, [(j, str(args.out)) for j in jobs], chunksize=8)):
            if rec is None:
                continue
            records.setdefault(rec.pop("split"), []).append(rec)
            hours += rec["duration"] / 3600
            if (i + 1) % 500 == 0:
                print(f"{i + 1}/{len(jobs)} clips, {hours:.2f} h audio, {time.time() - t0:.0f} s", flush=True)
    for split, recs in records.items():
        with open(args.out / f"{split}.jsonl", "w") as f:
            for r in recs:
                f.write(json.dumps(r) + "\n")
        h = sum(r["duration"] for r in recs) / 3600
        print(f"{split}: {len(recs)} clips, {h:.2f} h, {len({r['speaker'] for r in recs})} speakers")
    print(f"done in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
