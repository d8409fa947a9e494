"""Speech vs silence per 20 ms frame from the audio's energy, with an adaptive noise floor.

The speaker side needs to know where there is speech (a pause is never a speaker change, turns
end where speech ends) before any model has run on the audio, for every stream, at no cost:
a frame is speech when its energy is well above the quietest recent frames and above an
absolute level. Frames are 20 ms, the conv front end's stride, so a decision lines up with a
model frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

VAD_FRAME_SAMPLES = 320                 # 20 ms at 16 kHz



@dataclass(frozen=True)
class EnergyVADConfig:
    """Frame energy speech detector with an adaptive noise floor."""

    margin_db: float = 15.0             # speech is this much above the noise floor
    min_db: float = -55.0               # ... and above this absolute level (dBFS)
    max_floor_db: float = -40.0         # a steady level louder than this is taken as speech, not noise
    floor_rise: float = 0.002           # per-frame rate at which the floor creeps up (it drops at once)


class EnergyVAD:
    """Per-stream 20 ms frame speech detector: frame i covers samples [320 i, 320 i + 320).

    ``push(samples_16k) -> (n,) float32 in {0, 1}`` for the frames completed by the samples;
    ``speech(first, end)`` looks decisions up by absolute frame index. Only the last
    ``keep_frames`` decisions are kept (None: all), so memory stays flat on long streams.
    """

    def __init__(self, config: EnergyVADConfig = EnergyVADConfig(), keep_frames: int | None = 3000):
        self.config = config
        self.keep_frames = keep_frames
        self._tail = np.zeros(0, dtype=np.float32)
        self._floor: float | None = None
        self._buf = np.zeros(1024, dtype=np.float32)   # decisions of frames [_start, frames)
        self._start = 0
        self.frames = 0

    def push(self, samples: np.ndarray) -> np.ndarray:
        x = np.concatenate([self._tail, np.asarray(samples, dtype=np.float32).reshape(-1)])
        n = len(x) // VAD_FRAME_SAMPLES
        self._tail = x[n * VAD_FRAME_SAMPLES:]
        if n == 0:
            return np.zeros(0, dtype=np.float32)
        blocks = x[: n * VAD_FRAME_SAMPLES].reshape(n, VAD_FRAME_SAMPLES).astype(np.float64)
        db = 10.0 * np.log10(np.mean(blocks ** 2, axis=1) + 1e-10)     # (n,) dBFS, >= -100
        out = np.empty(n, dtype=np.float32)
        c = self.config
        for i, e in enumerate(db):
            # The floor follows the quietest frames: down at once, up slowly (so speech never lifts it far).
            if self._floor is None or e < self._floor:
                self._floor = e
            else:
                self._floor += c.floor_rise * (e - self._floor)
            floor = min(self._floor, c.max_floor_db)
            out[i] = float(e > max(floor + c.margin_db, c.min_db))
        self._append(out)
        return out

    def _append(self, out: np.ndarray) -> None:
        used = self.frames - self._start
        if self.keep_frames is not None and used + len(out) > 2 * self.keep_frames:
            drop = used - self.keep_frames
            self._buf[: used - drop] = self._buf[drop:used]
            self._start += drop
            used -= drop
        if used + len(out) > len(self._buf):
            self._buf = np.concatenate([self._buf[:used], np.zeros(max(len(self._buf), len(out)), np.float32)])
        self._buf[used:used + len(out)] = out
        self.frames += len(out)

    def speech(self, first: int, end: int) -> np.ndarray:
        """Decisions of VAD frames [first, end) (those not yet seen count as speech), (end - first,)."""
        if first < self._start:
            raise ValueError(f"VAD frame {first} is no longer kept (oldest kept: {self._start})")
        out = np.ones(max(0, end - first), dtype=np.float32)
        hi = min(end, self.frames)
        if hi > first:
            out[: hi - first] = self._buf[first - self._start: hi - self._start]
        return out

    def speech_of_frames(self, first: int, end: int, frame_samples: int) -> np.ndarray:
        """Decisions for frames [first, end) of another frame rate (`frame_samples` per frame),
        each from the VAD frame holding its centre, (end - first,)."""
        centres = (np.arange(first, end) * frame_samples + frame_samples // 2) // VAD_FRAME_SAMPLES
        if len(centres) == 0:
            return np.zeros(0, dtype=np.float32)
        lo = int(centres[0])
        return self.speech(lo, int(centres[-1]) + 1)[centres - lo]
