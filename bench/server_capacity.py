"""How many concurrent real-time streams the websocket server sustains on this machine.

For each model (the bundled model, and a base-size WavLM with random weights: 768 x 12
layers, conv 512, group norm) and with and without batching, a server process runs
``SpeechServer`` exactly as ``wavlm-stream serve`` does, and this process plays N clients
that each stream audio in real time (100 ms PCM16 messages on a fixed schedule, start
times staggered) over loopback, for N = 1, 2, 3, 4, 6, 8, ... until the server falls behind.

A client's event latency is measured on the client: receive time minus the time the audio
at the event's ``end`` was sent. N streams are *sustained* when, over the last two thirds
of the run (steady state), the 95th percentile of that latency is under ``--latency-limit``,
every client's last final arrives within the limit after its stop message (flush), and no
client's sending fell behind its schedule by more than the limit (slip: the server stops
reading a client whose backlog is full). A model that emits no caption events at all
(only blanks) is judged by flush and slip alone. The
algorithmic part of the latency (waiting for a chunk plus lookahead: up to chunk + right
= 0.96 s with the defaults) is included, so the default limit of 2.0 s leaves ~1 s for
queueing and compute.

    python bench/server_capacity.py                       # both models, both modes
    python bench/server_capacity.py --models bundled --duration 20
    python bench/server_capacity.py --models bundled --modes batched --finals thread,inline

``--finals``: where the server computes finals (each closed segment's second pass and beam
search): on its finals thread (``thread``, the default) or inside the inference cycle
(``inline``, as before 2026-12-07), where one session's final holds back every session's windows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RATE = 16000
CHUNK_S = 0.1


# -- the server process ---------------------------------------------------------------


def build_pipeline(which: str, beam: bool | None, bundled: str | None = None):
    import torch  # noqa: F401  (imported here so the client process stays light)

    from stream.pipeline import DEFAULT_MODEL, Pipeline

    if which == "bundled":
        return Pipeline.from_pretrained(bundled or DEFAULT_MODEL, beam=True if beam is None else beam)
    if which == "base":
        from model import WavLMConfig, build_model
        from stream.pipeline import StreamConfig

        vocab = ["<pad>", "<s>", "</s>", "<unk>", "|", "'"] + [chr(c) for c in range(ord("a"), ord("z") + 1)]
        config = WavLMConfig(vocab_size=len(vocab), architectures=("WavLMForCTC",))  # 768 x 12, conv 512
        torch.manual_seed(0)
        model = build_model(config).eval()
        model.vocab = tuple(vocab)
        # Random weights give flat CTC posteriors, on which a beam search costs far more than on
        # a trained model's peaked ones: greedy finals unless asked otherwise.
        return Pipeline(model, StreamConfig(beam=bool(beam)))
    return Pipeline.from_pretrained(which, speakers=False, beam=bool(beam))


def serve_child(which: str, batching: bool, threads: int, beam: bool | None, bundled: str | None,
                finals_thread: bool, conn) -> None:
    import torch

    from stream.server import ServerConfig, ServerLimits, SpeechServer

    torch.set_num_threads(threads)
    pipeline = build_pipeline(which, beam, bundled)
    info = {"params_m": round(sum(p.numel() for p in pipeline.model.parameters()) / 1e6, 1),
            "hidden": pipeline.model.config.hidden_size, "layers": pipeline.model.config.num_hidden_layers,
            "beam": pipeline.config.beam}

    async def main():
        limits = ServerLimits(max_sessions=1000, idle_timeout_s=120)
        server = SpeechServer(pipeline, ServerConfig(port=0, limits=limits, batching=batching,
                                                     finals_thread=finals_thread))
        async with server:
            conn.send({"port": server.port, **info})
            while True:
                await asyncio.sleep(0.5)
                if conn.poll():
                    conn.recv()
                    conn.send({"max_batch": server.worker.max_batch, "forwards": server.worker.forwards})
                    server.worker.max_batch = 0

    asyncio.run(main())


# -- the clients ----------------------------------------------------------------------


@dataclass
class ClientResult:
    latencies: list[float]      # steady-state event latencies (s)
    partial_latencies: list[float]  # the same, of partials alone (finals also wait for the endpoint)
    finish_lag: float           # stop message -> connection closed (s)
    slip: float                 # how far sending fell behind its real-time schedule (s)
    errors: list[str]


async def client(port: int, audio: np.ndarray, offset: float, steady_from: float) -> ClientResult:
    from websockets.asyncio.client import connect

    await asyncio.sleep(offset)
    step = int(RATE * CHUNK_S)
    sent_at: list[float] = []          # send time of chunk k (covers samples [k*step, (k+1)*step))
    latencies, partial_latencies, errors = [], [], []
    async with connect(f"ws://127.0.0.1:{port}/ws", max_size=None) as ws:
        await ws.send(json.dumps({"type": "start", "sample_rate": RATE, "format": "pcm_s16le", "channels": 1}))

        async def reader():
            async for message in ws:
                now = time.monotonic()
                e = json.loads(message)
                if e["type"] == "error":
                    errors.append(e["code"])
                elif "end" in e and e["end"] is not None and e["end"] >= steady_from:
                    k = min(int(round(e["end"] * RATE)) // step, len(sent_at) - 1)
                    if k >= 0:
                        latencies.append(now - sent_at[k])
                        if e["type"] == "partial":
                            partial_latencies.append(now - sent_at[k])

        task = asyncio.create_task(reader())
        t0 = time.monotonic()
        slip = 0.0
        for k, i in enumerate(range(0, len(audio), step)):
            # A fixed schedule: a late wake-up does not shift later chunks. A server that
            # stops reading (its backlog is full) makes the sends fall behind: slip.
            await asyncio.sleep(max(0.0, t0 + k * CHUNK_S - time.monotonic()))
            sent_at.append(time.monotonic())
            slip = max(slip, sent_at[-1] - (t0 + k * CHUNK_S))
            await ws.send(audio[i:i + step].tobytes())
        stop_at = time.monotonic()
        await ws.send('{"type": "stop"}')
        await task
        return ClientResult(latencies, partial_latencies, time.monotonic() - stop_at, slip, errors)


async def trial(port: int, n: int, audio: np.ndarray, duration: float):
    rng = np.random.default_rng(n)
    results = await asyncio.gather(*[
        client(port, np.roll(audio, int(rng.integers(len(audio)))), float(rng.uniform(0, CHUNK_S * 5)),
               duration / 3) for _ in range(n)])
    lat = np.array([x for r in results for x in r.latencies])
    partial = np.array([x for r in results for x in r.partial_latencies])
    return {
        "p50": float(np.percentile(lat, 50)) if lat.size else float("nan"),
        "p95": float(np.percentile(lat, 95)) if lat.size else float("nan"),
        "partial_p95": float(np.percentile(partial, 95)) if partial.size else float("nan"),
        "finish_lag": max(r.finish_lag for r in results),
        "slip": max(r.slip for r in results),
        "errors": sorted({e for r in results for e in r.errors}),
        "events": int(lat.size),
    }


def load_audio(duration: float) -> np.ndarray:
    """An example recording (looped to ``duration``), else tone bursts in noise."""
    n = int(duration * RATE)
    for wav in sorted((ROOT / "examples").glob("*.wav")):
        from stream.audio import AudioIntake, to_float_mono
        import soundfile as sf

        data, rate = sf.read(str(wav), dtype="float32")
        intake = AudioIntake(RATE)
        x = np.concatenate([intake.push(to_float_mono(data), rate), intake.flush()])
        x = np.tile(x, int(np.ceil(n / len(x))))[:n]
        return (np.clip(x, -1, 1) * 32767).astype(np.int16)
    rng = np.random.default_rng(0)
    t = np.arange(n) / RATE
    x = 0.3 * np.sin(2 * np.pi * 220 * t) * (np.sin(2 * np.pi * 0.7 * t) > 0) + rng.normal(0, 0.02, n)
    return (x * 32767).astype(np.int16)


def capacity(which: str, batching: bool, finals_thread: bool, args, audio: np.ndarray) -> int:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=serve_child, args=(which, batching, args.threads, args.beam, args.bundled,
                                                      finals_thread, child), daemon=True)
    proc.start()
    try:
        if not parent.poll(600):
            raise RuntimeError("server process did not start")
        info = parent.recv()
        print(f"\n{which} model ({info['params_m']} M params, {info['hidden']} x {info['layers']}, "
              f"{'beam' if info['beam'] else 'greedy'} finals), batching {'on' if batching else 'off'}, "
              f"finals {'on their own thread' if finals_thread else 'in the inference cycle'}")
        print(f"{'streams':>8} {'p50 s':>7} {'p95 s':>7} {'partial p95':>11} {'flush s':>8} {'slip s':>7} {'max batch':>9}  sustained")
        def step(n: int) -> bool:
            r = asyncio.run(trial(info["port"], n, audio, args.duration))
            parent.send("stats")
            stats = parent.recv()
            # Without caption events (a model that outputs only blanks) the flush lag and the
            # send slip still show whether the server kept up.
            ok = (not r["errors"] and r["finish_lag"] <= args.latency_limit and r["slip"] <= args.latency_limit
                  and (r["events"] == 0 or r["p95"] <= args.latency_limit))
            note = "  errors: " + ",".join(r["errors"]) if r["errors"] else ""
            note += "  (no caption events: flush lag and slip only)" if r["events"] == 0 else ""
            print(f"{n:>8} {r['p50']:>7.2f} {r['p95']:>7.2f} {r['partial_p95']:>11.2f} {r['finish_lag']:>8.2f} {r['slip']:>7.2f} "
                  f"{stats['max_batch']:>9}  {'yes' if ok else 'no'}{note}", flush=True)
            time.sleep(1.0)   # let the server drain before the next step
            return ok

        best, worst = 0, None   # the most streams sustained, the fewest not sustained
        for n in args.ladder:
            if n > args.max_streams:
                break
            if not step(n):
                worst = n
                break
            best = n
        while worst is not None and worst - best > 1:   # bisect between the ladder's steps
            n = (best + worst) // 2
            if step(n):
                best = n
            else:
                worst = n
        return best
    finally:
        proc.terminate()
        proc.join(10)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="bundled,base",
                   help="comma list: bundled, base, or checkpoint directories (default: bundled,base)")
    p.add_argument("--modes", default="batched,unbatched", help="batched, unbatched or both")
    p.add_argument("--finals", default="thread", help="thread, inline or both (thread,inline)")
    p.add_argument("--duration", type=float, default=12.0, help="seconds of audio per client per step")
    p.add_argument("--latency-limit", type=float, default=2.0, help="p95 latency and flush limit (s)")
    p.add_argument("--max-streams", type=int, default=64)
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads in the server (default 1: on a shared machine more "
                        "threads spin against each other and the other load; try more on a dedicated one)")
    p.add_argument("--bundled", default=None, metavar="DIR",
                   help="where the bundled model is (default model/default; a copy keeps a model that is "
                        "still being exported from changing between runs)")
    p.add_argument("--beam", action=argparse.BooleanOptionalAction, default=None,
                   help="beam-search finals (default: on for the bundled model, off for random weights)")
    p.add_argument("--ladder", type=lambda s: [int(x) for x in s.split(",")],
                   default=[1, 2, 3, 4, 6, 8, 10, 12, 16, 20, 24, 32, 40, 48, 64])
    args = p.parse_args(argv)
    finals_modes = [f.strip() for f in args.finals.split(",")]
    if not set(finals_modes) <= {"thread", "inline"}:
        p.error(f"--finals: thread, inline or both, got {args.finals!r}")

    from stream.pipeline import DEFAULT_MODEL

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if "bundled" in models and not (Path(args.bundled or DEFAULT_MODEL) / "config.json").exists():
        print(f"note: no bundled model at {args.bundled or DEFAULT_MODEL}; skipping it", file=sys.stderr)
        models.remove("bundled")
    audio = load_audio(args.duration)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"machine: {os.cpu_count()} cores, load average {load:.1f} before the run; server torch threads "
          f"{args.threads}; {args.duration:g} s per client per step; limit {args.latency_limit:g} s")
    summary = []
    for which in models:
        for mode in [m.strip() for m in args.modes.split(",")]:
            for finals in finals_modes:
                n = capacity(which, mode == "batched", finals == "thread", args, audio)
                summary.append((which, mode, finals, n))
    print("\nconcurrent real-time streams sustained:")
    for which, mode, finals, n in summary:
        print(f"  {which:>10} {mode:>10} finals {finals:>6}: {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
