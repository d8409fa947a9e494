"""stream/window.py and the pipeline's transformer path: bias cache, scheduling, exactness."""

import numpy as np
import pytest
import torch

from model import load_model
from stream.pipeline import Pipeline, StreamConfig
from stream.window import BiasCache, TransformerState, Window, WindowConfig, next_window
from tests.checkpoints import write_ctc_checkpoint


@pytest.fixture(scope="module")
def ctc_model(tmp_path_factory):
    return load_model(write_ctc_checkpoint(tmp_path_factory.mktemp("ctc"), norm="layer", stable=True))


@pytest.fixture(scope="module")
def post_ln_model(tmp_path_factory):
    return load_model(write_ctc_checkpoint(tmp_path_factory.mktemp("postln"), norm="layer", stable=False))


def _audio(seconds, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(16000 * seconds)) * 0.1).astype(np.float32)


def _offline_log_probs(model, audio):
    with torch.inference_mode():
        logits = model(torch.from_numpy(audio)[None]).logits[0]
    return torch.log_softmax(logits, -1).numpy()


def test_cached_bias_is_the_block_of_the_offline_bias(ctc_model):
    attention = ctc_model.wavlm.encoder.layers[0].attention
    full = attention.compute_bias(300, 300)
    cache = BiasCache(attention)
    for q, k, offset in [(48, 148, 0), (48, 148, 100), (16, 16, 7), (32, 80, 200)]:
        block = full[:, offset + k - q: offset + k, offset: offset + k]
        torch.testing.assert_close(cache.get(q, k), block, atol=0, rtol=0)
    first = cache.get(48, 148)
    assert cache.get(48, 148) is first            # computed once, reused
    assert len(cache) == 3                        # one entry per (queries, keys) shape


def _state(total, emitted):
    return TransformerState(torch.zeros(total, 4), 0, emitted)


def test_scheduler_waits_for_chunk_plus_right_context():
    config = WindowConfig(chunk=4, left=10, right=2)
    assert next_window(config, _state(5, 0), end_of_stream=False) is None
    assert next_window(config, _state(6, 0), False) == Window(0, 0, 4, 6)
    assert next_window(config, _state(30, 20), False) == Window(10, 20, 24, 26)
    # End of stream: the tail runs with the right context that exists, nothing beyond.
    assert next_window(config, _state(22, 20), True) == Window(10, 20, 22, 22)
    assert next_window(config, _state(25, 20), True) == Window(10, 20, 24, 25)
    assert next_window(config, _state(25, 25), True) is None


def test_window_config_from_ms_and_validation():
    assert WindowConfig.from_ms(640, 2000, 320) == WindowConfig(32, 100, 16, "cached")
    with pytest.raises(ValueError, match="chunk"):
        WindowConfig.from_ms(5, 2000, 320)
    with pytest.raises(ValueError, match="mode"):
        WindowConfig(4, 4, 4, "fast")


@pytest.mark.parametrize("mode", ["cached", "recompute"])
@pytest.mark.parametrize("fixture", ["ctc_model", "post_ln_model"])
def test_window_covering_the_whole_input_equals_offline(request, fixture, mode):
    model = request.getfixturevalue(fixture)
    audio = _audio(3.0)
    pipe = Pipeline(model, StreamConfig(chunk_ms=10000, left_ms=10000, right_ms=10000, mode=mode, beam=False))
    streamed = pipe.streaming_log_probs(audio, block=1234)
    offline = _offline_log_probs(model, audio)
    assert streamed.shape == offline.shape
    assert np.abs(streamed - offline).max() <= 1e-4


def test_recompute_with_full_left_context_equals_offline_for_causal_bias_span(ctc_model):
    # With left context covering everything and right context covering the rest of the
    # utterance, every recompute window sees the whole input: exact again.
    audio = _audio(2.0, seed=3)
    pipe = Pipeline(ctc_model, StreamConfig(chunk_ms=200, left_ms=10000, right_ms=10000,
                                            mode="recompute", beam=False))
    stream = pipe.new_stream(keep_log_probs=True)
    stream.accept(audio, 16000)
    stream.finish()
    assert np.abs(stream.log_probs - _offline_log_probs(ctc_model, audio)).max() <= 1e-4


@pytest.mark.parametrize("mode", ["cached", "recompute"])
@pytest.mark.parametrize("block", [320, 777, 4321])
def test_streaming_output_does_not_depend_on_how_audio_was_cut(ctc_model, mode, block):
    audio = _audio(4.0, seed=1)
    pipe = Pipeline(ctc_model, StreamConfig(chunk_ms=160, left_ms=400, right_ms=80, mode=mode, beam=False))
    want = pipe.streaming_log_probs(audio, block=len(audio))
    got = pipe.streaming_log_probs(audio, block=block)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-5


def test_single_sample_pushes_give_the_same_output(ctc_model):
    audio = _audio(1.2, seed=4)
    pipe = Pipeline(ctc_model, StreamConfig(chunk_ms=160, left_ms=400, right_ms=80, beam=False))
    want = pipe.streaming_log_probs(audio, block=len(audio))
    got = pipe.streaming_log_probs(audio, block=1)
    assert np.abs(got - want).max() <= 1e-5


def test_cached_mode_is_close_to_recompute_but_not_required_equal(ctc_model):
    audio = _audio(4.0, seed=2)
    cfg = dict(chunk_ms=160, left_ms=400, right_ms=80, beam=False)
    cached = Pipeline(ctc_model, StreamConfig(mode="cached", **cfg)).streaming_log_probs(audio)
    recompute = Pipeline(ctc_model, StreamConfig(mode="recompute", **cfg)).streaming_log_probs(audio)
    offline = _offline_log_probs(ctc_model, audio)
    assert cached.shape == recompute.shape == offline.shape
    # Same first window in both modes (no left context yet): identical there.
    np.testing.assert_allclose(cached[:8], recompute[:8], atol=1e-5)


def test_batched_windows_equal_one_stream_at_a_time(ctc_model):
    pipe = Pipeline(ctc_model, StreamConfig(chunk_ms=160, left_ms=400, right_ms=80, beam=False))
    audios = [_audio(2.5, seed=s) for s in range(3)]
    alone = [pipe.streaming_log_probs(a) for a in audios]
    streams = [pipe.new_stream(keep_log_probs=True) for _ in audios]
    for i in range(0, len(audios[0]), 1600):
        for s, a in zip(streams, audios):
            s.accept(a[i:i + 1600], 16000)
        pipe.run_pending(streams)              # one batched forward per window shape
    for s, want in zip(streams, alone):
        s.finish()
        assert np.abs(s.log_probs - want).max() <= 1e-4


def _float32_and(tmp_path, **speed_up):
    """(float32 pipeline, the same checkpoint with `speed_up` (int8=True / bf16=True), its
    pipeline options, 2 s of audio): small settings shared by the int8 and bf16 tests."""
    from stream.pipeline import Pipeline as P

    ckpt = write_ctc_checkpoint(tmp_path / "m")
    cfg = dict(speakers=False, beam=False, chunk_ms=320, right_ms=160)
    return P.from_pretrained(ckpt, **cfg), P.from_pretrained(ckpt, **speed_up, **cfg), ckpt, cfg, _audio(2.0, seed=6)


def test_int8_pipeline_quantizes_linears_and_stays_close(tmp_path):
    fp32, int8, _, _, audio = _float32_and(tmp_path, int8=True)
    assert type(int8.model.lm_head).__module__.startswith("torch.ao.nn.quantized")
    a, b = fp32.streaming_log_probs(audio), int8.streaming_log_probs(audio)
    assert a.shape == b.shape
    assert np.abs(a - b).mean() < 0.02          # measured ~0.002 on this model


def test_bf16_pipeline_runs_the_transformer_in_bf16_and_stays_close(tmp_path):
    from stream.pipeline import Pipeline as P

    fp32, bf16, ckpt, cfg, audio = _float32_and(tmp_path, bf16=True)
    assert bf16.runner.dtype == torch.bfloat16
    assert bf16.model.lm_head.weight.dtype == torch.float32            # the heads stay float32
    assert bf16.model.wavlm.feature_extractor.conv_layers[0].conv.weight.dtype == torch.float32
    s = bf16.new_stream(keep_log_probs=True)
    events = s.feed(audio, 16000) + s.finish()
    assert all(e.to_json() for e in events)
    assert s._tf.cache[0].key.dtype == torch.bfloat16                  # the key/value cache too
    a, b = fp32.streaming_log_probs(audio), bf16.streaming_log_probs(audio)
    assert a.shape == b.shape and b.dtype == a.dtype
    assert np.abs(a - b).mean() < 0.01          # measured ~0.0006 on this model
    with pytest.raises(ValueError, match="choose one"):
        P.from_pretrained(ckpt, int8=True, bf16=True, **cfg)


def test_packed_weights_change_nothing_but_memory(tmp_path):
    # The packed copies give the plain weights' products bit for bit; without them a model holds
    # one copy of its weights (the packed ones made so far are freed).
    from model.linear import _PACK_AVAILABLE, Linear, set_packed_weights

    packed, plain, _, _, audio = _float32_and(tmp_path, packed_weights=False)
    a, b = packed.streaming_log_probs(audio), plain.streaming_log_probs(audio)
    layers = lambda pipe: [m for m in pipe.model.modules() if isinstance(m, Linear)]  # noqa: E731
    assert all(m._packed is None for m in layers(plain))
    if _PACK_AVAILABLE:
        assert all(m._packed is not None for m in layers(packed))
    assert np.abs(a - b).max() <= 1e-5                 # 0.0 on the machines measured
    set_packed_weights(packed.model, False)
    assert all(m._packed is None and not m.pack_weight for m in layers(packed))
    assert np.array_equal(packed.streaming_log_probs(audio), b)


def test_a_stream_failing_mid_batch_loses_no_events_of_the_others(ctc_model):
    pipe = Pipeline(ctc_model, StreamConfig(chunk_ms=160, left_ms=400, right_ms=80, beam=False))
    audio = _audio(2.0, seed=7)
    solo = pipe.new_stream()
    want = solo.feed(audio, 16000) + solo.finish()
    good, bad = pipe.new_stream(), pipe.new_stream()

    def broken(*args, **kwargs):
        raise RuntimeError("decoder exploded")
    bad._transcriber.push = broken
    # `bad` decodes after `good` in the batch, so good's events of this call are in flight.
    good.accept(audio, 16000)
    bad.accept(audio, 16000)
    with pytest.raises(RuntimeError, match="exploded"):
        pipe.run_pending([good, bad])
    got = pipe.run_pending([good])[0] + good.finish()
    without_latency = lambda events: [{**e.to_dict(), "latency": None} for e in events]  # noqa: E731
    assert without_latency(got) == without_latency(want)


def test_bf16_on_a_cpu_without_bf16_instructions_warns(tmp_path, monkeypatch):
    import stream.pipeline as pipeline_module

    ckpt = write_ctc_checkpoint(tmp_path / "m")
    monkeypatch.setattr(pipeline_module, "_cpu_has_bf16", lambda: False)
    with pytest.warns(UserWarning, match="no BF16 instructions"):
        pipeline_module.Pipeline.from_pretrained(ckpt, bf16=True, speakers=False, beam=False)


@pytest.mark.parametrize("mode", ["cached", "recompute"])
def test_last_layer_computing_only_kept_rows_changes_no_output(ctc_model, mode, monkeypatch):
    # The runner's last layer computes queries and feed-forward only for the rows it keeps; every
    # output and hidden state must be what computing all rows gives.
    from stream.window import WindowRunner

    frames = torch.randn(60, ctc_model.config.hidden_size)
    runner = WindowRunner(ctc_model.wavlm, WindowConfig(8, 20, 4, mode))

    def outputs():
        state = runner.append(runner.initial_state(frames.shape[1]), frames)
        got = []
        while (window := next_window(runner.config, state, end_of_stream=True)) is not None:
            [(out, state)] = runner.run([state], [window], need_hidden_states=True)
            got.append(torch.cat([out.last_hidden_state, *out.hidden_states], 1))
        return torch.cat(got)

    kept_rows_only = outputs()
    from model.encoder import EncoderLayer

    forward = EncoderLayer.forward

    def all_rows_then_cut(self, x, bias, mask=None, past=None, rows=None):
        y, kv = forward(self, x, bias, mask, past)
        return (y if rows is None else y[:, rows]), kv

    monkeypatch.setattr(EncoderLayer, "forward", all_rows_then_cut)
    assert kept_rows_only.shape == (60, (ctc_model.config.num_hidden_layers + 2) * frames.shape[1])
    torch.testing.assert_close(kept_rows_only, outputs(), atol=1e-5, rtol=0)


def test_each_recompute_window_is_the_offline_encoder_on_its_frames(ctc_model):
    from stream.window import WindowRunner

    frames = torch.randn(60, ctc_model.config.hidden_size)
    runner = WindowRunner(ctc_model.wavlm, WindowConfig(8, 20, 4, "recompute"))
    state = runner.append(runner.initial_state(frames.shape[1]), frames)
    while (window := next_window(runner.config, state, end_of_stream=True)) is not None:
        [(out, state)] = runner.run([state], [window], need_hidden_states=True)
        with torch.inference_mode():
            last, hidden = ctc_model.wavlm.encoder(frames[None, window.start:window.end], output_hidden_states=True)
        rows = slice(window.emit_start - window.start, window.emit_end - window.start)
        torch.testing.assert_close(out.last_hidden_state, last[0, rows], atol=1e-5, rtol=0)
        for got, want in zip(out.hidden_states, hidden, strict=True):
            torch.testing.assert_close(got, want[0, rows], atol=1e-5, rtol=0)


def test_recompute_batch_of_windows_emitting_different_rows(ctc_model):
    # Windows of one shape but different emitted rows (possible at the ends of streams) run in one
    # batch with every row computed; each gets what it gets alone.
    from stream.window import WindowRunner

    runner = WindowRunner(ctc_model.wavlm, WindowConfig(8, 20, 4, "recompute"))
    state = runner.append(runner.initial_state(ctc_model.config.hidden_size),
                          torch.randn(40, ctc_model.config.hidden_size))
    windows = [Window(0, 20, 28, 32), Window(0, 24, 28, 32)]
    together = runner.run([state, state], windows, need_hidden_states=True)
    for (out, _), window in zip(together, windows):
        [(alone, _)] = runner.run([state], [window], need_hidden_states=True)
        torch.testing.assert_close(out.last_hidden_state, alone.last_hidden_state, atol=1e-5, rtol=0)
        for a, b in zip(out.hidden_states, alone.hidden_states):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
