"""Test helper: CTC log-probability matrices built from a frame-by-frame token path."""

from __future__ import annotations

import numpy as np

from decoders.ctc import Vocabulary

TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "|", "A", "B", "C", "D", "E", "H", "L", "O", "R", "W", "'"]
VOCAB = Vocabulary.from_tokens(TOKENS)


def path_ids(path: str, vocab: Vocabulary = VOCAB) -> list[int]:
    """One id per character of ``path``: "_" blank, "|" delimiter, "?" <unk>, else the token itself."""
    ids = []
    for ch in path:
        tok = {"_": "<pad>", "?": "<unk>"}.get(ch, ch)
        ids.append(vocab.tokens.index(tok))
    return ids


def log_probs(path: str, peak: float = 0.9, noise: float = 0.0, seed: int = 0, vocab: Vocabulary = VOCAB) -> np.ndarray:
    """(T, V) float32 log-softmax frames whose argmax follows ``path`` (one char per frame).

    The path token gets probability ``peak`` and the rest is spread evenly; ``noise`` > 0
    perturbs the logits randomly (smaller than the peak margin, so the argmax is kept).
    """
    ids = path_ids(path, vocab)
    v = len(vocab)
    p = np.full((len(ids), v), (1.0 - peak) / (v - 1))
    p[np.arange(len(ids)), ids] = peak
    logits = np.log(p)
    if noise:
        logits = logits + np.random.default_rng(seed).uniform(-noise, noise, size=logits.shape)
    logits -= logits.max(axis=1, keepdims=True)
    return (logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))).astype(np.float32)
