import importlib.util

import numpy as np
import pytest

from ctc_frames import VOCAB, log_probs
from decoders import beam as beam_mod
from decoders.beam import BeamFinaliser
from decoders.endpoint import EndpointConfig
from decoders.events import Final
from decoders.transcriber import SegmentTranscriber

HAVE_KENLM = importlib.util.find_spec("kenlm") is not None


@pytest.fixture(scope="module")
def plain():
    return BeamFinaliser(VOCAB)


def near_tie(p_b=0.45, p_c=0.40):
    """Frames of "_B_A_R_" where the B frame is almost a C: greedy says BAR."""
    lp = log_probs("_B_A_R_")
    v = len(VOCAB)
    row = np.full(v, (1.0 - p_b - p_c) / (v - 2))
    row[VOCAB.tokens.index("B")] = p_b
    row[VOCAB.tokens.index("C")] = p_c
    lp[1] = np.log(row)
    return lp


def test_clear_input_gives_the_path_with_word_times(plain):
    lp = log_probs("__HH_E_LL_L_OO|__W_O_R_L_D__")
    text, words = plain.decode(lp, frame_offset=100)
    assert text == "HELLO WORLD"
    assert [w.word for w in words] == ["HELLO", "WORLD"]
    # HELLO spans frames 2..13 (end exclusive 14), WORLD 17..25 (end 26); offset 100 frames = 2 s
    assert (words[0].start, words[0].end) == (pytest.approx(2.04), pytest.approx(2.28))
    assert (words[1].start, words[1].end) == (pytest.approx(2.34), pytest.approx(2.52))
    assert all(w.confidence == pytest.approx(0.9, abs=1e-5) for w in words)


def test_near_tie_and_hotword_changes_it(plain):
    lp = near_tie()
    assert plain.decode(lp)[0] == "BAR"
    hot = BeamFinaliser(VOCAB, hotwords=["car"], hotword_weight=10.0)  # matched in the vocabulary's case
    assert hot.hotwords == ("CAR",)
    text, words = hot.decode(lp, frame_offset=0)
    assert text == "CAR"
    # confidence: mean over frames 1..5 of the frame's max posterior
    assert words[0].confidence == pytest.approx((0.45 + 0.9 * 4) / 5, rel=1e-5)


def test_specials_never_appear(plain):
    text, _ = plain.decode(log_probs("_A??A_<_".replace("<", "?")))
    assert text == "AA"


def test_empty_and_bad_shapes(plain):
    assert plain.decode(np.zeros((0, len(VOCAB)), np.float32)) == ("", ())
    with pytest.raises(ValueError, match=r"\(T, 16\)"):
        plain.decode(np.zeros((4, 3), np.float32))


def test_transcriber_final_comes_from_beam():
    hot = BeamFinaliser(VOCAB, hotwords=["CAR"])
    lp = np.concatenate([near_tie(), log_probs("_" * 30)])
    tr = SegmentTranscriber(VOCAB, EndpointConfig(min_silence_s=0.2), hot)
    ev = tr.push(lp[:10], 40) + tr.push(lp[10:], 50) + tr.finish()
    partials = [e.text for e in ev if not isinstance(e, Final)]
    finals = [e for e in ev if isinstance(e, Final)]
    assert partials[-1] == "BAR"  # greedy
    assert [f.text for f in finals] == ["CAR"]
    assert finals[0].start == pytest.approx(41 * 0.02) and finals[0].words[0].end == pytest.approx(46 * 0.02)


def test_kenlm_path_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="nope.arpa"):
        BeamFinaliser(VOCAB, kenlm_path=tmp_path / "nope.arpa")
    lm = tmp_path / "lm.arpa"
    lm.write_text(ARPA)
    monkeypatch.setattr(beam_mod, "kenlm_available", lambda: False)
    with pytest.raises(ImportError, match="pip install"):
        BeamFinaliser(VOCAB, kenlm_path=lm)


ARPA = """\\data\\
ngram 1=5
ngram 2=2

\\1-grams:
-1.0\t<unk>\t0
-0.5\t<s>\t0
-0.5\t</s>\t0
-0.1\tCAR\t0
-4.0\tBAR\t0

\\2-grams:
-0.1\t<s> CAR
-4.0\t<s> BAR

\\end\\
"""


@pytest.mark.skipif(not HAVE_KENLM, reason="kenlm python bindings not installed (optional extra: pip install kenlm)")
def test_kenlm_language_model_resolves_the_tie(tmp_path):
    lm = tmp_path / "lm.arpa"
    lm.write_text(ARPA)
    fin = BeamFinaliser(VOCAB, kenlm_path=lm, alpha=0.5, beta=1.0)
    text, words = fin.decode(near_tie(), frame_offset=10)
    assert text == "CAR"
    assert words[0].start == pytest.approx(11 * 0.02) and words[0].end == pytest.approx(16 * 0.02)


def test_beam_and_greedy_finals_agree_on_clear_input(plain):
    lp = log_probs("__HH_E_LL_L_OO|__W_O_RR_L_DD" + "_" * 30 + "A_BB|_C" + "_" * 3)
    greedy = SegmentTranscriber(VOCAB, EndpointConfig(), None)
    beam = SegmentTranscriber(VOCAB, EndpointConfig(), plain)
    g = greedy.push(lp, 7) + greedy.finish()
    b = beam.push(lp, 7) + beam.finish()
    assert [e for e in g if isinstance(e, Final)] == [e for e in b if isinstance(e, Final)]
    assert [e.text for e in b if isinstance(e, Final)] == ["HELLO WORLD", "AB C"]


def test_shared_finaliser_is_stateless_across_streams(plain):
    a, b = log_probs("_AB|C__", noise=0.5, seed=1), log_probs("_BA_D|E", noise=0.5, seed=2)
    alone = [plain.decode(a, 3), plain.decode(b, 9)]
    s1 = SegmentTranscriber(VOCAB, EndpointConfig(), plain)
    s2 = SegmentTranscriber(VOCAB, EndpointConfig(), plain)
    s1.push(a[:3], 3), s2.push(b[:4], 9), s1.push(a[3:], 6), s2.push(b[4:], 13)
    f1, f2 = s1.finish()[0], s2.finish()[0]
    assert (f1.text, f1.words) == alone[0] and (f2.text, f2.words) == alone[1]


@pytest.mark.parametrize("seed", range(4))
def test_blank_run_compression_is_exact(seed):
    hot = BeamFinaliser(VOCAB, hotwords=["BAD", "CAB"], beam_width=8)
    rng = np.random.default_rng(seed)
    path = "".join(rng.choice(list("ABCD|") + ["_"] * 8, size=160))
    lp = log_probs(path, peak=0.97, noise=1.5, seed=seed)
    lp[rng.random(160) < 0.3] = log_probs("_", peak=0.999)[0]  # confident blanks
    assert len(hot._frames_to_search(hot._fold_specials(lp))) < 140  # the check means something
    fast = hot.decode(lp, 5)
    hot.compress_blanks = False
    slow = hot.decode(lp, 5)
    assert fast == slow and fast[0]


def test_a_file_that_is_not_a_language_model_is_named_before_loading(tmp_path, monkeypatch):
    monkeypatch.setattr(beam_mod, "kenlm_available", lambda: True)
    wrong = tmp_path / "notes.txt"
    wrong.write_text("\n\nthese are my notes\n")
    with pytest.raises(beam_mod.LanguageModelError, match="notes.txt is not an ARPA.*'these are my notes'"):
        BeamFinaliser(VOCAB, kenlm_path=wrong)
    empty = tmp_path / "empty.arpa"
    empty.write_bytes(b"")
    with pytest.raises(beam_mod.LanguageModelError, match=r"\(empty\)"):
        beam_mod.check_language_model_file(empty)
    good = tmp_path / "lm.arpa"
    good.write_text("\n" + ARPA)
    beam_mod.check_language_model_file(good)                      # a leading blank line is fine, as for KenLM


@pytest.mark.skipif(not HAVE_KENLM, reason="kenlm python bindings not installed (optional extra: pip install kenlm)")
def test_a_truncated_language_model_is_a_clear_error(tmp_path):
    cut = tmp_path / "cut.arpa"
    cut.write_text(ARPA[: ARPA.index("\\2-grams:") + 12])
    with pytest.raises(beam_mod.LanguageModelError) as info:
        BeamFinaliser(VOCAB, kenlm_path=cut)
    message = str(info.value)
    assert message.startswith(f"cannot read KenLM model {cut}: ") and "threw" not in message
