"""Typed messages of the websocket protocols the server speaks.

Two dialects share one server:

* ``native`` (DESIGN.md "Websocket protocol"): a JSON text message
  ``{"type": "start", "sample_rate": 48000, "format": "pcm_s16le" | "f32le", "channels": 1}``,
  binary audio frames, then ``{"type": "stop"}``. The server answers with event JSON. Before
  ``start`` a client may enrol known voices: ``{"type": "enrol", "name": "alice", "sample_rate":
  ..., "format": ..., "channels": ...}``, binary frames of that speaker alone, ``{"type":
  "enrol_end"}``; the server answers ``{"type": "enrolled", "name": "alice", "seconds": 6.4}``
  (or an error event) and labels that voice ``alice`` in the stream.
* ``vosk`` (the Vosk server protocol, so existing Vosk clients work unchanged):
  ``{"config": {"sample_rate": N, ...}}`` (optional), binary PCM16 mono, ``{"eof": 1}``;
  ``{"reset": 1}`` ends the utterance and goes on. The server answers every message that
  carries audio (and eof/reset) with exactly one ``{"partial": ...}`` or
  ``{"text": ..., "result": [...]}``, which lock-step Vosk clients rely on.

Text messages are parsed as JSON into the frozen dataclasses below; anything that does not
fit raises :class:`ProtocolError` with a stable ``code`` that the server sends back in an
``error`` event. Binary frames are checked for whole samples here and decoded by
``stream.audio.decode_pcm_bytes``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Literal, Union

Dialect = Literal["native", "vosk"]

#: Sample formats a native client may announce, and their bytes per sample.
SAMPLE_BYTES = {"pcm_s16le": 2, "f32le": 4}
#: Accepted input sample rates (Hz). The intake resamples anything in range to 16 kHz.
MIN_SAMPLE_RATE = 8000
MAX_SAMPLE_RATE = 192000
MAX_CHANNELS = 8


class ProtocolError(ValueError):
    """A message the server cannot use. ``code`` goes into the ``error`` event.

    Codes: bad_json, bad_message, unknown_type, bad_sample_rate, bad_format,
    bad_channels, bad_audio, not_started, already_started, bad_enrolment.
    """

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


# -- native dialect ------------------------------------------------------------------


@dataclass(frozen=True)
class AudioFormat:
    """How the binary frames that follow a start or an enrol message are encoded."""
    sample_rate: int          # Hz of the client's audio (resampled to 16 kHz by the server)
    format: str = "pcm_s16le"  # "pcm_s16le" | "f32le", little-endian, interleaved channels
    channels: int = 1         # mixed down to mono by the server

    @property
    def frame_bytes(self) -> int:
        """Bytes per sample frame (all channels of one instant)."""
        return SAMPLE_BYTES[self.format] * self.channels


@dataclass(frozen=True)
class Start(AudioFormat):
    """Begin a stream, whose audio the binary frames that follow are."""


@dataclass(frozen=True)
class Stop:
    """End of stream: the server flushes finals and closes."""


@dataclass(frozen=True)
class Enrol(AudioFormat):
    """Before start: the binary frames until EnrolEnd are a recording of the speaker ``name`` alone."""
    name: str = ""


@dataclass(frozen=True)
class EnrolEnd:
    """The end of an enrolment's recording: the server learns the voice and answers ``enrolled``."""


# -- vosk dialect --------------------------------------------------------------------


@dataclass(frozen=True)
class VoskConfig:
    """``{"config": {...}}``. Only sample_rate changes what the server does; the Vosk keys
    words / max_alternatives / phrase_list are accepted and ignored (words are always sent)."""
    sample_rate: int | None = None


@dataclass(frozen=True)
class VoskEof:
    """``{"eof": 1}``: final result, then the server closes."""


@dataclass(frozen=True)
class VoskReset:
    """``{"reset": 1}``: final result of what was heard so far; the session goes on."""


TextMessage = Union[Start, Stop, Enrol, EnrolEnd, VoskConfig, VoskEof, VoskReset]


def _load_object(text: str) -> dict:
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, and ints over the digit limit
        raise ProtocolError("bad_json", f"text message is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("bad_message", f"expected a JSON object, got {type(obj).__name__}")
    return obj


def _sample_rate(value) -> int:
    # bool is an int subclass: {"sample_rate": true} is a client bug, not 1 Hz. JSON integers
    # can be far beyond float range (10**400): compare them as integers, never convert.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ProtocolError("bad_sample_rate", f"sample_rate must be a number, got {_short(value)}")
    if isinstance(value, float):
        if not math.isfinite(value) or value != int(value):
            raise ProtocolError("bad_sample_rate", f"sample_rate must be a whole number of Hz, got {value!r}")
        value = int(value)
    if not MIN_SAMPLE_RATE <= value <= MAX_SAMPLE_RATE:
        raise ProtocolError("bad_sample_rate",
                            f"sample_rate {_short(value)} is outside {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz")
    return value


def _short(value, limit: int = 40) -> str:
    """repr of a client's value, cut short (it goes back in an error message)."""
    text = repr(value) if not isinstance(value, int) or abs(value) < 10**limit else f"a {len(str(abs(value)))}-digit number"
    return text if len(text) <= limit else text[:limit] + "..."


def detect_dialect(text: str) -> Dialect | None:
    """The dialect a first text message belongs to, or None when it is not recognisable.

    A JSON object with "config", "eof" or "reset" (and no "type") is Vosk; anything else is native,
    so that a native client with a malformed first message gets native error events.
    """
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if isinstance(obj, dict) and "type" not in obj and obj.keys() & {"config", "eof", "reset"}:
        return "vosk"
    return "native"


def _audio_format(obj: dict) -> dict:
    """The sample_rate / format / channels of a start or enrol message, checked."""
    rate = _sample_rate(obj.get("sample_rate"))
    fmt = obj.get("format", "pcm_s16le")
    if not isinstance(fmt, str) or fmt not in SAMPLE_BYTES:  # a list or dict is not hashable
        raise ProtocolError("bad_format", f"format must be one of {sorted(SAMPLE_BYTES)}, got {_short(fmt)}")
    channels = obj.get("channels", 1)
    if isinstance(channels, bool) or not isinstance(channels, int) or not 1 <= channels <= MAX_CHANNELS:
        raise ProtocolError("bad_channels", f"channels must be an integer 1..{MAX_CHANNELS}, got {_short(channels)}")
    return dict(sample_rate=rate, format=fmt, channels=channels)


def parse_native(text: str) -> Start | Stop | Enrol | EnrolEnd:
    """Parse a native-dialect text message."""
    obj = _load_object(text)
    kind = obj.get("type")
    if kind == "start":
        return Start(**_audio_format(obj))
    if kind == "stop":
        return Stop()
    if kind == "enrol":
        name = obj.get("name")
        if not isinstance(name, str):
            raise ProtocolError("bad_enrolment", f'enrol needs a "name" string, got {_short(name)}')
        return Enrol(name=name, **_audio_format(obj))
    if kind == "enrol_end":
        return EnrolEnd()
    expected = '(expected "start", "stop", "enrol" or "enrol_end")'
    if kind is None:
        raise ProtocolError("bad_message", f'message has no "type" {expected}')
    raise ProtocolError("unknown_type", f"unknown message type {_short(kind)} {expected}")


def parse_vosk(text: str) -> VoskConfig | VoskEof | VoskReset:
    """Parse a Vosk-dialect text message."""
    obj = _load_object(text)
    if "config" in obj:
        config = obj["config"]
        if not isinstance(config, dict):
            raise ProtocolError("bad_message", '"config" must be a JSON object')
        rate = config.get("sample_rate")
        return VoskConfig(sample_rate=None if rate is None else _sample_rate(rate))
    if obj.get("eof"):
        return VoskEof()
    if obj.get("reset"):
        return VoskReset()
    raise ProtocolError("unknown_type", 'expected {"config": {...}}, {"eof": 1} or {"reset": 1}')


def check_audio_bytes(data: bytes, frame_bytes: int) -> None:
    """Raise ProtocolError unless ``data`` holds a whole, non-zero number of sample frames."""
    if not data:
        raise ProtocolError("bad_audio", "empty audio message")
    if len(data) % frame_bytes:
        raise ProtocolError("bad_audio", f"audio message of {len(data)} bytes is not a whole number of "
                                         f"{frame_bytes}-byte sample frames")
