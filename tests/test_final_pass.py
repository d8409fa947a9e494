"""stream/final_pass.py and the pipeline's finals from a second, offline pass over each segment."""

import numpy as np
import pytest
import soundfile as sf

from decoders.ctc import greedy_decode
from stream.final_pass import AudioTail, FinalPass
from stream.pipeline import DEFAULT_MODEL, Pipeline, StreamConfig

EXAMPLES = DEFAULT_MODEL.parent.parent / "examples"


def test_audio_tail_keeps_absolute_indices_across_pieces_and_trims():
    tail = AudioTail()
    for piece in np.split(np.arange(100, dtype=np.float32), [7, 30, 31, 64]):
        tail.append(piece)
    assert (tail.start, tail.stop, len(tail)) == (0, 100, 100)
    np.testing.assert_array_equal(tail.get(25, 70), np.arange(25, 70))
    tail.trim(40)
    assert tail.start == 40 and len(tail) == 60
    np.testing.assert_array_equal(tail.get(0, 45), np.arange(40, 45))   # clipped to what is kept
    tail.append(np.arange(100, 110, dtype=np.float32))
    np.testing.assert_array_equal(tail.get(95, 200), np.arange(95, 110))
    assert tail.get(300, 400).shape == (0,)


def _frame_numbering_model(lengths):
    """A stand-in for the model over audio whose sample values are their absolute indices: row k
    holds the absolute frame it stands for (the sample its window starts at / 320)."""
    def log_probs_of(audio):
        lengths.append(len(audio))
        frames = (len(audio) - 400) // 320 + 1
        return np.repeat(audio[::320][:frames, None] / 320, 3, axis=1)
    return log_probs_of


def test_final_pass_rows_are_the_segment_frames_in_a_bucketed_span_of_context():
    lengths = []
    fp = FinalPass(_frame_numbering_model(lengths), context_frames=10)
    fp.push(np.arange(320 * 200, dtype=np.float32))                  # frames 0..198 complete
    streamed = np.full((30, 3), -1.0, dtype=np.float32)
    np.testing.assert_array_equal(fp(50, 80)(streamed)[:, 0], np.arange(50, 80))
    # 10 frames of context either side (40..90) make 50 frames: 14 more on the left give 64.
    assert fp.span(50, 80) == (26, 90) and lengths[-1] == (64 - 1) * 320 + 400
    # At the start of the stream the left context is what exists; the right grows instead.
    np.testing.assert_array_equal(fp(3, 8)(streamed[:5])[:, 0], np.arange(3, 8))
    assert fp.span(3, 8) == (0, 32)


def test_final_pass_takes_less_context_where_the_audio_has_no_more():
    fp = FinalPass(_frame_numbering_model([]), context_frames=10)
    fp.push(np.arange(320 * 40 + 80, dtype=np.float32))              # frames 0..39
    assert fp.span(5, 30) == (5, 37)                                 # 40 frames -> 32: 5 on the left, 3 on the right
    np.testing.assert_array_equal(fp(5, 30)(np.zeros((25, 3), np.float32))[:, 0], np.arange(5, 30))
    assert fp.span(0, 10) == (0, 32)                                 # no room on the left: the right grows
    fp.keep_from_frame(20)                                           # audio from frame 10 on
    assert fp.span(12, 30) == (10, 40)                               # 30 frames, and neither 32 nor 0 within reach


def test_final_pass_keeps_streamed_rows_it_cannot_compute():
    fp = FinalPass(lambda audio: np.zeros(((len(audio) - 400) // 320 + 1, 3), dtype=np.float32), context_frames=4)
    fp.push(np.zeros(320 * 10 + 80, dtype=np.float32))              # frames 0..9 exist
    streamed = np.full((4, 3), -1.0, dtype=np.float32)
    rows = fp(8, 12)(streamed)                                     # frames 10, 11: a padded tail
    np.testing.assert_array_equal(rows[:, 0], [0, 0, -1, -1])
    fp.keep_from_frame(9)                                           # keeps frames 5.. (4 of context)
    assert fp.audio.start == 5 * 320
    np.testing.assert_array_equal(fp(2, 4)(streamed[:2]), streamed[:2])   # audio already dropped


def _stream_finals(pipe, audio, block=3200):
    s = pipe.new_stream()
    events = []
    for i in range(0, len(audio), block):
        events += s.feed(audio[i:i + block], 16000)
    events += s.finish()
    return [e for e in events if e.type == "final"], [e for e in events if e.type == "partial"]


@pytest.fixture(scope="module")
def bundled():
    from model import load_model

    return load_model(DEFAULT_MODEL)


def test_finals_with_whole_file_context_are_the_offline_transcript(bundled, monkeypatch):
    # With left and right context covering the file, every window, and so every segment's pass,
    # sees all of it (and passes are not cut to a multiple of frames here): the pass is the offline
    # forward over the file, and the (greedy) finals spell what offline greedy decoding spells
    # (letter for letter: a segment boundary also ends a word, where offline may run two together).
    monkeypatch.setattr("stream.final_pass.BUCKET_FRAMES", 1)
    audio, sr = sf.read(EXAMPLES / "single_speaker.wav", dtype="float32")
    assert sr == 16000
    pipe = Pipeline(bundled, StreamConfig(beam=False, left_ms=60000, right_ms=60000))
    offline = greedy_decode(pipe.offline_log_probs(audio), pipe.vocabulary)
    finals, partials = _stream_finals(pipe, audio)
    assert len(finals) >= 2 and partials

    def letters(text):
        return text.replace(" ", "")

    assert letters("".join(f.text for f in finals)) == letters(offline)


def test_final_pass_with_default_settings_and_beam_keeps_the_stream_working(bundled):
    audio, _ = sf.read(EXAMPLES / "two_speakers.wav", dtype="float32")
    pipe = Pipeline(bundled, StreamConfig())
    s = pipe.new_stream()
    events = s.feed(audio, 16000) + s.finish()
    finals = [e for e in events if e.type == "final"]
    assert finals and all(f.text for f in finals)
    assert sorted({e.segment for e in events if e.type == "partial"}) == [f.segment for f in finals]
    # The audio kept for later finals stays bounded by the open segment and its context.
    assert len(s._final_pass.audio) <= (pipe.window_config.left + pipe.endpoint.max_segment_frames + 200) * 320


@pytest.mark.parametrize("block", [320, 1234, 16000])
def test_finals_do_not_depend_on_how_the_audio_was_cut(bundled, block):
    # The pass uses audio up to the end of the window being decoded, not whatever has arrived.
    audio, _ = sf.read(EXAMPLES / "two_speakers.wav", dtype="float32")
    pipe = Pipeline(bundled, StreamConfig(beam=False))
    want, _ = _stream_finals(pipe, audio, block=len(audio))
    got, _ = _stream_finals(pipe, audio, block=block)
    assert [(f.segment, f.text, f.start, f.end) for f in got] == [(f.segment, f.text, f.start, f.end) for f in want]


def test_deferred_finals_computed_later_are_the_finals_of_the_stream():
    # The server's way (stream/worker.py): a PendingFinal where the final is due, computed after
    # the stream has moved on (here: after the whole file), then stamped by the stream. Same
    # finals, speaker labels included, in the same place among the events.
    from decoders.transcriber import PendingFinal

    pipe = Pipeline.from_pretrained()                         # with the speaker head's tracking
    audio, _ = sf.read(EXAMPLES / "two_speakers.wav", dtype="float32")
    want = []
    s = pipe.new_stream()
    for i in range(0, len(audio), 3200):
        want += s.feed(audio[i:i + 3200], 16000)
    want += s.finish()

    s = pipe.new_stream(defer_finals=True)
    got = []
    for i in range(0, len(audio), 3200):
        got += s.feed(audio[i:i + 3200], 16000)
    got += s.finish()
    pending = [e for e in got if isinstance(e, PendingFinal)]
    assert len(pending) >= 2 and not any(e.type == "final" for e in got if not isinstance(e, PendingFinal))
    got = [s.complete_final(e, e.compute()) if isinstance(e, PendingFinal) else e for e in got]

    def key(e):
        return (e.type, getattr(e, "segment", None), getattr(e, "text", None), getattr(e, "speaker", None),
                getattr(e, "words", None))

    assert [key(e) for e in got] == [key(e) for e in want]
    assert {f.speaker for f in got if f.type == "final"} >= {"S1", "S2"}


def test_a_caller_may_reuse_its_audio_buffer(bundled):
    # float32 16 kHz mono reaches the stream as the caller's own array; the stream reads it
    # later (the conv encoder waits for a window's worth, the second pass for the segment's end).
    audio, _ = sf.read(EXAMPLES / "single_speaker.wav", dtype="float32")
    pipe = Pipeline(bundled, StreamConfig(beam=False))
    want, _ = _stream_finals(pipe, audio, block=1600)
    s, got, buf = pipe.new_stream(), [], np.empty(1600, dtype=np.float32)
    for i in range(0, len(audio), 1600):
        piece = audio[i:i + 1600]
        buf[:len(piece)] = piece
        got += s.feed(buf[:len(piece)], 16000)
    got += s.finish()
    assert [f.text for f in got if f.type == "final"] == [f.text for f in want]
