"""FakePipeline: a stand-in with the engine's streaming API, for server tests only.

It has the same surface the server uses (``Pipeline.new_stream``, ``Stream.accept``,
``Stream.pending_windows``, ``Pipeline.run_pending``, ``Stream.finish``) but "recognises"
a code written into the audio, so a test knows exactly which transcript each client must
get and runs in milliseconds. The real-engine tests in test_server.py / test_vosk.py check
the same behaviour against ``stream.Pipeline`` with a tiny random-weight model.

The code: audio is a sequence of symbols, each ``SYMBOL_S`` seconds of a constant level.
Level k/10 (k = 1..8) is the word ``WORDS[k]``; level 0 is silence, which ends a segment;
level >= 0.95 is poison: ``run_pending`` raises, as a failing model would. A stream made with
``new_stream(defer_finals=True)`` yields a ``PendingFinal`` for each final, as ``stream.Stream``
does, whose ``compute()`` takes ``final_cost_s`` (and raises for a segment whose first word is
``failing_final``, as a failing second pass would).
"""

from __future__ import annotations

import threading
import time
import weakref

import numpy as np
import torch

from decoders.events import Final, Partial, Word
from decoders.transcriber import PendingFinal
from stream.audio import AudioFormatError, to_float_mono

SYMBOL_S = 0.32
WORDS = ["", "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
POISON = 0.97


def encode(words: list[str], sample_rate: int = 16000) -> np.ndarray:
    """int16 audio for a list of words ("" = a silent symbol, "POISON" = poison)."""
    n = int(round(SYMBOL_S * sample_rate))
    levels = [POISON if w == "POISON" else WORDS.index(w) / 10 for w in words]
    return np.concatenate([np.full(n, lv * 32767, dtype=np.int16) for lv in levels])


class FakeStream:
    def __init__(self, pipeline: "FakePipeline", defer_finals: bool = False):
        self.pipeline = pipeline
        self.defer_finals = defer_finals
        self.rate: int | None = None
        self.buffer = np.zeros(0, np.float32)
        self.windows_done = 0
        self.segment = 0
        self.words: list[Word] = []
        self.finished = False

    def accept(self, samples, sample_rate: int, arrival_time: float | None = None) -> None:
        if self.pipeline.accept_gate is not None:
            self.pipeline.accept_gate.wait(timeout=30)
        self.pipeline.accept_calls += 1
        x = to_float_mono(samples)
        if x.size == 0 or not np.isfinite(x).all():
            raise AudioFormatError("empty or non-finite audio")
        if self.rate is not None and sample_rate != self.rate:
            raise AudioFormatError("sample rate changed mid-stream")
        self.rate = sample_rate
        self.buffer = np.concatenate([self.buffer, x])
        self.pipeline.samples_accepted += len(x)

    @property
    def _window(self) -> int:
        return int(round(SYMBOL_S * self.rate))

    @property
    def pending_windows(self) -> int:
        return 0 if self.rate is None else len(self.buffer) // self._window

    def _decode_ready(self) -> list:
        events = []
        while self.rate is not None and len(self.buffer) >= self._window:
            level = float(np.mean(self.buffer[: self._window]))
            self.buffer = self.buffer[self._window:]
            start, end = self.windows_done * SYMBOL_S, (self.windows_done + 1) * SYMBOL_S
            self.windows_done += 1
            code = int(round(level * 10))
            if code > 0:
                self.words.append(Word(WORDS[code], start, end, 0.9))
                events.append(Partial(self.segment, self._text(), self.words[0].start, end))
            elif self.words:
                events.append(self._final())
        return events

    def _text(self) -> str:
        return " ".join(w.word for w in self.words)

    def _final(self) -> Final | PendingFinal:
        text = self._text() + " " * bool(self.pipeline.event_padding) + "x" * self.pipeline.event_padding
        final = Final(self.segment, text, self.words[0].start, self.words[-1].end,
                      tuple(self.words), speaker="S1")
        self.segment += 1
        self.words = []
        if not self.defer_finals:
            return final

        def compute() -> Final:
            self.pipeline.final_threads.add(threading.current_thread().name)
            self.pipeline.final_intra_op_threads.add(torch.get_num_threads())
            time.sleep(self.pipeline.final_cost_s)
            if final.words[0].word == self.pipeline.failing_final:
                raise RuntimeError("the second pass failed")
            return final
        return PendingFinal(final.segment, final.start, final.end, compute)

    def complete_final(self, pending: PendingFinal, final: Final) -> Final:
        return final

    def finish(self) -> list:
        if self.finished:
            return []
        events = self._decode_ready()
        if self.words:
            events.append(self._final())
        self.finished = True
        return events


class FakePipeline:
    """``window_cost_s``: sleep per window, once per batch (a batched forward costs about
    as much as one window of the longest stream in it). ``event_padding``: characters of
    filler appended to each final's text (to make big messages). ``accept_gate``: a
    ``threading.Event`` every ``accept`` waits for, to hold the worker busy while a test sends.
    ``final_cost_s``: sleep per deferred final (on the thread that computes it);
    ``failing_final``: a word whose segments' deferred finals raise."""

    def __init__(self, window_cost_s: float = 0.0, event_padding: int = 0,
                 accept_gate: threading.Event | None = None, final_cost_s: float = 0.0,
                 failing_final: str | None = None):
        self.window_cost_s = window_cost_s
        self.final_cost_s = final_cost_s
        self.failing_final = failing_final
        self.final_threads: set[str] = set()           # names of the threads that computed finals
        self.final_intra_op_threads: set[int] = set()  # torch's intra-op threads there
        self.event_padding = event_padding
        self.accept_gate = accept_gate
        self.batch_sizes: list[int] = []
        self.threads: set[str] = set()
        self.streams_created = 0
        self.accept_calls = 0
        self.samples_accepted = 0
        self.alive: weakref.WeakSet = weakref.WeakSet()   # streams something still references
        self._lock = threading.Lock()

    def new_stream(self, defer_finals: bool = False, enrolled: dict | None = None) -> FakeStream:
        self.streams_created += 1
        stream = FakeStream(self, defer_finals)
        self.alive.add(stream)
        return stream

    def run_pending(self, streams: list[FakeStream]) -> list[list]:
        self.threads.add(threading.current_thread().name)
        self.batch_sizes.append(len(streams))
        for s in streams:
            if s.rate is not None and np.any(s.buffer[: s.pending_windows * s._window] > POISON - 0.02):
                raise RuntimeError("poisoned window")
        longest = max((s.pending_windows for s in streams), default=0)
        if self.window_cost_s:
            time.sleep(self.window_cost_s * longest)
        return [s._decode_ready() for s in streams]


class ScriptedPipeline:
    """Streams that emit a fixed list of events as audio arrives, whatever the audio is:
    event i comes out once ``(i + 1) * every_s`` seconds of audio have been accepted, the rest
    at finish(). For testing what a client does with events (the browser page's rendering)."""

    def __init__(self, script: list, every_s: float = 0.25):
        self.script = list(script)
        self.every_s = every_s

    def new_stream(self, defer_finals: bool = False, enrolled: dict | None = None) -> "ScriptedStream":
        return ScriptedStream(self)        # its finals are scripted events: nothing to defer

    def run_pending(self, streams: list["ScriptedStream"]) -> list[list]:
        return [s._due() for s in streams]


class ScriptedStream:
    def __init__(self, pipeline: ScriptedPipeline):
        self.pipeline = pipeline
        self.seconds = 0.0
        self.next = 0

    def accept(self, samples, sample_rate: int, arrival_time: float | None = None) -> None:
        self.seconds += len(to_float_mono(samples)) / sample_rate

    @property
    def pending_windows(self) -> int:
        due = min(len(self.pipeline.script), int(self.seconds / self.pipeline.every_s))
        return max(0, due - self.next)

    def _due(self) -> list:
        n = self.pending_windows
        events = self.pipeline.script[self.next:self.next + n]
        self.next += n
        return events

    def finish(self) -> list:
        events = self.pipeline.script[self.next:]
        self.next = len(self.pipeline.script)
        return events
