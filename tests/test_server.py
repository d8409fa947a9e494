"""The websocket server with real websocket clients over loopback.

Most tests drive the server with tests/fake_pipeline.FakePipeline (same streaming API,
transcripts known exactly, milliseconds per test); the ``real engine`` tests at the end run
stream.Pipeline with a tiny random-weight model and check that every concurrent client gets
what its audio gives when run alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import http.client
import json
import logging
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from fake_pipeline import FakePipeline, encode
from stream.server import resolve_static
from ws_helpers import (SCRIPTS, drain, errors, expected_finals, finals, run, serving, settled, start_msg,
                        stream_audio, transcribe, until, url)

# -- many clients ---------------------------------------------------------------------


def test_concurrent_clients_get_their_own_transcripts_in_batched_forwards():
    fake = FakePipeline(window_cost_s=0.01)

    async def main():
        async with serving(fake) as server:
            results = await asyncio.gather(*[
                transcribe(server, encode(script), chunk=700 + 97 * i, pace_s=0.002)
                for i, script in enumerate(SCRIPTS)])
            assert await settled(server)
            return results, server.worker.max_batch

    results, max_batch = run(main())
    for script, (events, code) in zip(SCRIPTS, results):
        assert code == 1000
        assert not errors(events)
        assert finals(events) == expected_finals(script)
        # Partials of a segment only grow, and come before its final.
        assert events[-1]["type"] == "final"
    assert max_batch > 1, "windows of concurrent streams were never batched"
    assert fake.threads == {"wavlm-inference"}  # the model never ran on the event loop


def test_unbatched_mode_runs_one_stream_per_forward():
    fake = FakePipeline(window_cost_s=0.005)

    async def main():
        async with serving(fake, batching=False) as server:
            return await asyncio.gather(*[transcribe(server, encode(s), pace_s=0.001) for s in SCRIPTS[:3]])

    results = run(main())
    for script, (events, _) in zip(SCRIPTS, results):
        assert finals(events) == expected_finals(script)
    assert set(fake.batch_sizes) == {1}


def test_f32_stereo_48k_input():
    audio = encode(["charlie", "delta"], 48000).astype(np.float32) / 32767
    stereo = np.stack([audio, audio], axis=1)

    async def main():
        async with serving(FakePipeline()) as server:
            async with connect(url(server)) as ws:
                await ws.send(start_msg(48000, "f32le", 2))
                await stream_audio(ws, stereo, 4000)
                await ws.send('{"type": "stop"}')
                return await drain(ws)

    events, code = run(main())
    assert finals(events) == ["charlie delta"] and code == 1000


def test_tiny_messages_are_joined_into_few_engine_calls():
    # The worker is held inside its first accept while the client sends every tiny message, so
    # they pile up whatever the speed of this machine; once released it must join them.
    gate = threading.Event()
    fake = FakePipeline(accept_gate=gate)
    audio = encode(["alpha", "bravo", "charlie", "delta"])
    messages = len(audio) // 8                                           # 16-byte messages

    async def main():
        async with serving(fake) as server:
            async with connect(url(server)) as ws:
                await ws.send(start_msg())
                await stream_audio(ws, audio, chunk=8)
                await ws.send(json.dumps({"type": "stop"}))
                # The server reads a session's messages in order, so once the stop is queued
                # (its job is flushing) every tiny message is queued before it.
                assert await until(lambda: any(job.flushing for job in server.worker._jobs.values()), 10), \
                    "the server never queued the stop"
                gate.set()
                return await drain(ws)

    events, code = run(main())
    assert finals(events) == ["alpha bravo charlie delta"] and code == 1000
    assert fake.samples_accepted == len(audio)
    # 1.28 s in 0.1 s blocks is 13 calls; a few more where a cycle's budget splits a block.
    assert fake.accept_calls < messages / 50, (fake.accept_calls, messages)


def test_a_bad_message_among_joined_small_ones_loses_only_itself():
    """Messages are checked one by one before the worker joins small ones into one call."""
    fake = FakePipeline(window_cost_s=0.3)   # the worker is busy while the small messages pile up
    first = (encode(["alpha"] * 3) / 32768).astype("<f4")
    tiny = np.full(160, 0.1, "<f4")

    async def main():
        async with serving(fake) as server:
            async with connect(url(server)) as ws:
                await ws.send(start_msg(fmt="f32le"))
                await ws.send(first.tobytes())
                await asyncio.sleep(0.05)
                for message in (tiny, np.full(160, 1e6, "<f4"), tiny, np.array([np.inf] * 4, "<f4"), tiny):
                    await ws.send(message.tobytes())
                await ws.send('{"type": "stop"}')
                return await drain(ws)

    events, code = run(main())
    assert errors(events) == ["bad_audio", "bad_audio"] and code == 1000
    assert fake.samples_accepted == len(first) + 3 * len(tiny)   # every good sample, no bad one
    assert fake.accept_calls <= 3                                # the tiny ones were joined
    assert finals(events) == ["alpha alpha alpha"]


# -- protocol errors -----------------------------------------------------------------


def test_bad_messages_get_error_events_and_the_session_goes_on():
    script = ["alpha", "", "bravo"]

    async def main():
        async with serving(FakePipeline()) as server:
            other = asyncio.create_task(transcribe(server, encode(SCRIPTS[1]), pace_s=0.002))
            async with connect(url(server)) as ws:
                await ws.send(b"\x00\x01" * 100)                  # audio before start
                await ws.send("{not json")
                await ws.send('["a list"]')
                await ws.send('{"type": "dance"}')
                await ws.send('{"sample_rate": 16000}')           # no type
                await ws.send(start_msg(rate=123))
                await ws.send(start_msg(rate=True))
                await ws.send(json.dumps({"type": "start", "sample_rate": 16000, "format": "mp3"}))
                await ws.send(start_msg(channels=0))
                await ws.send(start_msg())                          # finally a good start
                await ws.send(start_msg())                          # twice
                await ws.send(b"\x01\x02\x03")                      # odd byte count
                await stream_audio(ws, encode(script), 1000)
                await ws.send('{"type": "stop"}')
                mine = await drain(ws)
            return mine, await other

    (events, code), (other_events, other_code) = run(main())
    assert errors(events) == ["not_started", "bad_json", "bad_message", "unknown_type", "bad_message",
                              "bad_sample_rate", "bad_sample_rate", "bad_format", "bad_channels",
                              "already_started", "bad_audio"]
    assert all(e["message"] for e in events if e["type"] == "error")
    assert finals(events) == expected_finals(script) and code == 1000
    assert finals(other_events) == expected_finals(SCRIPTS[1]) and other_code == 1000


def test_non_finite_float_audio_is_rejected_and_the_stream_goes_on():
    good = encode(["echo"]).astype(np.float32) / 32767

    async def main():
        async with serving(FakePipeline()) as server:
            async with connect(url(server)) as ws:
                await ws.send(start_msg(fmt="f32le"))
                await ws.send(np.array([0.1, np.nan, 0.2], np.float32).tobytes())
                await stream_audio(ws, good, 2000)
                await ws.send('{"type": "stop"}')
                return await drain(ws)

    events, code = run(main())
    assert errors(events) == ["bad_audio"]
    assert finals(events) == ["echo"] and code == 1000


def test_model_failure_closes_only_that_session():
    async def main():
        async with serving(FakePipeline(window_cost_s=0.002)) as server:
            good = [asyncio.create_task(transcribe(server, encode(s), pace_s=0.002)) for s in SCRIPTS[:3]]
            bad = await transcribe(server, encode(["alpha", "POISON", "bravo"]), pace_s=0.002)
            after = await transcribe(server, encode(["golf"]))
            return bad, await asyncio.gather(*good), after, await settled(server)

    (bad_events, bad_code), good, (after_events, _), jobs = run(main())
    assert "internal_error" in errors(bad_events) and bad_code == 1011
    for script, (events, code) in zip(SCRIPTS, good):
        assert finals(events) == expected_finals(script) and code == 1000
    assert finals(after_events) == ["golf"]
    assert jobs


# -- limits -------------------------------------------------------------------------


def test_max_sessions_new_ones_get_an_error_and_a_clean_close():
    async def main():
        async with serving(FakePipeline(), max_sessions=2) as server:
            a = await connect(url(server))
            b = await connect(url(server))
            await a.send(start_msg())
            await b.send(start_msg())
            async with connect(url(server)) as c:
                refused = await drain(c)
            await a.send('{"type": "stop"}')
            await drain(a)
            await asyncio.sleep(0.05)
            admitted = await transcribe(server, encode(["delta"]))   # room again
            await b.close()
            return refused, admitted

    (events, code), (admitted, _) = run(main())
    assert errors(events) == ["server_busy"] and code == 1013
    assert finals(admitted) == ["delta"]


def test_idle_timeout_flushes_finals_and_closes():
    async def main():
        async with serving(FakePipeline(), idle_timeout_s=0.3) as server:
            async with connect(url(server)) as ws:
                await ws.send(start_msg())
                await stream_audio(ws, encode(["alpha", "bravo"]), 3000)
                t0 = time.monotonic()
                events, code = await drain(ws)
                return events, code, time.monotonic() - t0

    events, code, waited = run(main())
    assert errors(events) == ["idle_timeout"]
    assert finals(events) == ["alpha bravo"] and code == 1000
    assert 0.2 < waited < 5


def test_session_length_limit_counts_audio_seconds():
    async def main():
        async with serving(FakePipeline(), max_session_s=1.0) as server:
            async with connect(url(server)) as ws:
                await ws.send(start_msg())
                with contextlib.suppress(ConnectionClosed):
                    await stream_audio(ws, encode(["alpha", "bravo", "charlie", "delta", "echo"]), 1600)
                return await drain(ws)

    events, code = run(main())
    assert errors(events) == ["session_limit"] and code == 1000
    assert finals(events) == ["alpha bravo charlie"]  # 0.96 s of audio were taken, then the flush


def test_session_length_limit_counts_wall_time():
    async def main():
        async with serving(FakePipeline(), max_session_s=0.5, idle_timeout_s=10) as server:
            async with connect(url(server)) as ws:
                await ws.send(start_msg())
                return await drain(ws)

    events, code = run(main())
    assert errors(events) == ["session_limit"] and code == 1000


def test_oversized_message_closes_that_client_only():
    async def main():
        async with serving(FakePipeline(), max_message_bytes=20000) as server:
            other = asyncio.create_task(transcribe(server, encode(SCRIPTS[2]), chunk=4000, pace_s=0.002))
            async with connect(url(server), max_size=None) as ws:
                await ws.send(start_msg())
                with contextlib.suppress(ConnectionClosed):
                    await ws.send(bytes(40000))
                big = await drain(ws)
            return big, await other

    (events, code), (other_events, other_code) = run(main())
    assert code == 1009
    assert finals(other_events) == expected_finals(SCRIPTS[2]) and other_code == 1000


def test_disconnect_mid_word_frees_the_session_at_once():
    fake = FakePipeline(window_cost_s=0.001)

    async def main():
        async with serving(fake) as server:
            ws = await connect(url(server))
            await ws.send(start_msg())
            await stream_audio(ws, encode(["alpha", "bravo"])[:7000], 1000)  # stops inside "bravo"
            await asyncio.sleep(0.1)
            assert server.worker.job_count == 1 and len(server.sessions) == 1
            ws.transport.abort()  # no close handshake: the client just vanishes
            t0 = time.monotonic()
            state = await settled(server, 1.0), time.monotonic() - t0
            await asyncio.sleep(0.05)
            gc.collect()
            assert len(fake.alive) == 0, "the stream outlived its session"
            still_ok = await transcribe(server, encode(["hotel"]))
            return state, still_ok

    state, (events, _) = run(main())
    freed, seconds = state
    assert freed and seconds < 0.5
    assert finals(events) == ["hotel"]


def test_many_clients_coming_and_going_leave_no_state_behind():
    fake = FakePipeline(window_cost_s=0.001)

    async def visitor(server, i):
        ws = await connect(url(server))
        await ws.send(start_msg())
        await stream_audio(ws, encode(["alpha", "bravo"])[: 1000 * (i % 7 + 1)], 500)
        if i % 3 == 0:
            ws.transport.abort()                       # vanishes
        elif i % 3 == 1:
            await ws.close()                           # leaves without stop
        else:
            await ws.send('{"type": "stop"}')          # ends properly
            await drain(ws)

    async def main():
        async with serving(fake, max_sessions=64) as server:
            for _ in range(3):
                await asyncio.gather(*[visitor(server, i) for i in range(30)])
            freed = await settled(server)
            await asyncio.sleep(0.05)   # the worker drops a closed job's stream when its cycle ends
            gc.collect()
            return freed, server.stats["sessions"], fake.streams_created, len(fake.alive)

    freed, sessions, streams, alive = run(main())
    assert freed and sessions == 90 and streams <= 90
    assert alive == 0, "some stream state outlived its session"


def test_client_gone_during_the_final_flush_frees_its_session_at_once():
    """Stop, then vanish while the stream is still being flushed: nothing waits for the flush
    (found by bench/fuzz_server.py: such sessions stayed open until finish_timeout_s, holding a
    slot of max_sessions and their worker job)."""
    async def main():
        async with serving(FakePipeline(window_cost_s=0.02), finish_timeout_s=30) as server:
            ws = await connect(url(server))
            await ws.send(start_msg())
            await stream_audio(ws, encode(["alpha", "bravo", "", "charlie"] * 4), 1600)
            await ws.send('{"type": "stop"}')
            await asyncio.sleep(0.01)
            ws.transport.abort()
            t0 = time.monotonic()
            return await settled(server, 5), time.monotonic() - t0, server.worker.job_count

    freed, seconds, jobs = run(main())
    assert freed and seconds < 1.5 and jobs == 0


def test_client_that_stops_reading_is_closed_and_others_are_not():
    fake = FakePipeline(event_padding=200_000)   # every final is a 200 kB message
    flood = encode(["alpha", ""] * 150)

    async def main():
        async with serving(fake, max_outbox=4, max_backlog_s=1000) as server:
            other = asyncio.create_task(transcribe(server, encode(SCRIPTS[0]), pace_s=0.01))
            ws = await connect(url(server), max_queue=1)   # and never read
            await ws.send(start_msg())
            with contextlib.suppress(ConnectionClosed):
                await stream_audio(ws, flood, 16000)
            for _ in range(500):
                if server.stats["slow_client"] and len(server.sessions) <= (0 if other.done() else 1):
                    break
                await asyncio.sleep(0.02)
            dropped = server.stats["slow_client"]
            other_events, other_code = await other
            ws.transport.abort()
            return other_events, other_code, dropped, await settled(server)

    other_events, other_code, dropped, freed = run(main())
    assert dropped == 1 and freed
    assert finals(other_events) == [t + " " + "x" * 200_000 for t in expected_finals(SCRIPTS[0])]
    assert other_code == 1000


def test_a_fast_client_held_back_is_not_dropped_by_keepalive():
    """Streaming faster than real time pauses the client's reading, and with it its pongs: the
    pong waits behind unread audio in the socket, so keepalive must not close such a client
    (found by bench/soak.py --unpaced: 1011 'keepalive ping timeout', finals lost)."""
    script = ["alpha", "bravo", ""] * 20        # 19 s of audio, processed at ~16x real time

    async def main():
        async with serving(FakePipeline(window_cost_s=0.02), max_backlog_s=1.0, ping_interval_s=0.2) as server:
            return await transcribe(server, encode(script), chunk=8000)

    events, code = run(main())
    assert finals(events) == expected_finals(script) and code == 1000


def test_a_flooding_client_does_not_delay_a_live_one():
    """One client dumps 2 minutes of audio at once; a live client's captions stay prompt."""
    fake = FakePipeline(window_cost_s=0.01)   # unsliced, the flood alone would hold the worker ~4 s
    live = encode(["alpha", "bravo", "", "charlie", "delta", ""] * 2)

    async def live_client(server):
        delays = []
        async with connect(url(server)) as ws:
            await ws.send(start_msg())
            chunk = 1600
            sent_at = {}
            reader_events = []

            async def reader():
                async for message in ws:
                    e = json.loads(message)
                    reader_events.append(e)
                    if e["type"] == "partial":
                        # When the audio that completed this window went out.
                        key = min(k for k in sent_at if k >= int(round(e["end"] * 16000)))
                        delays.append(time.monotonic() - sent_at[key])

            task = asyncio.create_task(reader())
            for i in range(0, len(live), chunk):
                sent_at[i + chunk] = time.monotonic()
                await ws.send(live[i:i + chunk].tobytes())
                await asyncio.sleep(0.1)   # real time
            await ws.send('{"type": "stop"}')
            await task
        return reader_events, delays

    async def main():
        async with serving(fake, slice_s=0.5, max_backlog_s=5.0) as server:
            flooder = await connect(url(server))
            await flooder.send(start_msg())
            flood = encode(["echo"] * 375)
            flood_task = asyncio.create_task(stream_audio(flooder, flood, 32000))
            await asyncio.sleep(0.05)
            events, delays = await live_client(server)
            flood_task.cancel()
            flooder.transport.abort()
            return events, delays

    events, delays = run(main())
    assert finals(events) == ["alpha bravo", "charlie delta"] * 2
    print("live client partial delays (s):", [round(d, 3) for d in delays])
    assert max(delays) < 1.5, delays


# -- static files, origins, binding ---------------------------------------------------


def http_get(port: int, path: str, headers: dict | None = None) -> tuple[int, bytes, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path, headers=headers or {})
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r.status, body, dict(r.getheaders())


def test_serves_the_page_and_rejects_path_traversal(tmp_path):
    root = tmp_path / "web"
    root.mkdir()
    (root / "index.html").write_text("<h1>hi</h1>")
    (root / "app.js").write_text("1")
    (root / ".secret.js").write_text("SECRET")
    (tmp_path / "outside.js").write_text("SECRET")
    (root / "link.js").symlink_to(tmp_path / "outside.js")

    async def main():
        async with serving(FakePipeline(), web_root=root) as server:
            port = server.port
            return {p: await asyncio.to_thread(http_get, port, p) for p in [
                "/", "/index.html", "/app.js", "/app.js?v=2", "/../outside.js", "/%2e%2e/outside.js",
                "/..%2foutside.js", "/%2E%2E%2Foutside.js", "//outside.js", "/.secret.js", "/link.js",
                "/sub/../app.js", "/app.js%00.html", "/..\\outside.js", "/missing.js", "/ws",
            ]}

    got = run(main())
    assert got["/"][0] == 200 and got["/"][1] == b"<h1>hi</h1>"
    assert got["/"][2]["Content-Type"].startswith("text/html")
    assert got["/app.js"][0] == 200 and got["/app.js"][2]["Content-Type"].startswith("text/javascript")
    assert got["/app.js?v=2"][0] == 200
    for path, (status, body, _) in got.items():
        if path not in ("/", "/index.html", "/app.js", "/app.js?v=2"):
            assert status == 404 and b"SECRET" not in body, path


def test_a_missing_browser_demo_is_said_at_start_and_websockets_still_serve(tmp_path, caplog):
    async def main(root):
        async with serving(FakePipeline(), web_root=root) as server:
            status = (await asyncio.to_thread(http_get, server.port, "/"))[0]
            async with connect(url(server)) as ws:
                await ws.send(json.dumps({"type": "start", "sample_rate": 16000, "format": "f32le"}))
                await ws.send(json.dumps({"type": "stop"}))
                events, _ = await drain(ws)
        return status, events

    with caplog.at_level(logging.WARNING, logger="wavlm_stream.server"):
        status, events = run(main(tmp_path / "not-installed"))
    assert status == 404 and not any(e["type"] == "error" for e in events)
    assert [r.getMessage() for r in caplog.records] == [
        f"the browser demo's files are not in {tmp_path / 'not-installed'}, so / answers 404; "
        "websocket clients are served as usual"]
    caplog.clear()
    (tmp_path / "web").mkdir()
    (tmp_path / "web" / "index.html").write_text("<h1>hi</h1>")
    with caplog.at_level(logging.WARNING, logger="wavlm_stream.server"):
        assert run(main(tmp_path / "web"))[0] == 200
    assert not caplog.records


def test_resolve_static_on_the_real_web_root():
    from stream.server import WEB_ROOT
    assert resolve_static(WEB_ROOT, "/") == WEB_ROOT.resolve() / "index.html"
    assert resolve_static(WEB_ROOT, "/../pyproject.toml") is None
    assert resolve_static(WEB_ROOT, "/%2e%2e/pyproject.toml") is None


def test_origins_same_origin_by_default_and_an_allow_list():
    async def attempt(server, origin):
        headers = {} if origin is None else {"Origin": origin}
        try:
            async with connect(url(server), additional_headers=headers, origin=None) as ws:
                await ws.send(start_msg())
                await ws.send('{"type": "stop"}')
                await drain(ws)
                return 101
        except InvalidStatus as e:
            return e.response.status_code

    async def main():
        async with serving(FakePipeline()) as server:
            own = f"http://127.0.0.1:{server.port}"
            default = [await attempt(server, o) for o in (None, own, "http://evil.example", "null")]
        async with serving(FakePipeline(), allowed_origins=("https://app.example",)) as server:
            listed = [await attempt(server, o) for o in (None, "https://app.example", "http://evil.example")]
        return default, listed

    default, listed = run(main())
    assert default == [101, 101, 403, 403]
    assert listed == [101, 101, 403]


def test_loopback_server_refuses_a_rebound_dns_name():
    """A page on evil.example that rebinds to 127.0.0.1 sends Origin and Host evil.example:PORT."""
    async def attempt(server, host):
        origin = f"http://{host}:{server.port}"
        try:
            async with connect(f"ws://{host}:{server.port}/ws", host="127.0.0.1", port=server.port,
                               additional_headers={"Origin": origin}, origin=None):
                return 101
        except InvalidStatus as e:
            return e.response.status_code

    async def main():
        async with serving(FakePipeline()) as server:
            return [await attempt(server, h) for h in ("rebind.evil.example", "localhost", "127.0.0.1")]

    assert run(main()) == [403, 101, 101]


def test_is_loopback_host():
    from stream.server import is_loopback_host

    for host in ("localhost", "localhost:8765", "127.0.0.1", "127.0.0.1:80", "127.9.9.9:1", "[::1]:8765", "[::1]"):
        assert is_loopback_host(host), host
    for host in ("evil.example", "evil.example:8765", "10.0.0.1:8765", "[::2]:1", "", "localhost.evil.example",
                 "127.0.0.1.evil.example:8765", "0.0.0.0:8765"):
        assert not is_loopback_host(host), host


def test_websocket_on_an_unknown_path_is_404():
    async def main():
        async with serving(FakePipeline()) as server:
            with pytest.raises(InvalidStatus) as e:
                async with connect(url(server, "/nope")):
                    pass
            return e.value.response.status_code

    assert run(main()) == 404


def test_binds_loopback_by_default():
    import argparse
    from stream.server import add_serve_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    config = config_from_args(parser.parse_args([]))
    assert config.host == "127.0.0.1" and config.port == 8765
    assert config_from_args(parser.parse_args(["--host", "0.0.0.0", "--max-sessions", "3"])).limits.max_sessions == 3

    async def main():
        async with serving(FakePipeline()) as server:
            return server._server.sockets[0].getsockname()[0]

    assert run(main()) == "127.0.0.1"


@pytest.mark.parametrize("flags,needle", [
    (["--port", "99999"], "port must be 0-65535, got 99999"),
    (["--max-sessions", "0"], "max_sessions must be >= 1, got 0"),
    (["--idle-timeout-s", "nan"], "idle_timeout_s must be > 0, got nan"),
    (["--max-session-s", "-1"], "max_session_s must be > 0, got -1"),
    (["--max-message-bytes", "0"], "max_message_bytes must be >= 1, got 0"),
])
def test_bad_serve_options_are_one_named_error(flags, needle):
    import argparse

    from stream.cli import UserError
    from stream.server import add_serve_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    with pytest.raises(UserError, match=re.escape(needle)):
        config_from_args(parser.parse_args(flags))


def test_a_port_in_use_fails_start_and_leaves_no_worker_running():
    from stream.server import ServerConfig, SpeechServer

    async def main():
        async with serving(FakePipeline()) as first:
            second = SpeechServer(FakePipeline(), ServerConfig(port=first.port))
            with pytest.raises(OSError):
                await second.start()
            return second.worker

    worker = run(main())
    assert not worker._thread.is_alive()


# -- the real engine ------------------------------------------------------------------


def test_real_engine_concurrent_clients_match_each_audio_run_alone(tiny_pipeline):
    rng = np.random.default_rng(0)
    audios = [(rng.standard_normal(16000 * 3 + 777 * i) * 3000).astype(np.int16) for i in range(3)]

    def alone(audio):
        s = tiny_pipeline.new_stream()
        events = s.feed(audio, 16000) + s.finish()
        return [e.to_dict() for e in events]

    expected = [alone(a) for a in audios]

    async def main():
        async with serving(tiny_pipeline) as server:
            results = await asyncio.gather(*[
                transcribe(server, a, chunk=1600 + 111 * i, pace_s=0.005) for i, a in enumerate(audios)])
            return results, server.worker.max_batch

    results, max_batch = run(main(), timeout=120)
    def strip(events):  # everything but the wall-clock latency
        return [{k: v for k, v in e.items() if k != "latency"} for e in events]

    def latest(events):  # without partials that a newer partial of the same segment supersedes
        return [e for e, nxt in zip(events, events[1:] + [None])
                if not (e["type"] == "partial" and nxt is not None and nxt["type"] == "partial")]

    for exp, (events, code) in zip(expected, results):
        assert code == 1000 and not errors(events)
        assert finals(events) == finals(exp)
        # The server may drop a partial that a newer one replaced before it was sent, nothing else.
        got, want = strip(events), strip(exp)
        it = iter(want)
        assert all(e in it for e in got), "events out of order or not in the solo run"
        assert latest(got) == latest(want)
        assert any(e["type"] == "final" for e in events)
        # Partial latency is stamped by the pipeline and survives the trip.
        assert all(e["latency"] is not None and e["latency"] >= 0 for e in events if e["type"] == "partial")
    assert max_batch > 1


def test_every_session_knows_the_voices_enrolled_at_start():
    """`serve --enrol NAME=FILE` enrols into the pipeline that every session's stream comes from."""
    import soundfile as sf

    from stream import Pipeline
    from stream.cli import build_parser

    assert build_parser().parse_args(["serve", "--enrol", "bdl=x.wav"]).enrol == ["bdl=x.wav"]
    examples = Path(__file__).resolve().parent.parent / "examples"
    pipeline = Pipeline.from_pretrained(None, beam=False)
    pipeline.enrol("bdl", *sf.read(str(examples / "single_speaker.wav"), dtype="float32"))
    audio = (sf.read(str(examples / "two_speakers.wav"), dtype="float32")[0] * 32767).astype(np.int16)

    async def main():
        async with serving(pipeline) as server:
            return await asyncio.gather(transcribe(server, audio, chunk=3200), transcribe(server, audio, chunk=4321))

    for events, code in run(main(), timeout=120):
        assert code == 1000 and not errors(events)
        # The example's reference turns are rh-bdl, pico-gb, rh-bdl, pico-gb (examples/two_speakers.rttm).
        assert [e["speaker"] for e in events if e["type"] == "final"] == ["bdl", "S1", "bdl", "S1"]


EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _pcm16(path: Path) -> np.ndarray:
    import soundfile as sf

    return sf.read(str(path), dtype="int16")[0]


def _enrol_msg(name: str, rate: int = 16000, fmt: str = "pcm_s16le", channels: int = 1) -> str:
    return json.dumps({"type": "enrol", "name": name, "sample_rate": rate, "format": fmt, "channels": channels})


async def _enrol(ws, name: str, audio: np.ndarray, rate: int = 16000, fmt: str = "pcm_s16le") -> None:
    channels = 1 if audio.ndim == 1 else audio.shape[1]
    await ws.send(_enrol_msg(name, rate, fmt, channels))
    await stream_audio(ws, audio, 3000)
    await ws.send(json.dumps({"type": "enrol_end"}))


def test_a_session_enrols_its_own_known_voices_before_start():
    """Two sessions at once over one pipeline: the one that enrols the held-out voice rh-bdl (from
    single_speaker.wav, other sentences; once at 16 kHz PCM16, once as 8 kHz stereo f32, which the
    server resamples) gets a name on that voice's finals; the other, which enrolled nobody, S1 / S2."""
    import soxr

    from stream import Pipeline

    voice, meeting = _pcm16(EXAMPLES / "single_speaker.wav"), _pcm16(EXAMPLES / "two_speakers.wav")
    voice_8k = soxr.resample(voice.astype(np.float32) / 32768, 16000, 8000).astype(np.float32)
    stereo_8k = np.repeat(voice_8k[:, None], 2, axis=1)
    pipeline = Pipeline.from_pretrained(None, beam=False)

    async def main():
        async with serving(pipeline) as server:
            steps = [lambda ws: _enrol(ws, "bdl", voice), lambda ws: _enrol(ws, "bdl8k", stereo_8k, 8000, "f32le")]
            return await asyncio.gather(transcribe(server, meeting, 3200, before=steps), transcribe(server, meeting, 3200))

    (named, code1), (plain, code2) = run(main(), timeout=120)
    assert code1 == code2 == 1000 and not errors(named) and not errors(plain)
    answers = {e["name"]: e["seconds"] for e in named if e["type"] == "enrolled"}
    assert answers == {"bdl": pytest.approx(len(voice) / 16000, abs=0.01),
                       "bdl8k": pytest.approx(len(voice) / 16000, abs=0.01)}
    # The example's reference turns are rh-bdl, pico-gb, rh-bdl, pico-gb (examples/two_speakers.rttm);
    # both enrolments are rh-bdl, so her turns carry one of the two names.
    labels = [e["speaker"] for e in named if e["type"] == "final"]
    assert len(labels) == 4 and labels[0] in answers and labels[2] == labels[0] and labels[1] == labels[3] == "S1"
    assert [e["speaker"] for e in plain if e["type"] == "final"] == ["S1", "S2", "S1", "S2"]


def test_enrolment_mistakes_are_error_events_and_the_session_goes_on(tiny_pipeline):
    from stream import Pipeline
    from stream.server import MAX_ENROL_S, MAX_ENROLMENTS

    voice = _pcm16(EXAMPLES / "single_speaker.wav")
    speech = voice[:40000]                        # 2.5 s: a final when the session goes on
    too_long = np.tile(voice, int(MAX_ENROL_S * 16000 / len(voice)) + 1)
    cases = [  # (steps before start, the one error expected, words of its message)
        ([_enrol_msg("S1")], "bad_enrolment", "unenrolled voice's label"),
        (['{"type": "enrol_end"}'], "bad_enrolment", "without an enrolment"),
        ([lambda ws: _enrol(ws, "quiet", np.zeros(48000, np.int16))], "bad_enrolment", "no speech found"),
        ([lambda ws: _enrol(ws, "long", too_long)], "bad_enrolment", "longer than 30 s"),
    ]

    async def main():
        async with serving(Pipeline.from_pretrained(None, beam=False)) as server:
            out = [await transcribe(server, speech, 3200, before=steps) for steps, _, _ in cases]
            # Out of order: a second enrol while one is open, a start while one is open (refused; the
            # enrolment, which had no audio, then fails), an enrol after start.
            async with connect(url(server)) as ws:
                for message in [_enrol_msg("a"), _enrol_msg("b"), start_msg(), '{"type": "enrol_end"}',
                                start_msg(), _enrol_msg("c"), '{"type": "stop"}']:
                    await ws.send(message)
                out.append(await drain(ws))
            # One session may send at most MAX_ENROLMENTS recordings (each costs a forward).
            async with connect(url(server)) as ws:
                for _ in range(MAX_ENROLMENTS + 1):
                    await ws.send(_enrol_msg("x"))
                    await ws.send('{"type": "enrol_end"}')
                await ws.send('{"type": "stop"}')
                many = await drain(ws)
        async with serving(tiny_pipeline) as server:     # no speaker tracking
            out.append(await transcribe(server, speech, 3200, before=[_enrol_msg("a")]))
        async with serving(FakePipeline()) as server:    # a pipeline that cannot enrol voices
            out.append(await transcribe(server, speech, 3200, before=[_enrol_msg("a")]))
        return out, many

    results, (many, many_code) = run(main(), timeout=180)
    for (events, code), (_, expected, words) in zip(results, cases):
        errs = [e for e in events if e["type"] == "error"]
        assert code == 1000 and [e["code"] for e in errs] == [expected] and words in errs[0]["message"], errs
        assert finals(events), words                  # the session went on
    events, code = results[len(cases)]
    assert code == 1000 and not any(e["type"] == "enrolled" for e in events)
    errs = [e for e in events if e["type"] == "error"]
    expected = [("bad_enrolment", "the enrolment of 'a' is still open"), ("bad_enrolment", "end the enrolment of 'a'"),
                ("bad_enrolment", "no audio came between enrol and enrol_end for 'a'"), ("already_started", "enrol known voices before")]
    assert [e["code"] for e in errs] == [code for code, _ in expected]
    assert all(e["message"].startswith(words) for e, (_, words) in zip(errs, expected)), errs
    messages = [e["message"] for e in many if e["type"] == "error"]
    assert many_code == 1000 and len(messages) == MAX_ENROLMENTS + 2
    assert all(m.startswith("no audio came") for m in messages[:MAX_ENROLMENTS])
    assert messages[MAX_ENROLMENTS:] == [f"more than {MAX_ENROLMENTS} enrolments in one session",
                                         'enrol_end without an enrolment ({"type": "enrol", ...})']
    for (events, code), words in zip(results[len(cases) + 1:], ["needs speaker tracking", "cannot enrol voices"]):
        errs = [e for e in events if e["type"] == "error"]
        assert code == 1000 and [e["code"] for e in errs] == ["bad_enrolment"] and words in errs[0]["message"]


def test_wavlm_stream_serve_command(tmp_path):
    """The CLI entry point: serves the page and the websocket, stops cleanly on SIGTERM."""
    import os
    import signal
    import subprocess
    import sys

    from checkpoints import write_ctc_checkpoint

    ckpt = write_ctc_checkpoint(tmp_path / "ckpt", seed=1)
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from stream.cli import main; sys.exit(main())", "serve",
         "--model", str(ckpt), "--port", "0", "--no-speakers", "--no-beam", "--threads", "1",
         "--max-sessions", "2"],
        cwd=root, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(root)})
    try:
        port = None
        for line in proc.stderr:
            match = re.search(r"serving http://127\.0\.0\.1:(\d+)/", line)
            if match:
                port = int(match.group(1))
                break
        assert port, "the server never said where it listens"
        status, body, _ = http_get(port, "/")
        assert status == 200 and b"app.js" in body

        async def client():
            async with connect(f"ws://127.0.0.1:{port}/ws") as ws:
                await ws.send(start_msg())
                await stream_audio(ws, (np.random.default_rng(0).standard_normal(32000) * 3000).astype(np.int16),
                                   3200)
                await ws.send('{"type": "stop"}')
                return await drain(ws)

        events, code = run(client())
        assert code == 1000 and not errors(events) and events
        # A second server on the same port: one line naming the port and the reason, no traceback.
        clash = subprocess.run([sys.executable, "-m", "stream.cli", "serve", "--model", str(ckpt), "--port", str(port),
                                "--no-speakers", "--threads", "1"], cwd=root, capture_output=True, text=True,
                               timeout=120)
        assert clash.returncode == 2 and "Traceback" not in clash.stderr, clash.stderr
        assert f"error: cannot listen on 127.0.0.1 port {port}: Address already in use" in clash.stderr
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        proc.wait()
