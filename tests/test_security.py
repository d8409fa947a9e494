"""Adversarial tests of the server's security rules (beyond tests/test_server.py).

* Static files: no path, however encoded, reaches a file outside web/ (a property over
  generated paths, and raw HTTP requests that http.client would normalise).
* Origins: the allow-list and the same-origin default match exactly, not by prefix,
  substring or a look-alike host.
* Caps: the message cap holds for text, fragmented and compressed messages (a deflate
  bomb); the session cap holds under a connection storm and on every websocket path;
  error messages do not echo a client's huge values back; half-open handshakes do not
  block real clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from fake_pipeline import FakePipeline, encode
from stream.server import CONTENT_TYPES, resolve_static
from ws_helpers import drain, errors, finals, run, serving, start_msg, transcribe, url

SECRET = b"TOP-SECRET-CONTENT"


@pytest.fixture(scope="module")
def web_tree(tmp_path_factory):
    """web/ with a page, a nested file, a hidden file and links; secrets beside and above it."""
    base = tmp_path_factory.mktemp("sec")
    root = base / "web"
    (root / "sub").mkdir(parents=True)
    (root / "index.html").write_text("<h1>ok</h1>")
    (root / "app.js").write_text("ok()")
    (root / "sub" / "x.css").write_text("b{}")
    (root / ".env.json").write_bytes(SECRET)
    (base / "secret.js").write_bytes(SECRET)
    (base / "web2").mkdir()
    (base / "web2" / "a.js").write_bytes(SECRET)          # a sibling whose name starts like the root
    (root / "out.js").symlink_to(base / "secret.js")
    (root / "dirlink").symlink_to(base / "web2")
    return root


# -- static files ----------------------------------------------------------------------

SEGMENTS = st.sampled_from(["..", ".", "", "%2e%2e", "%2E%2e", "%252e%252e", ".%2e", "%2e.", "..%2f", "..%5c",
                            "..\\", "%c0%ae%c0%ae", "\uff0e\uff0e", "app.js", "index.html", "sub", "x.css",
                            "secret.js", "web2", "a.js", ".env.json", "out.js", "dirlink", "%00", "~", "web",
                            "?", "#", ";", "%3f", "%2f", "%5c"])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(SEGMENTS, max_size=6), st.sampled_from(["/", "//", "/./", ""]))
def test_no_generated_path_escapes_the_web_root(web_tree, segments, lead):
    target = resolve_static(web_tree, lead + "/".join(segments))
    if target is not None:
        root = web_tree.resolve()
        assert target.is_relative_to(root) and target.is_file()
        assert target.suffix in CONTENT_TYPES
        assert SECRET not in target.read_bytes()
        assert not any(p.startswith(".") for p in target.relative_to(root).parts)


def raw_http(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        chunks = []
        with contextlib.suppress(socket.timeout, ConnectionResetError):
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks)


@pytest.mark.parametrize("target", [
    b"/../secret.js", b"/..%2fsecret.js", b"/%2e%2e/secret.js", b"/%2e%2e%2fsecret.js", b"/sub/../../secret.js",
    b"/%252e%252e/secret.js", b"/..%5csecret.js", b"/..\\secret.js", b"/%c0%ae%c0%ae/secret.js",
    b"/out.js", b"/dirlink/a.js", b"/.env.json", b"/%2eenv.json", b"/../web2/a.js", b"/sub/%2e%2e/%2e%2e/secret.js",
    b"http://127.0.0.1/../secret.js", b"http://evil.example/../secret.js", b"*", b"secret.js",
    b"/" + b"../" * 50 + b"etc/passwd", b"/%00../secret.js", b"/index.html%00.js",
])
def test_raw_traversal_requests_get_no_secret(web_tree, target):
    async def main():
        async with serving(FakePipeline(), web_root=web_tree) as server:
            response = await asyncio.to_thread(
                raw_http, server.port, b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            ok = await transcribe(server, encode(["alpha"]))    # and the server still serves
            return response, ok

    response, (events, code) = run(main())
    assert SECRET not in response
    assert not response.startswith(b"HTTP/1.1 200"), response[:200]
    assert finals(events) == ["alpha"] and code == 1000


def test_static_responses_are_not_sniffable_and_allowed_pages_still_work(web_tree):
    async def main():
        async with serving(FakePipeline(), web_root=web_tree) as server:
            return [await asyncio.to_thread(raw_http, server.port,
                                            b"GET " + p + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                    for p in (b"/", b"/sub/x.css", b"/app.js?x=../../secret.js")]

    for response in run(main()):
        head = response.split(b"\r\n\r\n", 1)[0].lower()
        assert head.startswith(b"http/1.1 200") and b"x-content-type-options: nosniff" in head


# -- origins -----------------------------------------------------------------------------


async def _attempt(server, origin: str | None, host: str | None = None, path: str = "/ws") -> int:
    headers = {} if origin is None else {"Origin": origin}
    uri = url(server, path) if host is None else f"ws://{host}:{server.port}{path}"
    try:
        kwargs = {}
        if host is not None:   # connect to loopback, but say Host: <host> (what a rebound DNS name gives)
            kwargs["host"], kwargs["port"] = "127.0.0.1", server.port
        async with connect(uri, additional_headers=headers, origin=None, **kwargs) as ws:
            await ws.close()
            return 101
    except InvalidStatus as e:
        return e.response.status_code


def test_allow_list_matches_exactly():
    allowed = ("https://app.example", "http://localhost:3000")

    async def main():
        async with serving(FakePipeline(), allowed_origins=allowed) as server:
            cases = {
                "https://app.example": 101, "https://app.example/": 101, "http://localhost:3000": 101,
                "https://app.example.evil.com": 403, "https://evil-app.example": 403, "https://app.exampl": 403,
                "http://app.example": 403, "https://app.example:8443": 403, "http://localhost:3001": 403,
                "http://localhost": 403, "null": 403, "": 403, "https://app.example@evil.com": 403,
                "https://evil.com/https://app.example": 403, "file://": 403,
            }
            got = {o: await _attempt(server, o) for o in cases}
            vosk = {o: await _attempt(server, o, path=p) for o in ("https://evil.com",) for p in ("/vosk", "/")}
            return cases, got, vosk

    cases, got, vosk = run(main())
    assert got == cases
    assert set(vosk.values()) == {403}      # every websocket path checks the origin


def test_same_origin_default_is_exact():
    async def main():
        async with serving(FakePipeline()) as server:
            p = server.port
            cases = {
                f"http://127.0.0.1:{p}": 101, f"https://127.0.0.1:{p}": 101,
                f"http://127.0.0.1:{p}.evil.com": 403, f"http://127.0.0.1:{p + 1}": 403,
                f"http://127.0.0.1:{p}@evil.com": 403, f"ws://127.0.0.1:{p}": 403, "http://127.0.0.1": 403,
                f"http://evil.com:{p}": 403, "null": 403,
            }
            return cases, {o: await _attempt(server, o) for o in cases}

    cases, got = run(main())
    assert got == cases


def test_dns_rebinding_host_is_refused_on_a_loopback_server():
    """A page on a DNS name rebound to 127.0.0.1 sends Origin and Host both naming that name:
    same-origin by the headers, but a loopback-bound server must refuse a non-loopback Host."""
    async def main():
        async with serving(FakePipeline()) as server:
            return await _attempt(server, f"http://rebind.evil.example:{server.port}", host="rebind.evil.example")

    assert run(main()) == 403


# -- caps ----------------------------------------------------------------------------------


def test_text_fragmented_and_compressed_messages_obey_the_size_cap():
    cap = 20000

    async def big_text(ws):
        await ws.send(json.dumps({"type": "x" * (cap * 2)}))

    async def fragments(ws):
        await ws.send(bytes(4000) for _ in range(20))       # one 80 kB message in 20 frames

    async def deflate_bomb(ws):
        await ws.send(" " * (cap * 500))                     # 10 MB of spaces: ~10 kB compressed

    async def main():
        out = {}
        async with serving(FakePipeline(), max_message_bytes=cap) as server:
            for name, attack in [("text", big_text), ("fragments", fragments), ("deflate", deflate_bomb)]:
                async with connect(url(server), max_size=None, compression="deflate") as ws:
                    await ws.send(start_msg())
                    with contextlib.suppress(ConnectionClosed):
                        await attack(ws)
                    out[name] = await drain(ws)
            out["after"] = await transcribe(server, encode(["echo"]))
            return out

    out = run(main())
    for name in ("text", "fragments", "deflate"):
        events, code = out[name]
        assert code == 1009, (name, code)
    events, code = out["after"]
    assert finals(events) == ["echo"] and code == 1000
    assert len(zlib.compress(b" " * (20000 * 500))) < 20000   # the bomb really was under the cap on the wire


def test_session_cap_holds_under_a_connection_storm():
    cap = 4

    async def main():
        async with serving(FakePipeline(window_cost_s=0.001), max_sessions=cap) as server:
            peak = 0
            done = asyncio.Event()

            async def watch():
                nonlocal peak
                while not done.is_set():
                    peak = max(peak, len(server.sessions))
                    await asyncio.sleep(0)

            async def client(i):
                path = ["/ws", "/vosk", "/"][i % 3]
                async with connect(url(server, path)) as ws:
                    with contextlib.suppress(ConnectionClosed):   # a refused client is closed at once
                        if path == "/ws":
                            await ws.send(start_msg())
                            await ws.send(encode(["alpha"]).tobytes())
                            await ws.send('{"type": "stop"}')
                        else:
                            await ws.send(encode(["alpha"]).tobytes())
                            await ws.send('{"eof": 1}')
                    return await drain(ws)

            watcher = asyncio.create_task(watch())
            results = await asyncio.gather(*[client(i) for i in range(40)])
            done.set()
            await watcher
            return peak, results, server.stats["server_busy"], server.worker.job_count

    peak, results, busy, jobs = run(main())
    assert peak <= cap
    refused = [r for r in results if r[1] == 1013]
    served = [r for r in results if r[1] == 1000]
    assert len(refused) + len(served) == 40 and busy == len(refused) and served
    assert all([e.get("code") for e in r[0]] == ["server_busy"] for r in refused)
    assert jobs == 0


def test_error_messages_do_not_echo_huge_values():
    """A bad value is named but cut short in the error event, so a client cannot make the
    server hold (and send back) copies of its largest messages."""
    huge = "x" * 50000

    async def main():
        async with serving(FakePipeline()) as server:
            async with connect(url(server)) as ws:
                for message in ({"type": huge}, {"type": "start", "sample_rate": huge},
                                {"type": "start", "sample_rate": 16000, "format": huge},
                                {"type": "start", "sample_rate": 16000, "channels": huge},
                                {"type": "start", "sample_rate": int("9" * 4000)}):
                    await ws.send(json.dumps(message))
                await ws.send('{"type": "stop"}')
                return await drain(ws)

    events, _ = run(main())
    assert errors(events) == ["unknown_type", "bad_sample_rate", "bad_format", "bad_channels", "bad_sample_rate"]
    assert all(len(e["message"]) < 500 for e in events)


def test_half_open_handshakes_do_not_block_real_clients():
    """Slowloris: many connections that send half a handshake and hang; they are not sessions
    and a real client is served meanwhile."""
    async def main():
        async with serving(FakePipeline(), max_sessions=4) as server:
            hangers = []
            for i in range(30):
                reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
                writer.write(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"[: 10 + i])
                hangers.append(writer)
            await asyncio.sleep(0.1)
            sessions_while_hanging = len(server.sessions)
            ok = await transcribe(server, encode(["bravo", "", "charlie"]))
            for w in hangers:
                w.transport.abort()
            return sessions_while_hanging, ok

    sessions, (events, code) = run(main())
    assert sessions == 0
    assert finals(events) == ["bravo", "charlie"] and code == 1000
