"""Parity with transformers' WavLM: one submodule at a time, then whole models (fp32, max abs <= 1e-4)."""

from __future__ import annotations

import pytest
import torch

from conftest import BASE_STYLE, LARGE_STYLE, audio, max_diff
from model import load_model

TOL = 1e-4
STYLES = {"base": BASE_STYLE, "large": LARGE_STYLE}


@pytest.fixture(params=sorted(STYLES))
def ctc_pair(request, checkpoint):
    hf, directory = checkpoint("WavLMForCTC", **STYLES[request.param])
    return hf, load_model(directory)


@torch.inference_mode()
def test_conv_layers_one_at_a_time(ctc_pair):
    hf, ours = ctc_pair
    x = audio(2, 2000)[:, None]
    for hf_layer, layer in zip(hf.wavlm.feature_extractor.conv_layers, ours.wavlm.feature_extractor.conv_layers):
        assert layer.kernel_size == hf_layer.conv.kernel_size[0] and layer.stride == hf_layer.conv.stride[0]
        expected = hf_layer(x)
        assert max_diff(layer(x), expected) <= TOL
        if layer.norm != "group":     # the time-major form (layer-norm encoders run it)
            assert max_diff(layer.frames(x.transpose(1, 2)), expected.transpose(1, 2)) <= TOL
            assert layer.frames(x[:, :, :layer.kernel_size - 1].transpose(1, 2)).shape == (2, 0, expected.shape[1])
        x = expected
    encoder = ours.wavlm.feature_extractor
    assert encoder.time_major == (hf.config.feat_extract_norm == "layer")
    assert max_diff(encoder(audio(2, 2000)), hf.wavlm.feature_extractor(audio(2, 2000))) <= TOL


@torch.inference_mode()
def test_feature_projection(ctc_pair):
    hf, ours = ctc_pair
    features = torch.randn(2, 30, hf.config.conv_dim[-1])
    hidden, normed = hf.wavlm.feature_projection(features)
    assert max_diff(ours.wavlm.feature_projection(features), hidden) <= TOL
    ours_hidden, ours_normed = ours.wavlm.feature_projection.forward_with_normed(features)
    assert max_diff(ours_hidden, hidden) <= TOL and max_diff(ours_normed, normed) <= TOL


@torch.inference_mode()
def test_positional_conv_embedding(ctc_pair):
    hf, ours = ctc_pair
    hidden = torch.randn(2, 37, hf.config.hidden_size)
    assert max_diff(ours.wavlm.encoder.pos_conv_embed(hidden), hf.wavlm.encoder.pos_conv_embed(hidden)) <= TOL


@torch.inference_mode()
def test_relative_position_bias_square_and_rectangular(ctc_pair):
    hf, ours = ctc_pair
    attn, hf_attn = ours.wavlm.encoder.layers[0].attention, hf.wavlm.encoder.layers[0].attention
    square = attn.compute_bias(90, 90)
    assert torch.equal(square, hf_attn.compute_bias(90, 90))  # same buckets, same table rows: exact
    # queries are the LAST Tq positions of the keys: a block of the square bias
    assert torch.equal(attn.compute_bias(20, 90), square[:, 70:, :])
    # only distances matter: any W x W window of a longer utterance is the square bias of W
    assert torch.equal(attn.compute_bias(30, 30), square[:, 40:70, 40:70])
    with pytest.raises(ValueError, match="query_len"):
        attn.compute_bias(5, 4)


@torch.inference_mode()
def test_encoder_layers_one_at_a_time(ctc_pair):
    hf, ours = ctc_pair
    B, T, H = 2, 40, hf.config.hidden_size
    heads = hf.config.num_attention_heads
    x = torch.randn(B, T, H)
    bias = ours.wavlm.encoder.layers[0].attention.compute_bias(T, T)
    bias_bh = bias[None].expand(B, -1, -1, -1).reshape(B * heads, T, T)
    for hf_layer, layer in zip(hf.wavlm.encoder.layers, ours.wavlm.encoder.layers):
        expected, _ = hf_layer(x, attention_mask=None, position_bias=bias_bh)
        y, kv = layer(x, bias)
        assert max_diff(y, expected) <= TOL
        assert max_diff(layer(x, bias_bh)[0], expected) <= TOL  # (B*heads, T, T) bias accepted too
        assert kv.key.shape == kv.value.shape == (B, heads, T, H // heads)
        x = expected


@torch.inference_mode()
def test_encoder_layer_with_padding_mask(ctc_pair):
    hf, ours = ctc_pair
    B, T, H = 2, 40, hf.config.hidden_size
    x = torch.randn(B, T, H)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 25:] = 0
    bias = ours.wavlm.encoder.layers[0].attention.compute_bias(T, T)
    bias_bh = bias[None].expand(B, -1, -1, -1).reshape(-1, T, T)
    expected, _ = hf.wavlm.encoder.layers[1](x, attention_mask=mask, position_bias=bias_bh)
    y, _ = ours.wavlm.encoder.layers[1](x, bias, key_padding_mask=mask == 0)
    assert max_diff(y, expected) <= TOL


@torch.inference_mode()
def test_past_key_values_equal_full_attention(ctc_pair):
    """Queries for the last Tq positions with the earlier keys/values passed as `past` equal the last Tq rows of
    full attention (the relative bias of the block being compute_bias(Tq, Tk))."""
    _, ours = ctc_pair
    layer, attn0 = ours.wavlm.encoder.layers[1], ours.wavlm.encoder.layers[0].attention
    x = torch.randn(2, 50, ours.config.hidden_size)
    full, full_kv = layer(x, attn0.compute_bias(50, 50))
    head, head_kv = layer(x[:, :35], attn0.compute_bias(35, 35))
    tail, tail_kv = layer(x[:, 35:], attn0.compute_bias(15, 50), past=head_kv)
    assert max_diff(tail, full[:, 35:]) <= 1e-5
    assert max_diff(tail_kv.key, full_kv.key) <= 1e-5 and max_diff(tail_kv.value, full_kv.value) <= 1e-5


@torch.inference_mode()
def test_encoder(ctc_pair):
    hf, ours = ctc_pair
    hidden = torch.randn(2, 45, hf.config.hidden_size)
    expected = hf.wavlm.encoder(hidden.clone()).last_hidden_state
    got, states = ours.wavlm.encoder(hidden)
    assert max_diff(got, expected) <= TOL and states is None
    assert ours.wavlm.encoder.stable_layer_norm == hf.config.do_stable_layer_norm


@torch.inference_mode()
def test_whole_ctc_model(ctc_pair):
    hf, ours = ctc_pair
    x = audio(2, 2000)
    ref = hf(x, output_hidden_states=True)
    out = ours(x, output_hidden_states=True)
    assert max_diff(out.logits, ref.logits) <= TOL
    assert max_diff(out.last_hidden_state, hf.wavlm(x).last_hidden_state) <= TOL
    assert len(out.hidden_states) == len(ref.hidden_states) == hf.config.num_hidden_layers + 1
    for a, b in zip(out.hidden_states, ref.hidden_states):
        assert max_diff(a, b) <= TOL
    assert out.frame_mask is None and out.embeddings is None
    assert ours(x).hidden_states is None


@torch.inference_mode()
def test_batched_padding_and_attention_mask(ctc_pair):
    hf, ours = ctc_pair
    lengths = [2000, 1400, 900]
    x = torch.zeros(3, 2000)
    mask = torch.zeros(3, 2000, dtype=torch.long)
    for i, n in enumerate(lengths):
        x[i, :n] = audio(1, n, seed=i)[0]
        mask[i, :n] = 1
    ref = hf(x, attention_mask=mask)
    out = ours(x, attention_mask=mask)
    assert max_diff(out.logits, ref.logits) <= TOL
    frames = ours.wavlm.feat_extract_output_lengths(torch.tensor(lengths))
    assert out.frame_mask.dtype == torch.bool and out.frame_mask.sum(-1).tolist() == frames.tolist()
    if ours.config.feat_extract_norm == "group":
        return  # GroupNorm normalises over the padded length too (as transformers): padding changes the output
    # layer-norm models: each padded item equals the same audio run alone, on its valid frames
    for i, n in enumerate(lengths):
        alone = ours(x[i : i + 1, :n]).logits[0]
        assert max_diff(out.logits[i, : frames[i]], alone) <= TOL
