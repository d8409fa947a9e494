"""Property-based tests (hypothesis) of everything that touches untrusted input.

Audio intake (``stream.audio``), PCM byte decoding, protocol message parsing
(``stream.protocol``), the incremental transcriber fed arbitrary log-prob splits, and the
whole ``Stream`` fed arbitrary chunkings, dtypes and layouts of audio through a tiny
random-weight model. The properties: no exception escapes but the documented one
(``AudioFormatError`` / ``ProtocolError``, with a message naming the problem), a bad
chunk leaves a stream exactly as it was, and the output never depends on how the input
was cut into pieces.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ctc_frames import VOCAB as TEST_VOCAB
from decoders.endpoint import EndpointConfig
from decoders.events import Final, Partial
from decoders.transcriber import SegmentTranscriber
from stream.audio import AudioFormatError, AudioIntake, decode_pcm_bytes, to_float_mono
from stream.protocol import (MAX_CHANNELS, MAX_SAMPLE_RATE, MIN_SAMPLE_RATE, SAMPLE_BYTES, ProtocolError, Start,
                             Stop, VoskConfig, check_audio_bytes, parse_native, parse_vosk)

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- helpers ---------------------------------------------------------------------------


def cut(n: int, fractions: list[float]) -> list[int]:
    """Sorted, distinct cut points in (0, n) from fractions in [0, 1)."""
    return sorted({int(f * n) for f in fractions} - {0})


def pieces(x, cuts: list[int]):
    bounds = [0, *cuts, len(x)]
    return [x[a:b] for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def push_all(chunks, rate, channels=None) -> np.ndarray:
    intake = AudioIntake()
    out = [intake.push(c, rate, channels) for c in chunks]
    out.append(intake.flush())
    return np.concatenate(out)


# -- to_float_mono: any array in, float32 mono or AudioFormatError out -----------------

ANY_DTYPE = st.sampled_from([
    np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.float16, np.float32, np.float64,
    np.complex64, np.bool_, ">i2", ">f4", "<i4", ">f8",
]).map(np.dtype)
SUPPORTED = {np.dtype(t) for t in (np.int16, np.int32, np.uint8, np.float32, np.float64)}


@FAST
@given(hnp.arrays(ANY_DTYPE, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=40)),
       st.one_of(st.none(), st.integers(-3, 70), st.just(True), st.floats(0.5, 3.0), st.text(max_size=2)))
def test_to_float_mono_returns_mono_float32_or_names_the_problem(samples, channels):
    try:
        x = to_float_mono(samples, channels)
    except AudioFormatError as e:
        assert str(e)
        return
    # Only the documented dtypes (in any byte order) get through.
    assert samples.dtype.newbyteorder("=") in SUPPORTED
    assert x.dtype == np.float32 and x.ndim == 1 and x.flags.c_contiguous
    frames = samples.shape[0] if samples.ndim == 2 or channels in (None, 1) else samples.size // channels
    assert x.shape == (frames,) and frames > 0
    assert np.isfinite(x).all()
    if samples.dtype.kind in "iu":
        assert np.abs(x).max() <= 1.0
    else:
        assert np.abs(x).max() <= 32768.0  # beyond that the model's activations overflow to NaN


@FAST
@given(st.sampled_from([np.float32, np.float64]), st.floats(32768.5, 3e38), st.integers(1, 50), st.integers(0, 49))
def test_huge_float_audio_is_refused_by_name(dtype, value, n, where):
    x = np.zeros(n, dtype)
    x[where % n] = -value if where % 2 else value
    with pytest.raises(AudioFormatError, match=r"expected in \[-1, 1\]"):
        to_float_mono(x)


@FAST
@given(st.binary(max_size=64), st.sampled_from(["pcm_s16le", "f32le", "s16", "", "PCM_S16LE"]),
       st.one_of(st.integers(-2, 9), st.just(True), st.just(2.0), st.none()))
def test_decode_pcm_bytes_any_bytes(data, fmt, channels):
    try:
        x = decode_pcm_bytes(data, fmt, channels)
    except AudioFormatError as e:
        msg = str(e)
        if fmt not in ("pcm_s16le", "f32le"):
            assert "format" in msg and repr(fmt) in msg
        elif isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            assert "channels" in msg
        elif not data:
            assert "empty" in msg
        else:
            assert "channels" in msg or "bytes" in msg
        return
    width = {"pcm_s16le": 2, "f32le": 4}[fmt]
    assert x.dtype.isnative and x.size * width == len(data)
    assert x.shape == ((len(data) // width,) if channels == 1 else (len(data) // width // channels, channels))
    assert x.tobytes() == data  # little-endian on this machine: the round trip is exact


@FAST
@given(hnp.arrays(np.int16, st.tuples(st.integers(1, 50), st.integers(1, 8))), st.booleans())
def test_pcm_round_trip_and_channel_mean(frames, f32):
    fmt, data = ("f32le", (frames / 32768).astype("<f4")) if f32 else ("pcm_s16le", frames.astype("<i2"))
    decoded = decode_pcm_bytes(data.tobytes(), fmt, frames.shape[1])
    assert np.array_equal(decoded.reshape(frames.shape), data)
    mono = to_float_mono(decoded)
    expect = (frames.astype(np.float32) / 32768).mean(axis=1, dtype=np.float32)
    np.testing.assert_allclose(mono, expect, atol=1e-7)


# -- AudioIntake: chunking never matters, bad chunks change nothing ---------------------

RATES = st.one_of(st.sampled_from([8000, 11025, 16000, 22050, 44100, 48000, 96000]),
                  st.integers(MIN_SAMPLE_RATE, MAX_SAMPLE_RATE))


@FAST
@given(RATES, st.integers(1, 6000), st.lists(st.floats(0, 1, exclude_max=True), max_size=12),
       st.sampled_from([np.int16, np.float32, np.float64, np.int32, np.uint8]), st.integers(1, 3),
       st.integers(0, 2**32 - 1))
def test_intake_any_chunking_equals_one_push(rate, n, fractions, dtype, channels, seed):
    rng = np.random.default_rng(seed)
    wave = rng.uniform(-0.9, 0.9, size=(n, channels))
    if np.dtype(dtype).kind == "f":
        x = wave.astype(dtype)
    elif dtype is np.uint8:
        x = (wave * 127 + 128).astype(np.uint8)
    else:
        x = (wave * np.iinfo(dtype).max).astype(dtype)
    if channels == 1:
        x = x[:, 0]
    one = push_all([x], rate)
    chunked = push_all(pieces(x, cut(n, fractions)), rate)
    assert chunked.dtype == np.float32 and chunked.shape == one.shape
    np.testing.assert_allclose(chunked, one, atol=2e-6)
    # The resampler keeps the duration: N samples at `rate` are N * 16000 / rate samples out.
    assert abs(len(one) - n * 16000 / rate) <= 1
    # Interleaved bytes-order layout gives the same as (N, C).
    if channels > 1:
        np.testing.assert_array_equal(push_all([x.reshape(-1)], rate, channels), one)


BAD_CHUNKS = st.sampled_from([
    ("nan", np.array([0.1, np.nan, 0.2], np.float32), "NaN"),
    ("inf", np.array([np.inf, 0.0], np.float64), "infinite"),
    ("empty", np.zeros(0, np.int16), "empty"),
    ("dtype", np.zeros(8, np.int64), "dtype"),
    ("rank", np.zeros((2, 2, 2), np.int16), "shape"),
    ("list-of-str", ["a", "b"], "dtype"),
    ("bytes", b"\x00\x01", "bytes"),
    ("rate", np.zeros(10, np.int16), "sample rate"),
])


@FAST
@given(st.sampled_from([16000, 8000, 44100]), st.lists(BAD_CHUNKS, min_size=1, max_size=4),
       st.integers(200, 3000), st.integers(0, 2**32 - 1))
def test_intake_bad_chunks_raise_named_errors_and_change_nothing(rate, bads, n, seed):
    x = (np.random.default_rng(seed).standard_normal(n) * 3000).astype(np.int16)
    halves = [x[: n // 2], x[n // 2:]]
    intake = AudioIntake()
    out = [intake.push(halves[0], rate)]
    for _, chunk, needle in bads:
        bad_rate = rate + 1 if needle == "sample rate" else rate
        with pytest.raises(AudioFormatError, match=needle):
            intake.push(chunk, bad_rate)
    out += [intake.push(halves[1], rate), intake.flush()]
    np.testing.assert_array_equal(np.concatenate(out), push_all(halves, rate))


@FAST
@given(st.one_of(st.none(), st.booleans(), st.text(max_size=5), st.floats(allow_nan=True),
                 st.integers(-10**6, 0), st.lists(st.integers(), max_size=2)))
def test_intake_bad_rates_are_named(rate):
    try:
        ok = float(rate) > 0 and math.isfinite(float(rate))
    except (TypeError, ValueError):
        ok = False
    assume(not ok)
    with pytest.raises(AudioFormatError, match="sample rate"):
        AudioIntake().push(np.zeros(10, np.int16), rate)


# -- protocol: every JSON message is a typed message or a ProtocolError naming the field --

# Integers reach far beyond float range (JSON has no limit; Python parses up to 4300 digits).
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-10**20, 10**20) | st.sampled_from([10**400, -10**309, 2**64])
    | st.floats() | st.text(max_size=12),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3), max_leaves=6)
VALID_RATES = st.integers(MIN_SAMPLE_RATE, MAX_SAMPLE_RATE)
FIELD_VALUES = {
    "sample_rate": st.one_of(VALID_RATES, VALID_RATES.map(float), JSON_VALUES),
    "format": st.one_of(st.sampled_from(sorted(SAMPLE_BYTES)), JSON_VALUES),
    "channels": st.one_of(st.integers(1, MAX_CHANNELS), JSON_VALUES),
}
MISSING = object()


def _rate_ok(v) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    if isinstance(v, float) and not (math.isfinite(v) and v == int(v)):
        return False
    return MIN_SAMPLE_RATE <= v <= MAX_SAMPLE_RATE      # ints compared exactly, however large


@settings(max_examples=200, deadline=None)
@given(st.fixed_dictionaries({}, optional={k: v for k, v in FIELD_VALUES.items()}),
       st.dictionaries(st.text(max_size=8).filter(lambda k: k not in FIELD_VALUES and k != "type"),
                       JSON_VALUES, max_size=2),
       st.sampled_from(["start", "stop", MISSING, "Start", "", 1, None]))
def test_native_messages_parse_exactly_or_name_the_bad_field(fields, extra, kind):
    """An independent oracle of which field is wrong (checked in the order sample_rate, format,
    channels); unknown extra keys are ignored."""
    obj = {**extra, **fields}
    if kind is not MISSING:
        obj["type"] = kind
    text = json.dumps(obj)
    rate, fmt, ch = (fields.get(k, MISSING) for k in ("sample_rate", "format", "channels"))
    if kind == "stop":
        assert parse_native(text) == Stop()
        return
    if kind != "start":
        with pytest.raises(ProtocolError) as e:
            parse_native(text)
        assert e.value.code == ("bad_message" if kind in (MISSING, None) else "unknown_type")
        return
    expect = None
    if rate is MISSING or not _rate_ok(rate):
        expect = "bad_sample_rate"
    elif fmt is not MISSING and not (isinstance(fmt, str) and fmt in SAMPLE_BYTES):
        expect = "bad_format"
    elif ch is not MISSING and (isinstance(ch, bool) or not isinstance(ch, int) or not 1 <= ch <= MAX_CHANNELS):
        expect = "bad_channels"
    if expect is None:
        assert parse_native(text) == Start(int(rate), "pcm_s16le" if fmt is MISSING else fmt,
                                           1 if ch is MISSING else ch)
        return
    with pytest.raises(ProtocolError) as e:
        parse_native(text)
    assert e.value.code == expect
    assert expect[4:] in e.value.message  # the message names the field: "sample_rate", "format", "channels"


@pytest.mark.parametrize("text", ['{"type": "start", "sample_rate": 1%s}' % ("0" * 400),
                                  '{"config": {"sample_rate": -1%s}}' % ("0" * 309)])
def test_integer_sample_rate_beyond_float_range_is_a_protocol_error(text):
    parse = parse_vosk if "config" in text else parse_native
    with pytest.raises(ProtocolError) as e:
        parse(text)
    assert e.value.code == "bad_sample_rate"


@pytest.mark.parametrize("fmt", [[], {}, ["pcm_s16le"], {"a": 1}])
def test_unhashable_format_is_a_protocol_error(fmt):
    with pytest.raises(ProtocolError) as e:
        parse_native(json.dumps({"type": "start", "sample_rate": 16000, "format": fmt}))
    assert e.value.code == "bad_format" and "format" in e.value.message


@FAST
@given(st.one_of(JSON_VALUES, st.dictionaries(st.sampled_from(["sample_rate", "words", "phrase_list"]),
                                              st.one_of(VALID_RATES, JSON_VALUES), max_size=3)))
def test_vosk_config_any_value(config):
    try:
        message = parse_vosk(json.dumps({"config": config}))
    except ProtocolError as e:
        assert e.code in ("bad_message", "bad_sample_rate") and e.message
        if e.code == "bad_message":
            assert not isinstance(config, dict)
        else:
            assert not _rate_ok(config["sample_rate"])
        return
    assert isinstance(config, dict) and isinstance(message, VoskConfig)
    rate = config.get("sample_rate")
    assert message.sample_rate == (None if rate is None else int(rate))


@FAST
@given(st.one_of(st.text(max_size=300), st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
                 st.builds(lambda a, b: a + b, st.sampled_from(['{"type": "start", "sample_rate": ', "[" * 50,
                                                                '{"eof": ', '{"config": {']),
                           st.text(max_size=40))))
def test_arbitrary_text_is_a_message_or_a_protocol_error(text):
    for parse in (parse_native, parse_vosk):
        try:
            parse(text)
        except ProtocolError as e:
            assert e.code and e.message


@FAST
@given(st.binary(max_size=100), st.integers(1, 64))
def test_audio_byte_check(data, frame_bytes):
    ok = len(data) > 0 and len(data) % frame_bytes == 0
    try:
        check_audio_bytes(data, frame_bytes)
    except ProtocolError as e:
        assert not ok and e.code == "bad_audio" and (str(len(data)) in e.message or "empty" in e.message)
    else:
        assert ok


# -- the transcriber fed arbitrary log-probs in arbitrary splits -----------------------


def _random_log_probs(seed: int, frames: int, blankness: float, hard_zeros: bool) -> np.ndarray:
    """(T, V) float32 log-softmax rows; ``blankness`` biases the blank so segments end;
    ``hard_zeros`` puts -inf (probability exactly 0) into some entries."""
    rng = np.random.default_rng(seed)
    v = len(TEST_VOCAB.tokens)
    logits = rng.standard_normal((frames, v)) * 3
    logits[:, TEST_VOCAB.blank_id] += blankness * rng.uniform(0, 6, size=frames)
    if hard_zeros:
        mask = rng.random((frames, v)) < 0.2
        mask[np.arange(frames), logits.argmax(axis=1)] = False
        logits[mask] = -np.inf
    m = logits.max(axis=1, keepdims=True)
    return (logits - m - np.log(np.exp(logits - m).sum(axis=1, keepdims=True))).astype(np.float32)


def _transcribe(lp, cuts, first_frame, endpoint, finaliser=None):
    tr = SegmentTranscriber(TEST_VOCAB, endpoint, finaliser)
    events = []
    bounds = [0, *cuts, lp.shape[0]]
    for a, b in zip(bounds[:-1], bounds[1:]):
        events += tr.push(lp[a:b], first_frame + a)
    return events + tr.finish()


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 160), st.floats(0, 1.5), st.booleans(),
       st.lists(st.floats(0, 1, exclude_max=True), max_size=20), st.integers(0, 5000),
       st.sampled_from([(0.06, 0.3), (0.1, 15.0), (0.02, 0.1)]))
def test_transcriber_is_split_invariant_and_well_formed(seed, frames, blankness, hard_zeros, fractions,
                                                        first_frame, endpoint):
    lp = _random_log_probs(seed, frames, blankness, hard_zeros)
    endpoint = EndpointConfig(*endpoint)
    ref = _transcribe(lp, [], first_frame, endpoint)
    assert _transcribe(lp, cut(frames, fractions), first_frame, endpoint) == ref
    assert _transcribe(lp, list(range(1, frames)), first_frame, endpoint) == ref

    t0, t1 = first_frame * 0.02, (first_frame + frames) * 0.02
    finals = [e for e in ref if isinstance(e, Final)]
    assert [f.segment for f in finals] == list(range(len(finals)))
    closed = set()
    for e in ref:
        assert e.segment not in closed, "event for a segment after its final"
        assert t0 - 1e-9 <= e.start <= e.end <= t1 + 1e-9
        if isinstance(e, Final):
            closed.add(e.segment)
            assert e.text == " ".join(w.word for w in e.words)
            assert all(e.start - 1e-9 <= w.start <= w.end <= e.end + 1e-9 for w in e.words)
            assert all(0.0 <= w.confidence <= 1.0 for w in e.words)
            assert [w.start for w in e.words] == sorted(w.start for w in e.words)
    assert {e.segment for e in ref if isinstance(e, Partial)} <= closed  # every segment gets its final


@pytest.fixture(scope="module")
def beam():
    from decoders.beam import BeamFinaliser
    return BeamFinaliser(TEST_VOCAB, beam_width=8)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 2**32 - 1), st.integers(1, 80), st.floats(0.5, 1.5), st.booleans(),
       st.lists(st.floats(0, 1, exclude_max=True), max_size=8))
def test_beam_finals_are_split_invariant_too(beam, seed, frames, blankness, hard_zeros, fractions):
    lp = _random_log_probs(seed, frames, blankness, hard_zeros)
    endpoint = EndpointConfig(0.06, 0.4)
    ref = _transcribe(lp, [], 7, endpoint, beam)
    assert _transcribe(lp, cut(frames, fractions), 7, endpoint, beam) == ref
    for f in (e for e in ref if isinstance(e, Final)):
        assert all(0.0 <= w.confidence <= 1.0 and w.start <= w.end for w in f.words)


# -- the whole Stream through a tiny random-weight model --------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from checkpoints import write_ctc_checkpoint
    from stream.pipeline import Pipeline

    path = write_ctc_checkpoint(tmp_path_factory.mktemp("prop") / "ckpt", seed=5, hidden=16, layers=1,
                                heads=2, conv_dim=8)
    return Pipeline.from_pretrained(path, speakers=False, beam=False, chunk_ms=160, left_ms=320, right_ms=80,
                                    min_silence_s=0.1, max_segment_s=1.0)


def _run_stream(pipe, chunks, rate, bad=()):
    """Feed chunks (with bad chunks inserted before the given chunk indices); events + log-probs."""
    s = pipe.new_stream(keep_log_probs=True)
    events = []
    for i, chunk in enumerate(chunks):
        for where, b in bad:
            if where == i:
                with pytest.raises(AudioFormatError):
                    s.feed(b, rate)
        events += s.feed(chunk, rate)
    events += s.finish()
    return events, s.log_probs


def _comparable(events):
    """Events without latency (wall-clock) and confidences (float noise: see _confidences)."""
    out = []
    for e in events:
        d = e.to_dict()
        d.pop("latency", None)
        for w in d.get("words", ()):
            w.pop("conf")
        out.append(d)
    return out


def _confidences(events) -> np.ndarray:
    return np.array([w.confidence for e in events for w in getattr(e, "words", ())])


def _layouts(x16: np.ndarray):
    """The same signal in every accepted dtype/layout that converts to identical float32 samples."""
    f = x16.astype(np.float32) / 32768
    yield "int16", x16
    yield "float32", f
    yield "float64", f.astype(np.float64)
    yield "int32", x16.astype(np.int32) << 16
    yield "stereo-int16", np.stack([x16, x16], axis=1)
    yield "big-endian-int16", x16.astype(">i2")


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from([16000, 8000, 44100, 48000, 22050]), st.floats(0.2, 3.0),
       st.lists(st.floats(0, 1, exclude_max=True), min_size=1, max_size=15), st.integers(0, 2**32 - 1))
def test_stream_output_does_not_depend_on_chunking_or_layout(tiny, rate, seconds, fractions, seed):
    n = int(seconds * rate)
    rng = np.random.default_rng(seed)
    x16 = (rng.standard_normal(n) * rng.uniform(300, 8000)).clip(-32768, 32767).astype(np.int16)
    ref_events, ref_lp = _run_stream(tiny, [x16], rate)
    cuts = cut(n, fractions)
    events, lp = _run_stream(tiny, pieces(x16, cuts), rate)
    # The resampler and the conv encoder agree across chunkings to float rounding only.
    assert lp.shape == ref_lp.shape
    np.testing.assert_allclose(lp, ref_lp, atol=1e-4)
    top2 = np.sort(ref_lp, axis=1)[:, -2:]
    if ref_lp.size == 0 or (top2[:, 1] - top2[:, 0]).min() > 1e-3:  # no near-tie that rounding could flip
        assert _comparable(events) == _comparable(ref_events)
        np.testing.assert_allclose(_confidences(events), _confidences(ref_events), atol=1e-3)
    # Every layout of the same samples gives exactly the int16 run with the same chunking.
    for name, x in _layouts(x16):
        got, got_lp = _run_stream(tiny, pieces(x, cuts), rate)
        assert np.array_equal(got_lp, lp), name
        assert _comparable(got) == _comparable(events), name
        assert np.array_equal(_confidences(got), _confidences(events)), name


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from([16000, 48000]), st.lists(BAD_CHUNKS.filter(lambda b: b[0] != "rate"), min_size=1,
                                                  max_size=3),
       st.integers(0, 2**32 - 1))
def test_stream_bad_chunks_leave_it_exactly_as_it_was(tiny, rate, bads, seed):
    x16 = (np.random.default_rng(seed).standard_normal(2 * rate) * 4000).astype(np.int16)
    chunks = pieces(x16, [rate // 3, rate, rate + 777])
    ref_events, ref_lp = _run_stream(tiny, chunks, rate)
    bad = [(i % len(chunks), chunk) for i, (_, chunk, _) in enumerate(bads)]
    events, lp = _run_stream(tiny, chunks, rate, bad)
    assert np.array_equal(lp, ref_lp)
    assert _comparable(events) == _comparable(ref_events)
    assert np.array_equal(_confidences(events), _confidences(ref_events))
