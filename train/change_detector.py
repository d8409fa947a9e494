"""Train the bundled model's speaker-change detector and write it into the exported model.

The detector (model.heads.ChangeDetector) reads the frozen speaker head's per-frame
features, so it is trained for one exported model and must be trained again after every
new export (train.export writes the model without it). Recipe, after train.export:

    python -m train.meetings --manifest ~/.cache/wavlm-stream/data/train.jsonl --count 240 --seed 11 \\
        --out ~/.cache/wavlm-stream/train_meetings          # 4.8 h of meetings of *training* voices
    python -m train.change_detector                          # ~25 min on one CPU thread

A run that kept the speaker side fixed (`train.train --frozen-layers N --speaker-weight 0`:
the front end, the first N layers and the speaker head unchanged) moves the detector's input
only through the top layers' small share of the head's layer weights; `--copy-from DIR`
then carries the previous export's detector over instead of training a new one (check the
result with bench/speaker_eval.py either way).

Features of the meetings are computed once by the frozen model (offline, in 20 s blocks,
``stream.speakers.offline_speaker_features``) and cached next to the meetings. Targets: a
triangle of half-width 0.15 s around each reference speaker change (`decoders.turns.change_times`),
binary cross-entropy with positive weight 5 (changes are rare frames), AdamW with a one-cycle
learning rate, batches of 32 random 10 s crops. Each frame's input is log(1 + features) and the
energy VAD's speech flag, as a stream computes them. The held-out evaluation is
bench/speaker_eval.py on the meetings of held-out voices.

Usage: python -m train.change_detector [--model model/default] [--meetings DIR] [--steps 4000]
       python -m train.change_detector --model DIR --copy-from model/default
"""
from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from train import CACHE

DEFAULT_SPEC = {"channels": 96, "kernel_size": 3, "dilations": [1, 2, 4, 8, 16, 32], "lookahead": 20}
FRAME_S = 0.02


def change_targets(turns, frames: int, width_s: float = 0.15) -> np.ndarray:
    """Per-frame target (frames,) in [0, 1]: 1 at each speaker change, falling to 0 at +-width_s."""
    from decoders.turns import change_times
    centres = (np.arange(frames) + 0.5) * FRAME_S
    y = np.zeros(frames, dtype=np.float32)
    for c in change_times(turns):
        y = np.maximum(y, np.clip(1.0 - np.abs(centres - c) / width_s, 0.0, 1.0))
    return y


def backbone_fingerprint(model) -> str:
    """sha256 of every weight except the change detector's: what the speaker features depend on."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if not name.startswith("speaker_head.change_detector."):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def meeting_features(model, meetings: Path, cache: Path | None = None) -> list[tuple[torch.Tensor, ...]]:
    """[(features (T, P), speech (T,), targets (T,)), ...] for every NAME.wav + NAME.rttm in `meetings`."""
    from decoders.turns import read_rttm
    from stream.speakers import offline_speaker_features
    from stream.vad import EnergyVAD
    from train.data import load_audio

    wavs = sorted(p for p in meetings.glob("*.wav") if p.with_suffix(".rttm").exists())
    if not wavs:
        raise SystemExit(f"{meetings}: no meetings (NAME.wav + NAME.rttm); make them with train.meetings")
    fingerprint = backbone_fingerprint(model)
    if cache is not None and cache.exists():
        saved = torch.load(cache)
        # Features of another export (a retrained backbone or speaker head) must not be reused.
        if saved["names"] == [p.stem for p in wavs] and saved.get("model") == fingerprint:
            return saved["items"]
    items, t0 = [], time.time()
    for n, wav in enumerate(wavs, 1):
        audio = load_audio(wav)
        feats = offline_speaker_features(model, audio)
        vad = EnergyVAD(keep_frames=None)
        vad.push(audio)
        speech = torch.from_numpy(vad.speech(0, feats.shape[0]))
        with open(wav.with_suffix(".rttm")) as f:
            turns = next(iter(read_rttm(f).values()), [])
        targets = torch.from_numpy(change_targets(turns, feats.shape[0]))
        items.append((feats.to(torch.float16), speech, targets))
        if n % 20 == 0 or n == len(wavs):
            print(f"features: {n}/{len(wavs)} meetings, {time.time() - t0:.0f} s", flush=True)
    if cache is not None:
        torch.save({"names": [p.stem for p in wavs], "model": fingerprint, "items": items}, cache)
    return items


def train_detector(items, spec: dict, feature_dim: int, steps: int, batch: int = 32, crop_s: float = 10.0,
                   lr: float = 2e-3, pos_weight: float = 5.0, seed: int = 0, log_every: int = 250):
    """A trained ChangeDetector (eval mode) from [(features (T, P), speech (T,), targets (T,)), ...]."""
    from model.heads import ChangeDetector

    torch.manual_seed(seed)
    detector = ChangeDetector.from_spec(feature_dim, spec)
    crop = int(round(crop_s / FRAME_S))
    usable = [it for it in items if it[0].shape[0] > crop]
    if not usable:
        raise SystemExit(f"no meeting is longer than the {crop_s} s training crop")
    opt = torch.optim.AdamW(detector.parameters(), lr, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.1)
    rng = np.random.default_rng(seed)
    weight = torch.tensor(pos_weight)
    t0 = time.time()
    for step in range(1, steps + 1):
        xs, ss, ys = [], [], []
        for i in rng.integers(len(usable), size=batch):
            x, s, y = usable[i]
            a = int(rng.integers(0, x.shape[0] - crop))
            xs.append(x[a:a + crop].float())
            ss.append(s[a:a + crop])
            ys.append(y[a:a + crop])
        logits = detector(torch.stack(xs), torch.stack(ss))
        loss = F.binary_cross_entropy_with_logits(logits, torch.stack(ys), pos_weight=weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % log_every == 0 or step == steps:
            eta = (time.time() - t0) / step * (steps - step)
            print(f"step {step}/{steps} loss {loss.item():.4f} elapsed {time.time() - t0:.0f} s ETA {eta:.0f} s",
                  flush=True)
    return detector.eval()


def write_into(model_dir: Path, detector, spec: dict) -> None:
    """Add the detector to an exported model directory (config + weights) and load it back."""
    from safetensors.torch import load_file, save_file

    from model import load_model

    weights = model_dir / "model.safetensors"
    state = {k: v for k, v in load_file(str(weights)).items() if not k.startswith("speaker_head.change_detector.")}
    state.update({f"speaker_head.change_detector.{k}": v.detach().float().contiguous()
                  for k, v in detector.state_dict().items()})
    with open(model_dir / "config.json") as f:
        config = json.load(f)
    config["speaker_head"]["change_detector"] = spec
    tmp_weights, tmp_config = weights.with_suffix(".tmp"), model_dir / "config.json.tmp"
    save_file(state, str(tmp_weights), metadata={"format": "pt"})
    with open(tmp_config, "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")
    tmp_weights.replace(weights)
    tmp_config.replace(model_dir / "config.json")
    loaded = load_model(model_dir)
    if loaded.change_detector is None:
        raise RuntimeError(f"{model_dir}: the change detector did not load back")


def copy_detector(source_dir: Path, model_dir: Path) -> None:
    """Write the change detector of the export in `source_dir` into the export in `model_dir`."""
    from model import load_model

    source, target = load_model(source_dir), load_model(model_dir)
    if source.change_detector is None:
        raise SystemExit(f"--copy-from {source_dir}: that model has no change detector")
    if target.config.speaker_head is None:
        raise SystemExit(f"{model_dir}: not a bundled model (no speaker_head in config.json)")
    dims = (int(source.config.speaker_head["proj_dim"]), int(target.config.speaker_head["proj_dim"]))
    if dims[0] != dims[1]:
        raise SystemExit(f"--copy-from {source_dir}: its detector reads {dims[0]} speaker features, "
                         f"{model_dir} gives {dims[1]}")
    write_into(model_dir, source.change_detector, source.config.speaker_head["change_detector"])


def main(argv: list[str] | None = None) -> None:
    from model import load_model
    from train.export import DEFAULT_OUT

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=DEFAULT_OUT, help="exported bundled model (written in place)")
    ap.add_argument("--meetings", type=Path, default=CACHE / "train_meetings",
                    help="meetings of training voices (train.meetings --manifest .../train.jsonl)")
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0, help="initial weights and crops")
    ap.add_argument("--no-cache", action="store_true", help="do not read or write the feature cache")
    ap.add_argument("--copy-from", type=Path, default=None, metavar="MODEL_DIR",
                    help="copy this export's detector instead of training one (for a run that kept the speaker "
                         "side fixed: train.train --frozen-layers N --speaker-weight 0)")
    args = ap.parse_args(argv)
    if args.copy_from is not None:
        copy_detector(args.copy_from, args.model)
        print(f"copied the change detector of {args.copy_from} into {args.model}")
        return
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    if model.config.speaker_head is None:
        raise SystemExit(f"{args.model}: not a bundled model (no speaker_head in config.json)")
    cache = None if args.no_cache else args.meetings / "speaker_features.pt"
    items = meeting_features(model, args.meetings, cache)
    hours = sum(x.shape[0] for x, _, _ in items) * FRAME_S / 3600
    print(f"{len(items)} meetings, {hours:.2f} h of features", flush=True)
    detector = train_detector(items, DEFAULT_SPEC, int(model.config.speaker_head["proj_dim"]), args.steps,
                              args.batch, seed=args.seed)
    write_into(args.model, detector, DEFAULT_SPEC)
    print(f"wrote the change detector into {args.model} ({sum(p.numel() for p in detector.parameters())} "
          f"parameters)")


if __name__ == "__main__":
    main()
