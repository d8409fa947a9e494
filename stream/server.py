"""``wavlm-stream serve``: the websocket server for many clients and the browser demo.

One port (default 127.0.0.1:8765) serves, through the ``websockets`` library:

* HTTP GET of the files in ``web/`` (``/`` is ``web/index.html``), via the library's
  ``process_request`` hook. Only plain files inside ``web/`` with a known extension are
  served; ``..``, encoded separators, hidden files and symlinks out of the root are 404.
* websockets at ``/ws`` (native protocol, or Vosk when the first message is Vosk-style),
  ``/vosk`` (Vosk protocol) and ``/`` (the path Vosk clients use: Vosk unless the first
  message is a native ``start``). See :mod:`stream.protocol`.

Concurrency: each connection is a :class:`_Session` on the asyncio loop with its own
stream state. Every call into a stream happens in one :class:`stream.worker.InferenceWorker`
thread (round robin over the sessions' queued audio, one batched ``run_pending`` per cycle;
see that module), so the loop never blocks on the model and a stream is never touched by
two threads; only the finals' second pass and beam search, which read what their segment
captured when it closed, run on a second thread beside it (``ServerConfig.finals_thread``).

Isolation: a session's reader stops reading (TCP backpressure) while more than
``max_backlog_s`` of its audio waits for the worker (so keepalive pings never time out a
client: its pong may be stuck behind the audio we hold back; idle_timeout_s finds dead ones); its outgoing events go through a
bounded outbox in which a newer partial replaces an unsent older one, and a client whose
outbox still overflows is closed (1008) without touching the others. A disconnect drops
the session's stream at once. A session whose stream the engine fails on gets an
``internal_error`` and is closed; the others go on.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import itertools
import json
import logging
import os
import signal
import time
import urllib.parse
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State
from websockets.http11 import Request, Response

from decoders.events import ErrorEvent, Partial
from stream.audio import TARGET_RATE, AudioFormatError, AudioIntake, decode_pcm_bytes, to_float_mono
from stream.protocol import (
    SAMPLE_BYTES,
    Enrol,
    EnrolEnd,
    ProtocolError,
    Start,
    Stop,
    VoskConfig,
    VoskEof,
    VoskReset,
    check_audio_bytes,
    detect_dialect,
    parse_native,
    parse_vosk,
)
from stream.vosk import VoskReplies
from stream.worker import InferenceWorker, WorkerResult, one_intra_op_thread

#: Longest recording a client may send to enrol one voice (seconds; a few are enough), and how
#: many recordings one session may send (names can be enrolled again, each one costs a forward).
MAX_ENROL_S = 30.0
MAX_ENROLMENTS = 32

log = logging.getLogger("wavlm_stream.server")

WEB_ROOT = Path(__file__).resolve().parent.parent / "web"
#: Websocket paths: "/ws" native (or Vosk by first message), "/vosk" Vosk, "/" as Vosk servers.
WS_PATHS = ("/ws", "/vosk", "/")
#: The only file types the static server hands out.
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".json": "application/json",
    ".wav": "audio/wav",
}


@dataclass(frozen=True)
class ServerLimits:
    """Per-client limits. All enforced; see the module docstring for what happens at each."""
    max_message_bytes: int = 1 << 20   # largest websocket message (bigger: close 1009)
    max_session_s: float = 3600.0      # wall-clock seconds since connect, and seconds of audio
    max_sessions: int = 16             # websocket sessions at once; more get error + close 1013
    idle_timeout_s: float = 30.0       # no message for this long: error, flush finals, close
    max_backlog_s: float = 10.0        # audio waiting for the worker before reading pauses
    max_outbox: int = 256              # unsent messages before a non-reading client is closed
    slice_s: float = 1.0               # audio per session per worker cycle (fairness)
    finish_timeout_s: float = 60.0     # longest wait for the final flush before closing anyway
    # Keepalive pings keep NAT and proxies from dropping a quiet connection. They never time a
    # client out: while its reading is paused for backpressure, its pong waits unread behind
    # its own audio, and a client that streams faster than real time would be dropped. Dead
    # clients are found by idle_timeout_s instead (the idle clock runs whenever we read).
    ping_interval_s: float | None = 20.0

    def __post_init__(self) -> None:
        for name in ("max_message_bytes", "max_sessions", "max_outbox"):
            if not getattr(self, name) >= 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_session_s", "idle_timeout_s", "max_backlog_s", "slice_s", "finish_timeout_s"):
            if not getattr(self, name) > 0:     # also NaN
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.ping_interval_s is not None and not self.ping_interval_s > 0:
            raise ValueError(f"ping_interval_s must be > 0 or None, got {self.ping_interval_s}")


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"            # loopback by default; --host 0.0.0.0 to bind wider
    port: int = 8765                   # 0: any free port (tests)
    web_root: Path = WEB_ROOT
    # Origins allowed to open a websocket. None: same origin only (the Origin's host equals
    # the Host header). "*" allows any. Clients that send no Origin (not browsers) are allowed.
    allowed_origins: tuple[str, ...] | None = None
    limits: ServerLimits = field(default_factory=ServerLimits)
    batching: bool = True              # one run_pending over all ready streams (False: one per stream)
    # Finals (each closed segment's second pass and beam search) on their own thread beside the
    # inference thread, so they do not hold back other sessions' partials (stream/worker.py).
    # False: inside the inference cycle, as before 2026-12-07.
    finals_thread: bool = True
    vosk_sample_rate: int = 16000      # Vosk clients that send audio without a config

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0-65535, got {self.port}")


# -- static files and origins ----------------------------------------------------------


def resolve_static(web_root: Path, url_path: str) -> Path | None:
    """The file under ``web_root`` that ``url_path`` names, or None when it must not be served.

    Percent-decoding happens once; any "..", ".", empty or hidden segment, backslash or NUL is
    refused before touching the file system, and the resolved path (symlinks followed) must
    still lie inside the root.
    """
    path = urllib.parse.unquote(url_path.split("?", 1)[0].split("#", 1)[0])
    if not path.startswith("/") or "\\" in path or "\x00" in path:
        return None
    rel = path[1:] or "index.html"
    if any(part in ("", ".", "..") or part.startswith(".") for part in rel.split("/")):
        return None
    root = web_root.resolve()
    target = (root / rel).resolve()
    if not target.is_relative_to(root) or not target.is_file() or target.suffix not in CONTENT_TYPES:
        return None
    return target


def origin_allowed(headers: Headers, allowed: tuple[str, ...] | None, loopback: bool = False) -> bool:
    """Whether a websocket handshake may go on (see ServerConfig.allowed_origins).

    Default (no allow list): a browser's Origin must be the page's own origin (its host:port
    equals the Host header) and, on a loopback-bound server (``loopback``), the Host must be a
    loopback name too, or a page on a DNS name that rebinds to 127.0.0.1 (Origin and Host
    both evil.example:PORT) would pass. Clients that send no Origin (not browsers) may connect.
    """
    origin = headers.get("Origin")
    if origin is None:
        return True
    if allowed is not None:
        return "*" in allowed or origin.rstrip("/") in {a.rstrip("/") for a in allowed}
    parsed = urllib.parse.urlsplit(origin)
    host = headers.get("Host", "")
    if loopback and not is_loopback_host(host):
        return False
    return parsed.scheme in ("http", "https") and parsed.netloc.lower() == host.lower()


def is_loopback_host(host_header: str) -> bool:
    """Whether a Host header ("name", "name:port", "[v6]:port") names this machine's loopback."""
    name = urllib.parse.urlsplit("//" + host_header).hostname or ""
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _is_loopback_ip(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# -- audio messages --------------------------------------------------------------------


def _decode_audio(data: bytes, fmt: str, channels: int) -> np.ndarray:
    """One binary message as samples, (n,) or (n, channels) in the client's format.

    Checked here, per message, with the engine's own rules (``to_float_mono``): a bad message
    gets its own error event and never reaches the worker, where it could spoil the small
    messages joined with it into one engine call.
    """
    check_audio_bytes(data, SAMPLE_BYTES[fmt] * channels)
    try:
        samples = decode_pcm_bytes(data, fmt, channels)
        to_float_mono(samples)
    except AudioFormatError as e:
        raise ProtocolError("bad_audio", str(e)) from None
    return samples


def _voice_embedding(pipeline, audio_16k: np.ndarray) -> np.ndarray:
    """A session's enrolment, on the server's enrolment thread. Every recording has another length,
    so, as for the finals' second pass, without oneDNN there (it keeps state per shape) and with
    glibc returning large freed buffers to the OS (150 enrolments of 1.5-15 s of the bundled model in
    one process: RSS +77 MB without it, +43 MB with it, 36 of them in the first 50)."""
    from model.linear import without_onednn
    from stream.final_pass import return_large_buffers_to_the_os

    return_large_buffers_to_the_os()
    with without_onednn():
        return pipeline.voice_embedding(audio_16k, TARGET_RATE)


# -- sessions --------------------------------------------------------------------------


@dataclass(eq=False)
class _Recording:
    """A client's enrolment while its audio arrives: the enrol message, the audio at 16 kHz mono."""
    enrol: Enrol
    intake: AudioIntake                  # resamples as the frames come, so what is kept stays small
    pieces: list[np.ndarray] = field(default_factory=list)


class _Session:
    """One websocket connection: reads messages, feeds the worker, writes events."""

    def __init__(self, server: "SpeechServer", ws: ServerConnection, session_id: int):
        self.server = server
        self.ws = ws
        self.id = session_id
        self.limits = server.config.limits
        self.loop = asyncio.get_running_loop()
        path = urllib.parse.urlsplit(ws.request.path).path if ws.request else "/ws"
        self.path = path
        self.dialect: str | None = "vosk" if path == "/vosk" else None
        self.start: Start | None = None          # native: the announced audio format
        self.vosk_rate: int | None = None        # vosk: the configured sample rate
        self.opened = False                      # a worker job exists
        self.audio_s = 0.0                       # seconds of audio received
        self.backlog_s = 0.0                     # seconds of audio queued at the worker
        self.backlog_ok = asyncio.Event()
        self.backlog_ok.set()
        self.finished = asyncio.Event()          # the worker flushed the stream (or failed)
        self.outbox: deque[tuple[str, bool]] = deque()   # (text, is_partial)
        self.outbox_ready = asyncio.Event()
        self.close_after_send: tuple[int, str] | None = None
        self.vosk = VoskReplies()
        self.dead = False                        # connection gone or being closed by us
        # native, before start: known voices (name -> voice embedding), the enrolment being
        # recorded and its audio, and one recorded in full that is waiting to be learnt.
        self.enrolled: dict[str, np.ndarray] = {}
        self.recording: _Recording | None = None   # the enrolment being recorded
        self.enrol_due: tuple[str, np.ndarray] | None = None
        self.enrol_dropped = False               # an over-long enrolment: its frames until enrol_end are ignored
        self.enrolments = 0                      # enrol messages accepted so far

    # Outgoing ------------------------------------------------------------------------

    def send(self, text: str, *, partial: bool = False) -> None:
        """Queue a message. A partial replaces an unsent partial; overflow closes the client."""
        if self.dead:
            return
        if partial and self.outbox and self.outbox[-1][1]:
            self.outbox[-1] = (text, True)
        else:
            self.outbox.append((text, partial))
        if len(self.outbox) > self.limits.max_outbox:
            log.warning("session %d: client is not reading; closing it", self.id)
            self.server.stats["slow_client"] += 1
            self.outbox.clear()
            self.abort(1008, "slow_client: events not read")
            return
        self.outbox_ready.set()

    def send_error(self, code: str, message: str) -> None:
        self.send(ErrorEvent(code, message).to_json())

    def close_when_sent(self, code: int = 1000, reason: str = "") -> None:
        self.close_after_send = (code, reason)
        self.outbox_ready.set()

    def abort(self, code: int, reason: str) -> None:
        """Close now, dropping queued output (misbehaving client or engine failure)."""
        self.dead = True
        self.server.worker.close(self.id)
        self.finished.set()
        self.backlog_ok.set()
        self.close_task = asyncio.ensure_future(self.ws.close(code, reason[:120]))  # keep a reference

    async def send_loop(self) -> None:
        try:
            while True:
                await self.outbox_ready.wait()
                self.outbox_ready.clear()
                while self.outbox and not self.dead:
                    text, _ = self.outbox.popleft()
                    await self.ws.send(text)
                if self.close_after_send is not None and not self.outbox and not self.dead:
                    self.dead = True
                    await self.ws.close(*self.close_after_send)
                    return
                if self.dead:
                    return
        except ConnectionClosed:
            self.dead = True

    # Worker results (on the loop) -----------------------------------------------------

    def deliver_threadsafe(self, result: WorkerResult) -> None:
        try:
            self.loop.call_soon_threadsafe(self.on_result, result)
        except RuntimeError:  # loop closed: the server is shutting down
            pass

    def on_result(self, result: WorkerResult) -> None:
        self.backlog_s = max(0.0, self.backlog_s - result.consumed_s)
        if self.backlog_s <= self.limits.max_backlog_s:
            self.backlog_ok.set()
        if self.dead:  # nothing can be sent any more, but run() may be waiting for the flush
            if result.finished or result.fatal is not None:
                self.finished.set()
            return
        if self.dialect == "vosk":
            self._vosk_result(result)
        else:
            for event in result.events:
                self.send(event.to_json(), partial=isinstance(event, Partial))
        if result.fatal is not None:
            self.server.stats["internal_error"] += 1
            self.send(result.fatal.to_json())
            self.finished.set()
            self.close_when_sent(1011, "internal error")
        elif result.finished:
            self.finished.set()

    def _vosk_result(self, result: WorkerResult) -> None:
        for event in result.events:
            if isinstance(event, ErrorEvent):
                self.send(event.to_json())
            else:
                self.vosk.observe(event)
        for tag in result.done_tags:
            # "audio": one reply per audio message; "eof" / "reset": the final result.
            self.send(self.vosk.reply_to_audio() if tag == "audio" else self.vosk.reply_final())

    # Incoming ------------------------------------------------------------------------

    def _open_job(self) -> None:
        if not self.opened:
            self.server.worker.open(self.id, self.deliver_threadsafe, self.enrolled or None)
            self.opened = True

    def _submit(self, samples: np.ndarray, rate: int, arrival: float, tag=None) -> bool:
        seconds = len(samples) / rate
        if self.audio_s + seconds > self.limits.max_session_s:
            self.send_error("session_limit", f"session exceeds {self.limits.max_session_s:g} s of audio")
            return False
        self.audio_s += seconds
        self.backlog_s += seconds
        if self.backlog_s > self.limits.max_backlog_s:
            self.backlog_ok.clear()
        self.server.worker.submit(self.id, samples, rate, arrival, tag)
        return True

    def handle_text(self, text: str) -> bool:
        """Handle a text message; False when the session ends (stop / eof)."""
        if self.dialect is None:
            self.dialect = detect_dialect(text) or "native"
        if self.dialect == "vosk":
            message = parse_vosk(text)
            if isinstance(message, VoskConfig):
                if message.sample_rate is not None:
                    if self.opened and message.sample_rate != self.vosk_rate:
                        raise ProtocolError("bad_sample_rate", "sample_rate cannot change after audio started")
                    self.vosk_rate = message.sample_rate
                return True
            self._open_job()
            if isinstance(message, VoskReset):
                self.server.worker.finish(self.id, "reset", reset=True)
                return True
            assert isinstance(message, VoskEof)
            self.server.worker.finish(self.id, "eof")
            return False
        message = parse_native(text)
        if isinstance(message, (Enrol, EnrolEnd)):
            self._handle_enrolment(message)
            return True
        if isinstance(message, Start) and self.recording is not None:
            raise ProtocolError("bad_enrolment", f'end the enrolment of {self.recording.enrol.name!r} '
                                                 '({"type": "enrol_end"}) before start')
        if isinstance(message, Start):
            if self.start is not None:
                raise ProtocolError("already_started", "the stream has already started")
            self.start = message
            self._open_job()
            return True
        assert isinstance(message, Stop)
        if self.opened:
            self.server.worker.finish(self.id)
        else:
            self.finished.set()
        return False

    def handle_binary(self, data: bytes, arrival: float) -> bool:
        if self.dialect is None:
            self.dialect = "vosk" if self.path == "/" else "native"
        if self.dialect == "vosk":
            rate = self.vosk_rate or self.server.config.vosk_sample_rate
            self.vosk_rate = rate
            self._open_job()
            # A bad message's error event is its one reply.
            samples = _decode_audio(data, "pcm_s16le", 1)
            return self._submit(samples, rate, arrival, tag="audio")
        if self.recording is not None:
            self._add_enrolment_audio(data)
            return True
        if self.enrol_dropped and self.start is None:
            return True                  # the rest of an over-long enrolment
        if self.start is None:
            raise ProtocolError("not_started", 'audio before {"type": "start"}')
        samples = _decode_audio(data, self.start.format, self.start.channels)
        return self._submit(samples, self.start.sample_rate, arrival)

    # Known voices (native, before start) ----------------------------------------------

    def _handle_enrolment(self, message: Enrol | EnrolEnd) -> None:
        dropped, self.enrol_dropped = self.enrol_dropped, False
        if isinstance(message, EnrolEnd):
            if dropped:
                return                   # the end of the recording whose error was already sent
            if self.recording is None:
                raise ProtocolError("bad_enrolment", 'enrol_end without an enrolment ({"type": "enrol", ...})')
            recording, self.recording = self.recording, None
            audio = np.concatenate(recording.pieces + [recording.intake.flush()])
            if not len(audio):
                raise ProtocolError("bad_enrolment",
                                    f"no audio came between enrol and enrol_end for {recording.enrol.name!r}")
            self.enrol_due = (recording.enrol.name, audio)     # learnt by read_loop, off the event loop
            return
        if self.start is not None or self.opened:
            raise ProtocolError("already_started", "enrol known voices before start")
        if self.recording is not None:
            raise ProtocolError("bad_enrolment", f"the enrolment of {self.recording.enrol.name!r} is still open "
                                                 '(end it with {"type": "enrol_end"})')
        self.enrolments += 1
        if self.enrolments > MAX_ENROLMENTS:
            raise ProtocolError("bad_enrolment", f"more than {MAX_ENROLMENTS} enrolments in one session")
        pipeline = self.server.pipeline
        if not hasattr(pipeline, "check_enrolment"):
            raise ProtocolError("bad_enrolment", "this server cannot enrol voices")
        try:
            pipeline.check_enrolment(message.name, {**pipeline.enrolled, **self.enrolled})
        except ValueError as e:
            raise ProtocolError("bad_enrolment", str(e)) from None
        self.recording = _Recording(message, AudioIntake(TARGET_RATE))

    def _add_enrolment_audio(self, data: bytes) -> None:
        recording = self.recording
        enrol = recording.enrol
        samples = _decode_audio(data, enrol.format, enrol.channels)
        try:
            recording.pieces.append(recording.intake.push(samples, enrol.sample_rate))
        except AudioFormatError as e:
            raise ProtocolError("bad_audio", str(e)) from None
        if recording.intake.samples_out > MAX_ENROL_S * TARGET_RATE:
            self.recording = None
            self.enrol_dropped = True
            raise ProtocolError("bad_enrolment", f"the recording to enrol {enrol.name!r} is longer than "
                                                 f"{MAX_ENROL_S:g} s (a few seconds of the speaker are enough); "
                                                 "the enrolment is dropped, and its audio until enrol_end ignored")

    async def _learn_voice(self) -> None:
        """Learn the voice whose recording just ended, on a thread of its own, and answer."""
        name, audio = self.enrol_due
        self.enrol_due = None
        pipeline = self.server.pipeline
        try:
            embedding = await self.loop.run_in_executor(self.server.enrolments, _voice_embedding, pipeline, audio)
        except (ValueError, AudioFormatError) as e:
            self.send_error("bad_enrolment", f"cannot enrol {name!r}: {e}")
            return
        except Exception:
            log.exception("session %d: enrolling %r failed", self.id, name)
            self.send_error("internal_error", f"enrolling {name!r} failed")
            return
        self.enrolled[name] = embedding
        self.send(json.dumps({"type": "enrolled", "name": name, "seconds": round(len(audio) / TARGET_RATE, 2)}))

    async def read_loop(self) -> None:
        limits = self.limits
        deadline = time.monotonic() + limits.max_session_s
        while not self.dead:
            if not self.backlog_ok.is_set():
                await self.backlog_ok.wait()  # TCP backpressure on this client only
                continue
            now = time.monotonic()
            wait = min(limits.idle_timeout_s, deadline - now)
            try:
                async with asyncio.timeout(max(wait, 0)):
                    message = await self.ws.recv()
            except TimeoutError:
                if time.monotonic() >= deadline:
                    self.send_error("session_limit", f"session longer than {limits.max_session_s:g} s")
                else:
                    self.send_error("idle_timeout", f"no message for {limits.idle_timeout_s:g} s")
                self._end()
                return
            arrival = time.monotonic()
            try:
                if isinstance(message, str):
                    going = self.handle_text(message)
                else:
                    going = self.handle_binary(message, arrival)
            except ProtocolError as e:
                self.send_error(e.code, e.message)
                continue
            if self.enrol_due is not None:
                # The next message waits for it: a start right behind an enrol_end gets the voice.
                await self._learn_voice()
            if not going:
                self._end()
                return

    def _end(self) -> None:
        """Flush what the stream holds (finals) and close once it is sent."""
        if self.opened:
            self.server.worker.finish(self.id, "eof" if self.dialect == "vosk" else None)
        else:
            self.finished.set()

    async def run(self) -> None:
        sender = asyncio.create_task(self.send_loop())
        try:
            await self.read_loop()
            if not self.dead:
                # The flush, unless the client goes away first (then there is nobody to send to).
                flushed = asyncio.ensure_future(self.finished.wait())
                gone = asyncio.ensure_future(self.ws.wait_closed())
                await asyncio.wait({flushed, gone}, timeout=self.limits.finish_timeout_s,
                                   return_when=asyncio.FIRST_COMPLETED)
                flushed.cancel()
                gone.cancel()
                if self.ws.state is State.CLOSED or self.dead:
                    return
                if not self.finished.is_set():
                    self.send_error("internal_error", "timed out flushing the stream")
                if self.close_after_send is None:
                    self.close_when_sent(1000, "done")
                await sender
        except ConnectionClosed:
            pass
        finally:
            self.dead = True
            self.server.worker.close(self.id)
            sender.cancel()


# -- the server ------------------------------------------------------------------------


class SpeechServer:
    """The websocket + static-file server. ``async with SpeechServer(pipeline, config) as s:``."""

    def __init__(self, pipeline, config: ServerConfig = ServerConfig()):
        self.pipeline = pipeline
        self.config = config
        self.worker = InferenceWorker(pipeline, batching=config.batching, slice_s=config.limits.slice_s,
                                      defer_finals=config.finals_thread)
        self.sessions: dict[int, _Session] = {}
        # Clients' enrolments, one at a time on one intra-op thread: beside the inference and finals
        # threads, many sessions enrolling at once queue here instead of taking the CPU from them.
        self.enrolments = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wavlm-enrol",
                                             initializer=one_intra_op_thread)
        self.stats: Counter[str] = Counter()  # sessions, server_busy, slow_client, internal_error
        self._ids = itertools.count(1)
        self._server = None
        # Bound to loopback only: then browsers must also name a loopback host (DNS rebinding).
        self._loopback = config.host == "localhost" or _is_loopback_ip(config.host)

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        return self._server.sockets[0].getsockname()[1]

    async def start(self) -> None:
        """Start the inference worker and listen; OSError (address in use, ...) leaves nothing running."""
        self.worker.start()
        try:
            self._server = await serve(
                self._handle, self.config.host, self.config.port,
                process_request=self._process_request,
                max_size=self.config.limits.max_message_bytes,
                max_queue=16,
                write_limit=1 << 16,
                close_timeout=2,
                ping_interval=self.config.limits.ping_interval_s,
                ping_timeout=None,      # see ServerLimits.ping_interval_s
            )
        except BaseException:
            await asyncio.to_thread(self.worker.stop)
            raise
        if not (self.config.web_root / "index.html").is_file():
            log.warning("the browser demo's files are not in %s, so / answers 404; websocket clients "
                        "are served as usual", self.config.web_root)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        await asyncio.to_thread(self.worker.stop)
        self.enrolments.shutdown(wait=False, cancel_futures=True)

    async def __aenter__(self) -> "SpeechServer":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    async def serve_forever(self) -> None:
        async with self:
            await asyncio.Future()

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urllib.parse.urlsplit(request.path).path
        if request.headers.get("Upgrade", "").lower() == "websocket":
            if path not in WS_PATHS:
                return connection.respond(404, "no websocket at this path\n")
            if not origin_allowed(request.headers, self.config.allowed_origins, self._loopback):
                return connection.respond(403, "origin not allowed\n")
            return None
        target = resolve_static(self.config.web_root, request.path)
        if target is None:
            return connection.respond(404, "not found\n")
        headers = Headers([
            ("Content-Type", CONTENT_TYPES[target.suffix]),
            ("Cache-Control", "no-cache"),
            ("X-Content-Type-Options", "nosniff"),
            ("Connection", "close"),
        ])
        return Response(200, "OK", headers, target.read_bytes())

    async def _handle(self, ws: ServerConnection) -> None:
        if len(self.sessions) >= self.config.limits.max_sessions:
            self.stats["server_busy"] += 1
            await ws.send(ErrorEvent("server_busy", f"{self.config.limits.max_sessions} sessions already "
                                                    "running; try again later").to_json())
            await ws.close(1013, "server busy")
            return
        self.stats["sessions"] += 1
        session = _Session(self, ws, next(self._ids))
        self.sessions[session.id] = session
        try:
            await session.run()
        finally:
            del self.sessions[session.id]


# -- command line ----------------------------------------------------------------------


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``wavlm-stream serve``: the CLI's model options plus address, limits, origins."""
    from stream.cli import _add_model_arguments

    _add_model_arguments(parser)
    d = ServerLimits()
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; "
                        "0.0.0.0 exposes the server to the network)")
    parser.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    parser.add_argument("--max-sessions", type=int, default=d.max_sessions, help="websocket sessions at once")
    parser.add_argument("--max-session-s", type=float, default=d.max_session_s,
                        help="longest session, in wall-clock seconds and in seconds of audio")
    parser.add_argument("--max-message-bytes", type=int, default=d.max_message_bytes,
                        help="largest websocket message")
    parser.add_argument("--idle-timeout-s", type=float, default=d.idle_timeout_s,
                        help="close a session after this long without a message")
    parser.add_argument("--allowed-origin", action="append", default=None, metavar="ORIGIN",
                        help="browser origin allowed to open a websocket (repeatable; '*' for any); "
                             "default: the page's own origin only")
    parser.add_argument("--no-batching", action="store_true",
                        help="run each stream's windows in a separate forward (for comparison)")


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    """The server's settings from ``serve``'s options; a bad value is the CLI's one-line UserError."""
    from stream.cli import UserError

    try:
        limits = ServerLimits(max_message_bytes=args.max_message_bytes, max_session_s=args.max_session_s,
                              max_sessions=args.max_sessions, idle_timeout_s=args.idle_timeout_s)
        origins = tuple(args.allowed_origin) if args.allowed_origin else None
        return ServerConfig(host=args.host, port=args.port, allowed_origins=origins, limits=limits,
                            batching=not args.no_batching)
    except ValueError as exc:
        raise UserError(f"serve options: {exc}") from None


def run_serve(args: argparse.Namespace) -> int:
    """``wavlm-stream serve``: load the model, serve until SIGINT/SIGTERM; returns the exit status."""
    from stream.cli import UserError, load_pipeline

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = config_from_args(args)
    pipeline = load_pipeline(args)   # raises the CLI's UserError for a bad checkpoint

    async def main() -> None:
        server = SpeechServer(pipeline, config)
        try:
            await server.start()
        except OSError as exc:   # address in use, not an address of this machine, no permission
            # asyncio words its bind errors around the address; the errno's own text is the reason.
            reason = os.strerror(exc.errno) if exc.errno and exc.errno > 0 else (exc.strerror or str(exc))
            raise UserError(f"cannot listen on {config.host} port {config.port}: {reason}") from None
        try:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            host = config.host if ":" not in config.host else f"[{config.host}]"
            log.info("serving http://%s:%d/ (websocket /ws, Vosk protocol /vosk)", host, server.port)
            await stop.wait()
            log.info("shutting down")
        finally:
            await server.stop()

    asyncio.run(main())
    return 0
