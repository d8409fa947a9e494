"""Finals from a second pass: the model run offline over each closing segment's audio.

The stream's windows see at most ``right_ms`` of the future, and a group-norm front end
normalises with running statistics (stream/encoder.py), so the streamed log-probs drift
from what the model gives offline. Partials must come from the stream, but a final is
only due once its segment has ended: by then the whole segment has arrived, and one
offline forward over its audio (with up to ``context_frames`` of audio either side, the
window's left context) gives finals as accurate as transcribing the segment offline, for
the cost of one offline pass over the speech (silence between segments is not run again).

:class:`FinalPass` is per-stream state: the audio a later final may still need (the open
segment and its context, trimmed as segments close) and the callable the stream's
``SegmentTranscriber`` calls when it closes a segment, which captures that segment's audio
and returns the pass to run over it (at once, or later on the server's finals thread).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

import numpy as np

#: Samples per encoder frame and samples one frame reads, for the standard conv strides and kernels;
#: the pipeline passes the model's own.
FRAME_SAMPLES = 320
RECEPTIVE_FIELD = 400

#: Each pass covers a multiple of this many frames where the audio allows (more context, else less),
#: so the passes of a long stream come in a few lengths: with every segment a new length, freed
#: buffers of all sizes fragmented the allocator and RSS kept creeping up (bench/soak.py).
BUCKET_FRAMES = 32


#: Buffers at least this large come straight from the OS and go back to it when freed (glibc).
MMAP_THRESHOLD_BYTES = 1 << 20


@functools.cache
def return_large_buffers_to_the_os() -> bool:
    """Fix glibc's mmap threshold at ``MMAP_THRESHOLD_BYTES``, once per process; False where not glibc.

    glibc raises the threshold to the size of each large buffer freed (up to 32 MB), after
    which buffers of that size come from the heap and stay there when freed. A pass over a
    15 s segment frees tens of MB of activations of a size the next segment does not reuse,
    so with several streams the heap kept growing (bench/soak.py: +90 MB over 20 sessions).
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    M_MMAP_THRESHOLD = -3
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


class AudioTail:
    """The most recent 16 kHz samples of a stream, addressed by absolute sample index."""

    def __init__(self) -> None:
        self._pieces: list[np.ndarray] = []
        self.start = 0          # absolute index of the first kept sample
        self.stop = 0           # absolute index one past the last sample

    def append(self, samples: np.ndarray) -> None:
        if samples.size:
            self._pieces.append(np.asarray(samples, dtype=np.float32))
            self.stop += samples.shape[0]

    def trim(self, before: int) -> None:
        """Forget samples before absolute index ``before``."""
        while self._pieces and self.start + self._pieces[0].shape[0] <= before:
            self.start += self._pieces.pop(0).shape[0]
        if self._pieces and self.start < before:
            cut = before - self.start
            self._pieces[0] = self._pieces[0][cut:]
            self.start = before

    def get(self, a: int, b: int) -> np.ndarray:
        """Samples [a, b) (clipped to what is kept), as one array."""
        a, b = max(a, self.start), min(b, self.stop)
        if b <= a:
            return np.zeros(0, dtype=np.float32)
        whole = self._pieces[0] if len(self._pieces) == 1 else np.concatenate(self._pieces)
        self._pieces = [whole]
        return whole[a - self.start:b - self.start]

    def __len__(self) -> int:
        return self.stop - self.start


class FinalPass:
    """One stream's second pass. ``log_probs_of`` maps 16 kHz audio (N,) to the model's
    offline CTC log-probs (T, V) (``Pipeline.offline_log_probs``)."""

    def __init__(self, log_probs_of, context_frames: int, frame_samples: int = FRAME_SAMPLES,
                 receptive_field: int = RECEPTIVE_FIELD):
        self.log_probs_of = log_probs_of
        self.context_frames = context_frames
        self.frame_samples = frame_samples
        self.receptive_field = receptive_field
        self.audio = AudioTail()
        # Frames at or after this are not used even where their audio has arrived (the stream sets
        # it to the end of the window being decoded; None at the end of the stream), so a final
        # depends on the audio only, not on how it was cut into messages.
        self.frame_limit: int | None = None
        return_large_buffers_to_the_os()

    def push(self, samples: np.ndarray) -> None:
        """Audio as accepted by the stream (16 kHz float32, contiguous with the last push)."""
        self.audio.append(samples)

    def keep_from_frame(self, frame: int) -> None:
        """No final will need frames before ``frame``: drop the audio only they (and their context) read."""
        self.audio.trim(max(0, frame - self.context_frames) * self.frame_samples)

    def span(self, first: int, stop: int) -> tuple[int, int]:
        """Frames [lo, hi) the pass over segment frames [first, stop) runs on: ``context_frames``
        either side where the kept audio has them, rounded to a multiple of ``BUCKET_FRAMES``
        (by taking more context if the audio has it, else less). hi may fall short of stop
        where the audio ends before the stream's last (padded) frames."""
        hop = self.frame_samples
        have_lo = -(-self.audio.start // hop)                            # first frame whose samples are kept
        have_hi = max(0, (self.audio.stop - self.receptive_field) // hop + 1)   # frames the audio completes
        if self.frame_limit is not None:
            have_hi = min(have_hi, self.frame_limit)
        lo = min(first, max(first - self.context_frames, have_lo))
        hi = max(lo, min(stop + self.context_frames, have_hi))
        more, less = (lo - hi) % BUCKET_FRAMES, (hi - lo) % BUCKET_FRAMES
        if more <= (lo - have_lo) + (have_hi - hi):
            grow = min(more, lo - have_lo)
            lo, hi = lo - grow, hi + more - grow
        elif less <= (first - lo) + max(0, hi - stop):
            shrink = min(less, first - lo)
            lo, hi = lo + shrink, hi - (less - shrink)
        return lo, hi

    def __call__(self, first: int, stop: int):
        """The pass over closing segment frames [first, stop), with its audio captured now:
        ``pass(streamed)`` -> log-probs (stop - first, V) from the model over that audio.

        The returned callable reads nothing of this object's later state (the stream keeps
        pushing and trimming audio), so it may run later and on another thread. Frame f reads
        samples [f * 320, f * 320 + 400). Rows the kept audio cannot give (a tail the streaming
        encoder flushed with padding, audio shorter than one frame) keep their streamed values.
        """
        lo, hi = self.span(first, stop)
        if hi <= first or lo * self.frame_samples < self.audio.start:
            return _keep_streamed
        # A view of AudioTail's joined array: the tail never writes into arrays it has handed out.
        audio = self.audio.get(lo * self.frame_samples, (hi - 1) * self.frame_samples + self.receptive_field)
        log_probs_of = self.log_probs_of

        def second_pass(streamed: np.ndarray) -> np.ndarray:
            lp = log_probs_of(audio)[first - lo:stop - lo]
            if lp.shape[0] < stop - first:
                lp = np.concatenate([lp, streamed[lp.shape[0]:]])
            return lp

        return second_pass


def _keep_streamed(streamed: np.ndarray) -> np.ndarray:
    return streamed
