"""Training data: manifests, length-grouped batches, on-the-fly augmentation, text encoding."""
from __future__ import annotations

import json
import math
import random
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import soundfile as sf
import soxr
import torch

from train.export import encode_text

T = TypeVar("T")


@dataclass(frozen=True)
class Clip:
    path: str       # absolute path of a 16 kHz mono file
    text: str       # normalised transcript (a-z, apostrophe, space)
    speaker: str    # speaker id (source voice + pitch offset)
    voice: str      # source voice
    duration: float # seconds


def read_manifest(path: str | Path, max_duration: float | None = None) -> list[Clip]:
    """jsonl manifest -> clips; paths are relative to the manifest's directory."""
    path = Path(path)
    clips = []
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            if max_duration is not None and r["duration"] > max_duration:
                continue
            clips.append(Clip(str(path.parent / r["path"]), r["text"], r["speaker"], r["voice"], r["duration"]))
    return clips


def bucket_batches(clips: list[Clip], max_batch_seconds: float, rng: random.Random,
                   bucket_seconds: float = 1.0) -> list[tuple[list[Clip], int]]:
    """Batches of fixed shapes: [(clips, padded length in samples)], shuffled.

    A clip goes to the bucket of its duration rounded up to bucket_seconds; every batch of a
    bucket has exactly floor(max_batch_seconds / bucket length) clips (the last one topped
    up with clips drawn again from the bucket). Few distinct shapes matter on CPU: with bf16
    autocast, each new input shape costs seconds of kernel preparation.
    """
    buckets: dict[int, list[Clip]] = {}
    for c in clips:
        buckets.setdefault(max(1, math.ceil(c.duration / bucket_seconds - 1e-9)), []).append(c)
    batches = []
    for k, members in sorted(buckets.items()):
        size = max(1, int(max_batch_seconds // (k * bucket_seconds)))
        members = members[:]
        rng.shuffle(members)
        while len(members) % size:
            members.append(rng.choice(members[: len(members)]))
        pad = int(round(k * bucket_seconds * 16000))
        batches += [(members[i:i + size], pad) for i in range(0, len(members), size)]
    rng.shuffle(batches)
    return batches


def load_audio(path: str) -> np.ndarray:
    x, sr = sf.read(path, dtype="float32", always_2d=False)
    if sr != 16000 or x.ndim != 1:
        raise ValueError(f"{path}: expected 16 kHz mono, got {sr} Hz shape {x.shape}")
    return x


def speed_perturb(x: np.ndarray, factor: float) -> np.ndarray:
    """Play 16 kHz audio `factor` times faster: (N,) -> (~N / factor,).

    Pitch, formants and tempo all scale by `factor` (resampling, as a tape played fast or
    slow), so the voice is no longer the labelled speaker: callers drop such clips from
    the speaker loss. Synthesis varies tempo and pitch in steps; this fills the gaps with a
    continuous shift of the whole spectrum.
    """
    return soxr.resample(x, 16000 * factor, 16000).astype(np.float32)


def random_equalizer(x: np.ndarray, rng: np.random.Generator, max_db: float = 8.0, bands: int = 8) -> np.ndarray:
    """Multiply the spectrum by a smooth random curve: (N,) -> (N,).

    Gains uniform in +-max_db at `bands` points spaced evenly in log frequency (60 Hz to
    8 kHz), interpolated between them: a different microphone, room or vocal tract colour,
    which the few synthetic engines do not vary. A voice's colour is part of what tells
    speakers apart, so callers drop such clips from the speaker loss too.
    """
    spec = np.fft.rfft(x)
    freqs = np.fft.rfftfreq(len(x), 1 / 16000)
    anchors = np.linspace(np.log(60.0), np.log(8000.0), bands)
    gains_db = np.interp(np.log(np.maximum(freqs, 60.0)), anchors, rng.uniform(-max_db, max_db, bands))
    return np.fft.irfft(spec * 10 ** (gains_db / 20), n=len(x)).astype(np.float32)


def augment(x: np.ndarray, rng: np.random.Generator, noise_prob: float = 0.0) -> np.ndarray:
    """Random gain (-15..0 dB) and, on noise_prob of clips, white or pink-ish noise at 10-40 dB SNR.

    The model is trained on raw float audio without per-utterance normalisation, so a
    stream can be fed as it arrives; random gain makes it indifferent to level.
    """
    x = x * np.float32(10 ** (rng.uniform(-15, 0) / 20))
    if rng.random() < noise_prob:
        noise = rng.standard_normal(len(x)).astype(np.float32)
        if rng.random() < 0.5:  # 1/f-ish spectrum: scale the spectrum by 1/sqrt(f)
            spec = np.fft.rfft(noise)
            spec /= np.sqrt(np.arange(1, len(spec) + 1, dtype=np.float32))
            noise = np.fft.irfft(spec, n=len(x)).astype(np.float32)
        p_sig = float(np.mean(x ** 2)) + 1e-10
        p_noise = float(np.mean(noise ** 2)) + 1e-10
        snr_db = rng.uniform(10, 40)
        x = x + noise * np.float32(np.sqrt(p_sig / (p_noise * 10 ** (snr_db / 10))))
    return np.clip(x, -1.0, 1.0)


@dataclass(frozen=True)
class Batch:
    audio: torch.Tensor          # (B, N) float32, right-padded with zeros
    attention_mask: torch.Tensor # (B, N) long, 1 on valid samples
    lengths: torch.Tensor        # (B,) valid samples
    labels: torch.Tensor         # (B, S) token ids, padded with -100
    label_lengths: torch.Tensor  # (B,)
    speakers: torch.Tensor       # (B,) speaker index (-1 for speakers outside the training set)
    texts: tuple[str, ...]
    seconds: float               # audio seconds in the batch (unpadded)


def collate(clips: list[Clip], speaker_index: dict[str, int], rng: np.random.Generator | None,
            pad_to: int | None = None, noise_prob: float = 0.0, eq_prob: float = 0.0, speed_prob: float = 0.0,
            speed_range: tuple[float, float] = (0.9, 1.1)) -> Batch:
    """Load, optionally augment (rng given), pad (to pad_to samples, if given) and encode a list of clips.

    A speed-perturbed (speed_prob) or equalized (eq_prob) clip gets speaker -1: its voice
    is not its speaker's any more. A speed factor is drawn so that the clip still fits
    pad_to (a clip that fills its bucket can only be sped up).
    """
    waves = [load_audio(c.path) for c in clips]
    perturbed = [False] * len(waves)
    if rng is not None:
        for i, w in enumerate(waves):
            if speed_prob and rng.random() < speed_prob:
                low = max(speed_range[0], len(w) / pad_to if pad_to else 0.0)
                if low < speed_range[1]:
                    w, perturbed[i] = speed_perturb(w, rng.uniform(low, speed_range[1])), True
            if eq_prob and rng.random() < eq_prob:
                w, perturbed[i] = random_equalizer(w, rng), True
            waves[i] = augment(w, rng, noise_prob)
    waves = [w[:pad_to] for w in waves] if pad_to else waves
    n = max([len(w) for w in waves] + ([pad_to] if pad_to else []))
    audio = torch.zeros(len(waves), n)
    mask = torch.zeros(len(waves), n, dtype=torch.long)
    for i, w in enumerate(waves):
        audio[i, : len(w)] = torch.from_numpy(w)
        mask[i, : len(w)] = 1
    ids = [encode_text(c.text) for c in clips]
    s = max(len(t) for t in ids)
    labels = torch.full((len(ids), s), -100, dtype=torch.long)
    for i, t in enumerate(ids):
        labels[i, : len(t)] = torch.tensor(t)
    return Batch(
        audio=audio, attention_mask=mask, lengths=mask.sum(-1), labels=labels,
        label_lengths=torch.tensor([len(t) for t in ids]),
        speakers=torch.tensor([-1 if p else speaker_index.get(c.speaker, -1) for c, p in zip(clips, perturbed)]),
        texts=tuple(c.text for c in clips), seconds=sum(len(w) for w in waves) / 16000,
    )


def prefetch(load: Callable[[int], T], count: int, threads: int) -> Iterator[T]:
    """Yield load(0), load(1), ..., load(count - 1) in order.

    With threads > 0, up to 2 * threads loads run ahead on a thread pool: decoding
    (libsndfile), resampling (soxr) and numpy's FFTs release the GIL, so on a GPU the next
    batches are ready when a step ends instead of the step waiting for them. Stopping early
    (closing the generator) cancels the loads not yet started.
    """
    if threads <= 0:
        for i in range(count):
            yield load(i)
        return
    with ThreadPoolExecutor(threads) as pool:
        pending = deque(pool.submit(load, i) for i in range(min(count, 2 * threads)))
        submitted = len(pending)
        try:
            while pending:
                item = pending.popleft().result()
                if submitted < count:
                    pending.append(pool.submit(load, submitted))
                    submitted += 1
                yield item
        finally:
            for f in pending:
                f.cancel()
