"""Subtitle files from final events: SubRip (.srt) and WebVTT (.vtt).

A final covers a whole segment, up to 15 s of speech (StreamConfig.max_segment_s); subtitles
read best as short cues, so each final is cut at word boundaries, by its word times, into cues
of at most two lines of 42 characters and at most 7 s on screen (common broadcast guidance).
A final without word times (a model whose finals carry none) stays one cue, wrapped.

Speakers: WebVTT names each cue's speaker with a voice span (``<v S1>``); SubRip has no such
markup, so a cue whose speaker differs from the previous cue's starts with ``[S1]``, and its
first line is wrapped with room for that tag (``speaker_tags``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from decoders.events import Final

MAX_LINE_CHARS = 42
MAX_CUE_LINES = 2
MAX_CUE_SECONDS = 7.0
# A cue shorter than this is hard to read (and zero-length cues are invalid in some players).
MIN_CUE_SECONDS = 0.3

FORMATS = {".srt": "srt", ".vtt": "vtt"}


@dataclass(frozen=True)
class Cue:
    """One subtitle: seconds from the stream's start, its lines, its speaker (or None)."""

    start: float
    end: float
    lines: tuple[str, ...]
    speaker: str | None = None


def wrap_words(words: list[str], width: int = MAX_LINE_CHARS, first_line_reserved: int = 0) -> list[str]:
    """Greedy line breaking at spaces; a word longer than ``width`` gets a line of its own.
    ``first_line_reserved`` characters of the first line are taken by something put before it
    (a speaker tag)."""
    lines: list[str] = []
    for word in words:
        room = width - (first_line_reserved if len(lines) == 1 else 0)
        if lines and len(lines[-1]) + 1 + len(word) <= room:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines


def srt_speaker_tag(speaker: str | None, previous: str | None) -> str:
    """What a SubRip cue starts with: ``[S1] `` when its speaker differs from the previous cue's,
    else nothing."""
    return f"[{speaker}] " if speaker is not None and speaker != previous else ""


def cues_from_finals(finals: Iterable[Final], max_line_chars: int = MAX_LINE_CHARS,
                     max_lines: int = MAX_CUE_LINES, max_seconds: float = MAX_CUE_SECONDS,
                     speaker_tags: bool = False) -> list[Cue]:
    """Cues in time order; empty finals are skipped. Each cue ends before the next one starts.
    ``speaker_tags``: the first line of a cue whose speaker differs from the previous cue's keeps
    room for SubRip's ``[S1] `` (format_srt adds it)."""
    cues: list[Cue] = []

    def reserved(speaker: str | None) -> int:
        return len(srt_speaker_tag(speaker, cues[-1].speaker if cues else None)) if speaker_tags else 0

    for final in finals:
        if not final.text.strip():
            continue
        if not final.words:
            lines = wrap_words(final.text.split(), max_line_chars, reserved(final.speaker))
            cues.append(Cue(final.start, final.end, tuple(lines), final.speaker))
            continue
        group: list = []
        for word in final.words:
            candidate = [*group, word]
            lines = wrap_words([w.word for w in candidate], max_line_chars, reserved(final.speaker))
            too_slow = word.end - candidate[0].start > max_seconds
            if group and (len(lines) > max_lines or too_slow):
                cues.append(_cue(group, max_line_chars, final.speaker, reserved(final.speaker)))
                candidate = [word]
            group = candidate
        cues.append(_cue(group, max_line_chars, final.speaker, reserved(final.speaker)))
    return _readable_times(cues)


def _cue(words, width: int, speaker: str | None, first_line_reserved: int) -> Cue:
    lines = wrap_words([w.word for w in words], width, first_line_reserved)
    return Cue(words[0].start, words[-1].end, tuple(lines), speaker)


def _readable_times(cues: list[Cue]) -> list[Cue]:
    """Stretch cues shorter than MIN_CUE_SECONDS into the gap after them, never into the next cue."""
    out = []
    for i, cue in enumerate(cues):
        next_start = cues[i + 1].start if i + 1 < len(cues) else math.inf
        end = min(max(cue.end, cue.start + MIN_CUE_SECONDS), max(next_start, cue.end))
        out.append(Cue(cue.start, end, cue.lines, cue.speaker))
    return out


def _timestamp(seconds: float, decimal: str) -> str:
    millis = round(max(0.0, seconds) * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal}{millis:03d}"


def format_srt(cues: list[Cue]) -> str:
    blocks, last_speaker = [], None
    for number, cue in enumerate(cues, start=1):
        lines = list(cue.lines)
        lines[0] = srt_speaker_tag(cue.speaker, last_speaker) + lines[0]
        last_speaker = cue.speaker
        times = f"{_timestamp(cue.start, ',')} --> {_timestamp(cue.end, ',')}"
        blocks.append("\n".join([str(number), times, *lines]))
    return "\n\n".join(blocks) + "\n" if blocks else ""


def _vtt_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def format_webvtt(cues: list[Cue]) -> str:
    blocks = ["WEBVTT"]
    for cue in cues:
        lines = [_vtt_escape(line) for line in cue.lines]
        if cue.speaker is not None:
            lines[0] = f"<v {_vtt_escape(cue.speaker)}>{lines[0]}"
        times = f"{_timestamp(cue.start, '.')} --> {_timestamp(cue.end, '.')}"
        blocks.append("\n".join([times, *lines]))
    return "\n\n".join(blocks) + "\n"


def subtitle_format(path: str | Path) -> str:
    """"srt" or "vtt" from the file name; ValueError naming the suffixes otherwise."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"subtitle file {path}: the name must end in .srt or .vtt, got {suffix or 'no suffix'!r}")
    return FORMATS[suffix]


def write_subtitles(path: str | Path, finals: Iterable[Final]) -> int:
    """Write the finals as subtitles in the format the file name says; returns the number of cues."""
    fmt = subtitle_format(path)
    cues = cues_from_finals(finals, speaker_tags=fmt == "srt")
    Path(path).write_text(format_srt(cues) if fmt == "srt" else format_webvtt(cues), encoding="utf-8")
    return len(cues)
