import json

import numpy as np
import pytest

from ctc_frames import TOKENS, VOCAB, log_probs
from decoders.ctc import (TokenRun, Vocabulary, collapse, frame_confidence, frame_time, greedy_decode, greedy_runs,
                         runs_to_words)


def test_vocabulary_from_wav2vec2_vocab_json(tmp_path):
    p = tmp_path / "vocab.json"
    p.write_text(json.dumps({t: i for i, t in enumerate(TOKENS)}))
    v = Vocabulary.from_json_file(p)
    assert v.tokens == tuple(TOKENS) and len(v) == len(TOKENS)
    assert v.blank_id == 0 and v.delimiter_id == 4 and v.special_ids == {1, 2, 3}
    labels = v.pyctcdecode_labels()
    assert labels[0] == "" and labels[4] == " " and labels[5:] == TOKENS[5:]


def test_vocabulary_errors_name_the_file(tmp_path):
    p = tmp_path / "vocab.json"
    p.write_text(json.dumps({"<pad>": 0, "A": 2}))
    with pytest.raises(ValueError, match=r"vocab\.json.*0\.\.1"):
        Vocabulary.from_json_file(p)
    p.write_text(json.dumps({"A": 0, "B": 1}))
    with pytest.raises(ValueError, match=r"vocab\.json.*blank"):
        Vocabulary.from_json_file(p)
    p.write_text(json.dumps({"en": {"<pad>": 0}}))
    with pytest.raises(ValueError, match="flat JSON object"):
        Vocabulary.from_json_file(p)


def test_vocabulary_without_pipe_uses_space_or_none():
    assert Vocabulary.from_tokens(["<pad>", " ", "a"]).delimiter_id == 1
    assert Vocabulary.from_tokens(["<pad>", "a"]).delimiter_id is None
    assert greedy_decode(log_probs("_AB_A", vocab=VOCAB), VOCAB) == "ABA"
    with pytest.raises(ValueError, match="duplicate"):
        Vocabulary.from_tokens(["<pad>", "a", "a"])


def test_collapse_uses_previous_frame():
    ids = np.array([5, 5, 0, 5, 6, 6])
    assert collapse(ids, 0, 0).tolist() == [True, False, False, True, True, False]
    # continuing a run from the previous push: the first frame is a repeat
    assert collapse(ids, 5, 0).tolist() == [False, False, False, True, True, False]


def test_greedy_runs_cover_each_token_with_its_repeats():
    # "<unk>" counts as a blank; a repeat after a blank is a new run; "|" makes runs too.
    runs = greedy_runs(log_probs("_AA_A?AB|B"), VOCAB, first_frame=50)
    assert [(VOCAB.tokens[r.token], r.start, r.end) for r in runs] == [
        ("A", 51, 53), ("A", 54, 55), ("A", 56, 57), ("B", 57, 58), ("|", 58, 59), ("B", 59, 60)]
    assert greedy_runs(log_probs("__??"), VOCAB, first_frame=0) == []


def test_greedy_decode_words_and_specials():
    assert greedy_decode(log_probs("_HH_E|||L?LO__|W_"), VOCAB) == "HE LLO W"
    assert greedy_decode(log_probs("|||__"), VOCAB) == ""


def test_frame_confidence_is_mean_max_posterior():
    lp = np.log(np.array([[0.5, 0.5], [0.9, 0.1], [0.2, 0.8]], dtype=np.float32))
    assert frame_confidence(lp, 1, 3) == pytest.approx((0.9 + 0.8) / 2, rel=1e-6)
    assert frame_confidence(lp, 0, 0) == pytest.approx(0.5)  # empty span: the start frame
    # logits (log-probs up to a per-frame constant) give the same confidence
    assert frame_confidence(lp + np.array([[3.0], [-7.0], [0.5]]), 1, 3) == pytest.approx(0.85, rel=1e-6)


def test_runs_to_words_times_are_absolute():
    lp = log_probs("__AB|_C")
    runs = [TokenRun(5, 102, 103), TokenRun(6, 103, 104), TokenRun(4, 104, 105), TokenRun(7, 106, 107)]
    words = runs_to_words(runs, VOCAB, lp, first_frame=100)
    assert [(w.word, w.start, w.end) for w in words] == [("AB", 2.04, 2.08), ("C", 2.12, 2.14)]
    assert frame_time(3) == 0.06
