"""The bundled model's learned speaker-change detector: the module, its exact streaming form,
peak picking, candidates from the bundled speaker head, the tracker's decisions on them, the
checkpoint round trip and the training recipe's code."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil

import numpy as np
import pytest
import torch

from decoders.speaker import SpeakerTracker, SpeakerTrackerConfig
from model import WavLMConfig, build_model, load_model, save_model
from model.heads import ChangeDetector
from stream.change import ChangePeaks, StreamingChangeDetector
from stream.speakers import BundledSpeakerHead, ChangeCandidate, ChangePeak, SpeakerWindow, speaker_source_factory

SR = 16000
SPEC = {"channels": 6, "kernel_size": 3, "dilations": [1, 2, 4], "lookahead": 3}   # receptive field 15 frames
SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
             conv_dim=(16,) * 7, feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True,
             num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, num_buckets=32, max_bucket_distance=64,
             vocab_size=8)


def detector(seed: int = 0, spec=SPEC, feature_dim: int = 12) -> ChangeDetector:
    torch.manual_seed(seed)
    d = ChangeDetector.from_spec(feature_dim, spec).eval()
    with torch.no_grad():
        for p in d.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return d


def frames(n: int, seed: int = 1, dim: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, dim, generator=g) * 3, (torch.rand(n, generator=g) > 0.3).float()


@pytest.fixture(scope="module")
def bundled_with_detector(tmp_path_factory):
    torch.manual_seed(0)
    cfg = WavLMConfig.from_dict(dict(SMALL, architectures=["WavLMForCTC"],
                                     speaker_head={"embedding_dim": 8, "num_speakers": 5, "proj_dim": 12,
                                                   "change_detector": SPEC}))
    model = build_model(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
        # A detector that fires: bias its output up so peaks cross the threshold.
        model.change_detector.out.bias.fill_(2.0)
    directory = tmp_path_factory.mktemp("bundled_scd") / "model"
    save_model(model, directory, vocab=[f"t{i}" for i in range(8)])
    return model, directory


# ------------------------------------------------------------------ module


@torch.inference_mode()
def test_each_output_frame_sees_only_its_receptive_field():
    d = detector()
    assert d.receptive_field == 15 and d.history == 11
    x, sp = frames(60)
    base = d(x[None], sp[None])[0]
    y = x.clone()
    y[40] += 5.0                                  # frame 40 may change outputs 40 - lookahead .. 40 + history
    moved = d(y[None], sp[None])[0]
    changed = torch.nonzero((moved - base).abs() > 0).flatten().tolist()
    assert changed and min(changed) >= 40 - d.lookahead and max(changed) <= 40 + d.history


def test_lookahead_must_fit_the_receptive_field():
    with pytest.raises(ValueError, match="lookahead"):
        ChangeDetector.from_spec(12, dict(SPEC, lookahead=15))
    with pytest.raises(ValueError, match="lacks"):
        ChangeDetector.from_spec(12, {"channels": 4})


@pytest.mark.parametrize("sizes", [[200], [1], [7, 3, 31], [16, 64]])
def test_streaming_probabilities_equal_offline(sizes):
    d = detector(seed=2)
    x, sp = frames(200, seed=3)
    with torch.inference_mode():
        offline = torch.sigmoid(d(x[None], sp[None]))[0].numpy()
    s = StreamingChangeDetector(d)
    got, expected_first, i, k = [], 0, 0, 0
    while i < 200:
        n = sizes[k % len(sizes)]
        first, p = s.push(x[i:i + n], sp[i:i + n].numpy())
        assert first == expected_first
        expected_first += len(p)
        got.append(p)
        i, k = i + n, k + 1
    first, p = s.finish()
    assert first == expected_first
    got = np.concatenate(got + [p])
    assert got.shape == (200,)
    np.testing.assert_allclose(got, offline, rtol=0, atol=1e-6)
    with pytest.raises(RuntimeError):
        s.push(x[:3], sp[:3].numpy())


# ------------------------------------------------------------------ peaks


def peaks_at_once(p, threshold, min_gap, confirm=2):
    out, last = [], None
    for t in range(len(p)):
        if p[t] <= threshold or p[t] < p[max(0, t - min_gap):t + 1].max() or (p[t + 1:t + 1 + confirm] >= p[t]).any():
            continue
        if last is not None and t - last < min_gap:
            continue
        out.append(t)
        last = t
    return out


def test_peaks_are_local_maxima_above_threshold_and_apart():
    p = np.zeros(60, np.float32)
    p[10], p[11], p[12] = 0.5, 0.97, 0.6          # a peak at 11
    p[15] = 0.99                                  # higher, but within min_gap of 11: not a second candidate
    p[40] = 0.9                                   # below threshold
    p[50:53] = 0.98                               # a plateau: one candidate, at its last frame
    peaks = ChangePeaks(0.95, min_gap=10)
    out = peaks.push(0, p) + peaks.finish()
    assert [t for t, _ in out] == [11, 52] == peaks_at_once(p, 0.95, 10)
    assert out[0][1] == pytest.approx(0.97)


@pytest.mark.parametrize("seed", range(5))
def test_incremental_peaks_equal_peaks_of_the_whole_signal(seed):
    rng = np.random.default_rng(seed)
    p = rng.random(400).astype(np.float32) ** 3
    expected = peaks_at_once(p, 0.5, 7)
    peaks, got, i = ChangePeaks(0.5, min_gap=7), [], 0
    while i < len(p):
        n = int(rng.integers(1, 40))
        got += peaks.push(i, p[i:i + n])
        i += n
    got += peaks.finish()
    assert [t for t, _ in got] == expected
    assert len(expected) > 3
    with pytest.raises(ValueError, match="contiguous"):
        peaks.push(1000, p[:3])


# ------------------------------------------------------------------ the bundled source


def run_head(model, feats, speech, sizes, config):
    src = BundledSpeakerHead(model, config)
    out, i, k = [], 0, 0
    while i < feats.shape[0]:
        n = sizes[k % len(sizes)]
        out += src.push_frames(feats[i:i + n], i, speech[i:i + n])
        i, k = i + n, k + 1
    return src, out + src.finish()


def test_bundled_head_emits_candidates_with_the_embeddings_around_them(bundled_with_detector):
    model, _ = bundled_with_detector
    config = SpeakerTrackerConfig(detector_threshold=0.5, detector_min_gap_s=0.3, detector_before_s=1.0,
                                  detector_after_s=0.4, detector_second_look_s=1.0)
    feats, speech = frames(500, seed=4)
    feats[250:] = feats[250:] * 0.2 + 2.0           # another "voice" from frame 250
    src, items = run_head(model, feats, speech.numpy(), [32], config)
    assert src.emits_candidates
    candidates = [c for c in items if isinstance(c, ChangeCandidate) and not c.second_look]
    second_looks = [c for c in items if isinstance(c, ChangeCandidate) and c.second_look]
    windows = [w for w in items if isinstance(w, SpeakerWindow)]
    assert candidates and windows
    with torch.inference_mode():
        probs = torch.sigmoid(model.change_detector(feats[None], speech[None]))[0].numpy()
    assert [round(c.time_s / 0.02 - 0.5) for c in candidates] == peaks_at_once(probs, 0.5, 15)
    previous = 0
    for c in candidates:
        t = round(c.time_s / 0.02 - 0.5)
        assert c.probability == pytest.approx(float(probs[t]), abs=1e-6)
        for embedding, (a, b) in ((c.before, (max(previous, t - 50), t)), (c.after, (t, min(500, t + 20)))):
            mask = speech[a:b] >= 0.5
            if int(mask.sum()) < 5:
                assert embedding is None
                continue
            with torch.inference_mode():
                expected = model.speaker_pool(feats[a:b][None], mask[None])[0].numpy()
            np.testing.assert_allclose(embedding, expected, rtol=0, atol=1e-5)
        previous = t
    # Each candidate comes again with the speech of its second look (1 s) after it, the same `before`.
    assert [(c.time_s, c.probability) for c in second_looks] == [(c.time_s, c.probability) for c in candidates]
    for first, again in zip(candidates, second_looks):
        t = round(first.time_s / 0.02 - 0.5)
        mask = speech[t:t + 50] >= 0.5
        with torch.inference_mode():
            expected = model.speaker_pool(feats[t:t + 50][None], mask[None])[0].numpy()
        np.testing.assert_allclose(again.after, expected, rtol=0, atol=1e-5)
        assert (again.before is None and first.before is None) or np.array_equal(again.before, first.before)
    # Windows and candidates come in the order their last frame arrived; a candidate waits for its after span.
    def ready_at(w):
        if isinstance(w, SpeakerWindow):
            return w.end_s
        return min(10.0, w.time_s - 0.01 + (1.0 if w.second_look else 0.4))
    ready = [ready_at(w) for w in items if not isinstance(w, ChangePeak)]
    assert ready == sorted(ready)
    # No second look when every candidate is decided at once.
    _, once = run_head(model, feats, speech.numpy(), [32], dataclasses.replace(config, detector_sure=0.0))
    assert [c.time_s for c in once if isinstance(c, ChangeCandidate)] == [c.time_s for c in candidates]
    # The weaker peaks that support window peaks: picked on their own, above detector_support.
    support = [round(p.time_s / 0.02 - 0.5) for p in items if isinstance(p, ChangePeak)]
    assert support == peaks_at_once(probs, config.detector_support, 15) and len(support) >= len(candidates)
    # Splitting the frames differently changes nothing.
    _, again = run_head(model, feats, speech.numpy(), [1, 7, 64], config)
    main = [x for x in items if not isinstance(x, ChangePeak)]
    main_again = [x for x in again if not isinstance(x, ChangePeak)]
    assert len(main_again) == len(main)
    for x, y in zip(main, main_again):
        assert type(x) is type(y)
        if isinstance(x, ChangeCandidate):
            assert x.time_s == y.time_s and x.probability == pytest.approx(y.probability, abs=1e-6)
    peak_times = [p.time_s for p in items if isinstance(p, ChangePeak)]
    assert [p.time_s for p in again if isinstance(p, ChangePeak)] == peak_times


def test_windows_do_not_change_with_the_detector_on(bundled_with_detector):
    model, _ = bundled_with_detector
    feats, speech = frames(300, seed=5)
    _, on = run_head(model, feats, speech.numpy(), [32], SpeakerTrackerConfig(detector_threshold=0.5))
    off_src, off = run_head(model, feats, speech.numpy(), [32], SpeakerTrackerConfig(change_detector=False))
    assert not off_src.emits_candidates and all(isinstance(w, SpeakerWindow) for w in off)
    on_windows = [w for w in on if isinstance(w, SpeakerWindow)]
    assert [(w.start_s, w.end_s) for w in on_windows] == [(w.start_s, w.end_s) for w in off]
    for a, b in zip(on_windows, off):
        np.testing.assert_allclose(a.embedding, b.embedding, rtol=0, atol=1e-6)


def test_the_stream_glue_tells_the_tracker_when_candidates_come(bundled_with_detector):
    model, _ = bundled_with_detector
    factory = speaker_source_factory(model)
    assert factory.new_stream().tracker.candidates is True
    assert factory.new_stream(SpeakerTrackerConfig(change_detector=False)).tracker.candidates is False


# ------------------------------------------------------------------ checkpoint


@torch.inference_mode()
def test_the_detector_round_trips_and_transformers_still_reads_the_ctc_part(bundled_with_detector):
    import transformers

    model, directory = bundled_with_detector
    with open(directory / "config.json") as f:
        assert json.load(f)["speaker_head"]["change_detector"] == SPEC
    loaded = load_model(directory)
    x, sp = frames(80, seed=6)
    assert torch.equal(loaded.change_detector(x[None], sp[None]), model.change_detector(x[None], sp[None]))
    audio = torch.from_numpy(0.1 * np.random.default_rng(0).standard_normal((1, 16000)).astype(np.float32))
    hf = transformers.WavLMForCTC.from_pretrained(directory).eval()   # ignores speaker_head.* keys
    assert (hf(audio).logits - loaded(audio).logits).abs().max() <= 1e-4


def test_a_checkpoint_without_the_detector_weights_is_refused(bundled_with_detector, tmp_path):
    from safetensors.torch import load_file, save_file

    _, directory = bundled_with_detector
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "vocab.json"):
        (broken / name).write_bytes((directory / name).read_bytes())
    state = {k: v for k, v in load_file(str(directory / "model.safetensors")).items() if "change_detector" not in k}
    save_file(state, str(broken / "model.safetensors"))
    with pytest.raises(ValueError, match="change_detector"):
        load_model(broken)


# ------------------------------------------------------------------ tracker


def unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


A, B, C = unit([1, 0, 0, 0]), unit([0, 1, 0, 0]), unit([0, 0, 1, 0])


ONLY_CANDIDATES = SpeakerTrackerConfig(detector_window_gap_s=math.inf)


def tracker_after(voices, config=ONLY_CANDIDATES, start: int = 0, tracker=None):
    """A tracker fed by a change detector that has heard windows of `voices` (one per 0.5 s hop)."""
    tr = tracker or SpeakerTracker(config, candidates=True)
    events = []
    for i, v in enumerate(voices, start):
        events += tr.push(i * 0.5, i * 0.5 + 1.5, v, 1.0)
    tr.events = events
    return tr


def test_a_verified_candidate_is_a_change_at_its_time():
    tr = tracker_after([A] * 4 + [B] * 4)             # gap inf: window peaks never change speakers
    assert tr.current_label == "S1" and tr.num_speakers == 1 and len(tr.events) == 1
    events = tr.push_candidate(3.3, A, B, 0.99)
    assert [(e.time, e.from_speaker, e.to_speaker) for e in events] == [(3.3, "S1", "S2")]
    assert tr.push_candidate(3.3, A, B) == []         # not after the last change
    assert tr.label_at(3.0) == "S1" and tr.label_at(3.5) == "S2"


def test_window_peaks_add_only_the_changes_the_detector_missed():
    config = SpeakerTrackerConfig(detector_window_gap_s=1.5, detector_support=0.0)
    tr = tracker_after([A] * 6, config)
    assert [e.to_speaker for e in tr.push_candidate(3.4, A, B)] == ["S2"]
    # The windows then see the same change (B's windows start at 4 s): not reported twice.
    tracker_after([B] * 6, start=6, tracker=tr)
    assert tr.events == [] and tr.current_label == "S2"
    # A change the detector misses, later than the gap: the window peak reports it.
    tracker_after([C] * 4, start=12, tracker=tr)
    assert [(e.from_speaker, e.to_speaker) for e in tr.events] == [("S2", "S3")]


def test_a_window_peak_needs_a_detector_peak_near_its_change_time():
    config = SpeakerTrackerConfig(detector_support=0.2, detector_support_s=0.5, detector_support_waived=2.0)
    quiet = tracker_after([A] * 6 + [B] * 4, config)          # the detector heard nothing: no change
    assert [e.from_speaker for e in quiet.events] == [None]
    heard = SpeakerTracker(config, candidates=True)
    heard.push_detector_peak(3.3, 0.4)                         # a weak detector peak near the step to B
    tracker_after([A] * 6 + [B] * 4, tracker=heard)
    assert [(e.from_speaker, e.to_speaker) for e in heard.events] == [(None, "S1"), ("S1", "S2")]
    assert abs(heard.events[1].time - 3.3) <= 0.5
    # Voices this far apart (A and B are orthogonal: cosine distance 1) need no detector peak once
    # the support is waived at that distance; at a larger one they still do.
    waived = tracker_after([A] * 6 + [B] * 4, dataclasses.replace(config, detector_support_waived=0.9))
    assert [(e.from_speaker, e.to_speaker) for e in waived.events] == [(None, "S1"), ("S1", "S2")]
    still = tracker_after([A] * 6 + [B] * 4, dataclasses.replace(config, detector_support_waived=1.5))
    assert [e.from_speaker for e in still.events] == [None]


def test_a_candidates_label_is_confirmed_by_the_windows_after_it():
    tr = tracker_after([A] * 4)
    tr.push_candidate(3.0, A, B)                               # S2
    tracker_after([B] * 4, start=6, tracker=tr)
    tr.push_candidate(6.0, B, A)                               # S1 again
    tracker_after([A] * 4, start=12, tracker=tr)
    assert tr.num_speakers == 2 and tr.events == []
    # Half a second of B that sounds like no one known: a new label at once ...
    blurred = unit(B + 6 * C)                                 # cosine distance 0.84 to B
    first = tr.push_candidate(9.0, A, blurred)
    assert [(e.time, e.from_speaker, e.to_speaker) for e in first] == [(9.0, "S1", "S3")]
    # ... restated at the same time once the first window after the change is heard (it is B: S2).
    tracker_after([B] * 3, start=18, tracker=tr)
    assert [(e.time, e.from_speaker, e.to_speaker) for e in tr.events] == [(9.0, "S1", "S2")]
    assert tr.num_speakers == 2 and tr.label_at(9.5) == "S2"
    assert tr.turns()[-1].label == "S2"
    # A label that the windows agree with is not restated.
    tr.push_candidate(12.0, B, A)
    tracker_after([A] * 3, start=24, tracker=tr)
    assert tr.events == [] and tr.current_label == "S1"


def test_a_change_the_windows_after_it_do_not_hear_is_retracted():
    tr = tracker_after([A] * 4, dataclasses.replace(ONLY_CANDIDATES, detector_retract=0.45))
    noisy = unit(A + 0.1 * B + 6 * C)                         # half a second that sounded like someone new
    assert [e.to_speaker for e in tr.push_candidate(3.0, A, noisy)] == ["S2"]
    tracker_after([A] * 3, start=6, tracker=tr)                # ... but the windows after it are A again
    assert [(e.time, e.from_speaker, e.to_speaker) for e in tr.events] == [(3.0, "S1", "S1")]
    assert tr.num_speakers == 1 and tr.current_label == "S1" and {t.label for t in tr.turns()} == {"S1"}
    # With retraction off, the (wrong) change stands.
    kept = tracker_after([A] * 4, dataclasses.replace(ONLY_CANDIDATES, detector_retract=0.0))
    kept.push_candidate(3.0, A, noisy)
    tracker_after([A] * 3, start=6, tracker=kept)
    assert kept.events == [] and kept.current_label == "S2"


def test_a_weak_candidate_is_a_change_only_when_the_windows_after_it_confirm():
    config = dataclasses.replace(ONLY_CANDIDATES, detector_threshold=0.95, detector_weak_threshold=0.8)
    tr = tracker_after([A] * 4, config)
    assert tr.push_candidate(3.0, A, B, probability=0.85) == []       # weak: nothing yet
    tracker_after([B] * 2, start=6, tracker=tr)                        # the two windows after it: B
    assert [(e.time, e.from_speaker, e.to_speaker) for e in tr.events] == [(3.0, "S1", "S2")]
    # A weak candidate whose windows are the same voice as before it is dropped ...
    tr.push_candidate(5.0, B, C, probability=0.85)
    tracker_after([B] * 2, start=10, tracker=tr)
    assert tr.events == [] and tr.current_label == "S2"
    # ... and one below the weak threshold is not even a candidate.
    tr.push_candidate(7.0, B, C, probability=0.5)
    tracker_after([C] * 2, start=14, tracker=tr)
    assert tr.events == [] and tr.current_label == "S2"


def test_an_unclear_candidate_is_decided_on_its_second_look():
    tr = tracker_after([A] * 4, dataclasses.replace(ONLY_CANDIDATES, detector_sure=0.6, detector_verify=0.4))
    unclear = unit(A + 1.2 * B)                       # half a second after it: cosine distance ~0.36 from A
    assert tr.push_candidate(3.0, A, unclear) == []   # not sure yet: waits
    events = tr.push_candidate(3.0, A, B, second_look=True)
    assert [(e.time, e.from_speaker, e.to_speaker) for e in events] == [(3.0, "S1", "S2")]
    # A clear candidate is a change at once, and its second look adds nothing.
    assert [e.to_speaker for e in tr.push_candidate(5.0, B, A)] == ["S1"]
    assert tr.push_candidate(5.0, B, A, second_look=True) == []
    # An unclear one whose second look is the same voice is no change; nor is one with too little speech yet.
    assert tr.push_candidate(7.0, A, unclear) == [] and tr.push_candidate(7.0, A, A, second_look=True) == []
    assert tr.push_candidate(8.0, A, None) == [] and tr.push_candidate(8.0, A, C, second_look=True) != []
    assert tr.current_label == "S3"
    # With detector_sure 0 every candidate is decided at its first look.
    at_once = tracker_after([A] * 4, dataclasses.replace(ONLY_CANDIDATES, detector_sure=0.0, detector_verify=0.3))
    assert [e.to_speaker for e in at_once.push_candidate(3.0, A, unclear)] == ["S2"]


def test_a_candidate_with_the_same_voice_on_both_sides_is_not_a_change():
    tr = tracker_after([A] * 4)
    near = unit(A + 0.2 * B)                          # cosine distance ~0.02
    assert tr.push_candidate(2.0, A, near) == []
    assert tr.push_candidate(2.5, A, None) == [] and tr.push_candidate(2.6, None, B) == []
    assert tr.current_label == "S1"


def test_a_returning_voice_gets_its_label_back_and_the_cap_holds():
    tr = tracker_after([A] * 4, SpeakerTrackerConfig(max_speakers=2, detector_window_gap_s=math.inf))
    labels = []
    for t, (before, after) in zip((3.0, 5.0, 7.0), ((A, B), (B, A), (A, C))):
        labels += [e.to_speaker for e in tr.push_candidate(t, before, after)]
    assert labels == ["S2", "S1", "S2"]             # B, A again, then C: at the cap of 2, the closest other
    assert tr.num_speakers == 2


def test_candidates_before_the_first_speaker_are_ignored():
    tr = SpeakerTracker(SpeakerTrackerConfig(), candidates=True)
    assert tr.push_candidate(1.0, A, B) == []


# ------------------------------------------------------------------ recipe


def test_recipe_trains_a_detector_and_writes_it_into_the_model(bundled_with_detector, tmp_path):
    import soundfile as sf

    from train.change_detector import change_targets, meeting_features, train_detector, write_into

    y = change_targets([(0.0, 2.0, "a"), (2.5, 4.0, "a"), (4.2, 6.0, "b")], 400)
    assert y.argmax() in (209, 210) and y[200] == 0 and y.max() > 0.9   # only the a -> b change, at 4.2 s
    _, source = bundled_with_detector
    target = tmp_path / "model"
    shutil.copytree(source, target)
    meetings = tmp_path / "meetings"
    meetings.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        audio = np.concatenate([0.1 * rng.standard_normal(3 * SR), np.zeros(SR // 2),
                                0.3 * rng.standard_normal(3 * SR)])
        sf.write(meetings / f"m{i}.wav", audio.astype(np.float32), SR, subtype="PCM_16")
        (meetings / f"m{i}.rttm").write_text(f"SPEAKER m{i} 1 0.000 3.000 <NA> <NA> a <NA> <NA>\n"
                                             f"SPEAKER m{i} 1 3.500 3.000 <NA> <NA> b <NA> <NA>\n")
    model = load_model(target)
    items = meeting_features(model, meetings, meetings / "cache.pt")
    assert len(items) == 2 and items[0][0].shape[1] == 12 and items[0][2].max() > 0.9
    cached = meeting_features(model, meetings, meetings / "cache.pt")
    assert torch.equal(cached[0][0], items[0][0])
    # the cache belongs to these weights: another backbone (a new export) recomputes its features
    changed = load_model(target)
    with torch.no_grad():
        changed.wavlm.encoder.layers[0].feed_forward.output_dense.weight.mul_(1.5)
    assert not torch.equal(meeting_features(changed, meetings, meetings / "cache.pt")[0][0], items[0][0])
    spec = dict(SPEC, channels=4)
    trained = train_detector(items, spec, 12, steps=3, batch=2, crop_s=2.0, log_every=1)
    write_into(target, trained, spec)
    loaded = load_model(target)
    assert loaded.change_detector.inp.out_channels == 4
    x, sp = frames(40, seed=7)
    with torch.inference_mode():
        assert torch.allclose(loaded.change_detector(x[None], sp[None]), trained(x[None], sp[None]))

    # --copy-from carries one export's detector into another (after a run that kept the speaker side fixed).
    from train.change_detector import main

    other = tmp_path / "other"
    shutil.copytree(source, other)
    main(["--model", str(other), "--copy-from", str(target)])
    copied = load_model(other)
    assert copied.config.speaker_head["change_detector"]["channels"] == 4
    with torch.inference_mode():
        assert torch.equal(copied.change_detector(x[None], sp[None]), trained(x[None], sp[None]))
    plain = tmp_path / "plain"
    head = {k: v for k, v in model.config.speaker_head.items() if k != "change_detector"}
    save_model(build_model(WavLMConfig.from_dict({**model.config.to_dict(), "speaker_head": head})), plain,
               vocab=[f"t{i}" for i in range(8)])
    with pytest.raises(SystemExit, match="has no change detector"):
        main(["--model", str(other), "--copy-from", str(plain)])
