"""Speaker turns: labelled speech intervals, built from a speaker timeline, and their RTTM form.

A tracker (decoders.speaker.SpeakerTracker) decides *who* speaks from when (a label timeline:
change times and labels); this module decides *where there is speech* inside that timeline and
cuts it into turns (`SpeechActivity.turns`), from either of two views of speech activity:

- frame-level speech (e.g. an energy VAD at 20 ms): `turns_from_frames`, pauses shorter than
  `min_pause_s` kept inside a turn;
- the speech fractions of the embedding windows alone: `turns_from_windows`, at the resolution
  of the window boundaries (one hop), used beyond the last frame the caller gave.

RTTM is the NIST diarization format (one ``SPEAKER`` line per turn) that diarization scorers
and the bench read.
"""

from __future__ import annotations

import bisect
import math
from typing import IO, Callable, NamedTuple

import numpy as np


class Turn(NamedTuple):
    """One speaker turn: [start, end) seconds from stream start, label like "S1"."""

    start: float
    end: float
    label: str


LabelAt = Callable[[float], "str | None"]   # the timeline's label at a time (None before the first)


def append_turn(out: list[Turn], start: float, end: float, label: str) -> None:
    """Append [start, end) to `out`, merged into the last turn when it continues it with the same label."""
    if out and out[-1].label == label and abs(out[-1].end - start) <= 1e-9:
        out[-1] = Turn(out[-1].start, end, label)
    else:
        out.append(Turn(start, end, label))


def turns_from_frames(speech: np.ndarray, frame_s: float, t0: float, t1: float, cuts: list[float],
                      label_at: LabelAt, min_pause_s: float) -> list[Turn]:
    """Labelled speech intervals within [t0, t1] from frame-level speech activity.

    speech: (n,) bool, frame i covers [i * frame_s, (i + 1) * frame_s); cuts: the timeline's change
    times (any order); label_at: who speaks at a time. Pauses shorter than min_pause_s between speech
    frames stay inside the turn.
    """
    if t1 <= t0:
        return []
    # Look a little beyond [t0, t1] so that pauses cut by the edges are judged whole.
    pad = int(math.ceil(min_pause_s / frame_s)) + 1
    i0 = max(0, int(math.floor(t0 / frame_s)) - pad)
    i1 = min(len(speech), int(math.ceil(t1 / frame_s)) + pad)
    sp = speech[i0:i1].copy()
    idx = np.flatnonzero(sp)
    if len(idx) == 0:
        return []
    for g in np.flatnonzero(np.diff(idx) > 1):
        a, b = idx[g] + 1, idx[g + 1]
        if (b - a) * frame_s < min_pause_s:
            sp[a:b] = True
    edges = np.flatnonzero(np.diff(np.concatenate([[False], sp, [False]]).astype(np.int8)))
    inner_cuts = sorted(t for t in cuts if t0 < t < t1)
    out: list[Turn] = []
    for a, b in zip(edges[::2], edges[1::2]):
        s0, s1 = max(t0, (i0 + a) * frame_s), min(t1, (i0 + b) * frame_s)
        if s1 <= s0:
            continue
        bounds = [s0] + [c for c in inner_cuts if s0 < c < s1] + [s1]
        for x, y in zip(bounds[:-1], bounds[1:]):
            label = label_at(0.5 * (x + y))
            if label is not None:
                append_turn(out, x, y, label)
    return out


def turns_from_windows(starts: list[float], ends: list[float], fractions: list[float], t0: float, t1: float,
                       cuts: list[float], label_at: LabelAt) -> list[Turn]:
    """Labelled speech intervals within [t0, t1] from the windows overlapping it.

    starts, ends, fractions: every window pushed (starts and ends nondecreasing; fraction 0 for a
    window without an embedding). An interval between window boundaries is speech only if every
    window covering it has enough speech to fill at least half of it.
    """
    lo = bisect.bisect_right(ends, t0)      # first window ending after t0
    hi = bisect.bisect_left(starts, t1)     # windows from here start at or after t1
    if lo >= hi:
        return []
    bounds = set(starts[lo:hi]) | set(ends[lo:hi])
    bounds.update(t for t in cuts if t0 < t < t1)
    edges = sorted(b for b in bounds if t0 <= b <= t1)
    if not edges or edges[0] > t0:
        edges.insert(0, t0)
    if edges[-1] < t1:
        edges.append(t1)
    out: list[Turn] = []
    for a, b in zip(edges[:-1], edges[1:]):
        if b - a <= 1e-9:
            continue
        # Windows covering [a, b]: start <= a and end >= b (a contiguous index range).
        j0 = bisect.bisect_left(ends, b - 1e-9)
        j1 = bisect.bisect_right(starts, a + 1e-9)
        if j0 >= j1:
            continue
        # Speech in a window of length L with fraction f can fill at most f*L of [a, b].
        fill = min(min(1.0, fractions[j] * (ends[j] - starts[j]) / (b - a)) for j in range(j0, j1))
        if fill < 0.5:
            continue
        label = label_at(0.5 * (a + b))
        if label is not None:
            append_turn(out, a, b, label)
    return out


class SpeechActivity:
    """Where a stream has speech, as far as it has been seen: every embedding window's speech
    fraction and, when the caller gives it, per-frame speech.

    add_window(start_s, end_s, fraction)            windows in time order
    add_frames(first_frame, frame_s, speech (n,))   contiguous frames of one length
    turns(t0, t1, cuts, label_at, min_pause_s) -> list[Turn]
    """

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.ends: list[float] = []
        self.fractions: list[float] = []     # 0 for windows without an embedding
        self.frame_s: float | None = None
        self._frames: list[np.ndarray] = []
        self.n_frames = 0

    def add_window(self, start_s: float, end_s: float, fraction: float) -> None:
        if self.starts and (start_s < self.starts[-1] or end_s < self.ends[-1]):
            raise ValueError(f"windows must come in time order: [{start_s}, {end_s}) after "
                             f"[{self.starts[-1]}, {self.ends[-1]})")
        self.starts.append(start_s)
        self.ends.append(end_s)
        self.fractions.append(fraction)

    def add_frames(self, first_frame: int, frame_s: float, speech: np.ndarray) -> None:
        """speech: (n,) of frames [first_frame, first_frame + n), each frame_s long from stream
        start; True / >= 0.5 = speech. Calls must be contiguous and keep frame_s."""
        if self.frame_s is None:
            if not frame_s > 0:
                raise ValueError(f"frame_s must be > 0, got {frame_s}")
            self.frame_s = float(frame_s)
        elif abs(frame_s - self.frame_s) > 1e-12:
            raise ValueError(f"frame_s changed from {self.frame_s} to {frame_s}")
        if first_frame != self.n_frames:
            raise ValueError(f"speech frames must be contiguous: expected {self.n_frames}, got {first_frame}")
        x = np.asarray(speech).reshape(-1) >= 0.5
        self._frames.append(x)
        self.n_frames += len(x)

    def frames(self) -> np.ndarray:
        """Every frame's speech so far, (n_frames,) bool."""
        if len(self._frames) > 1:
            self._frames = [np.concatenate(self._frames)]
        return self._frames[0] if self._frames else np.zeros(0, dtype=bool)

    def span(self) -> tuple[float, float] | None:
        """(start of the first window, end of the last), None before any window."""
        return (self.starts[0], self.ends[-1]) if self.starts else None

    def turns(self, t0: float, t1: float, cuts: list[float], label_at: LabelAt, min_pause_s: float) -> list[Turn]:
        """Labelled speech intervals within [t0, t1]: frame-level speech where it is known, the
        windows beyond it (cuts, label_at as for turns_from_frames)."""
        if self.frame_s is None:
            return turns_from_windows(self.starts, self.ends, self.fractions, t0, t1, cuts, label_at)
        known = self.n_frames * self.frame_s
        out = turns_from_frames(self.frames(), self.frame_s, t0, min(t1, known), cuts, label_at, min_pause_s)
        if t1 > known:
            for t in turns_from_windows(self.starts, self.ends, self.fractions, max(t0, known), t1, cuts, label_at):
                append_turn(out, *t)
        return out


def change_times(turns) -> list[float]:
    """Speaker-change times of a diarization [(start, end, label), ...]: the start of each turn
    whose speaker differs from the speaker of the turn before it (pauses in between do not matter)."""
    out, prev = [], None
    for start, _, label in sorted(turns):
        if prev is not None and label != prev:
            out.append(float(start))
        prev = label
    return out


def write_rttm(turns, file_id: str, fp: IO[str]) -> None:
    """Write turns [(start, end, label), ...] as RTTM SPEAKER lines (times in seconds, 3 decimals)."""
    if not file_id or any(ch.isspace() for ch in file_id):
        raise ValueError(f"RTTM file id must be non-empty without whitespace, got {file_id!r}")
    for start, end, label in turns:
        if end <= start:
            continue
        fp.write(f"SPEAKER {file_id} 1 {start:.3f} {end - start:.3f} <NA> <NA> {label} <NA> <NA>\n")


def read_rttm(fp: IO[str]) -> dict[str, list[Turn]]:
    """Read RTTM SPEAKER lines -> {file_id: [Turn, ...] sorted by start}."""
    out: dict[str, list[Turn]] = {}
    for n, line in enumerate(fp, 1):
        parts = line.split()
        if not parts or parts[0] != "SPEAKER":
            continue
        if len(parts) < 8:
            raise ValueError(f"RTTM line {n}: expected at least 8 fields, got {len(parts)}")
        start, dur = float(parts[3]), float(parts[4])
        out.setdefault(parts[1], []).append(Turn(start, start + dur, parts[7]))
    for turns in out.values():
        turns.sort()
    return out
