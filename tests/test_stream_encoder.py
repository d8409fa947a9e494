"""stream/encoder.py: the incremental conv encoder against the offline one."""

import numpy as np
import pytest
import torch

from model import load_model
from stream.encoder import IncrementalConvEncoder
from tests.checkpoints import write_ctc_checkpoint


@pytest.fixture(scope="module")
def layer_norm_model(tmp_path_factory):
    return load_model(write_ctc_checkpoint(tmp_path_factory.mktemp("ln"), norm="layer"))


@pytest.fixture(scope="module")
def group_norm_model(tmp_path_factory):
    return load_model(write_ctc_checkpoint(tmp_path_factory.mktemp("gn"), norm="group", stable=False))


def _stream(encoder, audio, sizes, flush=True):
    state = encoder.init_state()
    frames, pos = [], 0
    for size in sizes:
        out, state = encoder.push(audio[pos:pos + size], state)
        frames.append(out)
        pos += size
    assert pos == audio.shape[0]
    if flush:
        out, state = encoder.flush(state)
        frames.append(out)
    return torch.cat(frames), state


def _random_sizes(rng, total, low, high):
    sizes = []
    while sum(sizes) < total:
        sizes.append(int(rng.integers(low, high + 1)))
    sizes[-1] -= sum(sizes) - total
    return [s for s in sizes if s > 0]


def _offline(model, audio):
    with torch.inference_mode():
        return model.wavlm.feature_extractor(audio[None])[0].T     # (T, C)


@pytest.mark.parametrize("low,high", [(1, 1), (1, 700), (300, 345), (2000, 9000)])
def test_layer_norm_stream_equals_offline_frame_for_frame(layer_norm_model, low, high):
    rng = np.random.default_rng(low)
    n = 16000 if low > 1 else 3000          # single-sample pushes are slow: keep that case short
    audio = torch.from_numpy(rng.standard_normal(n).astype(np.float32))
    encoder = IncrementalConvEncoder(layer_norm_model.wavlm.feature_extractor, "layer")
    with torch.inference_mode():
        streamed, state = _stream(encoder, audio, _random_sizes(rng, n, low, high))
    offline = _offline(layer_norm_model, audio)
    assert streamed.shape == offline.shape
    assert state.frames_out == offline.shape[0]
    torch.testing.assert_close(streamed, offline, atol=1e-5, rtol=1e-5)


def test_frames_come_out_as_soon_as_their_input_is_complete(layer_norm_model):
    encoder = IncrementalConvEncoder(layer_norm_model.wavlm.feature_extractor, "layer")
    state = encoder.init_state()
    with torch.inference_mode():
        out, state = encoder.push(torch.zeros(399), state)
        assert out.shape[0] == 0                     # receptive field is 400 samples
        out, state = encoder.push(torch.zeros(1), state)
        assert out.shape[0] == 1
        out, state = encoder.push(torch.zeros(319), state)
        assert out.shape[0] == 0
        out, state = encoder.push(torch.zeros(1), state)
        assert out.shape[0] == 1                     # then one frame every 320 samples
    # Tails stay bounded: each layer keeps less than its kernel.
    for tail, layer in zip(state.tails, encoder.layers):
        assert tail.shape[1 if encoder.time_major else 2] < layer.kernel_size


def test_group_norm_stream_does_not_depend_on_chunking(group_norm_model):
    rng = np.random.default_rng(1)
    audio = torch.from_numpy(rng.standard_normal(40000).astype(np.float32))
    encoder = IncrementalConvEncoder(group_norm_model.wavlm.feature_extractor, "group")
    with torch.inference_mode():
        a, _ = _stream(encoder, audio, _random_sizes(rng, 40000, 1, 5000))
        b, _ = _stream(encoder, audio, [40000])
    assert a.shape == b.shape == _offline(group_norm_model, audio).shape
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_group_norm_stream_shorter_than_warmup_equals_offline(group_norm_model):
    # Under one second everything is held for the warm-up and normalised at the flush
    # over the whole utterance: exactly what the offline GroupNorm does.
    audio = torch.from_numpy(np.random.default_rng(2).standard_normal(12000).astype(np.float32))
    encoder = IncrementalConvEncoder(group_norm_model.wavlm.feature_extractor, "group")
    with torch.inference_mode():
        streamed, _ = _stream(encoder, audio, [5000, 7000])
    torch.testing.assert_close(streamed, _offline(group_norm_model, audio), atol=1e-4, rtol=1e-4)


def test_group_norm_frames_after_the_warm_up_come_out_as_soon_as_their_input_is_complete(group_norm_model):
    # The statistics are closed per output frame, at the end of its receptive field, so no
    # frame waits for audio beyond its own receptive field (as with layer norm).
    encoder = IncrementalConvEncoder(group_norm_model.wavlm.feature_extractor, "group")
    state = encoder.init_state()
    rng = np.random.default_rng(4)
    with torch.inference_mode():
        out, state = encoder.push(torch.from_numpy(rng.standard_normal(16000).astype(np.float32)), state)
        assert out.shape[0] == 0                     # warm-up: 1 s held back once
        out, state = encoder.push(torch.from_numpy(rng.standard_normal(400).astype(np.float32)), state)
        n = out.shape[0]
        assert n == state.frames_out == (16400 - 400) // 320 + 1
        for _ in range(3):
            out, state = encoder.push(torch.from_numpy(rng.standard_normal(319).astype(np.float32)), state)
            assert out.shape[0] == 0
            out, state = encoder.push(torch.from_numpy(rng.standard_normal(1).astype(np.float32)), state)
            assert out.shape[0] == 1
        assert state.group_stats.pending is None     # nothing held once a frame is complete


def test_group_norm_rule_uses_the_statistics_up_to_each_output_frames_receptive_field(group_norm_model):
    # The documented rule, computed by hand: after the warm-up span, the conv-0 frames that
    # output frame j adds are normalised over conv-0 frames [0, end of frame j's receptive field).
    encoder = IncrementalConvEncoder(group_norm_model.wavlm.feature_extractor, "group", warmup_frames=300)
    layer = encoder.layers[0]
    audio = torch.from_numpy(np.random.default_rng(5).standard_normal(4000).astype(np.float32))
    with torch.inference_mode():
        y = layer.conv(audio.reshape(1, 1, -1))                          # (1, C, T0)
        out, stats = encoder._group_norm_stream(y, encoder.init_state().group_stats, end_of_stream=False)
    first = (encoder.receptive_field - layer.kernel_size) // layer.stride + 1   # 79
    per_frame = encoder.total_stride // layer.stride                            # 64
    seed = first + per_frame * -(-(300 - first) // per_frame)                   # first boundary >= 300
    ends = [seed] + list(range(seed + per_frame, y.shape[-1] + 1, per_frame))
    assert out.shape[-1] == ends[-1] and stats.count == ends[-1]
    y64 = y[0].double()
    start = 0
    for end in ends:
        mean = y64[:, :end].mean(1, keepdim=True)
        std = (y64[:, :end].var(1, unbiased=False, keepdim=True) + layer.layer_norm.eps).sqrt()
        expected = (y64[:, start:end] - mean) / std * layer.layer_norm.weight[:, None].double() \
            + layer.layer_norm.bias[:, None].double()
        torch.testing.assert_close(out[0, :, start:end].double(), expected, atol=1e-4, rtol=1e-4)
        start = end


def test_group_norm_drift_is_bounded_on_stationary_audio(group_norm_model):
    # On stationary input the running statistics converge to the utterance's: the last
    # frames of a long stream are close to offline (drift is measured on speech in bench/).
    audio = torch.from_numpy((np.random.default_rng(3).standard_normal(80000) * 0.1).astype(np.float32))
    encoder = IncrementalConvEncoder(group_norm_model.wavlm.feature_extractor, "group")
    with torch.inference_mode():
        streamed, _ = _stream(encoder, audio, [1600] * 50)
    offline = _offline(group_norm_model, audio)
    tail_error = (streamed[-50:] - offline[-50:]).abs().max().item()
    scale = offline[-50:].abs().max().item()
    assert tail_error < 0.05 * scale


def test_unknown_norm_kind_is_rejected(layer_norm_model):
    with pytest.raises(ValueError, match="feat_extract_norm"):
        IncrementalConvEncoder(layer_norm_model.wavlm.feature_extractor, "batch")


@pytest.mark.parametrize("warmup_ms", [1000, 2500])
def test_group_norm_warmup_setting_holds_the_first_window_until_then(group_norm_model, warmup_ms):
    """StreamConfig.group_norm_warmup_ms reaches the encoder: no window runs before that much
    audio has arrived (nor before chunk + right), and one runs as soon as it has."""
    from stream.pipeline import Pipeline, StreamConfig

    pipe = Pipeline(group_norm_model, StreamConfig(group_norm_warmup_ms=warmup_ms, beam=False, final_pass=False))
    stream = pipe.new_stream()
    audio = (np.random.default_rng(0).standard_normal(16000 * 4) * 0.1).astype(np.float32)
    block = 320
    for end in range(block, audio.size + 1, block):
        stream.accept(audio[end - block:end], 16000)
        if stream.pending_windows:
            break
    # The warm-up span ends at the first output frame boundary after warmup_ms (+ one frame).
    need_s = max(warmup_ms / 1000, (640 + 320) / 1000)
    assert need_s <= end / 16000 <= need_s + 0.06


def test_group_norm_warmup_setting_is_checked():
    from stream.pipeline import StreamConfig

    with pytest.raises(ValueError, match="group_norm_warmup_ms"):
        StreamConfig(group_norm_warmup_ms=-1)
