"""Memory of a stream: peak RSS for a 60 s input, and RSS growth over an hour-long stream.

The hour is fed faster than real time (as fast as the engine runs) in 100 ms blocks of
speech-like audio with pauses, through one stream of the pipeline, with speaker tracking on
when the model has a speaker head. RSS is sampled every simulated minute; growth is the
last sample minus the sample after the first 5 minutes (allocator warm-up).

    python bench/memory.py [--model M] [--minutes 60]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stream.pipeline import Pipeline  # noqa: E402


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def speech_like_minute(rng: np.random.Generator) -> np.ndarray:
    """One minute of noise bursts (syllable-rate envelope) separated by pauses."""
    n = 16000 * 60
    envelope = np.repeat(rng.uniform(0.0, 1.0, n // 3200), 3200)
    envelope[rng.random(n // 3200).repeat(3200) < 0.25] = 0.0
    return (rng.standard_normal(n) * 0.1 * envelope).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--minutes", type=int, default=60)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-packed-weights", action="store_true",
                        help="one copy of the Linear weights (what oneDNN's packed copy costs)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipe = Pipeline.from_pretrained(args.model, packed_weights=not args.no_packed_weights)
    rng = np.random.default_rng(0)
    block = 1600
    base = rss_mb()
    stream = pipe.new_stream()
    samples, events, t0 = [], 0, time.perf_counter()
    for minute in range(1, args.minutes + 1):
        audio = speech_like_minute(rng)
        for i in range(0, len(audio), block):
            events += len(stream.feed(audio[i:i + block], 16000))
        samples.append(rss_mb())
        if minute == 1:
            print(f"after 60 s: RSS {samples[0]:.1f} MB (model loaded: {base:.1f} MB), "
                  f"peak so far {peak_rss_mb():.1f} MB")
        if minute % 10 == 0:
            print(f"minute {minute}: RSS {samples[-1]:.1f} MB, {events} events, "
                  f"{(time.perf_counter() - t0) / (minute * 60):.3f} RTF", flush=True)
    events += len(stream.finish())
    warm = samples[min(4, len(samples) - 1)]
    print(f"RSS growth over minutes 5..{args.minutes}: {samples[-1] - warm:+.1f} MB "
          f"(target < 20 MB); peak RSS {peak_rss_mb():.1f} MB; {events} events")


if __name__ == "__main__":
    main()
