"""Emission latency of events with real-time pacing (the `transcribe --realtime` path).

Plays audio files at 1x through `file_source(realtime=True)` and `stream_events`, exactly
as the command line does, and prints p50/p95/max of each event type's `latency` (wall time
at emission minus arrival of the audio at the event's end) against the budget
chunk + right context + 150 ms.

    python bench/latency.py examples/*.wav [--model M] [--chunk-ms 640 --right-ms 320]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stream.pipeline import Pipeline  # noqa: E402
from stream.sources import file_source, stream_events  # noqa: E402


async def collect(pipe: Pipeline, path: str, block_ms: float) -> list:
    stream = pipe.new_stream()
    return [e async for e in stream_events(stream, file_source(path, block_ms=block_ms, realtime=True))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", default=sorted(str(p) for p in Path("examples").glob("*.wav")))
    parser.add_argument("--model", default=None)
    parser.add_argument("--chunk-ms", type=float, default=640)
    parser.add_argument("--left-ms", type=float, default=2000)
    parser.add_argument("--right-ms", type=float, default=320)
    parser.add_argument("--mode", default="cached")
    parser.add_argument("--block-ms", type=float, default=20, help="audio block size of the source")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-final-pass", action="store_true",
                        help="finals from the streamed log-probs (without the second pass over each segment)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipe = Pipeline.from_pretrained(args.model, chunk_ms=args.chunk_ms, left_ms=args.left_ms,
                                    right_ms=args.right_ms, mode=args.mode, final_pass=not args.no_final_pass)
    by_type: dict[str, list[float]] = {}
    for path in args.files:
        for event in asyncio.run(collect(pipe, path, args.block_ms)):
            if getattr(event, "latency", None) is not None:
                by_type.setdefault(event.type, []).append(event.latency)
    budget = (args.chunk_ms + args.right_ms + 150) / 1000
    print(f"files: {len(args.files)}; chunk {args.chunk_ms:.0f} ms, right {args.right_ms:.0f} ms, "
          f"mode {args.mode}, source blocks {args.block_ms:.0f} ms; budget chunk+right+150 ms = {budget:.3f} s")
    print("| event | n | p50 (s) | p95 (s) | max (s) | p95 within budget |")
    print("|---|---|---|---|---|---|")
    for kind, values in sorted(by_type.items()):
        v = np.array(values)
        p50, p95 = np.percentile(v, 50), np.percentile(v, 95)
        ok = "yes" if p95 <= budget else "no"
        note = "" if kind == "partial" else " (not budgeted)"
        print(f"| {kind} | {len(v)} | {p50:.3f} | {p95:.3f} | {v.max():.3f} | {ok}{note} |")


if __name__ == "__main__":
    main()
