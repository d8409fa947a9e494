"""The one result type every model in this package returns."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ModelOutput:
    # (B, T, H): output of the backbone (after the adapter, when the model has one)
    last_hidden_state: torch.Tensor
    # num_hidden_layers + 1 tensors (B, T, H): encoder input, then each layer's output (as transformers);
    # None unless output_hidden_states=True
    hidden_states: tuple[torch.Tensor, ...] | None = None
    # (B, T, V) for CTC / frame classification, (B, num_labels) for sequence classification,
    # (B, xvector_output_dim) for the x-vector head; None for the bare backbone
    logits: torch.Tensor | None = None
    # (B, E) speaker embeddings (x-vector head, bundled CTC+speaker head)
    embeddings: torch.Tensor | None = None
    # (B, T) bool, True on valid frames of last_hidden_state; None when no attention_mask was given
    frame_mask: torch.Tensor | None = None
