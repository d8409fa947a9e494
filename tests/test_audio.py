import numpy as np
import pytest
import soxr

from stream.audio import AudioFormatError, AudioIntake, decode_pcm_bytes, to_float_mono


def tone(n, rate, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(n) / rate
    return (0.5 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(n)).astype(np.float32)


def push_in_chunks(x, rate, sizes, channels=None):
    intake = AudioIntake()
    out, i = [], 0
    for s in sizes:
        out.append(intake.push(x[i : i + s], rate, channels))
        i += s
    assert i == len(x)
    out.append(intake.flush())
    return np.concatenate(out)


def random_sizes(n, rng, lo=1, hi=3000):
    sizes = []
    while sum(sizes) < n:
        sizes.append(int(min(rng.integers(lo, hi), n - sum(sizes))))
    return sizes


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_chunked_resampling_equals_one_go_and_offline(rate):
    x = tone(rate, rate)  # 1 s
    one_go = push_in_chunks(x, rate, [len(x)])
    rng = np.random.default_rng(rate)
    for _ in range(3):
        chunked = push_in_chunks(x, rate, random_sizes(len(x), rng))
        np.testing.assert_allclose(chunked, one_go, atol=1e-6)
    tiny = push_in_chunks(x[:2000], rate, [1] * 7 + [3] * 11 + random_sizes(2000 - 40, rng, 1, 17))
    np.testing.assert_allclose(tiny, push_in_chunks(x[:2000], rate, [2000]), atol=1e-6)
    offline = soxr.resample(x, rate, 16000)
    # soxr's streaming resampler with flush() reproduces the offline resampler
    assert len(one_go) == len(offline) == 16000
    np.testing.assert_allclose(one_go, offline, atol=1e-6)


def test_16k_passes_through_exactly():
    x = tone(1600, 16000)
    intake = AudioIntake()
    np.testing.assert_array_equal(intake.push(x, 16000), x)
    assert intake.flush().shape == (0,)


def test_int_formats_scale_to_unit_range():
    np.testing.assert_array_equal(to_float_mono(np.array([-32768, 0, 16384], np.int16)), [-1.0, 0.0, 0.5])
    np.testing.assert_array_equal(to_float_mono(np.array([0, 128, 192], np.uint8)), [-1.0, 0.0, 0.5])
    np.testing.assert_allclose(to_float_mono(np.array([-(2**31), 2**30], np.int32)), [-1.0, 0.5])
    np.testing.assert_array_equal(to_float_mono(np.array([16384, -32768], ">i2")), [0.5, -1.0])  # big-endian
    y = to_float_mono(np.array([0.25, -0.5], np.float64))
    assert y.dtype == np.float32 and y.tolist() == [0.25, -0.5]


def test_channels_are_averaged_interleaved_or_2d():
    stereo = np.array([[1000, 3000], [-2000, 0]], np.int16)
    expect = np.array([2000, -1000], np.float32) / 32768
    np.testing.assert_allclose(to_float_mono(stereo), expect)
    np.testing.assert_allclose(to_float_mono(stereo.reshape(-1), channels=2), expect)
    np.testing.assert_allclose(to_float_mono(stereo, channels=2), expect)


def test_multichannel_stream_equals_mono_of_mean():
    left, right = tone(4800, 48000, 1), tone(4800, 48000, 2)
    inter = np.stack([left, right], axis=1).reshape(-1)
    a = push_in_chunks(inter, 48000, [960 * 2] * 5, channels=2)
    b = push_in_chunks((left + right) / 2, 48000, [4800])
    np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize(
    "samples, kw, match",
    [
        (np.array([0.1, np.nan], np.float32), {}, "NaN"),
        (np.array([0.1, np.inf]), {}, "infinite"),
        (np.zeros(4, np.int8), {}, "dtype int8"),
        (np.zeros(4, np.float16), {}, "dtype float16"),
        (np.array(["a"]), {}, "dtype"),
        (np.zeros((2, 2, 2), np.float32), {}, "shape"),
        (np.zeros(0, np.float32), {}, "empty"),
        (np.zeros((0, 2), np.int16), {}, "empty"),
        (np.zeros((4, 0), np.int16), {}, "0 channels"),
        (np.zeros(5, np.int16), {"channels": 2}, "divide"),
        (np.zeros((5, 3), np.int16), {"channels": 2}, "channels=2"),
        (np.zeros(4, np.int16), {"channels": 0}, "positive"),
        (np.zeros((2, 48000), np.float32), {}, "channels-first"),
        (b"\x00\x00", {}, "decode_pcm_bytes"),
    ],
)
def test_bad_audio_raises_named_errors(samples, kw, match):
    with pytest.raises(AudioFormatError, match=match):
        to_float_mono(samples, **kw)
    assert issubclass(AudioFormatError, ValueError)


def test_rate_change_mid_stream_is_an_error_until_flush():
    intake = AudioIntake()
    intake.push(tone(480, 48000), 48000)
    with pytest.raises(AudioFormatError, match="48000 to 44100"):
        intake.push(tone(441, 44100), 44100)
    intake.flush()
    assert intake.push(tone(4410, 44100), 44100).dtype == np.float32
    with pytest.raises(AudioFormatError, match="positive"):
        AudioIntake().push(tone(10, 16000), 0)
    with pytest.raises(AudioFormatError, match="number"):
        AudioIntake().push(tone(10, 16000), "fast")


def test_intake_counts_samples():
    intake = AudioIntake()
    got = sum(len(intake.push(tone(4410, 44100), 44100)) for _ in range(10))
    assert intake.samples_in == 44100 and intake.samples_out == got
    tail = intake.flush()
    assert got + len(tail) == pytest.approx(16000, abs=2)


def test_decode_pcm_bytes():
    s16 = np.array([[1, -2], [3, -4]], np.int16)
    out = decode_pcm_bytes(s16.astype("<i2").tobytes(), "pcm_s16le", channels=2)
    assert out.dtype == np.int16 and out.tolist() == s16.tolist()
    f32 = np.array([0.5, -0.25], np.float32)
    np.testing.assert_array_equal(decode_pcm_bytes(f32.astype("<f4").tobytes(), "f32le"), f32)
    with pytest.raises(AudioFormatError, match="whole number"):
        decode_pcm_bytes(b"\x00\x01\x02", "pcm_s16le")
    with pytest.raises(AudioFormatError, match="whole number"):
        decode_pcm_bytes(b"\x00" * 6, "f32le", channels=2)
    with pytest.raises(AudioFormatError, match="unknown audio format"):
        decode_pcm_bytes(b"\x00\x00", "mp3")
    with pytest.raises(AudioFormatError, match="empty"):
        decode_pcm_bytes(b"", "pcm_s16le")
    with pytest.raises(AudioFormatError, match="NaN"):
        to_float_mono(decode_pcm_bytes(np.array([np.nan], "<f4").tobytes(), "f32le"))
