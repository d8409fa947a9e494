"""Endpointing: where a segment of speech ends.

The rule, applied frame by frame to the greedy CTC path (so it is independent of how
frames arrive):

* A segment opens at the first frame that emits a speech token (not blank, delimiter or
  special).
* It closes (endpoint) once ``min_silence_s`` of consecutive non-speech frames (argmax
  blank, delimiter or special) follow its last speech frame. The segment owns that
  trailing silence, so the beam search sees how the last word ends.
* It is force-closed once it has lasted ``max_segment_s`` since its first speech frame.
  The cut goes after the latest word delimiter in the segment, else after the latest
  blank frame (a blank never lies inside a run of one token, so no token is split), else
  at the current frame. Frames after the cut start the next segment.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .ctc import FRAME_S

__all__ = ["EndpointConfig", "forced_cut"]


@dataclass(frozen=True)
class EndpointConfig:
    min_silence_s: float = 0.5  # non-speech after the last speech frame that closes a segment
    max_segment_s: float = 15.0  # longest segment, measured from its first speech frame

    def __post_init__(self) -> None:
        if not (math.isfinite(self.min_silence_s) and self.min_silence_s > 0):
            raise ValueError(f"min_silence_s must be > 0, got {self.min_silence_s}")
        if not (math.isfinite(self.max_segment_s) and self.max_segment_s > 0):
            raise ValueError(f"max_segment_s must be > 0, got {self.max_segment_s}")

    @property
    def min_silence_frames(self) -> int:
        """min_silence_s in frames (at least 1); rounded to the nearest frame."""
        return max(1, round(self.min_silence_s / FRAME_S))

    @property
    def max_segment_frames(self) -> int:
        """max_segment_s in frames (at least 2, so a forced cut always leaves a non-empty segment)."""
        return max(2, round(self.max_segment_s / FRAME_S))


def forced_cut(now: int, speech_start: int, last_delimiter: int | None, last_blank: int | None) -> int:
    """Absolute frame at which to cut a segment that reached its maximum length.

    now: the frame just processed; speech_start: the segment's first speech frame;
    last_delimiter / last_blank: latest frame (absolute) in the segment whose argmax was
    the delimiter / a blank, or None. Returns c with ``speech_start < c <= now + 1``: the
    segment keeps frames before c, the next one starts at c.
    """
    for f in (last_delimiter, last_blank):
        if f is not None and f > speech_start:
            return f + 1
    return now + 1
