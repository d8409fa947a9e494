"""Vosk-protocol compatibility: a client written from the Vosk server protocol description.

The client does what vosk-server's example clients do: optional ``{"config": {"sample_rate": N}}``,
binary PCM16 mono chunks each followed by reading exactly one reply, then ``{"eof" : 1}`` and
one final reply. Replies are ``{"partial": ...}`` or ``{"text": ..., "result": [...]}``.
"""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from websockets.asyncio.client import connect

from decoders.events import Final, Partial, Word
from fake_pipeline import FakePipeline, encode
from stream.vosk import VoskReplies, partial_message, result_message
from ws_helpers import drain, expected_finals, run, serving, url


async def vosk_client(uri: str, pcm16: np.ndarray, sample_rate: int | None, chunk_s: float = 0.2,
                      reset_after: int | None = None) -> tuple[list[dict], dict, int | None]:
    """Lock-step Vosk client: every message it sends gets exactly one reply."""
    replies = []
    async with connect(uri) as ws:
        if sample_rate is not None:
            await ws.send('{ "config" : { "sample_rate" : %d } }' % sample_rate)
        step = int((sample_rate or 16000) * chunk_s)
        for n, i in enumerate(range(0, len(pcm16), step)):
            await ws.send(pcm16[i:i + step].tobytes())
            replies.append(json.loads(await ws.recv()))
            if reset_after is not None and n == reset_after:
                await ws.send('{"reset" : 1}')
                replies.append(json.loads(await ws.recv()))
        await ws.send('{"eof" : 1}')
        final = json.loads(await ws.recv())
        rest, code = await drain(ws)
        assert rest == []  # nothing after the final result
    return replies, final, code


def texts(replies: list[dict], final: dict) -> list[str]:
    return [r["text"] for r in replies + [final] if "text" in r and r["text"]]


def check_shapes(replies: list[dict], final: dict) -> None:
    for r in replies + [final]:
        assert set(r) in ({"partial"}, {"text", "result"}), r
        for w in r.get("result", []):
            assert set(w) == {"word", "start", "end", "conf"}
            assert 0 <= w["start"] <= w["end"] and 0 <= w["conf"] <= 1
    assert "text" in final


@pytest.mark.parametrize("path,rate", [("/vosk", 8000), ("/vosk", None), ("/", 16000), ("/", None),
                                       ("/ws", 44100)])
def test_vosk_client_gets_partials_and_final_results(path, rate):
    script = ["alpha", "bravo", "", "charlie", "delta", "", "echo"]
    audio = encode(script, rate or 16000)

    async def main():
        async with serving(FakePipeline()) as server:
            return await vosk_client(url(server, path), audio, rate)

    replies, final, code = run(main())
    check_shapes(replies, final)
    assert len(replies) == -(-len(audio) // int((rate or 16000) * 0.2))  # one reply per chunk
    partials = [r["partial"] for r in replies if "partial" in r]
    assert "alpha bravo" in partials and "charlie" in partials
    assert texts(replies, final) == expected_finals(script)
    assert final["text"] == "echo" and [w["word"] for w in final["result"]] == ["echo"]
    assert code == 1000


def test_vosk_reset_ends_the_utterance_and_goes_on():
    audio = encode(["alpha", "bravo", "charlie", "delta"])

    async def main():
        async with serving(FakePipeline()) as server:
            return await vosk_client(url(server, "/vosk"), audio, 16000, chunk_s=0.32, reset_after=1)

    replies, final, code = run(main())
    assert texts(replies, final) == ["alpha bravo", "charlie delta"]
    # The second stream starts its clock again at zero.
    assert final["result"][0]["start"] == 0.0


def test_vosk_errors_are_one_reply_and_the_session_goes_on():
    async def main():
        async with serving(FakePipeline()) as server:
            async with connect(url(server, "/vosk")) as ws:
                await ws.send('{"config": {"sample_rate": 5}}')
                bad_rate = json.loads(await ws.recv())
                await ws.send(b"\x01\x02\x03")
                odd = json.loads(await ws.recv())
                await ws.send(encode(["golf"]).tobytes())
                ok = json.loads(await ws.recv())
                await ws.send('{"eof" : 1}')
                return bad_rate, odd, ok, json.loads(await ws.recv())

    bad_rate, odd, ok, final = run(main())
    assert bad_rate["type"] == "error" and bad_rate["code"] == "bad_sample_rate"
    assert odd["type"] == "error" and odd["code"] == "bad_audio"
    assert ok == {"partial": "golf"}
    assert final["text"] == "golf"


def test_vosk_replies_join_unsent_finals_at_eof():
    replies = VoskReplies()
    f = [Final(i, t, 0.0, 1.0, (Word(t, 0.0, 1.0, 0.5),)) for i, t in enumerate(["one", "two", "three"])]
    replies.observe(Partial(0, "on", 0.0, 0.5))
    assert replies.reply_to_audio() == partial_message("on")
    for x in f:
        replies.observe(x)
    assert json.loads(replies.reply_to_audio())["text"] == "one"
    final = json.loads(replies.reply_final())
    assert final["text"] == "two three" and [w["word"] for w in final["result"]] == ["two", "three"]
    assert json.loads(replies.reply_final()) == {"result": [], "text": ""}
    assert json.loads(result_message([])) == {"result": [], "text": ""}


def test_vosk_client_on_the_real_engine_matches_the_audio_run_alone(tiny_pipeline):
    rng = np.random.default_rng(5)
    audio = (rng.standard_normal(16000 * 4) * 3000).astype(np.int16)
    s = tiny_pipeline.new_stream()
    alone = [e.text for e in s.feed(audio, 16000) + s.finish() if isinstance(e, Final) and e.text]

    async def main():
        async with serving(tiny_pipeline) as server:
            return await asyncio.gather(*[vosk_client(url(server, "/vosk"), audio, 16000) for _ in range(2)])

    for replies, final, code in run(main(), timeout=120):
        check_shapes(replies, final)
        assert any("partial" in r for r in replies)
        assert " ".join(texts(replies, final)) == " ".join(alone)
        assert code == 1000
