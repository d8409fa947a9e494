"""Audio intake: any PCM input to float32 mono at 16 kHz, chunk by chunk.

* ``to_float_mono`` converts one chunk (int16/int32/uint8/float32/float64, mono ``(N,)``,
  ``(N, C)`` or interleaved with ``channels=C``) to float32 mono in [-1, 1] (channels are
  averaged).
* ``AudioIntake`` (one per stream) does that and resamples with soxr's streaming resampler
  (``soxr.ResampleStream``), which keeps its filter state between chunks: the output of any
  chunking equals that of one call on the whole signal (to float rounding), with no clicks
  at chunk boundaries. ``flush()`` returns the resampler's tail at the end of a stream.
* ``decode_pcm_bytes`` reads the raw binary frames of the websocket protocol.

Every problem with the audio raises ``AudioFormatError`` (a ValueError) whose message
names the problem, so the server can send it back as an ``error`` event.
"""

from __future__ import annotations

import math

import numpy as np
import soxr

__all__ = ["AudioFormatError", "to_float_mono", "AudioIntake", "decode_pcm_bytes", "TARGET_RATE", "PCM_FORMATS"]

TARGET_RATE = 16000
PCM_FORMATS = {"pcm_s16le": np.dtype("<i2"), "f32le": np.dtype("<f4")}

# Integer formats: value that maps to 1.0, and the offset of unsigned formats.
_INT_SCALE = {np.dtype(np.int16): (32768.0, 0.0), np.dtype(np.int32): (2147483648.0, 0.0), np.dtype(np.uint8): (128.0, 128.0)}
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
# Largest magnitude accepted in float audio (int16 full scale; see to_float_mono).
_MAX_FLOAT = 32768.0
# More columns than this with fewer rows looks like a channels-first (C, N) array.
_MAX_CHANNELS = 64


class AudioFormatError(ValueError):
    """The audio given cannot be used; the message says why."""


def to_float_mono(samples, channels: int | None = None) -> np.ndarray:
    """One chunk of audio as float32 mono.

    samples: numpy array of int16, int32, uint8 (offset binary) or float32/float64
    (expected in [-1, 1]); shape (N,) mono, (N, C) frames x channels, or (N * C,)
    interleaved when ``channels=C`` is given. Returns (N,) float32, the mean of the channels.
    Raises AudioFormatError for other dtypes, rank > 2, empty input, a channel count that
    does not divide the data, NaN or infinite values, and float values beyond +-32768
    (which would overflow the model's activations).
    """
    if isinstance(samples, (bytes, bytearray, memoryview)):
        raise AudioFormatError("got raw bytes; decode them with decode_pcm_bytes(data, fmt, channels) first")
    if not isinstance(samples, np.ndarray):
        samples = np.asarray(samples)
    if not samples.dtype.isnative:
        samples = samples.astype(samples.dtype.newbyteorder("="))  # e.g. big-endian int16 from a file
    dt = samples.dtype
    if dt not in _INT_SCALE and dt not in _FLOATS:
        raise AudioFormatError(f"unsupported sample dtype {dt}; expected int16, int32, uint8, float32 or float64")
    if samples.ndim > 2 or samples.ndim == 0:
        raise AudioFormatError(f"audio must be (samples,) or (samples, channels); got shape {samples.shape}")
    if channels is not None:
        if isinstance(channels, bool) or not isinstance(channels, (int, np.integer)) or channels < 1:
            raise AudioFormatError(f"channels must be a positive integer, got {channels!r}")
        if samples.ndim == 1:
            if samples.shape[0] % channels:
                raise AudioFormatError(
                    f"{samples.shape[0]} interleaved samples do not divide into {channels} channels"
                )
            samples = samples.reshape(-1, channels)
        elif samples.shape[1] != channels:
            raise AudioFormatError(f"channels={channels} but the array has shape {samples.shape}")
    if samples.ndim == 2:
        n, c = samples.shape
        if c == 0:
            raise AudioFormatError(f"audio has 0 channels (shape {samples.shape})")
        if c > _MAX_CHANNELS and c > n:
            raise AudioFormatError(
                f"shape {samples.shape} looks channels-first; expected (samples, channels), transpose it"
            )
    if samples.shape[0] == 0:
        raise AudioFormatError("empty audio chunk (0 samples)")
    if dt in _FLOATS:
        if not np.isfinite(samples).all():
            bad = "NaN" if np.isnan(samples).any() else "infinite"
            raise AudioFormatError(f"audio contains {bad} values")
        # Float audio belongs in [-1, 1]; a little over is clipping, int16-scaled floats still
        # work (the conv front end normalises), but values far beyond make the model's
        # activations overflow to NaN: refuse them here, naming the problem.
        peak = float(np.abs(samples).max()) if samples.size else 0.0
        if peak > _MAX_FLOAT:
            raise AudioFormatError(f"float audio is expected in [-1, 1]; got values up to {peak:.3g}")
        x = samples.astype(np.float32, copy=False)
    else:
        scale, offset = _INT_SCALE[dt]
        # float64 for int32 so that the scaling is exact before the final rounding.
        x = ((samples.astype(np.float64 if dt == np.int32 else np.float32) - offset) / scale).astype(np.float32)
    if x.ndim == 2:
        x = x.mean(axis=1, dtype=np.float32) if x.shape[1] > 1 else x[:, 0]
    return np.ascontiguousarray(x, dtype=np.float32)


def _check_rate(sample_rate) -> float:
    try:
        r = float(sample_rate)
    except (TypeError, ValueError):
        raise AudioFormatError(f"sample rate must be a number, got {sample_rate!r}") from None
    if not (math.isfinite(r) and r > 0):
        raise AudioFormatError(f"sample rate must be positive, got {sample_rate!r}")
    return r


class AudioIntake:
    """Per-stream intake: converts and resamples chunks to float32 mono at ``target_rate``.

    The first push fixes the stream's input rate; pushing another rate raises
    AudioFormatError (until ``flush()``, which ends the stream and allows a new rate).
    """

    def __init__(self, target_rate: int = TARGET_RATE, quality: str = "HQ") -> None:
        self.target_rate = int(_check_rate(target_rate))
        self.quality = quality
        self.sample_rate: float | None = None  # input rate of the current stream
        self.samples_in = 0  # input frames (per channel) pushed since the last flush
        self.samples_out = 0  # output samples returned since the last flush
        self._resampler: soxr.ResampleStream | None = None

    def push(self, samples, sample_rate, channels: int | None = None) -> np.ndarray:
        """Convert one chunk; returns (M,) float32 at ``target_rate`` (M may be 0 while the
        resampler fills its filter). samples/channels as for ``to_float_mono``."""
        rate = _check_rate(sample_rate)
        if self.sample_rate is not None and rate != self.sample_rate:
            raise AudioFormatError(
                f"sample rate changed mid-stream from {self.sample_rate:g} to {rate:g} Hz; start a new stream"
            )
        x = to_float_mono(samples, channels)
        if self.sample_rate is None:
            self.sample_rate = rate
            if rate != self.target_rate:
                self._resampler = soxr.ResampleStream(rate, self.target_rate, 1, dtype="float32", quality=self.quality)
        self.samples_in += x.shape[0]
        y = x if self._resampler is None else self._resampler.resample_chunk(x)
        self.samples_out += y.shape[0]
        return y

    def flush(self) -> np.ndarray:
        """End of stream: the resampler's remaining output (float32, possibly empty).

        Resets the intake, so the next push starts a new stream (at any rate).
        """
        y = np.zeros(0, dtype=np.float32)
        if self._resampler is not None:
            y = self._resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
        self.samples_out += y.shape[0]
        self.sample_rate, self._resampler = None, None
        self.samples_in = self.samples_out = 0
        return y


def decode_pcm_bytes(data: bytes, fmt: str, channels: int = 1) -> np.ndarray:
    """Raw little-endian PCM bytes to an array: (N,) for mono, (N, channels) otherwise.

    fmt: "pcm_s16le" (int16) or "f32le" (float32). Raises AudioFormatError for an unknown
    format, empty data, or a byte count that is not a whole number of frames.
    """
    if fmt not in PCM_FORMATS:
        raise AudioFormatError(f"unknown audio format {fmt!r}; expected one of {sorted(PCM_FORMATS)}")
    if isinstance(channels, bool) or not isinstance(channels, (int, np.integer)) or channels < 1:
        raise AudioFormatError(f"channels must be a positive integer, got {channels!r}")
    dt = PCM_FORMATS[fmt]
    frame_bytes = dt.itemsize * channels
    n = len(data)
    if n == 0:
        raise AudioFormatError("empty audio message (0 bytes)")
    if n % frame_bytes:
        raise AudioFormatError(
            f"{n} bytes is not a whole number of {fmt} frames ({frame_bytes} bytes per frame with {channels} channel(s))"
        )
    x = np.frombuffer(data, dtype=dt).astype(dt.newbyteorder("="))
    return x if channels == 1 else x.reshape(-1, channels)
