"""decoders/subtitles.py and ``--subtitles``: finals cut into readable SubRip / WebVTT cues."""

from __future__ import annotations

import re

import numpy as np
import pytest
import soundfile as sf

from decoders.events import Final, Word
from decoders.subtitles import (MAX_CUE_LINES, MAX_CUE_SECONDS, MAX_LINE_CHARS, MIN_CUE_SECONDS, Cue,
                                cues_from_finals, format_srt, format_webvtt, subtitle_format, wrap_words)
from stream.cli import main


def final(segment: int, words: list[tuple[str, float, float]], speaker: str | None = None) -> Final:
    ws = tuple(Word(w, s, e, 0.9) for w, s, e in words)
    return Final(segment=segment, text=" ".join(w for w, _, _ in words), start=ws[0].start, end=ws[-1].end,
                 words=ws, speaker=speaker)


def steady_words(text: str, start: float, seconds_per_word: float) -> list[tuple[str, float, float]]:
    return [(w, start + i * seconds_per_word, start + (i + 0.8) * seconds_per_word)
            for i, w in enumerate(text.split())]


def test_wrap_words_breaks_at_spaces_within_the_width():
    assert wrap_words("the quick brown fox".split(), width=10) == ["the quick", "brown fox"]
    assert wrap_words(["a" * 50, "b"], width=42) == ["a" * 50, "b"]      # an over-long word keeps its own line
    assert wrap_words([], width=42) == []


def test_a_long_final_becomes_readable_cues_that_keep_every_word_in_order():
    text = " ".join(f"word{i:02d}" for i in range(40))          # 40 words, 279 characters, over 16 s
    f = final(0, steady_words(text, 1.0, 0.4), speaker="S1")
    cues = cues_from_finals([f])
    assert len(cues) > 1
    assert " ".join(" ".join(c.lines) for c in cues) == text
    for cue in cues:
        assert len(cue.lines) <= MAX_CUE_LINES and all(len(line) <= MAX_LINE_CHARS for line in cue.lines)
        assert cue.end - cue.start <= MAX_CUE_SECONDS and cue.speaker == "S1"
    assert all(a.end <= b.start for a, b in zip(cues, cues[1:]))
    assert cues[0].start == 1.0 and cues[-1].end == pytest.approx(1.0 + 39.8 * 0.4)


def test_slow_speech_is_cut_by_time_not_only_by_length():
    f = final(0, steady_words("one two three four five six", 0.0, 2.0))    # 12 s, few characters
    cues = cues_from_finals([f])
    assert [" ".join(c.lines) for c in cues] == ["one two three", "four five six"]   # "four" ends at 7.6 s
    assert all(c.end - c.start <= MAX_CUE_SECONDS for c in cues)


def test_short_cues_are_stretched_but_never_into_the_next_one():
    a = final(0, [("hi", 1.0, 1.1)])
    b = final(1, [("there", 1.2, 1.6)])
    c = final(2, [("you", 5.0, 5.05)])
    cues = cues_from_finals([a, b, c])
    assert [(x.start, x.end) for x in cues] == [(1.0, 1.2), (1.2, 1.6), (5.0, 5.0 + MIN_CUE_SECONDS)]


def test_finals_without_words_or_text():
    no_words = Final(segment=0, text="a final without word times", start=2.0, end=4.0)
    empty = Final(segment=1, text="", start=5.0, end=5.5)
    assert cues_from_finals([no_words, empty]) == [Cue(2.0, 4.0, ("a final without word times",), None)]
    assert format_srt([]) == "" and format_webvtt([]) == "WEBVTT\n"


def test_srt_numbers_cues_and_tags_a_speaker_when_it_changes():
    cues = [Cue(0.5, 2.25, ("hello there",), "S1"), Cue(2.5, 3.0, ("again",), "S1"),
            Cue(3661.5, 3662.0, ("bye", "now"), "S2")]
    assert format_srt(cues) == (
        "1\n00:00:00,500 --> 00:00:02,250\n[S1] hello there\n\n"
        "2\n00:00:02,500 --> 00:00:03,000\nagain\n\n"
        "3\n01:01:01,500 --> 01:01:02,000\n[S2] bye\nnow\n")


def test_srt_keeps_room_for_the_speaker_tag_in_its_lines():
    # 8 five-letter words: "aaaaa bbbbb ... " fills 41 of 42 characters on the first line.
    words = "alpha bravo charl delta echos foxtr golfs hotel india julie kilos limas"
    a = final(0, steady_words("hello", 0.0, 0.3), speaker="S1")
    b = final(1, steady_words(words, 1.0, 0.3), speaker="S2")
    plain = cues_from_finals([a, b])
    tagged = cues_from_finals([a, b], speaker_tags=True)
    assert plain[1].lines[0] == "alpha bravo charl delta echos foxtr golfs"     # 41 characters
    assert tagged[1].lines[0] == "alpha bravo charl delta echos foxtr"           # + "[S2] " = 40
    srt = format_srt(tagged)
    text_lines = [line for line in srt.splitlines() if line and not line[0].isdigit()]
    assert "[S2] alpha bravo charl delta echos foxtr" in text_lines
    assert all(len(line) <= MAX_LINE_CHARS for line in text_lines)
    assert " ".join(" ".join(c.lines) for c in tagged) == "hello " + words
    # Later cues of the same speaker carry no tag, so they keep the whole width.
    long_s2 = final(2, steady_words(" ".join([words] * 3), 6.0, 0.15), speaker="S2")
    more = cues_from_finals([a, b, long_s2], speaker_tags=True)
    assert more[2].speaker == "S2" and len(more[2].lines[0]) > MAX_LINE_CHARS - len("[S2] ")


def test_webvtt_has_its_header_voice_spans_and_escapes_markup():
    cues = [Cue(0.5, 2.25, ("a <b> & c",), "S1"), Cue(2.5, 3.0, ("no speaker",), None)]
    assert format_webvtt(cues) == (
        "WEBVTT\n\n00:00:00.500 --> 00:00:02.250\n<v S1>a &lt;b&gt; &amp; c\n\n"
        "00:00:02.500 --> 00:00:03.000\nno speaker\n")


def test_subtitle_format_comes_from_the_suffix():
    assert subtitle_format("a.SRT") == "srt" and subtitle_format("dir/b.vtt") == "vtt"
    with pytest.raises(ValueError, match=r"\.srt or \.vtt.*'\.txt'"):
        subtitle_format("c.txt")
    with pytest.raises(ValueError, match="no suffix"):
        subtitle_format("captions")


# -- the command line -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from checkpoints import write_ctc_checkpoint

    return str(write_ctc_checkpoint(tmp_path_factory.mktemp("subs") / "ckpt", norm="layer"))


def noise_wav(path, seconds: float = 3.0) -> str:
    rng = np.random.default_rng(0)
    sf.write(str(path), (rng.standard_normal(int(16000 * seconds)) * 0.2).clip(-1, 1), 16000)
    return str(path)


SRT_BLOCK = re.compile(r"(\d+)\n(\d\d:\d\d:\d\d,\d{3}) --> (\d\d:\d\d:\d\d,\d{3})\n(.+)", re.S)


@pytest.mark.parametrize("suffix", ["srt", "vtt"])
def test_transcribe_writes_the_finals_as_subtitles(tmp_path, capsys, ckpt, suffix):
    import json

    wav = noise_wav(tmp_path / "a.wav")
    out_file = tmp_path / f"a.{suffix}"
    code = main(["transcribe", wav, "--model", ckpt, "--json", "--no-speakers", "--no-beam",
                 "--subtitles", str(out_file)])
    out, err = capsys.readouterr()
    assert code == 0, err
    finals = [e for e in map(json.loads, out.splitlines()) if e["type"] == "final" and e["text"]]
    assert finals, "a random model emits text for noise"
    written = out_file.read_text()
    if suffix == "srt":
        blocks = [SRT_BLOCK.fullmatch(b) for b in written.strip().split("\n\n")]
        assert all(blocks) and [int(b.group(1)) for b in blocks] == list(range(1, len(blocks) + 1))
        words = " ".join(b.group(4).replace("\n", " ") for b in blocks)
    else:
        header, *blocks = written.strip().split("\n\n")
        assert header == "WEBVTT"
        words = " ".join(" ".join(b.split("\n")[1:]) for b in blocks)
    assert words.split() == " ".join(f["text"] for f in finals).split()


def test_subtitles_option_errors_come_before_the_model_loads(tmp_path, capsys):
    wav = noise_wav(tmp_path / "a.wav", 0.5)
    missing_model = str(tmp_path / "no-model")
    for path, needle in ((tmp_path / "a.txt", "must end in .srt or .vtt"),
                         (tmp_path / "no" / "a.srt", "no such folder")):
        code = main(["transcribe", wav, "--model", missing_model, "--subtitles", str(path)])
        out, err = capsys.readouterr()
        assert code == 2 and out == "" and err.startswith("error: --subtitles") and needle in err, err


def test_a_file_damaged_part_way_still_gets_subtitles_of_what_came_before(tmp_path, capsys, ckpt, monkeypatch):
    import stream.sources

    wav = noise_wav(tmp_path / "a.wav")
    real_source = stream.sources.file_source

    async def damaged(path, realtime=False):
        async for block in real_source(path, realtime=realtime):
            yield block
        raise stream.sources.SourceError(f"{path}: the file ends part-way (test)")

    monkeypatch.setattr(stream.sources, "file_source", damaged)
    out_file = tmp_path / "a.srt"
    code = main(["transcribe", wav, "--model", ckpt, "--json", "--no-speakers", "--no-beam",
                 "--subtitles", str(out_file)])
    out, err = capsys.readouterr()
    assert code == 2 and "ends part-way" in err
    assert '"final"' in out and SRT_BLOCK.match(out_file.read_text())


def test_mic_stopped_with_ctrl_c_writes_the_subtitles_of_what_was_heard(tmp_path, capsys, ckpt, monkeypatch, ctrl_c_raises):
    import asyncio
    import json
    import signal

    import stream.sources

    async def three_seconds_then_ctrl_c(device=None):
        rng = np.random.default_rng(0)
        for _ in range(30):
            yield (rng.standard_normal((1600, 1)) * 0.2).astype(np.float32), 16000
        signal.raise_signal(signal.SIGINT)      # as a user's Ctrl-C: asyncio.run cancels the main task
        await asyncio.sleep(60)

    monkeypatch.setattr(stream.sources, "microphone_source", three_seconds_then_ctrl_c)
    monkeypatch.setattr(stream.sources, "input_device_info", lambda device=None: {"name": "fake mic"})
    out_file = tmp_path / "mic.vtt"
    code = main(["mic", "--model", ckpt, "--json", "--no-speakers", "--no-beam", "--subtitles", str(out_file)])
    out, err = capsys.readouterr()
    assert code == 0, err
    finals = [e["text"] for e in map(json.loads, out.splitlines()) if e["type"] == "final" and e["text"]]
    assert finals, "the flush at Ctrl-C gives the finals of what was heard"
    header, *blocks = out_file.read_text().strip().split("\n\n")
    assert header == "WEBVTT"
    assert " ".join(" ".join(b.split("\n")[1:]) for b in blocks).split() == " ".join(finals).split()
