"""Fuzz the websocket server over loopback while well-behaved clients use it.

A server process (bench/serverproc.py: ``SpeechServer`` as ``wavlm-stream serve`` runs it,
tiny random-weight model by default) gets at least ``--messages`` random and mutated
protocol messages from ``--fuzzers`` concurrent fuzzing clients, on every websocket path
(/ws native, /vosk, / ), plus raw TCP connections that send broken handshakes and broken
websocket frames. Meanwhile well-behaved clients stream known audio (speech-like noise, and the recordings in
examples/ at 16 and 44.1 kHz), again and again; each
of their sessions must end with close 1000, no error event, and finals exactly equal to
those of the same audio run alone through the same pipeline in this process.

What the fuzzers send (each connection a random mix, then stop / eof / close / abort / silence):
valid and mutated start and Vosk config messages (fields deleted, retyped, set to random
JSON, extra keys, byte-level flips / insertions / truncations of the JSON text), random
JSON values (deep nesting, huge numbers, long strings), random unicode text, binary frames
of random bytes and random lengths (odd, empty, over the message cap), valid PCM of random
formats and rates, float audio with NaN / inf / huge values, audio before start, a second
start, stop and eof at random points.

Printed: messages sent by kind, error events by code, close codes, raw connections,
server crashes (the process died or stopped answering), tracebacks in the server's log,
well-behaved sessions intact, open sessions at the end, server RSS. Exit status 0 only
when there were no crashes, every well-behaved session was intact and no session was left.

    python bench/fuzz_server.py                          # 10,000 messages, tiny model
    python bench/fuzz_server.py --messages 50000 --fuzzers 12 --seed 3
    python bench/fuzz_server.py --model bundled          # the bundled model (model/default)
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import random
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from serverproc import PipelineSpec, ServerProcess, build_pipeline  # noqa: E402

RATES = [8000, 11025, 16000, 22050, 32000, 44100, 48000, 96000]
FORMATS = ["pcm_s16le", "f32le"]


# -- message generators -------------------------------------------------------------


def random_json(r: random.Random, depth: int = 0):
    kinds = ["null", "bool", "int", "bigint", "float", "str", "list", "dict"] if depth < 4 else \
        ["null", "bool", "int", "float", "str"]
    k = r.choice(kinds)
    if k == "null":
        return None
    if k == "bool":
        return r.random() < 0.5
    if k == "int":
        return r.choice([0, 1, -1, 16000, 48000, 7999, 192001, 2**31, -2**63, r.randint(-10**6, 10**6)])
    if k == "bigint":
        return int("9" * r.randint(20, 400))
    if k == "float":
        return r.choice([0.5, -0.0, 1e308, -1e-308, 16000.5, 44100.0, float(r.random() * 1e5)])
    if k == "str":
        return random_text(r, r.randint(0, 40))
    if k == "list":
        return [random_json(r, depth + 1) for _ in range(r.randint(0, 4))]
    return {random_text(r, r.randint(0, 8)): random_json(r, depth + 1) for _ in range(r.randint(0, 4))}


def random_text(r: random.Random, n: int) -> str:
    alphabets = ["abcdefghijklmnopqrstuvwxyz", '{}[]":,0123456789.-eE ', "\x00\x01\x1f\x7f\t\n",
                 "äöüß€漢字🙂\u200b\u202e\ufeff"]
    a = "".join(r.sample(alphabets, r.randint(1, len(alphabets))))
    return "".join(r.choice(a) for _ in range(n))


def valid_start(r: random.Random) -> dict:
    return {"type": "start", "sample_rate": r.choice(RATES), "format": r.choice(FORMATS),
            "channels": r.choice([1, 1, 2])}


def valid_enrol(r: random.Random) -> dict:
    """A known voice's enrolment (before start) or its end: a speaker-tracking model learns the voice."""
    if r.random() < 0.5:
        return {"type": "enrol_end"}
    return {"type": "enrol", "name": r.choice(["alice", "bo", "S1", "", "a b", "x" * 40]),
            "sample_rate": r.choice(RATES), "format": r.choice(FORMATS), "channels": r.choice([1, 2])}


def mutate_object(r: random.Random, obj: dict) -> dict:
    obj = dict(obj)
    for _ in range(r.randint(1, 3)):
        op = r.choice(["delete", "retype", "extra", "type"])
        if op == "delete" and obj:
            obj.pop(r.choice(list(obj)))
        elif op == "retype" and obj:
            obj[r.choice(list(obj))] = random_json(r)
        elif op == "extra":
            obj[random_text(r, r.randint(1, 8))] = random_json(r)
        else:
            obj["type"] = r.choice(["start", "stop", "Start", "", None, 1, [], {}, "eof", "config", "enrol",
                                    "enrol_end"])
    return obj


def mutate_text(r: random.Random, text: str) -> str:
    chars = list(text)
    for _ in range(r.randint(1, 4)):
        op = r.choice(["flip", "insert", "delete", "truncate", "duplicate"])
        i = r.randrange(len(chars) + 1)
        if op == "flip" and chars:
            chars[min(i, len(chars) - 1)] = r.choice('{}[]":,0x\\ \x00é')
        elif op == "insert":
            chars[i:i] = random_text(r, r.randint(1, 5))
        elif op == "delete" and chars:
            del chars[min(i, len(chars) - 1)]
        elif op == "truncate":
            chars = chars[:i]
        else:
            chars += chars[: r.randint(0, len(chars))]
    return "".join(chars)


def pcm(r: random.Random, fmt: str, channels: int, frames: int, poison: bool = False) -> bytes:
    x = np.random.default_rng(r.getrandbits(32)).standard_normal((frames, channels)) * 0.1
    if fmt == "f32le":
        x = x.astype("<f4")
        if poison and frames:
            x.flat[r.randrange(x.size)] = r.choice([np.nan, np.inf, -np.inf, 3e38])
        return x.tobytes()
    return (x * 32767).astype("<i2").tobytes()


def fuzz_message(r: random.Random, state: dict, max_bytes: int) -> tuple[str, str | bytes]:
    """One message: (kind, payload)."""
    start = state.get("start")
    roll = r.random()
    if roll < 0.06:
        s = valid_start(r)
        state["start"] = state.get("start") or s
        return "start", json.dumps(s)
    if roll < 0.08:
        return "enrol", json.dumps(valid_enrol(r))
    if roll < 0.25:
        base = r.choice([valid_start(r), {"type": "stop"}, {"config": {"sample_rate": r.choice(RATES)}},
                         {"eof": 1}, {"reset": 1}, valid_enrol(r)])
        return "mutated_json", json.dumps(mutate_object(r, base))
    if roll < 0.38:
        base = json.dumps(r.choice([valid_start(r), {"config": {"sample_rate": 16000}}, {"eof": 1}]))
        return "mutated_text", mutate_text(r, base)
    if roll < 0.45:
        return "random_json", json.dumps(random_json(r))
    if roll < 0.50:
        deep = r.randint(100, 100000)
        return "deep_json", r.choice(["[" * deep, "[" * deep + "]" * deep, '{"a":' * deep])
    if roll < 0.55:
        return "random_text", random_text(r, r.randint(0, 300))
    if roll < 0.62:
        n = r.choice([0, 1, 3, r.randint(1, 5000), max_bytes - 1, max_bytes + r.randint(1, 100)])
        return "random_bytes", os.urandom(n)
    if roll < 0.85:
        fmt, ch = (start["format"], start["channels"]) if start else (r.choice(FORMATS), 1)
        frames = r.choice([1, 160, 1600, r.randint(1, 8000)])
        return "audio", pcm(r, fmt, ch, frames, poison=r.random() < 0.2)
    if roll < 0.90:
        return "vosk", json.dumps(r.choice([{"config": random_json(r)}, {"eof": random_json(r)},
                                            {"reset": 1}, {"config": {"sample_rate": random_json(r)}}]))
    if roll < 0.93:
        return "stop", json.dumps({"type": "stop"})
    return "base64_audio", base64.b64encode(pcm(r, "pcm_s16le", 1, 400)).decode()


# -- clients ------------------------------------------------------------------------


class Tally:
    def __init__(self):
        self.sent = Counter()          # by kind
        self.errors = Counter()        # error events by code
        self.replies = Counter()       # other replies by type
        self.closes = Counter()        # close codes seen by fuzzers
        self.connect_failures = Counter()
        self.raw = Counter()

    @property
    def messages(self) -> int:
        return sum(self.sent.values())


async def read_all(ws, tally: Tally) -> None:
    from websockets.exceptions import ConnectionClosed

    try:
        async for message in ws:
            try:
                e = json.loads(message)
            except ValueError:
                tally.replies["not_json"] += 1
                continue
            if isinstance(e, dict) and e.get("type") == "error":
                tally.errors[e.get("code")] += 1
            elif isinstance(e, dict):
                tally.replies[e.get("type") or ("vosk_text" if "text" in e else "vosk_partial")] += 1
    except ConnectionClosed:
        pass


async def fuzz_connection(port: int, r: random.Random, tally: Tally, counter: dict, target: int,
                          max_bytes: int) -> None:
    """One fuzzing connection; counts its messages in ``counter["sent"]`` until ``target``."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidHandshake

    path = r.choice(["/ws", "/ws", "/vosk", "/"])
    try:
        ws = await connect(f"ws://127.0.0.1:{port}{path}", max_size=None, open_timeout=20)
    except (OSError, InvalidHandshake, TimeoutError) as e:
        tally.connect_failures[type(e).__name__] += 1
        await asyncio.sleep(0.05)
        return
    reader = asyncio.create_task(read_all(ws, tally))
    state: dict = {}
    n = r.choice([1, 3, 10, 30, 80])
    try:
        for _ in range(n):
            if counter["sent"] >= target:
                break
            kind, payload = fuzz_message(r, state, max_bytes)
            await ws.send(payload)
            # Counted once sent (a send into a closed connection raises); the fuzzers may
            # overshoot the target by one message each.
            counter["sent"] += 1
            tally.sent[kind] += 1
            if r.random() < 0.3:
                await asyncio.sleep(r.random() * 0.01)
        ending = r.choice(["stop", "eof", "close", "abort", "linger"])
        if ending == "stop":
            await ws.send('{"type": "stop"}')
        elif ending == "eof":
            await ws.send('{"eof": 1}')
        elif ending == "abort":
            ws.transport.abort()
        elif ending == "close":
            await ws.close()
        if ending in ("stop", "eof", "linger"):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0 if ending == "linger" else 10.0):
                    await reader
    except ConnectionClosed:
        pass
    finally:
        if not reader.done():
            reader.cancel()
        await ws.close()
        if ws.close_code is not None:
            tally.closes[ws.close_code] += 1


RAW_PAYLOADS = [
    b"GET / HTTP/1.1\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",  # no key/version
    b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: !!!\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n",
    b"POST /ws HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",            # a TLS ClientHello on a plain port
    b"GET /" + b"A" * 20000 + b" HTTP/1.1\r\n\r\n",             # a very long request line
    b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 500 + b"\r\n",       # many headers
    b"GET /../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n",
    b"\r\n\r\n\r\n",
]
HANDSHAKE = (b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def bad_frame(r: random.Random) -> bytes:
    """A websocket frame that breaks the framing rules (or random bytes after a good handshake)."""
    mask = os.urandom(4)

    def frame(first: int, payload: bytes, masked: bool = True) -> bytes:
        n = len(payload)
        head = bytes([first]) + (bytes([(0x80 if masked else 0) | n]) if n < 126 else
                                 bytes([(0x80 if masked else 0) | 126]) + n.to_bytes(2, "big"))
        body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload)) if masked else payload
        return head + (mask if masked else b"") + body

    return r.choice([
        frame(0x81, b"\xff\xfe invalid utf-8"),          # text frame with invalid UTF-8
        frame(0x83, b"reserved opcode"),                   # opcode 3
        frame(0x81, b'{"type":"start"}', masked=False),    # unmasked client frame
        frame(0xF1, b"rsv bits set"),                      # RSV1-3 without an extension
        frame(0x09, b"x" * 200),                           # fragmented / oversized ping
        frame(0x01, b'{"type":') + frame(0x81, b"new message inside a fragmented one"),
        frame(0x80, b"continuation without a start"),
        frame(0x88, b"\x03\xe8" + b"\xff"),                # close with invalid UTF-8 reason
        frame(0x88, b"\x00"),                              # close with a 1-byte payload
        b"\x82\xff" + (2**63 - 1).to_bytes(8, "big") + mask,  # a 9-exabyte binary frame announced
        os.urandom(r.randint(1, 300)),
    ])


async def raw_connection(port: int, r: random.Random, tally: Tally) -> None:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        tally.raw["connect_failed"] += 1
        return
    try:
        if r.random() < 0.5:
            payload = r.choice(RAW_PAYLOADS)
            if r.random() < 0.3:
                payload = payload[: r.randrange(len(payload) + 1)]   # cut short, then hang up
            writer.write(payload)
            tally.raw["http"] += 1
        else:
            writer.write(HANDSHAKE)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await reader.readuntil(b"\r\n\r\n")
            writer.write(bad_frame(r))
            tally.raw["frame"] += 1
        await writer.drain()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(r.choice([0.05, 0.5, 3.0])):
                await reader.read(65536)
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.transport.abort()


async def fuzzer(port: int, seed: int, tally: Tally, counter: dict, target: int, max_bytes: int) -> None:
    r = random.Random(seed)
    while counter["sent"] < target:
        if r.random() < 0.1:
            await raw_connection(port, r, tally)
            continue
        await fuzz_connection(port, r, tally, counter, target, max_bytes)


async def good_client(port: int, audio: np.ndarray, rate: int, chunk: int, pace_s: float):
    from websockets.asyncio.client import connect

    events = []
    async with connect(f"ws://127.0.0.1:{port}/ws", max_size=None) as ws:
        await ws.send(json.dumps({"type": "start", "sample_rate": rate, "format": "pcm_s16le", "channels": 1}))

        async def reader():
            async for message in ws:
                events.append(json.loads(message))

        task = asyncio.create_task(reader())
        for i in range(0, len(audio), chunk):
            await ws.send(audio[i:i + chunk].tobytes())
            await asyncio.sleep(pace_s)
        await ws.send('{"type": "stop"}')
        await task
        return events, ws.close_code


def comparable_finals(events: list[dict]) -> list[dict]:
    out = []
    for e in events:
        if e.get("type") == "final":
            e = dict(e)
            e.pop("latency", None)
            out.append(e)
    return out


async def well_behaved(port: int, clips, stop: asyncio.Event, results: list, seed: int) -> None:
    r = random.Random(seed)
    while not stop.is_set() or not results:
        audio, rate, expected = r.choice(clips)
        events, code = await good_client(port, audio, rate, chunk=r.choice([800, 1600, 3200, 4410]),
                                         pace_s=r.choice([0.0, 0.01, 0.03]))
        errors = [e.get("code") for e in events if e.get("type") == "error"]
        got = comparable_finals(events)
        results.append(code == 1000 and not errors and got == expected)
        if not results[-1]:
            print(f"  well-behaved session NOT intact: close {code}, errors {errors}, "
                  f"{len(got)} finals vs {len(expected)} expected", flush=True)


def example_clips() -> list[tuple[np.ndarray, int]]:
    """The repository's example recordings (examples/*.wav, synthetic voices the bundled model
    was not trained on) as int16 mono, one of them also at 44.1 kHz: real speech, so that a
    trained model's finals are not empty."""
    import soundfile as sf
    import soxr

    clips = []
    for path in sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.wav")):
        x, rate = sf.read(str(path), dtype="int16", always_2d=True)
        clips.append((x[:, 0].copy(), rate))
    if clips:
        x, rate = clips[0]
        y = soxr.resample(x.astype(np.float32) / 32768, rate, 44100)
        clips.append(((y * 32767).clip(-32768, 32767).astype(np.int16), 44100))
    return clips


def speech_like(seconds: float, rate: int, seed: int) -> np.ndarray:
    """int16 noise bursts with a syllable-rate envelope and pauses (content does not matter
    to a random model; pauses make segments end)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    step = rate // 5
    env = np.repeat(rng.uniform(0, 1, n // step + 1) * (rng.random(n // step + 1) > 0.3), step)[:n]
    return (rng.standard_normal(n) * env * 6000).clip(-32768, 32767).astype(np.int16)


async def main_async(args, server: ServerProcess, clips) -> tuple[Tally, list[bool], list[dict]]:
    tally = Tally()
    counter = {"sent": 0}
    results: list[bool] = []
    samples: list[dict] = []
    stop = asyncio.Event()
    good = [asyncio.create_task(well_behaved(server.port, clips, stop, results, args.seed * 100 + i))
            for i in range(args.good_clients)]

    async def monitor():
        while not stop.is_set():
            s = await asyncio.to_thread(server.stats)
            if s is None:
                print("  SERVER GONE", flush=True)
                return
            samples.append(s)
            print(f"  {counter['sent']:6d} messages  sessions {s['sessions']:3d}  rss {s['rss_mb']:.0f} MB  "
                  f"good {sum(results)}/{len(results)}", flush=True)
            await asyncio.sleep(args.report_s)

    mon = asyncio.create_task(monitor())
    await asyncio.gather(*[fuzzer(server.port, args.seed * 1000 + i, tally, counter, args.messages,
                                  args.max_message_bytes) for i in range(args.fuzzers)])
    stop.set()
    await asyncio.gather(*good)
    mon.cancel()
    return tally, results, samples


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=10000, help="fuzz messages to send (default 10000)")
    parser.add_argument("--fuzzers", type=int, default=8, help="concurrent fuzzing clients")
    parser.add_argument("--good-clients", type=int, default=3, help="concurrent well-behaved clients")
    parser.add_argument("--model", default="tiny", help="tiny (random weights, default), bundled, or a directory")
    parser.add_argument("--beam", action=argparse.BooleanOptionalAction, default=None,
                        help="beam-search finals (default: on for trained models, off for tiny)")
    parser.add_argument("--max-message-bytes", type=int, default=1 << 16, help="the server's message cap")
    parser.add_argument("--max-sessions", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (server and the alone runs)")
    parser.add_argument("--report-s", type=float, default=5.0, help="progress line every this many seconds")
    parser.add_argument("--objects", action="store_true",
                        help="also print which kinds of live objects in the server grew (a leak hunt)")
    args = parser.parse_args(argv)

    import torch
    torch.set_num_threads(args.threads)
    spec = PipelineSpec(model=args.model, beam=args.beam)
    limits = {"max_message_bytes": args.max_message_bytes, "max_sessions": args.max_sessions,
              "idle_timeout_s": 5.0, "max_session_s": 600.0, "finish_timeout_s": 60.0}
    with ServerProcess(spec, limits, threads=args.threads) as server:
        pipeline = build_pipeline(spec, server.workdir)
        sources = [(speech_like(seconds, rate, seed=args.seed * 10 + i), rate)
                   for i, (rate, seconds) in enumerate([(16000, 3.0), (16000, 5.5), (48000, 4.0), (8000, 6.0)])]
        sources += example_clips()
        clips = []
        for audio, rate in sources:
            s = pipeline.new_stream()
            expected = comparable_finals([e.to_dict() for e in s.feed(audio, rate) + s.finish()])
            clips.append((audio, rate, expected))
        print(f"server pid {server.pid} port {server.port}, model {args.model}; "
              f"{len(clips)} reference clips ({sum(len(c[2]) for c in clips)} finals alone)", flush=True)
        rss_start = server.rss_mb()
        objects_start = server.objects() if args.objects else None
        t0 = time.monotonic()
        tally, results, samples = asyncio.run(main_async(args, server, clips))
        elapsed = time.monotonic() - t0
        alive = server.alive()
        # Sessions close as soon as their clients are gone; a session waiting for its final
        # flush gives up after finish_timeout_s (60 s here): wait that long before judging.
        soon = server.wait_settled(5.0) if alive else None
        stuck = server.sessions() if soon and soon["sessions"] else []
        final = server.wait_settled(70.0) if alive else None
        logs = server.log_counts()
        rss_end = server.rss_mb() if alive else float("nan")
        objects_end = server.objects() if args.objects and alive else None
        rss_trimmed = server.trimmed_rss_mb() if alive else float("nan")

    crashed = not alive or final is None or not final.get("worker_alive", False)
    print()
    print(f"fuzz messages sent        {tally.messages}  in {elapsed:.1f} s")
    for kind, n in tally.sent.most_common():
        print(f"    {kind:22s} {n}")
    print(f"raw TCP connections       {sum(tally.raw.values())}  {dict(tally.raw)}")
    print(f"error events returned     {sum(tally.errors.values())}")
    for code, n in tally.errors.most_common():
        print(f"    {str(code):22s} {n}")
    print(f"other replies             {dict(tally.replies)}")
    print(f"close codes (fuzzers)     {dict(sorted(tally.closes.items()))}")
    print(f"connect failures          {dict(tally.connect_failures)}")
    print(f"server crashes            {int(crashed)}")
    print(f"server tracebacks in log  {logs['tracebacks']} (connection handler failed: {logs['handler_failed']})")
    for kind, n in logs["kinds"].items():
        print(f"    {n:5d} x {kind}")
    print(f"well-behaved sessions     {sum(results)}/{len(results)} intact")
    print(f"open sessions at the end  {None if final is None else final['sessions']} "
          f"(worker jobs {None if final is None else final['jobs']}); 5 s after the clients ended: "
          f"{None if soon is None else soon['sessions']}")
    for d in stuck or []:
        print(f"    still open after 5 s: {json.dumps(d)}")
    print(f"server RSS                {rss_start:.1f} -> {rss_end:.1f} MB "
          f"(peak sampled {max((s['rss_mb'] for s in samples), default=float('nan')):.1f}); "
          f"after gc + malloc_trim: {rss_trimmed:.1f} MB")
    print(f"server counters           {None if final is None else final['counters']}")
    if objects_start and objects_end:
        grew = {k: objects_end[k] - objects_start.get(k, 0) for k in objects_end
                if objects_end[k] - objects_start.get(k, 0) > 100}
        print(f"live objects that grew by > 100 (after gc): {grew or 'none'}")
    ok = not crashed and results and all(results) and soon is not None and soon["sessions"] == 0 \
        and final["sessions"] == 0 and final["jobs"] == 0
    print("RESULT", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
