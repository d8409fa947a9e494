"""Tiny random-weight WavLM checkpoints written by transformers, for engine tests.

The files are exactly what ``save_pretrained`` writes for a hub checkpoint, plus a
``vocab.json`` in the Wav2Vec2CTCTokenizer layout.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

#: A character vocabulary like the real English CTC checkpoints use.
VOCAB = ["<pad>", "<s>", "</s>", "<unk>", "|", "'"] + [chr(c) for c in range(ord("a"), ord("z") + 1)]


def write_ctc_checkpoint(directory: Path, *, norm: str = "layer", stable: bool = True,
                         hidden: int = 32, layers: int = 2, heads: int = 2, conv_dim: int = 16,
                         seed: int = 0, **overrides) -> Path:
    """Save a seeded random WavLMForCTC with transformers into ``directory``; returns it.

    norm: "layer" (large-style, streams exactly) or "group" (base-style).
    stable: pre-LN ("stable") encoder when True, post-LN when False.
    """
    from transformers import WavLMConfig, WavLMForCTC

    torch.manual_seed(seed)
    fields = dict(
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=hidden * 2, conv_dim=(conv_dim,) * 7, feat_extract_norm=norm,
        do_stable_layer_norm=stable, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
        vocab_size=len(VOCAB), pad_token_id=0, num_buckets=32, max_bucket_distance=64)
    config = WavLMConfig(**{**fields, **overrides})
    model = WavLMForCTC(config).eval()
    # Random init leaves the gate constants and LayerNorm affine at trivial values: perturb
    # every parameter a little so that each of them matters in the comparisons.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    (directory / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(VOCAB)}))
    return directory
