"""Window geometry and mode: what each costs in speed, latency and accuracy.

Rows are CHUNK_MS/RIGHT_MS, optionally with ``:recompute`` (no key/value cache),
``:int8`` (int8 dynamic quantization of the Linear layers) or ``:bf16`` (the transformer in
bfloat16). For each (left context fixed) the table gives
  work         transformer frames run per output frame, (chunk + right) / chunk
  budget       the partial-latency budget, chunk + right + 150 ms
  RTF          stream cached, compute s / audio s, and its ratio to transformers' offline
               WavLMForCTC on the same input in this process (as bench/rtf.py)
  CER          greedy finals decoded from the streamed log-probs (what the partials show) on
               held-out clips (held-out voices and sentences, the test split of train/), next
               to the offline greedy CER of the same clips

so a faster default is never bought silently with accuracy. The RTF is the streaming pass
alone (finals' second pass off). ``--final-pass`` adds the greedy CER of the finals from the
second pass (stream/final_pass.py, the default) and its compute on those clips relative to
the streaming pass alone.

    python bench/geometry.py [--geometry 640/320 960/320 1280/320 640/320:int8] [--clips 60] [--seconds 10 60]
    python bench/geometry.py --geometry 640/320 --final-pass
    python bench/geometry.py --geometry 640/320 640/3000 --left-ms 20000 --warmup-ms 3000   # where partials drift
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from rtf import best_time, hf_models, run_stream, speech_like

from model import load_model
from stream.pipeline import DEFAULT_MODEL, Pipeline, StreamConfig, bf16_transformer, quantize_int8

TEST_MANIFEST = Path.home() / ".cache" / "wavlm-stream" / "data" / "test.jsonl"


def parse_geometry(text: str) -> tuple[float, float, str]:
    """'640/320' or '640/320:recompute|:int8|:bf16' -> (chunk_ms, right_ms, variant)."""
    shape, _, variant = text.partition(":")
    variant = variant or "cached"
    try:
        chunk, right = (float(x) for x in shape.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"geometry must be CHUNK_MS/RIGHT_MS[:recompute|:int8|:bf16], e.g. 640/320; "
                                         f"got {text!r}") from None
    if variant not in ("cached", "recompute", "int8", "bf16"):
        raise argparse.ArgumentTypeError(f"unknown variant {variant!r} in {text!r}: use recompute, int8 or bf16")
    return chunk, right, variant


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="CTC checkpoint (default: the bundled model)")
    parser.add_argument("--geometry", nargs="+", type=parse_geometry,
                        default=[parse_geometry(g) for g in ("640/320", "640/320:recompute", "640/320:int8", "640/320:bf16",
                                                             "960/320", "1280/320", "640/160", "1280/480")],
                        metavar="CHUNK_MS/RIGHT_MS[:VARIANT]")
    parser.add_argument("--left-ms", type=float, default=2000)
    parser.add_argument("--warmup-ms", type=float, default=1000,
                        help="StreamConfig.group_norm_warmup_ms: audio whose group-norm statistics the first "
                             "frames share (group-norm models; longer holds the first window back)")
    parser.add_argument("--seconds", nargs="+", type=float, default=[10, 60], help="input lengths for the RTF")
    parser.add_argument("--clips", type=int, default=60, help="held-out clips for the CER (0: skip)")
    parser.add_argument("--manifest", type=Path, default=TEST_MANIFEST)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--final-pass", action="store_true",
                        help="also the CER of finals from the second pass and its compute on the clips")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = load_model(args.model)
    hf, _ = hf_models(Path(args.model))
    clips = []
    if args.clips:
        if not args.manifest.exists():
            raise SystemExit(f"{args.manifest} not found: generate the data with train/ (see train/README.md) "
                             "or pass --clips 0")
        import soundfile as sf

        from train.data import read_manifest
        from train.evaluate import pipeline_transcripts, transcribe_clips
        from train.metrics import error_rates

        all_clips = read_manifest(args.manifest)
        clips = [all_clips[i] for i in np.random.default_rng(0).permutation(len(all_clips))[:args.clips]]
        waves = [sf.read(c.path, dtype="float32")[0] for c in clips]
        refs = [c.text for c in clips]
        offline_cer = error_rates(refs, transcribe_clips(model.eval(), clips))[0]

    audio = {s: speech_like(s) for s in args.seconds}
    with torch.inference_mode():
        hf_rtf = {}
        for s, a in audio.items():
            x = torch.from_numpy(a)[None]
            hf(x)                                               # warm-up
            hf_rtf[s] = best_time(lambda x=x: hf(x), args.repeats) / s

    print(f"model {args.model}; left {args.left_ms:.0f} ms; group-norm warm-up {args.warmup_ms:.0f} ms; "
          f"{args.threads} threads; best of {args.repeats}; "
          f"transformers offline RTF " + ", ".join(f"{s:.0f} s: {r:.4f}" for s, r in hf_rtf.items()))
    cer_head = f" | stream CER ({len(clips)} clips; offline {offline_cer:.3f})" if clips else ""
    if clips and args.final_pass:
        cer_head += " | CER, finals from the second pass | its compute on the clips (x streaming pass)"
    print("| chunk / right (ms), mode | work | budget (s) | " + " | ".join(f"{s:.0f} s RTF (x hf)" for s in args.seconds)
          + cer_head + " |")
    print("|---|---|---|" + "---|" * len(args.seconds) + ("---|" if clips else "")
          + ("---|---|" if clips and args.final_pass else ""))
    variants = {"cached": model, "recompute": model}
    for chunk, right, variant in args.geometry:
        mode = "recompute" if variant == "recompute" else "cached"
        config = StreamConfig(chunk_ms=chunk, left_ms=args.left_ms, right_ms=right, mode=mode, beam=False,
                              final_pass=False, group_norm_warmup_ms=args.warmup_ms)
        if variant not in variants:
            convert = quantize_int8 if variant == "int8" else bf16_transformer
            variants[variant] = convert(load_model(args.model))
        pipe = Pipeline(variants[variant], config)   # no speaker tracking: CTC only
        work = (chunk + right) / chunk if mode == "cached" else (args.left_ms + chunk + right) / chunk
        cells = []
        with torch.inference_mode():
            for s, a in audio.items():
                run_stream(pipe, a)                             # warm-up: bias cache, allocator
                rtf = best_time(lambda a=a, pipe=pipe: run_stream(pipe, a), args.repeats) / s
                cells.append(f"{rtf:.4f} ({rtf / hf_rtf[s]:.2f}x)")
        cer = ""
        if clips:
            t0 = time.perf_counter()
            cer = f" | {error_rates(refs, pipeline_transcripts(pipe, waves))[0]:.3f}"
            streamed_s = time.perf_counter() - t0
            if args.final_pass:
                two_pass = Pipeline(variants[variant], dataclasses.replace(config, final_pass=True))
                t0 = time.perf_counter()
                cer += f" | {error_rates(refs, pipeline_transcripts(two_pass, waves))[0]:.3f}"
                cer += f" | {(time.perf_counter() - t0) / streamed_s:.2f}x"
        print(f"| {chunk:.0f} / {right:.0f}, {variant} | {work:.2f} | {(chunk + right + 150) / 1000:.2f} | "
              + " | ".join(cells) + cer + " |")


if __name__ == "__main__":
    main()
