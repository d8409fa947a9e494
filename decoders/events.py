"""Events that the pipeline emits: small frozen dataclasses with a JSON form.

The JSON form is the wire format of DESIGN.md "Events" (CLI ``--json`` lines and
websocket messages). Every event has a ``type`` key. Times are seconds from the start
of the stream. Keys are always present and in a fixed order (``latency`` and
``speaker`` are ``null`` when unknown), so consumers can rely on the shape.

Numbers are rounded in the JSON form only: times and latencies to the millisecond,
confidences and scores to 3 decimals (frames are 20 ms, so nothing is lost on times).
The dataclasses keep the exact values.

The decoders leave ``latency`` as None; the pipeline stamps it with
``dataclasses.replace(event, latency=...)``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar, Union

__all__ = [
    "Word",
    "Partial",
    "Final",
    "SpeakerChange",
    "ErrorEvent",
    "Event",
    "event_from_dict",
    "event_from_json",
]


def _t(x: float | None) -> float | None:
    """Round a time or latency for JSON (millisecond resolution)."""
    return None if x is None else round(float(x), 3)


def _s(x: float) -> float:
    """Round a confidence or score for JSON."""
    return round(float(x), 3)


def _dumps(d: dict) -> str:
    # Compact separators: one event per line / message, no wasted bytes.
    return json.dumps(d, ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True)
class Word:
    """One recognised word of a final transcript.

    JSON: ``{"word": ..., "start": ..., "end": ..., "conf": ...}``.
    """

    word: str
    start: float  # seconds, start of the word's first frame
    end: float  # seconds, end of the word's last frame
    confidence: float  # in [0, 1]; see decoders.ctc.frame_confidence for the definition

    def to_dict(self) -> dict[str, Any]:
        return {"word": self.word, "start": _t(self.start), "end": _t(self.end), "conf": _s(self.confidence)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Word":
        return cls(word=d["word"], start=d["start"], end=d["end"], confidence=d["conf"])


@dataclass(frozen=True)
class Partial:
    """The current (greedy) hypothesis of a segment that is still open; it may change."""

    type: ClassVar[str] = "partial"
    segment: int  # segment id, increasing from 0 per stream; the Final of the segment has the same id
    text: str
    start: float  # seconds, start of the segment's first speech frame
    end: float  # seconds, end of the frame at which the text became this
    latency: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "segment": self.segment,
            "text": self.text,
            "start": _t(self.start),
            "end": _t(self.end),
            "latency": _t(self.latency),
        }

    def to_json(self) -> str:
        return _dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Partial":
        return cls(segment=d["segment"], text=d["text"], start=d["start"], end=d["end"], latency=d.get("latency"))


@dataclass(frozen=True)
class Final:
    """The final transcript of a segment (closed at an endpoint or by finish())."""

    type: ClassVar[str] = "final"
    segment: int
    text: str
    start: float  # seconds, start of the first word (or first speech frame when there are no words)
    end: float  # seconds, end of the last word (or last speech frame)
    words: tuple[Word, ...] = ()
    speaker: str | None = None  # stamped by the pipeline's speaker tracker
    latency: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "segment": self.segment,
            "text": self.text,
            "start": _t(self.start),
            "end": _t(self.end),
            "speaker": self.speaker,
            "words": [w.to_dict() for w in self.words],
            "latency": _t(self.latency),
        }

    def to_json(self) -> str:
        return _dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Final":
        return cls(
            segment=d["segment"],
            text=d["text"],
            start=d["start"],
            end=d["end"],
            words=tuple(Word.from_dict(w) for w in d.get("words", ())),
            speaker=d.get("speaker"),
            latency=d.get("latency"),
        )


@dataclass(frozen=True)
class SpeakerChange:
    """The active speaker changed at ``time``. JSON keys ``from`` / ``to`` (Python keywords here).

    A later event with the same ``time`` restates the label of that change: the tracker labels a
    change found by the change detector from half a second of speech and confirms it with the
    windows after it (decoders/speaker.py); from ``time`` on, the speaker is the last ``to``
    (``to`` equal to ``from``: no change after all).
    """

    type: ClassVar[str] = "speaker_change"
    time: float  # seconds
    from_speaker: str | None  # None at the first speaker of a stream
    to_speaker: str
    score: float  # the tracker's confidence in the change
    latency: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "time": _t(self.time),
            "from": self.from_speaker,
            "to": self.to_speaker,
            "score": _s(self.score),
            "latency": _t(self.latency),
        }

    def to_json(self) -> str:
        return _dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SpeakerChange":
        return cls(
            time=d["time"], from_speaker=d["from"], to_speaker=d["to"], score=d["score"], latency=d.get("latency")
        )


@dataclass(frozen=True)
class ErrorEvent:
    """Something went wrong for this stream (bad audio, protocol misuse, limits)."""

    type: ClassVar[str] = "error"
    code: str  # short machine-readable code, e.g. "bad_audio"
    message: str  # human-readable explanation

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "code": self.code, "message": self.message}

    def to_json(self) -> str:
        return _dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ErrorEvent":
        return cls(code=d["code"], message=d["message"])


Event = Union[Partial, Final, SpeakerChange, ErrorEvent]

_BY_TYPE: dict[str, type] = {c.type: c for c in (Partial, Final, SpeakerChange, ErrorEvent)}


def event_from_dict(d: dict[str, Any]) -> Event:
    """Parse the JSON form back into an event (for clients and tests).

    Raises ValueError for an unknown or missing ``type`` and KeyError for a missing field.
    """
    kind = d.get("type")
    if kind not in _BY_TYPE:
        raise ValueError(f"unknown event type {kind!r}; expected one of {sorted(_BY_TYPE)}")
    return _BY_TYPE[kind].from_dict(d)


def event_from_json(s: str) -> Event:
    return event_from_dict(json.loads(s))
