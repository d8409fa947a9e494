"""Per-stream incremental transcription: greedy partials, endpointing, beam finals.

``SegmentTranscriber`` consumes CTC log-probabilities as they come out of the streaming
encoder and emits events:

* ``Partial`` each time the greedy text of the open segment changes (checked at every
  frame, so the sequence of events does not depend on how frames were split between
  pushes; ``end`` is the end of the frame at which the text changed);
* ``Final`` at each endpoint (see ``decoders.endpoint``), from the beam finaliser when one
  is given, else from the greedy path; ``finish()`` closes the open segment. With a
  ``final_pass``, the final decodes that second pass's log-probs of the segment (the
  pipeline runs the model offline over the segment's audio) instead of the streamed ones.
  With ``defer_finals``, a :class:`PendingFinal` stands in the Final's place: what the final
  needs is captured when its segment closes, and ``PendingFinal.compute()`` (the second pass
  and the beam search, the costly part) may run later on another thread (stream/worker.py
  does, so one session's finals do not hold back every other session's partials).

Every segment that produced a Partial gets exactly one Final with the same id; ids start
at 0 and increase by one per segment.

Cost per push of T frames: one vectorised argmax and max over (T, V), then a loop over the
T frames doing integer comparisons (no per-vocabulary work in Python).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .beam import BeamFinaliser
from .ctc import TokenRun, Vocabulary, add_to_runs, collapse, frame_time, greedy_runs, runs_to_words
from .endpoint import EndpointConfig, forced_cut
from .events import Event, Final, Partial

__all__ = ["PendingFinal", "SegmentTranscriber", "coalesce_partials"]

# Frames kept before a segment's first speech frame, so the beam search can still pick up
# a token that greedy decoding gave to the blank (160 ms).
PREROLL_FRAMES = 8


@dataclass(eq=False)
class PendingFinal:
    """A closed segment whose Final is still to be computed.

    ``compute()`` returns the Final; it reads only what was captured when the segment closed
    (its log-probs, the second pass's audio), never the transcriber, so any thread may call it,
    once. speech_start / speech_end: seconds of the segment's speech by the streamed greedy path,
    known at once (the pipeline labels the final's speaker from them). speaker: set by the caller.
    """

    segment: int
    speech_start: float
    speech_end: float
    compute: Callable[[], Final] = field(repr=False)
    speaker: str | None = None


class _FrameBuffer:
    """Growable (N, V) float32 + (N,) int buffer of frames with absolute indices [start, stop)."""

    def __init__(self, vocab_size: int) -> None:
        self._lp = np.empty((256, vocab_size), dtype=np.float32)
        self._ids = np.empty(256, dtype=np.int64)
        self._off = 0  # row of absolute frame `start`
        self._n = 0
        self.start = 0

    @property
    def stop(self) -> int:
        return self.start + self._n

    def reset(self, start: int) -> None:
        self._off, self._n, self.start = 0, 0, start

    def append(self, lp: np.ndarray, ids: np.ndarray) -> None:
        t = lp.shape[0]
        if self._off + self._n + t > self._lp.shape[0]:
            # Compact, and grow by doubling when compacting is not enough.
            need = self._n + t
            cap = self._lp.shape[0]
            while cap < need:
                cap *= 2
            new_lp = np.empty((cap, self._lp.shape[1]), dtype=np.float32)
            new_ids = np.empty(cap, dtype=np.int64)
            new_lp[: self._n] = self._lp[self._off : self._off + self._n]
            new_ids[: self._n] = self._ids[self._off : self._off + self._n]
            self._lp, self._ids, self._off = new_lp, new_ids, 0
        a = self._off + self._n
        self._lp[a : a + t] = lp
        self._ids[a : a + t] = ids
        self._n += t

    def drop_before(self, frame: int) -> None:
        """Forget frames before absolute ``frame``."""
        k = min(max(0, frame - self.start), self._n)
        self._off += k
        self._n -= k
        self.start += k

    def lp(self, a: int, b: int) -> np.ndarray:
        """Log-probs (b - a, V) of absolute frames [a, b) (a view)."""
        return self._lp[self._off + a - self.start : self._off + b - self.start]

    def id_at(self, frame: int) -> int:
        return int(self._ids[self._off + frame - self.start])

    def ids(self, a: int, b: int) -> np.ndarray:
        return self._ids[self._off + a - self.start : self._off + b - self.start]


class SegmentTranscriber:
    """Incremental CTC transcription of one stream (cheap to create; one per stream).

    vocab: the CTC vocabulary. endpoint: endpointing rule. finaliser: shared beam-search
    finaliser; None makes finals from the greedy path. final_pass: ``(first, stop) -> pass``,
    called when a segment of absolute frames [first, stop) closes, capturing what it needs
    then; ``pass(streamed)`` (later, on any thread) gives the second pass's log-probs
    (stop - first, V) from the streamed ones (same shape); None decodes finals from the
    streamed log-probs. defer_finals: emit a :class:`PendingFinal` in place of each Final.
    """

    def __init__(
        self,
        vocab: Vocabulary,
        endpoint: EndpointConfig | None = None,
        finaliser: BeamFinaliser | None = None,
        final_pass=None,
        defer_finals: bool = False,
    ) -> None:
        self.vocab = vocab
        self.defer_finals = defer_finals
        self.endpoint = endpoint or EndpointConfig()
        self.finaliser = finaliser
        self.final_pass = final_pass
        self._blank_map = vocab.blank_map()
        self._nonspeech = vocab.nonspeech_mask()
        self._min_sil = self.endpoint.min_silence_frames
        self._max_seg = self.endpoint.max_segment_frames
        self._buf = _FrameBuffer(len(vocab))
        self._next_frame: int | None = None  # absolute index the next push must start at
        self._next_segment = 0
        self._prev = vocab.blank_id  # mapped argmax of the last processed frame
        self._cursor = 0  # next absolute frame to process
        self._open_segment(0)

    # -- segment state -------------------------------------------------------------

    def _open_segment(self, start: int) -> None:
        """Start looking for the next segment's speech at absolute frame ``start``."""
        self._buf.drop_before(start)
        self._segment: int | None = None  # id once the segment has speech
        self._speech_start = 0
        self._speech_end = 0  # end (exclusive) of the last speech frame
        self._silence = 0  # consecutive non-speech frames since the last speech frame
        self._runs: list[TokenRun] = []
        self._words: list[str] = []  # completed words
        self._word = ""  # the word being spelled
        self._text = ""  # last text reported in a Partial
        self._last_delim: int | None = None
        self._last_blank: int | None = None

    def _close_segment(self, stop: int) -> Final | PendingFinal:
        """Final for the open segment, which owns frames [buf.start, stop) (or its PendingFinal)."""
        seg_first = self._buf.start
        streamed = self._buf.lp(seg_first, stop).copy()   # the buffer moves on; the final may wait
        second_pass = None if self.final_pass is None else self.final_pass(seg_first, stop)
        # A forced cut leaves later runs to the next segment.
        runs = None if self.final_pass is not None else [r for r in self._runs if r.start < stop]
        speech = frame_time(self._speech_start), frame_time(self._speech_end)
        segment, vocab, finaliser = self._segment, self.vocab, self.finaliser

        def compute() -> Final:
            lp = streamed
            if second_pass is not None:
                lp = np.asarray(second_pass(streamed), dtype=np.float32)
                if lp.shape != streamed.shape:
                    raise ValueError(f"final_pass returned shape {lp.shape}, expected {streamed.shape}")
            if finaliser is not None:
                text, words = finaliser.decode(lp, seg_first)
            else:
                seg_runs = greedy_runs(lp, vocab, seg_first) if runs is None else runs
                words = runs_to_words(seg_runs, vocab, lp, seg_first)
                text = " ".join(w.word for w in words)
            start, end = (words[0].start, words[-1].end) if words else speech
            return Final(segment=segment, text=text, start=start, end=end, words=words)

        pending = PendingFinal(segment, speech[0], speech[1], compute)
        return pending if self.defer_finals else compute()

    def _greedy_text(self) -> str:
        return " ".join(self._words + [self._word]) if self._word else " ".join(self._words)

    # -- public API ----------------------------------------------------------------

    @property
    def oldest_needed_frame(self) -> int:
        """The first frame a later Final may still cover (the open segment's start, with its pre-roll)."""
        return self._buf.start

    def push(self, log_probs: np.ndarray, first_frame: int) -> list[Event]:
        """Consume frames and return the events they cause.

        log_probs: (T, V) float CTC log-probabilities (log-softmax over V) of absolute
        frames [first_frame, first_frame + T). Pushes must be contiguous: first_frame equals
        the previous push's first_frame + T (the first push may start anywhere).
        """
        lp = np.asarray(log_probs)
        if lp.ndim != 2 or lp.shape[1] != len(self.vocab):
            raise ValueError(f"log_probs must be (T, {len(self.vocab)}), got shape {lp.shape}")
        if self._next_frame is None:
            self._next_frame = self._cursor = first_frame
            self._buf.reset(first_frame)
        elif first_frame != self._next_frame:
            raise ValueError(f"frames must be contiguous: expected first_frame={self._next_frame}, got {first_frame}")
        t = lp.shape[0]
        if t == 0:
            return []
        if np.isnan(lp).any():
            raise ValueError("log_probs contain NaN")
        self._next_frame = first_frame + t
        ids = self._blank_map[lp.argmax(axis=1)]
        self._buf.append(lp, ids)
        return self._process()

    def finish(self) -> list[Event]:
        """Close the open segment (Final for it, if it has speech). The stream may continue after."""
        events: list[Event] = []
        if self._segment is not None:
            events.append(self._close_segment(self._buf.stop))
        self._open_segment(self._buf.stop)
        self._prev = self.vocab.blank_id
        return events

    # -- frame loop ----------------------------------------------------------------

    def _process(self) -> list[Event]:
        """Run the frame state machine over buffered frames [cursor, buf.stop)."""
        events: list[Event] = []
        blank, delim = self.vocab.blank_id, self.vocab.delimiter_id
        nonspeech = self._nonspeech
        replay_until = -1  # frames before this are re-read after a forced cut: no Partials
        while self._cursor < self._buf.stop:
            a = self._cursor
            ids = self._buf.ids(a, self._buf.stop)
            emitted = collapse(ids, self._prev, blank).tolist()
            speech = (~nonspeech[ids]).tolist()
            ids_l = ids.tolist()
            restart = False
            for k, i in enumerate(ids_l):
                f = a + k
                if self._segment is None:
                    if not (emitted[k] and speech[k]):
                        self._prev = i
                        self._cursor = f + 1
                        # Keep only a short pre-roll before speech.
                        self._buf.drop_before(f + 1 - PREROLL_FRAMES)
                        continue
                    self._segment = self._next_segment
                    self._next_segment += 1
                    self._speech_start = f
                changed = False
                add_to_runs(self._runs, i, f, emitted[k], blank)
                if emitted[k]:
                    if i == delim:
                        if self._word:
                            self._words.append(self._word)
                            self._word = ""
                    else:
                        self._word += self.vocab.tokens[i]
                        changed = True
                if speech[k]:
                    self._silence = 0
                    self._speech_end = f + 1
                else:
                    self._silence += 1
                    if i == delim:
                        self._last_delim = f
                    elif i == blank:
                        self._last_blank = f
                self._prev = i
                self._cursor = f + 1
                if changed and f >= replay_until:
                    self._text = self._greedy_text()
                    events.append(Partial(self._segment, self._text, frame_time(self._speech_start), frame_time(f + 1)))
                elif f + 1 == replay_until and self._greedy_text() != self._text:
                    self._text = self._greedy_text()
                    events.append(Partial(self._segment, self._text, frame_time(self._speech_start), frame_time(f + 1)))
                if self._silence >= self._min_sil:
                    events.append(self._close_segment(f + 1))
                    self._open_segment(f + 1)
                elif f + 1 - self._speech_start >= self._max_seg:
                    cut = forced_cut(f, self._speech_start, self._last_delim, self._last_blank)
                    events.append(self._close_segment(cut))
                    # Re-read frames [cut, f] as the start of the next segment; repeats
                    # still collapse with the frame before the cut.
                    self._prev = self._buf.id_at(cut - 1)
                    self._open_segment(cut)
                    self._cursor = cut
                    replay_until = f + 1
                    restart = True
                    break
            if not restart:
                break
        return events


def coalesce_partials(events: list[Event]) -> list[Event]:
    """Keep only the last Partial of each run of Partials of the same segment.

    A transcriber reports every text change; a caller that delivers events once per chunk
    (a UI, a websocket) can use this to send only the newest partial per segment.
    Finals and other events are kept, in order.
    """
    out: list[Event] = []
    for e in events:
        if isinstance(e, Partial) and out and isinstance(out[-1], Partial) and out[-1].segment == e.segment:
            out[-1] = e
        else:
            out.append(e)
    return out
