"""Audio sources (a file, optionally paced as if live; a microphone) and the event iterator.

Each source is an async iterator of ``(samples, sample_rate)`` blocks, samples being a
numpy array of shape (n,) or (n, channels). :func:`stream_events` runs a source through a
stream off the event loop and yields events as they come.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np

from decoders.events import Event


class SourceError(RuntimeError):
    """A source cannot deliver audio (unreadable file, no microphone, no PortAudio)."""


def read_file_info(path: str | Path):
    """Open-check an audio file; returns soundfile's info or raises SourceError naming the problem."""
    import soundfile as sf

    path = Path(path)
    if not path.exists():
        raise SourceError(f"audio file not found: {path}")
    if path.is_dir():
        raise SourceError(f"expected an audio file, got a directory: {path}")
    try:
        info = sf.info(str(path))
    except Exception as exc:  # soundfile raises LibsndfileError / RuntimeError / TypeError
        raise SourceError(f"cannot read audio file {path}: {exc} "
                          f"(supported: WAV, FLAC, OGG and the other formats libsndfile reads)") from None
    if info.frames == 0:
        raise SourceError(f"audio file {path} contains no audio (0 samples)")
    return info


async def file_source(path: str | Path, block_ms: float = 100.0,
                      realtime: bool = False) -> AsyncIterator[tuple[np.ndarray, int]]:
    """Blocks of a file as float32 (n, channels); ``realtime`` paces them at 1x speed."""
    import soundfile as sf

    read_file_info(path)
    with sf.SoundFile(str(path)) as f:
        async def read(frames: int) -> np.ndarray:
            return f.read(frames, dtype="float32", always_2d=True)

        async for item in _sound_file_blocks(read, f.samplerate, f"audio file {path}", block_ms, realtime):
            yield item


def require_piped_stdin() -> None:
    """SourceError unless standard input is a pipe or file (not a terminal, not closed)."""
    import sys

    if sys.stdin is None or sys.stdin.isatty():
        raise SourceError("nothing is piped into standard input; pipe audio with a header into it, e.g. "
                          "`arecord -f S16_LE -r 16000 -t wav | wavlm-stream transcribe -` or "
                          "`ffmpeg -i URL -f wav - | wavlm-stream transcribe -`")


async def stdin_source(block_ms: float = 100.0, realtime: bool = False) -> AsyncIterator[tuple[np.ndarray, int]]:
    """Blocks of audio piped into standard input, as float32 (n, channels).

    The stream must carry its own header (WAV, FLAC, Ogg, ... as libsndfile reads from a pipe),
    e.g. ``arecord -f S16_LE -r 16000 -t wav`` or ``ffmpeg -i URL -f wav -``. A live pipe
    paces itself; ``realtime`` paces a pipe that is faster than real time (``cat file.wav``).
    Reads block until the writer sends more, so they run in a reader thread (_PipeReader).
    """
    import sys

    require_piped_stdin()
    reader = _PipeReader(sys.stdin.fileno(), asyncio.get_running_loop())
    try:
        try:
            rate = await reader.open()
        except Exception as exc:  # soundfile raises LibsndfileError / RuntimeError / TypeError
            raise SourceError(f"cannot read audio from standard input: {exc} (it needs a header: WAV, FLAC, "
                              f"OGG or another format libsndfile reads from a pipe; raw PCM is not enough)") from None
        async for item in _sound_file_blocks(reader.read, rate, "standard input", block_ms, realtime):
            yield item
    finally:
        reader.close()


class _PipeReader:
    """A pipe's audio read by a daemon thread, one request at a time (so nothing is read ahead).

    A read from a pipe waits until the writer sends more. In asyncio's default executor such a
    wait would hold up the end of ``asyncio.run`` after Ctrl-C until the writer's next block; a
    daemon thread does not, and it owns the SoundFile (opened and closed there), so nothing closes
    it under a read in flight.
    """

    def __init__(self, fileno: int, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._serve, args=(fileno,), name="pipe-reader", daemon=True).start()

    async def open(self) -> int:
        """Read the header; returns the sample rate."""
        return await self._ask(None)

    async def read(self, frames: int) -> np.ndarray:
        """Up to ``frames`` frames as float32 (n, channels); n = 0 at the end of the stream."""
        return await self._ask(frames)

    def close(self) -> None:
        self._requests.put(None)        # the thread closes the file after any read in flight

    async def _ask(self, frames: int | None):
        future = self._loop.create_future()
        self._requests.put((future, frames))
        return await future

    def _serve(self, fileno: int) -> None:
        import soundfile as sf

        f = None
        try:
            while (request := self._requests.get()) is not None:
                future, frames = request
                try:
                    if frames is None:
                        f = sf.SoundFile(fileno, closefd=False)
                        self._reply(future, f.samplerate, None)
                    else:
                        self._reply(future, f.read(frames, dtype="float32", always_2d=True), None)
                except Exception as exc:
                    self._reply(future, None, exc)
        finally:
            if f is not None:
                f.close()

    def _reply(self, future: asyncio.Future, result, exc: BaseException | None) -> None:
        def settle():
            if future.done():           # cancelled by Ctrl-C meanwhile
                return
            if exc is not None:
                future.set_exception(exc)
            else:
                future.set_result(result)
        try:
            self._loop.call_soon_threadsafe(settle)
        except RuntimeError:
            pass                        # the loop has closed: nobody waits for this any more


async def _sound_file_blocks(read, rate: int, name: str, block_ms: float,
                             realtime: bool) -> AsyncIterator[tuple[np.ndarray, int]]:
    """Blocks from ``read(frames)`` (an async read of an open soundfile) at ``rate``."""
    import soundfile as sf

    block = max(1, int(rate * block_ms / 1000))
    started = time.monotonic()
    sent = 0
    try:
        while True:
            data = await read(block)
            if data.shape[0] == 0:
                break
            if realtime:
                # Deliver each block when its last sample would have been captured live.
                due = started + (sent + data.shape[0]) / rate
                await asyncio.sleep(max(0.0, due - time.monotonic()))
            sent += data.shape[0]
            yield data, rate
    except sf.LibsndfileError as exc:
        # Truncated mid-way: what was read has been delivered already.
        raise SourceError(f"{name} is damaged after {sent / rate:.2f} s: {exc}") from None
    if sent == 0:
        # A header and no samples (or a header whose data size says 0, as some writers put in a pipe).
        raise SourceError(f"{name} holds no audio (a header, 0 samples)")


def _import_sounddevice():
    try:
        import sounddevice as sd
    except OSError as exc:
        raise SourceError("the microphone needs the PortAudio library, which is not installed "
                          f"({exc}); on Debian/Ubuntu: apt-get install libportaudio2") from None
    except ImportError:
        raise SourceError("the microphone needs the sounddevice package: pip install sounddevice") from None
    return sd


def list_input_devices() -> list[str]:
    """Names of the input devices PortAudio sees, as 'index: name'."""
    sd = _import_sounddevice()
    return [f"{i}: {d['name']}" for i, d in enumerate(sd.query_devices()) if d["max_input_channels"] > 0]


def input_device_info(device: int | str | None = None) -> dict:
    """PortAudio's description of an input device (None: the default one), or SourceError
    naming the problem and the devices there are. `mic` asks before it loads the model."""
    sd = _import_sounddevice()
    try:
        return sd.query_devices(device, kind="input")
    except (ValueError, sd.PortAudioError) as exc:
        names = list_input_devices()
        if not names:
            raise SourceError("no microphone: PortAudio sees no input device (no sound card, or a container "
                              "without /dev/snd). Input devices: none. Stream a file instead with "
                              "`wavlm-stream transcribe FILE --realtime`, or capture in a browser with "
                              "`wavlm-stream serve`") from None
        what = "the default input device" if device is None else f"input device {device!r}"
        raise SourceError(f"{what} is not usable: {exc}. Input devices: {'; '.join(names)}") from None


async def microphone_source(device: int | str | None = None, block_ms: float = 100.0,
                            ) -> AsyncIterator[tuple[np.ndarray, int]]:
    """Live microphone blocks as float32 (n, 1) at the device's default rate.

    PortAudio calls back on its own thread; the callback hands each block to the event
    loop with ``call_soon_threadsafe``, so waiting for audio costs no CPU.
    """
    sd = _import_sounddevice()
    rate = int(input_device_info(device)["default_samplerate"])
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue(maxsize=200)

    def on_audio(indata, frames, time_info, status):  # PortAudio thread
        loop.call_soon_threadsafe(_put_dropping_oldest, queue, indata.copy())

    stream = sd.InputStream(device=device, channels=1, samplerate=rate, dtype="float32",
                            blocksize=int(rate * block_ms / 1000), callback=on_audio)
    with stream:
        while True:
            yield await queue.get(), rate


def _put_dropping_oldest(queue: asyncio.Queue, item) -> None:
    # If the consumer stalls, drop the oldest audio rather than grow without bound.
    if queue.full():
        queue.get_nowait()
    queue.put_nowait(item)


async def stream_events(stream, source: AsyncIterator[tuple[np.ndarray, int]],
                        ) -> AsyncIterator[Event]:
    """Feed a source through a stream; yield events, ending with the flush at end of source.

    Inference runs in a worker thread so the event loop (and the source) keeps going.
    If the source fails part-way (a damaged file), everything transcribed so far is
    flushed as finals first and then the error is raised.
    """
    failure = None
    try:
        async for samples, rate in source:
            feed = asyncio.ensure_future(asyncio.to_thread(stream.feed, samples, rate))
            try:
                events = await asyncio.shield(feed)
            except asyncio.CancelledError:
                # Cancelled (Ctrl-C) while the thread runs the model: the thread goes on regardless,
                # and the stream is not thread-safe, so nothing may touch it (the caller's finish())
                # until this block has been fed. Its partials are dropped; finish() gives the finals.
                await asyncio.wait({feed})
                raise
            for event in events:
                yield event
    except SourceError as exc:
        failure = exc
    for event in await asyncio.to_thread(stream.finish):
        yield event
    if failure is not None:
        raise failure
