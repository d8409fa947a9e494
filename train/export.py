"""Export a training checkpoint to the Hugging Face layout the package loads (model/default/).

Writes config.json (architectures ["WavLMForCTC"] plus the "speaker_head" block, so
transformers' WavLMForCTC.from_pretrained reads the CTC part and model.load_model builds
WavLMForCTCWithSpeaker), model.safetensors (float32), vocab.json (Wav2Vec2CTCTokenizer
format: <pad> = 0 is the CTC blank, "|" the word delimiter) and preprocessor_config.json
(do_normalize false: the model was trained on raw float audio), and train/MODEL_CARD.md as
README.md.
The directory is replaced atomically, and the result is loaded back before it is kept.

Usage: python -m train.export [--checkpoint ~/.cache/wavlm-stream/train/best.pt] [--out model/default]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from train import CACHE

# Token ids: blank and the tokenizer's specials first, then the word delimiter and the letters.
VOCAB: tuple[str, ...] = ("<pad>", "<s>", "</s>", "<unk>", "|", *"abcdefghijklmnopqrstuvwxyz", "'")
BLANK_ID = 0
DELIMITER_ID = 4
MAX_BYTES = 30 * 1024 * 1024
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "model" / "default"
DEFAULT_CHECKPOINT = CACHE / "train" / "best.pt"


def encode_text(text: str) -> list[int]:
    """'hello world' -> token ids, spaces as '|'. Characters outside the vocabulary raise KeyError."""
    index = {t: i for i, t in enumerate(VOCAB)}
    return [index["|" if c == " " else c] for c in text]


def export(model_state: dict[str, torch.Tensor], config: dict, out_dir: str | os.PathLike = DEFAULT_OUT,
           check: bool = True) -> Path:
    """Write the bundled-model directory; returns its path. ``config``: WavLMConfig.to_dict() of the model."""
    out_dir = Path(out_dir)
    cfg = dict(config)
    cfg["architectures"] = ["WavLMForCTC"]
    cfg["model_type"] = "wavlm"
    cfg["vocab_size"] = len(VOCAB)
    cfg["pad_token_id"] = BLANK_ID
    cfg["bos_token_id"], cfg["eos_token_id"] = 1, 2
    cfg["ctc_loss_reduction"] = "mean"
    cfg["ctc_zero_infinity"] = True
    if not cfg.get("speaker_head"):
        raise ValueError("config has no speaker_head block: not a bundled-model checkpoint")
    state = {k: v.detach().to(torch.float32).contiguous().cpu() for k, v in model_state.items()}
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=out_dir.parent))
    try:
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        with open(tmp / "config.json", "w") as f:
            json.dump(cfg, f, indent=2, sort_keys=True)
            f.write("\n")
        with open(tmp / "vocab.json", "w") as f:
            json.dump({t: i for i, t in enumerate(VOCAB)}, f, indent=1)
            f.write("\n")
        # For transformers users: raw float audio, no per-utterance normalisation (as trained).
        with open(tmp / "preprocessor_config.json", "w") as f:
            json.dump({"feature_extractor_type": "Wav2Vec2FeatureExtractor", "feature_size": 1,
                       "sampling_rate": 16000, "padding_value": 0.0, "padding_side": "right",
                       "do_normalize": False, "return_attention_mask": True}, f, indent=2)
            f.write("\n")
        card = REPO_ROOT / "train" / "MODEL_CARD.md"
        if card.exists():
            shutil.copyfile(card, tmp / "README.md")
        size = sum(p.stat().st_size for p in tmp.iterdir())
        if size > MAX_BYTES:
            raise ValueError(f"export is {size / 2**20:.1f} MiB, over the {MAX_BYTES / 2**20:.0f} MiB limit")
        if check:
            from model import load_model
            m = load_model(tmp)
            assert tuple(m.vocab) == VOCAB, m.vocab
        os.chmod(tmp, 0o755)
        for p in tmp.iterdir():
            os.chmod(p, 0o644)
        old = out_dir.with_name(out_dir.name + ".old")
        if out_dir.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def export_checkpoint(checkpoint: str | os.PathLike = DEFAULT_CHECKPOINT, out_dir: str | os.PathLike = DEFAULT_OUT) -> Path:
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    return export(ckpt["model"], ckpt["config"], out_dir)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    out = export_checkpoint(args.checkpoint, args.out)
    size = sum(p.stat().st_size for p in out.iterdir())
    print(f"exported {args.checkpoint} -> {out} ({size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
