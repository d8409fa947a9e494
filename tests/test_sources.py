"""stream/sources.py: file pacing, microphone plumbing (with a fake PortAudio), the event iterator."""

import asyncio
import io
import sys
import threading
import time
import types

import numpy as np
import pytest
import soundfile as sf

from stream import sources
from stream.sources import SourceError, file_source, microphone_source, stream_events


def _collect(agen):
    async def run():
        return [item async for item in agen]
    return asyncio.run(run())


def test_file_source_blocks_cover_the_file(tmp_path):
    path = tmp_path / "a.wav"
    data = np.random.default_rng(0).uniform(-0.5, 0.5, (8000, 2)).astype(np.float32)
    sf.write(str(path), data, 8000, subtype="FLOAT")
    blocks = _collect(file_source(path, block_ms=100))
    assert all(rate == 8000 and b.shape[1] == 2 for b, rate in blocks)
    np.testing.assert_array_equal(np.concatenate([b for b, _ in blocks]), data)


def test_realtime_file_source_is_never_ahead_of_the_clock(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(str(path), np.zeros(8000, dtype=np.float32), 16000)      # 0.5 s
    arrivals = []

    async def run():
        start = time.monotonic()
        sent = 0
        async for block, rate in file_source(path, block_ms=100, realtime=True):
            sent += block.shape[0]
            arrivals.append((time.monotonic() - start, sent / rate))
    asyncio.run(run())
    # Each block arrives no earlier than the moment its last sample would be captured live.
    assert all(elapsed >= audio_end - 0.01 for elapsed, audio_end in arrivals)


def test_missing_and_corrupt_files_raise_source_errors(tmp_path):
    with pytest.raises(SourceError, match="not found"):
        sources.read_file_info(tmp_path / "nope.wav")
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"garbage" * 100)
    with pytest.raises(SourceError, match="cannot read audio file"):
        sources.read_file_info(bad)


class _FakeInputStream:
    """Calls the callback from its own thread, like PortAudio."""

    def __init__(self, device, channels, samplerate, dtype, blocksize, callback):
        self.blocksize, self.callback = blocksize, callback
        self._stop = threading.Event()

    def __enter__(self):
        def pump():
            for i in range(5):
                if self._stop.is_set():
                    return
                self.callback(np.full((self.blocksize, 1), i, dtype=np.float32), self.blocksize, None, None)
                time.sleep(0.01)
        self._thread = threading.Thread(target=pump, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _fake_sounddevice(devices):
    module = types.ModuleType("sounddevice")
    module.PortAudioError = type("PortAudioError", (Exception,), {})

    def query_devices(device=None, kind=None):
        if device is None and kind is None:
            return devices
        inputs = [d for d in devices if d["max_input_channels"] > 0]
        if not inputs or (device is not None and device not in range(len(devices))):
            raise ValueError(f"No input device matching {device!r}")
        return inputs[0]

    module.query_devices = query_devices
    module.InputStream = _FakeInputStream
    return module


def test_microphone_blocks_arrive_through_the_event_loop(monkeypatch):
    device = {"name": "fake mic", "max_input_channels": 1, "default_samplerate": 16000.0}
    monkeypatch.setitem(sys.modules, "sounddevice", _fake_sounddevice([device]))

    async def run():
        got = []
        async for block, rate in microphone_source(block_ms=10):
            got.append((block[0, 0], rate, block.shape))
            if len(got) == 5:
                break
        return got
    got = asyncio.run(run())
    assert [g[0] for g in got] == [0, 1, 2, 3, 4]
    assert all(rate == 16000 and shape == (160, 1) for _, rate, shape in got)


def test_no_input_device_lists_what_exists(monkeypatch):
    speaker = {"name": "speakers", "max_input_channels": 0, "default_samplerate": 48000.0}
    monkeypatch.setitem(sys.modules, "sounddevice", _fake_sounddevice([speaker]))
    with pytest.raises(SourceError, match="no microphone.*Input devices: none.*transcribe FILE --realtime"):
        _collect(microphone_source())


def test_an_unusable_named_device_lists_the_input_devices(monkeypatch):
    mic = {"name": "usb mic", "max_input_channels": 1, "default_samplerate": 48000.0}
    monkeypatch.setitem(sys.modules, "sounddevice", _fake_sounddevice([mic]))
    with pytest.raises(SourceError, match="input device 7 is not usable: .*Input devices: 0: usb mic"):
        _collect(microphone_source(device=7))


def test_missing_portaudio_names_the_package(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def importer(name, *args, **kwargs):
        if name == "sounddevice":      # what sounddevice raises when libportaudio is absent
            raise OSError("PortAudio library not found")
        return real_import(name, *args, **kwargs)
    monkeypatch.delitem(sys.modules, "sounddevice", raising=False)
    monkeypatch.setattr(builtins, "__import__", importer)
    with pytest.raises(SourceError, match="PortAudio.*apt-get install libportaudio2"):
        _collect(microphone_source())


class _RecordingStream:
    def __init__(self):
        self.fed, self.finished = 0, False

    def feed(self, samples, rate):
        self.fed += len(samples)
        return [f"event{self.fed}"]

    def finish(self):
        self.finished = True
        return ["final"]


def test_stream_events_flushes_finals_before_a_source_failure():
    async def failing_source():
        yield np.zeros(100, dtype=np.float32), 16000
        raise SourceError("damaged after 0.01 s")

    stream = _RecordingStream()
    got = []

    async def run():
        async for event in stream_events(stream, failing_source()):
            got.append(event)
    with pytest.raises(SourceError, match="damaged"):
        asyncio.run(run())
    assert got == ["event100", "final"] and stream.finished


class _SlowStream(_RecordingStream):
    """A stream whose feed takes a while and notices a finish() that overlaps it."""

    def __init__(self):
        super().__init__()
        self.feeding = threading.Event()
        self.overlapped = False

    def feed(self, samples, rate):
        self.feeding.set()
        time.sleep(0.5)
        self.feeding.clear()
        return super().feed(samples, rate)

    def finish(self):
        self.overlapped = self.feeding.is_set()
        return super().finish()


def test_ctrl_c_during_a_feed_finishes_the_stream_only_after_that_feed(ctrl_c_raises):
    """The CLI's Ctrl-C path (stream.cli._run_source): the task is cancelled while the model
    runs a block in a worker thread; finish() must not touch the stream while that block is
    still being fed (the stream is not thread-safe)."""
    import signal

    from stream.cli import CaptionPrinter, _run_source

    async def endless():
        while True:
            yield np.zeros(1600, dtype=np.float32), 16000

    stream = _SlowStream()

    async def interrupt_soon():
        await asyncio.to_thread(stream.feeding.wait)
        signal.raise_signal(signal.SIGINT)        # asyncio.run turns it into a cancel of the main task

    async def main():
        asyncio.get_running_loop().create_task(interrupt_soon())
        await _run_source(stream, endless(), CaptionPrinter(out=io.StringIO(), json_lines=False))

    with pytest.raises(KeyboardInterrupt):
        asyncio.run(main())
    assert stream.finished and not stream.overlapped
