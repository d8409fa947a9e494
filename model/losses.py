"""Fine-tuning losses: CTC (transformers' semantics) and additive-margin softmax for speaker embeddings."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def ctc_loss(logits: torch.Tensor, frame_lengths: torch.Tensor, labels: torch.Tensor,
             label_lengths: torch.Tensor | None = None, blank: int = 0, reduction: str = "mean",
             zero_infinity: bool = False, ignore_index: int = -100) -> torch.Tensor:
    """CTC loss of logits (B, T, V) against labels (B, S).

    frame_lengths: (B,) valid frames per item (see WavLMModel.feat_extract_output_lengths).
    labels: padded with ignore_index (or the blank id); label_lengths (B,) may cut them further; when None,
    every non-padding label counts. As transformers: log-softmax in float32; reduction "mean" divides each
    item's loss by its target length, then averages over the batch.
    """
    if logits.dim() != 3:
        raise ValueError(f"logits must be (B, T, V), got shape {tuple(logits.shape)}")
    labels = labels.to(logits.device)
    if labels.numel() and int(labels.max()) >= logits.shape[-1]:
        raise ValueError(f"label id {int(labels.max())} >= vocabulary size {logits.shape[-1]}")
    valid = (labels != ignore_index) & (labels != blank)
    if label_lengths is not None:
        positions = torch.arange(labels.shape[1], device=labels.device)[None, :]
        valid = valid & (positions < label_lengths.to(labels.device)[:, None])
    log_probs = F.log_softmax(logits, dim=-1, dtype=torch.float32).transpose(0, 1)  # (T, B, V)
    return F.ctc_loss(log_probs, labels.masked_select(valid), frame_lengths.to(torch.long), valid.sum(-1),
                      blank=blank, reduction=reduction, zero_infinity=zero_infinity)


class AMSoftmaxLoss(nn.Module):
    """Additive-margin softmax: cross-entropy over scale * (cos(theta) - margin on the true class).

    weight: (input_dim, num_labels), the layout of transformers' x-vector ``objective.weight``.
    """

    def __init__(self, input_dim: int, num_labels: int, scale: float = 30.0, margin: float = 0.4):
        super().__init__()
        self.scale = scale
        self.margin = margin
        self.num_labels = num_labels
        self.weight = nn.Parameter(torch.randn(input_dim, num_labels))

    def logits(self, embeddings: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Cosine logits (B, num_labels), scaled; the margin is subtracted on labels when given."""
        cos = F.normalize(embeddings, dim=1) @ F.normalize(self.weight, dim=0)
        if labels is not None:
            cos = cos - self.margin * F.one_hot(labels.flatten(), self.num_labels).to(cos.dtype)
        return self.scale * cos

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """embeddings: (B, E), labels: (B,) int -> scalar loss."""
        return F.cross_entropy(self.logits(embeddings, labels), labels.flatten())
