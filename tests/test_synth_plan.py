"""The synthesis plan: deterministic, split by voice, and extendable without changing earlier clips."""
from __future__ import annotations

from train.synth import plan, sentence_split
from train.voices import HELD_OUT, MORE_VOICES, SOURCE_VOICES

SENTENCES = [f"sentence {i} of the plan" for i in range(400)]   # ~4 % dev/test by hash


def test_more_voices_come_after_and_leave_every_earlier_clip_unchanged():
    base = plan(SENTENCES, 50, 4, 6, 5)
    more = plan(SENTENCES, 50, 4, 6, 5, n_more=30)
    assert more[:len(base)] == base and len(more) == len(base) + 30
    extra = more[len(base):]
    names = {v.name for v in MORE_VOICES}
    assert {j["voice"] for j in extra} <= names and len({j["voice"] for j in extra}) > 5
    assert all(j["split"] == "train" and sentence_split(j["text"]) == "train" for j in extra)
    # They carry on from the 50th training clip: unique paths, new sentences first.
    assert [int(j["path"][-11:-5]) for j in extra] == list(range(50, 80))
    assert len({j["path"] for j in more}) == len(more)
    assert not names & HELD_OUT and not names & {v.name for v in SOURCE_VOICES}


def test_plan_is_deterministic_and_keeps_held_out_voices_out_of_training():
    a, b = plan(SENTENCES, 40, 4, 6, 5, n_more=10), plan(SENTENCES, 40, 4, 6, 5, n_more=10)
    assert a == b
    for j in a:
        assert (j["voice"] in HELD_OUT) == (j["split"] in ("dev", "test")), j
