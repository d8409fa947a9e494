import numpy as np
import pytest

from ctc_frames import VOCAB, log_probs
from decoders.ctc import greedy_decode
from decoders.endpoint import EndpointConfig
from decoders.events import Final, Partial
from decoders.transcriber import SegmentTranscriber, coalesce_partials

# 0.1 s of silence closes a segment (5 frames); segments last at most 0.4 s (20 frames).
SHORT = EndpointConfig(min_silence_s=0.1, max_segment_s=0.4)


def run(lp, splits=None, endpoint=SHORT, first_frame=0, finaliser=None):
    """Push lp in pieces cut at `splits` (sorted frame indices), then finish()."""
    tr = SegmentTranscriber(VOCAB, endpoint, finaliser)
    bounds = [0, *(splits or []), lp.shape[0]]
    events = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        events += tr.push(lp[a:b], first_frame + a)
    return events + tr.finish()


def texts(events, kind):
    return [(e.segment, e.text) for e in events if isinstance(e, kind)]


def test_greedy_partials_and_final():
    lp = log_probs("__HH_E_LL_L_OO|__W_O_R_L_D" + "_" * 3)
    ev = run(lp, endpoint=EndpointConfig())
    assert texts(ev, Partial) == [
        (0, t) for t in ["H", "HE", "HEL", "HELL", "HELLO", "HELLO W", "HELLO WO", "HELLO WOR", "HELLO WORL", "HELLO WORLD"]
    ]
    assert texts(ev, Final) == [(0, "HELLO WORLD")]
    final = ev[-1]
    assert [w.word for w in final.words] == ["HELLO", "WORLD"]
    # HELLO: first H frame 2 .. last O frame 13 (exclusive end 14)
    assert final.words[0].start == pytest.approx(0.04) and final.words[0].end == pytest.approx(0.28)
    assert final.start == pytest.approx(0.04) and final.end == final.words[-1].end
    assert all(abs(w.confidence - 0.9) < 1e-5 for w in final.words)
    # partial end = end of the frame where the text changed; start = first speech frame
    assert ev[0].start == pytest.approx(0.04) and ev[0].end == pytest.approx(0.06)


def test_repeats_collapse_across_push_boundaries():
    lp = log_probs("_LL_L_")
    for cut in range(1, 6):
        assert texts(run(lp, [cut]), Final) == [(0, "LL")]
    assert greedy_decode(lp, VOCAB) == "LL"


def test_specials_are_not_text_and_break_repeats_like_blanks():
    lp = log_probs("_A?A<_".replace("<", "_"))
    assert texts(run(lp), Final) == [(0, "AA")]


def test_endpoint_after_silence_and_ids_increase():
    # 5 blank frames close a segment; 4 do not.
    lp = log_probs("_AB" + "_" * 5 + "C" + "_" * 4 + "D" + "_" * 5 + "E")
    ev = run(lp)
    assert texts(ev, Final) == [(0, "AB"), (1, "CD"), (2, "E")]  # no delimiter: one word
    # The Final of a segment comes right after its 5th silent frame, before the next speech.
    kinds = [(type(e).__name__, e.segment) for e in ev]
    assert kinds == [
        ("Partial", 0), ("Partial", 0), ("Final", 0),
        ("Partial", 1), ("Partial", 1), ("Final", 1),
        ("Partial", 2), ("Final", 2),
    ]
    # times: segment 1 runs from C (frame 8) to the end of D (frame 14)
    f1 = [e for e in ev if isinstance(e, Final)][1]
    assert (f1.start, f1.end) == (pytest.approx(0.16), pytest.approx(0.28))


def test_delimiter_frames_count_as_silence():
    lp = log_probs("_A|||||B_")
    assert texts(run(lp), Final) == [(0, "A"), (1, "B")]


def test_silence_only_gives_no_events():
    assert run(log_probs("_" * 40 + "|" * 3 + "?" * 3)) == []


def test_max_segment_cuts_after_last_delimiter():
    # 24 frames of speech without a 5-frame pause; max 20 frames from the first speech frame.
    path = "AB_A|BA_B_A|B_ABA_BABAB_A"
    ev = run(log_probs(path))
    finals = [e for e in ev if isinstance(e, Final)]
    # At frame 19 (20 frames since frame 0) the latest delimiter is frame 11: cut at 12.
    assert [(f.segment, f.text) for f in finals] == [(0, "ABA BABA"), (1, "BABABABABA")]
    assert finals[0].end <= 12 * 0.02 + 1e-9 and finals[1].start == pytest.approx(12 * 0.02)
    # The re-read frames 12..19 give segment 1 one Partial at the cut frame, then one per char.
    p1 = [e for e in ev if isinstance(e, Partial) and e.segment == 1]
    assert (p1[0].text, p1[0].end) == ("BABABA", pytest.approx(20 * 0.02))
    assert [e.text for e in p1[1:]] == ["BABABAB", "BABABABA", "BABABABAB", "BABABABABA"]
    assert ev.index(finals[0]) < ev.index(p1[0])
    assert greedy_decode(log_probs(path), VOCAB) == "ABA BABA BABABABABA"


def test_max_segment_cut_without_any_pause_keeps_tokens_whole():
    # A run of one token spanning the forced cut must not be emitted twice.
    # Frames 18..20 are one run of A; the cut falls at frame 20 (no pause before it).
    path = "AB" * 9 + "AAA" + "_" * 6
    ev = run(log_probs(path))
    assert texts(ev, Final) == [(0, "AB" * 9 + "A")]
    ev = run(log_probs("AB" * 10 + "CC" + "_" * 6))
    assert texts(ev, Final) == [(0, "AB" * 10), (1, "C")]


def test_finish_flushes_open_segment_and_is_idempotent():
    tr = SegmentTranscriber(VOCAB, EndpointConfig())
    ev = tr.push(log_probs("_AB"), 0)
    assert texts(ev, Final) == []
    fin = tr.finish()
    assert texts(fin, Final) == [(0, "AB")]
    assert tr.finish() == []
    # the stream may go on; the next segment gets the next id
    ev = tr.push(log_probs("C_"), 3) + tr.finish()
    assert texts(ev, Final) == [(1, "C")]


def test_every_partial_segment_gets_exactly_one_final():
    rng = np.random.default_rng(1)
    path = "".join(rng.choice(list("AB|_____"), size=300))
    ev = run(log_probs(path, noise=0.5, seed=2))
    partial_ids = {e.segment for e in ev if isinstance(e, Partial)}
    final_ids = [e.segment for e in ev if isinstance(e, Final)]
    assert final_ids == sorted(partial_ids) == list(range(len(final_ids)))
    # A Final comes after all Partials of its segment.
    for i, e in enumerate(ev):
        if isinstance(e, Final):
            assert not any(isinstance(x, Partial) and x.segment == e.segment for x in ev[i + 1 :])


@pytest.mark.parametrize("seed", range(6))
def test_output_is_independent_of_push_splits(seed):
    rng = np.random.default_rng(seed)
    path = "".join(rng.choice(list("ABCL|_______"), size=200))
    lp = log_probs(path, noise=1.0, seed=seed)
    endpoint = EndpointConfig(min_silence_s=0.08, max_segment_s=0.3)
    ref = run(lp, endpoint=endpoint, first_frame=100)
    assert any(isinstance(e, Final) for e in ref)
    one_frame = run(lp, list(range(1, 200)), endpoint=endpoint, first_frame=100)
    assert one_frame == ref
    for _ in range(5):
        k = int(rng.integers(1, 30))
        splits = sorted(set(rng.integers(1, 200, size=k).tolist()))
        assert run(lp, splits, endpoint=endpoint, first_frame=100) == ref
    # the final texts together are the offline greedy transcript (endpoints may split a
    # word that had no delimiter, so compare without spaces)
    finals = "".join(e.text for e in ref if isinstance(e, Final)).replace(" ", "")
    assert finals == greedy_decode(lp, VOCAB).replace(" ", "")


def test_first_frame_offsets_times():
    ev = run(log_probs("_A_"), first_frame=50)
    assert ev[-1].start == pytest.approx(51 * 0.02) and ev[-1].words[0].end == pytest.approx(52 * 0.02)


def test_push_validates_shape_and_contiguity():
    tr = SegmentTranscriber(VOCAB)
    with pytest.raises(ValueError, match="must be"):
        tr.push(np.zeros((3, len(VOCAB) + 1), np.float32), 0)
    tr.push(log_probs("__"), 0)
    with pytest.raises(ValueError, match="contiguous"):
        tr.push(log_probs("__"), 5)
    assert tr.push(np.zeros((0, len(VOCAB)), np.float32), 2) == []
    with pytest.raises(ValueError, match="NaN"):
        tr.push(np.full((1, len(VOCAB)), np.nan, np.float32), 2)


def test_coalesce_partials_keeps_last_per_run():
    ev = run(log_probs("_AB" + "_" * 5 + "CD"))
    co = coalesce_partials(ev)
    assert [(type(e).__name__, e.text) for e in co] == [
        ("Partial", "AB"), ("Final", "AB"), ("Partial", "CD"), ("Final", "CD")
    ]


def test_final_pass_log_probs_make_the_final_and_partials_stay_streamed():
    # The stream spells HELLO; the second pass over the segment's frames says HALLO: the final
    # decodes the pass (greedy words and times from its frames), partials are the stream's.
    streamed = log_probs("__HH_E_LL_L_OO" + "_" * 6)
    second = log_probs("__HH_A_LL_L_OO" + "_" * 6)
    calls = []

    def final_pass(first, stop):
        calls.append((first, stop))

        def second_pass(lp):
            np.testing.assert_array_equal(lp, streamed[first - 100:stop - 100])
            return second[first - 100:stop - 100]
        return second_pass

    tr = SegmentTranscriber(VOCAB, EndpointConfig(), None, final_pass)
    events = tr.push(streamed[:10], 100) + tr.push(streamed[10:], 110) + tr.finish()
    assert texts(events, Partial)[-1] == (0, "HELLO")
    assert texts(events, Final) == [(0, "HALLO")]
    assert calls == [(100, 120)]
    word = events[-1].words[0]
    assert word.start == pytest.approx((100 + 2) * 0.02) and word.end == pytest.approx((100 + 14) * 0.02)


def test_final_pass_of_the_wrong_shape_is_an_error():
    tr = SegmentTranscriber(VOCAB, EndpointConfig(), None, lambda first, stop: lambda lp: lp[:-1])
    tr.push(log_probs("_AB__"), 0)
    with pytest.raises(ValueError, match="final_pass returned shape"):
        tr.finish()


def test_oldest_needed_frame_follows_the_open_segment():
    tr = SegmentTranscriber(VOCAB, SHORT)
    tr.push(log_probs("_" * 30), 0)
    assert tr.oldest_needed_frame == 30 - 8          # silence: only the pre-roll is kept
    tr.push(log_probs("AB" + "_" * 2), 30)
    assert tr.oldest_needed_frame == 30 - 8          # the open segment starts after that pre-roll
    tr.push(log_probs("_" * 10), 34)
    assert tr.oldest_needed_frame > 34               # segment closed


def test_deferred_finals_capture_their_segment_when_it_closes():
    from decoders.transcriber import PendingFinal

    lp = log_probs("__AB" + "_" * 6 + "CD" + "_" * 6 + "HE")
    want = run(lp)
    tr = SegmentTranscriber(VOCAB, SHORT, defer_finals=True)
    got = tr.push(lp[:12], 0)
    pending = [e for e in got if isinstance(e, PendingFinal)]
    assert [(p.segment, p.speech_start, p.speech_end) for p in pending] == [(0, 0.04, 0.08)]
    got += tr.push(lp[12:], 12) + tr.finish()               # the transcriber moves on before compute()
    got = [e.compute() if isinstance(e, PendingFinal) else e for e in got]
    assert got == want and texts(got, Final) == [(0, "AB"), (1, "CD"), (2, "HE")]
