"""stream/worker.py on its own: the inference thread's slicing, joining, flushing and failure
isolation, with the coded-audio FakePipeline (tests/fake_pipeline.py) instead of a model."""

import queue

import numpy as np
import pytest

from decoders.events import Final
from stream.worker import InferenceWorker, WorkerResult
from tests.fake_pipeline import SYMBOL_S, FakePipeline, encode

RATE = 16000


def collector() -> tuple[queue.Queue, callable]:
    q: queue.Queue = queue.Queue()
    return q, q.put


def results_until(q: queue.Queue, done, timeout: float = 10.0) -> list[WorkerResult]:
    """Results from q until ``done(results)`` holds."""
    got: list[WorkerResult] = []
    while not done(got):
        got.append(q.get(timeout=timeout))
    return got


@pytest.fixture
def worker_of():
    workers = []

    def make(pipeline, **kwargs) -> InferenceWorker:
        w = InferenceWorker(pipeline, **kwargs)
        workers.append(w)
        return w

    yield make
    for w in workers:
        w.stop()


def one_session(worker_of, job_id: int, worker_kwargs=None, **pipeline_kwargs):
    """A started worker over a FakePipeline with one session open: (pipeline, worker, its results)."""
    pipeline = FakePipeline(**pipeline_kwargs)
    worker = worker_of(pipeline, **(worker_kwargs or {}))
    worker.start()
    q, deliver = collector()
    worker.open(job_id, deliver)
    return pipeline, worker, q


def test_each_cycle_takes_at_most_one_slice_from_each_session(worker_of):
    """A session with 4 s queued cannot hold back one with 0.64 s: both are served in the first cycle."""
    worker = worker_of(FakePipeline(), slice_s=1.0)
    (qa, deliver_a), (qb, deliver_b) = collector(), collector()
    worker.open(1, deliver_a)
    worker.open(2, deliver_b)
    flood = encode(["alpha"] * int(4 / SYMBOL_S))
    worker.submit(1, flood, RATE, 0.0, tag="a")
    worker.submit(2, encode(["bravo", "bravo"]), RATE, 0.0, tag="b")
    worker.start()                                          # everything was queued before the first cycle
    first_b = qb.get(timeout=10)
    first_a = qa.get(timeout=10)
    assert first_a.consumed_s == pytest.approx(1.0)
    assert first_b.consumed_s == pytest.approx(2 * SYMBOL_S) and first_b.done_tags == ["b"]
    rest = results_until(qa, lambda got: got and got[-1].done_tags == ["a"])
    assert first_a.consumed_s + sum(r.consumed_s for r in rest) == pytest.approx(len(flood) / RATE)
    assert worker.cycles >= 4


def test_tiny_messages_are_joined_into_blocks_and_their_tags_come_back_in_order(worker_of):
    pipeline = FakePipeline()
    worker = worker_of(pipeline)
    q, deliver = collector()
    worker.open(7, deliver)
    audio = encode(["charlie"] * 4)
    pieces = np.array_split(audio, len(audio) // 160)       # 10 ms messages
    for i, piece in enumerate(pieces):
        worker.submit(7, piece, RATE, 0.0, tag=i)
    worker.start()
    got = results_until(q, lambda got: sum(len(r.done_tags) for r in got) == len(pieces))
    assert [t for r in got for t in r.done_tags] == list(range(len(pieces)))
    # 1.28 s in 0.1 s blocks: about 13 engine calls, not one per message.
    assert pipeline.accept_calls <= 14 < len(pieces)
    assert pipeline.samples_accepted == len(audio)


def test_finish_delivers_the_last_final_and_refuses_more_audio(worker_of):
    pipeline, worker, q = one_session(worker_of, 3)
    worker.submit(3, encode(["delta", "echo"]), RATE, 0.0)
    worker.finish(3, tag="end")
    worker.submit(3, encode(["golf"]), RATE, 0.0)           # after the flush: dropped
    got = results_until(q, lambda got: got and got[-1].finished)
    finals = [e for r in got for e in r.events if isinstance(e, Final)]
    assert [f.text for f in finals] == ["delta echo"]
    assert got[-1].done_tags == ["end"] and worker.job_count == 1
    with pytest.raises(queue.Empty):
        q.get(timeout=0.3)


def test_reset_flush_starts_a_fresh_stream(worker_of):
    pipeline, worker, q = one_session(worker_of, 4)
    worker.submit(4, encode(["alpha"]), RATE, 0.0)
    worker.finish(4, tag="reset", reset=True)
    worker.submit(4, encode(["bravo"]), RATE, 0.0)
    worker.finish(4, tag="end")
    got = results_until(q, lambda got: got and got[-1].finished)
    assert [e.text for r in got for e in r.events if isinstance(e, Final)] == ["alpha", "bravo"]
    assert pipeline.streams_created == 2


def test_a_stream_the_engine_fails_on_fails_alone_in_a_batch(worker_of):
    pipeline = FakePipeline()
    worker = worker_of(pipeline, batching=True)
    (qa, deliver_a), (qb, deliver_b) = collector(), collector()
    worker.open(1, deliver_a)
    worker.open(2, deliver_b)
    worker.submit(1, encode(["hotel", "POISON"]), RATE, 0.0)
    worker.submit(2, encode(["foxtrot", ""]), RATE, 0.0)
    worker.start()
    bad = qa.get(timeout=10)
    good = results_until(qb, lambda got: any(isinstance(e, Final) for r in got for e in r.events))
    assert bad.fatal is not None and bad.fatal.code == "internal_error"
    assert all(r.fatal is None for r in good)
    assert [e.text for r in good for e in r.events if isinstance(e, Final)] == ["foxtrot"]
    assert 2 in pipeline.batch_sizes                         # they did run as one batch first


def test_closed_session_gets_nothing_more_and_its_stream_is_dropped(worker_of):
    pipeline, worker, q = one_session(worker_of, 5)
    worker.submit(5, encode(["echo"]), RATE, 0.0)
    results_until(q, lambda got: bool(got))
    worker.close(5)
    worker.submit(5, encode(["echo"]), RATE, 0.0)
    worker.finish(5)
    with pytest.raises(queue.Empty):
        q.get(timeout=0.3)
    assert worker.job_count == 0


def finals_of(results: list[WorkerResult]) -> list[str]:
    return [e.text for r in results for e in r.events if isinstance(e, Final)]


def test_a_slow_final_runs_beside_the_windows_of_other_sessions(worker_of):
    """Session 1's final takes 1.5 s on the finals thread; session 2's partials come meanwhile."""
    pipeline = FakePipeline(final_cost_s=1.5)
    worker = worker_of(pipeline)
    (qa, deliver_a), (qb, deliver_b) = collector(), collector()
    worker.open(1, deliver_a)
    worker.open(2, deliver_b)
    worker.start()
    worker.submit(1, encode(["alpha", ""]), RATE, 0.0)      # closes a segment: a slow final
    first_a = qa.get(timeout=10)
    assert finals_of([first_a]) == [] and first_a.consumed_s == pytest.approx(2 * SYMBOL_S)
    worker.submit(2, encode(["bravo"]), RATE, 0.0)
    got_b = qb.get(timeout=1.0)                              # not after session 1's final
    assert [e.text for e in got_b.events] == ["bravo"]
    assert finals_of(results_until(qa, lambda got: bool(finals_of(got)))) == ["alpha"]
    assert pipeline.final_threads == {"wavlm-finals_0"}


def test_a_session_gets_its_events_in_order_behind_a_final_in_flight(worker_of):
    _, worker, q = one_session(worker_of, 1, final_cost_s=0.5)
    worker.submit(1, encode(["alpha", ""]), RATE, 0.0, tag="first")
    results_until(q, lambda got: bool(got))                  # the partial, and the audio taken
    worker.submit(1, encode(["bravo", "charlie"]), RATE, 0.0, tag="second")
    worker.finish(1, tag="end")
    got = results_until(q, lambda got: got and got[-1].finished)
    events = [(type(e).__name__, e.text) for r in got for e in r.events]
    assert events == [("Final", "alpha"), ("Partial", "bravo"), ("Partial", "bravo charlie"),
                      ("Final", "bravo charlie")]
    tags = [t for r in got for t in r.done_tags]
    assert tags == ["first", "second", "end"]                # each after the events before it
    # The audio behind the final was reported taken before the final was done.
    assert got[0].consumed_s == pytest.approx(2 * SYMBOL_S) and not got[0].events


def test_a_final_that_fails_ends_its_session_only(worker_of):
    pipeline = FakePipeline(final_cost_s=0.1, failing_final="golf")
    worker = worker_of(pipeline)
    (qa, deliver_a), (qb, deliver_b) = collector(), collector()
    worker.open(1, deliver_a)
    worker.open(2, deliver_b)
    worker.start()
    worker.submit(1, encode(["golf", "", "alpha"]), RATE, 0.0)
    worker.submit(2, encode(["hotel", ""]), RATE, 0.0)
    bad = results_until(qa, lambda got: got and got[-1].fatal is not None)
    assert finals_of(bad) == [] and "second pass failed" in bad[-1].fatal.message
    assert finals_of(results_until(qb, lambda got: bool(finals_of(got)))) == ["hotel"]
    worker.submit(1, encode(["alpha"]), RATE, 0.0)           # the failed session takes no more
    worker.submit(2, encode(["delta", ""]), RATE, 0.0)
    assert finals_of(results_until(qb, lambda got: bool(finals_of(got)))) == ["delta"]
    with pytest.raises(queue.Empty):
        qa.get(timeout=0.3)


def test_a_session_closed_while_its_final_is_in_flight_gets_nothing_more(worker_of):
    _, worker, q = one_session(worker_of, 1, final_cost_s=0.5)
    worker.submit(1, encode(["echo", ""]), RATE, 0.0)
    results_until(q, lambda got: bool(got))
    worker.close(1)
    with pytest.raises(queue.Empty):
        q.get(timeout=1.0)
    assert worker.job_count == 0


def test_finals_in_the_cycle_when_not_deferred(worker_of):
    # Computed in the cycle, the final comes in the cycle's one result (deferred, in a later one).
    pipeline, worker, q = one_session(worker_of, 1, {"defer_finals": False}, final_cost_s=0.3)
    worker.submit(1, encode(["foxtrot", ""]), RATE, 0.0)
    assert finals_of([q.get(timeout=10)]) == ["foxtrot"] and pipeline.final_threads == set()


def test_finals_waiting_for_the_finals_thread_are_bounded(worker_of):
    """Past max_finals_queued the inference thread waits for the finals thread (backpressure),
    rather than piling up finals and the audio each one holds."""
    pipeline = FakePipeline(final_cost_s=0.1)
    worker = worker_of(pipeline, max_finals_queued=2)
    queues = []
    for job in range(6):
        q, deliver = collector()
        queues.append(q)
        worker.open(job, deliver)
        worker.submit(job, encode(["alpha", ""]), RATE, 0.0)   # six finals due in the first cycle
    worker.start()
    for q in queues:
        assert finals_of(results_until(q, lambda got: bool(finals_of(got)))) == ["alpha"]
    assert worker.peak_finals_queued == 2 and worker.finals_waits == 4
    assert pipeline.final_threads == {"wavlm-finals_0"}


def test_the_finals_thread_keeps_to_one_intra_op_thread(worker_of):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)                                 # as `serve --threads 2` sets it
    try:
        pipeline, worker, q = one_session(worker_of, 1)
        worker.submit(1, encode(["alpha", ""]), RATE, 0.0)
        results_until(q, lambda got: bool(finals_of(got)))
        assert pipeline.final_intra_op_threads == {1} and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_a_session_with_finals_in_flight_waits_for_them(worker_of):
    """A client feeding faster than its finals are made is held back (its audio stays queued, so
    its reading pauses): at most max_finals_per_session of its finals are in flight."""
    pipeline, worker, q = one_session(worker_of, 1, {"slice_s": 2 * SYMBOL_S, "max_finals_per_session": 1},
                                      final_cost_s=0.2)
    words = ["alpha", "bravo", "charlie", "delta"]
    worker.submit(1, encode([x for w in words for x in (w, "")]), RATE, 0.0)   # one segment per cycle
    worker.finish(1)
    got = results_until(q, lambda got: got and got[-1].finished)
    assert finals_of(got) == words and worker.peak_finals_queued == 1
