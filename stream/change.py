"""The bundled model's learned speaker-change detector, run incrementally on a stream.

`StreamingChangeDetector` feeds the detector (model.heads.ChangeDetector) the speaker
head's per-frame features chunk by chunk and returns each frame's change probability as
soon as the frame's look-ahead has arrived; the values are exactly those of the offline
``ChangeDetector.forward`` over the whole stream, because the convolutions are unpadded
and the stream keeps the `receptive_field - 1` input rows the next output needs.

`ChangePeaks` turns the probabilities into change candidates: local maxima above a
threshold, at least `min_gap` frames apart, confirmed by `confirm` lower frames after them.
The tracker (decoders.speaker.SpeakerTracker.push_candidate) decides whether a candidate
is a change of voice and who speaks after it.
"""

from __future__ import annotations

import numpy as np
import torch


class StreamingChangeDetector:
    """Per-stream state of one ChangeDetector (the module itself is shared).

    push(features (T, P), speech (T,)) -> (first_frame, probabilities (n,)) for the frames whose
    look-ahead is now complete; finish() -> the same for the last `lookahead` frames (zero rows after
    the end, as offline).
    """

    def __init__(self, detector):
        self.detector = detector
        # Input rows not yet past their last use: the history of zero rows before frame 0 to begin with.
        self._rows: torch.Tensor | None = None
        self._next = 0                          # next frame whose probability is due
        self._finished = False

    def push(self, features: torch.Tensor, speech: np.ndarray) -> tuple[int, np.ndarray]:
        if self._finished:
            raise RuntimeError("push() after finish()")
        features = torch.as_tensor(features)
        p = next(self.detector.parameters())
        with torch.inference_mode():
            rows = self.detector.inputs(features[None].to(device=p.device, dtype=p.dtype),
                                        torch.as_tensor(np.asarray(speech, dtype=np.float32))[None].to(p.device))[0]
        if self._rows is None:
            rows = torch.cat([rows.new_zeros(self.detector.history, rows.shape[1]), rows])
        else:
            rows = torch.cat([self._rows, rows])
        self._rows = rows
        return self._run()

    def finish(self) -> tuple[int, np.ndarray]:
        if self._finished or self._rows is None:
            self._finished = True
            return self._next, np.zeros(0, dtype=np.float32)
        self._finished = True
        self._rows = torch.cat([self._rows, self._rows.new_zeros(self.detector.lookahead, self._rows.shape[1])])
        return self._run()

    def _run(self) -> tuple[int, np.ndarray]:
        first = self._next
        rf = self.detector.receptive_field
        if self._rows.shape[0] < rf:
            return first, np.zeros(0, dtype=np.float32)
        with torch.inference_mode():
            logits = self.detector.valid(self._rows[None])[0]
        probs = torch.sigmoid(logits.float()).cpu().numpy()
        self._next += len(probs)
        # Keep the rows that the next output frame still needs.
        self._rows = self._rows[len(probs):]
        return first, probs


class ChangePeaks:
    """Incremental peak picking over per-frame change probabilities.

    A frame t is a candidate when p[t] > threshold, p[t] is the largest of frames
    [t - min_gap, t], the `confirm` frames after it are lower, and the last candidate is at
    least `min_gap` frames before it. push(first, probs) / finish() -> candidate frames.
    """

    def __init__(self, threshold: float, min_gap: int, confirm: int = 2):
        self.threshold = threshold
        self.min_gap = max(1, int(min_gap))
        self.confirm = max(0, int(confirm))
        self._p = np.zeros(0, dtype=np.float32)   # probabilities of frames [_first, _first + len)
        self._first = 0
        self._decided = 0                         # frames before this are decided
        self._last: int | None = None

    @property
    def decided_until(self) -> int:
        """No candidate will be reported before this frame any more."""
        return self._decided

    def push(self, first: int, probs: np.ndarray) -> list[tuple[int, float]]:
        if first != self._first + len(self._p):
            raise ValueError(f"probabilities must be contiguous: expected frame {self._first + len(self._p)}, "
                             f"got {first}")
        self._p = np.concatenate([self._p, np.asarray(probs, dtype=np.float32)])
        return self._decide(self._first + len(self._p) - self.confirm)

    def finish(self) -> list[tuple[int, float]]:
        return self._decide(self._first + len(self._p))

    def _decide(self, until: int) -> list[tuple[int, float]]:
        out = []
        p, base = self._p, self._first
        for t in range(self._decided, until):
            v = p[t - base]
            if v <= self.threshold or v < p[max(0, t - self.min_gap - base): t - base + 1].max():
                continue
            if (p[t - base + 1: t - base + 1 + self.confirm] >= v).any():
                continue
            if self._last is not None and t - self._last < self.min_gap:
                continue
            out.append((t, float(v)))
            self._last = t
        self._decided = max(self._decided, until)
        # Keep min_gap frames of history for the local-maximum test.
        drop = max(0, self._decided - self.min_gap - base)
        if drop:
            self._p = self._p[drop:]
            self._first += drop
        return out
