import dataclasses
import json

import pytest

from decoders.events import ErrorEvent, Final, Partial, SpeakerChange, Word, event_from_dict, event_from_json


def test_partial_json_matches_design():
    e = Partial(segment=3, text="hello wor", start=12.4, end=13.02)
    assert json.loads(e.to_json()) == {
        "type": "partial", "segment": 3, "text": "hello wor", "start": 12.4, "end": 13.02, "latency": None
    }
    assert list(e.to_dict()) == ["type", "segment", "text", "start", "end", "latency"]


def test_final_json_matches_design():
    words = (Word("hello", 12.4, 12.71, 0.91234), Word("world", 12.8, 13.3, 0.5))
    e = Final(segment=3, text="hello world", start=12.4, end=13.3, words=words, speaker="S1")
    d = json.loads(e.to_json())
    assert d == {
        "type": "final", "segment": 3, "text": "hello world", "start": 12.4, "end": 13.3, "speaker": "S1",
        "words": [
            {"word": "hello", "start": 12.4, "end": 12.71, "conf": 0.912},
            {"word": "world", "start": 12.8, "end": 13.3, "conf": 0.5},
        ],
        "latency": None,
    }
    # speaker key is present even when unknown
    assert json.loads(dataclasses.replace(e, speaker=None).to_json())["speaker"] is None


def test_speaker_change_uses_from_to_keys():
    e = SpeakerChange(time=13.5, from_speaker="S1", to_speaker="S2", score=0.82)
    assert json.loads(e.to_json()) == {
        "type": "speaker_change", "time": 13.5, "from": "S1", "to": "S2", "score": 0.82, "latency": None
    }


def test_error_event():
    e = ErrorEvent("bad_audio", "audio contains NaN values")
    assert json.loads(e.to_json()) == {"type": "error", "code": "bad_audio", "message": "audio contains NaN values"}


def test_json_is_compact_and_rounds_floats():
    e = Partial(segment=0, text="é", start=3 * 0.02, end=0.1 + 0.2, latency=0.123456)
    s = e.to_json()
    assert " " not in s.replace("\u00e9", "")
    assert '"start":0.06,' in s and '"end":0.3,' in s and '"latency":0.123' in s
    assert "é" in s  # not escaped


def test_events_are_frozen_and_latency_is_stamped_by_replace():
    e = Partial(0, "a", 0.0, 0.02)
    with pytest.raises(dataclasses.FrozenInstanceError):
        e.text = "b"
    assert dataclasses.replace(e, latency=0.25).latency == 0.25
    assert Partial.type == "partial" and Final.type == "final"
    assert SpeakerChange.type == "speaker_change" and ErrorEvent.type == "error"
    # `type` is a class attribute, not a field (so it cannot be set wrong)
    assert "type" not in {f.name for f in dataclasses.fields(Final)}


@pytest.mark.parametrize(
    "event",
    [
        Partial(1, "ab", 0.5, 0.76, latency=0.2),
        Final(2, "a b", 1.0, 1.5, (Word("a", 1.0, 1.1, 0.25), Word("b", 1.2, 1.5, 1.0)), speaker="S3"),
        SpeakerChange(4.0, None, "S1", 0.5),
        ErrorEvent("too_long", "session limit"),
    ],
)
def test_round_trip(event):
    assert event_from_json(event.to_json()) == event


def test_unknown_type_is_rejected():
    with pytest.raises(ValueError, match="unknown event type"):
        event_from_dict({"type": "nope"})
