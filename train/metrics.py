"""Greedy CTC decoding, character and word error rates, equal error rate."""
from __future__ import annotations

import numpy as np

from train.export import BLANK_ID, DELIMITER_ID, VOCAB


def greedy_decode(ids: np.ndarray) -> str:
    """Frame argmax ids (T,) -> text: collapse repeats, drop blanks and specials, '|' -> space."""
    out, prev = [], -1
    for i in ids.tolist():
        if i != prev and i != BLANK_ID:
            out.append(" " if i == DELIMITER_ID else ("" if VOCAB[i].startswith("<") else VOCAB[i]))
        prev = i
    return " ".join("".join(out).split())


def edit_distance(a, b) -> int:
    """Levenshtein distance between two sequences."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def error_rates(refs: list[str], hyps: list[str]) -> tuple[float, float]:
    """Corpus (CER, WER): total edits over total reference characters / words."""
    ce = sum(edit_distance(r, h) for r, h in zip(refs, hyps))
    we = sum(edit_distance(r.split(), h.split()) for r, h in zip(refs, hyps))
    return ce / max(1, sum(len(r) for r in refs)), we / max(1, sum(len(r.split()) for r in refs))


def equal_error_rate(scores: np.ndarray, same: np.ndarray) -> float:
    """EER of trial scores (higher = more likely the same speaker) with boolean targets."""
    order = np.argsort(-scores)
    same = same[order].astype(bool)
    n_pos, n_neg = same.sum(), (~same).sum()
    if n_pos == 0 or n_neg == 0:
        raise ValueError("EER needs both target and non-target trials")
    fr = 1 - np.cumsum(same) / n_pos   # targets rejected when accepting the top k
    fa = np.cumsum(~same) / n_neg      # non-targets accepted
    k = int(np.argmin(np.abs(fr - fa)))
    return float((fr[k] + fa[k]) / 2)
