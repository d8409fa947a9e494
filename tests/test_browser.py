"""The browser demo in a real headless chromium, driven over the Chrome DevTools protocol.

Chromium gets a wav file as its microphone (--use-file-for-fake-audio-capture), opens the
page served by ``SpeechServer``, the test clicks Start (a real mouse event), waits, clicks
Stop, and checks what the page shows. Screenshots go to artifacts/ (git-ignored).

Which model: the bundled model (model/default/) and the first examples/*.wav when both
exist, and then the captions must show the words that the model finds in that audio when
it runs through the pipeline alone (those of the example's transcript, when there is one);
otherwise a tiny random-weight model, and the test checks the plumbing (audio arrives at
16 kHz at the right rate, every event the server sent is rendered, latency is shown).
Rendering itself is checked with a scripted pipeline that sends known events.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import math
import os
import shutil
import subprocess
import time
import urllib.request
import wave
from pathlib import Path

import numpy as np
import pytest
from websockets.asyncio.client import connect

from stream.server import ServerConfig, SpeechServer
from ws_helpers import run

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "artifacts"
BUNDLED = ROOT / "model" / "default"


def chromium_path() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("chromium is not installed (apt-get install chromium; .ci/run does it)")


class Chromium:
    """A headless chromium with a fake microphone and a DevTools port."""

    def __init__(self, mic_wav: Path, profile: Path, auto_accept: bool = True):
        self.profile = profile
        args = [
            chromium_path(), "--headless", "--no-sandbox", "--disable-gpu",
            "--disable-background-networking", "--disable-component-update", "--no-first-run",
            "--no-default-browser-check", f"--user-data-dir={profile}", "--remote-debugging-port=0",
            *(["--use-fake-ui-for-media-stream"] if auto_accept else []), "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={mic_wav}%noloop",  # silence after the file
            "--autoplay-policy=no-user-gesture-required", "--window-size=1000,700", "about:blank",
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def devtools_port(self, timeout: float = 30.0) -> int:
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if port_file.exists() and port_file.read_text().strip():
                return int(port_file.read_text().split()[0])
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited: {self.proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.1)
        raise TimeoutError("chromium did not open its DevTools port")

    def page_ws_url(self) -> str:
        port = self.devtools_port()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            targets = json.load(r)
        return next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")

    def close(self) -> None:
        # Chromium keeps its singleton socket in a /tmp/org.chromium.Chromium.* folder that the
        # profile links to, and leaves it behind when terminated: remove that one folder.
        socket_link = self.profile / "SingletonSocket"
        socket_dir = Path(os.readlink(socket_link)).parent if socket_link.is_symlink() else None
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if socket_dir is not None and socket_dir.name.startswith("org.chromium.Chromium."):
            shutil.rmtree(socket_dir, ignore_errors=True)


class DevTools:
    """Minimal Chrome DevTools protocol client over the page's websocket."""

    def __init__(self, ws):
        self.ws = ws
        self.ids = itertools.count(1)
        self.waiting: dict[int, asyncio.Future] = {}
        self.console: list[str] = []
        self.reader = asyncio.create_task(self._read())

    async def _read(self):
        async for message in self.ws:
            msg = json.loads(message)
            if "id" in msg and msg["id"] in self.waiting:
                self.waiting.pop(msg["id"]).set_result(msg)
            elif msg.get("method") == "Runtime.consoleAPICalled":
                self.console.append(" ".join(str(a.get("value", a.get("description")))
                                             for a in msg["params"]["args"]))
            elif msg.get("method") == "Runtime.exceptionThrown":
                self.console.append("EXCEPTION " + json.dumps(msg["params"]["exceptionDetails"])[:500])

    async def call(self, method: str, **params):
        i = next(self.ids)
        self.waiting[i] = asyncio.get_running_loop().create_future()
        await self.ws.send(json.dumps({"id": i, "method": method, "params": params}))
        msg = await asyncio.wait_for(self.waiting[i], 30)
        if "error" in msg:
            raise RuntimeError(f"{method}: {msg['error']}")
        return msg["result"]

    async def js(self, expression: str):
        r = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"page error: {r['exceptionDetails']}")
        return r["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 20.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = await self.js(expression)
            if value:
                return value
            await asyncio.sleep(0.1)
        raise TimeoutError(f"page never satisfied: {expression}; console: {self.console[-10:]}")

    async def open(self, url: str):
        await self.call("Page.enable")
        await self.call("Runtime.enable")
        await self.call("Page.navigate", url=url)
        await self.wait_for("document.readyState === 'complete' && !!window.wavlmDemo")

    async def click(self, element_id: str):
        """A real mouse click (user activation), at the element's centre."""
        box = await self.js(f"(() => {{ const r = document.getElementById('{element_id}')"
                            ".getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        for kind in ("mousePressed", "mouseReleased"):
            await self.call("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left",
                            clickCount=1)

    async def screenshot(self, name: str) -> Path:
        data = (await self.call("Page.captureScreenshot", format="png"))["data"]
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / name
        path.write_bytes(base64.b64decode(data))
        return path

    async def close(self):
        self.reader.cancel()
        await self.ws.close()


def write_wav(path: Path, audio: np.ndarray, rate: int) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(audio.astype(np.int16).tobytes())
    return path


MAX_EXAMPLE_S = 15.0   # the page streams in real time: keep the browser test short
MIN_EXPECTED_WORDS = 3  # fewer right words: the model is too unsure for a stable check yet


def examples() -> list[tuple[Path, set[str]]]:
    """Example wavs with the words of their transcripts (examples/NAME.txt, else empty)."""
    out = []
    for wav in sorted((ROOT / "examples").glob("*.wav")):
        text = wav.with_suffix(".txt").read_text() if wav.with_suffix(".txt").exists() else ""
        out.append((wav, set(text.lower().split())))
    return out


def solo_words(pipeline, audio: np.ndarray, rate: int) -> list[str]:
    """The words of the finals when ``audio`` is streamed through the pipeline alone."""
    from decoders.events import Final

    s = pipeline.new_stream()
    events = []
    for i in range(0, len(audio), rate // 10):
        events += s.feed(audio[i:i + rate // 10], rate)
    events += s.finish()
    return " ".join(e.text for e in events if isinstance(e, Final)).split()


@pytest.fixture(scope="module")
def demo_setup(tmp_path_factory):
    """(pipeline, mic wav, expected words or None).

    With the bundled model: the example (its first MAX_EXAMPLE_S) on which the model alone
    gets the most words of the transcript, and those words are expected on the page, so the
    test asserts what the page should show rather than the model's accuracy. While the
    bundled model gets fewer than MIN_EXPECTED_WORDS right on every example (early in
    training), and without it: a tiny random model, and the test checks the plumbing only.
    """
    import soundfile as sf

    from stream.pipeline import Pipeline

    if (BUNDLED / "config.json").exists():
        pipeline = Pipeline.from_pretrained(BUNDLED)
        best = None
        for wav, reference in examples():
            audio, rate = sf.read(str(wav), dtype="int16", always_2d=True)
            audio = audio[: int(MAX_EXAMPLE_S * rate), 0]
            # Chromium captures the wav at 48 kHz, starts it at an arbitrary offset, and the page's
            # worklet resamples to 16 kHz: a shift of a few milliseconds moves every 20 ms frame,
            # which changes the words a demo model gets right. Expect only the words it gets
            # through that round trip at eight offsets, so the check is about the page (with
            # three offsets, the page of one export missed three of seven expected words,
            # reproducibly: 'a man' heard as 'aman', 'if you' as 'efyou').
            import soxr

            round_trip = soxr.resample(soxr.resample(audio.astype(np.float32) / 32768, rate, 48000), 48000, 16000)
            expected = set(solo_words(pipeline, audio, rate))
            for shift_s in (0.0031, 0.0078, 0.0123, 0.0187, 0.0249, 0.0371, 0.061, 0.1):
                shifted = np.concatenate([np.zeros(int(shift_s * 16000), np.float32), round_trip])
                expected &= set(solo_words(pipeline, shifted, 16000))
            if reference:
                expected &= reference
            if len(expected) >= MIN_EXPECTED_WORDS and (best is None or len(expected) > len(best[2])):
                best = (wav, audio, expected, rate)
        if best is not None:
            wav, audio, expected, rate = best
            print(f"browser test: bundled model on {wav.name}, expecting {sorted(expected)}")
            return pipeline, write_wav(tmp_path_factory.mktemp("mic") / wav.name, audio, rate), expected
        print("browser test: the bundled model gets too few example words right yet; plumbing only")
    from checkpoints import write_ctc_checkpoint

    path = write_ctc_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt", seed=7)
    pipeline = Pipeline.from_pretrained(path, speakers=False, beam=False, chunk_ms=320, left_ms=640,
                                        right_ms=160)
    rng = np.random.default_rng(1)
    t = np.arange(22050 * 4) / 22050
    # Tone bursts in noise at 22.05 kHz: the page's resampler must cope with a non-integer ratio.
    audio = 6000 * np.sin(2 * np.pi * 440 * t) * (np.sin(2 * np.pi * 1.5 * t) > 0) + rng.normal(0, 800, t.size)
    wav = write_wav(tmp_path_factory.mktemp("mic") / "mic.wav", audio, 22050)
    return pipeline, wav, None


class RecordingServer(SpeechServer):
    """Counts the audio each session hands the worker (what the page really sent)."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.samples_in: list[tuple[int, int]] = []
        submit = self.worker.submit

        def counting_submit(job_id, samples, rate, arrival, tag=None):
            self.samples_in.append((len(samples), rate))
            submit(job_id, samples, rate, arrival, tag)
        self.worker.submit = counting_submit


async def _browser_session(pipeline, wav: Path, profile: Path):
    server = RecordingServer(pipeline, ServerConfig(port=0))
    await server.start()
    chrome = Chromium(wav, profile)
    try:
        page = DevTools(await connect(await asyncio.to_thread(chrome.page_ws_url), max_size=None))
        return server, chrome, page
    except BaseException:
        chrome.close()
        await server.stop()
        raise


async def _downloaded(folder: Path, pattern: str, timeout: float = 10.0) -> str:
    """The text of the first finished download matching ``pattern`` (Chromium writes .crdownload first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = sorted(folder.glob(pattern))
        if done and not list(folder.glob("*.crdownload")):
            return done[0].read_text(encoding="utf-8")
        await asyncio.sleep(0.1)
    raise TimeoutError(f"no {pattern} downloaded into {folder}: {sorted(p.name for p in folder.iterdir())}")


def test_page_captions_the_fake_microphone(demo_setup, tmp_path):
    pipeline, wav, expected_words = demo_setup
    with wave.open(str(wav)) as w:
        duration = w.getnframes() / w.getframerate()

    async def main():
        server, chrome, page = await _browser_session(pipeline, wav, tmp_path / "profile")
        try:
            await page.open(f"http://127.0.0.1:{server.port}/")
            assert await page.js("document.body.dataset.state") == "idle"
            save_before = await page.js("document.getElementById('save').disabled")
            await page.click("start")
            await page.wait_for("document.body.dataset.state === 'running'")
            t0 = time.monotonic()
            await asyncio.sleep(duration + 1.5)
            await page.screenshot("browser_demo_live.png")
            await page.click("stop")
            await page.wait_for("document.body.dataset.state === 'idle' && window.wavlmDemo.closeCode !== null",
                                timeout=30)
            streamed_s = time.monotonic() - t0
            shot = await page.screenshot("browser_demo.png")
            state = await page.js("""(() => ({
                stats: window.wavlmDemo,
                finals: [...document.querySelectorAll('#finals li .text')].map(e => e.textContent),
                times: [...document.querySelectorAll('#finals li .time')].map(e => e.textContent),
                speakers: [...document.querySelectorAll('#finals li')].map(
                    li => li.querySelector('.speaker') ? li.querySelector('.speaker').textContent : ''),
                latency: document.getElementById('latency').textContent,
                message: document.getElementById('message').hidden ? '' : document.getElementById('message').textContent,
            }))()""")
            # "Save transcript" downloads the finals as shown.
            downloads = tmp_path / "downloads"
            downloads.mkdir()
            await page.call("Browser.setDownloadBehavior", behavior="allow", downloadPath=str(downloads))
            await page.click("save")
            saved = await _downloaded(downloads, "wavlm-stream-*.txt")
            state["save_before"] = save_before
            return state, streamed_s, shot, list(server.samples_in), page.console, saved
        finally:
            await page.close()
            chrome.close()
            await server.stop()

    state, streamed_s, shot, samples_in, console, saved = run(main(), timeout=180)
    stats = state["stats"]
    assert shot.exists() and shot.stat().st_size > 1000
    assert state["message"] == "", state["message"]
    assert stats["closeCode"] == 1000 and stats["errors"] == []
    # The worklet delivered ~real-time 16 kHz PCM16 in ~100 ms chunks.
    assert samples_in and {rate for _, rate in samples_in} == {16000}
    sent_s = sum(n for n, _ in samples_in) / 16000
    assert stats["sentBytes"] == 2 * sum(n for n, _ in samples_in)
    assert 0.8 * streamed_s < sent_s < 1.1 * streamed_s + 0.5, (sent_s, streamed_s)
    # Every final the server sent is on the page, with a timestamp; latency is shown.
    shown = [t for t in stats["finals"] if t]
    assert state["finals"] == shown and len(state["times"]) == len(shown)
    assert stats["events"]["partial"] + stats["events"]["final"] > 0, console
    assert "median" in state["latency"]
    assert state["save_before"] is True
    assert saved == "".join(f"[{t}{' ' + s if s else ''}] {text}\n"
                            for t, s, text in zip(state["times"], state["speakers"], state["finals"])), saved
    if expected_words is not None:
        # The page's audio went through chromium's capture and the worklet's resampler, not
        # bit-identical to the solo run: most, not all, of the expected words.
        heard = set(" ".join(state["finals"]).lower().split())
        assert len(heard & expected_words) >= math.ceil(0.6 * len(expected_words)), (heard, expected_words)


def test_page_streams_an_uploaded_file_and_reports_errors(demo_setup, tmp_path):
    pipeline, wav, _ = demo_setup

    async def main():
        server, chrome, page = await _browser_session(pipeline, wav, tmp_path / "profile")
        try:
            await page.open(f"http://127.0.0.1:{server.port}/")
            # The resampler: flat passband, strong rejection above 8 kHz, at 48 and 44.1 kHz.
            source = (ROOT / "web" / "capture-worklet.js").read_text()
            await page.js(f"(0, eval)({json.dumps(source)}); true")
            response = await page.js("""(() => {
                const out = {};
                for (const rate of [48000, 44100]) for (const f of [1000, 6000, 10000]) {
                    const r = new Resampler(rate, 16000), x = new Float32Array(rate);
                    for (let i = 0; i < rate; i++) x[i] = Math.sin(2 * Math.PI * f * i / rate);
                    const y = r.process(x).slice(1000, 15000);
                    let e = 0; for (const v of y) e += v * v;
                    out[rate + ':' + f] = 10 * Math.log10(2 * e / y.length);
                }
                return out; })()""")
            # A local file, streamed as if live.
            doc = await page.call("DOM.getDocument")
            node = await page.call("DOM.querySelector", nodeId=doc["root"]["nodeId"], selector="#file")
            await page.call("DOM.setFileInputFiles", files=[str(wav)], nodeId=node["nodeId"])
            await page.wait_for("document.body.dataset.state === 'running'")
            status = await page.js("document.getElementById('status').textContent")
            await page.wait_for("document.body.dataset.state === 'idle' && window.wavlmDemo.closeCode !== null",
                                timeout=60)
            file_stats = await page.js("window.wavlmDemo")
            # Server unreachable: a clear message, back to idle.
            await page.open("http://127.0.0.1:%d/?server=ws://127.0.0.1:9/ws" % server.port)
            await page.click("start")
            unreachable = await page.wait_for(
                "!document.getElementById('message').hidden && document.getElementById('message').textContent")
            return response, status, file_stats, unreachable, list(server.samples_in)
        finally:
            await page.close()
            chrome.close()
            await server.stop()

    response, status, file_stats, unreachable, samples_in = run(main(), timeout=180)
    for rate in (48000, 44100):
        assert abs(response[f"{rate}:1000"]) < 0.1 and abs(response[f"{rate}:6000"]) < 0.5
        assert response[f"{rate}:10000"] < -60, response
    assert wav.name in status and "real time" in status
    with wave.open(str(wav)) as w:
        duration = w.getnframes() / w.getframerate()
    assert file_stats["closeCode"] == 1000 and file_stats["errors"] == []
    assert abs(file_stats["sentBytes"] / 32000 - duration) < 0.3  # the whole file, at 16 kHz
    assert file_stats["events"]["partial"] + file_stats["events"]["final"] > 0
    assert "Cannot reach the server" in unreachable


def test_page_enrols_a_known_voice_from_a_file(tmp_path):
    """Known voices, "Add…": a recording of the held-out voice rh-bdl (single_speaker.wav, saved as bdl.wav)
    is enrolled at the start of the session; streaming the two-voice example then labels her turns "bdl"
    and the other voice's S1, as the reference RTTM has them (rh-bdl, pico-gb, rh-bdl, pico-gb)."""
    import shutil as sh

    from stream import Pipeline

    examples = ROOT / "examples"
    voice = tmp_path / "bdl.wav"
    sh.copy(examples / "single_speaker.wav", voice)
    pipeline = Pipeline.from_pretrained(None, beam=False)

    async def main():
        server, chrome, page = await _browser_session(pipeline, examples / "two_speakers.wav", tmp_path / "profile")
        try:
            await page.open(f"http://127.0.0.1:{server.port}/")
            doc = await page.call("DOM.getDocument")
            for selector, path in (("#voice", voice), ("#file", examples / "two_speakers.wav")):
                node = await page.call("DOM.querySelector", nodeId=doc["root"]["nodeId"], selector=selector)
                await page.call("DOM.setFileInputFiles", files=[str(path)], nodeId=node["nodeId"])
                if selector == "#voice":
                    listed = await page.wait_for("document.getElementById('voice-list').textContent !== 'none' && "
                                                 "document.getElementById('voice-list').textContent")
            await page.wait_for("document.body.dataset.state === 'running'")
            await page.wait_for("document.body.dataset.state === 'idle' && window.wavlmDemo.closeCode !== null",
                                timeout=60)
            await page.screenshot("browser_demo_known_voice.png")
            labels = await page.js("[...document.querySelectorAll('#finals .speaker')].map((e) => e.textContent)")
            return listed, labels, await page.js("window.wavlmDemo")
        finally:
            await page.close()
            chrome.close()
            await server.stop()

    listed, labels, stats = run(main(), timeout=120)
    assert listed.startswith("bdl")
    assert stats["enrolled"] == ["bdl"] and stats["errors"] == [] and stats["closeCode"] == 1000
    assert labels == ["bdl", "S1", "bdl", "S1"], labels


def test_page_explains_a_denied_microphone(demo_setup, tmp_path):
    """A browser that asks the user (no auto-accept) and a user who says no."""
    pipeline, wav, _ = demo_setup

    async def main():
        server = SpeechServer(pipeline, ServerConfig(port=0))
        await server.start()
        chrome = Chromium(wav, tmp_path / "profile", auto_accept=False)
        try:
            page = DevTools(await connect(await asyncio.to_thread(chrome.page_ws_url), max_size=None))
            origin = f"http://127.0.0.1:{server.port}"
            await page.call("Browser.setPermission", permission={"name": "microphone"}, setting="denied",
                            origin=origin)
            await page.open(origin + "/")
            await page.click("start")
            denied = await page.wait_for(
                "!document.getElementById('message').hidden && document.getElementById('message').textContent")
            await page.screenshot("browser_demo_denied.png")
            idle = await page.wait_for("document.body.dataset.state === 'idle'")
            await asyncio.sleep(0.2)
            await page.close()
            return denied, idle, len(server.sessions)
        finally:
            chrome.close()
            await server.stop()

    denied, idle, sessions = run(main(), timeout=120)
    assert "Microphone access was denied" in denied and idle
    assert sessions == 0  # the page closed its websocket


def test_page_renders_partials_finals_speakers_and_latency(tmp_path):
    """Rendering, independent of any model: a scripted pipeline sends known events."""
    from decoders.events import Final, Partial, SpeakerChange, Word
    from fake_pipeline import ScriptedPipeline

    script = [
        Partial(0, "hello", 0.1, 0.5, latency=0.31),
        Partial(0, "hello wor", 0.1, 0.9, latency=0.42),
        Final(0, "hello world", 0.1, 1.0, (Word("hello", 0.1, 0.5, 0.9), Word("world", 0.6, 1.0, 0.8)),
              speaker="S1", latency=0.55),
        SpeakerChange(1.2, "S1", "S2", 0.9, latency=0.6),
        Partial(1, "how are", 1.3, 1.8, latency=0.33),
        Final(1, "how are you", 1.3, 2.1, (), speaker="S2", latency=0.5),
        Final(2, "", 2.2, 2.2, (), speaker="S2"),          # empty finals are not shown
        Partial(3, "fine", 62.5, 62.9, latency=0.3),      # still open when the snapshot is taken
    ]
    rng = np.random.default_rng(0)
    wav = write_wav(tmp_path / "noise.wav", rng.normal(0, 1000, 48000 * 4), 48000)

    async def main():
        server, chrome, page = await _browser_session(ScriptedPipeline(script, every_s=0.3), wav,
                                                      tmp_path / "profile")
        try:
            await page.open(f"http://127.0.0.1:{server.port}/")
            await page.click("start")
            await page.wait_for("window.wavlmDemo.events.partial >= 4", timeout=30)
            live = await page.js("""(() => ({
                partial: document.getElementById('partial').textContent,
                partials: document.querySelectorAll('#partial, .partial').length,
                rows: [...document.querySelectorAll('#finals li')].map(li => ({
                    cls: li.className, time: li.querySelector('.time').textContent,
                    who: li.querySelector('.speaker').textContent, text: li.querySelector('.text').textContent,
                    colour: getComputedStyle(li.querySelector('.speaker')).color})),
                latency: document.getElementById('latency').textContent,
            }))()""")
            await page.screenshot("browser_demo_rendering.png")
            await page.click("stop")
            await page.wait_for("document.body.dataset.state === 'idle'", timeout=30)
            after = await page.js("document.getElementById('partial').textContent")
            return live, after
        finally:
            await page.close()
            chrome.close()
            await server.stop()

    live, after = run(main(), timeout=120)
    assert live["partial"] == "fine" and live["partials"] == 1   # one line, updated in place
    rows = live["rows"]
    assert [r["text"] for r in rows] == ["hello world", "how are you"]
    assert [r["time"] for r in rows] == ["0:00.1", "0:01.3"]
    assert [r["who"] for r in rows] == ["S1", "S2"]
    assert "spk-0" in rows[0]["cls"] and "spk-1" in rows[1]["cls"] and "turn" in rows[1]["cls"]
    assert rows[0]["colour"] != rows[1]["colour"]
    assert live["latency"] == "0.30 s (median 0.42 s)"
    assert after == ""
