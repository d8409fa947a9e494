"""The inference worker: the one thread that runs the engine for every server session.

Every call into the engine (``Stream.accept``, ``Pipeline.run_pending``, ``Stream.finish``)
happens in the :class:`InferenceWorker` thread, so the server's event loop never blocks on
the model and a stream is never touched by two threads. Sessions submit audio and flushes
from the loop; each worker cycle takes at most ``slice_s`` seconds of queued audio from
every session (round robin, so a client that floods audio cannot starve the others), runs
the ready windows of all streams in one ``run_pending`` call (which batches windows of
equal shape into one forward), and hands each session a :class:`WorkerResult` through the
``deliver`` callable it registered (called on the worker thread).

Finals run beside it: a stream closing a segment yields a ``PendingFinal`` (the segment's
second pass and beam search, ~0.1-0.4 s for a 15 s segment of the bundled model), which the
one *finals thread* computes while this thread goes on running every session's windows, so
one session's final no longer delays everyone's partials. Each session still gets its events
in the stream's order: what its stream produced after a pending final waits in the session's
outbox until that final is done (the audio's consumption is reported at once, so the client's
backpressure does not wait for it). The final's speaker label is decided when its segment
closes, so it does not depend on when the final was computed.

Finals are bounded (a pending final keeps its segment's audio, up to ~1.2 MB): a session with
``max_finals_per_session`` finals in flight gets no more audio taken until one is done (a
client sending faster than its finals are made is slowed by backpressure, the others are not),
and past ``max_finals_queued`` in all the inference thread waits for the finals thread. Waiting,
not computing the final itself: two threads running passes of every length grew two allocator
arenas (bench/soak.py).

Failures stay with their session: if the engine raises for a batch, each stream of the
batch is retried alone and only the ones that still fail get a ``fatal`` internal_error.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

import numpy as np

from decoders.events import ErrorEvent, Event
from decoders.transcriber import PendingFinal
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

    def then(self, later: "WorkerResult") -> "WorkerResult":
        """This result followed by ``later``, as one delivery."""
        return WorkerResult(self.events + later.events, self.done_tags + later.done_tags,
                            self.consumed_s + later.consumed_s, self.finished or later.finished,
                            self.fatal or later.fatal)


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
class _FinalInFlight:
    """A session's final being computed on the finals thread; ``stream`` stamps it when done."""
    future: Future
    pending: PendingFinal
    stream: Any


@dataclass(eq=False)
class _Job:
    """The worker's side of a session: its Stream and the commands queued for it, in order."""
    deliver: Callable[[WorkerResult], None]
    enrolled: dict | None = None       # name -> voice embedding (E,) of the session's own known voices
    stream: Any = None
    inbox: deque = field(default_factory=deque)  # _Chunk | _Flush
    flushing: bool = False             # a final (non-reset) flush is queued: accept no more audio
    done: bool = False                 # finished or failed: nothing more to do
    closed: bool = False               # the session is gone: deliver nothing
    # Worker thread only: what is due to the session, in order: results, and finals in flight
    # that the results behind them wait for.
    outbox: deque = field(default_factory=deque)  # WorkerResult | _FinalInFlight


class InferenceWorker:
    """The one thread that runs the engine for every session (see the module docstring)."""

    def __init__(self, pipeline, *, batching: bool = True, slice_s: float = 1.0, defer_finals: bool = True,
                 max_finals_queued: int = 16, max_finals_per_session: int = 2):
        self.pipeline = pipeline
        self.batching = batching
        self.slice_s = slice_s
        self.defer_finals = defer_finals   # False: finals computed in the cycle, as Stream.feed does
        self.max_finals_queued = max_finals_queued
        self.max_finals_per_session = max_finals_per_session
        self._cv = threading.Condition()
        self._jobs: dict[int, _Job] = {}
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="wavlm-inference", daemon=True)
        self._finals = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wavlm-finals",
                                          initializer=one_intra_op_thread)
        self._finals_done = False          # a final finished since the worker last looked (under _cv)
        self._finals_queued = 0            # submitted and not done (under _cv)
        self._waiting: set[_Job] = set()   # jobs with a final in flight (worker thread only)
        # Counters for tests and the capacity benchmark (written by the worker thread only).
        self.cycles = 0
        self.max_batch = 0
        self.forwards = 0              # run_pending calls
        self.peak_finals_queued = 0    # most finals waiting for (or on) the finals thread at once
        self.finals_waits = 0          # times the inference thread waited for a place in the finals queue

    # Called from the event loop ------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cv:
            self._stopping = True
            self._jobs.clear()
            self._cv.notify()
        self._thread.join(timeout=30)
        self._finals.shutdown(wait=False, cancel_futures=True)

    @property
    def job_count(self) -> int:
        """Sessions whose state the worker holds."""
        with self._cv:
            return len(self._jobs)

    def open(self, job_id: int, deliver: Callable[[WorkerResult], None], enrolled: dict | None = None) -> None:
        """Register a session; ``deliver`` is called from the worker thread with each result.
        ``enrolled``: voices the session's streams know by name, beside the pipeline's own."""
        with self._cv:
            self._jobs[job_id] = _Job(deliver=deliver, enrolled=enrolled)

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
            if job.done or self._finals_in_flight(job) >= self.max_finals_per_session:
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
                while not work and not self._finals_done and not self._stopping:
                    self._cv.wait()
                    work = self._take()
                if self._stopping:
                    return
                finals_done, self._finals_done = self._finals_done, False
            try:
                if finals_done:
                    for job in list(self._waiting):
                        self._send_ready(job)
                if work:
                    self._cycle(work)
            except Exception:  # a bug here must not kill the worker for everyone
                log.exception("inference worker cycle failed")
                for job, _, _ in work:
                    self._drop_outbox(job)
                    self._deliver(job, WorkerResult(fatal=ErrorEvent("internal_error", "worker cycle failed")))

    def _cycle(self, work) -> None:
        self.cycles += 1
        results = {job: WorkerResult() for job, _, _ in work}
        live: list[_Job] = []
        for job, pieces, _ in work:
            result = results[job]
            try:
                if job.stream is None:
                    job.stream = self.pipeline.new_stream(defer_finals=self.defer_finals, enrolled=job.enrolled)
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
            stream = job.stream                # the one that made this cycle's events (a reset drops it)
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
            self._queue(job, result, stream)

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

    # Delivery, in each stream's order --------------------------------------------------

    def _queue(self, job: _Job, result: WorkerResult, stream) -> None:
        """Put a cycle's result in the job's outbox, each PendingFinal in it sent to the finals
        thread, and deliver what is ready."""
        if result.fatal is not None or result.finished:
            self._retire(job)                  # take no more work for it; its outbox still drains
        piece = WorkerResult()
        for event in result.events:
            if isinstance(event, PendingFinal):
                job.outbox.append(piece)
                job.outbox.append(_FinalInFlight(self._submit_final(event), event, stream))
                self._waiting.add(job)
                piece = WorkerResult()
            else:
                piece.events.append(event)
        piece.done_tags, piece.finished, piece.fatal = result.done_tags, result.finished, result.fatal
        job.outbox.append(piece)
        if result.consumed_s:
            if isinstance(job.outbox[0], _FinalInFlight):
                # Backpressure counts audio the engine has taken, whatever waits behind a final.
                self._deliver(job, WorkerResult(consumed_s=result.consumed_s))
            else:
                job.outbox[0].consumed_s += result.consumed_s
        self._send_ready(job)

    @staticmethod
    def _finals_in_flight(job: _Job) -> int:
        return sum(isinstance(x, _FinalInFlight) and not x.future.done() for x in job.outbox)

    def _submit_final(self, pending: PendingFinal) -> Future:
        with self._cv:
            if self._finals_queued >= self.max_finals_queued:
                self.finals_waits += 1
            while self._finals_queued >= self.max_finals_queued and not self._stopping:
                self._cv.wait()
            self._finals_queued += 1
            self.peak_finals_queued = max(self.peak_finals_queued, self._finals_queued)
        future = self._finals.submit(pending.compute)
        future.add_done_callback(self._final_done)
        return future

    def _final_done(self, _future: Future) -> None:     # on the finals thread (or at once if cancelled)
        with self._cv:
            self._finals_done = True
            self._finals_queued -= 1
            self._cv.notify()

    def _send_ready(self, job: _Job) -> None:
        """Deliver, as one result, the job's outbox up to its first final still in flight."""
        if job.closed:
            self._drop_outbox(job)
            return
        ready: WorkerResult | None = None
        while job.outbox:
            head = job.outbox[0]
            if isinstance(head, _FinalInFlight):
                if not head.future.done():
                    break
                job.outbox.popleft()
                try:
                    piece = WorkerResult([head.stream.complete_final(head.pending, head.future.result())])
                except Exception as e:
                    log.exception("a final failed")
                    self._drop_outbox(job)         # _deliver retires the job on the fatal result
                    piece = WorkerResult(fatal=ErrorEvent("internal_error", f"the engine failed on a final: {e}"))
            else:
                piece = job.outbox.popleft()
            ready = piece if ready is None else ready.then(piece)
        if not any(isinstance(x, _FinalInFlight) for x in job.outbox):
            self._waiting.discard(job)
        if ready is not None:
            self._deliver(job, ready)

    def _drop_outbox(self, job: _Job) -> None:
        for item in job.outbox:
            if isinstance(item, _FinalInFlight):
                item.future.cancel()
        job.outbox.clear()
        self._waiting.discard(job)

    def _retire(self, job: _Job) -> None:
        """Finished or failed: no more work for the job, and its stream goes."""
        with self._cv:
            job.done = True
            job.inbox.clear()
            job.stream = None

    def _deliver(self, job: _Job, result: WorkerResult) -> None:
        if result.fatal is not None or result.finished:
            self._retire(job)
        if job.closed:
            job.stream = None
        else:
            job.deliver(result)


def one_intra_op_thread() -> None:
    """The finals thread's (and the server's enrolment thread's) torch ops run on this thread alone
    (torch's setting is per thread).

    It runs while the inference thread uses the cores it was given (``--threads``); a second team
    of intra-op threads on the same cores would make both wait at each other's barriers.
    """
    import torch

    torch.set_num_threads(1)


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
