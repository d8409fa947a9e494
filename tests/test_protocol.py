"""Typed parsing of the websocket protocols (stream.protocol)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.protocol import (Enrol, EnrolEnd, ProtocolError, Start, Stop, VoskConfig, VoskEof, VoskReset,
                             check_audio_bytes, detect_dialect, parse_native, parse_vosk)


def test_start_defaults_and_fields():
    assert parse_native('{"type": "start", "sample_rate": 48000}') == Start(48000, "pcm_s16le", 1)
    s = parse_native('{"type": "start", "sample_rate": 44100.0, "format": "f32le", "channels": 2}')
    assert s == Start(44100, "f32le", 2) and s.frame_bytes == 8
    assert parse_native('{"type": "stop"}') == Stop()


def test_enrol_messages_carry_a_name_and_an_audio_format():
    e = parse_native('{"type": "enrol", "name": "alice", "sample_rate": 48000, "format": "f32le", "channels": 2}')
    assert e == Enrol(48000, "f32le", 2, name="alice") and e.frame_bytes == 8
    assert parse_native('{"type": "enrol", "name": "bo", "sample_rate": 16000}') == Enrol(16000, name="bo")
    assert parse_native('{"type": "enrol_end"}') == EnrolEnd()
    for text, code in [('{"type": "enrol", "sample_rate": 16000}', "bad_enrolment"),
                       ('{"type": "enrol", "name": 3, "sample_rate": 16000}', "bad_enrolment"),
                       ('{"type": "enrol", "name": "bo"}', "bad_sample_rate"),
                       ('{"type": "enrol", "name": "bo", "sample_rate": 16000, "channels": 0}', "bad_channels")]:
        with pytest.raises(ProtocolError) as e:
            parse_native(text)
        assert e.value.code == code, text


@pytest.mark.parametrize("text,code", [
    ("", "bad_json"),
    ("{", "bad_json"),
    ("[1, 2]", "bad_message"),
    ('"start"', "bad_message"),
    ("{}", "bad_message"),
    ('{"type": "begin"}', "unknown_type"),
    ('{"type": 3}', "unknown_type"),
    ('{"type": "start"}', "bad_sample_rate"),
    ('{"type": "start", "sample_rate": "16000"}', "bad_sample_rate"),
    ('{"type": "start", "sample_rate": true}', "bad_sample_rate"),
    ('{"type": "start", "sample_rate": 16000.5}', "bad_sample_rate"),
    ('{"type": "start", "sample_rate": 7999}', "bad_sample_rate"),
    ('{"type": "start", "sample_rate": 1e308}', "bad_sample_rate"),
    ('{"type": "start", "sample_rate": NaN}', "bad_sample_rate"),
    ('{"type": "start", "sample_rate": 16000, "format": "s16"}', "bad_format"),
    ('{"type": "start", "sample_rate": 16000, "format": null}', "bad_format"),
    ('{"type": "start", "sample_rate": 16000, "format": []}', "bad_format"),      # unhashable
    ('{"type": "start", "sample_rate": 16000, "format": {"a": 1}}', "bad_format"),
    ('{"type": "start", "sample_rate": 1%s}' % ("0" * 400), "bad_sample_rate"),  # beyond float range
    ('{"type": "start", "sample_rate": -1%s}' % ("0" * 309), "bad_sample_rate"),
    ('{"type": ["start"]}', "unknown_type"),
    ('{"type": "start", "sample_rate": 16000, "channels": 0}', "bad_channels"),
    ('{"type": "start", "sample_rate": 16000, "channels": 1.0}', "bad_channels"),
    ('{"type": "start", "sample_rate": 16000, "channels": 99}', "bad_channels"),
    ("[" * 100000, "bad_json"),
    ('{"type": "start", "sample_rate": ' + "1" * 5000 + "}", "bad_json"),  # int digit limit
])
def test_native_errors_have_codes(text, code):
    with pytest.raises(ProtocolError) as e:
        parse_native(text)
    assert e.value.code == code and e.value.message


def test_vosk_messages():
    assert parse_vosk('{ "config" : { "sample_rate" : 8000.0 } }') == VoskConfig(8000)
    assert parse_vosk('{"config": {"words": 1, "max_alternatives": 0}}') == VoskConfig(None)
    assert parse_vosk('{"eof" : 1}') == VoskEof()
    assert parse_vosk('{"reset" : 1}') == VoskReset()
    for text, code in [('{"config": 5}', "bad_message"), ('{"config": {"sample_rate": -1}}', "bad_sample_rate"),
                       ('{"config": {"sample_rate": 1%s}}' % ("0" * 400), "bad_sample_rate"),
                       ('{"eof": 0}', "unknown_type"), ("eof", "bad_json")]:
        with pytest.raises(ProtocolError) as e:
            parse_vosk(text)
        assert e.value.code == code


def test_dialect_detection():
    assert detect_dialect('{"config": {"sample_rate": 16000}}') == "vosk"
    assert detect_dialect('{"eof" : 1}') == "vosk"
    assert detect_dialect('{"type": "start", "sample_rate": 16000}') == "native"
    assert detect_dialect('{"type": "start", "config": {}}') == "native"
    assert detect_dialect("[]") == "native"
    assert detect_dialect("nope") is None


def test_audio_byte_counts():
    check_audio_bytes(b"\0" * 8, 4)
    for data, frame in [(b"", 2), (b"\0" * 3, 2), (b"\0" * 6, 4)]:
        with pytest.raises(ProtocolError) as e:
            check_audio_bytes(data, frame)
        assert e.value.code == "bad_audio"


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=200),
                 st.recursive(st.none() | st.booleans() | st.integers() | st.integers(-10**500, 10**500)
                              | st.floats() | st.text(max_size=10),
                              lambda c: st.lists(c, max_size=4) | st.dictionaries(
                                  st.sampled_from(["type", "sample_rate", "format", "channels", "config",
                                                   "eof", "reset", "x"]), c, max_size=4),
                              max_leaves=12).map(json.dumps)))
def test_any_text_parses_or_raises_a_protocol_error(text):
    """No input makes the parsers raise anything but ProtocolError (the server relies on it)."""
    for parse in (parse_native, parse_vosk):
        try:
            message = parse(text)
        except ProtocolError as e:
            assert e.code in {"bad_json", "bad_message", "unknown_type", "bad_sample_rate", "bad_format",
                              "bad_channels"}
        else:
            assert isinstance(message, (Start, Stop, VoskConfig, VoskEof, VoskReset))
    assert detect_dialect(text) in ("native", "vosk", None)


@given(st.integers(8000, 192000), st.sampled_from(["pcm_s16le", "f32le"]), st.integers(1, 8))
def test_start_round_trip(rate, fmt, channels):
    text = json.dumps({"type": "start", "sample_rate": rate, "format": fmt, "channels": channels})
    assert parse_native(text) == Start(rate, fmt, channels)
