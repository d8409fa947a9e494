"""How close is streaming to offline? CTC argmax agreement per frame, both modes, both norms.

For each model and mode (recompute, cached, and cached with int8 Linear layers or with the
transformer in bfloat16), feeds audio through a stream at the given latency settings and
prints the fraction of frames whose CTC argmax equals the float32 offline model's, the mean
absolute log-prob difference, and (for ``group``-norm models) the drift of the conv
encoder's streaming rule from the offline GroupNorm.

Models: the bundled default (group norm, trained) and small random-weight checkpoints of
both norm variants written by transformers (random models have near-uniform outputs, so
their agreement is a stricter test than a trained model's).

    python bench/streaming_fidelity.py [--audio examples/*.wav] [--chunk-ms 640 --left-ms 2000 --right-ms 320]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model import load_model  # noqa: E402
from stream.audio import AudioIntake  # noqa: E402
from stream.encoder import IncrementalConvEncoder  # noqa: E402
from stream.pipeline import DEFAULT_MODEL, Pipeline, StreamConfig, bf16_transformer, quantize_int8  # noqa: E402


def load_audio(paths: list[str], seconds: float) -> list[np.ndarray]:
    import soundfile as sf

    clips = []
    for path in paths:
        data, rate = sf.read(path, dtype="float32", always_2d=True)
        clips.append(AudioIntake(16000).push(data, rate))
    if not clips:
        # No speech given: a synthetic signal with speech-like energy changes.
        rng = np.random.default_rng(0)
        n = int(16000 * seconds)
        envelope = np.repeat(rng.uniform(0.0, 1.0, n // 3200 + 1), 3200)[:n]
        clips.append((rng.standard_normal(n) * 0.1 * envelope).astype(np.float32))
    return clips


def random_checkpoint(directory: Path, norm: str) -> Path:
    from tests.checkpoints import write_ctc_checkpoint

    return write_ctc_checkpoint(directory, norm=norm, stable=(norm == "layer"), hidden=64, layers=4,
                                heads=4, conv_dim=32, num_conv_pos_embeddings=128,
                                num_conv_pos_embedding_groups=16)


def conv_drift(model, audio: np.ndarray) -> float:
    """Max |streamed - offline| / max |offline| of the conv features (group norm rule)."""
    encoder = IncrementalConvEncoder(model.wavlm.feature_extractor, model.config.feat_extract_norm)
    state = encoder.init_state()
    frames = []
    x = torch.from_numpy(audio)
    with torch.inference_mode():
        for i in range(0, len(x), 1600):
            out, state = encoder.push(x[i:i + 1600], state)
            frames.append(out)
        out, state = encoder.flush(state)
        frames.append(out)
        offline = model.wavlm.feature_extractor(x[None])[0].T
    streamed = torch.cat(frames)
    return float((streamed - offline).abs().max() / offline.abs().max())


def compare(name: str, checkpoint: Path, clips, args) -> None:
    model = load_model(checkpoint)       # float32: the offline reference and the plain modes
    variants = {"recompute": model, "cached": model,
                "cached int8": quantize_int8(load_model(checkpoint)),
                "cached bf16": bf16_transformer(load_model(checkpoint))}
    for mode, streamed_model in variants.items():
        config = StreamConfig(chunk_ms=args.chunk_ms, left_ms=args.left_ms, right_ms=args.right_ms,
                              mode=mode.split()[0], beam=False)
        pipe = Pipeline(streamed_model, config)
        agree = total = 0
        diffs = []
        for audio in clips:
            streamed = pipe.streaming_log_probs(audio)
            with torch.inference_mode():
                offline = torch.log_softmax(model(torch.from_numpy(audio)[None]).logits[0], -1).numpy()
            agree += int((streamed.argmax(-1) == offline.argmax(-1)).sum())
            total += offline.shape[0]
            diffs.append(np.abs(streamed - offline).mean())
        drift = ""
        if model.config.feat_extract_norm == "group":
            drift = f"{max(conv_drift(model, a) for a in clips):.4f}"
        print(f"| {name:<28} | {model.config.feat_extract_norm:<5} | {mode:<11} | {agree / total:8.4f} "
              f"| {float(np.mean(diffs)):10.5f} | {drift:>10} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--audio", nargs="*", default=sorted(str(p) for p in Path("examples").glob("*.wav")))
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the synthetic signal")
    parser.add_argument("--chunk-ms", type=float, default=640)
    parser.add_argument("--left-ms", type=float, default=2000)
    parser.add_argument("--right-ms", type=float, default=320)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clips = load_audio(args.audio, args.seconds)
    print(f"audio: {len(clips)} clip(s), {sum(len(c) for c in clips) / 16000:.1f} s; "
          f"chunk {args.chunk_ms:.0f} ms, left {args.left_ms:.0f} ms, right {args.right_ms:.0f} ms")
    print("| model                        | norm  | mode        | argmax=  | mean|dlp|  | conv drift |")
    print("|------------------------------|-------|-------------|----------|------------|------------|")
    if (DEFAULT_MODEL / "config.json").exists():
        compare("bundled default", DEFAULT_MODEL, clips, args)
    with tempfile.TemporaryDirectory() as tmp:
        for norm in ("layer", "group"):
            compare(f"random 64x4 ({norm})", random_checkpoint(Path(tmp) / norm, norm), clips, args)


if __name__ == "__main__":
    main()
