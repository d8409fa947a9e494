"""Unit tests of the recipe's pure helpers: text normalisation, CTC greedy decoding, error rates, EER, batching."""
from __future__ import annotations

import random

import numpy as np
import pytest

import soundfile as sf

from train.data import Clip, bucket_batches, collate, prefetch, random_equalizer, speed_perturb
from train.export import VOCAB, encode_text
from train.metrics import edit_distance, equal_error_rate, error_rates, greedy_decode
from train.text import normalise


@pytest.mark.parametrize("raw, expected", [
    ("God said, \u201cLet there be light,\u201d and there was light.", "god said let there be light and there was light"),
    ("Don\u2019t panic \u2014 it\u2019s only a test today.", "don't panic it's only a test today"),
    ("In 1984 it rained.", None),                      # digits are dropped, not guessed
    ("Mr. Smith went to town today.", None),           # abbreviations
    ("The LORD is my shepherd, I shall not want.", None),  # all-caps words
    ("Too short.", None),
])
def test_normalise(raw, expected):
    assert normalise(raw) == expected


def test_encode_and_greedy_decode_round_trip():
    ids = encode_text("hello world")
    # CTC frames: blanks between letters, a repeated letter separated by a blank
    frames = []
    for i in ids:
        frames += [i, i, 0]
    assert greedy_decode(np.array(frames)) == "hello world"
    assert VOCAB[0] == "<pad>" and VOCAB[4] == "|"
    with pytest.raises(KeyError):
        encode_text("hello 2")


def test_error_rates():
    assert edit_distance("kitten", "sitting") == 3
    cer, wer = error_rates(["the cat sat"], ["the cat sat"])
    assert cer == 0 and wer == 0
    cer, wer = error_rates(["abcd"], ["abxd"])
    assert cer == pytest.approx(0.25) and wer == 1.0


def test_equal_error_rate():
    same = np.array([1, 1, 1, 0, 0, 0], dtype=bool)
    assert equal_error_rate(np.array([0.9, 0.8, 0.7, 0.3, 0.2, 0.1]), same) == 0.0
    assert equal_error_rate(np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9]), same) == 1.0
    rng = np.random.default_rng(0)
    s = rng.standard_normal(4000)
    assert abs(equal_error_rate(s, rng.random(4000) < 0.5) - 0.5) < 0.05


def test_bucket_batches_have_fixed_shapes_and_cover_all_clips():
    rng = random.Random(0)
    clips = [Clip(f"c{i}", "x", "s", "v", rng.uniform(0.5, 11.9)) for i in range(300)]
    batches = bucket_batches(clips, 24.0, random.Random(1))
    seen = set()
    for members, pad in batches:
        k = pad // 16000
        assert len(members) == max(1, 24 // k)
        assert all(c.duration <= k for c in members)
        seen.update(c.path for c in members)
    assert seen == {c.path for c in clips}


def test_speed_perturb_scales_length_and_pitch():
    t = np.arange(16000) / 16000
    tone = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    fast = speed_perturb(tone, 1.1)
    assert fast.dtype == np.float32 and abs(len(fast) - 16000 / 1.1) <= 2
    peak_hz = np.argmax(np.abs(np.fft.rfft(fast))) * 16000 / len(fast)
    assert abs(peak_hz - 484) < 3   # the tone moved up with the speed


def test_random_equalizer_changes_colour_within_its_bounds():
    x = np.random.default_rng(0).standard_normal(32000).astype(np.float32)
    y = random_equalizer(x, np.random.default_rng(1), max_db=8.0)
    assert y.shape == x.shape and y.dtype == np.float32
    ratio_db = 20 * np.log10(np.abs(np.fft.rfft(y))[40:] / np.abs(np.fft.rfft(x))[40:])
    assert ratio_db.max() <= 8.0 + 1e-3 and ratio_db.min() >= -8.0 - 1e-3
    assert ratio_db.max() - ratio_db.min() > 3.0   # not a plain gain


def test_collate_speed_perturbed_clips_fit_their_bucket_and_lose_their_speaker(tmp_path):
    clips = []
    for i, seconds in enumerate((1.0, 0.5, 0.7)):
        path = tmp_path / f"{i}.wav"
        sf.write(path, np.random.default_rng(i).uniform(-0.5, 0.5, int(seconds * 16000)).astype(np.float32), 16000)
        clips.append(Clip(str(path), "a b", "s1", "v", seconds))
    plain = collate(clips, {"s1": 0}, np.random.default_rng(0), pad_to=16000)
    assert plain.speakers.tolist() == [0, 0, 0]
    b = collate(clips, {"s1": 0}, np.random.default_rng(0), pad_to=16000, speed_prob=1.0, speed_range=(0.8, 1.2))
    assert b.audio.shape == (3, 16000)
    assert b.speakers.tolist() == [-1, -1, -1]
    for n, c in zip(b.lengths.tolist(), clips):
        factor = c.duration * 16000 / n
        assert 0.8 - 0.01 <= factor <= 1.2 + 0.01 and n <= 16000
    assert 16000 / b.lengths[0] >= 1.0 - 1e-3   # the clip that fills its bucket can only be sped up
    equalized = collate(clips, {"s1": 0}, np.random.default_rng(0), pad_to=16000, eq_prob=1.0)
    assert equalized.speakers.tolist() == [-1, -1, -1] and equalized.lengths.tolist() == plain.lengths.tolist()


def test_speaker_crops_are_spans_inside_each_clip():
    import torch

    from train.train import speaker_crops

    mask = torch.zeros(3, 200, dtype=torch.bool)
    for b, n in enumerate((200, 120, 30)):
        mask[b, :n] = True
    rows, masks = speaker_crops(mask, np.random.default_rng(0), 50, 100, crops=2)
    assert rows.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    for row, m in zip(rows.tolist(), masks):
        idx = torch.nonzero(m).flatten()
        assert not (m & ~mask[row]).any()                              # never outside the clip
        assert idx[-1] - idx[0] + 1 == len(idx)                        # contiguous
    whole, crops = masks[0::3], torch.cat([masks[1::3], masks[2::3]])
    assert torch.equal(whole, mask)                                    # first row: the whole clip
    lengths = crops.sum(1)
    assert lengths[[0, 1, 3, 4]].min() >= 50 and lengths.max() <= 100
    assert lengths[2] == lengths[5] == 30                              # shorter clip: all of it


def test_bigram_language_model_normalises_and_kenlm_reads_it_as_written(tmp_path):
    import importlib.util
    import math

    from train.lm import BOS, EOS, bigram_model, write_arpa

    sentences = ["the cat sat", "the dog sat down", "a cat ran", "the cat ran down the road"]
    unigram, backoff, bigram = bigram_model(sentences)
    assert math.isclose(sum(unigram.values()), 1.0)
    vocab = list(unigram)                                   # every word that can follow, </s> included
    for h in [BOS] + [w for w in vocab if w != EOS]:
        total = sum(bigram.get((h, w), backoff[h] * unigram[w]) for w in vocab)
        assert math.isclose(total, 1.0, rel_tol=1e-9), h
    arpa = tmp_path / "lm.arpa"
    write_arpa(arpa, unigram, backoff, bigram)
    if importlib.util.find_spec("kenlm") is None:
        return
    import kenlm

    lm = kenlm.Model(str(arpa))
    words = ["the", "dog", "ran"]
    expected = 0.0
    for h, w in zip([BOS] + words, words + [EOS]):
        expected += math.log10(bigram.get((h, w), backoff[h] * unigram[w]))
    assert math.isclose(lm.score("the dog ran"), expected, abs_tol=1e-4)


@pytest.mark.parametrize("threads", [0, 1, 3])
def test_prefetch_yields_every_load_in_order_and_stops_loading_when_closed(threads):
    import threading
    import time

    started = []
    lock = threading.Lock()

    def load(i):
        with lock:
            started.append(i)
        time.sleep(0.002 * (i % 3))   # loads finish out of order
        return i * i

    assert list(prefetch(load, 10, threads)) == [i * i for i in range(10)]
    started.clear()
    batches = prefetch(load, 1000, threads)
    assert [next(batches) for _ in range(3)] == [0, 1, 4]
    batches.close()
    time.sleep(0.05)
    assert len(started) <= 3 + 2 * max(threads, 0) + 1
