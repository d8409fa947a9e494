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


def one_session(worker_of, job_id: int):
    """A started worker over a FakePipeline with one session open: (pipeline, worker, its results)."""
    pipeline = FakePipeline()
    worker = worker_of(pipeline)
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
    good = qb.get(timeout=10)
    assert bad.fatal is not None and bad.fatal.code == "internal_error"
    assert good.fatal is None and [e.text for e in good.events if isinstance(e, Final)] == ["foxtrot"]
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
