"""SpecAugment span masking, with the span semantics of transformers' ``_compute_mask_indices``."""

from __future__ import annotations

import numpy as np
import torch


def compute_mask_indices(shape: tuple[int, int], mask_prob: float, mask_length: int,
                         attention_mask: torch.Tensor | np.ndarray | None = None, min_masks: int = 0,
                         random_state: np.random.RandomState | None = None) -> np.ndarray:
    """Random spans to mask, (batch, length) bool numpy array.

    About mask_prob * length / mask_length span starts are drawn per row (rounded up or down at random, at
    least min_masks), without replacement, among the positions where a whole span fits in the row's
    valid length; spans may overlap, so mask_prob is an upper bound of the masked fraction.
    attention_mask: (batch, length) 0/1 or bool, right-padded, shortens each row.
    random_state: numpy RandomState to draw from; None uses numpy's global state (as transformers does,
    so the same np.random.seed gives the same masks).
    """
    rng = np.random if random_state is None else random_state
    batch_size, sequence_length = shape
    if mask_length < 1:
        raise ValueError(f"mask_length must be >= 1, got {mask_length}")
    if mask_length > sequence_length:
        raise ValueError(f"mask_length {mask_length} is longer than the sequence ({sequence_length} frames)")

    epsilon = rng.rand(1).item()  # probabilistic rounding of the number of spans

    def num_spans(input_length: int) -> int:
        n = max(int(mask_prob * input_length / mask_length + epsilon), min_masks)
        if n * mask_length > sequence_length:
            n = sequence_length // mask_length
        if input_length - (mask_length - 1) < n:
            n = max(input_length - (mask_length - 1), 0)
        return n

    if attention_mask is not None:
        lengths = [int(x) for x in np.asarray(
            attention_mask.detach().cpu() if isinstance(attention_mask, torch.Tensor) else attention_mask
        ).astype(np.int64).sum(-1)]
    else:
        lengths = [sequence_length] * batch_size

    mask = np.zeros((batch_size, sequence_length), dtype=bool)
    max_spans = num_spans(sequence_length)
    if max_spans == 0:
        return mask
    starts = np.zeros((batch_size, max_spans), dtype=np.int64)
    for b, length in enumerate(lengths):
        n = num_spans(length)
        chosen = rng.choice(np.arange(length - (mask_length - 1)), n, replace=False)
        # rows with fewer spans are padded by repeating their first start (or the last frame)
        pad_value = chosen[0] if len(chosen) else sequence_length - 1
        starts[b, :n] = chosen
        starts[b, n:] = pad_value
    idx = (starts[:, :, None] + np.arange(mask_length)[None, None, :]).reshape(batch_size, -1)
    np.put_along_axis(mask, np.minimum(idx, sequence_length - 1), True, axis=-1)
    return mask
