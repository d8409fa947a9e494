"""Real-time factor of the streaming engine against transformers and naive recomputation.

RTF = compute seconds / audio seconds (lower is faster). Every row of a table is measured
in this process on the same weights and the same audio, and printed with its ratio to
transformers' offline ``WavLMForCTC`` on the same input, so the ratios hold on a noisy,
shared machine even when the absolute numbers move. Each configuration runs ``--repeats``
times; the best time is kept (the least disturbed by other load).

Rows:
  stream cached / recompute   our engine at the given latency (default left 2 s, chunk 0.64 s, right 0.32 s)
  stream cached int8          the same with int8 dynamic quantization of the Linear layers
  stream cached bf16          the same with the transformer in bfloat16 (bench/geometry.py: its CER)
  stream cached F.linear      the same with torch's F.linear instead of model.linear's oneDNN product
  stream cached unpacked      the same oneDNN product on the plain weights, not those packed in its layout
  ours offline                our model's offline forward
  ours offline F.linear       the same with torch's F.linear
  hf offline                  transformers WavLMForCTC, one forward over the whole input
  hf pipeline chunked         transformers' ASR pipeline, chunk_length_s=10, stride_length_s=(4, 2)
  naive 4s/1s                 our offline forward on the last 4 s, once per second of audio
  naive same latency          our offline forward on [left|chunk|right] of raw audio once per chunk

Several ``--model``s run one after the other, each in a process of its own (see main()).

With several lengths it also prints a floor for any float32 stream of these weights: our
offline forward on the shortest input (every frame through every layer once, little
attention) as a ratio to transformers offline on the longest.

    python bench/rtf.py --model base --seconds 10 30 60
    python bench/rtf.py --model bundled --seconds 10 30 60
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model import load_model  # noqa: E402
from model.linear import onednn_linear, prepacked_weights  # noqa: E402
from stream.pipeline import DEFAULT_MODEL, Pipeline, StreamConfig, bf16_transformer, quantize_int8  # noqa: E402


def base_checkpoint(directory: Path) -> Path:
    """A random-weight base-size (768 x 12, conv 512) WavLM CTC checkpoint written by transformers."""
    from tests.checkpoints import write_ctc_checkpoint

    return write_ctc_checkpoint(directory, norm="layer", stable=True, hidden=768, layers=12, heads=12,
                                conv_dim=512, intermediate_size=3072, num_conv_pos_embeddings=128,
                                num_conv_pos_embedding_groups=16, num_buckets=320, max_bucket_distance=800)


def speech_like(seconds: float, seed: int = 0) -> np.ndarray:
    """Noise with a syllable-rate envelope: the engine's cost does not depend on content."""
    rng = np.random.default_rng(seed)
    n = int(16000 * seconds)
    envelope = np.repeat(rng.uniform(0.05, 1.0, n // 3200 + 1), 3200)[:n]
    return (rng.standard_normal(n) * 0.1 * envelope).astype(np.float32)


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def run_stream(pipe: Pipeline, audio: np.ndarray, block: int = 1600) -> None:
    stream = pipe.new_stream()
    for i in range(0, len(audio), block):
        stream.feed(audio[i:i + block], 16000)
    stream.finish()


def naive(model, audio: np.ndarray, window_s: float, hop_s: float) -> None:
    """Recompute the whole window from raw audio at every hop, like a simple sliding window."""
    win, hop = int(window_s * 16000), int(hop_s * 16000)
    with torch.inference_mode():
        for end in range(hop, len(audio) + 1, hop):
            chunk = audio[max(0, end - win):end]
            if len(chunk) >= 400:
                model(torch.from_numpy(chunk)[None])


def plain_linear(fn) -> None:
    """Run fn with torch's F.linear instead of model.linear's oneDNN product (the lever's A/B)."""
    with onednn_linear(False):
        fn()


def unpacked_weights(fn) -> None:
    """Run fn with oneDNN's product on the plain weights, not the packed copies (the lever's A/B)."""
    with prepacked_weights(False):
        fn()


def hf_models(checkpoint: Path):
    from transformers import (Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, WavLMForCTC,
                              pipeline)

    hf = WavLMForCTC.from_pretrained(checkpoint).eval()
    asr = pipeline("automatic-speech-recognition", model=hf,
                   tokenizer=Wav2Vec2CTCTokenizer(str(checkpoint / "vocab.json")),
                   feature_extractor=Wav2Vec2FeatureExtractor(do_normalize=False), device="cpu")
    return hf, asr


def table(name: str, checkpoint: Path, seconds: list[float], args) -> None:
    ours = load_model(checkpoint)
    hf, asr = hf_models(checkpoint)
    # The streaming pass alone: the finals' second pass (stream/final_pass.py) runs once per segment
    # of speech, which this noise does not have; bench/geometry.py --final-pass measures it on speech.
    stream_cfg = dict(chunk_ms=args.chunk_ms, left_ms=args.left_ms, right_ms=args.right_ms, beam=False,
                      final_pass=False)
    pipes = {
        "stream cached": Pipeline(ours, StreamConfig(mode="cached", **stream_cfg)),
        "stream recompute": Pipeline(ours, StreamConfig(mode="recompute", **stream_cfg)),
        "stream cached int8": Pipeline(quantize_int8(load_model(checkpoint)),
                                       StreamConfig(mode="cached", **stream_cfg)),
        "stream cached bf16": Pipeline(bf16_transformer(load_model(checkpoint)),
                                       StreamConfig(mode="cached", **stream_cfg)),
    }
    same_latency_s = (args.left_ms + args.chunk_ms + args.right_ms) / 1000
    print(f"\n### {name}: RTF (compute s / audio s), best of {args.repeats}, {torch.get_num_threads()} threads")
    print(f"latency settings: left {args.left_ms:.0f} ms, chunk {args.chunk_ms:.0f} ms, right {args.right_ms:.0f} ms")
    # The arithmetic floor: offline runs each frame through the transformer once; a stream runs
    # the right context again as chunk frames, and naive recomputation runs the whole window
    # (and its conv front end) once per chunk.
    cached_work = (args.chunk_ms + args.right_ms) / args.chunk_ms
    window_work = (args.left_ms + args.chunk_ms + args.right_ms) / args.chunk_ms
    print(f"transformer frames run per output frame: offline 1.00, stream cached {cached_work:.2f}, "
          f"stream recompute and naive same latency {window_work:.2f} (naive also reruns the conv front end "
          f"{window_work:.2f}x)")
    print("| system | " + " | ".join(f"{s:.0f} s RTF (x hf)" for s in seconds) + " |")
    print("|---|" + "---|" * len(seconds))
    rows: dict[str, list[float]] = {}
    for s in seconds:
        audio = speech_like(s)
        with torch.inference_mode():
            x = torch.from_numpy(audio)[None]
            run = {
                "hf offline": lambda: hf(x),
                "ours offline": lambda: ours(x),
                "ours offline F.linear": lambda: plain_linear(lambda: ours(x)),
                **{k: (lambda p=p: run_stream(p, audio)) for k, p in pipes.items()},
                "stream cached F.linear": lambda: plain_linear(lambda: run_stream(pipes["stream cached"], audio)),
                "stream cached unpacked": lambda: unpacked_weights(lambda: run_stream(pipes["stream cached"], audio)),
                "hf pipeline chunked": lambda: asr(audio.copy(), chunk_length_s=10, stride_length_s=(4, 2)),
                "naive 4s/1s": lambda: naive(ours, audio, 4.0, 1.0),
                "naive same latency": lambda: naive(ours, audio, same_latency_s, args.chunk_ms / 1000),
            }
            run["hf offline"]()                      # warm-up (allocator, thread pool)
            for key, fn in run.items():
                rows.setdefault(key, []).append(best_time(fn, args.repeats) / s)
    for key, rtfs in rows.items():
        cells = " | ".join(f"{r:.3f} ({r / h:.2f}x)" for r, h in zip(rtfs, rows["hf offline"]))
        print(f"| {key} | {cells} |")
    if len(seconds) > 1:
        # Any stream runs every frame through the conv front end and every layer at least once;
        # our offline forward on the shortest input does just that with little attention, so its
        # RTF is (nearly) a floor for a stream of the same weights and precision.
        short, long = seconds.index(min(seconds)), seconds.index(max(seconds))   # --seconds in any order
        floor, longest = rows["ours offline"][short], rows["hf offline"][long]
        print(f"floor for a stream in float32: ours offline on {seconds[short]:.0f} s = {floor:.3f} RTF = "
              f"{floor / longest:.2f}x transformers offline on {seconds[long]:.0f} s")
    naive_same = rows["naive same latency"]
    for key in ("stream cached", "stream cached unpacked", "stream cached bf16"):
        print(f"speed-up of {key} over naive recompute (float32) at the same latency: "
              + ", ".join(f"{s:.0f} s: {n / c:.2f}x" for s, c, n in zip(seconds, rows[key], naive_same)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="+", default=["bundled", "base"],
                        help="'bundled', 'base' (random 768x12) or a checkpoint directory")
    parser.add_argument("--seconds", nargs="+", type=float, default=[10, 30, 60])
    parser.add_argument("--chunk-ms", type=float, default=640)
    parser.add_argument("--left-ms", type=float, default=2000)
    parser.add_argument("--right-ms", type=float, default=320)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    # One process per model: run after the base model in the same process, the bundled model's
    # stream measured 1.4-1.8x slower than alone (bench/README.md, 2026-12-07), its offline rows not.
    spawn = multiprocessing.get_context("spawn")
    for name in args.model:
        process = spawn.Process(target=model_table, args=(name, args))
        process.start()
        process.join()
        if process.exitcode != 0:
            raise SystemExit(f"the table of {name} failed (exit status {process.exitcode})")


def model_table(name: str, args: argparse.Namespace) -> None:
    """The table of one --model (in a process of its own, see main())."""
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        if name == "base":
            checkpoint = base_checkpoint(Path(tmp) / "base")
        elif name == "bundled":
            checkpoint = DEFAULT_MODEL
        else:
            checkpoint = Path(name)
        table(name, checkpoint, args.seconds, args)


if __name__ == "__main__":
    main()
