"""Soak the websocket server: an hour of audio through one session, then through 20 at once.

A server process (bench/serverproc.py: ``SpeechServer`` as ``wavlm-stream serve`` runs it;
the tiny random-weight model by default, ``--model bundled`` for model/default) receives

1. ``--minutes`` (60) minutes of speech-like audio through ONE websocket session, sent as
   fast as the server takes it (0.5 s PCM16 messages, at most ``--max-lead-s`` seconds of
   audio unread by the server: see ``session``; ``--unpaced`` drops that limit);
2. ``--sessions`` (20) sessions at once, each streaming ``--multi-minutes`` minutes of the
   same audio (default: ``--minutes``, an hour each, 20 hours in all; ``--multi-minutes 3``
   for one hour in all).

The server's RSS (from /proc, the server process only) is sampled every ``--rss-every-s``
seconds (0.25). Growth of each phase = its floor at the end minus its floor after warm-up:
the lowest sample over the last tenth of the phase's audio minus the lowest over the tenth
after every session of the phase has streamed ``--warmup-minutes`` (10) minutes (or a quarter
of its audio if that is less), each window at least ``--floor-window-s`` (2) seconds long.
Allocator pools, caches and the streams' own bounded state are then in the baseline, and
memory held only while a final's second pass runs (tens of MB for a long segment, returned
when it ends) does not count, so growth is what accumulates with the audio (a leak). RSS
after all sessions closed is printed too.
Also printed: speed (x real time) of each phase, open sessions and worker jobs at the end
(must be 0), close codes and error events (must be 1000 and none), and, with ``--verify``
(default), whether each session's finals equal those of the same audio run alone through
the same pipeline in this process (after the server phases, so as not to disturb them):
finals count, segment ids, and exact texts and times.

    python bench/soak.py                               # tiny model: ~10 minutes on 2 shared cores
    python bench/soak.py --minutes 10 --multi-minutes 1 --no-verify   # a quick look
    python bench/soak.py --model bundled --minutes 60

Exit status 0 when both growths < ``--max-growth-mb`` (20), no session is left open, every
session closed normally without errors and (with --verify) no final was lost.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import difflib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from serverproc import PipelineSpec, ServerProcess, build_pipeline  # noqa: E402

RATE = 16000


def minute_of_audio(k: int, seed: int) -> np.ndarray:
    """Minute k of the soak audio (int16): noise bursts at a syllable-like rate with pauses,
    the same for every session and every run."""
    rng = np.random.default_rng([seed, k])
    n = RATE * 60
    step = RATE // 5                               # 200 ms "syllables"
    voiced = rng.random(n // step) > 0.35          # pauses end segments
    env = np.repeat(rng.uniform(0.2, 1.0, n // step) * voiced, step)
    return (rng.standard_normal(n) * env * 5000).clip(-32768, 32767).astype(np.int16)


def audio_blocks(minutes: float, block: int, seed: int):
    """The soak audio as int16 blocks of ``block`` samples, generated minute by minute
    (an hour of int16 is 115 MB: never held at once)."""
    total = int(minutes * 60 * RATE)
    sent, k, carry = 0, 0, np.zeros(0, np.int16)
    while sent < total:
        buf = np.concatenate([carry, minute_of_audio(k, seed)])
        k += 1
        i = 0
        while i + block <= len(buf) and sent < total:
            n = min(block, total - sent)
            yield buf[i:i + n]
            i += n
            sent += n
        carry = buf[i:]
        if sent < total and len(carry) and k * 60 * RATE >= total:
            yield carry[: total - sent]
            sent = total


class Progress:
    def __init__(self):
        self.audio_s = 0.0       # audio sent by all clients in the current phase
        self.phase = 1


async def session(port: int, minutes: float, seed: int, block: int, progress: Progress,
                  max_lead_s: float | None) -> dict:
    """Stream the soak audio through one session faster than real time.

    max_lead_s: flow control. The client pings the server every second of audio; the server
    answers a ping only once it has read everything sent before it, so awaiting the pong of
    the audio sent ``max_lead_s`` ago keeps at most that much audio unread in the socket.
    None: send as fast as the socket takes it (then megabytes of audio can sit in the
    kernel buffers, in front of the client's answers to the server's keepalive pings).
    """
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    finals, errors = [], []
    t0 = time.monotonic()
    failure = None
    try:
        async with connect(f"ws://127.0.0.1:{port}/ws", max_size=None) as ws:
            await ws.send(json.dumps({"type": "start", "sample_rate": RATE, "format": "pcm_s16le", "channels": 1}))

            async def reader():
                with contextlib.suppress(ConnectionClosed):
                    async for message in ws:
                        e = json.loads(message)
                        if e["type"] == "final":
                            e.pop("latency", None)
                            finals.append(e)
                        elif e["type"] == "error":
                            errors.append(e)

            task = asyncio.create_task(reader())
            pings: list[tuple[float, asyncio.Future]] = []     # (audio seconds sent before it, pong)
            sent_s = next_ping = 0.0
            try:
                for chunk in audio_blocks(minutes, block, seed):
                    await ws.send(chunk.tobytes())
                    sent_s += len(chunk) / RATE
                    progress.audio_s += len(chunk) / RATE
                    if max_lead_s is not None:
                        if sent_s >= next_ping:
                            pings.append((sent_s, await ws.ping()))
                            next_ping = sent_s + 1.0
                        while pings and sent_s - pings[0][0] > max_lead_s:
                            await pings.pop(0)[1]
                await ws.send('{"type": "stop"}')
            except ConnectionClosed as e:
                failure = f"connection closed while sending: {e}"
            await task
            code = ws.close_code
    except (OSError, ConnectionClosed) as e:
        failure, code = f"{type(e).__name__}: {e}", None
    if failure is None and code != 1000:
        failure = f"closed with {code}: {ws.close_reason}"
    return {"finals": finals, "errors": errors, "code": code, "failure": failure,
            "seconds": time.monotonic() - t0}


@dataclass(frozen=True)
class Sample:
    t: float          # seconds since the start
    phase: int        # 1: one session, 2: many, 3: after all sessions closed
    audio_s: float    # audio sent in this phase so far (all sessions)
    rss_mb: float     # the server process's RSS
    sessions: int     # open sessions


def growth(samples: list[Sample], phase: int, warm_audio_s: float,
           min_window_s: float) -> tuple[Sample, Sample] | None:
    """(baseline, end) of a phase: its lowest sample over the tenth of its audio after warm_audio_s
    was sent, and its lowest over the last tenth (transient buffers lift single samples, not floors).

    Each window spans at least ``min_window_s`` of wall time: a long segment's second pass holds
    tens of MB for up to a second, which in a phase running at 80x real time is longer than a
    tenth of its audio, so a window of one or two samples can sit entirely on such a transient.
    """
    mine = [s for s in samples if s.phase == phase]
    warm = [s for s in mine if s.audio_s >= warm_audio_s]
    if not warm:
        return None
    tenth = max(s.audio_s for s in mine) / 10
    after_warm = [s for s in warm if s.audio_s <= warm_audio_s + tenth or s.t <= warm[0].t + min_window_s]
    last = [s for s in mine if s.audio_s >= mine[-1].audio_s - tenth or s.t >= mine[-1].t - min_window_s]
    return min(after_warm, key=lambda s: s.rss_mb), min(last, key=lambda s: s.rss_mb)


async def sample_rss(server: ServerProcess, progress: Progress, every_s: float, print_every_s: float,
                     samples: list, stop: asyncio.Event):
    """Sample the server's RSS every ``every_s`` (print a line every ``print_every_s``)."""
    t0 = time.monotonic()
    printed = -print_every_s
    while not stop.is_set():
        s = await asyncio.to_thread(server.stats)
        if s is None:
            print("  SERVER GONE", flush=True)
            return
        samples.append(Sample(time.monotonic() - t0, progress.phase, progress.audio_s, s["rss_mb"], s["sessions"]))
        if samples[-1].t - printed >= print_every_s:
            printed = samples[-1].t
            print(f"  t={samples[-1].t:7.1f}s  phase {progress.phase}  audio {progress.audio_s / 60:8.1f} min  "
                  f"rss {s['rss_mb']:7.1f} MB  sessions {s['sessions']:2d}", flush=True)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(every_s):
                await stop.wait()


def alone_finals(pipeline, minutes: float, seed: int) -> list[dict]:
    stream = pipeline.new_stream()
    events = []
    for chunk in audio_blocks(minutes, RATE * 10, seed):
        events += stream.feed(chunk, RATE)
    events += stream.finish()
    out = []
    for e in events:
        if e.type == "final":
            d = e.to_dict()
            d.pop("latency", None)
            out.append(d)
    return out


def compare(got: list[dict], expected: list[dict]) -> dict:
    same = got == expected
    text_got = " / ".join(f["text"] for f in got)
    text_exp = " / ".join(f["text"] for f in expected)
    return {
        "identical": same,
        "finals": len(got), "expected": len(expected),
        "segments_contiguous": [f["segment"] for f in got] == list(range(len(got))),
        "text_similarity": 1.0 if same else round(difflib.SequenceMatcher(None, text_got, text_exp,
                                                                          autojunk=False).ratio(), 4),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="tiny (random weights, default), bundled, or a directory")
    parser.add_argument("--beam", action=argparse.BooleanOptionalAction, default=None,
                        help="beam-search finals (default: on for trained models, off for tiny)")
    parser.add_argument("--minutes", type=float, default=60.0, help="audio through the single session")
    parser.add_argument("--sessions", type=int, default=20, help="concurrent sessions in phase 2")
    parser.add_argument("--multi-minutes", type=float, default=None,
                        help="audio per session in phase 2 (default: --minutes)")
    parser.add_argument("--block-s", type=float, default=0.5, help="seconds of audio per message")
    parser.add_argument("--max-lead-s", type=float, default=5.0,
                        help="flow control: most audio seconds unread by the server (see session())")
    parser.add_argument("--unpaced", action="store_true",
                        help="no flow control: send as fast as the sockets take it (audio sent then runs "
                             "far ahead of audio processed, so the warm-up baselines come too early)")
    parser.add_argument("--warmup-minutes", type=float, default=10.0,
                        help="RSS baseline after this much audio per session")
    parser.add_argument("--rss-every-s", type=float, default=0.25, help="RSS sampling period")
    parser.add_argument("--floor-window-s", type=float, default=2.0,
                        help="least wall time over which a floor (lowest RSS) is taken (see growth())")
    parser.add_argument("--print-every-s", type=float, default=10.0, help="progress line period")
    parser.add_argument("--max-growth-mb", type=float, default=20.0)
    parser.add_argument("--verify", action=argparse.BooleanOptionalAction, default=True,
                        help="compare every session's finals with the audio run alone (default on)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (server and the alone runs)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    multi_minutes = args.multi_minutes if args.multi_minutes is not None else args.minutes
    block = int(args.block_s * RATE)

    import torch
    torch.set_num_threads(args.threads)
    spec = PipelineSpec(model=args.model, beam=args.beam)
    limits = {"max_sessions": args.sessions + 4, "max_session_s": 4 * 3600.0 + args.minutes * 60,
              "idle_timeout_s": 120.0}
    samples: list = []
    with ServerProcess(spec, limits, threads=args.threads) as server:
        print(f"server pid {server.pid} port {server.port}, model {args.model}, "
              f"rss at start {server.rss_mb():.1f} MB", flush=True)

        async def run_all():
            progress = Progress()
            stop = asyncio.Event()
            sampler = asyncio.create_task(sample_rss(server, progress, args.rss_every_s, args.print_every_s, samples, stop))
            t0 = time.monotonic()
            lead = None if args.unpaced else args.max_lead_s
            single = await session(server.port, args.minutes, args.seed, block, progress, lead)
            t1 = time.monotonic()
            after_single = await asyncio.to_thread(server.wait_settled, 30.0)
            progress.phase, progress.audio_s = 2, 0.0
            multi = await asyncio.gather(*[session(server.port, multi_minutes, args.seed, block, progress, lead)
                                           for _ in range(args.sessions)])
            t2 = time.monotonic()
            settled = await asyncio.to_thread(server.wait_settled, 30.0)
            progress.phase = 3
            await asyncio.sleep(2.0)
            stop.set()
            await sampler
            final = await asyncio.to_thread(server.stats)
            if final is not None:
                samples.append(Sample(time.monotonic() - t0, 3, progress.audio_s, final["rss_mb"], final["sessions"]))
            return single, t1 - t0, after_single, multi, t2 - t1, settled

        single, single_s, after_single, multi, multi_s, settled = asyncio.run(run_all())
        logs = server.log_counts()
        alive = server.alive()
        rss_trimmed = server.trimmed_rss_mb() if alive else float("nan")

    # Baselines: phase 1 after --warmup-minutes of its audio; phase 2 after each session has
    # streamed the same (or a quarter of its audio, if less), so that the memory the 20
    # concurrent streams legitimately hold is in the baseline and growth means a leak.
    warm2 = min(args.warmup_minutes, multi_minutes / 4)
    g1 = growth(samples, 1, args.warmup_minutes * 60, args.floor_window_s)
    g2 = growth(samples, 2, warm2 * 60 * args.sessions, args.floor_window_s)
    start_rss, last = samples[0].rss_mb, samples[-1]
    peak = max(s.rss_mb for s in samples)
    growths = [b.rss_mb - a.rss_mb for a, b in (g1, g2)] if g1 and g2 else []

    print()
    print(f"phase 1: 1 session, {args.minutes:g} min of audio in {single_s:.1f} s "
          f"= {args.minutes * 60 / single_s:.1f}x real time; close {single['code']}, "
          f"{len(single['errors'])} errors, {len(single['finals'])} finals")
    codes = sorted({r["code"] for r in multi}, key=str)
    print(f"phase 2: {args.sessions} sessions x {multi_minutes:g} min = {args.sessions * multi_minutes:g} min "
          f"of audio in {multi_s:.1f} s = {args.sessions * multi_minutes * 60 / multi_s:.1f}x real time "
          f"(each session {multi_minutes * 60 / max(r['seconds'] for r in multi):.1f}x); close codes {codes}, "
          f"{sum(len(r['errors']) for r in multi)} errors")
    for i, r in enumerate([single, *multi]):
        if r["failure"]:
            print(f"  session {i} ({'phase 1' if i == 0 else 'phase 2'}) FAILED: {r['failure']}")
    print(f"RSS samples: {len(samples)} (every {args.rss_every_s:g} s); start {start_rss:.1f} MB, "
          f"peak {peak:.1f} MB, after all sessions closed {last.rss_mb:.1f} MB, "
          f"then after gc + malloc_trim {rss_trimmed:.1f} MB")
    for name, g, warm in (("phase 1", g1, args.warmup_minutes), ("phase 2", g2, warm2)):
        if g is None:
            print(f"RSS growth {name}: not measured (the phase had less audio than its warm-up)")
        else:
            print(f"RSS growth {name}: {g[1].rss_mb - g[0].rss_mb:+.1f} MB (floor {g[0].rss_mb:.1f} MB after "
                  f"{warm:g} min of audio per session -> {g[1].rss_mb:.1f} MB at the end of the phase); "
                  f"limit {args.max_growth_mb:g} MB")
    for phase, per_session in ((1, args.minutes), (2, multi_minutes)):
        mine = [s for s in samples if s.phase == phase]
        if mine:
            total = max(s.audio_s for s in mine) or 1.0
            marks = []
            for q in range(0, 11):
                at = next((s for s in mine if s.audio_s >= total * q / 10), mine[-1])
                marks.append(f"{per_session * q / 10:g}:{at.rss_mb:.1f}")
            print(f"RSS (MB) over phase {phase}, by minutes of audio per session: {'  '.join(marks)}")
    if g1:
        print(f"RSS from the phase 1 baseline to after everything closed: {last.rss_mb - g1[0].rss_mb:+.1f} MB "
              f"(includes what {args.sessions} concurrent streams left in the allocator's pools)")
    print(f"open sessions after phase 1: {None if after_single is None else after_single['sessions']}, "
          f"at the end: {None if settled is None else settled['sessions']} "
          f"(worker jobs {None if settled is None else settled['jobs']})")
    print(f"server alive: {alive}; tracebacks in its log: {logs['tracebacks']}")

    ok = (alive and settled is not None and settled["sessions"] == 0 and settled["jobs"] == 0
          and len(growths) == 2 and max(growths) < args.max_growth_mb
          and single["code"] == 1000 and not single["errors"]
          and all(r["code"] == 1000 and not r["errors"] for r in multi))
    if args.verify:
        print("verifying against the audio run alone in this process ...", flush=True)
        pipeline = build_pipeline(spec, server.workdir)
        t = time.monotonic()
        exp_single = alone_finals(pipeline, args.minutes, args.seed)
        exp_multi = exp_single if multi_minutes == args.minutes else alone_finals(pipeline, multi_minutes, args.seed)
        alone_s = time.monotonic() - t
        c1 = compare(single["finals"], exp_single)
        cs = [compare(r["finals"], exp_multi) for r in multi]
        print(f"  alone runs took {alone_s:.1f} s")
        print(f"  phase 1 session: {c1}")
        print(f"  phase 2 sessions identical to alone: {sum(c['identical'] for c in cs)}/{len(cs)}; "
              f"finals counts {sorted({c['finals'] for c in cs})} (alone {len(exp_multi)}); "
              f"min text similarity {min(c['text_similarity'] for c in cs)}")
        lost = [c for c in [c1, *cs] if c["finals"] != c["expected"] or not c["segments_contiguous"]]
        print(f"  sessions that lost or gained a final: {len(lost)}")
        ok = ok and not lost
    print("RESULT", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
