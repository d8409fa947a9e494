"""Fine-tuning parts against transformers: CTC and AM-softmax losses, SpecAugment masks, frozen feature encoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import BASE_STYLE, LARGE_STYLE, audio, hf_model, max_diff
from model import WavLMConfig, WavLMForCTC, load_model
from model.losses import AMSoftmaxLoss, ctc_loss
from model.masking import compute_mask_indices

NO_DROPOUT = dict(hidden_dropout=0.0, activation_dropout=0.0, attention_dropout=0.0, feat_proj_dropout=0.0,
                  final_dropout=0.0, layerdrop=0.0)


def _batch():
    x = torch.zeros(3, 2000)
    mask = torch.zeros(3, 2000, dtype=torch.long)
    for i, n in enumerate((2000, 1500, 1100)):
        x[i, :n] = audio(1, n, seed=i)[0]
        mask[i, :n] = 1
    return x, mask


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_ctc_loss_matches_transformers(checkpoint, reduction):
    hf, directory = checkpoint("WavLMForCTC", ctc_loss_reduction=reduction, **BASE_STYLE)
    ours = load_model(directory)
    x, mask = _batch()
    labels = torch.tensor([[5, 6, 6, 7, 4, 8], [9, 10, 4, 11, -100, -100], [5, 5, -100, -100, -100, -100]])
    with torch.inference_mode():
        ref = hf(x, attention_mask=mask, labels=labels).loss
        out = ours(x, attention_mask=mask)
        frames = ours.wavlm.feat_extract_output_lengths(mask.sum(-1))
        loss = ctc_loss(out.logits, frames, labels, blank=ours.config.pad_token_id, reduction=reduction)
        assert max_diff(loss, ref) <= 1e-4
        # explicit label_lengths cut the labels like -100 padding does
        cut = ctc_loss(out.logits, frames, labels.masked_fill(labels < 0, 7), torch.tensor([6, 4, 2]), reduction=reduction)
        assert max_diff(cut, ref) <= 1e-4
    with pytest.raises(ValueError, match="label id 12 >= vocabulary size 12"):
        ctc_loss(out.logits, frames, torch.tensor([[12]] * 3))


def test_am_softmax_matches_transformers():
    from transformers.models.wavlm.modeling_wavlm import AMSoftmaxLoss as HFAMSoftmax

    torch.manual_seed(0)
    ref = HFAMSoftmax(8, 5)
    ours = AMSoftmaxLoss(8, 5)
    ours.load_state_dict(ref.state_dict())
    emb, labels = torch.randn(6, 8), torch.tensor([0, 1, 4, 2, 2, 3])
    assert max_diff(ours(emb, labels), ref(emb, labels)) <= 1e-6
    # without labels: plain scaled cosines (for scoring); with labels the true class loses scale * margin
    with torch.no_grad():
        plain, margined = ours.logits(emb), ours.logits(emb, labels)
    assert plain.abs().max() <= ours.scale + 1e-4
    diff = plain - margined
    assert torch.allclose(diff[torch.arange(6), labels], torch.full((6,), ours.scale * ours.margin))
    assert diff.abs().sum().item() == pytest.approx(6 * ours.scale * ours.margin, rel=1e-5)


@pytest.mark.parametrize("shape,prob,length,min_masks", [
    ((4, 100), 0.3, 10, 2), ((3, 57), 0.05, 10, 2), ((2, 20), 0.9, 5, 0), ((5, 32), 0.5, 1, 1), ((2, 12), 0.0, 10, 0),
])
@pytest.mark.parametrize("with_mask", [False, True])
def test_mask_indices_match_transformers_with_the_same_seed(shape, prob, length, min_masks, with_mask):
    from transformers.models.wavlm.modeling_wavlm import _compute_mask_indices

    attention_mask = None
    if with_mask:
        attention_mask = torch.ones(shape, dtype=torch.long)
        attention_mask[-1, shape[1] * 2 // 3 :] = 0
    for seed in range(5):
        np.random.seed(seed)
        ref = _compute_mask_indices(shape, prob, length, attention_mask, min_masks)
        np.random.seed(seed)
        ours = compute_mask_indices(shape, prob, length, attention_mask, min_masks)
        assert ours.dtype == bool and np.array_equal(ours, ref)
        # an explicit RandomState reproduces the legacy global stream
        assert np.array_equal(compute_mask_indices(shape, prob, length, attention_mask, min_masks,
                                                   random_state=np.random.RandomState(seed)), ref)
        if with_mask:
            assert not ours[-1, shape[1] * 2 // 3 + length :].any()  # spans start inside the valid frames


def test_mask_indices_errors():
    with pytest.raises(ValueError, match="mask_length must be >= 1"):
        compute_mask_indices((1, 10), 0.5, 0)
    with pytest.raises(ValueError, match="longer than the sequence"):
        compute_mask_indices((1, 10), 0.5, 11)


@pytest.mark.parametrize("style", [BASE_STYLE, LARGE_STYLE], ids=["base", "large"])
def test_given_mask_time_indices_match_transformers(checkpoint, style):
    hf, directory = checkpoint("WavLMModel", **style)
    ours = load_model(directory)
    x = audio(2, 2000)
    m = torch.from_numpy(compute_mask_indices((2, 99), 0.3, 5, random_state=np.random.RandomState(0)))
    with torch.inference_mode():
        ref = hf(x, mask_time_indices=m).last_hidden_state
        got = ours(x, mask_time_indices=m).last_hidden_state
    assert max_diff(got, ref) <= 1e-4 and max_diff(got, ours(x).last_hidden_state) > 1e-3


def test_train_mode_spec_augment_matches_transformers(checkpoint):
    cfg = dict(BASE_STYLE, **NO_DROPOUT, mask_time_prob=0.3, mask_time_length=4, mask_feature_prob=0.3,
               mask_feature_length=4, mask_feature_min_masks=1)  # transformers' WavLMConfig lacks this field
    hf, directory = checkpoint("WavLMForCTC", **cfg)
    ours = load_model(directory)
    hf.train(), ours.train()
    x, mask = _batch()
    np.random.seed(3)
    ref = hf(x, attention_mask=mask).logits
    np.random.seed(3)
    got = ours(x, attention_mask=mask).logits
    assert max_diff(got, ref) <= 1e-4
    ours.eval()
    with torch.no_grad():
        assert max_diff(ours(x, attention_mask=mask).logits, got) > 1e-3  # eval mode does not mask


def test_freeze_feature_encoder_and_gradients(checkpoint):
    _, directory = checkpoint("WavLMForCTC", **dict(BASE_STYLE, **NO_DROPOUT))
    model = load_model(directory).train()
    model.freeze_feature_encoder()
    x, mask = _batch()
    out = model(x, attention_mask=mask)
    frames = model.wavlm.feat_extract_output_lengths(mask.sum(-1))
    ctc_loss(out.logits, frames, torch.tensor([[5, 6], [7, 8], [9, -100]])).backward()
    for name, p in model.named_parameters():
        if name.startswith("wavlm.feature_extractor."):
            assert not p.requires_grad and p.grad is None, name
        elif name != "wavlm.masked_spec_embed":
            assert p.grad is not None, name
    model.freeze_base_model()
    assert not any(p.requires_grad for p in model.wavlm.parameters()) and model.lm_head.weight.requires_grad


def test_layerdrop_keeps_one_hidden_state_per_layer():
    torch.manual_seed(0)
    model = WavLMForCTC(WavLMConfig(**dict(BASE_STYLE, layerdrop=0.99, num_hidden_layers=4))).train()
    out = model(audio(1, 1000), output_hidden_states=True)
    assert len(out.hidden_states) == 5


def test_hf_reference_models_are_seeded():
    a, b = hf_model("WavLMModel", 1, **BASE_STYLE), hf_model("WavLMModel", 1, **BASE_STYLE)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
