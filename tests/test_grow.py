"""train/grow.py: layers added on top of a trained model start as the identity, for captions and speakers."""
from __future__ import annotations

import pytest
import torch

from model import WavLMConfig, WavLMForCTCWithSpeaker
from train.grow import add_identity_layers
from train.train import build_config


def trained_like(config: WavLMConfig) -> WavLMForCTCWithSpeaker:
    """A model whose every parameter is random and non-zero (biases and layer norms included), so an
    identity that held only for default-initialised weights would show."""
    torch.manual_seed(0)
    model = WavLMForCTCWithSpeaker(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def test_added_layers_leave_logits_and_speaker_features_unchanged():
    config = build_config("tiny", ["a", "b", "c"])
    small = trained_like(config)
    state = small.state_dict()
    before = {k: v.clone() for k, v in state.items()}
    grown_config, grown_state = add_identity_layers(config, state, 2)
    assert grown_config.num_hidden_layers == config.num_hidden_layers + 2
    grown = WavLMForCTCWithSpeaker(grown_config).eval()
    grown.load_state_dict(grown_state)           # strict: every parameter of the bigger model is given
    x = torch.randn(2, 12000) * 0.1
    with torch.no_grad():
        a, b = small(x), grown(x)
        fa = small.speaker_head.frame_features(small.wavlm(x, output_hidden_states=True).hidden_states)
        fb = grown.speaker_head.frame_features(grown.wavlm(x, output_hidden_states=True).hidden_states)
    assert torch.equal(a.logits, b.logits)
    assert torch.allclose(fa, fb, atol=1e-5)
    assert torch.allclose(a.embeddings, b.embeddings, atol=1e-5)
    # The new layers are not dead: their zeroed projections get gradients at once.
    grown.train()
    grown(x).logits.logsumexp(-1).sum().backward()
    assert grown.wavlm.encoder.layers[-1].feed_forward.output_dense.weight.grad.abs().sum() > 0
    # The input state is left as it was, and the grown head keeps its layer weights in front.
    assert state.keys() == before.keys() and all(torch.equal(state[k], before[k]) for k in before)
    assert torch.equal(before["speaker_head.layer_weights"],
                       grown_state["speaker_head.layer_weights"][:config.num_hidden_layers + 1])


def test_only_pre_ln_models_and_a_positive_count():
    config = build_config("tiny", ["a"])
    state = WavLMForCTCWithSpeaker(config).state_dict()
    with pytest.raises(ValueError, match="at least 1"):
        add_identity_layers(config, state, 0)
    post_ln = WavLMConfig.from_dict({**config.to_dict(), "do_stable_layer_norm": False})
    with pytest.raises(ValueError, match="pre-LN"):
        add_identity_layers(post_ln, state, 1)
    with pytest.raises(ValueError, match="does not match"):
        add_identity_layers(config, {}, 1)
