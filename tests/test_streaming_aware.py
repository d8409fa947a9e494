"""Streaming-aware training: the stream-like forward normalises and attends as the stream does."""
from __future__ import annotations

import torch

from model import WavLMForCTCWithSpeaker
from model.encoder import streaming_attention_blocked
from stream.encoder import IncrementalConvEncoder
from train.streaming_aware import StreamingAware
from train.train import build_config


def _model() -> WavLMForCTCWithSpeaker:
    torch.manual_seed(0)
    return WavLMForCTCWithSpeaker(build_config("tiny", ["a", "b"])).eval()


def test_blocked_keys_are_those_outside_each_chunks_window():
    blocked = streaming_attention_blocked(10, left=2, chunk=3, right=1)
    visible = [tuple(int(k) for k in torch.nonzero(~row)) for row in blocked]
    assert visible[0] == visible[2] == (0, 1, 2, 3)         # chunk 0: itself + 1 right
    assert visible[3] == visible[5] == (1, 2, 3, 4, 5, 6)   # chunk 1: 2 left, itself, 1 right
    assert visible[9] == (7, 8, 9)                          # last chunk: no right context exists


def test_causal_front_end_equals_the_streaming_encoder_and_offline_is_untouched():
    model = _model()
    fe = model.wavlm.feature_extractor
    x = torch.randn(16000 * 3) * 0.1
    with torch.no_grad():
        offline = fe(x[None])[0].T
        aware = StreamingAware(model, (100, 32, 16))
        assert torch.equal(fe(x[None])[0].T, offline)       # off: the plain GroupNorm
        aware.set(True)
        causal = fe(x[None])[0].T
    encoder = IncrementalConvEncoder(fe, "group")
    state, pieces = encoder.init_state(), []
    for i in range(0, len(x), 777):
        frames, state = encoder.push(x[i:i + 777], state)
        pieces.append(frames)
    frames, state = encoder.flush(state)
    stream = torch.cat(pieces + [frames])
    assert stream.shape == causal.shape
    drift = (stream - offline).abs().max()                  # the two rules do differ ...
    assert drift > 100 * (stream - causal).abs().max()      # ... and the causal one is the stream's
    assert set(model.state_dict()) == set(_model().state_dict())   # checkpoints keep their names


def test_stream_like_attention_limits_what_a_chunk_sees():
    model = _model()
    x = torch.randn(1, 16000 * 3) * 0.1
    aware = StreamingAware(model, (10, 8, 4))
    with torch.no_grad():
        offline = model(x).logits
        aware.set(True)
        windowed = model(x).logits
        model.wavlm.encoder.attention_window = (1000, 1000, 0)   # a window wider than the clip
        model.wavlm.feature_extractor.conv_layers[0].layer_norm.causal = False
        wide = model(x).logits
    assert (windowed - offline).abs().max() > 1e-3
    assert torch.allclose(wide, offline, atol=1e-5)
