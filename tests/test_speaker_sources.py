"""Speaker embedding sources on tiny random-weight checkpoints saved by transformers.

The three sources (bundled speaker head, x-vector, frame classification) must give the
windows the tracker expects, exactly what their model computes on each window's input,
independent of how the audio or frames were split into pushes; a checkpoint of the wrong
kind must be refused with a message naming both architectures.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import hf_model, save_hf
from decoders.speaker import SpeakerTrackerConfig
from model import WavLMConfig, build_model, load_model
from stream.speakers import BundledSpeakerHead, FrameActivitySource, SpeakerWindow, XVectorSource, speaker_source_factory
from stream.vad import EnergyVAD
from stream.window import Window, WindowOutput

SR = 16000
# Standard conv geometry (20 ms frames) with tiny widths; 2 small transformer layers.
SMALL = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
    conv_dim=(16,) * 7, feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True,
    num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, num_buckets=32, max_bucket_distance=64,
    tdnn_dim=(16, 16, 24), tdnn_kernel=(3, 3, 1), tdnn_dilation=(1, 2, 1), xvector_output_dim=12,
    vocab_size=8, num_labels=2,
)
CFG = SpeakerTrackerConfig(window_s=1.5, hop_s=0.5)


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("speaker_ckpts")

    def make(cls_name: str, **extra):
        d = root / cls_name
        if not d.exists():
            vocab = [f"t{i}" for i in range(SMALL["vocab_size"])] if cls_name == "WavLMForCTC" else None
            save_hf(hf_model(cls_name, 0, **dict(SMALL, **extra)), d, vocab)
        return d
    return make


@pytest.fixture(scope="module")
def xvector(ckpt_dir):
    return load_model(ckpt_dir("WavLMForXVector"))


@pytest.fixture(scope="module")
def frame_clf(ckpt_dir):
    return load_model(ckpt_dir("WavLMForAudioFrameClassification", use_weighted_layer_sum=True))


@pytest.fixture(scope="module")
def bundled():
    torch.manual_seed(0)
    cfg = WavLMConfig.from_dict(dict(SMALL, architectures=["WavLMForCTC"],
                                     speaker_head={"embedding_dim": 8, "num_speakers": 5, "proj_dim": 12}))
    model = build_model(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def meeting_audio(seconds: float, silence=(), seed: int = 0) -> np.ndarray:
    """Noise at about -20 dBFS (speech to the energy VAD) with exact zeros in the `silence` spans."""
    x = 0.1 * np.random.default_rng(seed).standard_normal(int(seconds * SR)).astype(np.float32)
    for a, b in silence:
        x[int(a * SR):int(b * SR)] = 0.0
    return x


def push_in_pieces(source, audio: np.ndarray, sizes) -> list[SpeakerWindow]:
    out, i, k = [], 0, 0
    while i < len(audio):
        n = sizes[k % len(sizes)]
        out += source.push_audio(audio[i:i + n], i)
        i += n
        k += 1
    return out + source.finish()


def assert_same_windows(a: list[SpeakerWindow], b: list[SpeakerWindow]):
    assert [(w.start_s, w.end_s, w.speech_fraction) for w in a] == [(w.start_s, w.end_s, w.speech_fraction) for w in b]
    for x, y in zip(a, b):
        assert (x.embedding is None) == (y.embedding is None)
        if x.embedding is not None:
            np.testing.assert_array_equal(x.embedding, y.embedding)


# ------------------------------------------------------------------ x-vector


def test_xvector_windows_are_the_model_on_each_window(xvector, ckpt_dir):
    audio = meeting_audio(3.2)
    windows = push_in_pieces(XVectorSource(xvector, CFG), audio, [4000])
    assert [(w.start_s, w.end_s) for w in windows] == \
        [(0.0, 1.5), (0.5, 2.0), (1.0, 2.5), (1.5, 3.0), (1.7, 3.2)]
    import transformers
    reference = transformers.WavLMForXVector.from_pretrained(ckpt_dir("WavLMForXVector")).eval()
    for w in windows:
        assert w.speech_fraction == 1.0 and w.embedding.shape == (12,)
        x = torch.from_numpy(audio[round(w.start_s * SR):round(w.end_s * SR)])[None]
        with torch.no_grad():
            ours = xvector(x).embeddings[0].numpy()
            theirs = reference(x).embeddings[0].numpy()
        np.testing.assert_allclose(w.embedding, ours, rtol=0, atol=1e-6)
        np.testing.assert_allclose(w.embedding, theirs, rtol=0, atol=1e-4)


def test_xvector_output_does_not_depend_on_push_sizes(xvector):
    audio = meeting_audio(2.6, silence=[(0.9, 1.4)], seed=3)
    a = push_in_pieces(XVectorSource(xvector, CFG), audio, [len(audio)])
    b = push_in_pieces(XVectorSource(xvector, CFG), audio, [333, 4801, 17, 2000])
    assert_same_windows(a, b)


def test_xvector_silence_has_no_embedding_and_speech_is_trimmed(xvector):
    audio = meeting_audio(4.0, silence=[(0.0, 1.0), (2.0, 4.0)])
    windows = push_in_pieces(XVectorSource(xvector, CFG), audio, [8000])
    by_end = {w.end_s: w for w in windows}
    assert by_end[1.5].speech_fraction == pytest.approx(1 / 3, abs=0.02)
    assert by_end[4.0].embedding is None and by_end[4.0].speech_fraction == 0.0   # [2.5, 4.0): silence only
    w = by_end[2.5]                                          # [1.0, 2.5): speech [1.0, 2.0), then silence
    assert w.speech_fraction == pytest.approx(1 / 1.5, abs=0.02)
    with torch.no_grad():
        trimmed = xvector(torch.from_numpy(audio[SR:2 * SR])[None]).embeddings[0].numpy()
    np.testing.assert_allclose(w.embedding, trimmed, atol=1e-6)


def test_audio_must_be_contiguous(xvector):
    src = XVectorSource(xvector, CFG)
    src.push_audio(np.zeros(1000, np.float32), 0)
    with pytest.raises(ValueError, match="contiguous"):
        src.push_audio(np.zeros(1000, np.float32), 5000)


# ------------------------------------------------------------ frame activity


def test_frame_activity_embedding_ignores_slot_order(frame_clf, ckpt_dir):
    audio = meeting_audio(3.0, silence=[(1.2, 1.6)], seed=5)
    a = push_in_pieces(FrameActivitySource(frame_clf, CFG), audio, [5000])
    swapped = load_model(ckpt_dir("WavLMForAudioFrameClassification", use_weighted_layer_sum=True))
    with torch.no_grad():
        swapped.classifier.weight.copy_(swapped.classifier.weight.flip(0))
        swapped.classifier.bias.copy_(swapped.classifier.bias.flip(0))
    b = push_in_pieces(FrameActivitySource(swapped, CFG), audio, [5000])
    assert any(w.embedding is not None for w in a)
    for x, y in zip(a, b):
        assert x.speech_fraction == y.speech_fraction
        if x.embedding is None:
            assert y.embedding is None
        else:
            np.testing.assert_allclose(x.embedding, y.embedding, atol=1e-5)


def test_frame_activity_speech_fraction_is_the_models_activity(frame_clf):
    import copy
    audio = meeting_audio(1.5, seed=7)
    frame_clf = copy.deepcopy(frame_clf)
    with torch.no_grad():
        # Centre each slot's logits on this audio so that about half the frames are active.
        logits = frame_clf(torch.from_numpy(audio)[None]).logits[0]
        frame_clf.classifier.bias.sub_(logits.median(dim=0).values)
    src = FrameActivitySource(frame_clf, CFG)
    windows = src.push_audio(audio, 0) + src.finish()
    last = windows[-1]
    assert (last.start_s, last.end_s) == (0.0, 1.5)
    with torch.no_grad():
        act = torch.sigmoid(frame_clf(torch.from_numpy(audio)[None]).logits[0]).numpy()
    assert last.speech_fraction == pytest.approx(float((act >= 0.5).any(axis=1).mean()))
    assert 0.0 < last.speech_fraction < 1.0       # the random model is neither all on nor all off


def test_frame_activity_embedding_is_the_speaker_frames_minus_the_stream_mean(frame_clf):
    audio = meeting_audio(2.0, seed=9)
    windows = push_in_pieces(FrameActivitySource(frame_clf, CFG), audio, [len(audio)])
    act, feats = FrameActivitySource(frame_clf, CFG).activity(audio[:24000])      # the first window
    on = act >= 0.5
    slot = int(np.argmax(act[-25:].sum(axis=0)))
    alone = on[:, slot] & (on.sum(axis=1) == 1)
    pick = alone if alone.any() else on[:, slot]
    expect = feats[torch.from_numpy(pick)].mean(0) - feats.mean(0)
    np.testing.assert_allclose(windows[0].embedding, expect.numpy(), atol=1e-5)


# ------------------------------------------------------------------ bundled


def test_bundled_head_pools_the_speech_frames_of_each_window(bundled):
    T, P = 160, 12
    feats = torch.randn(T, P, generator=torch.Generator().manual_seed(0))
    speech = (np.arange(T) % 40 < 30).astype(np.float32)       # 0.6 s speech, 0.2 s pause, ...
    one = BundledSpeakerHead(bundled, CFG).push_frames(feats, 0, speech)
    src = BundledSpeakerHead(bundled, CFG)
    pieces = []
    for a, b in [(0, 7), (7, 32), (32, 33), (33, 120), (120, 160)]:
        pieces += src.push_frames(feats[a:b], a, speech[a:b])
    pieces += src.finish()
    assert_same_windows(one, pieces[:len(one)])
    assert [(w.start_s, w.end_s) for w in pieces] == \
        [(0.0, 1.5), (0.5, 2.0), (1.0, 2.5), (1.5, 3.0), (1.7, 3.2)]
    for w in pieces:
        s, e = round(w.start_s / 0.02), round(w.end_s / 0.02)
        mask = torch.from_numpy(speech[s:e] >= 0.5)
        with torch.no_grad():
            expect = bundled.speaker_pool(feats[s:e][None], mask[None])[0].numpy()
        np.testing.assert_allclose(w.embedding, expect, atol=1e-6)
        assert w.speech_fraction == pytest.approx(float(speech[s:e].mean()))
    assert src._buf.shape[0] <= 75                             # only the rolling window is kept


def test_bundled_head_uses_the_energy_vad_without_explicit_speech(bundled):
    audio = meeting_audio(2.0, silence=[(0.5, 2.0)])
    src = BundledSpeakerHead(bundled, CFG)
    src.add_audio(audio, 0)
    feats = torch.randn(100, 12)
    windows = src.push_frames(feats, 0) + src.finish()
    by_end = {w.end_s: w for w in windows}
    assert sorted(by_end) == [1.5, 2.0]
    assert by_end[1.5].speech_fraction == pytest.approx(1 / 3, abs=0.02) and by_end[1.5].embedding is not None
    assert by_end[2.0].speech_fraction == 0.0 and by_end[2.0].embedding is None


def test_energy_vad_separates_speech_from_silence_and_low_noise():
    x = np.concatenate([np.zeros(SR), 1e-4 * np.random.default_rng(0).standard_normal(SR),
                        meeting_audio(1.0)]).astype(np.float32)
    vad = EnergyVAD()
    d = np.concatenate([vad.push(x[i:i + 777]) for i in range(0, len(x), 777)])
    assert len(d) == len(x) // 320
    assert d[:50].sum() == 0 and d[50:100].sum() == 0 and d[100:].all()     # 50 frames a second
    np.testing.assert_array_equal(vad.speech(40, 150), d[40:150])


def test_energy_vad_keeps_only_recent_decisions():
    vad = EnergyVAD(keep_frames=100)
    x = meeting_audio(30.0, silence=[(25.0, 30.0)])
    d = np.concatenate([vad.push(x[i:i + 1600]) for i in range(0, len(x), 1600)])
    assert vad.frames == 1500 and vad.frames - vad._start <= 200 and len(vad._buf) == 1024   # no growth
    np.testing.assert_array_equal(vad.speech(1400, 1500), d[1400:1500])
    np.testing.assert_array_equal(vad.speech(1490, 1510)[10:], np.ones(10))   # not yet seen: speech
    with pytest.raises(ValueError, match="no longer kept"):
        vad.speech(0, 10)


# ------------------------------------------------- same API, wrong kinds, glue


def test_wrong_kind_of_checkpoint_is_refused_with_both_names(ckpt_dir, xvector, bundled):
    ctc_dir = ckpt_dir("WavLMForCTC")
    with pytest.raises(ValueError, match=r"WavLMForXVector.*WavLMForCTC"):
        XVectorSource(ctc_dir)
    with pytest.raises(ValueError, match=r"WavLMForAudioFrameClassification.*WavLMForXVector"):
        FrameActivitySource(xvector)
    with pytest.raises(ValueError, match=r"WavLMForCTCWithSpeaker.*WavLMForCTC"):
        BundledSpeakerHead(load_model(ctc_dir))
    with pytest.raises(ValueError, match=r"WavLMForXVector or WavLMForAudioFrameClassification.*WavLMForCTC"):
        speaker_source_factory(bundled, ctc_dir)
    assert speaker_source_factory(load_model(ctc_dir)) is None      # nothing to track speakers with


def test_packed_weights_false_reaches_the_speaker_model_too(ckpt_dir, tmp_path):
    from model.linear import Linear
    from stream.pipeline import Pipeline
    from tests.checkpoints import write_ctc_checkpoint

    ctc = write_ctc_checkpoint(tmp_path / "ctc")
    for packed in (True, False):
        pipe = Pipeline.from_pretrained(ctc, speaker_model=ckpt_dir("WavLMForXVector"),
                                        packed_weights=packed, beam=False)
        for model in (pipe.model, pipe.speaker_source_factory.model):
            layers = [m for m in model.modules() if isinstance(m, Linear)]
            assert layers and all(m.pack_weight is packed for m in layers)


@pytest.mark.parametrize("kind", ["bundled", "xvector", "frames"])
def test_same_api_for_every_source_through_the_stream_glue(kind, bundled, xvector, frame_clf):
    """Drive StreamSpeakers as the pipeline does (audio, then one WindowOutput per 0.64 s chunk)."""
    extra = {"bundled": None, "xvector": xvector, "frames": frame_clf}[kind]
    factory = speaker_source_factory(bundled, extra)
    speakers = factory.new_stream(CFG)
    assert speakers.needs_hidden_states == (kind == "bundled")
    audio = meeting_audio(3.0, silence=[(1.0, 1.5)], seed=2)
    with torch.no_grad():
        hidden = bundled(torch.from_numpy(audio)[None], output_hidden_states=True).hidden_states
    T = hidden[0].shape[1]
    events, direct = [], []
    speakers.push_audio(audio, 0)
    for a in range(0, T, 32):
        b = min(T, a + 32)
        out = WindowOutput(Window(max(0, a - 100), a, b, b), hidden[-1][0, a:b],
                           tuple(h[0, a:b] for h in hidden))
        events += speakers.push_window(out, None)
    events += speakers.finish()
    assert events and events[0].from_speaker is None and events[0].to_speaker == "S1"
    turns = speakers.turns()
    assert turns and all(t.label.startswith("S") for t in turns)
    assert speakers.label_for(0.0, 1.0) == "S1"
    # The windows the tracker saw are the source's own windows on the whole audio.
    direct = whole_audio_windows(factory, audio)
    assert speakers.tracker.speech.ends == [w.end_s for w in direct]


def whole_audio_windows(factory, audio: np.ndarray) -> list:
    """The windows (and candidates) a fresh source of `factory` gives for all of `audio` at once: for the
    bundled head, from the features of one forward over it."""
    src = factory.kind(factory.model, CFG)
    if src.needs_hidden_states:
        src.add_audio(audio, 0)
        with torch.no_grad():
            hidden = factory.model(torch.from_numpy(audio)[None], output_hidden_states=True).hidden_states
        return src.push_frames(factory.model.speaker_frame_features(hidden)[0], 0) + src.finish()
    return src.push_audio(audio, 0) + src.finish()


@pytest.mark.parametrize("kind", ["bundled", "xvector"])
def test_an_enrolment_is_the_mean_voice_of_the_recordings_whole_speech_windows(kind, bundled, xvector):
    """What a stream's tracker would see of the same recording: its windows' unit mean."""
    from decoders.clustering import unit

    factory = speaker_source_factory(bundled, {"bundled": None, "xvector": xvector}[kind])
    audio = meeting_audio(4.0, silence=[(1.6, 2.6)], seed=3)
    e = factory.enrolment_embedding(audio, CFG)
    windows = whole_audio_windows(factory, audio)
    whole = [unit(w.embedding) for w in windows if w.embedding is not None and w.speech_fraction >= 0.5
             and w.end_s - w.start_s >= CFG.window_s - 1e-6]
    assert 2 <= len(whole) < len(windows)            # the silent and the short last windows are left out
    assert e.shape == whole[0].shape and np.isclose(np.linalg.norm(e), 1.0)
    assert float(e @ unit(np.mean(whole, axis=0))) > 0.999
    with pytest.raises(ValueError, match="no speech found"):
        factory.enrolment_embedding(np.zeros(3 * SR, dtype=np.float32), CFG)


def test_a_frame_classification_model_cannot_enrol(bundled, frame_clf):
    factory = speaker_source_factory(bundled, frame_clf)
    with pytest.raises(ValueError, match="x-vector"):
        factory.enrolment_embedding(meeting_audio(3.0), CFG)
