"""Parity of every head with transformers (whole models, batched with padding), and the bundled CTC+speaker head."""

from __future__ import annotations

import pytest
import torch

from conftest import BASE_STYLE, LARGE_STYLE, VOCAB, audio, max_diff
from model import (ModelOutput, WavLMConfig, WavLMForAudioFrameClassification, WavLMForCTC, WavLMForCTCWithSpeaker,
                   WavLMForSequenceClassification, WavLMForXVector, load_model)
from model.loading import save_model

TOL = 1e-4
LABELS = {0: "a", 1: "b", 2: "c"}


def padded_batch(lengths=(2000, 1300, 800)):
    x = torch.zeros(len(lengths), max(lengths))
    mask = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    for i, n in enumerate(lengths):
        x[i, :n] = audio(1, n, seed=10 + i)[0]
        mask[i, :n] = 1
    return x, mask


def compare(hf, ours, field="logits", with_mask=True):
    x = audio(2, 1600)
    with torch.inference_mode():
        ref, out = hf(x, output_hidden_states=True), ours(x, output_hidden_states=True)
        assert isinstance(out, ModelOutput)
        assert max_diff(getattr(out, field), getattr(ref, field)) <= TOL
        for a, b in zip(out.hidden_states, ref.hidden_states, strict=True):
            assert max_diff(a, b) <= TOL
        if with_mask:
            x, mask = padded_batch()
            ref, out = hf(x, attention_mask=mask), ours(x, attention_mask=mask)
            assert max_diff(getattr(out, field), getattr(ref, field)) <= TOL
            assert out.hidden_states is None
    return out


@pytest.mark.parametrize("style", [BASE_STYLE, LARGE_STYLE], ids=["base", "large"])
def test_ctc_with_adapter(checkpoint, style):
    hf, directory = checkpoint("WavLMForCTC", add_adapter=True, output_hidden_size=24, num_adapter_layers=2,
                               **style)
    ours = load_model(directory)
    assert isinstance(ours, WavLMForCTC) and ours.wavlm.adapter is not None
    out = compare(hf, ours)
    # the frame mask describes the adapter's (shorter) output
    assert out.frame_mask.shape == out.logits.shape[:2]
    assert out.frame_mask.sum(-1).tolist() == ours.wavlm.feat_extract_output_lengths(torch.tensor([2000, 1300, 800])).tolist()


def test_ctc_with_adapter_same_width(checkpoint):
    hf, directory = checkpoint("WavLMForCTC", add_adapter=True, num_adapter_layers=1, **BASE_STYLE)
    ours = load_model(directory)
    assert ours.wavlm.adapter.proj is None
    compare(hf, ours)


@pytest.mark.parametrize("weighted", [False, True])
def test_sequence_classification(checkpoint, weighted):
    hf, directory = checkpoint("WavLMForSequenceClassification", use_weighted_layer_sum=weighted, id2label=LABELS,
                               **BASE_STYLE)
    ours = load_model(directory)
    assert isinstance(ours, WavLMForSequenceClassification)
    out = compare(hf, ours)
    assert out.logits.shape == (3, 3)


@pytest.mark.parametrize("style", [BASE_STYLE, LARGE_STYLE], ids=["base", "large"])
def test_audio_frame_classification_weighted(checkpoint, style):
    hf, directory = checkpoint("WavLMForAudioFrameClassification", use_weighted_layer_sum=True, id2label=LABELS,
                               **style)
    ours = load_model(directory)
    assert isinstance(ours, WavLMForAudioFrameClassification)
    out = compare(hf, ours)
    assert out.logits.shape[-1] == 3


@pytest.mark.parametrize("weighted", [False, True])
def test_xvector(checkpoint, weighted):
    hf, directory = checkpoint("WavLMForXVector", use_weighted_layer_sum=weighted, id2label=LABELS, **BASE_STYLE)
    ours = load_model(directory)
    assert isinstance(ours, WavLMForXVector)
    out = compare(hf, ours, "embeddings")
    compare(hf, ours, "logits", with_mask=False)
    assert out.embeddings.shape == (3, 12)
    # TDNN submodule alone
    x = torch.randn(2, 30, 16)
    with torch.inference_mode():
        for a, b in zip(ours.tdnn, hf.tdnn, strict=True):
            assert max_diff(a(x), b(x)) <= TOL
            x = b(x)


def test_heads_without_adapter_support_refuse_it():
    cfg = WavLMConfig(**dict(BASE_STYLE, add_adapter=True))
    for cls in (WavLMForSequenceClassification, WavLMForAudioFrameClassification):
        with pytest.raises(ValueError, match="does not support adapters"):
            cls(cfg)


# ---- bundled CTC + speaker model -------------------------------------------------------------------
SPEAKER = {"embedding_dim": 8, "num_speakers": 5, "proj_dim": 12}


@pytest.fixture
def bundled(tmp_path):
    torch.manual_seed(0)
    cfg = WavLMConfig(**dict(LARGE_STYLE, architectures=("WavLMForCTC",), speaker_head=SPEAKER))
    model = WavLMForCTCWithSpeaker(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    save_model(model, tmp_path / "bundled", vocab=VOCAB)
    return model, tmp_path / "bundled"


@torch.inference_mode()
def test_bundled_model_round_trip_and_transformers_reads_its_ctc_part(bundled):
    import transformers

    model, directory = bundled
    loaded = load_model(directory)
    assert isinstance(loaded, WavLMForCTCWithSpeaker) and loaded.vocab == tuple(VOCAB)
    x = audio(2, 1600)
    a, b = model(x), loaded(x)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.embeddings, b.embeddings)
    assert b.embeddings.shape == (2, SPEAKER["embedding_dim"])
    hf = transformers.WavLMForCTC.from_pretrained(directory).eval()  # ignores speaker_head.* keys
    assert max_diff(hf(x).logits, b.logits) <= TOL


@torch.inference_mode()
def test_speaker_pool_over_frames_equals_forward(bundled):
    model, _ = bundled
    x, mask = padded_batch()
    out = model(x, attention_mask=mask, output_hidden_states=True)
    feats = model.speaker_frame_features(out.hidden_states)
    assert feats.shape == (*out.frame_mask.shape, SPEAKER["proj_dim"])
    assert torch.allclose(model.speaker_pool(feats, out.frame_mask), out.embeddings)
    # pooling with a mask equals pooling the valid frames alone
    n = int(out.frame_mask[2].sum())
    assert max_diff(model.speaker_pool(feats[2:3, :n]), out.embeddings[2:3]) <= 1e-5
    # a single frame gives a finite embedding (population std, floored variance)
    assert torch.isfinite(model.speaker_pool(feats[:, :1])).all()


def test_speaker_head_trains(bundled):
    model, _ = bundled
    model.train()
    out = model(audio(2, 1600))
    loss = model.speaker_head.objective(out.embeddings, torch.tensor([1, 3]))
    loss.backward()
    assert model.speaker_head.layer_weights.grad is not None and model.speaker_head.objective.weight.grad is not None


@torch.inference_mode()
def test_speaker_head_input_norm_is_read_from_the_config_and_ignores_each_layers_scale(tmp_path):
    torch.manual_seed(0)
    cfg = WavLMConfig(**dict(LARGE_STYLE, architectures=("WavLMForCTC",), speaker_head=dict(SPEAKER, input_norm=True)))
    model = WavLMForCTCWithSpeaker(cfg).eval()
    save_model(model, tmp_path / "normed", vocab=VOCAB)
    loaded = load_model(tmp_path / "normed")
    assert loaded.speaker_head.input_norm
    out = model(audio(2, 1600), output_hidden_states=True)
    feats = model.speaker_frame_features(out.hidden_states)
    # each hidden state is normalised per frame before the sum: scaling one layer changes nothing
    scaled = tuple(h * (50.0 if i == 0 else 1.0) + (3.0 if i == 0 else 0.0) for i, h in enumerate(out.hidden_states))
    assert max_diff(model.speaker_frame_features(scaled), feats) <= 1e-4
    assert torch.equal(loaded(audio(2, 1600)).embeddings, model(audio(2, 1600)).embeddings)
    # without the option (older checkpoints) the same scaling does change the features
    plain = WavLMForCTCWithSpeaker(WavLMConfig(**dict(LARGE_STYLE, architectures=("WavLMForCTC",),
                                                      speaker_head=SPEAKER))).eval()
    assert not plain.speaker_head.input_norm
    assert max_diff(plain.speaker_frame_features(scaled), plain.speaker_frame_features(out.hidden_states)) > 1e-2
