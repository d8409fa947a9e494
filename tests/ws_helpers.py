"""Shared pieces of the websocket tests: a server on a free loopback port, clients, scripts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import fields

import numpy as np
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from stream.server import ServerConfig, ServerLimits, SpeechServer

LIMIT_FIELDS = {f.name for f in fields(ServerLimits)}


def run(coro, timeout: float = 60.0):
    async def guarded():
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(guarded())


@contextlib.asynccontextmanager
async def serving(pipeline, **options):
    limits = ServerLimits(**{k: v for k, v in options.items() if k in LIMIT_FIELDS})
    rest = {k: v for k, v in options.items() if k not in LIMIT_FIELDS}
    server = SpeechServer(pipeline, ServerConfig(port=0, limits=limits, **rest))
    async with server:
        yield server


def url(server, path: str = "/ws") -> str:
    return f"ws://127.0.0.1:{server.port}{path}"


async def drain(ws) -> tuple[list[dict], int | None]:
    """Every message until the server closes; and the close code."""
    out = []
    try:
        async for message in ws:
            out.append(json.loads(message))
    except ConnectionClosed:
        pass
    return out, ws.close_code


async def until(condition, timeout: float) -> bool:
    """Whether condition() became true within timeout seconds (polled every 10 ms)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def settled(server, timeout: float = 3.0) -> bool:
    """Whether the server freed every session (they close just after the client sees the close)."""
    return await until(lambda: not (server.sessions or server.worker.job_count), timeout)


def start_msg(rate: int = 16000, fmt: str = "pcm_s16le", channels: int = 1) -> str:
    return json.dumps({"type": "start", "sample_rate": rate, "format": fmt, "channels": channels})


async def stream_audio(ws, audio: np.ndarray, chunk: int, pace_s: float = 0.0) -> None:
    for i in range(0, len(audio), chunk):
        await ws.send(audio[i:i + chunk].tobytes())
        await asyncio.sleep(pace_s)


async def transcribe(server, audio: np.ndarray, chunk: int = 1234, pace_s: float = 0.0, path: str = "/ws",
                     before=()):
    """Start, stream `audio`, stop; every message back and the close code. `before`: text messages, or
    coroutine functions of the socket, sent before the start (enrolments)."""
    async with connect(url(server, path)) as ws:
        with contextlib.suppress(ConnectionClosed):  # the server may close first (errors, limits)
            for step in before:
                await (step(ws) if callable(step) else ws.send(step))
            await ws.send(start_msg())
            await stream_audio(ws, audio, chunk, pace_s)
            await ws.send(json.dumps({"type": "stop"}))
        return await drain(ws)


def finals(events: list[dict]) -> list[str]:
    return [e["text"] for e in events if e["type"] == "final"]


def errors(events: list[dict]) -> list[str]:
    return [e["code"] for e in events if e["type"] == "error"]


SCRIPTS = [
    ["alpha", "bravo", "", "charlie"],
    ["delta", "", "echo", "foxtrot", ""],
    ["golf", "hotel", "alpha"],
    ["bravo", "", "", "bravo", "delta", "", "echo"],
    ["hotel"],
]


def expected_finals(script: list[str]) -> list[str]:
    out, cur = [], []
    for w in script + [""]:
        if w:
            cur.append(w)
        elif cur:
            out.append(" ".join(cur))
            cur = []
    return out
