"""Train the bundled model: a small WavLM with a CTC head (characters) and a speaker head.

One backbone, two losses: CTC on characters from the last layer, and AM-softmax over the
training speakers on an embedding pooled from a learned weighted sum of all layers. By
default the speaker loss does not reach the backbone (its hidden states are detached):
the speaker head is a probe on the CTC-trained layers, which kept CTC from stalling.
SpecAugment time masking (the model's own, in train mode), AdamW, batches grouped by
length into a few fixed shapes, bf16 autocast on CPU where supported (about 2x faster here;
evaluation runs in float32), CUDA when present (with --loader-threads, or the GPU waits for
the batches to be decoded and augmented).

Resumable: state lives in --work (default ~/.cache/wavlm-stream/train): last.pt is
written every few minutes and picked up automatically by the next run; best.pt holds
the weights with the best dev CER, exported to --export-dir (model/default) every
--export-every minutes and at the end. The learning-rate schedule is per run: a short
warm-up, a constant peak, and a decay over the last 20% of --max-minutes down to 25% of
the peak (never to zero), so a later run can carry on improving.

Usage: python -m train.train [--max-minutes 90] [--data ~/.cache/wavlm-stream/data]
"""
from __future__ import annotations

import argparse
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch

from model import WavLMConfig, WavLMForCTCWithSpeaker
from model.losses import ctc_loss
from stream.window import WindowConfig
from train import CACHE
from train import export as export_mod
from train.data import Batch, Clip, bucket_batches, collate, prefetch, read_manifest
from train.evaluate import transcribe_clips
from train.feature_anchor import FeatureAnchor
from train.grow import add_identity_layers
from train.metrics import error_rates
from train.streaming_aware import StreamingAware


# Sized by measurement on this 2-core CPU (train/README.md): the conv front end dominates the
# cost, so its early, high-rate layers are narrow (64) and widen where the frame rate is low.
# Group-norm front end (as wavlm-base): its per-channel normalisation over time removes what is
# constant in time at the first layer. With the layer-norm front end (per-frame norms only) the
# trained front end collapsed: every conv layer amplified the time-constant part until the
# output no longer depended on the audio (frame-to-frame std 0.0002 against a norm of 12 after
# 2,586 steps) and CTC sat at 2.6 emitting vowels. Pre-LN ("stable") transformer layers.
BASE_CONFIG = dict(
    hidden_size=256, num_hidden_layers=6, num_attention_heads=4, intermediate_size=1024,
    hidden_act="gelu", feat_extract_norm="group", feat_extract_activation="gelu", do_stable_layer_norm=True,
    conv_dim=(64, 64, 96, 128, 128, 192, 192), conv_kernel=(10, 3, 3, 3, 3, 2, 2),
    conv_stride=(5, 2, 2, 2, 2, 2, 2), conv_bias=False,
    # A short positional convolution (32 frames = +-0.32 s) keeps the look-ahead a stream needs small.
    num_conv_pos_embeddings=32, num_conv_pos_embedding_groups=16,
    num_buckets=320, max_bucket_distance=800,
    # No dropout: the run is limited by compute, not by data.
    hidden_dropout=0.0, activation_dropout=0.0, attention_dropout=0.0, feat_proj_dropout=0.0,
    final_dropout=0.0, layerdrop=0.0,
    apply_spec_augment=True, mask_time_prob=0.05, mask_time_length=10, mask_time_min_masks=2,
    vocab_size=len(export_mod.VOCAB), pad_token_id=export_mod.BLANK_ID, bos_token_id=1, eos_token_id=2,
    ctc_loss_reduction="mean", ctc_zero_infinity=True,
)
# CTC leaves its blank plateau sooner on short clips of a few clear voices (measured: on all
# 32 voices at up to 12 s, two recipes were still on the plateau after 750 steps), so a run
# starts there and then moves to the whole set. Native English voices of four engines.
CURRICULUM_VOICES = ("rh-alan", "rh-clb", "rh-slt", "fl-awb", "fl-slt", "fl-kal16", "pico-us", "fe-kal", "fe-slt-hts")
SPEAKER_HEAD = dict(proj_dim=128, embedding_dim=128, scale=30.0, margin=0.2, input_norm=True)
# For the smoke test: same structure, a few thousand parameters.
TINY_CONFIG = dict(BASE_CONFIG, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                   conv_dim=(16,) * 7, num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=4)
TINY_SPEAKER_HEAD = dict(SPEAKER_HEAD, proj_dim=16, embedding_dim=16)


def build_config(size: str, speakers: list[str]) -> WavLMConfig:
    base, head = (TINY_CONFIG, TINY_SPEAKER_HEAD) if size == "tiny" else (BASE_CONFIG, SPEAKER_HEAD)
    return WavLMConfig.from_dict(dict(base, architectures=["WavLMForCTC"],
                                      speaker_head=dict(head, num_speakers=len(speakers), speakers=list(speakers))))


def with_regularization(config: WavLMConfig, args: argparse.Namespace, from_weights: bool) -> WavLMConfig:
    """The config with the dropout and SpecAugment flags that were given applied; the others kept.

    They change no parameter, so they apply to a fresh run, an --init start and a resumed run alike
    (a resumed run keeps what its checkpoint's config says unless a flag is given again); exported
    configs carry them, and inference ignores them (eval mode, no masks). ``from_weights``: the run
    starts from existing weights (--init or a checkpoint), which must keep their masked-frame vector.
    """
    changes = {}
    if args.dropout is not None:
        changes.update(hidden_dropout=args.dropout, activation_dropout=args.dropout,
                       attention_dropout=args.dropout, final_dropout=args.dropout)
    if args.mask_time_prob is not None:
        changes["mask_time_prob"] = args.mask_time_prob
    if args.mask_feature_prob is not None:
        changes["mask_feature_prob"] = args.mask_feature_prob
    if args.mask_feature_length is not None:
        changes["mask_feature_length"] = args.mask_feature_length
    for flag, value in (("--dropout", args.dropout), ("--mask-time-prob", args.mask_time_prob),
                        ("--mask-feature-prob", args.mask_feature_prob)):
        if value is not None and not 0.0 <= value < 1.0:
            raise SystemExit(f"{flag} must be in [0, 1), got {value}")
    if args.mask_feature_length is not None and not 1 <= args.mask_feature_length <= config.hidden_size:
        raise SystemExit(f"--mask-feature-length must be 1..{config.hidden_size} (the hidden size), "
                         f"got {args.mask_feature_length}")
    if not changes:
        return config
    merged = {**config.to_dict(), **changes}
    had_embed = config.mask_time_prob > 0 or config.mask_feature_prob > 0
    if from_weights and had_embed and merged["mask_time_prob"] <= 0 and merged["mask_feature_prob"] <= 0:
        # The model would be built without masked_spec_embed, which the weights it starts from carry.
        raise SystemExit("--mask-time-prob 0 with no feature masking would drop the model's masked-frame vector: "
                         "give a --mask-time-prob above 0 or a --mask-feature-prob")
    return WavLMConfig.from_dict(merged)


def lr_at(step_in_run: int, elapsed_frac: float, peak: float, warmup: int) -> float:
    """Warm-up to the peak, hold, then decay linearly over the last 20% of the run to 25% of the peak."""
    lr = peak * min(1.0, (step_in_run + 1) / warmup)
    if elapsed_frac > 0.8:
        lr *= 1.0 - 0.75 * min(1.0, (elapsed_frac - 0.8) / 0.2)
    return lr


def add_speaker_crop_args(ap: argparse.ArgumentParser) -> None:
    """--speaker-crops and --speaker-crop-seconds, for the main run and the speaker probe."""
    ap.add_argument("--speaker-crops", type=int, default=2,
                    help="random spans per clip for the speaker loss besides the whole clip (the tracker "
                         "pools 1-1.5 s windows, so the head learns on spans of that length too)")
    ap.add_argument("--speaker-crop-seconds", type=float, nargs=2, default=(1.0, 2.0), metavar=("MIN", "MAX"))


def speaker_crop_frames(config: WavLMConfig, seconds: tuple[float, float]) -> tuple[int, int]:
    """--speaker-crop-seconds (MIN, MAX) in frames of this model (at least 1); SystemExit if MIN > MAX."""
    frame_s = float(np.prod(config.conv_stride)) / 16000
    low, high = (max(1, round(x / frame_s)) for x in seconds)
    if low > high:
        raise SystemExit(f"--speaker-crop-seconds: MIN {seconds[0]} > MAX {seconds[1]}")
    return low, high


def speaker_crops(frame_mask: torch.Tensor, rng: np.random.Generator, min_frames: int, max_frames: int,
                  crops: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random spans of each clip for the speaker loss, the length the tracker pools at run time.

    frame_mask (B, T) bool of valid frames -> (rows (B * (crops + 1),) clip index of each row,
    masks (B * (crops + 1), T) bool): per clip its whole valid span, then `crops` random
    contiguous spans of min_frames..max_frames frames (the whole clip when it is shorter).
    """
    lengths = frame_mask.sum(dim=1).tolist()
    T = frame_mask.shape[1]
    rows, masks = [], []
    for b, n in enumerate(lengths):
        rows.append(b)
        masks.append(frame_mask[b])
        for _ in range(crops):
            span = min(n, int(rng.integers(min_frames, max_frames + 1)))
            start = int(rng.integers(0, n - span + 1))
            m = torch.zeros(T, dtype=torch.bool, device=frame_mask.device)
            m[start:start + span] = True
            rows.append(b)
            masks.append(m)
    return torch.tensor(rows, device=frame_mask.device), torch.stack(masks)


def evaluate_cer(model: WavLMForCTCWithSpeaker, clips: list[Clip], device: torch.device, autocast: bool,
                 ) -> tuple[float, float, list[tuple[str, str]]]:
    """Greedy CTC (CER, WER, [(ref, hyp)]) of clean clips, measured as train/evaluate.py does
    (group-norm models one clip per forward: padding would change their normalisation)."""
    was_training = model.training
    model.eval()
    hyps = transcribe_clips(model, clips, device, autocast)
    model.train(was_training)
    refs = [c.text for c in clips]
    cer, wer = error_rates(refs, hyps)
    return cer, wer, list(zip(refs, hyps))


@torch.no_grad()
def front_end_variation(model: WavLMForCTCWithSpeaker, audio: torch.Tensor, attention_mask: torch.Tensor) -> float:
    """How much the conv front end's output changes from frame to frame: mean over channels of
    the std over valid frames, divided by the mean frame norm. Near 0 means the front end has
    collapsed to an input-independent output (what the layer-norm front end did here)."""
    was_training = model.training
    model.eval()
    features = model.wavlm.feature_extractor(audio).transpose(1, 2)            # (B, T, C)
    frames = model.wavlm.feat_extract_output_lengths(attention_mask.sum(-1))
    valid = torch.cat([features[i, :n] for i, n in enumerate(frames.tolist())])
    model.train(was_training)
    return float(valid.std(0).mean() / valid.norm(dim=-1).mean().clamp_min(1e-12))


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            torch.nn.functional.linear(torch.randn(2, 8), torch.randn(4, 8))
        return True
    except Exception:
        return False


def save(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def log(msg: str, log_file: Path | None) -> None:
    line = f"{time.strftime('%H:%M:%S')} {msg}"
    print(line, flush=True)
    if log_file is not None:
        with open(log_file, "a") as f:
            f.write(line + "\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=CACHE / "data", help="directory with train.jsonl and dev.jsonl")
    ap.add_argument("--work", type=Path, default=CACHE / "train", help="checkpoints and log.txt")
    ap.add_argument("--export-dir", type=Path, default=export_mod.DEFAULT_OUT)
    ap.add_argument("--size", choices=("base", "tiny"), default="base")
    ap.add_argument("--max-minutes", type=float, default=90.0, help="wall-clock budget of this run")
    ap.add_argument("--max-steps", type=int, default=0, help="stop after this many steps in this run (0: no limit)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=500, help="warm-up steps of a fresh run (resumed runs: 100)")
    ap.add_argument("--clip", type=float, default=2.0,
                    help="gradient-norm clip of the backbone (5.0 let a run that had left the plateau fall back)")
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--speaker-weight", type=float, default=0.2,
                    help="weight of the AM-softmax loss (0: computed and logged as \"spk\", not trained)")
    ap.add_argument("--speaker-into-backbone", action="store_true",
                    help="let the speaker loss train the backbone too (default: the speaker head learns on detached "
                         "hidden states, so the backbone is shaped by CTC alone)")
    ap.add_argument("--speaker-ramp", type=int, default=600,
                    help="global steps over which the speaker weight ramps up from 0 (CTC leaves its blank plateau first)")
    add_speaker_crop_args(ap)
    ap.add_argument("--curriculum-steps", type=int, default=1500,
                    help="global steps on the easy subset first (short clips of --curriculum-voices); 0: none")
    ap.add_argument("--curriculum-voices", default=",".join(CURRICULUM_VOICES),
                    help="comma-separated source voices of the easy subset")
    ap.add_argument("--curriculum-max-seconds", type=float, default=5.0, help="longest clip of the easy subset")
    ap.add_argument("--batch-seconds", type=float, default=24.0, help="max (batch size x longest clip) in seconds")
    ap.add_argument("--max-clip-seconds", type=float, default=12.0)
    ap.add_argument("--eval-every", type=float, default=8.0, help="minutes between dev CER evaluations")
    ap.add_argument("--save-every", type=float, default=4.0, help="minutes between last.pt checkpoints")
    ap.add_argument("--export-every", type=float, default=15.0, help="minutes between exports of best.pt (0: never)")
    ap.add_argument("--log-every", type=int, default=25, help="steps between progress lines")
    ap.add_argument("--dev-clips", type=int, default=0, help="use only this many dev clips (0: all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--loader-threads", type=int, default=0,
                    help="threads loading and augmenting batches ahead of the step (0: in the step's thread; "
                         "on a GPU, most of the machine's cores, or the GPU waits for data)")
    ap.add_argument("--bf16", action="store_true",
                    help="bf16 autocast (about 1.5-2x faster on this CPU, but runs with it never left the CTC blank "
                         "plateau here; float32 is the default)")
    ap.add_argument("--noise-prob", type=float, default=0.0, help="share of training clips with added noise")
    ap.add_argument("--eq-prob", type=float, default=0.0,
                    help="share of training clips through a random equalizer (+-8 dB, smooth in log frequency); "
                         "they are left out of the speaker loss")
    ap.add_argument("--speed-prob", type=float, default=0.0,
                    help="share of training clips played faster or slower (pitch, formants and tempo together); "
                         "they are left out of the speaker loss")
    ap.add_argument("--speed-range", type=float, nargs=2, default=(0.9, 1.1), metavar=("LOW", "HIGH"))
    ap.add_argument("--streaming-prob", type=float, default=0.0,
                    help="share of batches run as the stream sees them (train/streaming_aware.py): the front "
                         "end's causal statistics and the attention windows of --streaming-window")
    ap.add_argument("--streaming-window", type=float, nargs=3, default=(2000.0, 640.0, 320.0),
                    metavar=("LEFT_MS", "CHUNK_MS", "RIGHT_MS"), help="the stream's geometry for those batches")
    ap.add_argument("--fresh", action="store_true", help="ignore an existing last.pt")
    ap.add_argument("--frozen-layers", type=int, default=0, metavar="N",
                    help="keep the front end (conv encoder, feature projection, positional conv) and the first N "
                         "transformer layers fixed and train only the layers above them and the CTC head: with "
                         "--speaker-weight 0 (head fixed too) the speaker features, which weigh mostly the lower "
                         "layers, barely move while the captions learn new text; backward stops at layer N")
    ap.add_argument("--init", type=Path, default=None, metavar="MODEL_DIR",
                    help="with no last.pt in --work: start from an exported model (e.g. model/default) instead of "
                         "random weights; a new optimizer, no curriculum and no speaker-loss ramp")
    ap.add_argument("--add-layers", type=int, default=0, metavar="N",
                    help="with --init, when the run starts (no last.pt): put N transformer layers on top of the "
                         "export's, each starting as the identity (train/grow.py), for more capacity above "
                         "--frozen-layers; a resumed run keeps its checkpoint's layers")
    ap.add_argument("--anchor-speaker-features", type=float, default=0.0, metavar="WEIGHT",
                    help="weight of a loss that holds the speaker head's frame features near the --init model's "
                         "(train/feature_anchor.py), so the backbone can move for CTC while what the speaker head "
                         "and its change detector read stays put; needs --init (the teacher, also on resume) and "
                         "--speaker-weight 0")
    ap.add_argument("--dropout", type=float, default=None, metavar="P",
                    help="dropout in the transformer (hidden, activation, attention) and before the CTC head "
                         "(default: what the config or checkpoint says; the recipe's config has none)")
    ap.add_argument("--mask-time-prob", type=float, default=None, metavar="P",
                    help="SpecAugment: share of frames in masked time spans (recipe default 0.05)")
    ap.add_argument("--mask-feature-prob", type=float, default=None, metavar="P",
                    help="SpecAugment: share of the projected feature channels zeroed per clip (recipe default 0)")
    ap.add_argument("--mask-feature-length", type=int, default=None, metavar="N",
                    help="SpecAugment: channels per feature-mask span (default 10)")
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Train; returns {"losses": [per-step loss], "dev_cer": last dev CER, "step": global step}."""
    args = parse_args(argv)
    t_start = time.time()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    use_bf16 = args.bf16 and bf16_supported(device)
    args.work.mkdir(parents=True, exist_ok=True)
    log_file = args.work / "log.txt"

    train_clips = read_manifest(args.data / "train.jsonl", args.max_clip_seconds)
    dev_clips = read_manifest(args.data / "dev.jsonl")
    if args.dev_clips:
        dev_clips = random.Random(0).sample(dev_clips, min(args.dev_clips, len(dev_clips)))
    train_hours = sum(c.duration for c in train_clips) / 3600

    if args.add_layers and args.init is None:
        raise SystemExit("--add-layers grows an exported model: give --init MODEL_DIR")
    last = args.work / "last.pt"
    ckpt = None if args.fresh or not last.exists() else torch.load(last, map_location="cpu", weights_only=False)
    initial_state = None
    if ckpt is not None:
        config = WavLMConfig.from_dict(ckpt["config"])
        speakers = list(config.speaker_head["speakers"])
    elif args.init is not None:
        config, initial_state = exported_start(args.init)
        if args.add_layers:
            try:
                config, initial_state = add_identity_layers(config, initial_state, args.add_layers)
            except ValueError as e:
                raise SystemExit(f"--add-layers {args.add_layers}: {e}") from None
        speakers = list(config.speaker_head["speakers"])
    else:
        speakers = sorted({c.speaker for c in train_clips})
        config = build_config(args.size, speakers)
    config = with_regularization(config, args, from_weights=ckpt is not None or initial_state is not None)
    speaker_index = {s: i for i, s in enumerate(speakers)}
    torch.manual_seed(args.seed)
    model = WavLMForCTCWithSpeaker(config).to(device)
    aware, window = None, None
    if args.streaming_prob > 0:
        left_ms, chunk_ms, right_ms = args.streaming_window
        w = WindowConfig.from_ms(chunk_ms, left_ms, right_ms)
        window = (w.left, w.chunk, w.right)
        aware = StreamingAware(model, window)
    anchor, anchor_teacher = None, None
    if args.anchor_speaker_features > 0:
        if args.init is None or args.speaker_weight > 0:
            raise SystemExit("--anchor-speaker-features holds the speaker features near the --init model's with the "
                             "speaker head fixed: give --init MODEL_DIR (also when resuming) and --speaker-weight 0")
        # A fresh run has just read the --init model for its own start: the teacher starts from the same.
        teacher_start = (config, initial_state) if initial_state is not None else exported_start(args.init)
        anchor = FeatureAnchor(*teacher_start, device, window)
        anchor_teacher = str(args.init.resolve())
    trainable = trainable_parameter_names(model, args.frozen_layers, args.speaker_weight > 0)
    for n, p in model.named_parameters():
        p.requires_grad_(n in trainable)
    named = [(n, p) for n, p in model.named_parameters() if n in trainable]
    speaker_params = [p for n, p in named if n.startswith("speaker_head.")]
    backbone_params = [p for n, p in named if not n.startswith("speaker_head.")]
    # Fixed parameters stay out of the optimizer: AdamW's weight decay would shrink them even without a loss.
    decay = [p for n, p in named if p.dim() >= 2]
    no_decay = [p for n, p in named if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.98), eps=1e-8)
    step, hours_seen, best_cer, runs = 0, 0.0, math.inf, 0
    # A model started from an export is past the curriculum and the speaker-loss ramp.
    past_ramps = initial_state is not None
    if initial_state is not None:
        model.load_state_dict(initial_state)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        if sorted(ckpt.get("trainable", trainable)) != sorted(trainable):
            raise SystemExit(f"{last} was trained with other parameters fixed (--frozen-layers, or --speaker-weight 0 "
                             f"against > 0): resume with that run's flags, or use another --work")
        opt.load_state_dict(ckpt["optimizer"])
        step, hours_seen, best_cer, runs = ckpt["step"], ckpt["hours_seen"], ckpt["best_cer"], ckpt["runs"]
        past_ramps = ckpt.get("past_ramps", False)
        if anchor is not None and ckpt.get("anchor_teacher", anchor_teacher) != anchor_teacher:
            raise SystemExit(f"{last} was anchored to {ckpt['anchor_teacher']}, not {anchor_teacher}: resume with "
                             f"that --init, or use another --work")
    runs += 1
    warmup = args.warmup if ckpt is None else 100
    n_params = sum(p.numel() for p in model.parameters())
    n_trained = sum(p.numel() for _, p in named)
    start = "resumed at step %d" % step if ckpt else ("from %s" % args.init if past_ramps else "fresh")
    if args.add_layers and not ckpt:
        start += f", {args.add_layers} identity layers added on top"
    log(f"run {runs} ({start}): {n_params / 1e6:.2f} M parameters ({n_trained / 1e6:.2f} M trained), "
        f"{len(train_clips)} train clips ({train_hours:.2f} h, {len(speakers)} speakers"
        f"{other_speakers_note(train_clips, speaker_index)}), {len(dev_clips)} dev clips, "
        f"device {device}, bf16 {use_bf16}, budget {args.max_minutes:.0f} min; dropout {config.hidden_dropout:g}, "
        f"SpecAugment time {config.mask_time_prob:g} / channels {config.mask_feature_prob:g}", log_file)

    def state() -> dict:
        return {"model": model.state_dict(), "optimizer": opt.state_dict(), "config": config.to_dict(),
                "step": step, "hours_seen": hours_seen, "best_cer": best_cer, "runs": runs,
                "past_ramps": past_ramps, "trainable": sorted(trainable), "anchor_teacher": anchor_teacher}

    def do_export(tag: str) -> None:
        best = args.work / "best.pt"
        if args.export_every < 0 or not best.exists():
            return
        b = torch.load(best, map_location="cpu", weights_only=False)
        out = export_mod.export(b["model"], b["config"], args.export_dir)
        log(f"export ({tag}): best.pt (step {b['step']}, dev CER {b['dev_cer']:.3f}) -> {out}", log_file)

    budget = args.max_minutes * 60
    rng = random.Random(args.seed * 1000 + runs)
    np_rng = np.random.default_rng(args.seed * 1000 + runs)
    np.random.seed(args.seed * 1000 + runs)   # SpecAugment's masks (model/masking.py) draw from numpy's global one
    crop_frames = speaker_crop_frames(config, args.speaker_crop_seconds)
    low, high = args.speed_range
    if not 0.5 <= low <= high <= 2.0:
        raise SystemExit(f"--speed-range: need 0.5 <= LOW <= HIGH <= 2.0, got {low} {high}")
    losses: list[float] = []
    last_eval = last_save = last_export = time.time()
    step_in_run, dev_cer = 0, math.nan
    win_loss, win_ctc, win_spk, win_anchor, win_secs, win_t = 0.0, 0.0, 0.0, 0.0, 0.0, time.time()
    model.train()
    done = False
    was_in_curriculum: bool | None = None   # None until the first pass over the data
    manifest_mtime = (args.data / "train.jsonl").stat().st_mtime
    while not done:
        if (args.data / "train.jsonl").stat().st_mtime != manifest_mtime:
            # The data set may grow while a run goes on (synthesis still writing): take the new manifest.
            manifest_mtime = (args.data / "train.jsonl").stat().st_mtime
            train_clips = read_manifest(args.data / "train.jsonl", args.max_clip_seconds)
            train_hours = sum(c.duration for c in train_clips) / 3600
            log(f"re-read train.jsonl: {len(train_clips)} clips, {train_hours:.2f} h"
                f"{other_speakers_note(train_clips, speaker_index)}", log_file)
        in_curriculum = not past_ramps and step < args.curriculum_steps
        pool = train_clips
        if in_curriculum:
            easy_voices = set(args.curriculum_voices.split(","))
            pool = [c for c in train_clips if c.voice in easy_voices and c.duration <= args.curriculum_max_seconds]
            if not pool:
                raise SystemExit(f"the curriculum subset is empty (voices {sorted(easy_voices)}, "
                                 f"<= {args.curriculum_max_seconds} s)")
            if was_in_curriculum is None:
                log(f"curriculum: {len(pool)} clips ({sum(c.duration for c in pool) / 3600:.2f} h) of "
                    f"{len(easy_voices)} voices until step {args.curriculum_steps}", log_file)
        elif was_in_curriculum:
            log(f"curriculum done at step {step}: all {len(train_clips)} clips from now on", log_file)
        was_in_curriculum = in_curriculum
        jobs = bucket_batches(pool, args.batch_seconds, rng)
        # Each batch draws its augmentation from its own generator, seeded here in order, so a
        # run is the same whether its batches are loaded ahead on threads or one by one.
        seeds = np_rng.integers(2 ** 63, size=len(jobs))

        def load(i: int) -> Batch:
            return collate(jobs[i][0], speaker_index, np.random.default_rng(seeds[i]), jobs[i][1], args.noise_prob,
                           args.eq_prob, args.speed_prob, tuple(args.speed_range))

        for b in prefetch(load, len(jobs), args.loader_threads):
            elapsed = time.time() - t_start
            if elapsed > budget or (args.max_steps and step_in_run >= args.max_steps):
                done = True
                break
            if in_curriculum and step >= args.curriculum_steps:
                break   # the next pass draws from all clips
            lr = lr_at(step_in_run, elapsed / budget, args.lr, warmup)
            for g in opt.param_groups:
                g["lr"] = lr
            streaming = aware is not None and rng.random() < args.streaming_prob
            if aware is not None:
                aware.set(streaming)
            audio, attention_mask = b.audio.to(device), b.attention_mask.to(device)
            masked = None
            if anchor is not None:
                anchor.set_streaming(streaming)
                # Drawn here rather than inside the forward, so the anchor can leave the masked frames out.
                n_frames = int(model.wavlm.feat_extract_output_lengths(torch.tensor(audio.shape[1])))
                masked = model.wavlm.draw_time_mask((audio.shape[0], n_frames),
                                                    model.wavlm.frame_mask(attention_mask, n_frames), device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                out = model(audio, attention_mask, output_hidden_states=True, mask_time_indices=masked)
                hidden = out.hidden_states
                if not args.speaker_into_backbone and anchor is None:
                    hidden = tuple(h.detach() for h in hidden)
                feats = model.speaker_frame_features(hidden)
                rows, masks = speaker_crops(out.frame_mask, np_rng, crop_frames[0], crop_frames[1],
                                            args.speaker_crops)
                embeddings = model.speaker_pool(feats[rows], masks)
            frames = model.wavlm.feat_extract_output_lengths(b.lengths.to(device))
            ctc = ctc_loss(out.logits.float(), frames, b.labels.to(device), b.label_lengths.to(device),
                           blank=config.pad_token_id, zero_infinity=True)
            labels = b.speakers.to(device)[rows]
            known = labels >= 0   # speed-perturbed and equalized clips have no speaker label
            spk = (model.speaker_head.objective(embeddings[known].float(), labels[known]) if bool(known.any())
                   else embeddings.sum() * 0.0)
            ramp = 1.0 if past_ramps else min(1.0, step / max(1, args.speaker_ramp))
            spk_weight = args.speaker_weight * ramp
            # At weight 0 (--speaker-weight 0, or the first step of the ramp) the speaker loss stays a
            # logged monitor of how the fixed head fares on the moving features, outside the backward.
            loss = ctc + spk_weight * spk if spk_weight > 0 else ctc
            anchored = torch.zeros(())
            if anchor is not None:
                anchored = anchor.loss(feats, audio, attention_mask, out.frame_mask, masked)
                loss = loss + args.anchor_speaker_features * anchored
            opt.zero_grad(set_to_none=True)
            loss.backward()
            # Clipped separately: the AM-softmax gradients are large (scale 30) and, clipped together,
            # shrank the CTC update so much that CTC stayed on its blank plateau (measured).
            torch.nn.utils.clip_grad_norm_(backbone_params, args.clip)
            torch.nn.utils.clip_grad_norm_(speaker_params, 5.0)
            opt.step()
            step += 1
            step_in_run += 1
            hours_seen += b.seconds / 3600
            losses.append(float(loss.detach()))
            win_loss += losses[-1]
            win_ctc += float(ctc.detach())
            win_spk += float(spk.detach())
            win_anchor += float(anchored.detach())
            win_secs += b.seconds
            if step_in_run % args.log_every == 0:
                n = args.log_every
                rate = win_secs / 3600 / ((time.time() - win_t) / 3600)
                left = max(0.0, budget - (time.time() - t_start)) / 60
                anchor_part = f" anchor {win_anchor / n:.4f}" if anchor is not None else ""
                log(f"step {step} | loss {win_loss / n:.3f} (ctc {win_ctc / n:.3f} spk {win_spk / n:.3f}{anchor_part}) | "
                    f"lr {lr:.2e} | {hours_seen:.2f} audio-h seen ({hours_seen / train_hours:.2f} epochs) | "
                    f"{rate:.1f} audio-h/h | dev CER {dev_cer:.3f} (best {best_cer:.3f}) | ETA {left:.0f} min", log_file)
                win_loss, win_ctc, win_spk, win_anchor, win_secs, win_t = 0.0, 0.0, 0.0, 0.0, 0.0, time.time()
            now = time.time()
            if aware is not None:
                aware.set(False)   # dev CER, checkpoints' front-end check: offline
            if now - last_eval > args.eval_every * 60:
                dev_cer = _eval_and_keep_best(model, dev_clips, device, False, args, log_file, step, state)
                best_cer = min(best_cer, dev_cer)
                last_eval = time.time()
            if now - last_save > args.save_every * 60:
                save(last, state())
                last_save = time.time()
            if args.export_every > 0 and now - last_export > args.export_every * 60:
                do_export("periodic")
                last_export = time.time()
    dev_cer = _eval_and_keep_best(model, dev_clips, device, False, args, log_file, step, state)
    best_cer = min(best_cer, dev_cer)
    save(last, state())
    if args.export_every >= 0:
        do_export("end of run")
    log(f"run {runs} done: step {step}, {hours_seen:.2f} audio-h seen, dev CER {dev_cer:.3f} (best {best_cer:.3f}), "
        f"{(time.time() - t_start) / 60:.1f} min", log_file)
    return {"losses": losses, "dev_cer": dev_cer, "step": step}


def other_speakers_note(clips: list[Clip], speaker_index: dict[str, int]) -> str:
    """For the log: "; N clips of other speakers, CTC only", N the clips of speakers the head was not
    built for; "" if none.

    Such clips (voices added after the --init export, `train.synth --more-voices`) train CTC
    only: collate gives them speaker -1.
    """
    n = sum(c.speaker not in speaker_index for c in clips)
    return f"; {n} clips of other speakers, CTC only" if n else ""


def trainable_parameter_names(model: WavLMForCTCWithSpeaker, frozen_layers: int, train_speaker_head: bool) -> set[str]:
    """Names of the parameters a run updates: all but the front end and the first `frozen_layers` transformer
    layers (when > 0; with them the mask embedding SpecAugment writes into the layers' input) and, unless
    `train_speaker_head`, the speaker head."""
    n_layers = len(model.wavlm.encoder.layers)
    if not 0 <= frozen_layers <= n_layers:
        raise SystemExit(f"--frozen-layers: the model has {n_layers} transformer layers, got {frozen_layers}")
    fixed: list[str] = []
    if frozen_layers:
        fixed += ["wavlm.masked_spec_embed", "wavlm.feature_extractor.", "wavlm.feature_projection.",
                  "wavlm.encoder.pos_conv_embed."]
        fixed += [f"wavlm.encoder.layers.{i}." for i in range(frozen_layers)]
    if not train_speaker_head:
        fixed.append("speaker_head.")
    return {n for n, _ in model.named_parameters() if not n.startswith(tuple(fixed))}


def exported_start(model_dir: Path) -> tuple[WavLMConfig, dict[str, torch.Tensor]]:
    """Config and weights to train on from an exported bundled-style model (Hugging Face layout).

    The change detector is left out of both: it is trained afterwards on the frozen backbone
    (train/change_detector.py), and the export does not carry it.
    """
    from model import load_model

    model = load_model(model_dir)
    if not isinstance(model, WavLMForCTCWithSpeaker):
        raise SystemExit(f"--init {model_dir}: not a model with a speaker head (config.json has no speaker_head "
                         f"block); the recipe trains CTC and speaker heads together")
    head = {k: v for k, v in model.config.speaker_head.items() if k != "change_detector"}
    config = WavLMConfig.from_dict({**model.config.to_dict(), "speaker_head": head})
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("speaker_head.change_detector.")}
    return config, state


def _eval_and_keep_best(model, dev_clips, device, use_bf16, args, log_file, step, state) -> float:
    t = time.time()
    cer, wer, pairs = evaluate_cer(model, dev_clips, device, use_bf16)
    prev = args.work / "best.pt"
    prev_cer = torch.load(prev, map_location="cpu", weights_only=False)["dev_cer"] if prev.exists() else math.inf
    mark = ""
    if cer < prev_cer:
        s = state()
        save(prev, {"model": s["model"], "config": s["config"], "step": step, "dev_cer": cer})
        mark = " (new best)"
    ref, hyp = pairs[0]
    probe = collate(dev_clips[:8], {}, None)
    variation = front_end_variation(model, probe.audio.to(device), probe.attention_mask.to(device))
    log(f"dev step {step}: CER {cer:.3f} WER {wer:.3f}{mark} [{time.time() - t:.0f} s] | front-end variation "
        f"{variation:.4f} | ref: {ref} | hyp: {hyp}", log_file)
    return cer


if __name__ == "__main__":
    main()
