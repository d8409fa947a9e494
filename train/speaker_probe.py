"""Train only the speaker head of a checkpoint, on its frozen backbone (a probe), and write it back.

In the main run the speaker head already learns on detached hidden states; while the
backbone is still changing (and early on, before CTC leaves its blank plateau, nearly
input-independent) it has little to learn from. This pass fits the head to the final
backbone: the backbone runs once per batch without gradients (eval mode, no SpecAugment),
only the speaker head's parameters move. Like the main run's speaker loss, it sees each clip
whole and as random 1-2 s spans (`--speaker-crops`, `--speaker-crop-seconds`: what the
tracker pools at run time). Reports the speaker EER on the dev set (held-out
voices) before and after; the checkpoint is replaced only if the EER improved.

Usage: python -m train.speaker_probe [--checkpoint ~/.cache/wavlm-stream/train/best.pt] [--minutes 6]
"""
from __future__ import annotations

import argparse
import os
import random
import time
from pathlib import Path

import numpy as np
import torch

from model import WavLMConfig, WavLMForCTCWithSpeaker
from train import CACHE
from train.data import bucket_batches, collate, read_manifest
from train.evaluate import speaker_eer
from train.train import add_speaker_crop_args, log, speaker_crop_frames, speaker_crops


def main(argv: list[str] | None = None) -> float:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=CACHE / "train" / "best.pt")
    ap.add_argument("--data", type=Path, default=CACHE / "data")
    ap.add_argument("--minutes", type=float, default=6.0)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-seconds", type=float, default=48.0)
    ap.add_argument("--threads", type=int, default=2)
    add_speaker_crop_args(ap)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    log_file = args.checkpoint.parent / "log.txt"
    ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    config = WavLMConfig.from_dict(ckpt["config"])
    model = WavLMForCTCWithSpeaker(config)
    model.load_state_dict(ckpt["model"])
    model.eval()
    speakers = list(config.speaker_head["speakers"])
    index = {s: i for i, s in enumerate(speakers)}
    train = [c for c in read_manifest(args.data / "train.jsonl", 12.0) if c.speaker in index]
    dev = read_manifest(args.data / "dev.jsonl")
    before = speaker_eer(model, dev)["eer_speaker"]
    head = model.speaker_head
    opt = torch.optim.AdamW(head.parameters(), lr=args.lr, weight_decay=0.01)
    rng, np_rng = random.Random(1), np.random.default_rng(1)
    crop_frames = speaker_crop_frames(config, args.speaker_crop_seconds)
    t0, step, losses = time.time(), 0, []
    while time.time() - t0 < args.minutes * 60:
        for clips, pad in bucket_batches(train, args.batch_seconds, rng):
            if time.time() - t0 > args.minutes * 60:
                break
            b = collate(clips, index, np_rng, pad)
            with torch.no_grad():
                out = model.wavlm(b.audio, b.attention_mask, output_hidden_states=True)
            rows, masks = speaker_crops(out.frame_mask, np_rng, *crop_frames, args.speaker_crops)
            emb = model.speaker_pool(model.speaker_frame_features(out.hidden_states)[rows], masks)
            loss = head.objective(emb, b.speakers[rows])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(head.parameters(), 5.0)
            opt.step()
            step += 1
            losses.append(float(loss.detach()))
            if step % 50 == 0:
                log(f"speaker probe step {step}: AM-softmax loss {np.mean(losses[-50:]):.3f}", log_file)
    after = speaker_eer(model, dev)["eer_speaker"]
    log(f"speaker probe on {args.checkpoint.name} (step {ckpt['step']}): {step} steps, dev speaker EER "
        f"{before:.3f} -> {after:.3f}", log_file)
    if after < before:
        ckpt["model"] = model.state_dict()
        ckpt["speaker_probe"] = {"steps": step, "dev_eer_before": before, "dev_eer_after": after}
        tmp = args.checkpoint.with_suffix(".tmp")
        torch.save(ckpt, tmp)
        os.replace(tmp, args.checkpoint)
    return after


if __name__ == "__main__":
    main()
