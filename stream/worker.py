"""The inference worker: the one thread that runs the engine for every server session.

Every call into the engine (``Stream.accept``, ``Pipeline.run_pending``, ``Stream.finish``)
happens in the :class:`InferenceWorker` thread, so the server's event loop never blocks on
the model and a stream is never touched by two threads. Sessions submit audio and flushes
from the loop; each worker cycle takes at most ``slice_s`` seconds of queued audio from
every session (round robin, so a client that floods audio cannot starve the others), runs
the ready windows of all streams in one ``run_pending`` call (which batches windows of
equal shape into one forward), and hands each session a :class:`WorkerResult` through the
``deliver`` callable it registered (called on the worker thread).

Failures stay with their session: if the engine raises for a batch, each stream of the
batch is retried alone and only the ones that still fail get a ``fatal`` internal_error.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

import numpy as np

from decoders.events import ErrorEvent, Event
from stream.audio import AudioFormatError

log = logging.getLogger("wavlm_stream.server")


@dataclass
class WorkerResult:
    """What one worker cycle produced for one session (delivered on the event loop)."""
    events: list[Event] = field(default_factory=list)
    done_tags: list[Hashable] = field(default_factory=list)  # tags of submissions fully processed
    consumed_s: float = 0.0            # seconds of queued audio taken off the backlog
    finished: bool = False             # finish() ran: no more events will come
    fatal: ErrorEvent | None = None    # the engine failed for this session; close it


@dataclass
class _Chunk:
    samples: np.ndarray                # (n,) or (n, channels) at sample_rate, checked by _decode_audio
    sample_rate: int
    arrival: float                     # time.monotonic() when the message arrived
    tag: Hashable | None               # reported in done_tags once accepted and run


@dataclass(frozen=True)
class _Flush:
    """Queued after the audio: finish the stream (and with reset, start a fresh one)."""
    tag: Hashable | None
    reset: bool


@dataclass(eq=False)
class _Job:
    """The worker's side of a session: its Stream and the commands queued for it, in order."""
    deliver: Callable[[WorkerResult], None]
    stream: Any = None
    inbox: deque = field(default_factory=deque)  # _Chunk | _Flush
    flushing: bool = False             # a final (non-reset) flush is queued: accept no more audio
    done: bool = False                 # finished or failed: nothing more to do
    closed: bool = False               # the session is gone: deliver nothing


class InferenceWorker:
    """The one thread that runs the engine for every session (see the module docstring)."""

    def __init__(self, pipeline, *, batching: bool = True, slice_s: float = 1.0):
        self.pipeline = pipeline
        self.batching = batching
        self.slice_s = slice_s
        self._cv = threading.Condition()
        self._jobs: dict[int, _Job] = {}
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="wavlm-inference", daemon=True)
        # Counters for tests and the capacity benchmark (written by the worker thread only).
        self.cycles = 0
        self.max_batch = 0
        self.forwards = 0              # run_pending calls

    # Called from the event loop ------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cv:
            self._stopping = True
            self._jobs.clear()
            self._cv.notify()
        self._thread.join(timeout=30)

    @property
    def job_count(self) -> int:
        """Sessions whose state the worker holds."""
        with self._cv:
            return len(self._jobs)

    def open(self, job_id: int, deliver: Callable[[WorkerResult], None]) -> None:
        """Register a session; ``deliver`` is called from the worker thread with each result."""
        with self._cv:
            self._jobs[job_id] = _Job(deliver=deliver)

    def submit(self, job_id: int, samples: np.ndarray, sample_rate: int, arrival: float,
               tag: Hashable | None = None) -> None:
        """Queue audio for a session (dropped once its final flush is queued)."""
        with self._cv:
            job = self._jobs.get(job_id)
            if job is not None and not job.flushing and not job.done:
                job.inbox.append(_Chunk(samples, sample_rate, arrival, tag))
                self._cv.notify()

    def finish(self, job_id: int, tag: Hashable | None = None, *, reset: bool = False) -> None:
        """Flush the stream after its queued audio; ``reset`` starts a fresh stream afterwards."""
        with self._cv:
            job = self._jobs.get(job_id)
            if job is not None and not job.flushing and not job.done:
                job.inbox.append(_Flush(tag, reset))
                job.flushing = not reset
                self._cv.notify()

    def close(self, job_id: int) -> None:
        """Forget a session now (disconnect): its queued audio and stream are dropped."""
        with self._cv:
            job = self._jobs.pop(job_id, None)
            if job is not None:
                job.closed = True
                job.inbox.clear()
                # A cycle in flight keeps its reference to the stream until it ends; the
                # job is no longer listed, so nothing else reaches the stream.

    # The worker thread ---------------------------------------------------------------

    def _take(self) -> list[tuple[_Job, list[tuple[_Chunk, bool]], _Flush | None]]:
        """Under the lock: up to slice_s of audio from each job, and a flush that follows it."""
        work = []
        for job in self._jobs.values():
            if job.done:
                continue
            budget = self.slice_s
            taken: list[tuple[_Chunk, bool]] = []   # (piece, whether it ends its message)
            flush = None
            while job.inbox and budget > 0:
                item = job.inbox[0]
                if isinstance(item, _Flush):
                    job.inbox.popleft()
                    flush = item
                    break
                n = max(1, int(budget * item.sample_rate))
                if len(item.samples) <= n:
                    job.inbox.popleft()
                    taken.append((item, True))
                    budget -= len(item.samples) / item.sample_rate
                else:
                    taken.append((_Chunk(item.samples[:n], item.sample_rate, item.arrival, None), False))
                    item.samples = item.samples[n:]
                    budget = 0
            if taken or flush is not None:
                work.append((job, taken, flush))
        return work

    def _run(self) -> None:
        while True:
            with self._cv:
                work = self._take()
                while not work and not self._stopping:
                    self._cv.wait()
                    work = self._take()
                if self._stopping:
                    return
            try:
                self._cycle(work)
            except Exception:  # a bug here must not kill the worker for everyone
                log.exception("inference worker cycle failed")
                for job, _, _ in work:
                    self._deliver(job, WorkerResult(fatal=ErrorEvent("internal_error", "worker cycle failed")))

    def _cycle(self, work) -> None:
        self.cycles += 1
        results = {job: WorkerResult() for job, _, _ in work}
        live: list[_Job] = []
        for job, pieces, _ in work:
            result = results[job]
            try:
                if job.stream is None:
                    job.stream = self.pipeline.new_stream()
                for samples, rate, arrival, tags in _merge_small(pieces):
                    result.consumed_s += len(samples) / rate
                    try:
                        job.stream.accept(samples, rate, arrival)
                    except AudioFormatError as e:
                        result.events.append(ErrorEvent("bad_audio", str(e)))
                    result.done_tags.extend(tags)
                live.append(job)
            except Exception as e:
                log.exception("stream.accept failed")
                result.fatal = ErrorEvent("internal_error", f"the engine failed on this stream: {e}")

        ready = [job for job in live if not job.closed and job.stream.pending_windows]
        for job, events in self._run_windows(ready).items():
            if isinstance(events, Exception):
                results[job].fatal = ErrorEvent("internal_error", f"the model failed on this stream: {events}")
            else:
                results[job].events.extend(events)

        for job, _, flush in work:
            result = results[job]
            if flush is not None and result.fatal is None and not job.closed:
                try:
                    result.events.extend(job.stream.finish())
                except Exception as e:
                    log.exception("stream.finish failed")
                    result.fatal = ErrorEvent("internal_error", f"the engine failed to flush this stream: {e}")
                if flush.tag is not None:
                    result.done_tags.append(flush.tag)
                if flush.reset:
                    job.stream = None          # a fresh stream on the next audio or flush
                else:
                    result.finished = True
            self._deliver(job, result)

    def _run_windows(self, ready: list[_Job]) -> dict[_Job, list[Event] | Exception]:
        """Run the ready windows of ``ready``; per job: its events, or the exception it raised."""
        out: dict[_Job, list[Event] | Exception] = {}
        groups = [ready] if self.batching and ready else [[job] for job in ready]
        for group in groups:
            self.max_batch = max(self.max_batch, len(group))
            self.forwards += 1
            try:
                out.update(zip(group, self.pipeline.run_pending([job.stream for job in group])))
            except Exception as e:
                if len(group) == 1:
                    log.exception("run_pending failed")
                    out[group[0]] = e
                    continue
                # Find the stream(s) at fault; the others go on with their own results.
                for job in group:
                    try:
                        out[job] = self.pipeline.run_pending([job.stream])[0]
                    except Exception as e1:
                        log.exception("run_pending failed for one stream")
                        out[job] = e1
        return out

    def _deliver(self, job: _Job, result: WorkerResult) -> None:
        if result.fatal is not None or result.finished:
            with self._cv:
                job.done = True
                job.inbox.clear()
                job.stream = None
        if job.closed:
            job.stream = None
        else:
            job.deliver(result)


def _merge_small(pieces: list[tuple[_Chunk, bool]], min_s: float = 0.1):
    """Join runs of small consecutive pieces (up to ``min_s`` of audio) into one engine call.

    A client sending tiny messages (a few samples each) would otherwise cost one conv-encoder
    call per message and slow the worker for everyone. Yields (samples, rate, arrival, tags):
    arrival is the last piece's (latency is measured from when the whole block was there),
    tags those of the messages the block completes, in order.
    """
    block: list[_Chunk] = []
    tags: list[Hashable] = []

    def flush():
        samples = block[0].samples if len(block) == 1 else np.concatenate([c.samples for c in block])
        return samples, block[0].sample_rate, block[-1].arrival, list(tags)

    for piece, ends_message in pieces:
        if block and (piece.sample_rate != block[0].sample_rate
                      or sum(len(c.samples) for c in block) >= min_s * piece.sample_rate):
            yield flush()
            block, tags = [], []
        block.append(piece)
        if ends_message and piece.tag is not None:
            tags.append(piece.tag)
    if block:
        yield flush()
